"""The pure scheduler core (manager.scheduler): each filter and its explanation, constraints on
every node field, max replicas per node, reservations against capacity, spread preferences, the
faulty-node rule with an injected clock, and the index kept one task at a time."""

from __future__ import annotations

from typing import Any

import pytest

from manager.scheduler import (
    MAX_FAILURES,
    MONITOR_FAILURES,
    NodeSet,
    Pipeline,
    build_node_infos,
    node_matches,
    schedule,
)
from manager.specs import parse_constraint

GIB = 1 << 30
CPU = 1_000_000_000


def node(id: str, host: str = "", *, state: str = "ready", avail: str = "active", role: str = "worker",
         labels: dict[str, str] | None = None, engine_labels: dict[str, str] | None = None, cpus: int = 0,
         mem: int = 0, os: str = "linux", arch: str = "x86_64") -> dict[str, Any]:
    """An API Node object."""
    return {"ID": id, "Spec": {"Role": role, "Availability": avail, "Labels": labels or {}},
            "Description": {"Hostname": host or id, "Platform": {"OS": os, "Architecture": arch},
                            "Resources": {"NanoCPUs": cpus, "MemoryBytes": mem},
                            "Engine": {"Labels": engine_labels or {}}},
            "Status": {"State": state}}


def task(id: str, svc: str = "s1", slot: int = 1, *, constraints: list[str] | None = None,
         prefs: list[str] | None = None, max_replicas: int = 0, cpus: int = 0, mem: int = 0, node_id: str = "",
         state: str = "pending", version: int = 1) -> dict[str, Any]:
    """A task dict as the orchestrator writes it."""
    placement: dict[str, Any] = {"Constraints": constraints or []}
    if prefs:
        placement["Preferences"] = [{"Spread": {"SpreadDescriptor": p}} for p in prefs]
    if max_replicas:
        placement["MaxReplicas"] = max_replicas
    return {"ID": id, "ServiceID": svc, "Slot": slot, "NodeID": node_id, "DesiredState": "running",
            "SpecVersion": {"Index": version}, "Status": {"State": state},
            "Spec": {"Placement": placement,
                     "Resources": {"Reservations": {"NanoCPUs": cpus, "MemoryBytes": mem}}}}


NODES = [
    node("id-a", "alpha", role="manager", labels={"zone": "eu", "disk": "SSD"}, engine_labels={"gpu": "yes"}),
    node("id-b", "beta", labels={"zone": "us"}, arch="aarch64"),
    node("id-c", "gamma", os="windows"),
]


@pytest.mark.parametrize(("expr", "hosts"), [
    ("node.id==id-b", {"beta"}),
    ("node.id!=id-b", {"alpha", "gamma"}),
    ("node.hostname==ALPHA", {"alpha"}),  # values compare case-insensitively, as swarmkit's EqualFold
    ("node.role==manager", {"alpha"}),
    ("node.role!=manager", {"beta", "gamma"}),
    ("node.platform.os==windows", {"gamma"}),
    ("node.platform.arch==aarch64", {"beta"}),
    ("node.labels.zone==eu", {"alpha"}),
    ("node.labels.zone!=eu", {"beta", "gamma"}),  # a node without the label has ""
    ("node.labels.disk==ssd", {"alpha"}),
    ("node.labels.Zone==eu", set()),  # the label name is case-sensitive
    ("engine.labels.gpu==yes", {"alpha"}),
    ("engine.labels.gpu!=yes", {"beta", "gamma"}),
    ("NODE.LABELS.zone==us", {"beta"}),  # the prefix is not
])
def test_constraint_fields_and_operators(expr: str, hosts: set[str]) -> None:
    ns = build_node_infos(NODES, [])
    assert {n.hostname for n in ns if node_matches([parse_constraint(expr)], n)} == hosts
    dec = schedule(ns, [task("t", constraints=[expr])])
    if hosts:
        assert ns.nodes[dec.placed["t"]].hostname in hosts
    else:
        assert dec.failed["t"] == "no suitable node (scheduling constraints not satisfied on 3 nodes)"


def test_explanation_counts_each_filter_most_first_never_truncated() -> None:
    nodes = [node("n1", cpus=CPU, mem=GIB), node("n2", cpus=CPU, mem=GIB), node("n3", cpus=8 * CPU, mem=GIB,
                                                                                   labels={"x": "no"}),
             node("n4", state="down"), node("n5", avail="pause")]
    ns = build_node_infos(nodes, [])
    dec = schedule(ns, [task("t", cpus=2 * CPU, constraints=["node.labels.x==yes"])])
    # equal counts keep the pipeline's order (ready, resources, constraints …)
    assert dec.failed["t"] == ("no suitable node (2 nodes not available for new tasks; insufficient resources on "
                               "2 nodes; scheduling constraints not satisfied on 1 node)")
    # Swarm's example, exactly
    ns = build_node_infos(nodes[:3], [])
    assert schedule(ns, [task("u", cpus=2 * CPU, constraints=["node.labels.x==yes"])]).failed["u"] == \
        "no suitable node (insufficient resources on 2 nodes; scheduling constraints not satisfied on 1 node)"
    many = build_node_infos([node(f"n{i}", cpus=CPU) for i in range(300)], [])
    msg = schedule(many, [task("v", cpus=2 * CPU)]).failed["v"]
    assert msg == "no suitable node (insufficient resources on 300 nodes)"
    assert schedule(NodeSet(), [task("z")]).failed["z"] == "no suitable node (no nodes available)"


