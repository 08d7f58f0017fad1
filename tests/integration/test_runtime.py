"""The runtime runs and removes real containers and proves their isolation (root, one host).

Each test builds on the busybox OCI archive from conftest, runs containers through
``agent_runtime.containers.Runtime`` with Shoal's own OCI runtime (shoal-oci) and checks what the
kernel says: namespace inodes, cgroup limits, /proc/self/status, mounts. Everything is removed
afterwards (containers, mounts, cgroups, network namespaces) even when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.bundle import DEFAULT_CAP_MASK
from agent_runtime.containers import ContainerSpec, Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from tests.integration.conftest import TEST_REF, cleanup_runtime, require_root, scratch_runtime
from tests.waiting import wait_until as wait_for

pytestmark = pytest.mark.root


@pytest.fixture
async def runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    """A Runtime on a scratch root with the busybox image loaded, using shoal-oci."""
    async with scratch_runtime(scratch_dir, busybox_archive, "shoal-test") as rt:
        yield rt


async def run(rt: Runtime, cmd: list[str], timeout: float = 30, **kw: object) -> tuple[int, str, str, str]:
    """Create+start a container running ``cmd``; wait for exit; return (code, stdout, stderr, id)."""
    cid = new_container_id()
    await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=cmd, **kw))  # type: ignore[arg-type]
    await rt.start(cid)
    code = await asyncio.wait_for(rt.wait(cid), timeout)
    logs = rt.read_logs(cid)
    out = "".join(r["log"] for r in logs if r["stream"] == "stdout")
    err = "".join(r["log"] for r in logs if r["stream"] == "stderr")
    return code, out, err, cid


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


async def test_namespaces_hostname_and_exit_code(runtime: Runtime) -> None:
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "60"]))
    st = await runtime.start(cid)
    assert st.status == "running" and st.pid > 0
    # Wait for the exec (the pid exists from before pivot_root), then compare namespace inodes.
    await wait_for(lambda: os.readlink(f"/proc/{st.pid}/exe").endswith("busybox"), 10, "container exec")
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{st.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    await runtime.remove(cid)

    code, out, _, cid = await run(runtime, ["sh", "-c", "hostname; cat /etc/hostname; echo $$; exit 42"])
    assert code == 42
    assert out.split() == [cid[:12], cid[:12], "1"]
    assert runtime.state(cid).exit_code == 42 and runtime.state(cid).status == "exited"


async def test_no_new_privs_and_default_capabilities(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["grep", "-E", "^(NoNewPrivs|CapEff|CapBnd|CapPrm):", "/proc/self/status"])
    assert code == 0
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert fields["NoNewPrivs"] == "1"
    assert int(fields["CapEff"], 16) == DEFAULT_CAP_MASK == 0xA80425FB
    assert int(fields["CapBnd"], 16) == DEFAULT_CAP_MASK


async def test_memory_limit_oom_kill(runtime: Runtime) -> None:
    # dd's 64 MiB buffer is touched on the first read: far over the 16 MiB limit, so the OOM killer fires.
    code, _, _, _ = await run(runtime, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                              memory_bytes=16 * 1024 * 1024)
    assert code == 137
    code, _, _, _ = await run(runtime, ["dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"],
                              memory_bytes=16 * 1024 * 1024)
    assert code == 0


async def test_pids_limit_caps_fork_bomb(runtime: Runtime) -> None:
    cid = new_container_id()
    # The inner shell forks until the kernel refuses (it then dies with "can't fork"); its sleeps stay.
    script = "sh -c 'while :; do sleep 60 & done'; echo spawned; exec sleep 60"
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", script], pids_limit=20))
    await runtime.start(cid)
    await wait_for(lambda: any("spawned" in r["log"] for r in runtime.read_logs(cid)), 20, "the fork loop")
    cg = Cgroup(f"/{runtime.cgroup_parent}/{cid}")
    procs = cg.pids()
    assert 10 <= len(procs) <= 20, procs
    err = "".join(r["log"] for r in runtime.read_logs(cid) if r["stream"] == "stderr")
    assert "fork" in err.lower() or "resource temporarily unavailable" in err.lower(), err
    await runtime.remove(cid)


async def test_cpu_quota_written(runtime: Runtime) -> None:
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "60"], nano_cpus=500_000_000))
    await runtime.start(cid)
    cg = Cgroup(f"/{runtime.cgroup_parent}/{cid}")
    if cg.v2:
        assert Path(cg.dirs["unified"], "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert Path(cg.dirs["cpu"], "cpu.cfs_quota_us").read_text().strip() == "50000"
    await runtime.remove(cid)


async def test_stop_sigterm_then_sigkill(runtime: Runtime) -> None:
    # sleep as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM: SIGKILL after the grace period.
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "100"]))
    await runtime.start(cid)
    t0 = time.monotonic()
    st = await runtime.stop(cid, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert st.status == "exited" and st.exit_code == 137
    assert 0.9 <= elapsed < 8, elapsed
    # A process that handles SIGTERM exits on its own, well before the grace period.
    cid2 = new_container_id()
    await runtime.create(ContainerSpec(id=cid2, image=TEST_REF,
                                       command=["sh", "-c", "trap 'exit 3' TERM; echo up; while :; do sleep 0.1; done"]))
    await runtime.start(cid2)
    await wait_for(lambda: runtime.read_logs(cid2), 10, "the trap to be installed")
    t0 = time.monotonic()
    st = await runtime.stop(cid2, timeout=20.0)
    assert st.exit_code == 3 and time.monotonic() - t0 < 10


async def test_remove_leaves_nothing(runtime: Runtime) -> None:
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "100"], memory_bytes=64 << 20))
    st = await runtime.start(cid)
    rootfs = runtime.root / cid / "rootfs"
    cg = Cgroup(f"/{runtime.cgroup_parent}/{cid}")
    assert _mounted(rootfs) and cg.exists() and st.pid in cg.pids()
    shim_pid = int(__import__("json").loads((runtime.root / cid / "shim.json").read_text())["shim_pid"])
    await runtime.remove(cid)
    assert not (runtime.root / cid).exists()
    assert not _mounted(rootfs)
    assert not cg.exists()
    # Both are gone (the shim's parent is init, which reaps it a moment later).
    await wait_for(lambda: not os.path.exists(f"/proc/{st.pid}") and not os.path.exists(f"/proc/{shim_pid}"), 5,
                   "container and shim processes to disappear")
    assert cid not in [s.id for s in runtime.list()]


async def test_logs_are_json_lines(runtime: Runtime) -> None:
    code, _, _, cid = await run(runtime, ["sh", "-c", "echo out1; echo err1 >&2; printf partial"])
    assert code == 0
    import json

    lines = runtime.log_path(cid).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert all(set(r) == {"log", "stream", "time"} and r["time"].endswith("Z") for r in recs)
    assert {(r["stream"], r["log"]) for r in recs} == {("stdout", "out1\n"), ("stderr", "err1\n"),
                                                         ("stdout", "partial")}
    assert [r["log"] for r in runtime.read_logs(cid, tail=1)] in (["partial"], ["err1\n"], ["out1\n"])
    assert runtime.read_logs(cid, since=time.time() + 60) == []


async def test_command_not_found(runtime: Runtime) -> None:
    code, _, err, cid = await run(runtime, ["no-such-command"])
    assert code == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in err
    assert "executable file not found" in (runtime.state(cid).error or "")


async def test_user_env_cwd_and_overlay_isolation(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["sh", "-c", "id; pwd; echo $FOO; echo $PATH; touch /etc/marker"],
                                user="app", env=["FOO=bar"], cwd="/tmp")
    assert code == 1 or code == 0  # touch /etc/marker fails for uid 1000: that is fine
    lines = out.splitlines()
    assert lines[0].startswith("uid=1000(app) gid=1000(app)") and "50(staff)" in lines[0]
    assert lines[1:3] == ["/tmp", "bar"]
    code, out, _, _ = await run(runtime, ["sh", "-c", "echo hi > /etc/written; cat /etc/written"])
    assert code == 0 and out == "hi\n"
    code, out, _, _ = await run(runtime, ["sh", "-c", "ls /etc/written 2>&1 || true"])
    assert "No such file" in out  # the other container's upper dir is not shared
    img = runtime.images.get(TEST_REF)
    assert img is not None and not (img.layers[0] / "etc/written").exists()


async def test_join_network_namespace(runtime: Runtime) -> None:
    name = f"shoal-t-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/run/netns/{name}"
        code, out, _, _ = await run(runtime, ["readlink", "/proc/self/ns/net"], netns=path)
        assert code == 0
        assert out.strip() == f"net:[{os.stat(path).st_ino}]"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_hosts_and_resolv_conf(runtime: Runtime) -> None:
    code, out, _, cid = await run(runtime, ["sh", "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf"],
                                  ip="10.200.1.5", hosts=[("db", "10.200.1.9")], dns=["10.0.0.53"])
    assert code == 0
    hosts, resolv = out.split("---\n")
    assert "127.0.0.1\tlocalhost" in hosts
    assert f"10.200.1.5\t{cid[:12]}" in hosts and "10.200.1.9\tdb" in hosts
    assert resolv.strip() == "nameserver 10.0.0.53"


async def test_reattach_after_runtime_restart(runtime: Runtime) -> None:
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", "echo started; sleep 100"]))
    st = await runtime.start(cid)
    read_logs = runtime.read_logs
    await wait_for(lambda: any("started" in r["log"] for r in read_logs(cid)), 10, "the first log line")
    # A new Runtime object on the same root, as shoald would make after a restart.
    rt2 = Runtime(runtime.root, runtime.exec_root, runtime.images, runtime.cgroup_parent, "shoal")
    del runtime
    found = {s.id: s for s in rt2.list()}
    assert found[cid].status == "running" and found[cid].pid == st.pid
    st2 = await rt2.stop(cid, timeout=0.5, signal="SIGKILL")
    assert st2.status == "exited" and st2.exit_code == 137
    assert [r["log"] for r in rt2.read_logs(cid)] == ["started\n"]


async def test_concurrent_starts(runtime: Runtime) -> None:
    ids = [new_container_id() for _ in range(8)]

    async def one(cid: str) -> int:
        await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", "hostname"]))
        await runtime.start(cid)
        return await runtime.wait(cid)

    codes = await asyncio.wait_for(asyncio.gather(*(one(c) for c in ids)), 60)
    assert codes == [0] * len(ids)
    for cid in ids:
        assert runtime.read_logs(cid)[0]["log"] == cid[:12] + "\n"


def test_start_returns_promptly_under_uvloop(scratch_dir: Path, busybox_archive: Path) -> None:
    """shoald runs on uvloop, whose subprocess spawning leaked pipe ends into the shim, so start()
    waited for the container to exit. The shim now closes every inherited descriptor."""
    require_root()
    uvloop = pytest.importorskip("uvloop")
    images = ImageStore(scratch_dir / "images")
    images.load(busybox_archive)
    parent = f"shoal-test-uv-{os.getpid()}"
    rt = Runtime(scratch_dir / "containers", scratch_dir / "exec", images, parent, "shoal")

    async def scenario() -> None:
        try:
            cid = new_container_id()
            await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "60"]))
            t0 = time.monotonic()
            st = await asyncio.wait_for(rt.start(cid), 20)
            assert st.status == "running" and time.monotonic() - t0 < 10
            st = await rt.stop(cid, timeout=0.5)
            assert st.exit_code == 137
        finally:
            await cleanup_runtime(rt, parent)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def test_start_failure_is_reported(runtime: Runtime) -> None:
    # The network namespace vanished between create and start: the runtime refuses, the state says why.
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["true"], netns="/run/netns/shoal-gone-x"))
    st = await runtime.start(cid)
    assert st.status == "exited" and st.exit_code not in (None, 0)
    assert "shoal-gone-x" in (st.error or "") and "does not exist" in (st.error or "")
    assert await runtime.wait(cid) == st.exit_code


async def test_bad_specs_are_refused(runtime: Runtime) -> None:
    from agent_runtime.containers import ContainerError

    with pytest.raises(ContainerError, match="invalid container ID"):
        await runtime.create(ContainerSpec(id="../../etc", image=TEST_REF, command=["true"]))
    with pytest.raises(ContainerError, match="unable to find user ghost"):
        await runtime.create(ContainerSpec(id=new_container_id(), image=TEST_REF, command=["true"], user="ghost"))
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["true"]))
    with pytest.raises(ContainerError, match="already exists"):
        await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["true"]))
    assert [s.id for s in runtime.list()] == [cid]  # the failed creates left nothing behind
    with open("/proc/self/mountinfo") as f:
        assert sum(str(runtime.root) in line for line in f) == 1


async def test_read_only_rootfs_bind_and_tmpfs_mounts(runtime: Runtime, scratch_dir: Path) -> None:
    """ReadOnly makes only the rootfs read-only (as Docker's --read-only): /dev/shm and the mounts
    stay writable; a read-only bind is read-only; tmpfs gets its size and mode."""
    host_dir = scratch_dir / "hostdata"
    host_dir.mkdir()
    (host_dir / "in.txt").write_text("from-host\n")
    ro_dir = scratch_dir / "rodata"
    ro_dir.mkdir()
    script = (
        "touch /rootfile 2>/dev/null && echo root-rw || echo root-ro; "
        "touch /dev/shm/x && echo shm-rw; "
        "cat /data/in.txt; echo out > /data/out.txt && echo data-rw; "
        "touch /ro/x 2>/dev/null && echo ro-rw || echo ro-ro; "
        "echo t > /scratch/f && echo scratch-rw; "
        "stat -c %a /scratch; grep ' /scratch ' /proc/mounts"
    )
    mounts = [
        {"type": "bind", "source": str(host_dir), "target": "/data", "read_only": False, "propagation": None,
         "recursive": True},
        {"type": "bind", "source": str(ro_dir), "target": "/ro", "read_only": True, "propagation": "rprivate",
         "recursive": True},
        {"type": "tmpfs", "target": "/scratch", "read_only": False, "size_bytes": 4 << 20, "mode": 0o1770},
    ]
    code, out, err, _ = await run(runtime, ["sh", "-c", script], read_only=True, mounts=mounts)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:6] == ["root-ro", "shm-rw", "from-host", "data-rw", "ro-ro", "scratch-rw"], (out, err)
    assert lines[6] == "1770"
    assert "size=4096k" in lines[7] and "noexec" in lines[7], lines[7]
    assert (host_dir / "out.txt").read_text() == "out\n"
    assert list(ro_dir.iterdir()) == []
    # without read_only the rootfs is writable
    code, out, _, _ = await run(runtime, ["sh", "-c", "touch /rootfile && echo ok"])
    assert (code, out) == (0, "ok\n")


# ---- ContainerSpec security and limit fields, applied by our runtime --------------------------

def _status(out: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in out.strip().splitlines() if ":\t" in line)


async def test_cap_add_and_cap_drop(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["grep", "-E", "^Cap(Eff|Bnd|Prm):", "/proc/self/status"],
                                cap_add=["NET_ADMIN"], cap_drop=["CAP_CHOWN"])
    assert code == 0
    want = (DEFAULT_CAP_MASK & ~(1 << 0)) | (1 << 12)  # - CHOWN (0) + NET_ADMIN (12)
    fields = _status(out)
    assert {k: int(v, 16) for k, v in fields.items()} == {"CapEff": want, "CapBnd": want, "CapPrm": want}


async def test_ulimits_nofile_and_nproc(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u"],
                                ulimits=[{"name": "nofile", "soft": 1234, "hard": 2345},
                                         {"name": "nproc", "soft": 77, "hard": 88}])
    assert code == 0
    assert out.split() == ["1234", "2345", "77"]


async def test_sysctls_are_set_inside(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/core/somaxconn",
                                          "/proc/sys/kernel/shmmax"],
                                sysctls={"net.ipv4.ip_forward": "1", "net.core.somaxconn": "1234",
                                         "kernel.shmmax": "123456789"})
    assert code == 0, out
    assert out.split() == ["1", "1234", "123456789"]
    # the host's own values are untouched (the container's are namespaced)
    assert Path("/proc/sys/kernel/shmmax").read_text().strip() != "123456789"


async def test_supplementary_groups(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["grep", "-E", "^(Groups|Gid|Uid):", "/proc/self/status"],
                                user="app", groups=["nogroup", "4321"])
    assert code == 0
    fields = _status(out)
    assert fields["Uid"].split()[0] == "1000" and fields["Gid"].split()[0] == "1000"
    assert sorted(int(g) for g in fields["Groups"].split()) == [50, 4321, 65534]  # staff via /etc/group


async def test_oom_score_adj(runtime: Runtime) -> None:
    code, out, _, _ = await run(runtime, ["cat", "/proc/self/oom_score_adj"], oom_score_adj=321)
    assert code == 0 and out.strip() == "321"


async def test_dns_config_and_extra_hosts(runtime: Runtime) -> None:
    from shoal.base.containerrules import parse_extra_host

    hosts = parse_extra_host("10.200.1.9 db db.local") + parse_extra_host("cache:10.200.1.10")
    code, out, _, _ = await run(runtime, ["sh", "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf"],
                                hosts=hosts, dns=["10.0.0.53"], dns_search=["svc.example", "example"],
                                dns_options=["ndots:2"])
    assert code == 0
    etc_hosts, resolv = out.split("---\n")
    for line in ("10.200.1.9\tdb", "10.200.1.9\tdb.local", "10.200.1.10\tcache"):
        assert line + "\n" in etc_hosts
    assert resolv == "nameserver 10.0.0.53\nsearch svc.example example\noptions ndots:2\n"
