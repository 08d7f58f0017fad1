"""The global-service reconciler (manager.orchestrator.global_mode) against the shared harness:
one task per eligible node, following nodes as they join, are drained, paused, labelled, go
down or leave; restarts per node; rolling updates; history per node in the reaper."""

from __future__ import annotations

from typing import Any

from manager.reaper import reap
from manager.scheduler import NodeSet, schedule
from manager.specs import SECOND
from tests.unit.orchestrator_harness import Cluster, service

Obj = dict[str, Any]
GLOBAL: Obj = {"Global": {}}


def nodes_of(c: Cluster) -> list[str]:
    return sorted(t["NodeID"] for t in c.live())


def test_one_task_per_node_preassigned_with_slot_zero() -> None:
    c = Cluster(service(mode=GLOBAL))
    assert nodes_of(c) == ["n1", "n2", "n3"]
    for t in c.live():
        assert t["Slot"] == 0 and t["Status"]["State"] == "running"
        assert t["Name"] == f"web.{t['NodeID']}.{t['ID']}"
    assert c.step().create == []  # steady


def test_follows_a_joining_node_and_a_labelled_one() -> None:
    c = Cluster(service(mode=GLOBAL))
    c.add_node("n4")
    plan = c.step()
    assert [(t["NodeID"], t["Status"]["State"]) for t in plan.create] == [("n4", "pending")]
    svc = c.services["s1"]
    svc["Spec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.labels.zone==a"]}
    c.stored(svc)
    c.label("n2", zone="a")
    c.step()
    c.stop_asked()
    c.step()
    # only n2 matches now: the others' tasks are shut down; n2's task is replaced by the update
    c.run_new()
    c.step()
    assert nodes_of(c) == ["n2"]
    c.label("n3", zone="a")
    c.step()
    assert sorted(t["NodeID"] for t in c.live()) == ["n2", "n3"]


def test_drain_shuts_down_pause_keeps_and_active_again_recreates() -> None:
    c = Cluster(service(mode=GLOBAL))
    c.availability("n1", "drain")
    c.step()
    assert [t["DesiredState"] for t in c.tasks.values() if t["NodeID"] == "n1"] == ["shutdown"]
    c.stop_asked()
    c.availability("n2", "pause")
    c.step()
    assert nodes_of(c) == ["n2", "n3"]  # paused n2 keeps its task
    # a paused node's task that fails is not restarted there
    t2 = c.on("n2")[0]["ID"]
    c.worker(t2, "failed")
    c.step(10)
    assert c.on("n2") == []
    c.availability("n1", "active")
    c.availability("n2", "active")
    c.step(10)
    assert nodes_of(c) == ["n1", "n2", "n3"]


def test_a_down_node_keeps_its_task_a_removed_one_loses_it() -> None:
    c = Cluster(service(mode=GLOBAL))
    t1 = c.on("n1")[0]["ID"]
    c.node_state("n1", "down")
    plan = c.step()
    assert plan.create == [] and c.tasks[t1]["DesiredState"] == "running"
    c.remove_node("n1")
    c.step()
    assert c.tasks[t1]["DesiredState"] == "shutdown"
    assert all(t["NodeID"] != "n1" for t in c.current())


def test_failed_task_restarts_on_its_node_after_the_delay() -> None:
    svc = service(mode=GLOBAL)
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": "on-failure", "Delay": 2 * SECOND}
    c = Cluster(svc)
    old = c.on("n2")[0]["ID"]
    c.worker(old, "failed")
    assert c.step().create == []
    assert c.wake_at == c.now + 2
    plan = c.step(2)
    assert [t["NodeID"] for t in plan.create] == ["n2"] and c.tasks[old]["DesiredState"] == "shutdown"
    # a complete task is not restarted under on-failure
    c.run_new()
    done = c.on("n3")[0]["ID"]
    c.worker(done, "complete")
    assert c.step(10).create == []


def test_rolling_update_one_node_at_a_time_stop_first() -> None:
    c = Cluster(service(mode=GLOBAL, Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    assert c.status()["State"] == "updating"
    for _ in range(3):
        assert len(c.stop_asked()) == 1  # one node at a time
        c.step()
        assert len(c.run_new()) == 1
        c.step()
    assert sorted(c.image_of(t) for t in c.live()) == ["busybox:2"] * 3
    assert c.status()["State"] == "updating" and c.wake_at == c.now + 5  # one Monitor window
    c.step(5)
    assert c.status()["State"] == "completed"


def test_rolling_update_waits_the_delay_after_each_node() -> None:
    c = Cluster(service(mode=GLOBAL, Parallelism=1, Delay=10 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step(1)
    assert len(c.stop_asked()) == 1
    c.step(1)
    assert len(c.run_new()) == 1
    c.step(1)
    assert c.stop_asked() == [] and c.wake_at == c.now + 9  # 10 s after the new task ran
    c.step(8)
    assert c.stop_asked() == []
    c.step(1)
    assert len(c.stop_asked()) == 1


def test_rolling_update_start_first_runs_the_new_task_beside_the_old() -> None:
    c = Cluster(service(mode=GLOBAL, Parallelism=0, Order="start-first"))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    assert len(c.live()) == 6 and c.stop_asked() == []
    c.run_new()
    c.step()
    assert len(c.stop_asked()) == 3
    c.step(5)  # one Monitor window (default 5 s) after the last node
    assert sorted(c.image_of(t) for t in c.live()) == ["busybox:2"] * 3 and c.status()["State"] == "completed"


def test_the_reaper_keeps_history_per_node() -> None:
    svc = service(mode=GLOBAL)
    svc["Spec"]["TaskTemplate"]["RestartPolicy"] = {"Condition": "any", "Delay": 0}
    c = Cluster(svc)
    for _ in range(7):  # n1's task fails seven times
        c.worker(c.on("n1")[0]["ID"], "failed")
        c.step()
        c.run_new()
    assert len([t for t in c.tasks.values() if t["NodeID"] == "n1"]) == 8
    gone = set(reap(c.tasks.values(), c.nodes, c.services.values(), None))
    assert len(gone) == 3 and all(c.tasks[g]["NodeID"] == "n1" for g in gone)  # 5 kept on n1; n2, n3 untouched


def test_the_scheduler_honours_and_checks_a_preassigned_node() -> None:
    c = Cluster(service(mode=GLOBAL), run=False)
    pending = [t for t in c.tasks.values() if t["Status"]["State"] == "pending"]
    c.availability("n3", "pause")  # paused after the orchestrator chose it
    nodes = NodeSet.from_objects(c.nodes, [])
    dec = schedule(nodes, pending)
    assert sorted(dec.placed.values()) == ["n1", "n2"]
    (err,) = dec.failed.values()
    assert err == "no suitable node (1 node not available for new tasks)"
