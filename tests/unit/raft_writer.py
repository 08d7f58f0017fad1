"""A writer process for the kill -9 storage test (tests/unit/test_raft_storage_faults.py).

Runs a one-voter :class:`raft.replicated.ReplicatedLog` (the driver path the managers use) in
``DIR`` listening on ``127.0.0.1:PORT``, with automatic snapshots every ``--snapshot-every``
entries, and proposes entries from ``--concurrency`` tasks forever. Protocol on stdout, one line
each, flushed at once:

- ``ready <last applied index>`` once this node leads and can write;
- ``<index> <data>`` for an entry, printed only after ``propose()`` returned (acknowledged:
  committed, durable and applied). ``data`` is ASCII without spaces:
  ``<tag>-<worker>-<n>-<padding>`` (0 to ``--pad`` bytes of padding).

The state machine is ``{index: data}`` of every application entry; a snapshot is msgpack
``[[index, data], ...]``. The test kills this process with SIGKILL at random moments, so it never
exits on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgpack

from raft.driver import DriverConfig
from raft.replicated import ReplicatedLog
from raft.snapshot import Snapshot
from raft.wal import Entry


def config(snapshot_every: int) -> DriverConfig:
    """Small timings (10 ms ticks) so that a one-voter node leads within a few ticks;
    snapshots every ``snapshot_every`` applied entries (0 = never), 16 entries kept after one."""
    return DriverConfig(tick=0.01, heartbeat_tick=1, election_tick=10, snapshot_every=snapshot_every, keep=16)


class KVState:
    """The writer's state machine: ``{index: data}``, restored from a snapshot plus the log."""

    def __init__(self, log: ReplicatedLog) -> None:
        self.values: dict[int, bytes] = {}
        snap = log.snapshot()
        if snap is not None:
            self.restore(snap)
        start = snap.index + 1 if snap else 1
        for e in log.entries_from(start):
            self.apply(e)

    def apply(self, e: Entry) -> None:
        """Record entry ``e``."""
        self.values[e.index] = e.data

    def restore(self, s: Snapshot) -> None:
        """Replace the state by snapshot ``s``."""
        self.values = {int(i): bytes(d) for i, d in msgpack.unpackb(s.data)}

    def dump(self) -> bytes:
        """The snapshot bytes: msgpack ``[[index, data], ...]`` in index order."""
        out: bytes = msgpack.packb(sorted(self.values.items()))
        return out


def open_log(directory: Path, port: int, snapshot_every: int) -> tuple[ReplicatedLog, KVState]:
    """Open the one-voter log in ``directory`` and its state machine (not started)."""
    log = ReplicatedLog(1, {1: f"127.0.0.1:{port}"}, directory, bootstrap=True, config=config(snapshot_every),
                        propose_timeout=10.0)
    sm = KVState(log)
    log.set_apply(sm.apply)
    log.set_restore(sm.restore)
    log.set_snapshot_source(sm.dump)
    return log, sm


async def wait_leader(log: ReplicatedLog, timeout: float) -> None:
    """Wait until ``log`` leads; TimeoutError after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not log.is_leader:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"no leadership within {timeout} s")
        await log.driver.wait_changed(0.05)


async def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("port", type=int)
    ap.add_argument("tag")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--snapshot-every", type=int, default=64)
    ap.add_argument("--pad", type=int, default=60, help="up to this many padding bytes per entry")
    args = ap.parse_args(argv)
    log, sm = open_log(args.dir, args.port, args.snapshot_every)
    await log.start()
    await wait_leader(log, 10.0)
    out = sys.stdout
    out.write(f"ready {log.applied_index}\n")
    out.flush()

    async def worker(w: int) -> None:
        n = 0
        while True:
            data = f"{args.tag}-{w}-{n}-{'x' * (n * 7919 % (args.pad + 1))}".encode()
            index = await log.propose(data)
            out.write(f"{index} {data.decode()}\n")
            out.flush()
            n += 1

    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
