"""``shoal service update|rollback``, ``node rm|ps`` and ``swarm update`` against the swarm routes
(shoal.daemon.http) with the real orchestrator, scheduler and reaper on a real Store; the workers
are ``WorkerDouble`` (a test double writing task states to the store; a task whose Env has
FAIL=1 fails after it ran, as a broken image would). The CLI runs in a thread (it blocks)."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from manager.membership import LOST_MANAGER_MESSAGE
from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.specs import SECOND, default_swarm_spec
from manager.store import Store, WriteTx
from shoal.cli import commands as cli
from shoal.daemon.http.app import add_swarm_routes
from tests.stores import open_store
from tests.unit.test_orchestrator_cli import DOCKER, ManagerDouble, docker
from tests.unit.test_orchestrator_update import WorkerDouble

Env = tuple[str, Store]
needs_docker = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")


def _fails(task: dict[str, Any]) -> bool:
    return "FAIL=1" in (task["Spec"]["ContainerSpec"].get("Env") or [])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """A unix socket serving the swarm routes; a manager node1 and workers node2, node3 (ready)."""
    base = Path(tempfile.mkdtemp(prefix="shoal-cli-update-"))
    store = await open_store(base / "raft")
    app = web.Application()
    add_swarm_routes(app, ManagerDouble(store))

    async def ping(request: web.Request) -> web.Response:  # as shoald's, for the docker CLI
        return web.Response(text="OK", headers={"Api-Version": "1.44", "OSType": "linux", "Swarm": "active/manager"})
    app.router.add_route("GET", "/_ping", ping)
    app.router.add_route("HEAD", "/_ping", ping)

    async def info(request: web.Request) -> web.Response:  # the part of shoald's /info `node ps` reads
        return web.json_response({"Swarm": {"NodeID": "node1", "LocalNodeState": "active"}})
    app.router.add_route("GET", "/info", info)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(base / "api.sock")
    await web.UnixSite(runner, path).start()

    def init(tx: WriteTx) -> None:
        tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()})
        for i in (1, 2, 3):
            role = "manager" if i == 1 else "worker"
            node: dict[str, Any] = {"ID": f"node{i}", "Spec": {"Role": role, "Availability": "active", "Labels": {}},
                                    "Description": {"Hostname": f"h{i}"}, "Status": {"State": "ready"}}
            if role == "manager":
                node["ManagerStatus"] = {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}
            tx.create("nodes", node)
    await store.update(init)
    loops: list[Any] = [Orchestrator(store, debounce=0.005), Scheduler(store, debounce=0.005),
                        TaskReaper(store, debounce=0.005), WorkerDouble(store, start=0.05, stop=0.1, fails=_fails)]
    runners = [asyncio.create_task(lp.run()) for lp in loops]
    try:
        yield f"unix://{path}", store
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await runner.cleanup()
        await store.close()
        shutil.rmtree(base, ignore_errors=True)


async def shoal(host: str, line: str, capsys: pytest.CaptureFixture[str], timeout: float = 30) -> tuple[int, str, str]:
    """Run ``shoal -H host LINE`` in a thread; returns (exit status, stdout, stderr)."""
    out = io.StringIO()
    capsys.readouterr()
    rc = await asyncio.wait_for(asyncio.to_thread(cli.main, ["-H", host, *line.split()], out), timeout)
    return rc, out.getvalue(), capsys.readouterr().err


async def create_web(store: Store, **update: Any) -> None:
    spec = {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
            "UpdateConfig": {"Parallelism": 1, "Delay": int(0.1 * SECOND), "Monitor": int(0.5 * SECOND),
                             "Order": "stop-first", "FailureAction": "pause", **update},
            "RollbackConfig": {"Parallelism": 0, "Monitor": int(0.5 * SECOND)}}
    await store.update(lambda tx: tx.create("services", {"ID": "svc1", "Spec": spec}))
    async with asyncio.timeout(10):
        while sum(1 for t in store.view().list("tasks") if t["Status"]["State"] == "running") < 3:
            await asyncio.sleep(0.02)


def live_env(store: Store) -> list[Any]:
    return sorted(str(t["Spec"]["ContainerSpec"].get("Env")) for t in store.view().list("tasks")
                  if t["DesiredState"] == "running" and t["Status"]["State"] == "running")


async def test_update_waits_pauses_with_the_reason_and_rolls_back(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await shoal(host, "service update --env-add X=1 --update-delay 100ms --update-monitor 500ms web",
                               capsys)
    assert rc == 0, (out, err)
    assert "verify: Service web converged" in out
    assert live_env(store) == ["['X=1']"] * 3
    spec = store.view().get("services", "svc1")["Spec"]  # type: ignore[index]
    assert spec["UpdateConfig"]["Delay"] == SECOND // 10 and spec["UpdateConfig"]["Monitor"] == SECOND // 2

    # an update whose tasks fail pauses; the CLI says why and exits 1
    rc, out, err = await shoal(host, "service update --env-add FAIL=1 web", capsys)
    assert rc == 1, (out, err)
    assert "Error: service update paused: update paused due to failure or early termination of task" in out
    assert store.view().get("services", "svc1")["UpdateStatus"]["State"] == "paused"  # type: ignore[index]

    # shoal service rollback: back to the previous spec (X=1 without FAIL=1)
    rc, out, err = await shoal(host, "service rollback web", capsys)
    assert rc == 0, (out, err)
    assert out.startswith("web\n") and "converged" in out
    async with asyncio.timeout(10):
        while live_env(store) != ["['X=1']"] * 3:
            await asyncio.sleep(0.05)


async def test_update_failure_action_rollback_rolls_back_and_says_so(env: Env,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await shoal(host, "service update --env-add FAIL=1 --update-failure-action rollback web", capsys)
    assert rc == 1, (out, err)
    assert "Error: service rolled back: " in out
    svc = store.view().get("services", "svc1")
    assert svc is not None and svc["UpdateStatus"]["State"] == "rollback_completed"
    assert svc["Spec"]["UpdateConfig"]["FailureAction"] == "pause"  # the previous spec is back
    async with asyncio.timeout(10):
        while live_env(store) != ["None"] * 3:
            await asyncio.sleep(0.05)


async def test_rollback_without_a_previous_spec_is_a_clear_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await shoal(host, "service rollback web", capsys)
    assert rc == 1
    assert err == ("Error response from daemon: rpc error: code = FailedPrecondition desc = service svc1 does not "
                   "have a previous spec\n")
    rc, out, err = await shoal(host, "service update --rollback -d web", capsys)
    assert rc == 1 and "does not have a previous spec" in err


async def test_update_refused_by_the_daemon_for_an_absurd_policy(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await shoal(host, "service update -d --update-delay 48h web", capsys)
    assert rc == 1
    assert "UpdateConfig.Delay of 48h is over the limit of 24h" in err
    rc, out, err = await shoal(host, "service update -d --restart-max-attempts 5000 web", capsys)
    assert rc == 1 and "RestartPolicy.MaxAttempts 5000 is over the limit of 1000" in err


async def test_node_rm_follows_dockers_rules(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    rc, out, err = await shoal(host, "node rm h2", capsys)
    assert rc == 1 and "node node2 is not down and can't be removed" in err
    rc, out, err = await shoal(host, "node rm --force h1", capsys)
    assert rc == 1 and ("node node1 is a cluster manager and is a member of the raft cluster. It must be demoted "
                        "to worker before removal") in err
    rc, out, err = await shoal(host, "node rm --force h2", capsys)
    assert rc == 0 and out == "h2\n", err
    assert store.view().get("nodes", "node2") is None
    rc, out, err = await shoal(host, "node rm nosuch", capsys)
    assert rc == 1 and "node nosuch not found" in err


async def test_node_rm_of_a_manager_lost_with_force_new_cluster(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A manager left behind by --force-new-cluster (a worker now, shown Down/Unreachable) is no
    Raft member: it is removed without --force, as any node that is down."""
    host, store = env
    await store.update(lambda tx: tx.create("nodes", {
        "ID": "node4", "Spec": {"Role": "worker", "Availability": "active"}, "Description": {"Hostname": "h4"},
        "Status": {"State": "down", "Message": LOST_MANAGER_MESSAGE},
        "ManagerStatus": {"Leader": False, "Reachability": "unreachable", "Addr": "10.0.0.4:2377"}}))
    rc, out, err = await shoal(host, "node rm h4", capsys)
    assert rc == 0 and out == "h4\n", err
    assert store.view().get("nodes", "node4") is None


