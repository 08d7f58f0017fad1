"""The log interface the store proposes through: :class:`Log`, and its error :class:`LogUnavailable`.

The one implementation is :class:`raft.replicated.ReplicatedLog` (a Raft log replicated between
the managers; with a single voter, as after ``swarm init`` and in the unit tests, an entry
commits once it is durable on this node's disk). Entries are ``(index, term, data)``
(:class:`raft.wal.Entry`); snapshots :class:`raft.snapshot.Snapshot`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from raft.snapshot import Snapshot
from raft.wal import Entry

__all__ = ["LogUnavailable", "Log", "Snapshot", "Entry"]

ApplyFn = Callable[[Entry], None]


class LogUnavailable(Exception):
    """The log cannot commit: the WAL failed (disk error), the log is closed, or (with Raft)
    this node is not the leader / has no quorum. The message says which."""


class Log(Protocol):
    """What :class:`manager.store.Store` needs from the log.

    - ``snapshot()``: the newest snapshot or None; ``entries_from(i)``: committed entries with
      index >= i (for replay at start).
    - ``set_apply(fn)``: ``fn(entry)`` is called for every entry committed from now on, in
      index order, exactly once, on the event loop thread, before the proposer's future resolves.
    - ``submit(data) -> (index, future)``: propose without waiting; the index is final if the
      future resolves without error (LogUnavailable otherwise, and then every later pending
      proposal fails too).
    - ``await propose(data) -> index``: submit and wait until committed.
    - ``await compact(index, data)``: store a state-machine snapshot at ``index`` and drop the
      log before it.
    """

    def snapshot(self) -> Snapshot | None: ...
    def entries_from(self, index: int) -> list[Entry]: ...
    def set_apply(self, fn: ApplyFn) -> None: ...
    def submit(self, data: bytes) -> tuple[int, asyncio.Future[None]]: ...
    async def propose(self, data: bytes) -> int: ...
    async def compact(self, index: int, data: bytes) -> None: ...
    async def close(self) -> None: ...
