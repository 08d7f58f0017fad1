"""The device allow-list holds in a container (root, one host; issue 7).

A default container may mknod a block device (CAP_MKNOD, as in Docker) but not open it: on cgroup v1
through the devices controller, on cgroup v2 through the eBPF program of agent_runtime.oci.
devicefilter, attached by the same Cgroup code the runtime uses. This host runs v1 hybrid; the v2
case uses a scratch cgroup on its cgroup2 mount, which the kernel consults for every device access
(devcgroup_check_permission runs the BPF programs of the task's cgroup2 cgroup).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.bundle import _DEVICE_RULES
from agent_runtime.containers import ContainerSpec, Runtime
from agent_runtime.oci import cgroups
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from tests.integration.conftest import BUSYBOX, TEST_REF, require_root, scratch_runtime

pytestmark = pytest.mark.root

MKNOD_AND_READ = "mknod {d}/x b 8 0 && ls -l {d}/x && head -c1 {d}/x"


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if fstype == "cgroup2":
                return mnt
    return None


def test_v2_device_program_denies_block_device_and_allows_dev_null(
        scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    mnt = _cgroup2_mount()
    if mnt is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", mnt)
    cg = Cgroup(f"/shoal-test-devices-{os.getpid()}-{os.urandom(3).hex()}")
    assert cg.v2 and cg.dirs == {"unified": os.path.join(mnt, cg.rel)}
    cgroup_procs = os.path.join(cg.dirs["unified"], "cgroup.procs")

    def sh(script: str) -> subprocess.CompletedProcess[str]:
        def join() -> None:
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=30,
                              preexec_fn=join)

    try:
        cg.create()
        control = sh(MKNOD_AND_READ.format(d=scratch_dir))  # no program yet: the kernel's own answer
        os.unlink(scratch_dir / "x")
        cg.apply({"devices": _DEVICE_RULES})
        denied = sh(MKNOD_AND_READ.format(d=scratch_dir))
        null = sh("head -c1 /dev/null && echo -n x > /dev/null && head -c4 /dev/zero | wc -c")
    finally:
        cg.destroy()
    assert "Operation not permitted" not in control.stderr, control
    assert denied.returncode != 0
    assert denied.stdout.startswith("b"), denied  # mknod is allowed ("b *:* m"), as Docker's defaults
    assert "Operation not permitted" in denied.stderr, denied
    assert null.returncode == 0 and null.stdout.strip() == "4", null
    assert not os.path.exists(cg.dirs["unified"])


@pytest.fixture
async def runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    async with scratch_runtime(scratch_dir, busybox_archive, "shoal-test-dev") as rt:
        yield rt


async def test_default_container_cannot_read_a_block_device(runtime: Runtime) -> None:
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", "mknod /x b 8 0 && head -c1 /x"]))
    await runtime.start(cid)
    code = await asyncio.wait_for(runtime.wait(cid), 30)
    err = "".join(r["log"] for r in runtime.read_logs(cid) if r["stream"] == "stderr")
    assert code != 0 and "head: /x: Operation not permitted" in err, err
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", "head -c1 /dev/zero | wc -c"]))
    await runtime.start(cid)
    assert await asyncio.wait_for(runtime.wait(cid), 30) == 0
    assert [r["log"].strip() for r in runtime.read_logs(cid)] == ["1"]
