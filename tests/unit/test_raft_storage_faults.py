"""Storage faults on the Raft driver path (raft/driver.py + raft/wal.py + raft/snapshot.py, as
:class:`raft.replicated.ReplicatedLog` uses them): kill -9 during writes, a torn last record, a
flipped bit in the middle of the WAL or in a snapshot.

tests/unit/test_wal.py and test_wal_props.py cover the bare :class:`raft.wal.WAL`; here the
records are the driver's (entry data prefixed by a type byte, hard states with the commit index,
automatic snapshots) and every check reopens the directory with ``ReplicatedLog``, as a restarted
manager does. Every random choice comes from a seeded ``random.Random``; the seed is in the
assertion messages. The disk-full case needs root (a small tmpfs): tests/integration/
test_raft_disk_full.py.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raft.replicated import ReplicatedLog
from raft.snapshot import SnapshotCorruptError
from raft.wal import WAL, Entry, HardState, WALCorruptError
from tests.ports import free_port
from tests.unit.raft_writer import open_log, wait_leader

pytestmark = pytest.mark.timeout(60)

WRITER = Path(__file__).with_name("raft_writer.py")
ROOT = Path(__file__).resolve().parents[2]
HEADER = struct.Struct(">IIB")  # the WAL record header: length, crc, type (raft/wal.py)


def records(seg: Path) -> list[tuple[int, int, int]]:
    """``(start, end, type)`` of every record of a WAL segment written by a clean close."""
    raw = seg.read_bytes()
    out = []
    off = 0
    while off < len(raw):
        length, _crc, rtype = HEADER.unpack_from(raw, off)
        out.append((off, off + HEADER.size + length, rtype))
        off += HEADER.size + length
    assert off == len(raw), f"{seg} does not end on a record boundary"
    return out


def segment(d: Path) -> Path:
    (seg,) = sorted((d / "wal").glob("*.wal"))
    return seg


class Checked:
    """What a reopened log holds: ``values`` ``{index: data}`` after start and one new write."""

    def __init__(self, values: dict[int, bytes], new_index: int) -> None:
        self.values, self.new_index = values, new_index


async def reopen_and_write(d: Path, port: int, probe: bytes, snapshot_every: int = 0) -> Checked:
    """Reopen the log in ``d`` as a restarted manager would, start it, wait for leadership and
    write ``probe``; return the state machine then. Always closes the log."""
    log, sm = open_log(d, port, snapshot_every)
    try:
        await log.start()
        await wait_leader(log, 5.0)
        idx = await log.propose(probe)
        assert sm.values.get(idx) == probe, f"the new write {probe!r} at {idx} was not applied"
        return Checked(dict(sm.values), idx)
    finally:
        await log.close()


def assert_acked_present(values: dict[int, bytes], acked: dict[int, bytes], why: str) -> None:
    """Every acknowledged ``index -> data`` is in ``values`` exactly, and no data appears at two
    indexes (no entry replayed twice)."""
    missing = {i: d for i, d in acked.items() if values.get(i) != d}
    assert not missing, (f"{why}: {len(missing)} acknowledged entries lost or changed, e.g. "
                         f"{sorted(missing.items())[:3]} (found {[values.get(i) for i in sorted(missing)[:3]]})")
    datas = [values[i] for i in sorted(values)]
    assert len(set(datas)) == len(datas), f"{why}: an entry appears twice in the log"


# --------------------------------------------------------------------------- kill -9


class Writer:
    """tests/unit/raft_writer.py in a subprocess; ``acked`` are the lines it printed."""

    def __init__(self, d: Path, port: int, tag: str, concurrency: int, pad: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(d), str(port), tag, "--concurrency", str(concurrency),
             "--snapshot-every", "64", "--pad", str(pad)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.buf = b""
        self.lines: list[str] = []

    def _read_some(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"writer too slow: {len(self.lines)} lines so far; stderr: {self.stderr()}")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"writer exited ({self.proc.wait()}): {self.stderr()}")
        self.buf += chunk
        *full, self.buf = self.buf.split(b"\n")
        self.lines += [x.decode() for x in full]

    def wait_lines(self, n: int, timeout: float) -> None:
        """Read until ``n`` complete lines arrived; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < n:
            self._read_some(deadline)

    def kill(self) -> None:
        """SIGKILL, reap, and read what it printed before dying (a cut last line is dropped)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        rest = self.proc.stdout.read()
        full = (self.buf + rest).split(b"\n")[:-1]
        self.lines += [x.decode() for x in full]
        self.buf = b""

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def acked(self) -> dict[int, bytes]:
        """``{index: data}`` of every acknowledged entry (the lines after ``ready``)."""
        assert self.lines and self.lines[0].startswith("ready "), self.lines[:1]
        out = {}
        for line in self.lines[1:]:
            i, data = line.split(" ", 1)
            out[int(i)] = data.encode()
        return out


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_9_during_writes_keeps_every_acknowledged_entry(tmp_path: Path, seed: int) -> None:
    """Rounds of: a writer process proposes (1–16 concurrent proposers, entries of tens of bytes
    to 8 KiB, snapshots every 64 entries) and is SIGKILLed after a random number of acknowledgements; then the directory is
    reopened here: every acknowledged entry is there with its data, at its index, once, and a
    new write commits. The next round's writer continues on the same directory."""
    rng = random.Random(seed)
    port = free_port()
    d = tmp_path / "raft"
    acked: dict[int, bytes] = {}
    for rnd in range(4):
        conc = rng.choice([1, 4, 16])
        kill_after = rng.randint(1, 250)
        pad = rng.choice([60, 8192])
        w = Writer(d, port, f"s{seed}r{rnd}", conc, pad)
        try:
            w.wait_lines(1 + kill_after, timeout=20.0)
            w.kill()
            got = w.acked()
        finally:
            w.close()
        why = f"seed {seed} round {rnd} (concurrency {conc}, pad {pad}, killed after {kill_after} acks)"
        assert len(got) >= kill_after, why
        assert not set(got) & set(acked), f"{why}: an index was acknowledged twice"
        acked.update(got)
        res = await reopen_and_write(d, port, f"probe-{rnd}".encode())
        assert_acked_present(res.values, acked, why)
        assert res.new_index > max(acked), why
        acked[res.new_index] = f"probe-{rnd}".encode()
    # the writer took snapshots on the way: the check covered entries restored from them
    assert list((d / "snap").glob("*.snap")), "no snapshot was written"


