"""Segmented write-ahead log: the durable storage under Raft.

The shape follows Raft's storage (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", §5; etcd's ``wal`` package is the model for the on-disk layout):
a sequence of :class:`Entry` ``(index, term, data)`` plus a :class:`HardState`
``(term, vote, commit)`` that must be durable before a node answers a message.

On-disk format
--------------
The log is a directory of segment files ``<seq:016x>-<first_index:016x>.wal``. A segment is a
run of records::

    [length u32 BE][crc32 u32 BE][type u8][payload: length bytes]

``crc32`` is zlib's CRC-32 of ``type || payload``. Types: ``1`` entry (payload is msgpack
``[index, term, data]``), ``2`` hard state (msgpack ``[term, vote, commit]``). When an entry is
appended at an index that already exists, it and everything after it supersede the older
entries (Raft's log truncation on conflict); recovery replays that rule.

Recovery
--------
A record that is cut short or fails its CRC at the very end of the last segment, with nothing
valid after it, is a torn write from a crash: the tail is truncated and the log continues.
A bad record anywhere else (an earlier segment, or valid records following it) means the
data on disk is damaged: :class:`WALCorruptError` is raised naming the file, the byte offset and
the record number and saying how to recover, and nothing is repaired silently.

Durability: :meth:`WAL.append` writes the whole batch and calls ``fsync`` once (group commit
is done by the caller batching proposals, see :mod:`raft.log`). New segment files are
followed by an ``fsync`` of the directory.

Write failures (a full disk, an I/O error): :meth:`WAL.append` cuts the segment back to the
end of the last complete record (so no half record is left for a later write to follow), marks
the WAL failed (every later append raises) and raises ``OSError`` with the same ``errno`` and a
message naming the segment and what to do. Entries acknowledged before the failure are intact;
reopening the directory (after making room) continues the log.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from shoal.base.util import private_dir, private_file

__all__ = ["Entry", "HardState", "WAL", "WALCorruptError", "WALRecovery"]

REC_ENTRY = 1
REC_HARD_STATE = 2
_HEADER = struct.Struct(">IIB")  # length, crc, type
_MAX_RECORD = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_SEGMENT_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class WALCorruptError(Exception):
    """A record in the middle of the log is damaged (bad CRC, impossible length or type).

    The message names the segment file, the byte offset and the record number, and says how to
    recover (:func:`recovery_advice`). The log is not repaired.
    """


def recovery_advice(data_dir: Path) -> str:
    """The operator's options when the Raft data in ``data_dir`` (the directory holding ``wal/``
    and ``snap/``) is damaged, as one sentence for error messages. Swarm's own recovery paths:
    a manager that lost its state rejoins and gets a snapshot from the leader; a cluster that
    lost its quorum is rebuilt with ``swarm init --force-new-cluster`` on a surviving manager."""
    return (
        f"Do not edit the files. To recover: if other managers are healthy, stop this one, move "
        f"{data_dir} aside and join it to the swarm again (it receives a snapshot from the leader); "
        f"otherwise restore {data_dir} from a backup or another manager's copy, or run "
        f"`swarm init --force-new-cluster` on a surviving manager whose log is intact."
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry: ``index`` (1-based, contiguous), ``term``, opaque ``data`` bytes."""

    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """Raft's persistent state: ``term`` (current term), ``vote`` (node voted for in that term,
    0 = none) and ``commit`` (highest index known committed)."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(slots=True)
class WALRecovery:
    """What :meth:`WAL.open` found on disk: the last hard state, the surviving entries (in
    index order, conflicts already resolved), and whether a torn tail was truncated."""

    hard_state: HardState
    entries: list[Entry]
    truncated_bytes: int = 0


def _crc(rtype: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF


def encode_record(rtype: int, payload: bytes) -> bytes:
    """Return one framed record ``[len][crc][type][payload]``."""
    return _HEADER.pack(len(payload), _crc(rtype, payload), rtype) + payload


def _encode_entry(e: Entry) -> bytes:
    return encode_record(REC_ENTRY, msgpack.packb([e.index, e.term, e.data], use_bin_type=True))


def _encode_hard_state(hs: HardState) -> bytes:
    return encode_record(REC_HARD_STATE, msgpack.packb([hs.term, hs.vote, hs.commit], use_bin_type=True))


def _parse_at(buf: bytes, off: int) -> tuple[int, bytes, int] | None:
    """Parse the record at ``off``; return (type, payload, next offset) or None if invalid."""
    if off + _HEADER.size > len(buf):
        return None
    length, crc, rtype = _HEADER.unpack_from(buf, off)
    end = off + _HEADER.size + length
    if length > _MAX_RECORD or end > len(buf) or rtype not in (REC_ENTRY, REC_HARD_STATE):
        return None
    payload = bytes(buf[off + _HEADER.size : end])
    if _crc(rtype, payload) != crc:
        return None
    return rtype, payload, end


def _valid_record_after(buf: bytes, start: int) -> int | None:
    """Return the offset of any valid record at or after ``start`` (a scan used only after a bad
    record, to tell a torn tail from damage in the middle)."""
    for off in range(start, len(buf) - _HEADER.size + 1):
        if _parse_at(buf, off) is not None:
            return off
    return None


@dataclass(slots=True)
class _Segment:
    seq: int
    first_index: int
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    """A segmented write-ahead log in directory ``dir`` (created if missing).

    Use :meth:`open` (which recovers) rather than the constructor. Thread-safety: calls are
    serialised by an internal lock, so a driver may run :meth:`append` in a worker thread.
    """

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._size = 0
        self._last_index = 0
        self._hard_state = HardState()
        self._lock = threading.Lock()
        self._failed: OSError | None = None

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> tuple[WAL, WALRecovery]:
        """Open (creating if needed) the log in ``directory`` and recover it.

        Returns the WAL, ready to append after the last valid record, and a
        :class:`WALRecovery`. Raises :class:`WALCorruptError` for a damaged record that is not a
        torn tail, ``OSError`` for I/O failures.
        """
        wal = cls(Path(directory), segment_bytes)
        private_dir(wal.dir)
        rec = wal._recover()
        return wal, rec

    def _recover(self) -> WALRecovery:
        segs: list[_Segment] = []
        for name in os.listdir(self.dir):
            m = _SEGMENT_RE.match(name)
            if m:
                segs.append(_Segment(int(m.group(1), 16), int(m.group(2), 16), self.dir / name))
                private_file(self.dir / name)  # 0644 when written by an older Shoal
            elif name.endswith(".wal.tmp"):
                os.unlink(self.dir / name)
        segs.sort(key=lambda s: s.seq)
        entries: list[Entry] = []
        hs = HardState()
        truncated = 0
        for i, seg in enumerate(segs):
            last = i == len(segs) - 1
            buf = seg.path.read_bytes()
            off = 0
            nrec = 0
            while off < len(buf):
                parsed = _parse_at(buf, off)
                if parsed is None:
                    later = _valid_record_after(buf, off + 1)
                    if not last or later is not None:
                        where = "a later segment follows" if later is None else f"a valid record at byte {later}"
                        raise WALCorruptError(
                            f"WAL segment {seg.path} is damaged at byte {off} (record {nrec + 1} of the file: "
                            f"bad length, type or CRC, and {where}, so this is not a torn write from a "
                            f"crash); the log cannot be trusted past index "
                            f"{entries[-1].index if entries else 0}. {recovery_advice(self.dir.parent)}"
                        )
                    truncated = len(buf) - off
                    with open(seg.path, "r+b") as f:
                        f.truncate(off)
                        os.fsync(f.fileno())
                    break
                rtype, payload, off = parsed
                nrec += 1
                if rtype == REC_ENTRY:
                    index, term, data = msgpack.unpackb(payload, raw=False)
                    e = Entry(int(index), int(term), bytes(data))
                    if entries and e.index <= entries[-1].index:
                        # Raft conflict: the new entry supersedes this index and all after it.
                        first = entries[0].index
                        del entries[max(0, e.index - first) :]
                    if entries and e.index != entries[-1].index + 1:
                        raise WALCorruptError(
                            f"WAL segment {seg.path}: entry index {e.index} does not follow {entries[-1].index}"
                        )
                    entries.append(e)
                else:
                    term, vote, commit = msgpack.unpackb(payload, raw=False)
                    hs = HardState(int(term), int(vote), int(commit))
        self._segments = segs
        self._hard_state = hs
        self._last_index = entries[-1].index if entries else (segs[-1].first_index - 1 if segs else 0)
        if segs:
            tail = segs[-1]
            self._fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)
            self._size = os.fstat(self._fd).st_size
        return WALRecovery(hs, entries, truncated)

    # -- writing --------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """Index of the last entry written (0 if none)."""
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        """The last hard state written."""
        return self._hard_state

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None, sync: bool = True) -> None:
        """Write ``entries`` (and ``hard_state`` after them, if given) and ``fsync`` once.

        Entry indexes must be contiguous; the first may be ``<= last_index`` (Raft truncation
        of a conflicting suffix). Raises ``ValueError`` for a gap, ``OSError`` on I/O failure
        (the caller must then treat the log as unusable: a partial write may be on disk).
        """
        with self._lock:
            if self._failed is not None:
                raise OSError(self._failed.errno, f"the write-ahead log in {self.dir} failed earlier and "
                              f"refuses writes until it is reopened: {self._failed.strerror}")
            expect = self._last_index + 1
            for e in entries:
                if e.index < 1 or (e.index > expect and (self._last_index > 0 or e is not entries[0])):
                    raise ValueError(f"WAL append: entry index {e.index} leaves a gap after {expect - 1}")
                expect = e.index + 1
            buf = bytearray()
            for e in entries:
                buf += _encode_entry(e)
            if hard_state is not None:
                buf += _encode_hard_state(hard_state)
            if not buf:
                return
            if self._fd is None or self._size >= self.segment_bytes:
                first = entries[0].index if entries else self._last_index + 1
                try:
                    self._cut(first)
                except OSError as exc:
                    raise self._write_failed(exc, self.dir) from exc
            assert self._fd is not None
            try:
                view = memoryview(buf)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                if sync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise self._write_failed(exc, self._segments[-1].path) from exc
            self._size += len(buf)
            if entries:
                self._last_index = entries[-1].index
            if hard_state is not None:
                self._hard_state = hard_state

    def _write_failed(self, exc: OSError, path: Path) -> OSError:
        """Record a failed write: cut the segment back to its last complete record (best effort:
        recovery would drop a torn tail anyway) and return the ``OSError`` to raise."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
        reason = exc.strerror or str(exc)
        advice = (" Free space on that filesystem, then restart the manager: entries acknowledged "
                  "before this are intact." if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
                  " Fix the cause (dmesg shows I/O errors), then restart the manager: entries "
                  "acknowledged before this are intact.")
        err = OSError(exc.errno, f"{reason}: cannot write the Raft write-ahead log {path} in {self.dir}; "
                      f"the entries being written were not committed here.{advice}")
        self._failed = err
        return err

    def save_hard_state(self, hs: HardState) -> None:
        """Durably record ``hs`` (one record, one fsync)."""
        self.append([], hs)

    def _cut(self, first_index: int) -> None:
        """Start a new segment whose first entry will be ``first_index``; it opens with the
        current hard state so that releasing older segments never loses it."""
        seq = self._segments[-1].seq + 1 if self._segments else 0
        name = f"{seq:016x}-{first_index:016x}.wal"
        tmp = self.dir / (name + ".tmp")
        header = _encode_hard_state(self._hard_state)
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
                f.write(header)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, self.dir / name)
        _fsync_dir(self.dir)
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._segments.append(_Segment(seq, first_index, self.dir / name))
        self._fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND)
        self._size = len(header)

    def release_to(self, index: int) -> int:
        """Delete whole segments holding only entries ``<= index`` (they are covered by a
        snapshot at ``index``). The current segment is always kept. Returns files removed."""
        removed = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
                seg = self._segments.pop(0)
                os.unlink(seg.path)
                removed += 1
            if removed:
                _fsync_dir(self.dir)
        return removed

    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first (for tests and diagnostics)."""
        return [s.path for s in self._segments]

    def close(self) -> None:
        """Flush and close the current segment. Idempotent."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    if self._failed is None:
                        os.fsync(fd)
                finally:
                    os.close(fd)


def iter_entries(entries: Iterable[Entry], start: int) -> list[Entry]:
    """Return the entries with ``index >= start``."""
    return [e for e in entries if e.index >= start]
