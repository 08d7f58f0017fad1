"""The job reconcilers (manager.orchestrator.replicated_job, global_job) against the shared
harness: run to completion, Complete never restarted, failed restarted per the restart policy,
MaxConcurrent, a new JobIteration re-runs; ServiceStatus of jobs."""

from __future__ import annotations

from typing import Any

from manager.orchestrator.status import service_status
from tests.unit.orchestrator_harness import Cluster, service

Obj = dict[str, Any]


def rjob(max_concurrent: int, total: int, condition: str = "on-failure") -> Obj:
    svc = service(mode={"ReplicatedJob": {"MaxConcurrent": max_concurrent, "TotalCompletions": total}})
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": condition, "Delay": 0}
    return svc


def complete_running(c: Cluster) -> list[str]:
    out = sorted(t["ID"] for t in c.live() if t["Status"]["State"] == "running")
    for tid in out:
        c.worker(tid, "complete")
    return out


def test_replicated_job_runs_max_concurrent_at_a_time_to_total_completions() -> None:
    c = Cluster(rjob(2, 5))
    assert sorted(t["Slot"] for t in c.live()) == [0, 1]  # numbered from 0, as swarmkit's
    assert all(t["DesiredState"] == "complete" and t["JobIteration"] == {"Index": 0} for t in c.live())
    done = 0
    while done < 5:
        done += len(complete_running(c))
        c.step()
        assert len(c.live()) <= 2
        c.run_new()
    st = service_status(c.services["s1"], c.tasks.values(), c.nodes)
    assert st == {"RunningTasks": 0, "DesiredTasks": 0, "CompletedTasks": 5}
    assert sorted(t["Slot"] for t in c.tasks.values()) == [0, 1, 2, 3, 4]
    # complete tasks are never restarted, even with the condition any
    assert c.step(3600).create == []


def test_complete_is_not_restarted_even_with_condition_any() -> None:
    c = Cluster(rjob(1, 1, condition="any"))
    complete_running(c)
    assert c.step(60).create == []
    assert c.step(60).create == []


def test_a_failed_task_is_restarted_in_its_slot_per_the_policy() -> None:
    svc = rjob(1, 1)
    svc["Spec"]["TaskTemplate"]["RestartPolicy"]["MaxAttempts"] = 2
    c = Cluster(svc)
    for attempt in range(2):
        (t,) = c.live()
        c.worker(t["ID"], "failed")
        plan = c.step()
        assert [n["Slot"] for n in plan.create] == [0], attempt
        assert c.tasks[t["ID"]]["DesiredState"] == "shutdown"
        c.run_new()
    (t,) = c.live()
    c.worker(t["ID"], "failed")
    assert c.step(60).create == []  # MaxAttempts reached: given up


def test_restart_condition_none_leaves_a_failed_job_task() -> None:
    c = Cluster(rjob(1, 2, condition="none"))
    (t,) = c.live()
    c.worker(t["ID"], "failed")
    plan = c.step()
    assert [n["Slot"] for n in plan.create] == [1]  # the next slot, not a retry of slot 0


def test_a_new_job_iteration_runs_it_again() -> None:
    c = Cluster(rjob(2, 2))
    complete_running(c)
    c.step()
    assert c.step().create == []
    c.user_update(TaskTemplate__ForceUpdate=1)  # service update --force
    assert c.services["s1"]["JobStatus"]["JobIteration"] == {"Index": 1}
    plan = c.step()
    assert sorted(t["Slot"] for t in plan.create) == [0, 1]
    assert all(t["JobIteration"] == {"Index": 1} for t in plan.create)


def test_a_new_iteration_stops_tasks_of_the_old_one() -> None:
    c = Cluster(rjob(1, 1))
    (old,) = c.live()
    c.user_update(TaskTemplate__ForceUpdate=1)
    c.step()
    assert c.tasks[old["ID"]]["DesiredState"] == "shutdown"


def test_a_job_task_on_a_drained_node_is_replaced_one_on_a_down_node_is_not() -> None:
    c = Cluster(rjob(2, 2))
    a, b = sorted(c.live(), key=lambda t: t["Slot"])
    c.node_state(a["NodeID"], "down")
    assert c.step().create == []  # never two copies of one job task
    c.availability(b["NodeID"], "drain")
    plan = c.step()
    assert [t["Slot"] for t in plan.create] == [b["Slot"]]


def test_global_job_one_task_per_node_and_joining_nodes() -> None:
    svc = service(mode={"GlobalJob": {}})
    c = Cluster(svc)
    assert sorted(t["NodeID"] for t in c.live()) == ["n1", "n2", "n3"]
    complete_running(c)
    assert c.step(60).create == []
    st = service_status(c.services["s1"], c.tasks.values(), c.nodes)
    assert st == {"RunningTasks": 0, "DesiredTasks": 0, "CompletedTasks": 3}
    c.add_node("n4")
    plan = c.step()
    assert [(t["NodeID"], t["DesiredState"]) for t in plan.create] == [("n4", "complete")]
    c.availability("n2", "drain")
    assert c.step().update == []  # a complete task is left alone


def test_global_job_restarts_a_failed_task_on_its_node() -> None:
    svc = service(mode={"GlobalJob": {}})
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": "on-failure", "Delay": 0}
    c = Cluster(svc)
    t = next(t for t in c.live() if t["NodeID"] == "n2")
    c.worker(t["ID"], "failed")
    plan = c.step()
    assert [n["NodeID"] for n in plan.create] == ["n2"]


def test_service_status_global_and_replicated_job_while_running() -> None:
    c = Cluster(service(mode={"Global": {}}))
    c.availability("n3", "drain")
    c.node_state("n2", "down")
    c.step()
    c.stop_asked()
    st = service_status(c.services["s1"], c.tasks.values(), c.nodes)
    assert st == {"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 0}
    j = Cluster(rjob(2, 3))
    st = service_status(j.services["s1"], j.tasks.values(), j.nodes)
    assert st == {"RunningTasks": 2, "DesiredTasks": 2, "CompletedTasks": 0}
