"""Integration test of worker.executor with the real runtime (agent_runtime) and the real bridge (root).

Everything runs in a throwaway network namespace standing in for the node (``shoal-hN`` in the
lab): the event loop runs in a thread that joined it, so the bridge, the nftables table and the
HTTP client are there.  The image is the busybox test image from tests/integration/conftest.py,
loaded into a fresh image store.  At the end every container, the bridge, the namespace files, the
nftables table and the cgroup parent are removed, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.bundle import DEFAULT_CAP_MASK
from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from overlaynet import netns
from overlaynet.bridge import LocalBridge
from tests.integration.conftest import TEST_REF
from tests.waiting import wait_until
from worker.executor import Executor, container_id_for

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)

NODE = {"ID": "testnode", "ShoalBridge": {"Subnet": "10.232.5.0/24", "Gateway": "10.232.5.1"}}


def task(tid: str, addr: str, args: list[str], image: str = TEST_REF, desired: str = "running") -> dict[str, Any]:
    return {
        "ID": tid, "ServiceID": "svc-test", "Slot": 1, "DesiredState": desired,
        "Status": {"State": "assigned", "Message": "scheduler assigned task to node"},
        "Spec": {"ContainerSpec": {"Image": image, "Args": args, "StopGracePeriod": 2_000_000_000},
                 "Resources": {"Limits": {"MemoryBytes": 64 << 20, "Pids": 64}}},
        "NetworksAttachments": [{
            "Network": {"ID": "bridge", "Spec": {"Name": "bridge", "Driver": "bridge", "Scope": "local"},
                        "IPAMOptions": {"Configs": [{"Subnet": "10.232.5.0/24", "Gateway": "10.232.5.1"}]}},
            "Addresses": [addr]}],
    }


def memory_limit(rel: str) -> int:
    """The memory limit in bytes of cgroup ``rel`` (cgroup v1 memory.limit_in_bytes or v2 memory.max)."""
    for f in (Path("/sys/fs/cgroup/memory") / rel / "memory.limit_in_bytes", Path("/sys/fs/cgroup") / rel / "memory.max"):
        if f.exists():
            return int(f.read_text().strip())
    raise AssertionError(f"no memory cgroup {rel}")


class Node:
    """The executor with real parts, plus the reports it made."""

    def __init__(self, root: Path, archive: Path, cgroup_parent: str) -> None:
        self.images = ImageStore(root / "images", insecure_registries=["127.0.0.1:1"])
        self.images.load(archive)
        self.runtime = Runtime(root / "containers", root / "exec", self.images, cgroup_parent=cgroup_parent)
        self.bridge = LocalBridge("shoalex0", root / "exec")
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.executor = Executor(self.runtime, self.images, self.bridge, self.report)

    def report(self, tid: str, status: dict[str, Any]) -> None:  # a sync callback, as allowed
        self.reports.append((tid, status))

    def states(self, tid: str) -> list[str]:
        return [s["State"] for t, s in self.reports if t == tid]

    def last(self, tid: str) -> dict[str, Any]:
        return [s for t, s in self.reports if t == tid][-1]

    async def teardown(self) -> None:
        await self.executor.close()
        for st in self.runtime.list():
            await self.runtime.remove(st.id)
        self.bridge.cleanup()


@pytest.fixture
def hostns(scratch_dir: Path) -> Iterator[Path]:
    path = scratch_dir / "hostns"
    netns.create(path)
    try:
        subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)
        yield path
    finally:
        netns.remove(path)



def run_node_test(hostns: Path, scratch_dir: Path, archive: Path, cgroup_parent: str,
                  body: Callable[[Node], Any]) -> None:
    async def main() -> None:
        node = Node(scratch_dir, archive, cgroup_parent)
        try:
            await body(node)
        finally:
            await node.teardown()

    netns.run_in_netns(hostns, lambda: asyncio.run(main()))


async def fetch(host: str, path: str, timeout: float = 10.0) -> str:
    """GET ``http://host:80{path}`` (HTTP/1.0) from this thread's network namespace and return the body;
    retries until ``timeout`` (the server may still be binding)."""

    async def get_once() -> list[str] | str:
        """``[body]`` on a 200 (a list: an empty body is an answer too), else the status line."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, 80), 2)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        # headers end at the first empty line (CGI output may use bare \n)
        head, body = (re.split(r"\r?\n\r?\n", raw.decode(errors="replace"), maxsplit=1) + [""])[:2]
        status = head.splitlines()[0] if head else ""
        return [body] if status.startswith("HTTP/1.") and " 200 " in status else status

    async def answered() -> list[str] | None:
        got = await get_once()
        return got if isinstance(got, list) else None

    got = await wait_until(answered, timeout, f"GET http://{host}{path} to answer 200", interval=0.1,
                           retry=(OSError, TimeoutError))
    return got[0]


