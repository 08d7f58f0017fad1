"""The ``DNS`` part of each network entry in the dispatcher's ``assignments`` push (issue 9,
service names): the services attached to the network and its running tasks on every node, the
plain data the worker's embedded DNS table (``overlaynet.dns.records``) is filled from.

Real Store and real loopback sessions through the harness of ``test_dispatcher_networks``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher.assignments import (
    TaskIndex,
    dns_task_keys,
    fingerprint,
    node_networks,
    service_dns_keys,
)
from manager.store import WriteTx
from tests.unit.test_dispatcher import _env
from tests.unit.test_dispatcher_networks import NET, OTHER_NET, NetEnv, VtepNode, connect, network
from tests.waiting import wait_until


def service(sid: str, name: str, nets: dict[str, list[str]]) -> dict[str, Any]:
    """A stored service attached to ``{network ID: [alias, …]}``."""
    return {"ID": sid, "Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": 1}},
                                "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
                                                 "Networks": [{"Target": n, "Aliases": a} for n, a in nets.items()]}}}


def task(tid: str, node: str, sid: str, slot: int | None, addrs: dict[str, str], state: str = "running",
         desired: str = "running", hostname: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"Image": "busybox"}
    if hostname:
        spec["Hostname"] = hostname
    t: dict[str, Any] = {"ID": tid, "ServiceID": sid, "NodeID": node, "DesiredState": desired,
                         "Spec": {"ContainerSpec": spec}, "Status": {"State": state, "Message": ""},
                         "NetworksAttachments": [{"Network": {"ID": n}, "Addresses": [a]} for n, a in addrs.items()]}
    if slot is not None:
        t["Slot"] = slot
    return t


def rec(svc: str, slot: int | str, tid: str, ip: str, hostname: str | None = None) -> dict[str, Any]:
    return {"Service": svc, "Slot": slot, "ID": tid, "IP": ip, "Hostname": hostname}


def svc_rec(name: str, aliases: list[str] | None = None) -> dict[str, Any]:
    return {"Name": name, "Aliases": aliases or [], "VIP": None}


class DnsEnv(NetEnv):
    async def create(self, table: str, obj: dict[str, Any]) -> None:
        await self.store.update(lambda tx: tx.create(table, obj))

    async def modify(self, table: str, oid: str, fn: Callable[[dict[str, Any]], None]) -> None:
        def u(tx: WriteTx) -> None:
            o = tx.get(table, oid)
            assert o is not None
            fn(o)
            tx.update(table, o)

        await self.store.update(u)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[DnsEnv]:
    async for e in _env(tmp_path, 5.0):
        yield DnsEnv(e.store, e.d, e.port)


def dns(n: VtepNode, net_id: str = NET) -> dict[str, Any] | None:
    """The DNS part of ``net_id`` in ``n``'s last push (None: not listed, or no push yet)."""
    if not n.assignments:
        return None
    e = n.assignments[-1].get("networks", {}).get(net_id)
    return None if e is None else dict(e["DNS"])


