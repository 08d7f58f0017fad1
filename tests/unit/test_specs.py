"""Tests of manager.specs (validation messages and defaults)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.specs import (
    SpecError,
    service_spec_with_defaults,
    validate_node_spec,
    validate_service_spec,
    validate_swarm_spec,
)


def _spec(**kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}
    s.update(kw)
    return s


def test_defaults_mode_and_name() -> None:
    s = validate_service_spec({"TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}})
    assert s["Mode"] == {"Replicated": {"Replicas": 1}}
    assert "_" in s["Name"]
    d = service_spec_with_defaults(s)
    assert d["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0, "Window": 0}
    assert d["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    assert d["UpdateConfig"]["FailureAction"] == "pause" and d["UpdateConfig"]["Monitor"] == 5_000_000_000
    assert d["UpdateConfig"]["Order"] == "stop-first" and d["RollbackConfig"]["Parallelism"] == 1
    # the stored spec keeps only what the user wrote
    assert "RestartPolicy" not in s["TaskTemplate"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec(Mode={"Replicated": {"Replicas": -1}}), "cannot unmarshal number -1"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": ""}}), "ContainerSpec: image reference must be provided"),
        (_spec(TaskTemplate={"ContainerSpec": {}}), "ContainerSpec: image reference must be provided"),
        (_spec(Name="bad name!"), "name must be valid as a DNS name component"),
        (_spec(Mode={"Global": {}}), "not supported"),
        (_spec(Mode={"Weird": {}}), "unrecognized service mode"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x"}, "RestartPolicy": {"Condition": "sometimes"}}), "RestartCondition"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x"}, "Placement": {"Constraints": ["node.role=manager"]}}),
         "constraint expected one operator from ==, !="),
        ("not an object", "must be a JSON object"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "busybox@@"}}), "is not a valid repository/tag"),
    ],
)
def test_invalid_service_specs(spec: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_service_spec(spec)


def test_node_spec() -> None:
    assert validate_node_spec({"Role": "worker", "Availability": "drain"})["Availability"] == "drain"
    with pytest.raises(SpecError, match="invalid Availability"):
        validate_node_spec({"Role": "worker", "Availability": "sleepy"})
    with pytest.raises(SpecError, match="invalid Role"):
        validate_node_spec({"Role": "boss", "Availability": "active"})


def test_swarm_spec() -> None:
    s = validate_swarm_spec({"Orchestration": {"TaskHistoryRetentionLimit": 2}})
    assert s["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    assert s["Dispatcher"]["HeartbeatPeriod"] == 5_000_000_000
    with pytest.raises(SpecError):
        validate_swarm_spec({"Dispatcher": {"HeartbeatPeriod": 0}})
