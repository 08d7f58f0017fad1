"""Service VIPs and the routing mesh in the dispatcher's ``assignments`` push (issue 9, contract
§4): the DNS services carry their VIP (null for dnsrr), the ingress network is listed for every
node with a load-balancer address on it with the other nodes' addresses among its peers, the
``ingress`` key lists each ingress-mode published port with the ingress IPs of its running tasks,
and ``data_path_port`` is the cluster's. Changes reach every node within a second.

Pure parts on hand-made objects; the pushes through a real Store and real loopback sessions (the
harness of ``test_dispatcher_networks``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher.assignments import (
    TaskIndex,
    ingress_port_keys,
    node_ingress,
    node_lb_addresses,
    node_networks,
    service_vips,
)
from manager.store import WriteTx
from tests.unit.test_dispatcher import _env
from tests.unit.test_dispatcher_dns import service, svc_rec, task
from tests.unit.test_dispatcher_networks import NET, VTEP, NetEnv, VtepNode, connect, network
from tests.waiting import wait_until

ING = "ingaaaaaaaaaaaaaaaaaaaaaa"


def ingress_net() -> dict[str, Any]:
    n = network(ING, "10.0.0.0/24", "10.0.0.1", "4096")
    n["Spec"]["Name"] = "ingress"
    n["Spec"]["Ingress"] = True
    return n


def lb(addr: str) -> list[dict[str, Any]]:
    return [{"Network": ingress_net(), "Addresses": [addr]}]


def published(sid: str, name: str, nets: dict[str, list[str]], port: int = 8080, target: int = 80,
              vips: dict[str, str] | None = None, mode: str = "vip") -> dict[str, Any]:
    s = service(sid, name, nets)
    s["Endpoint"] = {"Spec": {"Mode": mode}, "Ports": [
        {"Protocol": "tcp", "TargetPort": target, "PublishedPort": port, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 22, "PublishedPort": 2222, "PublishMode": "host"}],
        "VirtualIPs": [{"NetworkID": n, "Addr": a} for n, a in (vips or {}).items()]}
    return s


def test_vips_ports_and_lb_keys() -> None:
    s = published("s1", "web", {NET: []}, vips={NET: "10.0.1.2/24", ING: "10.0.0.2/24"})
    assert service_vips(s) == {NET: "10.0.1.2", ING: "10.0.0.2"}
    assert service_vips({**s, "Endpoint": {**s["Endpoint"], "Spec": {"Mode": "dnsrr"}}}) == {}
    assert ingress_port_keys(s) == {("s1", "web", "tcp", 8080, 80)}  # host-mode ports are not the mesh's
    assert node_lb_addresses({"Attachments": lb("10.0.0.5/24")}) == {(ING, "10.0.0.5/24")}
    assert node_lb_addresses(None) == set() and ingress_port_keys(None) == set()


def test_push_parts_pure() -> None:
    nodes = {"n1": {"ID": "n1", "Attachments": lb("10.0.0.5/24")},
             "n2": {"ID": "n2", "Attachments": lb("10.0.0.6/24")},
             "n3": {"ID": "n3"}}  # no address yet: no ingress for it
    services = [published("s1", "web", {NET: ["www"]}, vips={NET: "10.0.1.2/24", ING: "10.0.0.2/24"}),
                published("s2", "api", {NET: []}, port=9090, mode="dnsrr"),
                service("s3", "db", {NET: []})]
    tasks = [task("t1", "n2", "s1", 1, {NET: "10.0.1.7/24", ING: "10.0.0.9/24"}),
             task("t2", "n2", "s1", 2, {NET: "10.0.1.8/24", ING: "10.0.0.7/24"}),
             task("t3", "n2", "s1", 3, {NET: "10.0.1.9/24", ING: "10.0.0.8/24"}, state="starting")]
    index = TaskIndex(tasks, services, nodes.values(), ING)
    nets = {NET: network(), ING: ingress_net()}
    got = node_networks("n1", index.tasks_of("n1"), index, nets.get, VTEP.get, nodes["n1"])
    # n1 runs no task, but it is on the mesh: the ingress network, with n2's tasks and LB as peers
    assert list(got) == [ING]
    assert [(p["IP"], p["VTEP"]) for p in got[ING]["Peers"]] == [
        ("10.0.0.6", VTEP["n2"]), ("10.0.0.7", VTEP["n2"]), ("10.0.0.8", VTEP["n2"]), ("10.0.0.9", VTEP["n2"])]
    assert got[ING]["DNS"] == {"Services": [], "Tasks": []}
    # n2 runs the tasks: the overlay network with the VIPs in its DNS, and the ingress one with n1's LB
    got2 = node_networks("n2", index.tasks_of("n2"), index, nets.get, VTEP.get, nodes["n2"])
    assert got2[NET]["DNS"]["Services"] == [{"Name": "api", "Aliases": [], "VIP": None},
                                           {"Name": "db", "Aliases": [], "VIP": None},
                                           {"Name": "web", "Aliases": ["www"], "VIP": "10.0.1.2"}]
    assert [p["IP"] for p in got2[ING]["Peers"]] == ["10.0.0.5"]
    # n3 has no address on the ingress network: not listed, no ingress key
    assert node_networks("n3", [], index, nets.get, VTEP.get, nodes["n3"]) == {}
    assert node_ingress(nodes["n3"], index) is None
    assert node_ingress(nodes["n1"], TaskIndex(tasks, services, nodes.values(), None)) is None
    ing = node_ingress(nodes["n1"], index)
    assert ing == {"NetworkID": ING, "Address": "10.0.0.5/24", "Ports": [
        {"ServiceID": "s1", "Service": "web", "Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80,
         "Endpoints": ["10.0.0.7", "10.0.0.9"]},
        {"ServiceID": "s2", "Service": "api", "Protocol": "tcp", "PublishedPort": 9090, "TargetPort": 80,
         "Endpoints": []}]}


class IngEnv(NetEnv):
    async def modify(self, table: str, oid: str, fn: Callable[[dict[str, Any]], None]) -> None:
        def u(tx: WriteTx) -> None:
            o = tx.get(table, oid)
            assert o is not None
            fn(o)
            o.pop("Version", None)
            tx.update(table, o)

        await self.store.update(u)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[IngEnv]:
    async for e in _env(tmp_path, 5.0):
        yield IngEnv(e.store, e.d, e.port)


def ingress(n: VtepNode) -> dict[str, Any] | None:
    return n.assignments[-1].get("ingress") if n.assignments else None


def endpoints(n: VtepNode) -> list[str] | None:
    i = ingress(n)
    return None if i is None else i["Ports"][0]["Endpoints"]


async def test_the_mesh_reaches_every_node_within_a_second(env: IngEnv) -> None:
    await env.store.update(lambda tx: tx.create("cluster", {"ID": "c1", "Spec": {}, "DataPathPort": 7789}))
    await env.add_network(network())
    await env.add_network(ingress_net())
    for i, nid in enumerate(("n1", "n2", "n3")):
        await env.add_node(nid)
        await env.modify("nodes", nid, lambda n, i=i: n.__setitem__("Attachments", lb(f"10.0.0.{5 + i}/24")))  # type: ignore[misc]
    await env.store.update(lambda tx: tx.create("services", published("s1", "web", {NET: []},
                                                                      vips={NET: "10.0.1.2/24", ING: "10.0.0.2/24"})))
    await env.store.update(lambda tx: tx.create("tasks", task("w1", "n2", "s1", 1,
                                                               {NET: "10.0.1.7/24", ING: "10.0.0.20/24"})))
    n1, n2, n3 = await connect(env, "n1", "n2", "n3")
    for n in (n1, n2, n3):
        await wait_until(lambda n=n: endpoints(n) == ["10.0.0.20"], 1, f"{n.node_id}: the mesh's endpoint")  # type: ignore[misc]
        assert n.last()["data_path_port"] == 7789
        assert ingress(n)["Address"] == f"10.0.0.{5 + ('n1', 'n2', 'n3').index(n.node_id)}/24"  # type: ignore[index]
    assert ING in n1.last()["networks"] and NET not in n1.last()["networks"]
    assert n2.last()["networks"][NET]["DNS"]["Services"] == [{**svc_rec("web"), "VIP": "10.0.1.2"}]

    # a second task starts running on n3: every node's endpoints within a second
    await env.store.update(lambda tx: tx.create("tasks", task("w2", "n3", "s1", 2,
                                                               {NET: "10.0.1.8/24", ING: "10.0.0.21/24"})))
    for n in (n1, n2, n3):
        await wait_until(lambda n=n: endpoints(n) == ["10.0.0.20", "10.0.0.21"], 1,  # type: ignore[misc]
                         f"{n.node_id}: the second endpoint")
    # the first one stops
    await n2.status([{"TaskID": "w1", "Status": {"State": "shutdown"}}])
    for n in (n1, n2, n3):
        await wait_until(lambda n=n: endpoints(n) == ["10.0.0.21"], 1, f"{n.node_id}: w1 gone")  # type: ignore[misc]
    # the published port changes (service update): every node
    await env.modify("services", "s1", lambda s: s["Endpoint"]["Ports"][0].__setitem__("PublishedPort", 8081))
    for n in (n1, n2, n3):
        await wait_until(lambda n=n: (i := ingress(n)) is not None  # type: ignore[misc]
                         and i["Ports"][0]["PublishedPort"] == 8081, 1, f"{n.node_id}: the new port")
    # the VIP changes: the users of that network
    await env.modify("services", "s1", lambda s: s["Endpoint"].__setitem__(
        "VirtualIPs", [{"NetworkID": NET, "Addr": "10.0.1.3/24"}, {"NetworkID": ING, "Addr": "10.0.0.2/24"}]))
    await wait_until(lambda: n3.last()["networks"][NET]["DNS"]["Services"][0]["VIP"] == "10.0.1.3", 1,
                     "n3: the new VIP")
    # a node's LB address changes: the other nodes' ingress peers
    await env.modify("nodes", "n1", lambda n: n.__setitem__("Attachments", lb("10.0.0.50/24")))
    for n in (n2, n3):
        await wait_until(lambda n=n: "10.0.0.50" in [p["IP"] for p in n.last()["networks"][ING]["Peers"]], 1,  # type: ignore[misc]
                         f"{n.node_id}: n1's new LB address")
    await wait_until(lambda: (i := ingress(n1)) is not None and i["Address"] == "10.0.0.50/24", 1, "n1's address")
    # the ingress network goes (and with it the attachments): no ingress key any more
    await env.store.update(lambda tx: tx.delete("networks", ING))
    for n in (n1, n2, n3):
        await wait_until(lambda n=n: ingress(n) is None and ING not in n.last()["networks"], 1,  # type: ignore[misc]
                         f"{n.node_id}: no mesh")
