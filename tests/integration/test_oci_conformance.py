"""The same OCI bundles through shoal-oci and through Debian's runc: the container must see the same
world (hostname, distinct namespaces, capabilities, no_new_privs, uid/gid, cwd, env, rlimits, the
mounts of /proc, /dev and /sys, the /dev entries, masked paths, exit codes and exec errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.bundle import DEFAULT_CAP_MASK
from agent_runtime.containers import ContainerSpec, Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from tests.integration.conftest import TEST_REF, require_root
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.root

RUNC = shutil.which("runc") or "/usr/sbin/runc"
SHOAL_OCI = str(Path(sys.executable).parent / "shoal-oci")

PROBE = r"""
echo "hostname=$(hostname)"
echo "pid=$$"
for n in pid mnt uts ipc net; do echo "ns_$n=$(readlink /proc/self/ns/$n)"; done
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' | sed 's/:/=/'
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "cwd=$(pwd)"
env | sort | sed 's/^/env_/'
grep 'Max open files' /proc/self/limits | tr -s ' ' | sed 's/^/limit_/'
awk '{print "mnt_" $5 "=" $6 " " $(NF-2)}' /proc/self/mountinfo | grep -E '^mnt_(/proc|/dev|/dev/pts|/dev/shm|/dev/mqueue|/sys|/sys/fs/cgroup|/etc/hosts|/etc/hostname|/etc/resolv.conf|/proc/sys|/proc/kcore|/sys/firmware)='
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "kcore_size=$(wc -c < /proc/kcore 2>/dev/null)"
echo "sys_ro=$(touch /sys/x 2>&1 | grep -c 'Read-only')"
echo "proc_sys_ro=$(echo 1 2>&1 > /proc/sys/kernel/ns_last_pid | grep -c 'Read-only')"
"""


def _normalize(out: str) -> dict[str, str]:
    kv: dict[str, str] = {}
    for line in out.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            kv[k] = v.strip()
    return kv


@pytest.fixture
async def bundle_runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    require_root()
    if not os.path.exists(RUNC):
        pytest.skip("runc is not installed")
    images = ImageStore(scratch_dir / "images")
    images.load(busybox_archive)
    parent = f"shoal-conf-{os.getpid()}"
    rt = Runtime(scratch_dir / "containers", scratch_dir / "exec", images, parent, "shoal")
    try:
        yield rt
    finally:
        for st in rt.list():
            await rt.remove(st.id)
        Cgroup("/" + parent).destroy()


def _run(runtime: str, bundle: Path, state_root: Path, name: str) -> subprocess.CompletedProcess[str]:
    argv = [runtime, "--root", str(state_root), "run", "--bundle", str(bundle), name]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


async def _both(rt: Runtime, spec: ContainerSpec, tmp: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    await rt.create(spec)
    bundle = rt.root / spec.id
    ours = _run(SHOAL_OCI, bundle, tmp / "shoal-oci", "conf-" + spec.id[:12])
    theirs = _run(RUNC, bundle, tmp / "runc", "conf-" + spec.id[:12])
    return ours, theirs


async def test_container_sees_the_same_world(bundle_runtime: Runtime, scratch_dir: Path) -> None:
    spec = ContainerSpec(id=new_container_id(), image=TEST_REF, command=["sh", "-c", PROBE],
                         env=["FOO=bar"], cwd="/www", user="app", memory_bytes=64 << 20, pids_limit=100)
    ours, theirs = await _both(bundle_runtime, spec, scratch_dir)
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    a, b = _normalize(ours.stdout), _normalize(theirs.stdout)
    for n in ("pid", "mnt", "uts", "ipc", "net"):
        host = os.readlink(f"/proc/self/ns/{n}")
        assert a[f"ns_{n}"] != host and b[f"ns_{n}"] != host, n
        del a[f"ns_{n}"], b[f"ns_{n}"]
    assert a["hostname"] == spec.id[:12]
    assert a["CapEff"] == b["CapEff"] and a["NoNewPrivs"] == "1"
    # runc applies Docker's seccomp profile only when the bundle asks; ours has none: both 0.
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert diff == {}, json.dumps(diff, indent=1)


SECURITY_PROBE = r"""
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|Groups|Uid|Gid):' /proc/self/status | tr -d '\t' | sed 's/:/=/'
echo "nofile=$(ulimit -Sn)/$(ulimit -Hn) nproc=$(ulimit -Su)/$(ulimit -Hu) core=$(ulimit -Sc)/$(ulimit -Hc)"
echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
echo "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "shmmax=$(cat /proc/sys/kernel/shmmax)"
echo "msg_max=$(cat /proc/sys/fs/mqueue/msg_max)"
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
"""


async def test_security_and_limit_fields_match_runc(bundle_runtime: Runtime, scratch_dir: Path) -> None:
    """cap add/drop, rlimits, supplementary groups, sysctls and oomScoreAdj from one config.json:
    shoal-oci and runc must give the container the same values, and the values asked for."""
    spec = ContainerSpec(id=new_container_id(), image=TEST_REF, command=["sh", "-c", SECURITY_PROBE], user="app",
                         cap_add=["NET_ADMIN", "SYS_TIME"], cap_drop=["CHOWN", "MKNOD"],
                         ulimits=[{"name": "nofile", "soft": 1111, "hard": 2222},
                                  {"name": "nproc", "soft": 333, "hard": 444},
                                  {"name": "core", "soft": 0, "hard": -1}],
                         groups=["nogroup", "4321"], oom_score_adj=250,
                         sysctls={"net.ipv4.ip_forward": "1", "net.core.somaxconn": "1212",
                                  "kernel.shmmax": "987654321", "fs.mqueue.msg_max": "42"})
    ours, theirs = await _both(bundle_runtime, spec, scratch_dir)
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    a, b = _normalize(ours.stdout), _normalize(theirs.stdout)
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert diff == {}, json.dumps(diff, indent=1)
    assert int(a["CapBnd"], 16) == (DEFAULT_CAP_MASK & ~(1 << 0) & ~(1 << 27)) | (1 << 12) | (1 << 25)
    assert sorted(int(g) for g in a["Groups"].split()) == [50, 4321, 65534]
    assert "nofile=1111/2222 nproc=333/444 core=0/unlimited" in ours.stdout, ours.stdout
    assert (a["ip_forward"], a["somaxconn"], a["shmmax"], a["msg_max"], a["oom_score_adj"]) == (
        "1", "1212", "987654321", "42", "250")


async def test_exit_codes_and_exec_errors_match(bundle_runtime: Runtime, scratch_dir: Path) -> None:
    ours, theirs = await _both(bundle_runtime, ContainerSpec(id=new_container_id(), image=TEST_REF,
                                                             command=["sh", "-c", "exit 5"]), scratch_dir)
    assert ours.returncode == theirs.returncode == 5
    ours, theirs = await _both(bundle_runtime, ContainerSpec(id=new_container_id(), image=TEST_REF,
                                                             command=["nope-not-here"]), scratch_dir)
    msg = 'exec: "nope-not-here": executable file not found in $PATH'
    assert msg in ours.stderr and msg in theirs.stderr.replace('\\"', '"')
    assert ours.returncode == 127 and theirs.returncode != 0
    ours, theirs = await _both(bundle_runtime, ContainerSpec(id=new_container_id(), image=TEST_REF,
                                                             command=["sh", "-c", "kill -9 $$; echo survived"]),
                                 scratch_dir)
    # The kernel protects a pid namespace's init from signals sent from inside it, even SIGKILL.
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout == "survived\n"


async def test_shoal_oci_state_kill_delete(bundle_runtime: Runtime, scratch_dir: Path) -> None:
    spec = ContainerSpec(id=new_container_id(), image=TEST_REF, command=["sleep", "60"])
    await bundle_runtime.create(spec)
    bundle = bundle_runtime.root / spec.id
    root = scratch_dir / "cli-state"
    name = "cli-" + spec.id[:12]
    pid_file = scratch_dir / "cli.pid"
    proc = subprocess.Popen([SHOAL_OCI, "--root", str(root), "run", "--pid-file", str(pid_file), "--bundle",
                             str(bundle), name], stdin=subprocess.DEVNULL)
    try:
        def started() -> bool:
            assert proc.poll() is None, "shoal-oci run exited before it started the container"
            return pid_file.exists() and bool(pid_file.read_text())

        wait_until_sync(started, 20, "shoal-oci run to start the container (its pid file)", interval=0.01)
        st = json.loads(subprocess.run([SHOAL_OCI, "--root", str(root), "state", name], check=True,
                                       capture_output=True, text=True).stdout)
        assert st["status"] == "running" and st["pid"] == int(pid_file.read_text())
        listed = json.loads(subprocess.run([SHOAL_OCI, "--root", str(root), "list"], check=True,
                                           capture_output=True, text=True).stdout)
        assert [c["id"] for c in listed] == [name]
        busy = subprocess.run([SHOAL_OCI, "--root", str(root), "delete", name], capture_output=True, text=True)
        assert busy.returncode != 0 and "is running" in busy.stderr
        subprocess.run([SHOAL_OCI, "--root", str(root), "kill", name, "KILL"], check=True)
        assert proc.wait(20) == 137
        assert not (root / name).exists()  # run cleans its state when the container exits
        gone = subprocess.run([SHOAL_OCI, "--root", str(root), "state", name], capture_output=True, text=True)
        assert gone.returncode != 0 and "does not exist" in gone.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("runtime", ["shoal", "runc"])
async def test_create_then_start(bundle_runtime: Runtime, scratch_dir: Path, runtime: str) -> None:
    """Two-step lifecycle, the same through both runtimes: nothing runs before `start`."""
    binary = SHOAL_OCI if runtime == "shoal" else RUNC
    spec = ContainerSpec(id=new_container_id(), image=TEST_REF, command=["sh", "-c", "echo exec-happened; exit 4"])
    await bundle_runtime.create(spec)
    bundle = bundle_runtime.root / spec.id
    root = scratch_dir / f"two-step-{runtime}"
    name = "two-" + spec.id[:12]
    out_path = scratch_dir / f"{runtime}.out"

    def oci(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "--root", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=check)

    def status() -> str:
        return str(json.loads(oci("state", name).stdout)["status"])

    with open(out_path, "w") as out:
        subprocess.run([binary, "--root", str(root), "create", "--bundle", str(bundle), name], stdout=out,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True, timeout=30)
    try:
        assert status() == "created"
        assert out_path.read_text() == ""
        oci("start", name)
        wait_until_sync(lambda: status() == "stopped", 20, "the container to stop", interval=0.02)
        assert out_path.read_text() == "exec-happened\n"
    finally:
        oci("delete", "--force", name, check=False)
    assert oci("state", name, check=False).returncode != 0
