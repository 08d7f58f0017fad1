"""The service-mode flags of the shoal CLI (shoal.cli.modes_flags and its hooks in commands and
format): --mode, --replicas, --max-concurrent, the REPLICAS column per mode, and waiting for a
job to complete."""

from __future__ import annotations

import io
from typing import Any

import pytest

from shoal.cli import commands as cli
from shoal.cli import format as fmt
from shoal.cli.modes_flags import wait_job


def spec_of(flags: str) -> Any:
    a = cli.build_parser().parse_args(["service", "create", *flags.split(), "busybox"])
    return cli.build_service_spec(a)


@pytest.mark.parametrize(("flags", "mode"), [
    ("", {"Replicated": {"Replicas": 1}}),
    ("--mode global", {"Global": {}}),
    ("--mode global-job", {"GlobalJob": {}}),
    ("--mode replicated-job", {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}),
    ("--mode replicated-job --replicas 5", {"ReplicatedJob": {"MaxConcurrent": 5, "TotalCompletions": 5}}),
    ("--mode replicated-job --replicas 5 --max-concurrent 2", {"ReplicatedJob": {"MaxConcurrent": 2,
                                                                                  "TotalCompletions": 5}}),
])
def test_mode_flags_build_the_mode(flags: str, mode: Any) -> None:
    assert spec_of(flags)["Mode"] == mode


@pytest.mark.parametrize(("flags", "message"), [
    ("--mode global --replicas 2", "replicas can only be used with replicated or replicated-job mode"),
    ("--max-concurrent 2", "max-concurrent can only be used with replicated-job mode"),
    ("--mode replicated-job --max-concurrent -1", "invalid --max-concurrent value -1"),
])
def test_bad_mode_flags_are_usage_errors(flags: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        spec_of(flags)


def svc(mode: Any, status: Any, name: str = "s") -> Any:
    return {"ID": "abcdef1234567890", "Spec": {"Name": name, "Mode": mode,
                                                 "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}},
            "ServiceStatus": status}


def test_service_ls_replicas_column_per_mode() -> None:
    rows = fmt.service_rows([
        svc({"Global": {}}, {"RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0}, "a"),
        svc({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 3}},
            {"RunningTasks": 2, "DesiredTasks": 2, "CompletedTasks": 1}, "b"),
        svc({"GlobalJob": {}}, {"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 2}, "c"),
    ], {})
    assert [(r[2], r[3]) for r in rows] == [("global", "3/3"), ("replicated job", "2/2 (1/3 completed)"),
                                            ("global job", "1/1 (2/3 completed)")]


class FakeClient:
    """Answers ``service``/``services`` from a list of ServiceStatus snapshots, one per poll."""

    def __init__(self, statuses: list[Any]) -> None:
        self.statuses = statuses

    def service(self, ref: str) -> Any:
        return svc({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 2}}, {}, "batch")

    def services(self, filters: Any = None) -> Any:
        st = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return [svc({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 2}}, st, "batch")]


def test_wait_job_returns_once_every_completion_is_done() -> None:
    out = io.StringIO()
    c: Any = FakeClient([{"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 0},
                         {"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 1},
                         {"RunningTasks": 0, "DesiredTasks": 0, "CompletedTasks": 2}])
    assert wait_job(c, "batch", out, interval=0) == 0
    assert out.getvalue().splitlines() == ["job progress: 0 out of 2 complete (1 running)",
                                           "job progress: 1 out of 2 complete (1 running)",
                                           "job progress: 2 out of 2 complete (0 running)",
                                           "verify: Job batch complete"]
    c = FakeClient([{"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 0}])
    assert wait_job(c, "batch", io.StringIO(), timeout=0.05, interval=0.01) == 1
