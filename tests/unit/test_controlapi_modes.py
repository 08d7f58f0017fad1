"""Service modes through the control API (manager.controlapi.services on a real Store): the four
modes are accepted, a mode change is a 400 in Swarm's words, a job gets JobStatus and a new
JobIteration at each update, ServiceStatus and the ``mode`` filter per mode."""

from __future__ import annotations

from typing import Any

import pytest

from manager.controlapi import services
from manager.controlapi.errors import InvalidArgument
from tests.unit.test_api import SPEC
from tests.unit.test_controlapi import Ctx, ctx  # noqa: F401  (the fixture)

JOB = dict(SPEC, Name="batch", Mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}})
GLOBAL = dict(SPEC, Name="agent", Mode={"Global": {}})


async def test_the_four_modes_are_accepted_and_listed_by_mode(ctx: Ctx) -> None:  # noqa: F811
    for spec in (SPEC, GLOBAL, JOB, dict(SPEC, Name="gjob", Mode={"GlobalJob": {}})):
        await services.create(ctx, spec_body=spec)
    names = {m: [s["Spec"]["Name"] for s in services.list_services(ctx.store, {"mode": [m]})]
             for m in ("replicated", "global", "replicated-job", "global-job")}
    assert names == {"replicated": ["web"], "global": ["agent"], "replicated-job": ["batch"], "global-job": ["gjob"]}
    [agent] = services.list_services(ctx.store, {"name": ["agent"]}, status=True)
    assert agent["ServiceStatus"] == {"RunningTasks": 0, "DesiredTasks": 3, "CompletedTasks": 0}
    assert "JobStatus" not in agent
    [batch] = services.list_services(ctx.store, {"name": ["batch"]}, status=True)
    assert batch["ServiceStatus"] == {"RunningTasks": 0, "DesiredTasks": 2, "CompletedTasks": 0}
    assert batch["JobStatus"]["JobIteration"] == {"Index": 0} and batch["JobStatus"]["LastExecution"]


async def test_an_update_that_changes_the_mode_is_a_400(ctx: Ctx) -> None:  # noqa: F811
    sid = (await services.create(ctx, spec_body=SPEC))["ID"]
    s = services.inspect(ctx.store, sid)
    with pytest.raises(InvalidArgument, match=r"^rpc error: code = InvalidArgument desc = service mode change is "
                                              r"not allowed \(from replicated to global\)") as e:
        await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=dict(SPEC, Mode={"Global": {}}))
    assert e.value.status == 400


@pytest.mark.parametrize("mode", [{"ReplicatedJob": {"MaxConcurrent": -1}},
                                  {"ReplicatedJob": {"TotalCompletions": -3}},
                                  {"ReplicatedJob": {"MaxConcurrent": "2"}}])
async def test_bad_job_counts_are_a_400(ctx: Ctx, mode: Any) -> None:  # noqa: F811
    with pytest.raises(InvalidArgument, match="ReplicatedJob") as e:
        await services.create(ctx, spec_body=dict(SPEC, Mode=mode))
    assert e.value.status == 400


async def test_every_update_of_a_job_is_a_new_iteration(ctx: Ctx) -> None:  # noqa: F811
    sid = (await services.create(ctx, spec_body=JOB))["ID"]
    for n in (1, 2):
        s = services.inspect(ctx.store, sid)
        forced = dict(JOB, TaskTemplate=dict(JOB["TaskTemplate"], ForceUpdate=n))
        await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=forced)
        assert services.inspect(ctx.store, sid)["JobStatus"]["JobIteration"] == {"Index": n}
