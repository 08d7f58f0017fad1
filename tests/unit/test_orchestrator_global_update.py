"""Global services' rolling updates honour ``Monitor``, ``MaxFailureRatio`` and
``FailureAction`` (pause | continue | rollback) with the same ``UpdateStatus`` states and
messages as replicated ones (manager.orchestrator.global_update), against the shared harness."""

from __future__ import annotations

from typing import Any

from manager.specs import SECOND
from tests.unit.orchestrator_harness import Cluster, service

Obj = dict[str, Any]
GLOBAL: Obj = {"Global": {}}


def global_service(**update: Any) -> Obj:
    svc = service(mode=GLOBAL, **update)
    # restarts wait: a failed new task stays failed long enough to be seen (as the default 5 s)
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": "any", "Delay": 60 * SECOND}
    return svc


def first_node_fails(c: Cluster, image: str = "busybox:bad") -> str:
    """Update to ``image``; the first node's new task runs, then fails; returns its ID."""
    c.user_update(TaskTemplate__ContainerSpec__Image=image)
    c.step()
    assert len(c.stop_asked()) == 1
    new = c.step(1).create[0]["ID"]
    c.run_new()
    c.step(1)
    c.worker(new, "failed")
    return str(new)


def images(c: Cluster) -> list[str]:
    return sorted(c.image_of(t) for t in c.live())


def test_stop_first_failure_pauses_with_swarms_message() -> None:
    c = Cluster(global_service(Parallelism=1, Delay=30 * SECOND, Monitor=10 * SECOND))
    bad = first_node_fails(c)
    c.step(1)
    st = c.status()
    assert st["State"] == "paused"
    assert st["Message"] == f"update paused due to failure or early termination of task {bad}"
    for _ in range(3):  # paused: the other nodes keep the old spec
        c.stop_asked()
        c.run_new()
        c.step(40)
    assert c.status()["State"] == "paused"
    assert images(c).count("busybox:1") == 2
    # a new `service update` resets UpdateStatus and resumes toward the new spec
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:3")
    c.step()
    assert c.status()["State"] == "updating"


def test_start_first_task_that_never_runs_pauses() -> None:
    c = Cluster(global_service(Parallelism=1, Order="start-first"))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:bad")
    new = c.step().create[0]["ID"]
    c.worker(new, "rejected")
    c.step(1)
    assert c.status()["State"] == "paused"
    assert c.status()["Message"] == f"update paused due to failure or early termination of task {new}"
    assert images(c) == ["busybox:1"] * 3  # the old tasks were never stopped


def test_failure_after_the_monitor_window_does_not_count() -> None:
    c = Cluster(global_service(Parallelism=1, Monitor=2 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.stop_asked()
    new = c.step(1).create[0]["ID"]
    c.run_new()
    c.step(1)
    c.step(3)  # 3 s after running: out of the window
    c.worker(new, "failed")
    c.step(1)
    assert c.status()["State"] == "updating"


def test_max_failure_ratio_tolerates_failures_up_to_it() -> None:
    c = Cluster(global_service(Parallelism=1, Monitor=10 * SECOND, MaxFailureRatio=0.5), nodes=4)
    first_node_fails(c)
    c.step(1)
    assert c.status()["State"] == "updating"  # 1 of 4 ≤ 0.5
    c.stop_asked()
    second = c.step(1).create[0]["ID"]
    c.run_new()
    c.step(1)
    c.worker(second, "failed")
    c.step(1)
    assert c.status()["State"] == "updating"  # 2 of 4 ≤ 0.5
    c.stop_asked()
    third = c.step(1).create[0]["ID"]
    c.worker(third, "failed")  # never ran
    c.step(1)
    assert c.status()["State"] == "paused"  # 3 of 4 > 0.5
    assert c.status()["Message"] == f"update paused due to failure or early termination of task {third}"


def test_failure_action_continue_carries_on() -> None:
    c = Cluster(global_service(Parallelism=1, FailureAction="continue"))
    first_node_fails(c)
    for _ in range(8):
        c.stop_asked()
        c.run_new()
        c.step(6)
    assert c.status()["State"] == "completed" and c.status()["Message"] == "update completed"
    assert sorted(c.image_of(t) for t in c.current() if t["Status"]["State"] == "running") == ["busybox:bad"] * 2


def test_failure_action_rollback_returns_to_the_previous_spec() -> None:
    svc = global_service(Parallelism=1, FailureAction="rollback")
    svc["Spec"]["RollbackConfig"] = {"Parallelism": 0, "Monitor": 1 * SECOND}
    c = Cluster(svc)
    bad = first_node_fails(c)
    plan = c.step(1)
    assert plan.create == []  # no more nodes handed out toward the bad spec
    st = c.status()
    assert st["State"] == "rollback_started"
    assert st["Message"] == f"update rolled back due to failure or early termination of task {bad}"
    assert c.services["s1"]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:1"
    assert "PreviousSpec" not in c.services["s1"]
    for _ in range(4):
        c.stop_asked()
        c.run_new()
        c.step(2)
    assert c.status()["State"] == "rollback_completed" and c.status()["Message"] == "rollback completed"
    assert images(c) == ["busybox:1"] * 3


def test_rollback_without_a_previous_spec_pauses_and_says_so() -> None:
    c = Cluster(global_service(Parallelism=1, FailureAction="rollback"))
    bad = first_node_fails(c)
    c.services["s1"].pop("PreviousSpec")
    c.step(1)
    assert c.status()["State"] == "paused"
    assert c.status()["Message"] == (f"update paused due to failure or early termination of task {bad}"
                                     " (no previous spec to roll back to)")


def test_a_failing_rollback_pauses_it() -> None:
    c = Cluster(global_service(Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    for _ in range(8):
        c.stop_asked()
        c.run_new()
        c.step(6)
    assert c.status()["State"] == "completed"
    c.user_update(rollback=True)
    c.step()
    assert len(c.stop_asked()) == 1
    new = c.step(1).create[0]["ID"]
    assert c.image_of(c.tasks[new]) == "busybox:1"
    c.worker(new, "rejected")
    c.step(1)
    assert c.status()["State"] == "rollback_paused"
    assert c.status()["Message"] == f"rollback paused due to failure or early termination of task {new}"


def test_completion_waits_one_monitor_window_and_a_late_failure_still_pauses() -> None:
    c = Cluster(global_service(Parallelism=0, Monitor=10 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    assert len(c.stop_asked()) == 3
    c.step(1)
    new = c.run_new()
    c.step(1)
    c.step(1)
    assert c.status()["State"] == "updating" and c.wake_at == c.now + 9  # idle since the pass before
    c.worker(new[0], "failed")  # 1 s into its window
    c.step(1)
    assert c.status()["State"] == "paused"


def test_a_node_joining_mid_update_is_not_counted_as_the_updates() -> None:
    c = Cluster(global_service(Parallelism=1, Delay=30 * SECOND, Monitor=10 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.add_node("n4")
    joined = next(t for t in c.step().create if t["NodeID"] == "n4")["ID"]
    c.worker(joined, "rejected")  # a new node's task is the global orchestrator's, not the update's
    c.step(1)
    assert c.status()["State"] == "updating"
