"""A job's spec may not have an ``UpdateConfig`` (swarmkit's controlapi ``validateJob``): a 400
in swarmkit's words at create and at update; ``RollbackConfig``, a null ``UpdateConfig`` and the
other modes' update configs pass."""

from __future__ import annotations

from typing import Any

import pytest

from manager.controlapi import services
from manager.controlapi.errors import InvalidArgument
from manager.specs import SpecError, validate_service_spec
from tests.unit.test_api import SPEC
from tests.unit.test_controlapi import Ctx, ctx  # noqa: F401  (the fixture)

REPLICATED_JOB: Any = {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 2}}
UC = {"Parallelism": 1, "Delay": 0}


@pytest.mark.parametrize("mode", [REPLICATED_JOB, {"GlobalJob": {}}])
def test_a_job_with_an_update_config_is_refused_in_swarms_words(mode: Any) -> None:
    for uc in (UC, {}):  # an empty one is an UpdateConfig too (Go: a non-nil pointer)
        with pytest.raises(SpecError, match=r"^Jobs may not have an update config: leave UpdateConfig out"):
            validate_service_spec(dict(SPEC, Mode=mode, UpdateConfig=uc))


@pytest.mark.parametrize("mode", [REPLICATED_JOB, {"GlobalJob": {}}])
def test_a_job_without_one_or_with_a_null_one_or_a_rollback_config_passes(mode: Any) -> None:
    validate_service_spec(dict(SPEC, Mode=mode))
    validate_service_spec(dict(SPEC, Mode=mode, UpdateConfig=None))
    validate_service_spec(dict(SPEC, Mode=mode, RollbackConfig={"Parallelism": 1}))  # swarmkit checks only updates


@pytest.mark.parametrize("mode", [{"Replicated": {"Replicas": 2}}, {"Global": {}}])
def test_services_keep_their_update_config(mode: Any) -> None:
    assert validate_service_spec(dict(SPEC, Mode=mode, UpdateConfig=UC))["UpdateConfig"] == UC


async def test_create_and_update_of_a_job_with_an_update_config_are_a_400(ctx: Ctx) -> None:  # noqa: F811
    job = dict(SPEC, Name="batch", Mode=REPLICATED_JOB)
    with pytest.raises(InvalidArgument, match=r"^rpc error: code = InvalidArgument desc = Jobs may not have an "
                                              r"update config") as e:
        await services.create(ctx, spec_body=dict(job, UpdateConfig=UC))
    assert e.value.status == 400
    sid = (await services.create(ctx, spec_body=job))["ID"]
    s = services.inspect(ctx.store, sid)
    with pytest.raises(InvalidArgument, match="Jobs may not have an update config") as e:
        await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=dict(job, UpdateConfig=UC))
    assert e.value.status == 400
    assert "UpdateConfig" not in services.inspect(ctx.store, sid)["Spec"]  # nothing written
