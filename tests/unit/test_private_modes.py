"""What Shoal keeps on disk is root's only (issue 7): the Raft WAL and snapshots (which hold the join
tokens and the cluster's secrets) are 0600 in 0700 directories, the data root, the image store and
the containers' directories are 0700, state and certificates 0600 — also after an upgrade from a
data root written with the default 0755/0644 (no root needed; umask 022 as a default system's)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from raft.snapshot import Snapshot, Snapshotter
from raft.wal import WAL, Entry, HardState
from shoal.daemon.state import LocalState, secure_data_root
from shoal.rpc import tlsutil
from tests.stores import open_log, start_leader


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_wal_segments_and_snapshots_are_0600(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path / "wal", segment_bytes=256)
    for i in range(1, 20):
        wal.append([Entry(i, 1, b"SWMTKN-1-secret-%d" % i + b"x" * 64)], HardState(1, 1, i))
    segs = wal.segment_paths()
    wal.close()
    assert len(segs) > 2  # several cuts, each from a temporary file renamed into place
    assert {mode(p) for p in segs} == {0o600} and mode(tmp_path / "wal") == 0o700
    snaps = Snapshotter(tmp_path / "snap")
    path = snaps.save(Snapshot(19, 1, b"store with the join tokens"))
    assert mode(path) == 0o600 and mode(tmp_path / "snap") == 0o700


def test_wal_and_snapshots_of_an_older_shoal_are_fixed_on_open(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path / "wal")
    wal.append([Entry(1, 1, b"x")])
    wal.close()
    path = Snapshotter(tmp_path / "snap").save(Snapshot(1, 1, b"s"))
    for p in [*(tmp_path / "wal").iterdir(), path]:
        os.chmod(p, 0o644)
    os.chmod(tmp_path / "wal", 0o755)
    os.chmod(tmp_path / "snap", 0o755)
    WAL.open(tmp_path / "wal")[0].close()
    Snapshotter(tmp_path / "snap")
    assert {mode(p) for p in (tmp_path / "wal").iterdir()} == {0o600}
    assert mode(path) == 0o600 and mode(tmp_path / "wal") == mode(tmp_path / "snap") == 0o700


async def test_single_voter_log_directory(tmp_path: Path) -> None:
    log = open_log(tmp_path / "raft")
    try:
        await start_leader(log)
        assert await asyncio.wait_for(log.propose(b"secret"), 10) >= 1
    finally:
        await log.close()
    assert {mode(p) for p in (tmp_path / "raft", tmp_path / "raft/wal", tmp_path / "raft/snap")} == {0o700}
    assert {mode(p) for p in (tmp_path / "raft/wal").iterdir()} == {0o600}


def test_image_store_and_containers_directories(tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images")
    rt = Runtime(tmp_path / "containers", tmp_path / "exec", images)
    for sub in ("images", "images/blobs", "images/blobs/sha256", "images/layers", "images/images", "images/tmp",
                "containers", "exec/runc", "exec/shoal-oci"):
        assert mode(tmp_path / sub) == 0o700, sub
    assert mode(tmp_path / "exec") == 0o755  # it holds the API socket, whose own mode says who may use it
    # an older data root: everything 0755, a container directory among them
    old = tmp_path / "containers" / ("ab" * 32)
    old.mkdir()
    for sub in ("images", "images/layers", "containers", "exec/shoal-oci"):
        os.chmod(tmp_path / sub, 0o755)
    ImageStore(tmp_path / "images")
    Runtime(tmp_path / "containers", tmp_path / "exec", images)
    for sub in ("images", "images/layers", "containers", "exec/shoal-oci"):
        assert mode(tmp_path / sub) == 0o700, sub
    assert mode(old) == 0o700
    del rt


def test_data_root_state_and_certificates(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "certs").mkdir(parents=True)
    (root / "manager/raft").mkdir(parents=True)
    for p in (root, root / "certs", root / "manager", root / "manager/raft"):
        os.chmod(p, 0o755)
    for name in ("node.key", "node.crt", "ca.crt"):
        (root / "certs" / name).write_text("pem")
        os.chmod(root / "certs" / name, 0o644)
    (root / "state.json").write_text("{}")
    secure_data_root(root)
    assert {mode(p) for p in (root, root / "certs", root / "manager", root / "manager/raft")} == {0o700}
    assert {mode(root / "certs" / n) for n in ("node.key", "node.crt", "ca.crt")} == {0o600}
    assert mode(root / "state.json") == 0o600
    LocalState(root / "state.json").save({"NodeID": "n1", "Role": "manager"})
    assert mode(root / "state.json") == 0o600
    fresh = tmp_path / "fresh"
    secure_data_root(fresh)
    assert mode(fresh) == 0o700
    tlsutil.write_node_files(fresh / "certs", "ca", "crt", "key")
    assert mode(fresh / "certs") == 0o700
    assert {mode(p) for p in (fresh / "certs").iterdir()} == {0o600}
