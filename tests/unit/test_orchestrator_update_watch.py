"""The rolling update's watch (manager.orchestrator.update.watch), for replicated and global
services: a new task that fails within ``Monitor`` counts even when its restart policy replaces
it in the same pass (restart ``Delay`` 0); a new task asked to stop (its node drained) does not."""

from __future__ import annotations

from typing import Any

import pytest

from manager.specs import SECOND
from tests.unit.orchestrator_harness import Cluster, service

Obj = dict[str, Any]
MODES = [None, {"Global": {}}]


def updating(mode: Obj | None) -> tuple[Cluster, str]:
    """A service of ``mode`` restarting at once (Delay 0) whose update to a new image has one new
    task running (returns it), the next node or slot held back by ``Delay``."""
    svc = service(3, mode=mode, Parallelism=1, Delay=30 * SECOND, Monitor=10 * SECOND)
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": "any", "Delay": 0}
    c = Cluster(svc)
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:bad")
    c.step()
    assert len(c.stop_asked()) == 1
    new = str(c.step(1).create[0]["ID"])
    c.run_new()
    c.step(1)
    return c, new


@pytest.mark.parametrize("mode", MODES)
def test_a_failure_restarted_in_the_same_pass_still_pauses(mode: Obj | None) -> None:
    c, new = updating(mode)
    c.worker(new, "failed")
    plan = c.step(1)
    assert any(t["ID"] == new and t["DesiredState"] == "shutdown" for t in plan.update)  # restarted at once
    assert c.status()["State"] == "paused"
    assert c.status()["Message"] == f"update paused due to failure or early termination of task {new}"


@pytest.mark.parametrize("mode", MODES)
def test_a_new_task_stopped_on_request_is_no_failure(mode: Obj | None) -> None:
    c, new = updating(mode)
    c.availability(c.tasks[new]["NodeID"], "drain")
    c.step(1)
    assert c.tasks[new]["DesiredState"] == "shutdown"
    c.worker(new, "shutdown")  # what a worker reports for a task it was asked to stop
    c.step(1)
    assert c.status()["State"] == "updating"