def test_task_runs_serves_http_and_is_removed(hostns: Path, scratch_dir: Path, busybox_archive: Path,
                                               cgroup_parent: str) -> None:
    async def body(node: Node) -> None:
        t = task("task-web-1", "10.232.5.2/24", ["httpd", "-f", "-p", "80", "-h", "/www"])
        cid = container_id_for("task-web-1")
        await node.executor.set_assignments(NODE, [t])
        await wait_until(lambda: node.states("task-web-1")[-1:] in (["running"], ["failed"], ["rejected"]), 30,
                    "the task to run")
        assert node.states("task-web-1") == ["accepted", "preparing", "starting", "running"], node.reports
        cs = node.last("task-web-1")["ContainerStatus"]
        assert cs["ContainerID"] == cid and cs["PID"] > 0
        assert Path(f"/proc/{cs['PID']}").exists()
        # the task's process is in the namespace the bridge made, and its limits came from the spec
        assert os.stat(f"/proc/{cs['PID']}/ns/net").st_ino == os.stat(node.bridge.netns_path(cid)).st_ino
        assert memory_limit(f"{cgroup_parent}/{cid}") == 64 << 20
        # reachable over HTTP at its address from the host side; the CGI prints the hostname
        assert "shoal busybox" in await fetch("10.232.5.2", "/")
        assert (await fetch("10.232.5.2", "/cgi-bin/whoami")).strip() == cid[:12]
        hosts = Path(node.runtime.root / cid / "hosts").read_text()
        assert "10.232.5.2" in hosts

        await node.executor.set_assignments(NODE, [{**t, "DesiredState": "shutdown"}])
        await wait_until(lambda: node.states("task-web-1")[-1:] == ["shutdown"], 15, "shutdown")
        assert node.runtime.state(cid).status == "exited"
        assert not Path(f"/proc/{cs['PID']}").exists()

        await node.executor.set_assignments(NODE, [{**t, "DesiredState": "remove"}])
        await wait_until(lambda: "task-web-1" not in node.executor.task_states(), 15, "removal")
        assert node.runtime.list() == []
        assert not (node.runtime.root / cid).exists()
        assert not node.bridge.netns_path(cid).exists()
        links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        assert node.bridge.veth_name(cid) not in {link["ifname"] for link in links}
        assert not Cgroup(f"{cgroup_parent}/{cid}").exists()

    run_node_test(hostns, scratch_dir, busybox_archive, cgroup_parent, body)


def test_missing_command_fails_and_bad_image_is_rejected(hostns: Path, scratch_dir: Path,
                                                         busybox_archive: Path, cgroup_parent: str) -> None:
    async def body(node: Node) -> None:
        missing = task("task-missing", "10.232.5.3/24", ["/no/such/command"])
        bad = task("task-badimage", "10.232.5.4/24", ["true"], image="127.0.0.1:1/nosuch/image:latest")
        await node.executor.set_assignments(NODE, [missing, bad])
        await wait_until(lambda: node.states("task-missing")[-1:] == ["failed"]
                    and node.states("task-badimage")[-1:] == ["rejected"], 30, "failed and rejected")
        failed = node.last("task-missing")
        assert failed["Err"].startswith("starting container failed: ") and "/no/such/command" in failed["Err"], failed
        assert failed["ContainerStatus"]["ExitCode"] == 127
        rejected = node.last("task-badimage")
        assert rejected["Err"] and "127.0.0.1:1" in rejected["Err"], rejected
        assert "running" not in node.states("task-badimage")
        # the failed task's network is released right after the report; the rejected one never got one
        await wait_until(lambda: not node.bridge.netns_path(container_id_for("task-missing")).exists(), 5,
                    "the failed task's network to be released")
        assert not node.bridge.netns_path(container_id_for("task-badimage")).exists()

        await node.executor.set_assignments(NODE, [])  # both vanish: containers removed
        await wait_until(lambda: node.executor.task_states() == {}, 15, "removal")
        assert node.runtime.list() == []

    run_node_test(hostns, scratch_dir, busybox_archive, cgroup_parent, body)


def test_recover_after_restart_keeps_container_running(hostns: Path, scratch_dir: Path,
                                                       busybox_archive: Path, cgroup_parent: str) -> None:
    async def body(node: Node) -> None:
        t = task("task-recover", "10.232.5.5/24", ["httpd", "-f", "-p", "80", "-h", "/www"])
        await node.executor.set_assignments(NODE, [t])
        await wait_until(lambda: node.states("task-recover")[-1:] == ["running"], 30, "running")
        pid = node.last("task-recover")["ContainerStatus"]["PID"]
        await node.executor.close()  # the daemon goes away; the container stays

        reports: list[tuple[str, dict[str, Any]]] = []
        ex2 = Executor(node.runtime, node.images, node.bridge, lambda tid, st: reports.append((tid, st)))
        node.executor = ex2  # teardown closes this one
        await ex2.recover()
        await wait_until(lambda: bool(reports), 10, "a report of the recovered task")
        assert reports[0][0] == "task-recover" and reports[0][1]["State"] == "running"
        assert reports[0][1]["ContainerStatus"]["PID"] == pid
        running = {**t, "Status": {"State": "running"}}
        await ex2.set_assignments(NODE, [running])
        assert (await fetch("10.232.5.5", "/cgi-bin/whoami")).strip() == container_id_for("task-recover")[:12]
        assert node.runtime.state(container_id_for("task-recover")).pid == pid  # not restarted

    run_node_test(hostns, scratch_dir, busybox_archive, cgroup_parent, body)