def test_records_pure() -> None:
    net = network()
    tasks = [task("t2", "n2", "s1", 2, {NET: "10.0.1.8/24"}),
             task("t1", "n1", "s1", 1, {NET: "10.0.1.7/24"}, hostname="web-one"),
             task("g1", "n2", "s2", None, {NET: "10.0.1.20/24"}),  # global: the node ID as slot
             task("t3", "n1", "s1", 3, {NET: "10.0.1.9/24"}, state="assigned"),  # not running yet
             task("t4", "n1", "s1", 4, {NET: "10.0.1.10/24"}, desired="shutdown"),  # being stopped
             task("t5", "n1", "gone", 1, {NET: "10.0.1.11/24"})]  # its service was removed
    services = [service("s2", "api", {NET: []}), service("s1", "web", {NET: ["www", "front"]}),
                service("s3", "db", {OTHER_NET: ["x"]})]
    index = TaskIndex(tasks, services)
    got = node_networks("n1", index.tasks_of("n1"), index, lambda i: net if i == NET else None, lambda n: "10.99.0.1")
    assert got[NET]["DNS"] == {
        "Services": [svc_rec("api"), svc_rec("web", ["www", "front"])],
        "Tasks": [rec("api", "n2", "g1", "10.0.1.20"), rec("web", 1, "t1", "10.0.1.7", "web-one"),
                  rec("web", 2, "t2", "10.0.1.8")]}
    assert dns_task_keys(tasks[3]) == set() and dns_task_keys(None) == set()
    assert service_dns_keys(services[1]) == {(NET, "web", ("www", "front"), None)}
    # the fingerprint covers the records
    node = {"ID": "n1", "Spec": {}}
    e = got[NET]
    fewer = {**e, "DNS": {**e["DNS"], "Tasks": e["DNS"]["Tasks"][1:]}}
    assert fingerprint(node, [], {NET: e}) != fingerprint(node, [], {NET: fewer})


