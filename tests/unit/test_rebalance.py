"""Opt-in rebalancing (manager.orchestrator.rebalance; moby#24103): a service labelled
com.shoal.rebalance=true spreads onto nodes that joined, one move at a time within its
UpdateConfig; moves that cannot land are abandoned with a back-off. Driven by the deterministic
harness of tests/unit/test_orchestrator_update.py, with a spread scheduler played here."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from manager.orchestrator.rebalance import ABANDON_BACKOFF, MOVE_ABANDONED, MOVE_FROM, MOVE_TIMEOUT
from shoal.base.servicelabels import REBALANCE_LABEL, label_true
from shoal.cli.commands import build_parser
from shoal.cli.rebalance_flags import apply_rebalance
from tests.unit.test_orchestrator_blips import set_node
from tests.unit.test_orchestrator_update import Cluster, service

Obj = dict[str, Any]


def cluster(replicas: int = 4, nodes: int = 2, label: bool = True, **update: Any) -> Cluster:
    """``replicas`` tasks converged on ``nodes`` nodes, then two empty nodes joined."""
    s = service(replicas, **update)
    if label:
        s["Spec"]["Labels"] = {REBALANCE_LABEL: "true"}
    c = Cluster(s, nodes)
    for i in (nodes + 1, nodes + 2):
        c.nodes.append({"ID": f"n{i}", "Spec": {"Availability": "active"}, "Status": {"State": "ready"}})
    return c


def per_node(c: Cluster) -> Counter[str]:
    return Counter(t["NodeID"] for t in c.current() if t["Status"]["State"] == "running")


def schedule(c: Cluster, run: bool = True) -> list[str]:
    """Place pending tasks where the service has the fewest tasks (the scheduler's spread) and
    run them; returns the nodes chosen."""
    out = []
    for t in sorted(c.tasks.values(), key=lambda t: t["ID"]):
        if t["Status"]["State"] == "pending" and t["DesiredState"] == "running":
            load = Counter(x["NodeID"] for x in c.current() if x.get("NodeID"))
            node = min((n["ID"] for n in c.nodes if n["Status"]["State"] == "ready"), key=lambda n: (load[n], n))
            c.place(t["ID"], node)
            if run:
                c.worker(t["ID"], "running")
            out.append(node)
    return out


def settle(c: Cluster, passes: int = 30, dt: float = 1.0) -> int:
    """Run passes with the scheduler and workers playing along; returns the moves made."""
    moves = 0
    for _ in range(passes):
        plan = c.step(dt)
        moves += sum(1 for t in plan.create if MOVE_FROM in t["Labels"])
        schedule(c)
        c.stop_asked()
    return moves


def test_spreads_onto_joined_nodes_one_move_at_a_time() -> None:
    c = cluster()
    assert per_node(c) == {"n1": 2, "n2": 2}
    first = c.step(1)
    moves = [t for t in first.create if MOVE_FROM in t["Labels"]]
    assert len(moves) == 1 and first.update == []  # Parallelism 1 (the default)
    old_id = moves[0]["Labels"][MOVE_FROM]
    assert c.tasks[old_id]["NodeID"] == "n2" and c.tasks[old_id]["Slot"] == moves[0]["Slot"]
    # in flight: the old task keeps running, nothing else moves, nothing is shut down
    plan = c.step(1)
    assert plan.create == [] and plan.update == []
    assert schedule(c) == ["n3"]
    plan = c.step(1)  # the new task runs: the old one is shut down (start-first)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(old_id, "shutdown")]
    c.stop_asked()
    assert settle(c) == 1  # one more move (n1 -> n4), then even
    assert sorted(per_node(c).values()) == [1, 1, 1, 1]
    assert sorted(t["Slot"] for t in c.current()) == [1, 2, 3, 4]  # slots keep their numbers
    assert settle(c) == 0


def test_nothing_moves_without_the_label_or_when_even() -> None:
    c = cluster(label=False)
    assert settle(c) == 0 and per_node(c) == {"n1": 2, "n2": 2}
    c = cluster(replicas=3, nodes=2)  # 2 + 1 + 0 + 0: spread 2 -> one move
    assert settle(c) == 1
    assert sorted(per_node(c).values()) == [1, 1, 1]


def test_parallelism_and_delay() -> None:
    c = cluster(replicas=8, nodes=2, Parallelism=2)
    plan = c.step(1)
    assert sum(1 for t in plan.create if MOVE_FROM in t["Labels"]) == 2
    settle(c)
    assert sorted(per_node(c).values()) == [2, 2, 2, 2]

    c = cluster(Delay=10_000_000_000)  # 10 s between moves
    c.step(1)
    schedule(c)
    c.step(1)  # completes the first move, which ran at T+1
    c.stop_asked()
    for _ in range(8):  # T+3 .. T+10
        plan = c.step(1)
        assert not any(MOVE_FROM in t["Labels"] for t in plan.create), "a move inside the delay"
    assert plan.wake_at is not None
    plan = c.step(1.5)
    assert sum(1 for t in plan.create if MOVE_FROM in t["Labels"]) == 1


def test_a_move_that_cannot_land_is_abandoned_and_backs_off() -> None:
    c = cluster()
    plan = c.step(1)
    (m,) = [t for t in plan.create if MOVE_FROM in t["Labels"]]
    old = c.tasks[m["Labels"][MOVE_FROM]]
    c.place(m["ID"], old["NodeID"])  # the scheduler found no other room
    plan = c.step(1)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(m["ID"], "shutdown")]
    assert MOVE_ABANDONED in c.tasks[m["ID"]]["Labels"]
    assert c.tasks[old["ID"]]["DesiredState"] == "running"
    for _ in range(5):
        assert c.step(10).create == []
    c.step(ABANDON_BACKOFF)
    assert any(MOVE_FROM in t["Labels"] and MOVE_ABANDONED not in t["Labels"] for t in c.current())

    # a new task that stays pending past the timeout is abandoned too
    c = cluster()
    (m,) = [t for t in c.step(1).create if MOVE_FROM in t["Labels"]]
    c.step(MOVE_TIMEOUT / 2)
    assert c.tasks[m["ID"]]["DesiredState"] == "running"
    c.step(MOVE_TIMEOUT / 2 + 1)
    assert c.tasks[m["ID"]]["DesiredState"] == "shutdown"


def test_label_removed_mid_move_cancels_it() -> None:
    c = cluster()
    (m,) = [t for t in c.step(1).create if MOVE_FROM in t["Labels"]]
    schedule(c)
    c.services["s1"]["Spec"]["Labels"] = {}
    plan = c.step(1)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(m["ID"], "shutdown")]
    assert settle(c) == 0 and per_node(c) == {"n1": 2, "n2": 2}


def test_no_rebalancing_during_an_update_or_with_preferences_or_drained_targets() -> None:
    c = cluster()
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.services["s1"]["Spec"]["Labels"] = {REBALANCE_LABEL: "true"}
    plan = c.step(1)
    assert not any(MOVE_FROM in t["Labels"] for t in plan.create)

    c = cluster()
    c.services["s1"]["Spec"]["TaskTemplate"]["Placement"] = {
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}
    c.services["s1"]["Version"] = {"Index": 1}
    assert not any(MOVE_FROM in t["Labels"] for t in c.step(1).create)

    c = cluster()
    for n in c.nodes[2:]:
        n["Spec"]["Availability"] = "pause"
    assert settle(c) == 0


def test_label_values() -> None:
    assert all(label_true(v) for v in ("true", "TRUE", "1", "yes", " on "))
    assert not any(label_true(v) for v in ("", "false", "0", "no", None, 1))


def test_cli_flags_set_and_remove_the_label() -> None:
    p = build_parser()
    a = p.parse_args(["service", "update", "--rebalance", "web"])
    assert apply_rebalance({"Name": "web", "Labels": {"x": "1"}}, a)["Labels"] == {"x": "1", REBALANCE_LABEL: "true"}
    a = p.parse_args(["service", "update", "--no-rebalance", "web"])
    assert apply_rebalance({"Labels": {REBALANCE_LABEL: "true"}}, a)["Labels"] == {}
    a = p.parse_args(["service", "update", "web"])
    assert apply_rebalance({"Labels": {"x": "1"}}, a) == {"Labels": {"x": "1"}}
    with pytest.raises(SystemExit):
        p.parse_args(["service", "update", "--rebalance", "--no-rebalance", "web"])


def test_no_moves_while_a_returning_nodes_slots_settle() -> None:
    """n2 goes down (its task replaced on n3, the original parked), then comes back: while the
    slot has two current tasks, the node is down or its settle time runs, nothing moves (the
    healthy task on n3 is left alone); once settled, only the moves still needed are made."""
    s = service(3)
    s["Spec"]["Labels"] = {REBALANCE_LABEL: "true"}
    c = Cluster(s, 3)
    assert per_node(c) == {"n1": 1, "n2": 1, "n3": 1}
    orig = next(t for t in c.current() if t["NodeID"] == "n2")
    healthy = {t["ID"] for t in c.current() if t["NodeID"] != "n2"}
    set_node(c, "n2", "down", "heartbeat failure")
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [orig["Slot"]]
    repl = plan.create[0]
    c.place(repl["ID"], "n3")
    c.worker(repl["ID"], "running")
    for _ in range(3):  # down: n1 1, n3 2 -- parked original, no move
        plan = c.step(1)
        assert plan.create == [] and plan.update == []
    set_node(c, "n2", "ready")
    # the settle window: n1 1, n2 0, n3 2 counted, but the slot holds two tasks: no move
    for _ in range(5):  # 2.5 s: the settle (2 s) passes meanwhile
        plan = c.step(0.5)
        assert not any(MOVE_FROM in t.get("Labels", {}) for t in plan.create)
        assert all(t["ID"] not in healthy for t in plan.update)
    # settled: the replacement gave way to the original, which runs on n2 again
    assert c.tasks[repl["ID"]]["DesiredState"] == "shutdown"
    assert c.tasks[orig["ID"]]["DesiredState"] == "running"
    c.stop_asked()
    assert settle(c) == 0  # already even: no move at all
    assert per_node(c) == {"n1": 1, "n2": 1, "n3": 1}
    assert healthy <= {t["ID"] for t in c.current()}


def test_no_moves_while_a_task_is_parked_then_only_the_needed_ones() -> None:
    """5 replicas on 3 nodes; the node with 1 task goes down and its replacement runs on
    another (3 / 2): no move while the original is parked; when the node comes back with its
    task dead, the replacement stays, nothing moves before the node settled, then one move."""
    s = service(5)
    s["Spec"]["Labels"] = {REBALANCE_LABEL: "true"}
    c = Cluster(s, 3)
    assert sorted(per_node(c).values()) == [1, 2, 2]
    lone = [n for n, k in per_node(c).items() if k == 1][0]
    orig = next(t for t in c.current() if t["NodeID"] == lone)
    set_node(c, lone, "down", "heartbeat failure")
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [orig["Slot"]]
    other = next(n for n in ("n1", "n2", "n3") if n != lone)
    c.place(plan.create[0]["ID"], other)  # 3 on one node, 2 on the other
    c.worker(plan.create[0]["ID"], "running")
    for _ in range(5):
        plan = c.step(1)
        assert plan.create == [] and plan.update == []  # parked: not steady
    c.worker(orig["ID"], "failed")  # died while away
    set_node(c, lone, "ready")
    plan = c.step(0.5)
    assert not any(MOVE_FROM in t.get("Labels", {}) for t in plan.create)
    moves = settle(c)
    assert moves == 1 and sorted(per_node(c).values()) == [1, 2, 2]
