"""The docker CLI's own `service update` (without --detach) against the swarm routes (shoal.daemon.http) + the real
loops on a real Store: it polls GET /services/{id} and /tasks?filters={"_up-to-date":…} until
the rolling update converges, and fails when UpdateStatus is paused (CLI:
cli/command/service/progress/progress.go). The workers are ``WorkerDouble`` (a test double
that writes task states to the store); ``/_ping`` is served by a small test stand-in of
shoald's. Skipped when no `docker` binary is on PATH."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.specs import SECOND, default_swarm_spec
from manager.store import Store, WriteTx
from shoal.daemon.http.app import add_swarm_routes as add_routes
from tests.stores import open_store
from tests.unit.test_orchestrator_update import WorkerDouble

DOCKER = shutil.which("docker")
pytestmark = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")


class ManagerDouble:
    """Test double of manager.manager.Manager: only what the service/task/node routes use."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cluster_id = "cluster1"
        self.node_id = "n1"
        self.ca_cert_pem = ""

    def join_tokens(self) -> dict[str, str]:
        return {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"}

    async def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        return []

    def manager_status(self, node_id: str) -> dict[str, Any] | None:
        node = self.store.view().get("nodes", node_id) or {}
        return node.get("ManagerStatus")


def _fails(task: dict[str, Any]) -> bool:
    return "FAIL=1" in (task["Spec"]["ContainerSpec"].get("Env") or [])


@pytest.fixture
async def sock() -> AsyncIterator[tuple[str, Store, Path]]:
    """A unix socket serving the swarm routes, with the loops and a worker double running."""
    base = Path(tempfile.mkdtemp(prefix="shoal-orch-"))
    store = await open_store(base / "raft")
    app = web.Application()
    add_routes(app, ManagerDouble(store))

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="OK", headers={"Api-Version": "1.44", "OSType": "linux", "Swarm": "active/manager"})
    app.router.add_route("GET", "/_ping", ping)
    app.router.add_route("HEAD", "/_ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(base / "api.sock")
    await web.UnixSite(runner, path).start()

    def init(tx: WriteTx) -> None:
        tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()})
        for i in (1, 2, 3):
            tx.create("nodes", {"ID": f"node{i}", "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
                                "Description": {"Hostname": f"h{i}"}, "Status": {"State": "ready"}})
    await store.update(init)
    loops: list[Any] = [Orchestrator(store, debounce=0.005), Scheduler(store, debounce=0.005),
                        TaskReaper(store, debounce=0.005), WorkerDouble(store, start=0.05, stop=0.2, fails=_fails)]
    runners = [asyncio.create_task(lp.run()) for lp in loops]
    try:
        yield f"unix://{path}", store, base
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await runner.cleanup()
        await store.close()
        shutil.rmtree(base, ignore_errors=True)


async def docker(host: str, base: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the docker CLI against ``host``; returns (exit code, stdout, stderr)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": host,
           "DOCKER_CONFIG": str(base / "docker-config"), "HOME": str(base)}
    assert DOCKER is not None
    proc = await asyncio.create_subprocess_exec(DOCKER, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_docker_service_update_waits_for_the_rolling_update(sock: tuple[str, Store, Path]) -> None:
    host, store, base = sock
    spec = {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
            "UpdateConfig": {"Parallelism": 1, "Delay": int(0.2 * SECOND), "Monitor": 1 * SECOND,
                             "Order": "stop-first", "FailureAction": "pause"},
            "RollbackConfig": {"Parallelism": 0, "Monitor": 1 * SECOND}}
    await store.update(lambda tx: tx.create("services", {"ID": "svc1", "Spec": spec}))
    async with asyncio.timeout(10):
        while sum(1 for t in store.view().list("tasks") if t["Status"]["State"] == "running") < 3:
            await asyncio.sleep(0.02)

    rc, out, err = await docker(host, base, "service", "update", "--env-add", "X=1", "web")
    assert rc == 0, (out, err)
    assert "converged" in out
    # the CLI stops once all tasks ran for Monitor; the updater completes after the last slot's
    # Delay + Monitor, so a moment later (as with Docker)
    async with asyncio.timeout(10):
        while True:
            rc, out, err = await docker(host, base, "service", "inspect", "--format",
                                        "{{.UpdateStatus.State}} {{.UpdateStatus.Message}}", "web")
            assert rc == 0, err
            if out.strip() != "updating update in progress":
                break
            await asyncio.sleep(0.1)
    assert out.strip() == "completed update completed"
    live = [t for t in store.view().list("tasks") if t["DesiredState"] == "running"]
    assert len(live) == 3 and all(t["Spec"]["ContainerSpec"]["Env"] == ["X=1"] for t in live)

    # a replacement that fails within Monitor pauses the update; the CLI says so and fails
    rc, out, err = await docker(host, base, "service", "update", "--env-add", "FAIL=1", "web")
    assert rc != 0, (out, err, store.view().get("services", "svc1"), sorted((t["Slot"], t["Status"]["State"], t["DesiredState"], str(t["Spec"]["ContainerSpec"].get("Env"))) for t in store.view().list("tasks")))
    assert "service update paused: update paused due to failure or early termination of task" in err
    rc, out, err = await docker(host, base, "service", "inspect", "--format", "{{.UpdateStatus.State}}", "web")
    assert out.strip() == "paused"

    # docker service update --rollback: back to the previous spec (X=1 without FAIL=1)
    rc, out, err = await docker(host, base, "service", "update", "--rollback", "web")
    assert rc == 0, (out, err)
    async with asyncio.timeout(10):
        while True:
            rc, out, err = await docker(host, base, "service", "inspect", "--format",
                                        "{{.UpdateStatus.State}}", "web")
            if out.strip() != "rollback_started":
                break
            await asyncio.sleep(0.1)
    assert out.strip() == "rollback_completed"
    async with asyncio.timeout(10):
        while True:
            live = [t for t in store.view().list("tasks")
                    if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
            if len(live) == 3 and all(t["Spec"]["ContainerSpec"]["Env"] == ["X=1"] for t in live):
                break
            await asyncio.sleep(0.05)
