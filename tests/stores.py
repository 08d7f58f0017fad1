"""The store the unit tests build: a :class:`manager.store.Store` on the log class the daemon uses,
a single-voter :class:`raft.replicated.ReplicatedLog` (a quorum of one commits an entry once it is
durable on this node's disk), wired as :class:`manager.manager.Manager` wires it.

A sole voter campaigns as it starts (no election timeout to wait), so :func:`open_store` returns a
store whose log is the leader and takes writes at once. Indexes: the configuration and the
leader's no-op entry come first, so the first application entry is not index 1, and indexes
are increasing but not contiguous.
"""

from __future__ import annotations

from pathlib import Path

from manager.store import Store
from raft.replicated import DriverConfig, ReplicatedLog

__all__ = ["open_log", "open_store", "start_leader", "store_on"]

RAFT_ID = 1
"""The Raft ID of the test node."""


def open_log(directory: Path | str, config: DriverConfig | None = None, *, raft_id: int = RAFT_ID,
             addr: str = "127.0.0.1:1") -> ReplicatedLog:
    """A single-voter ReplicatedLog of node ``raft_id`` (at ``addr``, never listened on) on
    ``directory`` (a new cluster if it is empty, else the log already there), not started: give
    it to a Store, then :func:`start_leader`."""
    return ReplicatedLog(raft_id, {raft_id: addr}, directory, bootstrap=True, config=config)


async def start_leader(log: ReplicatedLog) -> None:
    """Start ``log`` without listening and wait until it is the leader (at once for a sole voter)."""
    await log.start(listen=False)
    for _ in range(100):
        if log.is_leader:
            return
        await log.wait_changed(0.1)
    raise AssertionError(f"the single-voter log in {log.driver.dir} did not become the leader")


async def open_store(directory: Path | str, *, snapshot_every: int = 10_000) -> Store:
    """A started Store on :func:`open_log` (``directory``) wired as the daemon wires it
    (:func:`store_on`); the driver takes state-machine snapshots every ``snapshot_every`` applied
    entries. ``await store.close()`` closes the log too."""
    return await store_on(open_log(directory, DriverConfig(snapshot_every=snapshot_every)))


async def store_on(log: ReplicatedLog) -> Store:
    """A Store on ``log`` (not started yet), wired as :class:`manager.manager.Manager` wires it:
    the driver takes the state-machine snapshots (the Store itself never does), a snapshot from a
    leader replaces the state; then the log is started and is the leader."""
    store = Store(log, snapshot_interval=0)
    log.set_restore(store.restore)
    log.set_snapshot_source(store.snapshot_bytes)
    await start_leader(log)
    return store
