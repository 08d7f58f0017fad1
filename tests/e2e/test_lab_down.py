"""`shoal-lab up` (network, registry, image; no shoald) and `down` (root): down removes what a
lab with containers leaves behind — processes in shoal-lab cgroups, in lab netns or with lab
paths in argv; overlay and bind mounts (nested); cgroups in every hierarchy; nftables tables;
namespaces and links — and is safe to run twice. Needs no shoald, so it runs on its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.lab import lab
from tests.waiting import wait_until_sync

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture
def bare_lab() -> Iterator[lab.LabState]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if lab.LabState.load() is not None:
        pytest.skip("a lab is already up (the session lab); this test would remove it")
    try:
        yield lab.up(2, daemons=False)
    finally:
        lab.down(quiet=True)


def _alive(pid: int) -> bool:
    return lab._alive(pid)


def test_up_serves_the_image_and_down_removes_everything(bare_lab: lab.LabState) -> None:
    # The registry holds the image, reachable from inside a host.
    r = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{lab.IMAGE}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["nsenter", f"--net={lab.NETNS_DIR / 'shoal-h2'}", "busybox", "wget", "-q", "-O", "-",
                        f"http://{lab.REGISTRY}/v2/_catalog"], capture_output=True, text=True, timeout=30)
    assert '"busybox"' in r.stdout, r.stderr
    r = subprocess.run(["ip", "-n", "shoal-h1", "-br", "addr", "show", "eth0"], capture_output=True, text=True)
    assert "10.99.0.11/24" in r.stdout

    # Leave behind what a container would: a cgroup with a process in it, in every hierarchy.
    box = lab.DATA / "h1" / "containers" / "c1"
    for d in ("lower", "upper", "work", "rootfs"):
        (box / d).mkdir(parents=True, exist_ok=True)
    (box / "lower" / "dev").mkdir(exist_ok=True)
    contained = subprocess.Popen(["unshare", "--net", "sleep", "1000"], start_new_session=True)
    child = contained.pid  # unshare without --fork execs sleep in the new netns
    wait_until_sync(lambda: os.readlink(f"/proc/{child}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
                    "unshare --net to take effect", interval=0.02)
    made = []
    for h in sorted(lab.CGROUP_ROOT.iterdir()):
        if not h.is_dir() or h.is_symlink():
            continue
        cg = h / lab.CGROUP_PARENT / "h1" / "c1"
        cg.mkdir(parents=True, exist_ok=True)
        made.append(cg)
        if h.name in ("memory", "pids", "freezer", "unified", "systemd", "cpu", "cpuacct"):
            (cg / "cgroup.procs").write_text(str(contained.pid))
    # an overlay rootfs with a mount inside it, and a netns bind mount under the exec root
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={box / 'lower'},upperdir={box / 'upper'},workdir={box / 'work'}", str(box / "rootfs")],
                   check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(box / "rootfs" / "dev")], check=True)
    nsfile = lab.RUN / "h1" / "netns" / "c1"
    nsfile.parent.mkdir(parents=True, exist_ok=True)
    nsfile.touch()
    subprocess.run(["mount", "--bind", f"/proc/{child}/ns/net", str(nsfile)], check=True)
    # a "shim" (lab path in argv), a process inside a lab host, and an nftables table
    shim = subprocess.Popen([str(lab.RUN / "h2" / "fake-shim"), "1000"], executable="/bin/sleep", start_new_session=True)
    in_host = subprocess.Popen(["nsenter", f"--net={lab.NETNS_DIR / 'shoal-h2'}", "sleep", "1000"], start_new_session=True)
    subprocess.run(["nft", "add", "table", "inet", "shoal-e2e-test"], check=True)
    wait_until_sync(lambda: lab._proc_cmdline(shim.pid)[:1] == [str(lab.RUN / "h2" / "fake-shim")]
                    and os.readlink(f"/proc/{in_host.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
                    "the helper processes to start", interval=0.02)

    left = lab.check_clean()
    assert any(x.startswith("mount") for x in left) and any(x.startswith("cgroup") for x in left)
    assert any("shoal-e2e-test" in x for x in left)

    assert lab.down() == []
    for p in (contained, shim, in_host):
        p.wait(timeout=10)  # reaped: they were killed
    assert not _alive(child)
    assert not any(cg.exists() for cg in made)
    assert not lab.RUN.exists() and not (lab.DATA / "h1").exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "shoal-lab" not in mounts
    assert "shoal-h" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert "shoal-lab" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "shoal-e2e-test" not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert lab.down() == []  # safe twice
