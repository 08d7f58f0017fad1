"""Property tests (hypothesis) of the pure scheduler: every placement respects the constraints,
readiness, reservations and max replicas per node; a task is left pending only when no node can
take it; spread is even (per preference value, then per node: counts differ by at most one when
the nodes allow it); image platforms, host-mode ports, ``node.ip`` and engine-label constraints
hold too, a faulty node is used only when no healthy node of its branch can take the task, and
new tasks fill the emptiest preference branches first; and the index kept one event at a time
equals the index built at once."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from manager.scheduler import NodeSet, Pipeline, build_node_infos, node_matches, parse_constraints, schedule
from manager.scheduler.filters import platform_matches
from manager.scheduler.spread import descriptor_value
from tests.unit.test_scheduler_filters import CPU, GIB, node, task

CONSTRAINTS = ["node.role==worker", "node.labels.zone!=c", "node.labels.rack==r1", "node.platform.os==linux",
               "node.labels.zone==a"]
PREFS = [[], ["node.labels.zone"], ["node.labels.zone", "node.labels.rack"]]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes (labels, roles, states, capacities) and the running tasks of other services."""
    n = draw(st.integers(1, 10))
    nodes = []
    for i in range(n):
        labels = {}
        zone = draw(st.sampled_from(["a", "b", "c", None]))
        if zone:
            labels["zone"] = zone
        if draw(st.booleans()):
            labels["rack"] = draw(st.sampled_from(["r1", "r2"]))
        nodes.append(node(f"n{i}", state=draw(st.sampled_from(["ready"] * 5 + ["down"])),
                          avail=draw(st.sampled_from(["active"] * 5 + ["pause", "drain"])),
                          role=draw(st.sampled_from(["worker", "worker", "manager"])), labels=labels,
                          cpus=draw(st.sampled_from([0, CPU, 2 * CPU, 4 * CPU])),
                          mem=draw(st.sampled_from([0, GIB, 2 * GIB]))))
    others = []
    for j in range(draw(st.integers(0, 8))):
        on = draw(st.integers(0, n - 1))
        others.append(task(f"o{j}", svc="other", slot=j + 1, node_id=f"n{on}", state="running",
                           cpus=draw(st.sampled_from([0, CPU // 2])), mem=draw(st.sampled_from([0, GIB // 2]))))
    return nodes, others


@st.composite
def services(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The pending tasks of one service version."""
    constraints = draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2, unique=True))
    prefs = draw(st.sampled_from(PREFS))
    max_replicas = draw(st.sampled_from([0, 0, 1, 2, 3]))
    cpus = draw(st.sampled_from([0, 0, CPU // 2, CPU]))
    mem = draw(st.sampled_from([0, 0, GIB // 2]))
    return [task(f"t{i}", slot=i, constraints=constraints, prefs=prefs, max_replicas=max_replicas, cpus=cpus,
                 mem=mem) for i in range(1, draw(st.integers(1, 20)) + 1)]


@settings(max_examples=300, deadline=None)
@given(clusters(), services())
def test_placements_respect_every_filter_and_leave_none_pending_needlessly(
        cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]], pending: list[dict[str, Any]]) -> None:
    nodes, others = cluster
    ns = build_node_infos(nodes, others)
    before = {n.id: (n.reserved_cpus, n.reserved_memory) for n in ns}
    dec = schedule(ns, pending)
    t0 = pending[0]
    constraints = parse_constraints(t0)
    max_replicas = t0["Spec"]["Placement"].get("MaxReplicas", 0)
    assert set(dec.placed) | set(dec.failed) == {t["ID"] for t in pending}
    assert not set(dec.placed) & set(dec.failed)
    per_node = Counter(dec.placed.values())
    for nid, count in per_node.items():
        info = ns.nodes[nid]
        assert info.state == "ready" and info.availability == "active"
        assert node_matches(constraints, info)
        if max_replicas:
            assert info.service_tasks["s1"] <= max_replicas
        cpus, mem = t0["Spec"]["Resources"]["Reservations"].values()
        # the new tasks fit in what the node had free (its other tasks may already exceed it)
        if info.nano_cpus and cpus:
            assert before[nid][0] + count * cpus <= info.nano_cpus
        if info.memory_bytes and mem:
            assert before[nid][1] + count * mem <= info.memory_bytes
    if dec.failed:
        # pending only when no node can take one more task, and the message says why
        pipe = Pipeline()
        pipe.set_task(t0)
        assert not any(pipe.check(n) for n in ns)
        msg = next(iter(dec.failed.values()))
        assert msg.startswith("no suitable node (") and msg.endswith(")")
        counted = sum(int(x) for x in re.findall(r"(\d+) nodes?", msg))
        assert counted <= len(nodes) and (counted == len(nodes) or "max replicas" in msg)


@settings(max_examples=300, deadline=None)
@given(clusters(), st.sampled_from(PREFS), st.lists(st.sampled_from(CONSTRAINTS[:4]), max_size=1),
       st.integers(1, 30))
def test_spread_is_even_when_the_nodes_allow_it(cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]],
                                                prefs: list[str], constraints: list[str], n: int) -> None:
    nodes, others = cluster
    ns = build_node_infos(nodes, others)
    pending = [task(f"t{i}", slot=i, prefs=prefs, constraints=constraints) for i in range(1, n + 1)]
    pipe = Pipeline()
    pipe.set_task(pending[0])
    eligible = [info for info in ns if pipe.check(info)]
    dec = schedule(ns, pending)
    if not eligible:
        assert len(dec.failed) == n
        return
    assert not dec.failed  # no reservations or max replicas: every task finds a node
    # level by level: among the branches (preference values) holding eligible nodes, the counts
    # of the service differ by at most one; then among the nodes of each leaf
    groups: dict[tuple[str, ...], list[int]] = {}
    for info in eligible:
        path = tuple(descriptor_value(d, info) for d in prefs)
        groups.setdefault(path, []).append(info.service_tasks.get("s1", 0))
    for depth in range(len(prefs) + 1):
        level: dict[tuple[str, ...], dict[str, int]] = {}
        for path, counts in groups.items():
            if depth < len(prefs):
                siblings = level.setdefault(path[:depth], {})
                siblings[path[depth]] = siblings.get(path[depth], 0) + sum(counts)
        for siblings in level.values():
            assert max(siblings.values()) - min(siblings.values()) <= 1, (depth, siblings)
    for counts in groups.values():
        assert max(counts) - min(counts) <= 1, groups


EVENTS = st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["", "n0", "n1", "n2"]),
                            st.sampled_from(["pending", "assigned", "running", "complete", "failed", "shutdown"]),
                            st.sampled_from(["running", "running", "shutdown", "remove"]),
                            st.sampled_from(["s1", "s2"]), st.booleans()), max_size=60)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_index_kept_from_events_equals_index_built_at_once(events: list[tuple[Any, ...]]) -> None:
    nodes = [node(f"n{i}", cpus=4 * CPU, mem=4 * GIB) for i in range(3)]
    live = NodeSet.from_objects(nodes[:1], [])
    latest: dict[str, dict[str, Any]] = {}
    for k, (i, nid, state, desired, svc, delete) in enumerate(events):
        tid = f"t{i}"
        if k == len(events) // 2:  # nodes joining half way through
            for n in nodes[1:]:
                live.set_node(n)
        if delete and tid in latest:
            del latest[tid]
            live.forget_task(tid)
            continue
        t = {**task(tid, svc=svc, node_id=nid, state=state, cpus=CPU // 4, mem=GIB // 4), "DesiredState": desired}
        t["Endpoint"] = {"Ports": [{"PublishMode": "host", "PublishedPort": 8000 + i, "Protocol": "tcp"}]}
        latest[tid] = t
        live.observe_task(t)
    if len(events) <= 1:
        for n in nodes[1:]:
            live.set_node(n)
    built = NodeSet.from_objects(nodes, latest.values())
    for nid in built.nodes:
        a, b = live.nodes[nid], built.nodes[nid]
        assert (a.service_tasks, a.total_tasks, a.reserved_cpus, a.reserved_memory, a.host_ports) == \
            (b.service_tasks, b.total_tasks, b.reserved_cpus, b.reserved_memory, b.host_ports)


ARCHES = ["x86_64", "aarch64", "s390x"]
IMAGE_PLATFORMS = [[], [("linux", "amd64")], [("linux", "arm64"), ("linux", "amd64")], [("", "s390x")]]


@st.composite
def mixed_clusters(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`clusters` whose nodes also differ in architecture and address, and which already
    run tasks of the service under test (s1) holding a host port, and failures of it."""
    nodes, others = draw(clusters())
    for i, n in enumerate(nodes):
        n["Description"]["Platform"]["Architecture"] = draw(st.sampled_from(ARCHES))
        n["Status"]["Addr"] = f"10.0.{i % 2}.{i + 1}"
    for j in range(draw(st.integers(0, 6))):
        on = draw(st.integers(0, len(nodes) - 1))
        t = task(f"e{j}", slot=100 + j, node_id=f"n{on}", state="running")
        if draw(st.booleans()):
            t["Endpoint"] = {"Ports": [{"PublishMode": "host", "PublishedPort": 8080, "Protocol": "tcp"}]}
        others.append(t)
    return nodes, others


@settings(max_examples=300, deadline=None)
@given(mixed_clusters(), st.sampled_from(IMAGE_PLATFORMS), st.booleans(),
       st.lists(st.sampled_from([*CONSTRAINTS, "node.ip==10.0.0.0/24", "engine.labels.x!=y"]), max_size=2,
                unique=True),
       st.sampled_from(PREFS), st.sampled_from([0, 1, 2]), st.lists(st.integers(0, 9), max_size=8),
       st.integers(1, 15))
def test_every_filter_holds_and_faulty_nodes_come_last(
        cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]], platforms: list[tuple[str, str]],
        host_port: bool, constraints: list[str], prefs: list[str], max_replicas: int, faulty: list[int],
        n: int) -> None:
    """Platforms, host ports, ``node.ip`` and engine-label constraints hold on every placement;
    a node where the service failed 5 times in 5 minutes gets a task only when no other node can
    take one; and the new tasks fill the emptiest branches first (a branch that received a task
    ends at most one above any sibling)."""
    nodes, others = cluster
    now = 1_800_000_000.0
    ns = build_node_infos(nodes, others)
    for i in set(faulty):
        if f"n{i}" in ns.nodes:
            for k in range(5):
                ns.task_failed({"ServiceID": "s1", "SpecVersion": {"Index": 1}, "NodeID": f"n{i}"}, now - k)
    before = {info.id: info.service_tasks.get("s1", 0) for info in ns}
    pending = []
    for i in range(1, n + 1):
        t = task(f"t{i}", slot=i, constraints=constraints, prefs=prefs, max_replicas=max_replicas)
        if platforms:
            t["Spec"]["Placement"]["Platforms"] = [{"OS": o, "Architecture": a} for o, a in platforms]
        if host_port:
            t["Endpoint"] = {"Ports": [{"PublishMode": "host", "PublishedPort": 8080, "Protocol": "tcp"}]}
        pending.append(t)
    dec = schedule(ns, pending, now=now)
    assert set(dec.placed) | set(dec.failed) == {t["ID"] for t in pending}
    parsed = parse_constraints(pending[0])
    per_node = Counter(dec.placed.values())
    for nid, count in per_node.items():
        info = ns.nodes[nid]
        assert node_matches(parsed, info)
        if platforms:
            assert any(platform_matches({"OS": o, "Architecture": a}, info.os, info.arch) for o, a in platforms)
        if host_port:
            assert count == 1 and info.host_ports[("tcp", 8080)] == 1
        if max_replicas:
            assert info.service_tasks["s1"] <= max_replicas
    pipe = Pipeline()
    pipe.set_task(pending[0])

    def path(info: Any) -> tuple[str, ...]:
        return tuple(descriptor_value(d, info) for d in prefs)

    for nid in per_node:
        used = ns.nodes[nid]
        if used.faulty(("s1", 1), now):
            # spread picks the branch first (as swarmkit); within it, a faulty node was used only
            # because no healthy node of the branch could take a task (eligibility only shrinks)
            assert not any(pipe.check(info) for info in ns
                           if path(info) == path(used) and not info.faulty(("s1", 1), now))
    if dec.failed:
        assert not any(pipe.check(info) for info in ns)
    if platforms or max_replicas or host_port or constraints:
        return
    # no filter beyond readiness: eligibility is fixed, and the new tasks fill the emptiest
    # branches first at each level (a branch that got a task ends at most one above any sibling
    # that has an eligible node)
    for depth in range(len(prefs)):
        siblings: dict[tuple[str, ...], dict[str, list[int]]] = {}
        for info in ns:
            p = path(info)
            b = siblings.setdefault(p[:depth], {}).setdefault(p[depth], [0, 0, 0])
            b[0] += per_node.get(info.id, 0)
            b[1] += before[info.id] + per_node.get(info.id, 0)
            b[2] += pipe.check(info)
        for branches in siblings.values():
            floor = min((total for _, total, room in branches.values() if room), default=0)
            for got, total, _ in branches.values():
                if got:
                    assert total <= floor + 1, (depth, branches)
