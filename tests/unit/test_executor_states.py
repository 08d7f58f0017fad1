"""Unit tests of worker.executor's state machine, with test doubles for runtime, image store and bridge.

The doubles (``*TestDouble``) stand in for agent_runtime and overlaynet here only; the
integration test (tests/integration/test_executor.py) runs the real ones.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until as until
from worker.executor import Executor, container_id_for

# ------------------------------------------------------------------ test doubles


@dataclass
class StateTestDouble:
    id: str
    status: str
    pid: int = 0
    exit_code: int | None = None
    labels: dict[str, str] = field(default_factory=dict)


class RuntimeTestDouble:
    """In-memory stand-in for agent_runtime.containers.Runtime (no processes)."""

    def __init__(self) -> None:
        self.containers: dict[str, StateTestDouble] = {}
        self.specs: dict[str, Any] = {}
        self.exits: dict[str, asyncio.Future[int]] = {}
        self.calls: list[tuple[str, str]] = []
        self.stops: list[tuple[str, float, str]] = []
        self.creating = 0
        self.max_creating = 0
        self.logs: dict[str, list[dict[str, str]]] = {}

    def _fut(self, cid: str) -> asyncio.Future[int]:
        if cid not in self.exits:
            self.exits[cid] = asyncio.get_running_loop().create_future()
        return self.exits[cid]

    async def create(self, spec: Any) -> StateTestDouble:
        self.calls.append(("create", spec.id))
        self.creating += 1
        self.max_creating = max(self.max_creating, self.creating)
        await asyncio.sleep(0.05)
        self.creating -= 1
        st = StateTestDouble(spec.id, "created", labels=dict(spec.labels))
        self.containers[spec.id] = st
        self.specs[spec.id] = spec
        return st

    async def start(self, cid: str) -> StateTestDouble:
        self.calls.append(("start", cid))
        st = self.containers[cid]
        st.status, st.pid = "running", 4000 + len(self.calls)
        self._fut(cid)
        return st

    async def wait(self, cid: str) -> int:
        return await asyncio.shield(self._fut(cid))

    async def stop(self, cid: str, timeout: float, signal: str) -> None:
        self.stops.append((cid, timeout, signal))
        self.exit(cid, 143)

    async def remove(self, cid: str) -> None:
        self.calls.append(("remove", cid))
        del self.containers[cid]

    def state(self, cid: str) -> StateTestDouble:
        return self.containers[cid]  # KeyError for unknown IDs

    def list(self) -> list[StateTestDouble]:
        return list(self.containers.values())

    def read_logs(self, cid: str, tail: int, since: float) -> builtins.list[dict[str, str]]:
        lines = self.logs.get(cid, [])
        return lines[-tail:] if tail >= 0 else lines

    def exit(self, cid: str, code: int) -> None:
        st = self.containers[cid]
        st.status, st.exit_code, st.pid = "exited", code, 0
        fut = self._fut(cid)
        if not fut.done():
            fut.set_result(code)


class ImageStoreTestDouble:
    """Stand-in for agent_runtime.images.ImageStore: de-duplicates concurrent pulls like the real one."""

    def __init__(self, pull_seconds: float = 0.1) -> None:
        self.have: set[str] = set()
        self.pulls: list[str] = []
        self.inflight: dict[str, asyncio.Task[object]] = {}
        self.pull_seconds = pull_seconds

    def get(self, ref: str) -> object | None:
        return object() if ref in self.have else None

    async def pull(self, ref: str) -> object:
        if ref not in self.inflight:
            self.inflight[ref] = asyncio.ensure_future(self._pull(ref))
        return await self.inflight[ref]

    async def _pull(self, ref: str) -> object:
        self.pulls.append(ref)
        await asyncio.sleep(self.pull_seconds)
        if "nosuch" in ref:
            del self.inflight[ref]
            raise RuntimeError(f"pull {ref}: manifest unknown: manifest unknown")
        self.have.add(ref)
        return object()


class BridgeTestDouble:
    """Stand-in for overlaynet.bridge.LocalBridge that records calls."""

    def __init__(self) -> None:
        self.ensured: list[tuple[str, str]] = []
        self.attached: dict[str, str] = {}
        self.detached: list[str] = []

    def ensure(self, subnet: str, gateway: str) -> None:
        self.ensured.append((subnet, gateway))

    def attach(self, cid: str, addr: str, gw: str) -> str:
        self.attached[cid] = addr
        return f"/tmp/test-double-netns/{cid[:12]}"

    def detach(self, cid: str) -> None:
        self.attached.pop(cid, None)
        self.detached.append(cid)


# ----------------------------------------------------------------------- helpers

NODE = {"ID": "node1", "ShoalBridge": {"Subnet": "10.200.1.0/24", "Gateway": "10.200.1.1"}}


def make_task(tid: str, image: str = "reg:5000/busybox:latest", desired: str = "running", **cs: Any) -> dict[str, Any]:
    spec = {"Image": image, "Args": ["httpd", "-f"], **cs}
    return {
        "ID": tid, "ServiceID": "svc1", "Slot": 1, "DesiredState": desired,
        "Status": {"State": "assigned", "Timestamp": "x", "Message": "scheduler assigned task to node"},
        "Spec": {"ContainerSpec": spec, "Resources": {"Limits": {"MemoryBytes": 64 << 20, "NanoCPUs": 500_000_000, "Pids": 100}}},
        "NetworksAttachments": [{"Network": {"ID": "n", "Spec": {"Name": "bridge"}}, "Addresses": ["10.200.1.7/24"]}],
    }


class Env:
    def __init__(self, pull_seconds: float = 0.05) -> None:
        self.runtime = RuntimeTestDouble()
        self.images = ImageStoreTestDouble(pull_seconds)
        self.bridge = BridgeTestDouble()
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.ex = Executor(self.runtime, self.images, self.bridge, self.report)

    async def report(self, tid: str, status: dict[str, Any]) -> None:
        self.reports.append((tid, status))

    def states(self, tid: str) -> list[str]:
        return [s["State"] for t, s in self.reports if t == tid]

    def last(self, tid: str) -> dict[str, Any]:
        return [s for t, s in self.reports if t == tid][-1]


# ------------------------------------------------------------------------- tests


async def test_happy_path_then_exit_codes() -> None:
    e = Env()
    t1, t2 = make_task("t1"), make_task("t2")
    t2["NetworksAttachments"][0]["Addresses"] = ["10.200.1.8/24"]
    await e.ex.set_assignments(NODE, [t1, t2])
    await until(lambda: e.states("t1")[-1:] == ["running"] and e.states("t2")[-1:] == ["running"])
    assert e.states("t1") == ["accepted", "preparing", "starting", "running"]
    cid = container_id_for("t1")
    cs = e.last("t1")["ContainerStatus"]
    assert cs["ContainerID"] == cid and cs["PID"] > 0
    assert e.bridge.ensured[0] == ("10.200.1.0/24", "10.200.1.1")
    assert e.bridge.attached[cid] == "10.200.1.7/24"

    e.runtime.exit(cid, 0)
    e.runtime.exit(container_id_for("t2"), 3)
    await until(lambda: e.states("t1")[-1] == "complete" and e.states("t2")[-1] == "failed")
    assert e.last("t1")["Message"] == "finished"
    failed = e.last("t2")
    assert failed["Err"] == "task: non-zero exit (3)" and failed["ContainerStatus"]["ExitCode"] == 3
    await until(lambda: cid in e.bridge.detached)  # network released once the process is gone
    # the same set again changes nothing
    n = len(e.reports)
    await e.ex.set_assignments(NODE, [t1, t2])
    await asyncio.sleep(0.1)
    assert len(e.reports) == n
    await e.ex.close()


async def test_container_spec_mapping() -> None:
    e = Env()
    t = make_task("t1", Command=["/bin/sh", "-c"], Args=["echo hi"], Env=["A=1"], Dir="/tmp", User="nobody",
                  Hostname="web-1", StopSignal="SIGINT", Hosts=["10.0.0.9 db db.local"])
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["running"])
    spec = e.runtime.specs[container_id_for("t1")]
    assert spec.image == "reg:5000/busybox:latest"
    assert (spec.command, spec.args, spec.env, spec.cwd, spec.user, spec.hostname) == (
        ["/bin/sh", "-c"], ["echo hi"], ["A=1"], "/tmp", "nobody", "web-1")
    assert (spec.memory_bytes, spec.nano_cpus, spec.pids_limit) == (64 << 20, 500_000_000, 100)
    assert spec.netns == f"/tmp/test-double-netns/{container_id_for('t1')[:12]}"
    assert spec.labels["com.docker.swarm.task.id"] == "t1"
    assert spec.stop_signal == "SIGINT"
    assert ("db", "10.0.0.9") in spec.hosts and ("db.local", "10.0.0.9") in spec.hosts
    own = getattr(spec, "ip", None)
    assert own == "10.200.1.7" or ("web-1", "10.200.1.7") in spec.hosts
    await e.ex.close()


async def test_bad_image_is_rejected_with_error() -> None:
    e = Env()
    await e.ex.set_assignments(NODE, [make_task("bad", image="reg:5000/nosuch:latest"), make_task("good")])
    await until(lambda: e.states("bad")[-1:] == ["rejected"] and e.states("good")[-1:] == ["running"])
    err = e.last("bad")["Err"]
    assert "manifest unknown" in err
    assert ("create", container_id_for("bad")) not in e.runtime.calls
    assert container_id_for("bad") not in e.bridge.attached
    await e.ex.close()


async def test_missing_image_field_is_rejected() -> None:
    e = Env()
    t = make_task("t1")
    del t["Spec"]["ContainerSpec"]["Image"]
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["rejected"])
    assert "no ContainerSpec.Image" in e.last("t1")["Err"]
    await e.ex.close()


async def test_shutdown_then_remove() -> None:
    e = Env()
    t = make_task("t1", StopGracePeriod=2_000_000_000, StopSignal="SIGQUIT")
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["running"])
    cid = container_id_for("t1")
    await e.ex.set_assignments(NODE, [{**t, "DesiredState": "shutdown"}])
    await until(lambda: e.states("t1")[-1:] == ["shutdown"])
    assert e.runtime.stops == [(cid, 2.0, "SIGQUIT")]
    assert e.last("t1")["ContainerStatus"]["ExitCode"] == 143
    assert cid in e.runtime.containers  # kept until removal
    await e.ex.set_assignments(NODE, [{**t, "DesiredState": "remove"}])
    await until(lambda: cid not in e.runtime.containers and "t1" not in e.ex.task_states())
    assert cid not in e.bridge.attached
    # the manager may list the removed task a while longer: nothing new happens
    n, calls = len(e.reports), len(e.runtime.calls)
    await e.ex.set_assignments(NODE, [{**t, "DesiredState": "remove", "Status": {"State": "shutdown"}}])
    assert "t1" not in e.ex.task_states()
    await asyncio.sleep(0.05)
    assert (len(e.reports), len(e.runtime.calls)) == (n, calls)
    await e.ex.close()


async def test_vanished_task_is_stopped_and_removed_with_default_grace() -> None:
    e = Env()
    await e.ex.set_assignments(NODE, [make_task("t1")])
    await until(lambda: e.states("t1")[-1:] == ["running"])
    await e.ex.set_assignments(NODE, [])
    cid = container_id_for("t1")
    await until(lambda: cid not in e.runtime.containers)
    assert e.runtime.stops == [(cid, 10.0, "SIGTERM")]
    assert e.states("t1")[-1] == "shutdown"
    await e.ex.close()


async def test_shutdown_during_pull_creates_nothing() -> None:
    e = Env(pull_seconds=0.5)
    t = make_task("t1")
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["preparing"])
    await e.ex.set_assignments(NODE, [{**t, "DesiredState": "shutdown"}])
    await until(lambda: e.states("t1")[-1:] == ["shutdown"], timeout=2)
    assert not e.runtime.calls
    await e.ex.close()


async def test_fifty_tasks_start_in_parallel() -> None:
    e = Env(pull_seconds=0.3)
    tasks = [make_task(f"t{i}") for i in range(50)]
    for i, t in enumerate(tasks):
        t["NetworksAttachments"][0]["Addresses"] = [f"10.200.1.{10 + i}/24"]
    t0 = time.monotonic()
    await e.ex.set_assignments(NODE, tasks)
    await until(lambda: all(e.states(f"t{i}")[-1:] == ["running"] for i in range(50)))
    elapsed = time.monotonic() - t0
    assert e.images.pulls == ["reg:5000/busybox:latest"]  # one pull shared by all
    assert e.runtime.max_creating > 10  # creates overlapped
    assert elapsed < 0.3 + 50 * 0.05  # far below serial time
    await e.ex.close()


async def test_recover_reattaches_without_restart() -> None:
    e = Env()
    cid = container_id_for("t1")
    e.runtime.containers[cid] = StateTestDouble(cid, "running", pid=777, labels={"com.docker.swarm.task.id": "t1"})
    e.runtime.containers["f" * 64] = StateTestDouble("f" * 64, "running", pid=778)  # no task of ours
    done = container_id_for("t2")
    e.runtime.containers[done] = StateTestDouble(done, "exited", exit_code=2, labels={"com.docker.swarm.task.id": "t2"})
    await e.ex.recover()
    await until(lambda: e.states("t1")[-1:] == ["running"] and e.states("t2")[-1:] == ["failed"])
    assert e.last("t1")["ContainerStatus"] == {"ContainerID": cid, "PID": 777, "ExitCode": 0}
    assert e.last("t2")["Err"] == "task: non-zero exit (2)"

    t1 = make_task("t1")
    t1["Status"]["State"] = "running"
    t2 = make_task("t2", desired="shutdown")
    t2["Status"]["State"] = "failed"
    await e.ex.set_assignments(NODE, [t1, t2])
    await until(lambda: "f" * 64 not in e.runtime.containers)  # orphan removed
    await asyncio.sleep(0.1)
    assert not [c for c in e.runtime.calls if c[0] in ("create", "start")]  # nothing restarted
    assert e.states("t1") == ["running"]
    e.runtime.exit(cid, 0)
    await until(lambda: e.states("t1")[-1:] == ["complete"])
    await e.ex.close()


async def test_running_task_without_container_fails() -> None:
    e = Env()
    t = make_task("t1")
    t["Status"]["State"] = "running"
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["failed"])
    assert "not found" in e.last("t1")["Err"]
    await e.ex.close()


async def test_read_logs_shape() -> None:
    e = Env()
    await e.ex.set_assignments(NODE, [make_task("t1"), make_task("t2")])
    await until(lambda: e.states("t1")[-1:] == ["running"] and e.states("t2")[-1:] == ["running"])
    e.runtime.logs[container_id_for("t1")] = [
        {"log": "a\n", "stream": "stdout", "time": "2026-01-01T00:00:01.000000000Z"},
        {"log": "b\n", "stream": "stderr", "time": "2026-01-01T00:00:03.000000000Z"}]
    e.runtime.logs[container_id_for("t2")] = [{"log": "c\n", "stream": "stdout", "time": "2026-01-01T00:00:02.000000000Z"}]
    lines = await e.ex.read_logs(["t1", "t2", "unknown"], tail=-1, since=0, timestamps=True)
    assert [(ln["task_id"], ln["log"], ln["stream"]) for ln in lines] == [
        ("t1", "a\n", "stdout"), ("t2", "c\n", "stdout"), ("t1", "b\n", "stderr")]
    assert len(await e.ex.read_logs(["t1"], tail=1)) == 1
    await e.ex.close()


async def test_task_without_id_is_an_error() -> None:
    e = Env()
    with pytest.raises(ValueError, match="without an ID"):
        await e.ex.set_assignments(NODE, [{"DesiredState": "running"}])


async def test_state_lost_before_the_session_is_reported_again() -> None:
    """recover() reports before the agent has a session; the daemon may drop that report. When the
    assignment shows the manager behind (still 'running' for an exited container), it is sent again."""
    e = Env()
    done = container_id_for("t2")
    e.runtime.containers[done] = StateTestDouble(done, "exited", exit_code=2, labels={"com.docker.swarm.task.id": "t2"})
    await e.ex.recover()
    await until(lambda: e.states("t2")[-1:] == ["failed"])
    e.reports.clear()  # "dropped"
    t2 = make_task("t2")
    t2["Status"]["State"] = "running"
    await e.ex.set_assignments(NODE, [t2])
    await until(lambda: e.states("t2") == ["failed"])
    assert e.last("t2")["Err"] == "task: non-zero exit (2)"
    await e.ex.close()


class HangingStartRuntimeTestDouble(RuntimeTestDouble):
    """A runtime whose start() never returns (as a shim that never reports would)."""

    def __init__(self, container_runs: bool) -> None:
        super().__init__()
        self.container_runs = container_runs

    async def start(self, cid: str) -> StateTestDouble:
        if self.container_runs:
            st = self.containers[cid]
            st.status, st.pid = "running", 4321
            self._fut(cid)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("runs", [False, True])
async def test_start_that_hangs(runs: bool) -> None:
    e = Env()
    e.runtime = HangingStartRuntimeTestDouble(runs)
    e.ex = Executor(e.runtime, e.images, e.bridge, e.report, start_timeout=0.3)
    await e.ex.set_assignments(NODE, [make_task("t1")])
    await until(lambda: e.states("t1")[-1:] in (["failed"], ["running"]))
    if runs:  # the container is there and runs: carry on
        assert e.states("t1")[-1] == "running" and e.last("t1")["ContainerStatus"]["PID"] == 4321
    else:
        assert "did not start within 0.3 s" in e.last("t1")["Err"]
    await e.ex.close()


async def test_shutdown_while_starting_hangs() -> None:
    e = Env()
    e.runtime = HangingStartRuntimeTestDouble(True)
    e.ex = Executor(e.runtime, e.images, e.bridge, e.report, start_timeout=30)
    t = make_task("t1")
    await e.ex.set_assignments(NODE, [t])
    await until(lambda: e.states("t1")[-1:] == ["starting"])
    await asyncio.sleep(0.1)
    await e.ex.set_assignments(NODE, [{**t, "DesiredState": "shutdown"}])
    await until(lambda: e.states("t1")[-1:] == ["shutdown"], timeout=3)
    assert e.runtime.stops and e.runtime.stops[0][0] == container_id_for("t1")
    await e.ex.close()


async def test_read_only_and_mounts_reach_the_container_spec(tmp_path: Path) -> None:
    e = Env()
    t = make_task("t1", ReadOnly=True, Mounts=[
        {"Type": "bind", "Source": str(tmp_path), "Target": "/data", "ReadOnly": True,
         "BindOptions": {"Propagation": "rslave"}},
        {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o700}},
    ])
    missing = str(tmp_path / "nope")
    bad = make_task("bad", Mounts=[{"Type": "bind", "Source": missing, "Target": "/data"}])
    await e.ex.set_assignments(NODE, [t, bad])
    await until(lambda: e.states("t1")[-1:] == ["running"] and e.states("bad")[-1:] == ["rejected"])
    spec = e.runtime.specs[container_id_for("t1")]
    assert spec.read_only is True
    assert spec.mounts == [
        {"type": "bind", "source": str(tmp_path), "target": "/data", "read_only": True, "propagation": "rslave",
         "recursive": True},
        {"type": "tmpfs", "target": "/scratch", "read_only": False, "size_bytes": 1 << 20, "mode": 0o700},
    ]
    err = e.last("bad")["Err"]
    assert f"bind source path does not exist: {missing}" in err, err
    assert container_id_for("bad") not in e.bridge.attached  # network released on the rejection
    await e.ex.close()
