"""Tests of manager.scheduler: the pure filter/spread core and the loop on a real store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.scheduler import NodeSet, Scheduler, build_node_infos, host_ports, schedule
from manager.store import WriteTx
from tests.stores import open_store
from tests.waiting import wait_until


def creating(table: str, *objs: dict[str, Any]) -> Callable[[WriteTx], None]:
    """A store transaction that creates ``objs`` in ``table``."""
    def fn(tx: WriteTx) -> None:
        for o in objs:
            tx.create(table, o)
    return fn


def node(id: str, host: str, state: str = "ready", avail: str = "active", role: str = "worker",
         labels: dict[str, str] | None = None, cpus: int = 0, mem: int = 0) -> dict[str, Any]:
    return {"ID": id, "Spec": {"Role": role, "Availability": avail, "Labels": labels or {}},
            "Description": {"Hostname": host, "Resources": {"NanoCPUs": cpus, "MemoryBytes": mem}},
            "Status": {"State": state}}


def task(id: str, svc: str = "s1", slot: int = 1, constraints: list[str] | None = None,
         reserve_mem: int = 0, node_id: str = "", state: str = "pending") -> dict[str, Any]:
    return {"ID": id, "ServiceID": svc, "Slot": slot, "NodeID": node_id, "DesiredState": "running",
            "Status": {"State": state},
            "Spec": {"Placement": {"Constraints": constraints or []},
                     "Resources": {"Reservations": {"MemoryBytes": reserve_mem}}}}


def test_spread_one_per_node_then_total() -> None:
    nodes = [node("n1", "h1"), node("n2", "h2"), node("n3", "h3")]
    busy = [task("old1", svc="other", node_id="n1", state="running"), task("old2", svc="other", node_id="n1", state="running")]
    infos = build_node_infos(nodes, busy)
    dec = schedule(infos, [task(f"t{i}", slot=i) for i in range(1, 4)])
    assert sorted(dec.placed.values()) == ["n1", "n2", "n3"]
    # a fourth task of the service goes to a node with fewest tasks in total (not n1)
    dec2 = schedule(infos, [task("t4", slot=4)])
    assert dec2.placed["t4"] in ("n2", "n3")


def test_filters_and_explanations() -> None:
    nodes = [node("n1", "h1", state="down"), node("n2", "h2", avail="drain"),
             node("n3", "h3", labels={"disk": "ssd"}, mem=100), node("n4", "h4", role="manager")]
    infos = build_node_infos(nodes, [])
    dec = schedule(infos, [
        task("a", constraints=["node.labels.disk==ssd"]),
        task("b", constraints=["node.hostname==h9"]),
        task("c", reserve_mem=1000, constraints=["node.hostname==h3"]),
        task("d", constraints=["node.role==manager"]),
        task("e", constraints=["node.labels.disk!=ssd", "node.role!=manager"]),
    ])
    assert dec.placed == {"a": "n3", "d": "n4"}
    assert dec.failed["b"] == "no suitable node (2 nodes not available for new tasks; scheduling constraints not satisfied on 2 nodes)"
    assert "insufficient resources on 1 node" in dec.failed["c"]
    assert dec.failed["e"].startswith("no suitable node (")
    assert schedule(NodeSet(), [task("z")]).failed["z"] == "no suitable node (no nodes available)"


def with_ports(t: dict[str, Any], *ports: tuple[str, int, str]) -> dict[str, Any]:
    """``t`` with an Endpoint publishing ``(mode, published port, protocol)`` ports."""
    t["Endpoint"] = {"Ports": [{"PublishMode": m, "PublishedPort": p, "TargetPort": 80, "Protocol": proto}
                               for m, p, proto in ports]}
    return t


def test_host_mode_ports_once_per_node() -> None:
    assert host_ports(with_ports(task("x"), ("host", 8080, "tcp"), ("ingress", 9090, "tcp"), ("host", 0, "tcp"))) \
        == {("tcp", 8080)}
    nodes = [node("n1", "h1"), node("n2", "h2"), node("n3", "h3")]
    # n1 runs a task holding 8080/tcp in host mode; a stopped one on n2 holds nothing
    busy = [with_ports(task("old", svc="other", node_id="n1", state="running"), ("host", 8080, "tcp")),
            with_ports(task("dead", svc="other", node_id="n2", state="failed"), ("host", 8080, "tcp"))]
    infos = build_node_infos(nodes, busy)
    pending = [with_ports(task(f"t{i}", slot=i), ("host", 8080, "tcp")) for i in range(1, 4)]
    dec = schedule(infos, pending)
    # two nodes are free: two tasks placed, one per node; the third waits, saying why
    assert sorted(dec.placed.values()) == ["n2", "n3"]
    assert dec.failed == {"t3": "no suitable node (host-mode port already in use on 3 nodes)"}
    # another protocol, or an ingress-mode port, is another matter
    dec = schedule(infos, [with_ports(task("u", slot=9), ("host", 8080, "udp")),
                           with_ports(task("i", svc="s2", slot=1), ("ingress", 8080, "tcp"))])
    assert set(dec.failed) == set()
    # with other filters failing too, each reason is counted once per node
    infos = build_node_infos([node("n1", "h1"), node("n2", "h2", state="down")], busy)
    dec = schedule(infos, [with_ports(task("z"), ("host", 8080, "tcp"))])
    assert dec.failed["z"] == ("no suitable node (1 node not available for new tasks; "
                               "host-mode port already in use on 1 node)")


async def test_loop_assigns_with_bridge_addresses(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(creating("nodes", *[node(f"n{i}", f"h{i}") for i in (1, 2, 3)]))
    sched = Scheduler(store, debounce=0.01)
    runner = asyncio.create_task(sched.run())
    try:
        await store.update(creating("tasks", *[task(f"t{i}", slot=i) for i in (1, 2, 3)]))
        def all_assigned() -> list[dict[str, Any]] | None:
            ts = store.view().list("tasks")
            return ts if all(t["Status"]["State"] == "assigned" for t in ts) else None

        ts = await wait_until(all_assigned, what="the 3 tasks assigned")
        nodes = {n["ID"]: n for n in store.view().list("nodes")}
        assert sorted(n["ShoalBridge"]["Subnet"] for n in nodes.values()) == ["10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24"]
        assert sorted(t["NodeID"] for t in ts) == ["n1", "n2", "n3"]
        for t in ts:
            att = t["NetworksAttachments"][0]
            sub = nodes[t["NodeID"]]["ShoalBridge"]
            assert att["Network"]["IPAMOptions"]["Configs"] == [{"Subnet": sub["Subnet"], "Gateway": sub["Gateway"]}]
            assert att["Addresses"][0].startswith(sub["Subnet"].rsplit(".", 1)[0] + ".")
            assert att["Addresses"][0].endswith("/24")
        # an unplaceable task gets Swarm's message and stays pending
        await store.update(lambda tx: tx.create("tasks", task("bad", constraints=["node.hostname==nowhere"])))
        await wait_until(lambda: (store.view().get("tasks", "bad") or {}).get("Status", {}).get("Err"),
                         what="the unplaceable task's error")
        bad = store.view().get("tasks", "bad")
        assert bad is not None and bad["Status"]["State"] == "pending"
        assert bad["Status"]["Err"] == "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