async def two_nodes(env: DnsEnv) -> tuple[VtepNode, VtepNode]:
    for nid in ("n1", "n2"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.create("services", service("s1", "web", {NET: []}))
    await env.create("tasks", task("w1", "n1", "s1", 1, {NET: "10.0.1.5/24"}, hostname="web-host"))
    await env.create("tasks", task("w2", "n2", "s1", 2, {NET: "10.0.1.7/24"}))
    n1, n2 = await connect(env, "n1", "n2")
    want = {"Services": [svc_rec("web")],
            "Tasks": [rec("web", 1, "w1", "10.0.1.5", "web-host"), rec("web", 2, "w2", "10.0.1.7")]}
    for n in (n1, n2):
        await wait_until(lambda n=n: dns(n) == want, 3, f"{n.node_id}'s DNS records")  # type: ignore[misc]
    return n1, n2


async def test_both_nodes_get_the_service_and_both_running_tasks(env: DnsEnv) -> None:
    n1, n2 = await two_nodes(env)
    assert dns(n1) == dns(n2)


async def test_a_task_stopping_reaches_both_nodes(env: DnsEnv) -> None:
    n1, n2 = await two_nodes(env)

    def ids(n: VtepNode) -> list[str] | None:
        d = dns(n)
        return None if d is None else [t["ID"] for t in d["Tasks"]]

    # a third task starts on n2: both nodes hear of it once it runs (not while assigned)
    await env.create("tasks", task("w3", "n2", "s1", 3, {NET: "10.0.1.9/24"}, state="assigned"))
    await wait_until(lambda: ids(n1) == ["w1", "w2"] and n1.peers() is not None and len(n1.peers() or []) == 2, 1,
                     "w3 a peer of n1 but not yet a record")
    await n2.status([{"TaskID": "w3", "Status": {"State": "running"}}])
    for n in (n1, n2):
        await wait_until(lambda n=n: ids(n) == ["w1", "w2", "w3"], 1, f"w3 in {n.node_id}'s records")  # type: ignore[misc]
    # w2 stops (its worker reports it): both nodes get a push without it
    await n2.status([{"TaskID": "w2", "Status": {"State": "shutdown"}}])
    for n in (n1, n2):
        await wait_until(lambda n=n: ids(n) == ["w1", "w3"], 1, f"w2 gone from {n.node_id}'s records")  # type: ignore[misc]
    # the desired state leaving running drops a task at once (before its worker reports)
    await env.modify("tasks", "w1", lambda t: t.__setitem__("DesiredState", "shutdown"))
    await wait_until(lambda: ids(n2) == ["w3"], 1, "w1 gone from n2's records")
    await wait_until(lambda: ids(n1) == ["w3"], 1, "w1 gone from n1's records")
    # w3 stopping: n2 leaves the network, n1 (whose w1 is not terminal yet) gets records without it
    await n2.status([{"TaskID": "w3", "Status": {"State": "shutdown"}}])
    await wait_until(lambda: n2.last()["networks"] == {}, 1, "n2 off the network")
    await wait_until(lambda: ids(n1) == [], 1, "w3 gone from n1's records")


async def test_aliases_and_renames_push(env: DnsEnv) -> None:
    n1, n2 = await two_nodes(env)

    def set_aliases(aliases: list[str]) -> Callable[[dict[str, Any]], None]:
        def fn(s: dict[str, Any]) -> None:
            s["Spec"]["TaskTemplate"]["Networks"] = [{"Target": NET, "Aliases": aliases}]
        return fn

    await env.modify("services", "s1", set_aliases(["www", "front"]))
    for n in (n1, n2):
        await wait_until(lambda n=n: (d := dns(n)) is not None and d["Services"] == [svc_rec("web", ["www", "front"])],  # type: ignore[misc]
                         1, f"the aliases in {n.node_id}'s records")
    await env.modify("services", "s1", lambda s: s["Spec"].__setitem__("Name", "site"))
    for n in (n1, n2):
        await wait_until(lambda n=n: (d := dns(n)) is not None and d["Services"] == [svc_rec("site", ["www", "front"])]  # type: ignore[misc]
                         and {t["Service"] for t in d["Tasks"]} == {"site"}, 1, f"the rename on {n.node_id}")
    # a service change that leaves names and aliases alone does not push
    pushes = len(n1.assignments), len(n2.assignments)
    await env.modify("services", "s1", lambda s: s["Spec"]["Mode"]["Replicated"].__setitem__("Replicas", 5))
    await env.create("services", service("s9", "elsewhere", {}))
    await env.modify("tasks", "w1", lambda t: t.__setitem__("Status", {"State": "running", "Message": "still"}))
    # then one that does: each node gets exactly one more push, with only that change
    await env.modify("services", "s1", set_aliases(["www"]))
    for n in (n1, n2):
        await wait_until(lambda n=n: (d := dns(n)) is not None and d["Services"] == [svc_rec("site", ["www"])],  # type: ignore[misc]
                         1, f"the new aliases on {n.node_id}")
    assert (len(n1.assignments), len(n2.assignments)) == (pushes[0] + 1, pushes[1] + 1)


async def test_a_second_service_appears_and_leaves(env: DnsEnv) -> None:
    n1, n2 = await two_nodes(env)
    await env.create("services", service("s2", "api", {NET: ["backend"]}))
    for n in (n1, n2):
        await wait_until(lambda n=n: (d := dns(n)) is not None  # type: ignore[misc]
                         and d["Services"] == [svc_rec("api", ["backend"]), svc_rec("web")], 1,
                         f"api in {n.node_id}'s records")
    await env.create("tasks", task("a1", "n2", "s2", 1, {NET: "10.0.1.20/24"}))
    await wait_until(lambda: (d := dns(n1)) is not None and d["Tasks"][0] == rec("api", 1, "a1", "10.0.1.20"), 1,
                     "api's task in n1's records")
    await env.store.update(lambda tx: tx.delete("services", "s2"))
    for n in (n1, n2):
        await wait_until(lambda n=n: (d := dns(n)) is not None and d["Services"] == [svc_rec("web")]  # type: ignore[misc]
                         and [t["ID"] for t in d["Tasks"]] == ["w1", "w2"], 1, f"api gone from {n.node_id}")


async def test_a_node_without_overlay_tasks_gets_no_networks(env: DnsEnv) -> None:
    for nid in ("n1", "n3"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.create("services", service("s1", "web", {NET: []}))
    await env.create("tasks", task("w1", "n1", "s1", 1, {NET: "10.0.1.5/24"}))
    await env.add_task("c1", "n3")
    n1, n3 = await connect(env, "n1", "n3")
    await wait_until(lambda: dns(n1) is not None, 3, "n1's records")
    await wait_until(lambda: n3.assignments, 3, "n3's push")
    assert n3.last()["networks"] == {}