async def test_node_ps_lists_the_tasks_of_a_node(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    on3 = sorted(t["ID"] for t in store.view().list("tasks") if t.get("NodeID") == "node3")
    rc, out, err = await shoal(host, "node ps -q h3", capsys)
    assert rc == 0, err
    assert sorted(out.split()) == on3
    rc, out, err = await shoal(host, "node ps --no-trunc -f desired-state=running h3", capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "IMAGE"] and len(lines) == 1 + len(on3)
    assert all(" web." in ln and " h3 " in ln for ln in lines[1:])
    # no NODE: this node (h1, the manager, which runs tasks too)
    on1 = sorted(t["ID"] for t in store.view().list("tasks") if t.get("NodeID") == "node1")
    rc, out, err = await shoal(host, "node ps -q", capsys)
    assert rc == 0 and sorted(out.split()) == on1, err
    rc, out, err = await shoal(host, "node ps -q h2 h3", capsys)
    assert sorted(out.split()) == sorted(on3 + [t["ID"] for t in store.view().list("tasks") if t.get("NodeID") == "node2"])


async def test_swarm_update_task_history_limit(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    rc, out, err = await shoal(host, "swarm update --task-history-limit 2", capsys)
    assert rc == 0 and out == "Swarm updated.\n", err
    [cluster] = store.view().list("cluster")
    assert cluster["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    # the reaper keeps 2 tasks per slot: force three redeploys and count the slot's history
    await create_web(store)
    for _ in range(3):
        rc, out, err = await shoal(host, "service update --force -d web", capsys)
        assert rc == 0, err
        async with asyncio.timeout(10):
            while True:
                svc = store.view().get("services", "svc1") or {}
                if (svc.get("UpdateStatus") or {}).get("State") == "completed":
                    break
                await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        while max(sum(1 for t in store.view().list("tasks") if t.get("Slot") == s) for s in (1, 2, 3)) > 2:
            await asyncio.sleep(0.05)


@needs_docker
async def test_the_docker_cli_sees_the_same_errors(env: Env, tmp_path: Path) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await docker(host, tmp_path, "service", "rollback", "web")
    assert rc == 1
    assert ("Error response from daemon: rpc error: code = FailedPrecondition desc = service svc1 does not have a "
            "previous spec") in err
    rc, out, err = await docker(host, tmp_path, "service", "update", "--detach", "--update-delay", "48h", "web")
    assert rc == 1 and "UpdateConfig.Delay of 48h is over the limit of 24h" in err
    assert "shoal" not in err
    rc, out, err = await docker(host, tmp_path, "node", "rm", "h2")
    assert rc == 1 and "node node2 is not down and can't be removed" in err
    rc, out, err = await docker(host, tmp_path, "service", "update", "--detach", "--update-parallelism", "2",
                                "--restart-max-attempts", "3", "web")
    assert rc == 0, err
    spec = (store.view().get("services", "svc1") or {})["Spec"]
    assert spec["UpdateConfig"]["Parallelism"] == 2 and spec["TaskTemplate"]["RestartPolicy"]["MaxAttempts"] == 3
    rc, out, err = await docker(host, tmp_path, "service", "rollback", "--detach", "web")
    assert rc == 0, err
    spec = (store.view().get("services", "svc1") or {})["Spec"]
    assert spec["UpdateConfig"]["Parallelism"] == 1 and "RestartPolicy" not in spec["TaskTemplate"]


async def test_start_first_update_and_continue_failure_action(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    await create_web(store)
    rc, out, err = await shoal(host, "service update --update-order start-first --update-parallelism 2 "
                                     "--env-add Y=1 web", capsys)
    assert rc == 0, (out, err)
    assert live_env(store) == ["['Y=1']"] * 3
    # continue: failures do not pause the update; the CLI gives up after its failure budget
    rc, out, err = await shoal(host, "service update --update-failure-action continue --env-add FAIL=1 web", capsys)
    assert rc == 1 and "did not converge" in out and "paused" not in out, (out, err)
    assert (store.view().get("services", "svc1") or {}).get("UpdateStatus", {}).get("State") != "paused"
