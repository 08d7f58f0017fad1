"""Incremental assignments (manager/dispatcher/increments.py, worker/assigned.py): whatever
sequence of sets a node goes through, and however pushes waiting in the outbox are merged, the
agent's folded set equals the last set the dispatcher planned; a push carries only changes."""

from __future__ import annotations

import random
from typing import Any

from manager.dispatcher.increments import DigestCache, SentState, merge_pushes, plan_push, rest_digest
from worker.assigned import AssignedSet

NODE = {"ID": "n1", "Spec": {"Availability": "active"}}


def _task(tid: str, desired: str, gen: int) -> dict[str, Any]:
    return {"ID": tid, "DesiredState": desired, "Spec": {"ContainerSpec": {"Image": f"img:{gen}"}},
            "Status": {"State": "running"}, "Version": {"Index": gen}}


def test_folded_pushes_always_equal_the_planned_set() -> None:
    for seed in range(30):
        rnd = random.Random(seed)
        digests = DigestCache()
        sent: SentState | None = None
        agent = AssignedSet()
        outbox: dict[str, Any] | None = None
        current: dict[str, dict[str, Any]] = {}
        nets: dict[str, Any] = {}
        for step in range(80):
            for _ in range(rnd.randrange(1, 4)):
                tid = f"t{rnd.randrange(12)}"
                r = rnd.random()
                if r < 0.25:
                    current.pop(tid, None)
                elif r < 0.5 and tid in current:  # a status-only change: the same version otherwise
                    current[tid] = {**current[tid], "Status": {"State": "failed"}, "Version": {"Index": step}}
                else:
                    current[tid] = _task(tid, rnd.choice(["running", "shutdown"]), step)
            if rnd.random() < 0.1:
                nets = {"net1": {"Peers": [step]}}
            if rnd.random() < 0.05:
                sent = None  # a new connection: the next push is complete
                outbox = None
                agent = AssignedSet()
            tasks = [current[k] for k in sorted(current)]
            rest = {"networks": nets, "ingress": None, "data_path_port": 4789}
            body, sent = plan_push(sent, NODE, tasks, rest, rest_digest(NODE, nets, [None, 4789]), digests)
            if body is not None:
                outbox = body if outbox is None else merge_pushes(outbox, body)
            if outbox is not None and rnd.random() < 0.5:  # the writer gets to it (or not yet)
                got, extra = agent.apply(outbox)
                outbox = None
                # what the worker acts on: the planned set, ignoring status-only differences
                assert [(t["ID"], t["DesiredState"], t["Spec"]) for t in got] == \
                       [(t["ID"], t["DesiredState"], t["Spec"]) for t in tasks], (seed, step)
                assert extra["networks"] == nets


def test_a_push_carries_only_what_changed() -> None:
    digests = DigestCache()
    tasks = [_task(f"t{i}", "running", 1) for i in range(100)]
    rest = {"networks": {}, "ingress": None, "data_path_port": 4789}
    fp = rest_digest(NODE, {}, [None, 4789])
    first, sent = plan_push(None, NODE, tasks, rest, fp, digests)
    assert first is not None and "incremental" not in first and len(first["tasks"]) == 100
    # nothing changed, or only a status: no push
    again, sent = plan_push(sent, NODE, [{**t, "Status": {"State": "failed"}} for t in tasks], rest, fp, digests)
    assert again is None
    tasks[7] = _task("t7", "shutdown", 2)
    body, sent = plan_push(sent, NODE, tasks[:50], rest, fp, digests)
    assert body is not None and body["incremental"] is True
    assert [t["ID"] for t in body["tasks"]] == ["t7"]
    assert body["removed"] == sorted(f"t{i}" for i in range(50, 100))
    assert "networks" not in body  # unchanged: the agent keeps its copy


def test_merge_keeps_a_waiting_complete_push_complete() -> None:
    full = {"node": NODE, "tasks": [_task("a", "running", 1), _task("b", "running", 1)], "networks": {}}
    inc = {"incremental": True, "node": NODE, "tasks": [_task("c", "running", 2)], "removed": ["a"]}
    merged = merge_pushes(full, inc)
    assert "incremental" not in merged and [t["ID"] for t in merged["tasks"]] == ["b", "c"]
    # two incremental ones: removals that were re-added are not removed
    inc2 = {"incremental": True, "node": NODE, "tasks": [_task("a", "running", 3)], "removed": ["c"]}
    both = merge_pushes(inc, inc2)
    assert both["removed"] == ["c"] and [t["ID"] for t in both["tasks"]] == ["a"]
    assert both["tasks"][0]["Version"] == {"Index": 3}


def test_the_agent_ignores_malformed_parts() -> None:
    s = AssignedSet()
    tasks, extra = s.apply({"node": NODE, "tasks": [{"no": "id"}, _task("a", "running", 1)], "networks": "x"})
    assert [t["ID"] for t in tasks] == ["a"] and extra == {}
    tasks, _ = s.apply({"incremental": True, "node": NODE, "tasks": "nope", "removed": ["a", 5]})
    assert tasks == []
