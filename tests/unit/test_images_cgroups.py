"""The cgroup v2 (unified) code path of agent_runtime.oci.cgroups, against a directory standing in for
/sys/fs/cgroup (this host runs v1 hybrid, so the kernel path is covered by the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runtime.oci import cgroups


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(tmp_path))
    return tmp_path


def test_v2_create_and_apply(fake_v2: Path) -> None:
    assert cgroups.is_v2()
    cg = cgroups.Cgroup("/shoal-lab/h1/abc")
    assert cg.v2 and cg.dirs == {"unified": str(fake_v2 / "shoal-lab/h1/abc")}
    # Each ancestor gets the controllers enabled for its children (children list theirs in cgroup.controllers).
    (fake_v2 / "shoal-lab").mkdir()
    (fake_v2 / "shoal-lab/cgroup.controllers").write_text("cpu memory pids\n")
    cg.create()
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (fake_v2 / "shoal-lab/cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    leaf = fake_v2 / "shoal-lab/h1/abc"
    assert leaf.is_dir()
    (leaf / "memory.swap.max").write_text("max")
    cg.apply({"memory": {"limit": 64 << 20, "swap": 64 << 20}, "cpu": {"quota": 50000, "period": 100000},
              "pids": {"limit": 20}})
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "pids.max").read_text() == "20"
    cg.add(4242)
    assert (leaf / "cgroup.procs").read_text() == "4242"


def test_v1_hierarchies_parse_mountinfo() -> None:
    h = cgroups.v1_hierarchies()
    # Whatever this host has, every value is a mount point and names are controllers.
    for name, mnt in h.items():
        assert mnt.startswith("/") and name


def test_empty_path_rejected() -> None:
    with pytest.raises(ValueError, match="empty cgroupsPath"):
        cgroups.Cgroup("")
