"""The log interface the store proposes through, and its single-voter implementation.

A Raft cluster of one voter commits an entry as soon as it is durable on that voter's disk
(a quorum of one), so :class:`SingleVoterLog` is a write-ahead log with Raft's shape: entries
``(index, term, data)``, a hard state, snapshots, and the ``propose`` → committed → applied
pipeline. The Raft issue replaces it with a replicated log behind the same interface
(:class:`Log` protocol below; the real one is :class:`raft.replicated.ReplicatedLog`).

Split between decisions and I/O: :class:`_Batcher` is the pure part (which proposals go into
the next write, what indexes they get, what the hard state becomes); ``SingleVoterLog``'s
flusher task is the driver that does the write + fsync in a worker thread and then hands the
committed entries to the apply callback, in index order, before resolving the proposers.

Group commit: proposals that arrive while an fsync runs wait in the queue and share the next
write and fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from raft.snapshot import Snapshot, Snapshotter
from raft.wal import DEFAULT_SEGMENT_BYTES, WAL, Entry, HardState
from shoal.base.util import private_dir

__all__ = ["LogUnavailable", "Log", "SingleVoterLog", "Snapshot", "Entry"]

log = logging.getLogger(__name__)

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


@dataclass
class _Batcher:
    """Pure bookkeeping for a single voter: assigns indexes and builds write batches."""

    term: int
    last_index: int
    queue: list[Entry] = field(default_factory=list)

    def add(self, data: bytes) -> Entry:
        self.last_index += 1
        e = Entry(self.last_index, self.term, data)
        self.queue.append(e)
        return e

    def take(self) -> tuple[list[Entry], HardState]:
        batch, self.queue = self.queue, []
        commit = batch[-1].index if batch else self.last_index
        return batch, HardState(term=self.term, vote=1, commit=commit)


class SingleVoterLog:
    """A one-voter Raft log on disk in ``directory`` (``wal/`` and ``snap/`` under it).

    Opening reads the snapshot and the WAL synchronously (truncating a torn tail; raising
    :class:`raft.wal.WALCorruptError` / :class:`raft.snapshot.SnapshotCorruptError` for damage).
    Every entry found on disk is committed (one voter). Must be used from one event loop.
    """

    def __init__(self, directory: Path | str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        private_dir(self.dir)
        self._snapshotter = Snapshotter(self.dir / "snap")
        self._snapshot = self._snapshotter.load()
        self._wal, rec = WAL.open(self.dir / "wal", segment_bytes)
        self.truncated_bytes = rec.truncated_bytes
        snap_index = self._snapshot.index if self._snapshot else 0
        self._entries: list[Entry] = [e for e in rec.entries if e.index > snap_index]
        if self._entries and self._entries[0].index != snap_index + 1:
            from raft.wal import WALCorruptError

            raise WALCorruptError(
                f"WAL in {self.dir} starts at index {self._entries[0].index} but the snapshot ends at "
                f"{snap_index}: entries are missing"
            )
        last = self._entries[-1].index if self._entries else snap_index
        term = max(rec.hard_state.term, self._snapshot.term if self._snapshot else 0, 1)
        self._batcher = _Batcher(term=term, last_index=last)
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._apply: ApplyFn | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._io_lock = asyncio.Lock()
        self.fsyncs = 0  # number of WAL writes (one fsync each), for tests and metrics

    # -- reading ----------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """Index of the last entry proposed (committed or in flight)."""
        return self._batcher.last_index

    @property
    def term(self) -> int:
        """The current term (constant for a single voter)."""
        return self._batcher.term

    def snapshot(self) -> Snapshot | None:
        """The newest snapshot, or None."""
        return self._snapshot

    def entries_from(self, index: int) -> list[Entry]:
        """Committed entries with index >= ``index`` still held in the log (after the snapshot)."""
        pending = {e.index for e in self._batcher.queue} | set(self._futures)
        return [e for e in self._entries if e.index >= index and e.index not in pending]

    def set_apply(self, fn: ApplyFn) -> None:
        """Register the state machine's apply callback (see :class:`Log`)."""
        self._apply = fn

    # -- proposing --------------------------------------------------------------------------

    def submit(self, data: bytes) -> tuple[int, asyncio.Future[None]]:
        """Queue ``data`` as the next entry; return its index and a future that resolves once
        it is durable and applied. Raises :class:`LogUnavailable` if the log failed or closed."""
        if self._closed:
            raise LogUnavailable("the log is closed")
        if self._failed is not None:
            raise LogUnavailable(f"the write-ahead log failed earlier: {self._failed}")
        loop = asyncio.get_running_loop()
        e = self._batcher.add(data)
        fut: asyncio.Future[None] = loop.create_future()
        self._futures[e.index] = fut
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return e.index, fut

    async def propose(self, data: bytes) -> int:
        """Append ``data`` and return its index once it is durable (committed) and applied.
        Raises :class:`LogUnavailable`. Cancelling the caller does not withdraw the entry."""
        index, fut = self.submit(data)
        await asyncio.shield(fut)
        return index

    async def _flush_loop(self) -> None:
        while self._batcher.queue:
            batch, hs = self._batcher.take()
            try:
                async with self._io_lock:
                    await asyncio.to_thread(self._wal.append, batch, hs)
                self.fsyncs += 1
            except BaseException as exc:  # noqa: BLE001 - every failure makes the log unusable
                self._fail(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self._entries.extend(batch)
            for e in batch:
                if self._apply is not None:
                    try:
                        self._apply(e)
                    except Exception:  # the state machine must not break the log
                        log.exception("apply of entry %d failed", e.index)
                fut = self._futures.pop(e.index)
                if not fut.done():
                    fut.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        log.error("write-ahead log failed: %r", exc)
        err = LogUnavailable(f"write-ahead log write failed: {exc}")
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(err)
        self._futures.clear()
        self._batcher.queue.clear()

    # -- snapshots --------------------------------------------------------------------------

    async def compact(self, index: int, data: bytes) -> None:
        """Save ``data`` as the state-machine snapshot at ``index`` (atomically) and release the
        WAL segments and in-memory entries it covers. ``index`` must be committed."""
        term = next((e.term for e in self._entries if e.index == index), self._batcher.term)
        snap = Snapshot(index, term, data)
        async with self._io_lock:
            await asyncio.to_thread(self._snapshotter.save, snap)
            await asyncio.to_thread(self._wal.release_to, index)
        self._snapshot = snap
        self._entries = [e for e in self._entries if e.index > index]

    async def close(self) -> None:
        """Wait for in-flight proposals, then close the WAL. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            try:
                await self._flusher
            except Exception:  # noqa: BLE001 - already reported to the proposers
                pass
        async with self._io_lock:
            self._wal.close()
