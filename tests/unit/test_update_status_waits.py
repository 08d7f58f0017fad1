"""Rollback of a job and the CLI's update wait: a job's rollback (control API) swaps Spec and
PreviousSpec and starts a new iteration without any ``UpdateStatus`` (nothing would complete
it); ``shoal service rollback`` of a job waits for that iteration as ``service create`` does;
``shoal service update`` of a global service only says "converged" once the update is
``completed`` (every node moved), with the real manager loops of tests/unit/test_cli_update."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from manager.controlapi import services
from manager.specs import SECOND
from manager.store import Store, WriteTx
from shoal.base.util import now_rfc3339
from tests.unit.test_api import SPEC
from tests.unit.test_cli_update import Env, env, shoal  # noqa: F401  (the fixture)
from tests.unit.test_controlapi import Ctx, ctx  # noqa: F401  (the fixture)
from tests.waiting import wait_until

GJOB = dict(SPEC, Name="gj", Mode={"GlobalJob": {}})


async def test_rollback_of_a_job_is_a_new_iteration_without_update_status(ctx: Ctx) -> None:  # noqa: F811
    sid = (await services.create(ctx, spec_body=GJOB))["ID"]
    s = services.inspect(ctx.store, sid)
    forced = dict(GJOB, TaskTemplate=dict(GJOB["TaskTemplate"], ForceUpdate=1))
    await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=forced)
    s = services.inspect(ctx.store, sid)
    await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=s["Spec"], rollback=True)
    s = services.inspect(ctx.store, sid)
    assert "ForceUpdate" not in s["Spec"]["TaskTemplate"] or not s["Spec"]["TaskTemplate"]["ForceUpdate"]
    assert s["PreviousSpec"]["TaskTemplate"]["ForceUpdate"] == 1
    assert s["JobStatus"]["JobIteration"] == {"Index": 2}
    assert "UpdateStatus" not in s


async def test_rollback_of_a_service_still_starts_one(ctx: Ctx) -> None:  # noqa: F811
    sid = (await services.create(ctx, spec_body=SPEC))["ID"]
    s = services.inspect(ctx.store, sid)
    await services.update(ctx, ref=sid, version=s["Version"]["Index"],
                          spec_body=dict(SPEC, Labels={"v": "2"}))
    s = services.inspect(ctx.store, sid)
    await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=s["Spec"], rollback=True)
    assert services.inspect(ctx.store, sid)["UpdateStatus"]["State"] == "rollback_started"


async def _complete_jobs(store: Store) -> None:
    """Test double for the workers' part in a job: every assigned task meant to ``complete``
    completes (as a container exiting 0)."""
    w = store.watch(["tasks"])
    try:
        async for ev in w:
            t = ev.obj
            if ev.action == "delete" or t["DesiredState"] != "complete" or t["Status"]["State"] != "assigned":
                continue
            tid = t["ID"]

            def fn(tx: WriteTx, tid: str = tid) -> None:
                cur = tx.get("tasks", tid)
                if cur is not None and cur["Status"]["State"] == "assigned":
                    cur["Status"] = {"State": "complete", "Timestamp": now_rfc3339()}
                    tx.update("tasks", cur)
            await store.update(fn)
    finally:
        w.close()


@pytest.fixture
async def jobs_env(env: Env) -> AsyncIterator[Env]:  # noqa: F811
    runner = asyncio.create_task(_complete_jobs(env[1]))
    try:
        yield env
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def _iteration(store: Store, name: str) -> Any:
    [s] = [s for s in store.view().list("services") if s["Spec"]["Name"] == name]
    return s


async def test_cli_rollback_of_a_global_job_waits_for_the_new_iteration(
        jobs_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = jobs_env
    rc, out, err = await shoal(host, "service create --mode global-job --name gj busybox true", capsys)
    assert rc == 0 and "verify: Job gj complete" in out, (out, err)
    rc, out, err = await shoal(host, "service update --force gj", capsys)
    assert rc == 0 and "verify: Job gj complete" in out, (out, err)
    rc, out, err = await shoal(host, "service rollback gj", capsys, timeout=20)
    assert rc == 0, (out, err)
    assert out.startswith("gj\n") and "verify: Job gj complete" in out
    svc = _iteration(store, "gj")
    assert svc["JobStatus"]["JobIteration"] == {"Index": 2} and "UpdateStatus" not in svc
    done = [t for t in store.view().list("tasks") if t["ServiceID"] == svc["ID"] and
            t.get("JobIteration", {}).get("Index") == 2 and t["Status"]["State"] == "complete"]
    assert len(done) == 3  # one per node, all complete
    rc, out, err = await shoal(host, "service rollback -d gj", capsys)
    assert (rc, out) == (0, "gj\n"), err


async def test_cli_update_of_a_global_service_waits_for_every_node(env: Env,  # noqa: F811
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    host, store = env
    spec = {"Name": "g", "Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
            "UpdateConfig": {"Parallelism": 1, "Delay": int(0.4 * SECOND), "Monitor": int(0.05 * SECOND),
                             "Order": "stop-first", "FailureAction": "pause"}}
    await store.update(lambda tx: tx.create("services", {"ID": "g1", "Spec": spec}))
    await wait_until(lambda: sum(1 for t in store.view().list("tasks") if t["Status"]["State"] == "running") >= 3,
                     timeout=10, what="3 global tasks running")
    rc, out, err = await shoal(host, "service update --env-add X=1 g", capsys)
    assert rc == 0 and "verify: Service g converged" in out, (out, err)
    # progress lines name a global task by its node's truncated ID, as the docker CLI (no "n/3")
    lines = [ln for ln in out.splitlines() if ": running (on " in ln]
    assert lines and all(re.fullmatch(r"[^/ ]{1,12}: running \(on h\d\)", ln) for ln in lines), out
    svc = store.view().get("services", "g1")
    assert svc is not None and svc["UpdateStatus"]["State"] == "completed"
    live = [t["Spec"]["ContainerSpec"].get("Env") for t in store.view().list("tasks")
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
    assert live == [["X=1"]] * 3


async def test_cli_scale_of_a_replicated_job_sets_its_completions(jobs_env: Env,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    host, store = jobs_env
    rc, out, err = await shoal(host, "service create --mode replicated-job --name rj busybox true", capsys)
    assert rc == 0, (out, err)
    rc, out, err = await shoal(host, "service scale rj=3", capsys)
    assert rc == 0, (out, err)
    assert out.startswith("rj scaled to 3\n") and "verify: Job rj complete" in out
    svc = _iteration(store, "rj")
    assert svc["Spec"]["Mode"]["ReplicatedJob"]["TotalCompletions"] == 3
    it = svc["JobStatus"]["JobIteration"]["Index"]
    done = [t for t in store.view().list("tasks") if t["ServiceID"] == svc["ID"] and
            t.get("JobIteration", {}).get("Index") == it and t["Status"]["State"] == "complete"]
    assert len(done) == 3


async def test_cli_scale_and_rebalance_refuse_the_modes_they_do_not_apply_to(
        jobs_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host, store = jobs_env
    for line in ("service create -d --mode global --name g busybox", "service create --mode global-job --name gj "
                 "busybox true"):
        rc, out, err = await shoal(host, line, capsys)
        assert rc == 0, (out, err)
    for name in ("g", "gj"):
        rc, out, err = await shoal(host, f"service scale -d {name}=2", capsys)
        assert (rc, err) == (1, f"{name}: scale can only be used with replicated or replicated-job mode\n"), out
        rc, out, err = await shoal(host, f"service update -d --rebalance {name}", capsys)
        assert (rc, err) == (1, "shoal: --rebalance applies to replicated services only\n"), out
    versions = {s["Spec"]["Name"]: s["Version"]["Index"] for s in store.view().list("services")}
    rc, out, err = await shoal(host, "service update -d --no-rebalance g", capsys)
    assert rc == 0, (out, err)
    assert _iteration(store, "g")["Version"]["Index"] > versions["g"]
