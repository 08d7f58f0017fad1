"""`shoal-lab up --mtu N` (root, no shoald): the underlay links — the bridge and both ends of every
host's veth — get MTU N, state.json records it, and an MTU outside 1280–9000 is refused before
anything is made. Without the flag the links keep the kernel's default (1500)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from deploy.lab import lab

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _shoal_lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.lab.cli", *args], capture_output=True, text=True,
                          timeout=300)


def _mtus() -> dict[str, int]:
    """MTU of the bridge, of each host's veth end on it and of each host's eth0."""
    out = {x["ifname"]: int(x["mtu"]) for x in json.loads(subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout)
        if x["ifname"].startswith("shoal-lab")}
    for ns in sorted(p.name for p in lab.NETNS_DIR.glob("shoal-h*")):
        res = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "eth0"], capture_output=True, text=True, check=True)
        out[f"{ns}/eth0"] = int(json.loads(res.stdout)[0]["mtu"])
    return out


@pytest.fixture
def no_lab() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if lab.LabState.load() is not None:
        pytest.skip("a lab is already up (the session lab); this test would remove it")
    try:
        yield
    finally:
        assert lab.down(quiet=True) == []


def test_up_mtu_sets_every_underlay_link(no_lab: None) -> None:
    r = _shoal_lab("up", "--hosts", "2", "--mtu", "1300", "--no-daemons")
    assert r.returncode == 0, r.stderr
    mtus = _mtus()
    assert set(mtus) == {"shoal-lab0", "shoal-lab-h1", "shoal-lab-h2", "shoal-h1/eth0", "shoal-h2/eth0"}, mtus
    assert set(mtus.values()) == {1300}, mtus
    state = lab.LabState.load()
    assert state is not None and state.mtu == 1300

    r = _shoal_lab("up", "--hosts", "1", "--no-daemons")  # replaces the lab; no flag: the kernel's default
    assert r.returncode == 0, r.stderr
    assert set(_mtus().values()) == {1500}
    state = lab.LabState.load()
    assert state is not None and state.mtu is None


@pytest.mark.parametrize("mtu", ["1279", "9001", "0"])
def test_up_refuses_an_mtu_out_of_range_before_making_anything(no_lab: None, mtu: str) -> None:
    r = _shoal_lab("up", "--hosts", "1", "--mtu", mtu, "--no-daemons")
    assert r.returncode == 1
    assert "--mtu must be between 1280 and 9000" in r.stderr, r.stderr
    assert lab.LabState.load() is None and not list(lab.NETNS_DIR.glob("shoal-h*"))
