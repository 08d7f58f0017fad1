"""Property tests of the WAL's recovery (hypothesis): whatever a crash or a flipped byte does
to the last segment, recovery returns a prefix of what was written or raises WALCorruptError;
it never returns altered or reordered entries."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.wal import WAL, Entry, WALCorruptError
from tests.stores import open_log, start_leader

payloads = st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=25)


def _write(d: Path, datas: list[bytes]) -> tuple[list[Entry], Path]:
    wal, _ = WAL.open(d)
    entries = [Entry(i + 1, 1, x) for i, x in enumerate(datas)]
    for e in entries:  # one record per append, as separate proposals would be
        wal.append([e])
    seg = wal.segment_paths()[-1]
    wal.close()
    return entries, seg


@settings(max_examples=60, deadline=None)
@given(datas=payloads, cut=st.floats(min_value=0.0, max_value=1.0))
def test_any_truncation_recovers_a_prefix(datas: list[bytes], cut: float) -> None:
    d = Path(tempfile.mkdtemp(prefix="walprop-"))
    try:
        entries, seg = _write(d, datas)
        raw = seg.read_bytes()
        seg.write_bytes(raw[: int(len(raw) * cut)])
        _, rec = WAL.open(d)
        assert rec.entries == entries[: len(rec.entries)]
        # and every complete record before the cut survived
        _, rec2 = WAL.open(d)
        assert rec2.entries == rec.entries and rec2.truncated_bytes == 0
    finally:
        shutil.rmtree(d)


@settings(max_examples=80, deadline=None)
@given(datas=payloads, pos=st.floats(min_value=0.0, max_value=0.999), flip=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_detected(datas: list[bytes], pos: float, flip: int) -> None:
    d = Path(tempfile.mkdtemp(prefix="walprop-"))
    try:
        entries, seg = _write(d, datas)
        raw = bytearray(seg.read_bytes())
        i = int(len(raw) * pos)
        raw[i] ^= flip
        seg.write_bytes(bytes(raw))
        try:
            _, rec = WAL.open(d)
        except WALCorruptError:
            return
        assert rec.entries == entries[: len(rec.entries)]
    finally:
        shutil.rmtree(d)


async def test_crash_without_close_keeps_every_acknowledged_entry(tmp_path: Path) -> None:
    """Entries whose propose() returned are on disk even if the process never closes the log
    (the kill -9 case): a second log opened on the same directory sees them all."""
    log = open_log(tmp_path)
    await start_leader(log)
    for i in range(30):
        await log.propose(f"e{i}".encode())
    # no close(): open a fresh instance as a restarted process would
    log2 = open_log(tmp_path)
    assert [e.data for e in log2.entries_from(1)] == [f"e{i}".encode() for i in range(30)]
    await log2.close()
    await log.close()
