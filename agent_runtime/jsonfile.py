"""A container's log in Docker's json-file format: the writer the shim runs (rotation by size) and the
reader the runtime serves ``logs`` from (tail from the end, since, follow by cursor), in bounded memory.

Files (MOBY: daemon/logger/jsonfilelog, daemon/logger/loggerutils/logfile.go)::

    container.log       the current file, one record a line:
                        {"log": "text\\n", "stream": "stdout"|"stderr", "time": RFC 3339 UTC, ns}
    container.log.1     the previous file (rotated), … up to container.log.<max_file-1>, the oldest

When a record would make the current file larger than ``max_size`` the files are shifted
(``.1`` → ``.2`` …, the oldest is dropped, ``container.log`` → ``.1``) and a new ``container.log``
is begun, so at most ``max_file`` files exist, each at most ``max_size`` bytes, and no record is
split across files. ``max_file`` 1 truncates the file in place. A line longer than Docker's
16 KiB is written as several records (the last ends with ``\\n``), and a record that would be larger
than ``max_size`` by itself is split the same way, down to one character a record (a ``max_size``
smaller than one record of one character, about 80 bytes, cannot be kept).

Reading never loads a whole file: ``tail`` and ``since`` read backwards from the end in blocks and
stop at the N-th record or the first older record; then records are read forwards up to a byte
budget (:data:`READ_LIMIT` per call). Each read returns a *cursor* — ``"<inode>:<offset>:<check>"``,
the file's inode, the byte offset after the last record returned and a CRC-32 of the 64 bytes before
that offset — that a later read continues from, in the same file if it has been rotated meanwhile
(rename keeps the inode) and then in the newer files. A cursor whose file has been dropped or
truncated (its inode is gone, reused, or the bytes before the offset differ) continues at the oldest
record still kept: records rotated away while nobody read them are lost, as in Docker.

The writer and readers are different processes and take no lock: the writer appends whole records
with one write and renames files newest-last; a reader opens the files newest-first (so a rotation
while it opens them can hide a file, never reorder two) and reads only complete lines.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

from shoal.base.logopts import DEFAULT_MAX_FILE, DEFAULT_MAX_SIZE

LOG_NAME = "container.log"
LINE_CHUNK = 16 * 1024
"""Bytes of output per record at most (Docker splits longer lines at 16 KiB as well)."""
READ_LIMIT = 4 * 1024 * 1024
"""Byte budget of one read (records' bytes plus :data:`RECORD_COST` each)."""
RECORD_COST = 128
"""What each record counts against the budget besides its bytes (the decoded dict's memory)."""
BLOCK = 64 * 1024
"""Bytes read at a time, backwards or forwards."""
MAX_LINE = 1024 * 1024
"""A line longer than this is not a record the writer made (its records stay near 100 KiB): skipped."""
CHECK_BYTES = 64
"""Bytes before a cursor's offset its check covers: the end of the last record, with its time in ns."""


def now_rfc3339() -> str:
    """Now as RFC 3339 UTC with nanoseconds (as shoal.base.util.now_rfc3339; kept here so the shim starts fast)."""
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


_TIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z")


def parse_time(ts: Any) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time such as the records carry; 0.0 if it is not one."""
    m = _TIME_RE.fullmatch(ts) if isinstance(ts, str) else None
    if m is None:
        return 0.0
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    # days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse; no calendar
    # or datetime import, so the shim starts fast)
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    frac = m.group(7)
    return days * 86400 + h * 3600 + mi * 60 + s + (int(frac) / 10 ** len(frac) if frac else 0.0)


# ------------------------------------------------------------------------------------------ writer


class LogWriter:
    """Turns a container's stdout/stderr bytes into json-file records in ``path``, rotating by size.

    ``feed(stream, data)`` takes any chunk of output (lines may span chunks); ``flush()`` writes what
    is left of unfinished lines at exit. ``max_size`` is bytes (≥ 1), ``max_file`` the number of files
    kept (≥ 1). ``last_stderr`` is the last non-empty stderr line (the shim's error for a failed start).
    Raises OSError from the file system (e.g. ENOSPC).
    """

    def __init__(self, path: str | os.PathLike[str], max_size: int = DEFAULT_MAX_SIZE,
                 max_file: int = DEFAULT_MAX_FILE) -> None:
        if max_size < 1 or max_file < 1:
            raise ValueError(f"max_size and max_file must be at least 1, got {max_size} and {max_file}")
        self.path = os.fspath(path)
        self.max_size = max_size
        self.max_file = max_file
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.last_stderr = ""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def feed(self, stream: str, data: bytes) -> None:
        """Add output ``data`` of ``stream`` (``stdout``/``stderr``); complete lines are written at once."""
        buf = self.partial[stream] + data
        *lines, rest = buf.split(b"\n")
        out: list[bytes] = []
        for line in lines:
            out.extend(self._records(stream, line + b"\n"))
        # Docker splits very long lines at 16 KiB; keep memory bounded the same way.
        while len(rest) >= LINE_CHUNK:
            out.extend(self._records(stream, rest[:LINE_CHUNK]))
            rest = rest[LINE_CHUNK:]
        self.partial[stream] = rest
        self._write(out)

    def flush(self) -> None:
        """Write the unfinished lines (without ``\\n``) as records of their own."""
        out: list[bytes] = []
        for stream, rest in self.partial.items():
            if rest:
                out.extend(self._records(stream, rest))
        self.partial = {"stdout": b"", "stderr": b""}
        self._write(out)

    def close(self) -> None:
        """Close the current file."""
        os.close(self.fd)

    def _records(self, stream: str, line: bytes) -> list[bytes]:
        text = line.decode("utf-8", errors="replace")
        if stream == "stderr" and text.strip():
            self.last_stderr = text.strip()
        return self._encode(stream, text, now_rfc3339())

    def _encode(self, stream: str, text: str, ts: str) -> list[bytes]:
        rec = (json.dumps({"log": text, "stream": stream, "time": ts}) + "\n").encode()
        if len(rec) <= self.max_size or len(text) <= 1:
            return [rec]
        half = len(text) // 2  # a record alone over max_size: split it so every file keeps the limit
        return self._encode(stream, text[:half], ts) + self._encode(stream, text[half:], ts)

    def _write(self, records: list[bytes]) -> None:
        batch = bytearray()
        for rec in records:
            if self.size + len(batch) + len(rec) > self.max_size and self.size + len(batch) > 0:
                self._write_all(batch)
                batch.clear()
                self._rotate()
            batch += rec
        self._write_all(batch)

    def _write_all(self, data: bytearray) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            self.size += n
            view = view[n:]

    def _rotate(self) -> None:
        """Make room: truncate (max_file 1) or shift the files by one, dropping the oldest."""
        if self.max_file == 1:
            os.ftruncate(self.fd, 0)
            self.size = 0
            return
        for i in range(self.max_file - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            try:
                os.replace(src, f"{self.path}.{i}")
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size


# ------------------------------------------------------------------------------------------ reader


class LogPage:
    """One read: ``records`` oldest first (``{"log", "stream", "time"}``); ``cursor`` the position
    after them (or where the read would have started, when it returned none), to pass to the next
    read; ``more`` True when the read stopped at its budget with records left after the cursor;
    ``used`` the bytes the records counted against the budget."""

    __slots__ = ("records", "cursor", "more", "used")

    def __init__(self, records: list[dict[str, Any]], cursor: str, more: bool, used: int = 0) -> None:
        self.records, self.cursor, self.more, self.used = records, cursor, more, used

    def __repr__(self) -> str:
        return f"LogPage({len(self.records)} records, cursor={self.cursor!r}, more={self.more})"


class _File:
    """One open log file; ``size`` is its size when opened (all that this read looks at)."""

    def __init__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.fd, self.ino, self.size = fd, st.st_ino, st.st_size

    def pread(self, n: int, off: int) -> bytes:
        return os.pread(self.fd, n, off) if n > 0 else b""


class _Files:
    """The log's files, opened newest-first on demand (``get(0)`` the current, ``get(1)`` the previous)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened: list[_File] = []
        self.next_index = 0
        self.last_index = _last_rotated_index(path) + 1  # +1: a rotation while we open may shift one more

    def get(self, k: int) -> _File | None:
        while len(self.opened) <= k and self.next_index <= self.last_index:
            i = self.next_index
            self.next_index += 1
            name = self.path if i == 0 else f"{self.path}.{i}"
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except (FileNotFoundError, OSError):
                continue
            f = _File(fd)
            if any(o.ino == f.ino for o in self.opened):
                os.close(fd)  # renamed while we opened: already have it
                continue
            self.opened.append(f)
        return self.opened[k] if k < len(self.opened) else None

    def all_oldest_first(self) -> list[_File]:
        while self.get(len(self.opened)) is not None:
            pass
        return list(reversed(self.opened))

    def close(self) -> None:
        for f in self.opened:
            os.close(f.fd)
        self.opened = []


def _last_rotated_index(path: str) -> int:
    parent, name = os.path.split(path)
    prefix = name + "."
    best = 0
    try:
        names = os.listdir(parent or ".")
    except OSError:
        return 0
    for n in names:
        if n.startswith(prefix) and n[len(prefix):].isdigit() and len(n) - len(prefix) <= 6:
            best = max(best, int(n[len(prefix):]))
    return best


def _check(f: _File, off: int) -> str:
    lo = max(0, off - CHECK_BYTES)
    return f"{zlib.crc32(f.pread(off - lo, lo)):08x}"


def _make_cursor(f: _File | None, off: int) -> str:
    if f is None:
        return "0:0:0"
    return f"{f.ino}:{off}:{_check(f, off)}"


_CURSOR_RE = re.compile(r"(\d{1,20}):(\d{1,20}):([0-9a-f]{1,8})")


def parse_cursor(cursor: str) -> tuple[int, int, str]:
    """``(inode, offset, check)`` of a cursor string. Raises ValueError for anything else."""
    m = _CURSOR_RE.fullmatch(cursor) if isinstance(cursor, str) else None
    if m is None:
        raise ValueError(f"invalid log cursor {str(cursor)[:80]!r}: pass back the cursor of a previous read")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _lines_backwards(f: _File, end: int) -> Iterator[tuple[int, bytes | None]]:
    """``(end, line)`` of the complete lines (ending in ``\\n``) of ``f`` before offset ``end``, newest
    first; a trailing fragment (a record being written) is passed over. A line longer than
    :data:`MAX_LINE` is not one the writer made: it is given as ``line`` None and the scan stops there."""
    pos = end  # bytes [pos, end) have been read
    carry = b""  # the bytes [pos, carry_end) of a line whose start lies before pos
    while pos > 0:
        n = min(BLOCK, pos)
        pos -= n
        block = f.pread(n, pos)
        if len(block) < n:  # truncated under us: nothing before here is trustworthy
            return
        data = block + carry
        e = len(data)
        while e > 0:
            s = data.rfind(b"\n", 0, e - 1) + 1
            if s == 0 and pos > 0:
                break  # the line may begin in an earlier block
            if data[e - 1] == 0x0A:
                yield pos + e, data[s:e]
            e = s
        carry = data[:e]
        if len(carry) > MAX_LINE:
            yield pos + e, None
            return


def _forward_lines(f: _File, pos: int) -> Iterator[tuple[int, bytes | None]]:
    """``(end, line)`` of the complete lines of ``f`` from offset ``pos`` (a line boundary) up to the size
    it had when opened, oldest first; a line over :data:`MAX_LINE` comes as None (passed over)."""
    buf = b""
    start = pos  # file offset of buf[0]
    read_at = pos
    dropping = False
    while True:
        i = buf.find(b"\n")
        if i < 0:
            if read_at >= f.size:
                return
            data = f.pread(min(BLOCK, f.size - read_at), read_at)
            if not data:
                return
            read_at += len(data)
            buf += data
            if b"\n" not in buf and len(buf) > MAX_LINE:
                start += len(buf)
                buf, dropping = b"", True
            continue
        line, buf = buf[:i + 1], buf[i + 1:]
        start += len(line)
        yield start, (None if dropping else line)
        dropping = False


def _decode(line: bytes | None) -> dict[str, Any] | None:
    if line is None:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("log"), str):
        return None
    return rec


def _find_start(files: _Files, tail: int, since: float) -> tuple[_File | None, int]:
    """Where the last ``tail`` records (-1: all) not older than ``since`` begin: read backwards from
    the newest file until enough records, an older one or an oversized line are found."""
    count = 0
    k = 0
    oldest: _File | None = None
    while True:
        f = files.get(k)
        if f is None:
            return oldest, 0
        oldest = f
        for end, line in _lines_backwards(f, f.size):
            if line is None or (tail >= 0 and count >= tail):
                return f, end
            rec = _decode(line)
            if rec is None:
                continue
            if since and parse_time(rec.get("time")) < since:
                return f, end
            count += 1
        k += 1


def _resolve(files: _Files, cursor: str) -> tuple[_File | None, int]:
    """The file and offset a cursor points to, or the oldest file's start if its file is gone."""
    ino, off, check = parse_cursor(cursor)
    for f in files.all_oldest_first():
        if f.ino == ino and off <= f.size and _check(f, off) == check.rjust(8, "0"):
            return f, off
    kept = files.all_oldest_first()
    return (kept[0] if kept else None), 0


def read_page(path: str | os.PathLike[str], tail: int = -1, since: float = 0.0, cursor: str | None = None,
              limit: int = READ_LIMIT) -> LogPage:
    """Read records of the log at ``path`` (``container.log``, with its rotated files).

    Without ``cursor``: the last ``tail`` records (-1 = all) whose time is not before ``since``
    (seconds since the epoch, 0 = no bound). With ``cursor`` (from an earlier :class:`LogPage`): the
    records written after it; ``tail`` and ``since`` are then ignored. Records are returned oldest
    first up to ``limit`` bytes (each record also counts :data:`RECORD_COST`; at least one record when
    ``limit`` > 0); ``more`` says records were left for the next read. A missing log reads as empty.
    Raises ValueError for a malformed cursor, OSError for an unreadable file.
    """
    files = _Files(os.fspath(path))
    try:
        if cursor is not None:
            start, off = _resolve(files, cursor)
        elif tail >= 0 or since:
            start, off = _find_start(files, tail, since)
        else:
            kept = files.all_oldest_first()
            start, off = (kept[0] if kept else None), 0
        return _forward(files, start, off, limit)
    finally:
        files.close()


def _forward(files: _Files, start: _File | None, off: int, limit: int) -> LogPage:
    if start is None:
        return LogPage([], "0:0:0", False)
    chain = files.all_oldest_first()
    records: list[dict[str, Any]] = []
    used = 0
    f, pos = start, off
    for f in chain[chain.index(start):]:
        pos = off if f is start else 0
        for end, line in _forward_lines(f, pos):
            if line is not None:
                cost = len(line) + RECORD_COST
                if used + cost > limit and (records or limit <= 0):
                    return LogPage(records, _make_cursor(f, pos), True, used)
                rec = _decode(line)
                if rec is not None:
                    records.append(rec)
                    used += cost
            pos = end
    return LogPage(records, _make_cursor(f, pos), False, used)


def file_count(path: str | os.PathLike[str]) -> int:
    """Number of files the log at ``path`` has now (current plus rotated), for tests and inspection."""
    p = os.fspath(path)
    return sum(1 for i in range(_last_rotated_index(p) + 1) if os.path.exists(p if i == 0 else f"{p}.{i}"))