# --------------------------------------------------------------------------- torn last record


async def _fill(d: Path, port: int, n: int) -> dict[int, bytes]:
    """Write ``n`` entries (sequentially and in concurrent bursts) through a one-voter log in
    ``d``, close it cleanly; return ``{index: data}``."""
    import asyncio

    log, sm = open_log(d, port, 0)
    out: dict[int, bytes] = {}
    try:
        await log.start()
        await wait_leader(log, 5.0)
        for i in range(n // 2):
            data = f"seq-{i}".encode()
            out[await log.propose(data)] = data
        burst = [f"burst-{i}-{'y' * i}".encode() for i in range(n - n // 2)]
        for data, idx in zip(burst, await asyncio.gather(*(log.propose(x) for x in burst)), strict=True):
            out[idx] = data
    finally:
        await log.close()
    return out


async def test_torn_last_record_is_dropped_alone(tmp_path: Path) -> None:
    """Cut the WAL at random byte offsets inside its last record (the driver's trailing hard
    state) and inside the last entry record: reopening truncates exactly that record and the
    records after it, keeps every entry before it, and the log takes new writes."""
    rng = random.Random(7)
    port = free_port()
    pristine = tmp_path / "pristine"
    written = await _fill(pristine, port, 24)
    recs = records(segment(pristine))
    last_entry = max(i for i, r in enumerate(recs) if r[2] == 1)
    assert recs[-1][2] == 2, "the driver ends a write with the hard state"
    cases = []
    for target in (len(recs) - 1, last_entry):
        start, end, _ = recs[target]
        offs = {start + 1, start + HEADER.size - 1, start + HEADER.size, end - 1}
        offs |= {rng.randrange(start + 1, end) for _ in range(3)}
        cases += [(target, off) for off in sorted(offs)]
    max_index = max(written)
    for n, (target, cut) in enumerate(cases):
        d = tmp_path / f"cut{n}"
        shutil.copytree(pristine, d)
        seg = segment(d)
        with open(seg, "r+b") as f:
            f.truncate(cut)
        why = f"cut at byte {cut} inside record {target + 1} of {len(recs)}"
        # Opening alone repairs the tail: exactly the torn record is gone.
        log = ReplicatedLog(1, {1: f"127.0.0.1:{port}"}, d, config=None)
        await log.close()
        assert seg.stat().st_size == recs[target][0], why
        res = await reopen_and_write(d, port, b"after-the-cut")
        if target == last_entry:
            # The torn entry was the last one written: it is gone, its index is reused.
            kept = {i: x for i, x in written.items() if i < max_index}
            assert written[max_index] not in res.values.values(), why
        else:
            kept = written
        assert_acked_present(res.values, kept, why)
        res2 = await reopen_and_write(d, port, b"and-again")
        assert_acked_present(res2.values, {**kept, res.new_index: b"after-the-cut"}, why)


# --------------------------------------------------------------------------- a failed write


def test_failed_write_leaves_no_half_record_and_refuses_more(tmp_path: Path) -> None:
    """A write that fails part-way (here the file size limit, RLIMIT_FSIZE, which fails
    write(2) with EFBIG as a full disk fails it with ENOSPC) is cut back to the last complete
    record; the WAL then refuses every append with a message naming the file, and reopening
    recovers every entry appended before, with no torn tail to repair."""
    wal, _ = WAL.open(tmp_path)
    written = []
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    err: OSError | None = None
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        for i in range(1, 1000):
            batch = [Entry(i, 1, bytes([i % 256]) * 3000)]
            try:
                wal.append(batch, HardState(1, 1, i))
            except OSError as e:
                err = e
                break
            written += batch
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err is not None and written, "the size limit never failed a write"
    seg = wal.segment_paths()[-1]
    assert err.errno == errno.EFBIG and str(seg) in str(err) and "not committed" in str(err), str(err)
    assert records(seg)[-1][1] == seg.stat().st_size  # ends on a record boundary
    with pytest.raises(OSError, match="failed earlier"):
        wal.append([Entry(len(written) + 1, 1, b"more")])
    wal.close()
    wal2, rec = WAL.open(tmp_path)
    assert rec.entries == written and rec.truncated_bytes == 0
    assert rec.hard_state == HardState(1, 1, len(written))
    wal2.append([Entry(len(written) + 1, 1, b"more")])
    wal2.close()


# --------------------------------------------------------------------------- flipped bits


async def test_flipped_bit_in_the_middle_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A flipped bit in any record but the last: opening raises WALCorruptError naming the
    segment, the byte offset and number of the damaged record, and the ways to recover; the
    file is left as it was (no silent repair)."""
    rng = random.Random(11)
    port = free_port()
    pristine = tmp_path / "pristine"
    await _fill(pristine, port, 30)
    recs = records(segment(pristine))
    size = recs[-1][1]
    for n in range(8):
        pos = rng.randrange(0, recs[-2][1])  # anywhere before the last record
        bit = 1 << rng.randrange(8)
        target = next(i for i, r in enumerate(recs) if r[0] <= pos < r[1])
        d = tmp_path / f"flip{n}"
        shutil.copytree(pristine, d)
        seg = segment(d)
        raw = bytearray(seg.read_bytes())
        raw[pos] ^= bit
        seg.write_bytes(bytes(raw))
        with pytest.raises(WALCorruptError) as ei:
            ReplicatedLog(1, {1: f"127.0.0.1:{port}"}, d)
        msg = str(ei.value)
        why = f"bit {bit:#x} of byte {pos} (record {target + 1} of {len(recs)}): {msg}"
        assert str(seg) in msg, why
        assert f"damaged at byte {recs[target][0]} (record {target + 1} of the file" in msg, why
        assert "force-new-cluster" in msg and "backup" in msg and "join" in msg, why
        assert str(d) in msg, why
        assert seg.read_bytes() == bytes(raw) and len(raw) == size, f"file changed: {why}"


async def test_damaged_snapshot_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A flipped bit anywhere in the snapshot file, or a cut one: opening raises
    SnapshotCorruptError naming the file and the ways to recover. A temp file left by a crash
    during a snapshot save is ignored and removed."""
    rng = random.Random(13)
    port = free_port()
    pristine = tmp_path / "pristine"
    log, sm = open_log(pristine, port, 20)  # automatic snapshot every 20 entries
    try:
        await log.start()
        await wait_leader(log, 5.0)
        for i in range(45):
            await log.propose(f"v{i}".encode())
        assert log.snapshot() is not None
    finally:
        await log.close()
    (snapf,) = (pristine / "snap").glob("*.snap")
    # A crashed save leaves a temp file: harmless.
    (pristine / "snap" / (snapf.name.replace("snap-", "snap-f") + ".tmp")).write_bytes(b"half a snap")
    res = await reopen_and_write(pristine, port, b"probe")
    assert [res.values[i] for i in sorted(res.values)][:45] == [f"v{i}".encode() for i in range(45)]
    assert not list((pristine / "snap").glob("*.tmp"))
    (snapf,) = (pristine / "snap").glob("*.snap")
    size = snapf.stat().st_size
    damage: list[tuple[str, int]] = [("flip", rng.randrange(size)) for _ in range(5)]
    damage += [("flip", 0), ("flip", size - 1), ("cut", rng.randrange(size))]
    for n, (kind, pos) in enumerate(damage):
        d = tmp_path / f"bad{n}"
        shutil.copytree(pristine, d)
        f = d / "snap" / snapf.name
        raw = bytearray(f.read_bytes())
        if kind == "flip":
            raw[pos] ^= 1 << rng.randrange(8)
        else:
            del raw[pos:]
        f.write_bytes(bytes(raw))
        with pytest.raises(SnapshotCorruptError) as ei:
            ReplicatedLog(1, {1: f"127.0.0.1:{port}"}, d)
        msg = str(ei.value)
        why = f"{kind} at byte {pos} of {size}: {msg}"
        assert str(f) in msg and "CRC" in msg, why
        assert "force-new-cluster" in msg and str(d) in msg, why
