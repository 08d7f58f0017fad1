"""Nodes that blip (manager.orchestrator.slots): a lost node's tasks are replaced but kept
running; when the node comes back, after the settle time, exactly one task per slot remains
(the original while it still runs); removed, left or drained nodes' tasks are shut down at once;
down nodes' tasks answer no name. Driven by the deterministic harness of
tests/unit/test_orchestrator_update.py (injected clock, plans applied as the store does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher.assignments import TaskIndex
from manager.orchestrator.slots import SETTLE, hold_slot, node_fate
from shoal.base.util import now_rfc3339
from shoal.base.views import Node
from tests.unit.test_dispatcher import _env
from tests.unit.test_dispatcher_dns import DnsEnv, dns, two_nodes
from tests.unit.test_orchestrator_update import Cluster, service
from tests.waiting import wait_until

Obj = dict[str, Any]


def set_node(c: Cluster, nid: str, state: str, message: str = "", avail: str = "active") -> None:
    """Write node ``nid`` as the dispatcher / API would (a new ``UpdatedAt`` = the harness's now)."""
    for n in c.nodes:
        if n["ID"] == nid:
            n["Status"] = {"State": state, "Message": message}
            n["Spec"]["Availability"] = avail
            n["UpdatedAt"] = now_rfc3339(c.now)


def on_node(c: Cluster, nid: str) -> list[Obj]:
    return [t for t in c.tasks.values() if t.get("NodeID") == nid and t["DesiredState"] == "running"]


def live_per_slot(c: Cluster) -> dict[int, list[str]]:
    """Slot → IDs of its tasks with desired running (what runs once every node is up)."""
    out: dict[int, list[str]] = {}
    for t in c.current():
        out.setdefault(t["Slot"], []).append(t["ID"])
    return out


def lose_n2(c: Cluster) -> tuple[Obj, Obj]:
    """Mark n2 down (heartbeat failure), run a pass; returns (the original on n2, its replacement)."""
    orig = on_node(c, "n2")[0]
    set_node(c, "n2", "down", "heartbeat failure")
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [orig["Slot"]]
    assert plan.update == [] or all(t["ID"] != orig["ID"] for t in plan.update)
    repl = plan.create[0]
    c.place(repl["ID"], "n3")
    c.worker(repl["ID"], "running")
    return orig, repl


def test_a_ready_node_keeps_its_tasks_whatever_the_time() -> None:
    c = Cluster(service(3))
    before = {t["ID"] for t in c.current()}
    for _ in range(5):
        plan = c.step(10)
        assert plan.create == [] and plan.update == []
    assert {t["ID"] for t in c.current()} == before


def test_lost_node_tasks_replaced_but_parked_then_original_kept_after_settle() -> None:
    c = Cluster(service(3))
    orig, repl = lose_n2(c)
    assert c.tasks[orig["ID"]]["DesiredState"] == "running"  # parked, not shut down
    # while the node stays down nothing else happens, pass after pass
    for _ in range(3):
        plan = c.step(5)
        assert plan.create == [] and plan.update == []
    # it comes back with the original still running: both kept for the settle time
    set_node(c, "n2", "ready")
    plan = c.step(0.5)
    assert plan.create == [] and plan.update == []
    assert plan.wake_at is not None and abs(plan.wake_at - (c.now - 0.5 + SETTLE)) < 1e-6
    plan = c.step(SETTLE)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(repl["ID"], "shutdown")]
    assert plan.create == []
    assert sorted(len(v) for v in live_per_slot(c).values()) == [1, 1, 1]
    assert c.tasks[orig["ID"]]["DesiredState"] == "running"
    c.stop_asked()
    assert c.step(1).update == []


def test_returning_node_whose_task_died_keeps_the_replacement() -> None:
    c = Cluster(service(3))
    orig, repl = lose_n2(c)
    set_node(c, "n2", "ready")
    c.worker(orig["ID"], "failed")  # the worker reports what happened while it was away
    plan = c.step(SETTLE + 0.1)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(orig["ID"], "shutdown")]
    assert plan.create == []
    assert c.tasks[repl["ID"]]["DesiredState"] == "running"


def test_returning_original_with_an_old_spec_gives_way() -> None:
    """A service updated while the node was away: the updater shuts the parked original down."""
    c = Cluster(service(3))
    orig, repl = lose_n2(c)
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    for _ in range(12):
        c.step(1)
        c.stop_asked()
        c.run_new()
    assert c.tasks[orig["ID"]]["DesiredState"] == "shutdown"
    set_node(c, "n2", "ready")
    c.step(SETTLE + 1)
    slots = live_per_slot(c)
    assert sorted(slots) == [1, 2, 3] and all(len(v) == 1 for v in slots.values())
    assert {c.image_of(c.tasks[v[0]]) for v in slots.values()} == {"busybox:2"}


def test_left_removed_and_drained_nodes_tasks_shut_down_at_once() -> None:
    for how in ("left", "removed", "drained"):
        c = Cluster(service(3))
        orig = on_node(c, "n2")[0]
        if how == "left":
            set_node(c, "n2", "down", "node left the swarm")
        elif how == "drained":
            set_node(c, "n2", "ready", avail="drain")
        else:
            c.nodes = [n for n in c.nodes if n["ID"] != "n2"]
        plan = c.step(1)
        assert [t["Slot"] for t in plan.create] == [orig["Slot"]], how
        assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(orig["ID"], "shutdown")], how