def test_max_replicas_per_node() -> None:
    ns = build_node_infos([node("n1"), node("n2")], [task("old", node_id="n1", state="running")])
    dec = schedule(ns, [task(f"t{i}", slot=i, max_replicas=2) for i in range(2, 6)])
    assert sorted(dec.placed.values()) == ["n1", "n2", "n2"]
    assert {dec.failed[t] for t in dec.failed} == {"no suitable node (max replicas per node limit exceed)"}
    assert ns.nodes["n1"].service_tasks["s1"] == 2 and ns.nodes["n2"].service_tasks["s1"] == 2
    # another service is not limited by s1's count
    assert schedule(ns, [task("o", svc="s2", max_replicas=1)]).placed


def test_reservations_count_against_capacity() -> None:
    ns = build_node_infos([node("n1", cpus=2 * CPU, mem=4 * GIB), node("n2", cpus=2 * CPU, mem=4 * GIB)],
                          [task("old", svc="other", node_id="n1", state="running", cpus=CPU + CPU // 2)])
    dec = schedule(ns, [task(f"t{i}", slot=i, cpus=CPU, mem=GIB) for i in range(1, 5)])
    # n1 has 0.5 CPU left: only n2 takes 1-CPU tasks, twice
    assert list(dec.placed.values()) == ["n2", "n2"]
    assert dec.failed == {"t3": "no suitable node (insufficient resources on 2 nodes)",
                          "t4": "no suitable node (insufficient resources on 2 nodes)"}
    assert ns.nodes["n2"].free_cpus == 0 and ns.nodes["n2"].free_memory == 2 * GIB
    # memory alone; and a reservation larger than every node waits with the message
    assert schedule(ns, [task("m", svc="s2", mem=3 * GIB)]).placed == {"m": "n1"}
    assert schedule(ns, [task("huge", svc="s3", mem=1 << 50)]).failed["huge"] == \
        "no suitable node (insufficient resources on 2 nodes)"
    # a task that ends gives its reservation back
    ns.observe_task(task("old", svc="other", node_id="n1", state="complete", cpus=CPU + CPU // 2))
    assert ns.nodes["n1"].free_cpus == 2 * CPU


def test_spread_preference_even_over_values_then_nodes() -> None:
    nodes = [node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}), node("a3", labels={"zone": "a"}),
             node("b1", labels={"zone": "b"}), node("x1"), node("x2", labels={"rack": "r"})]
    ns = build_node_infos(nodes, [])
    dec = schedule(ns, [task(f"t{i}", slot=i, prefs=["node.labels.zone"]) for i in range(1, 7)])
    per_node = {n.id: n.service_tasks.get("s1", 0) for n in ns}
    # three groups: zone a, zone b, and the nodes without the label (x1, x2): two tasks each
    assert per_node["a1"] + per_node["a2"] + per_node["a3"] == 2
    assert per_node["b1"] == 2
    assert per_node["x1"] == per_node["x2"] == 1
    assert not dec.failed
    # a value with no room left: the others take the rest, still evenly
    ns = build_node_infos(nodes, [])
    dec = schedule(ns, [task(f"t{i}", slot=i, prefs=["node.labels.zone"], max_replicas=1) for i in range(1, 8)])
    assert len(dec.placed) == 6 and list(dec.failed.values()) == \
        ["no suitable node (max replicas per node limit exceed)"]


def test_spread_counts_existing_tasks_and_two_levels() -> None:
    nodes = [node(f"{z}{r}{i}", labels={"zone": z, "rack": f"{z}{r}"}) for z in "ab" for r in "12" for i in "xy"]
    existing = [task(f"e{i}", slot=i, node_id="a1x", state="running") for i in range(1, 5)]
    ns = build_node_infos(nodes, existing)
    dec = schedule(ns, [task(f"t{i}", slot=10 + i, prefs=["node.labels.zone", "node.labels.rack"])
                        for i in range(1, 5)])
    # zone a already has 4: the 4 new ones go to zone b, two per rack, one per node
    assert sorted(dec.placed.values()) == ["b1x", "b1y", "b2x", "b2y"]


def test_spread_ranks_by_service_then_total() -> None:
    ns = build_node_infos([node("n1"), node("n2"), node("n3")],
                          [task("o1", svc="other", node_id="n1", state="running"),
                           task("o2", svc="other", node_id="n1", state="running")])
    dec = schedule(ns, [task(f"t{i}", slot=i) for i in range(1, 4)])
    assert sorted(dec.placed.values()) == ["n1", "n2", "n3"]
    assert schedule(ns, [task("t4", slot=4)]).placed["t4"] in ("n2", "n3")


def test_faulty_node_is_ranked_last_for_five_minutes() -> None:
    """Swarm's rule (SK: scheduler.go maxFailures, monitorFailures): a node where this service
    version failed 5 times within 5 minutes ranks below every other eligible node."""
    t0 = 1_000_000.0
    ns = build_node_infos([node("n1"), node("n2")], [task("busy", svc="other", node_id="n2", state="running")])
    running = task("f", node_id="n1", state="running")
    for i in range(MAX_FAILURES - 1):
        ns.observe_task({**running, "ID": f"f{i}"})
        ns.observe_task({**running, "ID": f"f{i}", "Status": {"State": "failed"}}, old=running, now=t0 + i)
    # 4 failures: n1 is still the better node (no task, against n2's one)
    assert schedule(ns, [task("p", slot=1)], now=t0 + 10).placed == {"p": "n1"}
    ns.observe_task({**task("p", slot=1, node_id="n1"), "Status": {"State": "rejected"}}, now=t0 + 11)
    assert ns.nodes["n1"].recent_failure_count(("s1", 1), t0 + 12) == MAX_FAILURES
    assert schedule(ns, [task("q", slot=1)], now=t0 + 12).placed == {"q": "n2"}
    # another version of the service, or another service, is not affected
    assert schedule(ns, [task("r", svc="s9", slot=1)], now=t0 + 12).placed == {"r": "n1"}
    # the failures age out after the monitor window
    ns.observe_task({**task("q", slot=1, node_id="n2"), "Status": {"State": "shutdown"}})
    assert schedule(ns, [task("s", slot=1, version=1)], now=t0 + MONITOR_FAILURES + 5).placed["s"] in ("n1", "n2")
    assert ns.nodes["n1"].faulty(("s1", 1), t0 + MONITOR_FAILURES + 5) == 0


def test_failures_seeded_from_the_store_history() -> None:
    """A new leader sees the failures of the last 5 minutes in the tasks the store keeps."""
    now = 1_800_000_000.0
    stamp = "2027-01-15T08:00:00Z"  # 1_800_000_000 - 0
    failed = [{**task(f"f{i}", node_id="n1", state="failed"),
               "Status": {"State": "failed", "Timestamp": stamp}} for i in range(MAX_FAILURES)]
    ns = NodeSet.from_objects([node("n1"), node("n2")], failed, now=now + 60)
    assert ns.nodes["n1"].recent_failure_count(("s1", 1), now + 60) == MAX_FAILURES
    ns = NodeSet.from_objects([node("n1"), node("n2")], failed, now=now + MONITOR_FAILURES + 1)
    assert ns.nodes["n1"].recent_failure_count(("s1", 1), now + MONITOR_FAILURES + 1) == 0


def test_index_follows_tasks_and_nodes_one_at_a_time() -> None:
    ns = NodeSet()
    # a task seen before its node is counted once the node arrives
    ns.observe_task(task("t1", node_id="n1", state="running", cpus=CPU))
    ns.set_node(node("n1", cpus=4 * CPU))
    assert ns.nodes["n1"].service_tasks == {"s1": 1} and ns.nodes["n1"].reserved_cpus == CPU
    # observing again, or moving on to running, changes nothing; placing it twice neither
    ns.observe_task(task("t1", node_id="n1", state="assigned", cpus=CPU))
    ns.place(task("t1", cpus=CPU), "n1")
    assert ns.nodes["n1"].total_tasks == 1
    # a label change keeps the counts
    ns.set_node(node("n1", cpus=4 * CPU, labels={"zone": "a"}))
    assert ns.nodes["n1"].labels == {"zone": "a"} and ns.nodes["n1"].total_tasks == 1
    # desired shutdown, terminal and deleted tasks are not counted
    ns.observe_task({**task("t1", node_id="n1", state="running"), "DesiredState": "shutdown"})
    assert ns.nodes["n1"].total_tasks == 0 and ns.nodes["n1"].reserved_cpus == 0
    ns.observe_task(task("t2", node_id="n1", state="running"))
    ns.forget_task("t2")
    assert ns.nodes["n1"].service_tasks == {}


def test_pipeline_counts_first_failure_only() -> None:
    pipe = Pipeline()
    pipe.set_task(task("t", cpus=CPU, constraints=["node.role==manager"]))
    ns = build_node_infos([node("n1", state="down", cpus=1), node("n2", cpus=1)], [])
    assert [pipe.process(n) for n in ns] == [False, False]
    assert pipe.explain() == "1 node not available for new tasks; insufficient resources on 1 node"
