"""A full disk under the Raft log (root: a 2 MiB tmpfs).

A one-voter :class:`raft.replicated.ReplicatedLog` (the driver path the managers use) writes on a
small tmpfs until the WAL hits ENOSPC: the failing write and every later one raise
:class:`raft.log.LogUnavailable` naming the error ("No space left on device") and the WAL's
directory, nothing hangs, the event loop keeps running, the segment is left ending on a record
boundary; after closing, making room (deleting a
filler file created first) and reopening, every acknowledged entry is there and new writes
commit. A snapshot save on the full disk fails cleanly too (no temp file, the old snapshot stays).
The tmpfs is unmounted at the end, even on failure.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from raft.log import LogUnavailable
from raft.snapshot import Snapshot, Snapshotter
from tests.integration.conftest import require_root
from tests.unit.raft_writer import open_log, wait_leader
from tests.unit.test_raft_storage_faults import (
    assert_acked_present,
    free_port,
    records,
    reopen_and_write,
    segment,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

ENTRY = 4096  # bytes of data per entry: ~500 entries fill the tmpfs


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on a fresh directory; unmounted (lazily if busy) afterwards."""
    require_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "shoal-test-full", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True, capture_output=True)


async def test_full_disk_fails_writes_cleanly_and_loses_nothing(small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (256 * 1024))  # freed later to make room
    snaps = Snapshotter(small_tmpfs / "snaptest")
    snaps.save(Snapshot(1, 1, b"small"))
    d = small_tmpfs / "raft"
    port = free_port()
    log, sm = open_log(d, port, 0)
    acked: dict[int, bytes] = {}
    errors: list[LogUnavailable] = []
    try:
        await log.start()
        await wait_leader(log, 5.0)

        async def writer(w: int) -> None:
            n = 0
            while True:
                data = f"w{w}-{n}-".encode().ljust(ENTRY, b"z")
                try:
                    idx = await log.propose(data)
                except LogUnavailable as e:
                    errors.append(e)
                    return
                acked[idx] = data
                n += 1

        # 8 concurrent writers (group commit): all must stop with LogUnavailable, none hang.
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(8))), 30.0)
        assert len(errors) == 8 and len(acked) > 100, (len(errors), len(acked))
        wal_dir = str(d / "wal")
        msgs = [str(e) for e in errors]
        assert all("no space left on device" in m.lower() and wal_dir in m for m in msgs), msgs
        # A later write fails at once with the same reason; the loop is alive (we are running).
        with pytest.raises(LogUnavailable, match=r"(?i)no space left on device") as ei:
            await asyncio.wait_for(log.propose(b"after"), 2.0)
        assert wal_dir in str(ei.value)
    finally:
        await asyncio.wait_for(log.close(), 5.0)
    # The failed write left no half record behind: the segment ends on a record boundary.
    records(segment(d))

    # A snapshot save on the full disk fails cleanly: no temp file, the old snapshot stays.
    with pytest.raises(OSError) as oe:
        snaps.save(Snapshot(2, 1, os.urandom(512 * 1024)))
    assert oe.value.errno == errno.ENOSPC and str(snaps.dir) in str(oe.value), str(oe.value)
    assert not list(snaps.dir.glob("*.tmp"))
    assert snaps.load() == Snapshot(1, 1, b"small")

    filler.unlink()
    res = await reopen_and_write(d, port, b"after-room")
    assert_acked_present(res.values, acked, "after a full disk")
    assert res.new_index > max(acked)
    res2 = await reopen_and_write(d, port, b"and-again")
    assert_acked_present(res2.values, {**acked, res.new_index: b"after-room"}, "second reopen")
