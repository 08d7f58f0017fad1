"""A health probe runs inside its container (root, one host): ``Runtime.exec`` joins the container's
namespaces, cgroup, root filesystem, user, capabilities and env (agent_runtime.execin), and a
health monitor driven by it reaches ``healthy`` on a file present only in the container's rootfs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.bundle import DEFAULT_CAP_MASK
from agent_runtime.containers import ContainerError, ContainerSpec, Runtime
from shoal.base.util import new_container_id
from tests.integration.conftest import TEST_REF, scratch_runtime
from tests.waiting import wait_until
from worker import health

pytestmark = pytest.mark.root


@pytest.fixture
async def runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    async with scratch_runtime(scratch_dir, busybox_archive, "shoal-test-health") as rt:
        yield rt


async def _running(rt: Runtime, **kw: object) -> str:
    """A container that writes /ready (in its own rootfs only) and sleeps; returns its ID."""
    cid = new_container_id()
    await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", "echo yes > /ready; sleep 300"],
                                  env=["PROBE_VAR=from-spec"], cwd="/tmp", **kw))  # type: ignore[arg-type]
    st = await rt.start(cid)
    await wait_until(lambda: os.readlink(f"/proc/{st.pid}/exe").endswith("busybox"), 10, "container exec")
    await wait_until(lambda: os.path.exists(f"/proc/{st.pid}/root/ready"), 10, "/ready written")
    return cid


async def test_exec_runs_in_the_containers_namespaces_and_privileges(runtime: Runtime) -> None:
    cid = await _running(runtime, hostname="probe-host", memory_bytes=64 << 20)
    assert not os.path.exists("/ready")  # only in the container's rootfs
    code, out = await runtime.exec(cid, ["sh", "-c", "cat /ready; hostname; echo $PROBE_VAR; pwd; echo $$; "
                                          "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; cat /proc/self/cgroup"],
                                   timeout=10)
    assert code == 0, out
    lines = out.decode().splitlines()
    assert lines[:4] == ["yes", "probe-host", "from-spec", "/tmp"]
    assert int(lines[4]) > 1  # a PID of the container's pid namespace (its init is 1)
    fields = dict(line.split(":\t") for line in lines[5:7])
    assert int(fields["CapEff"], 16) == DEFAULT_CAP_MASK and fields["NoNewPrivs"] == "1"
    pid = runtime.state(cid).pid
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # the exit code, a missing command, bounded output
    assert (await runtime.exec(cid, ["sh", "-c", "exit 7"], timeout=10))[0] == 7
    code, out = await runtime.exec(cid, ["no-such-probe"], timeout=10)
    assert code == 127 and b"executable file not found" in out
    code, out = await runtime.exec(cid, ["sh", "-c", "yes | head -c 100000"], timeout=10, output_limit=4096)
    assert code == 0 and len(out) == 4096


def sleepers() -> list[str]:
    """Host PIDs of processes running ``sleep 3171`` (the probe below)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x003171\x00":
                    out.append(p)
            except OSError:
                pass
    return out


async def test_exec_timeout_kills_the_probe(runtime: Runtime) -> None:
    cid = await _running(runtime)
    loop = asyncio.get_running_loop()
    pid = runtime.state(cid).pid
    t0 = loop.time()
    probe = asyncio.ensure_future(runtime.exec(cid, ["sleep", "3171"], timeout=3.0))
    await wait_until(sleepers, 3, "the probe running")
    for p in sleepers():  # in the container's cgroup and pid namespace, seen from the host
        assert cid in Path(f"/proc/{p}/cgroup").read_text()
        assert os.readlink(f"/proc/{p}/ns/pid") == os.readlink(f"/proc/{pid}/ns/pid")
    with pytest.raises(TimeoutError):
        await probe
    assert loop.time() - t0 < 8

    await wait_until(lambda: not sleepers(), 5, "the timed-out probe killed")
    await runtime.stop(cid, timeout=2)
    with pytest.raises(ContainerError, match="not running"):
        await runtime.exec(cid, ["true"], timeout=5)


async def test_monitor_reaches_healthy_through_the_runtime(runtime: Runtime) -> None:
    cid = await _running(runtime)
    good = health.HealthConfig(test=("CMD-SHELL", "test -f /ready"), interval=0.05, timeout=5, retries=1)
    ch = health.ContainerHealth(good, runtime, cid)
    ch.start()
    try:
        await wait_until(lambda: ch.status == health.HEALTHY, 20, "healthy")
    finally:
        ch.stop()
    bad = health.HealthConfig(test=("CMD", "test", "-f", "/not-there"), interval=0.05, timeout=5, retries=2)
    ch = health.ContainerHealth(bad, runtime, cid)
    ch.start()
    try:
        await wait_until(lambda: ch.status == health.UNHEALTHY, 20, "unhealthy")
    finally:
        ch.stop()
    assert [e["ExitCode"] for e in ch.to_docker()["Log"]] == [1, 1]