def test_ten_tasks_at_once(hostns: Path, scratch_dir: Path, busybox_archive: Path, cgroup_parent: str) -> None:
    """Tasks assigned together are prepared and started concurrently; all reachable; all removed."""
    n = 10

    async def body(node: Node) -> None:
        tasks = [task(f"task-par-{i}", f"10.232.5.{20 + i}/24", ["httpd", "-f", "-p", "80", "-h", "/www"])
                 for i in range(n)]
        await node.executor.set_assignments(NODE, tasks)
        await wait_until(lambda: all(node.states(f"task-par-{i}")[-1:] == ["running"] for i in range(n)), 60,
                    "all tasks running")
        # concurrency: some task reached 'preparing' after another one had already reached it but before
        # that one was running, i.e. the controllers interleave rather than run one after another
        order = [(t, s["State"]) for t, s in node.reports]
        first_running = next(i for i, (_, st) in enumerate(order) if st == "running")
        assert sum(1 for _, st in order[:first_running] if st == "preparing") == n
        bodies = await asyncio.gather(*(fetch(f"10.232.5.{20 + i}", "/cgi-bin/whoami") for i in range(n)))
        assert {b.strip() for b in bodies} == {container_id_for(f"task-par-{i}")[:12] for i in range(n)}
        await node.executor.set_assignments(NODE, [])
        await wait_until(lambda: node.executor.task_states() == {}, 60, "all tasks removed")
        assert node.runtime.list() == []
        assert not any((node.bridge.exec_root / "netns").iterdir())

    run_node_test(hostns, scratch_dir, busybox_archive, cgroup_parent, body)


def test_container_spec_security_and_limit_fields_reach_the_container(
        hostns: Path, scratch_dir: Path, busybox_archive: Path, cgroup_parent: str) -> None:
    """A task's CapabilityAdd/Drop, Ulimits, Sysctls, Groups, DNSConfig, Hosts and OomScoreAdj (Docker's
    API spelling) are what the container sees."""
    probe = ("grep -E '^(CapEff|Groups):' /proc/self/status | tr -d '\\t'; echo nofile=$(ulimit -n);"
             "echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); echo oom=$(cat /proc/self/oom_score_adj);"
             "cat /etc/hosts /etc/resolv.conf")

    async def body(node: Node) -> None:
        t = task("task-sec-1", "10.232.5.7/24", ["sh", "-c", probe])
        t["Spec"]["ContainerSpec"].update({
            "CapabilityAdd": ["NET_ADMIN"], "CapabilityDrop": ["CHOWN"],
            "Ulimits": [{"Name": "nofile", "Soft": 4321, "Hard": 4321}],
            "Sysctls": {"net.ipv4.ip_forward": "1"}, "Groups": ["staff", "777"], "OomScoreAdj": 99,
            "DNSConfig": {"Nameservers": ["10.0.0.53"], "Search": ["svc.example"], "Options": ["ndots:3"]},
            "Hosts": ["10.232.5.99 db db.local", "cache:10.232.5.98"],
        })
        t["Spec"]["RestartPolicy"] = {"Condition": "none"}
        cid = container_id_for("task-sec-1")
        await node.executor.set_assignments(NODE, [t])
        await wait_until(lambda: node.states("task-sec-1")[-1:] in (["complete"], ["failed"], ["rejected"]), 30,
                    "the task to finish")
        assert node.states("task-sec-1")[-1] == "complete", node.reports
        out = "".join(r["log"] for r in node.runtime.read_logs(cid) if r["stream"] == "stdout")
        assert f"CapEff:{(DEFAULT_CAP_MASK & ~1) | (1 << 12):016x}\n" in out, out
        groups = next(line for line in out.splitlines() if line.startswith("Groups:"))
        assert sorted(int(g) for g in groups[len("Groups:"):].split()) == [50, 777]
        for line in ("nofile=4321", "fwd=1", "oom=99", "10.232.5.99\tdb", "10.232.5.99\tdb.local",
                     "10.232.5.98\tcache", "nameserver 10.0.0.53", "search svc.example", "options ndots:3"):
            assert line + "\n" in out, (line, out)

        await node.executor.set_assignments(NODE, [])
        await wait_until(lambda: node.executor.task_states() == {}, 15, "removal")
        assert node.runtime.list() == []

    run_node_test(hostns, scratch_dir, busybox_archive, cgroup_parent, body)