def test_two_lost_nodes_in_a_row_then_both_back() -> None:
    c = Cluster(service(3))
    orig, repl = lose_n2(c)
    set_node(c, "n3", "down", "heartbeat failure")  # the replacement's node goes too
    plan = c.step(1)
    slot = orig["Slot"]
    created = [t for t in plan.create if t["Slot"] == slot]
    assert len(created) == 1 and not any(t["Slot"] == slot for t in plan.update)
    c.place(created[0]["ID"], "n1")
    c.worker(created[0]["ID"], "running")
    set_node(c, "n2", "ready")
    set_node(c, "n3", "ready")
    c.step(SETTLE + 0.1)
    slots = live_per_slot(c)
    assert all(len(v) == 1 for v in slots.values()), slots
    assert slots[slot] == [orig["ID"]]  # the oldest running one: the original


def test_hold_slot_rules() -> None:
    now = 1_800_000_000.0
    nodes = {"up": Node({"ID": "up", "Status": {"State": "ready"}, "UpdatedAt": now_rfc3339(now - 60)}),
             "lost": Node({"ID": "lost", "Status": {"State": "down", "Message": "heartbeat failure"}}),
             "left": Node({"ID": "left", "Status": {"State": "down", "Message": "node left the swarm"}})}

    def t(tid: str, node: str, state: str = "running", age: float = 10) -> Obj:
        return {"ID": tid, "NodeID": node, "Status": {"State": state}, "DesiredState": "running",
                "CreatedAt": now_rfc3339(now - age), "Spec": {"x": 1}}

    assert [node_fate(x, nodes) for x in (t("a", ""), t("b", "up"), t("c", "lost"), t("d", "left"),
                                          t("e", "nope"))] == ["unplaced", "usable", "lost", "gone", "gone"]
    h = hold_slot([t("o", "lost", age=20), t("r", "up")], nodes, now)
    assert h.keep is not None and h.keep["ID"] == "r" and [x["ID"] for x in h.parked] == ["o"] and h.shut == []
    h = hold_slot([t("o", "lost")], nodes, now)
    assert h.keep is not None and h.keep["ID"] == "o" and h.parked == []
    h = hold_slot([t("o", "left", age=20), t("r", "up")], nodes, now)
    assert h.keep is not None and h.keep["ID"] == "r" and [x["ID"] for x in h.shut] == ["o"]
    # a parked task whose node is then removed (node rm) is shut down
    h = hold_slot([t("o", "nope", age=20), t("r", "up")], nodes, now)
    assert h.keep is not None and h.keep["ID"] == "r" and [x["ID"] for x in h.shut] == ["o"]
    # a start-first update's old task is never shut here
    old, new = t("old", "up", age=20), t("new", "up", "starting")
    new["Spec"] = {"x": 2}
    h = hold_slot([old, new], nodes, now, exempt={"old"})
    assert h.keep is new and h.shut == []
    # two running on settled nodes, same spec: the oldest stays
    h = hold_slot([t("o", "up", age=20), t("r", "up")], nodes, now)
    assert h.keep is not None and h.keep["ID"] == "o" and [x["ID"] for x in h.shut] == ["r"]


def test_down_nodes_tasks_leave_dns() -> None:
    def task(tid: str, node: str) -> Obj:
        return {"ID": tid, "ServiceID": "s1", "Slot": 1, "NodeID": node, "DesiredState": "running",
                "Status": {"State": "running"},
                "NetworksAttachments": [{"Network": {"ID": "net1"}, "Addresses": [f"10.0.1.{len(tid) + 1}/24"]}]}

    tasks = [task("a", "n1"), task("bb", "n2")]
    nodes = [{"ID": "n1", "Status": {"State": "ready"}}, {"ID": "n2", "Status": {"State": "down"}}]
    idx = TaskIndex(tasks, [], nodes)
    assert [e[2] for e in idx.dns_records("net1")] == ["a"]
    assert sorted(e[2] for e in TaskIndex(tasks).dns_records("net1")) == ["a", "bb"]


@pytest.fixture
async def dns_env(tmp_path: Path) -> AsyncIterator[DnsEnv]:
    async for e in _env(tmp_path, 5.0):
        yield DnsEnv(e.store, e.d, e.port)


async def test_a_down_nodes_tasks_leave_the_other_nodes_dns_and_come_back(dns_env: DnsEnv) -> None:
    """Through the dispatcher's pushes (real store, loopback sessions): n2 marked down drops its
    running task from n1's records (it is parked, still desired running); ready again, it is back."""
    n1, _n2 = await two_nodes(dns_env)

    def ids() -> list[str] | None:
        d = dns(n1)
        return None if d is None else [t["ID"] for t in d["Tasks"]]

    await dns_env.modify("nodes", "n2", lambda n: n.__setitem__("Status", {**n["Status"], "State": "down"}))
    await wait_until(lambda: ids() == ["w1"], 2, "w2 gone from n1's records")
    await dns_env.modify("nodes", "n2", lambda n: n.__setitem__("Status", {**n["Status"], "State": "ready"}))
    await wait_until(lambda: ids() == ["w1", "w2"], 2, "w2 back in n1's records")
