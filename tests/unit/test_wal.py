"""Tests of the segmented WAL, snapshots and a single-voter ReplicatedLog on them (raft/wal.py,
raft/snapshot.py, raft/replicated.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raft.log import LogUnavailable
from raft.snapshot import Snapshot, SnapshotCorruptError, Snapshotter
from raft.wal import WAL, Entry, HardState, WALCorruptError
from tests.stores import open_log, start_leader


def _entries(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, f"data-{i}".encode()) for i in range(first, first + n)]


def test_append_and_recover(tmp_path: Path) -> None:
    wal, rec = WAL.open(tmp_path)
    assert rec.entries == [] and rec.hard_state == HardState()
    wal.append(_entries(1, 5), HardState(1, 1, 5))
    wal.append(_entries(6, 3), HardState(2, 1, 8))
    wal.close()
    wal2, rec2 = WAL.open(tmp_path)
    assert [e.index for e in rec2.entries] == list(range(1, 9))
    assert rec2.entries[7].data == b"data-8"
    assert rec2.hard_state == HardState(2, 1, 8)
    assert rec2.truncated_bytes == 0
    assert wal2.last_index == 8
    wal2.close()


def test_conflicting_suffix_is_superseded(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(_entries(1, 5, term=1))
    wal.append([Entry(3, 2, b"new-3"), Entry(4, 2, b"new-4")])
    wal.close()
    _, rec = WAL.open(tmp_path)
    assert [(e.index, e.term, e.data) for e in rec.entries] == [
        (1, 1, b"data-1"), (2, 1, b"data-2"), (3, 2, b"new-3"), (4, 2, b"new-4")
    ]


def test_gap_is_refused(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(_entries(1, 2))
    with pytest.raises(ValueError, match="gap"):
        wal.append(_entries(5, 1))
    wal.close()


def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(_entries(1, 10))
    seg = wal.segment_paths()[-1]
    wal.close()
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 5)  # cut the last record short, as a crash mid-write does
    wal2, rec = WAL.open(tmp_path)
    assert [e.index for e in rec.entries] == list(range(1, 10))
    assert rec.truncated_bytes > 0
    # the log continues after the truncation point
    wal2.append(_entries(10, 1))
    wal2.close()
    _, rec3 = WAL.open(tmp_path)
    assert [e.index for e in rec3.entries] == list(range(1, 11))
    assert rec3.truncated_bytes == 0


def test_garbage_tail_is_truncated(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(_entries(1, 3))
    seg = wal.segment_paths()[-1]
    wal.close()
    with open(seg, "ab") as f:
        f.write(b"\x00" * 100)  # zero-filled blocks after a crash
    _, rec = WAL.open(tmp_path)
    assert [e.index for e in rec.entries] == [1, 2, 3]
    assert rec.truncated_bytes == 100


def test_flipped_bit_mid_log_raises(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    for i in range(1, 11):
        wal.append(_entries(i, 1))
    seg = wal.segment_paths()[-1]
    wal.close()
    raw = bytearray(seg.read_bytes())
    pos = len(raw) // 2
    raw[pos] ^= 0x10
    seg.write_bytes(bytes(raw))
    with pytest.raises(WALCorruptError, match="damaged at byte"):
        WAL.open(tmp_path)


def test_segments_roll_and_release(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path, segment_bytes=200)
    for i in range(1, 31):
        wal.append(_entries(i, 1), HardState(1, 1, i))
    assert len(wal.segment_paths()) > 3
    n = wal.release_to(20)
    assert n > 0
    wal.close()
    wal2, rec = WAL.open(tmp_path, segment_bytes=200)
    assert rec.entries[-1].index == 30
    assert rec.entries[0].index <= 21
    assert rec.hard_state.commit == 30
    wal2.close()


def test_snapshot_atomic_and_crc(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    assert s.load() is None
    s.save(Snapshot(10, 1, b"state-10"))
    s.save(Snapshot(20, 1, b"state-20"))
    assert s.load() == Snapshot(20, 1, b"state-20")
    assert len(list(tmp_path.glob("*.snap"))) == 1
    (f,) = tmp_path.glob("*.snap")
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptError):
        s.load()


async def test_single_voter_propose_replay_and_group_commit(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    applied: list[int] = []
    log.set_apply(lambda e: applied.append(e.index))
    await start_leader(log)
    idx = await asyncio.gather(*(log.propose(f"p{i}".encode()) for i in range(50)))
    assert sorted(idx) == idx and len(set(idx)) == 50
    assert applied == idx
    # 50 concurrent proposals shared far fewer fsyncs than 50
    assert log.driver.fsyncs < 50
    await log.close()
    log2 = open_log(tmp_path)
    assert [e.data for e in log2.entries_from(1)] == [f"p{i}".encode() for i in range(50)]
    await start_leader(log2)
    nxt = await log2.propose(b"next")
    assert nxt > idx[-1]
    await log2.compact(idx[39], b"snap@40")
    await log2.close()
    log3 = open_log(tmp_path)
    snap = log3.snapshot()
    assert snap is not None and snap.index == idx[39] and snap.data == b"snap@40"
    assert [e.index for e in log3.entries_from(idx[39] + 1)] == [*idx[40:], nxt]
    await log3.close()


async def test_closed_log_refuses(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    await start_leader(log)
    await log.close()
    with pytest.raises(LogUnavailable):
        await log.propose(b"x")
