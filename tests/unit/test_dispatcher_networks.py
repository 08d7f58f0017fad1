"""The ``networks`` part of the dispatcher's ``assignments`` push (issue 9): for each overlay
network a node's tasks use, the stored network and its peers (the tasks of other nodes on it).

Real Store and real loopback sessions through the harness of ``test_dispatcher``; each node opens
its session with its own data path address (the VTEP its peers are given).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher.assignments import TaskIndex, fingerprint, node_networks, peer_keys, vtep
from manager.store import WriteTx
from shoal.base.netaddr import ip_of, mac_from_ip
from shoal.rpc import wire
from tests.unit.test_dispatcher import Env, FakeNode, _env
from tests.waiting import wait_until

NET = "net1aaaaaaaaaaaaaaaaaaaaa"
OTHER_NET = "net2bbbbbbbbbbbbbbbbbbbbb"
NO_DNS: dict[str, Any] = {"Services": [], "Tasks": []}  # no service is stored in these tests
VTEP = {"n1": "10.99.0.11", "n2": "10.99.0.12", "n3": "10.99.0.13"}


def network(nid: str = NET, subnet: str = "10.0.1.0/24", gateway: str = "10.0.1.1", vni: str = "4097",
            driver: str = "overlay") -> dict[str, Any]:
    """A network in the stored shape of manager.controlapi.networks."""
    return {"ID": nid, "Spec": {"Name": "web-" + nid[:4], "DriverConfiguration": {"Name": driver}, "Scope": "swarm",
                                "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": []}},
            "DriverState": {"Name": driver,
                            "Options": {"com.docker.network.driver.overlay.vxlanid_list": vni}},
            "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": gateway}]}}


class NetEnv(Env):
    async def add_network(self, net: dict[str, Any]) -> None:
        await self.store.update(lambda tx: tx.create("networks", net))

    def stored_network(self, nid: str = NET) -> dict[str, Any]:
        n = self.store.view().get("networks", nid)
        assert n is not None
        return n

    async def add_attached(self, tid: str, nid: str, addrs: dict[str, str], state: str = "running",
                           desired: str = "running") -> None:
        """A task on node ``nid`` attached to the networks ``{network ID: "a.b.c.d/len"}``; its
        attachments carry a stale copy of the network (the push must carry the stored one)."""
        await self.add_task(tid, nid, state=state, desired=desired)
        await self.modify_task(tid, lambda t: t.__setitem__("NetworksAttachments", [
            {"Network": {"ID": net_id, "Spec": {"Name": "stale copy"}}, "Addresses": [a]}
            for net_id, a in addrs.items()]))


class VtepNode(FakeNode):
    """A FakeNode whose session advertises its own data path address."""

    async def connect(self, port: int) -> dict[str, Any]:
        self.peer = await wire.connect("127.0.0.1", port, None, self.handler, timeout=5)
        r = await self.req("session.open", {"description": {"Hostname": self.node_id}, "addr": VTEP[self.node_id]})
        self.session_id = r["session_id"]
        return r

    def last(self) -> dict[str, Any]:
        assert self.assignments, f"no push to {self.node_id} yet"
        return self.assignments[-1]

    def peers(self, net_id: str = NET) -> list[dict[str, str]] | None:
        """The peers of ``net_id`` in the last push, None if it is not listed (or no push yet)."""
        if not self.assignments:
            return None
        e = self.assignments[-1].get("networks", {}).get(net_id)
        return None if e is None else list(e["Peers"])


def peer(ip: str, node: str) -> dict[str, str]:
    return {"IP": ip, "MAC": mac_from_ip(ip), "VTEP": VTEP[node]}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[NetEnv]:
    async for e in _env(tmp_path, 5.0):
        yield NetEnv(e.store, e.d, e.port)


async def connect(env: NetEnv, *ids: str) -> list[VtepNode]:
    nodes = []
    for nid in ids:
        n = VtepNode(nid)
        await n.connect(env.port)
        nodes.append(n)
    return nodes


def test_netaddr() -> None:
    assert mac_from_ip("10.0.1.7/24") == "02:42:0a:00:01:07" == mac_from_ip("10.0.1.7")
    assert ip_of("10.0.1.7/24") == "10.0.1.7"
    for bad in ("fd00::1", "10.0.1", ""):
        with pytest.raises(ValueError):
            mac_from_ip(bad)


def test_node_networks_pure() -> None:
    net = network()
    nodes = {"n1": {"Status": {"State": "ready", "Addr": VTEP["n1"]}},
             "n2": {"Status": {"State": "ready", "Addr": VTEP["n2"]}},
             "n3": {"Status": {"State": "down", "Addr": VTEP["n3"]}}}

    def task(tid: str, node: str, ip: str, state: str = "running", desired: str = "running") -> dict[str, Any]:
        return {"ID": tid, "NodeID": node, "DesiredState": desired, "Status": {"State": state},
                "NetworksAttachments": [{"Network": {"ID": NET}, "Addresses": [ip]}]}

    tasks = [task("a", "n1", "10.0.1.5/24"), task("b", "n2", "10.0.1.10/24", state="assigned"),
             task("c", "n2", "10.0.1.9/24"), task("d", "n3", "10.0.1.20/24"),
             task("e", "n2", "10.0.1.30/24", state="complete"), task("f", "n2", "10.0.1.31/24", desired="shutdown"),
             task("g", "n2", "10.0.1.32/24", state="pending"), task("h", "n2", "10.0.1.33/24", desired="ready")]
    index = TaskIndex(tasks)

    def run(node: str, own: list[dict[str, Any]]) -> dict[str, Any]:
        return node_networks(node, own, index, lambda i: net if i == NET else None, lambda n: vtep(nodes.get(n)))

    got = run("n1", index.tasks_of("n1"))
    # sorted by IP as addresses (10.0.1.9 before 10.0.1.10); down node n3 and ineligible tasks left out
    assert got == {NET: {"Network": net, "Peers": [peer("10.0.1.9", "n2"), peer("10.0.1.10", "n2"),
                                                   peer("10.0.1.33", "n2")], "DNS": NO_DNS}}
    # a terminal task of the node does not make it use the network; a non-overlay network is not listed
    assert run("n1", [task("a", "n1", "10.0.1.5/24", state="complete")]) == {}
    assert node_networks("n1", index.tasks_of("n1"), index, lambda i: network(driver="bridge"), lambda n: "x") == {}
    assert run("n1", index.tasks_of("n1")) == got  # deterministic
    assert peer_keys(tasks[0]) == {(NET, "n1", "10.0.1.5/24")} and peer_keys(tasks[4]) == set()


def test_fingerprint_covers_networks() -> None:
    node = {"ID": "n1", "Spec": {}}
    base = fingerprint(node, [])
    assert fingerprint(node, [], {}) == base
    e: dict[str, Any] = {"Network": network(), "Peers": [peer("10.0.1.7", "n2")]}
    with_peer = fingerprint(node, [], {NET: e})
    assert with_peer != base
    assert fingerprint(node, [], {NET: {**e, "Peers": []}}) != with_peer
    # a network's Version/UpdatedAt alone does not push
    bumped = {**e, "Network": {**e["Network"], "Version": {"Index": 9}, "UpdatedAt": "later"}}
    assert fingerprint(node, [], {NET: bumped}) == with_peer


async def test_each_node_gets_the_other_nodes_tasks_as_peers(env: NetEnv) -> None:
    for nid in ("n1", "n2", "n3"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.add_network(network(OTHER_NET, "10.0.2.0/24", "10.0.2.1", "4098"))
    await env.add_attached("a1", "n1", {NET: "10.0.1.5/24"})
    await env.add_attached("b1", "n2", {NET: "10.0.1.7/24", OTHER_NET: "10.0.2.7/24"})
    await env.add_attached("b2", "n2", {NET: "10.0.1.10/24"}, state="assigned")
    await env.add_attached("b3", "n2", {NET: "10.0.1.11/24"}, state="pending")  # not scheduled yet
    await env.add_attached("b4", "n2", {NET: "10.0.1.12/24"}, desired="shutdown")  # being stopped
    await env.add_task("c1", "n3")  # no networks
    n1, n2, n3 = await connect(env, "n1", "n2", "n3")
    await wait_until(lambda: n1.peers() == [peer("10.0.1.7", "n2"), peer("10.0.1.10", "n2")], 3, "n1's peers")
    await wait_until(lambda: n2.peers() == [peer("10.0.1.5", "n1")], 3, "n2's peers")
    await wait_until(lambda: n3.assignments, 3, "n3's push")
    stored = env.stored_network()
    assert n1.last()["networks"] == {NET: {"Network": stored, "Peers": [peer("10.0.1.7", "n2"),
                                                                        peer("10.0.1.10", "n2")], "DNS": NO_DNS}}
    assert n1.last()["networks"][NET]["Network"]["Spec"]["Name"] == "web-net1"  # the stored object
    # n2 uses both networks; nobody else is on the second one
    assert n2.last()["networks"][OTHER_NET] == {"Network": env.stored_network(OTHER_NET), "Peers": [],
                                                "DNS": NO_DNS}
    # a node with no overlay task: the message as before, with networks {}
    assert n3.last()["networks"] == {} and [t["ID"] for t in n3.last()["tasks"]] == ["c1"]
    assert set(n3.last()) == {"node", "tasks", "networks", "ingress", "data_path_port"}
    assert n3.last()["ingress"] is None and n3.last()["data_path_port"] == 4789


async def test_peer_changes_on_another_node_push_within_the_coalescing(env: NetEnv) -> None:
    for nid in ("n1", "n2", "n3"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.add_attached("a1", "n1", {NET: "10.0.1.5/24"})
    await env.add_attached("b1", "n2", {NET: "10.0.1.7/24"})
    await env.add_attached("b2", "n2", {NET: "10.0.1.8/24"})
    await env.add_task("c1", "n3")
    n1, n2, n3 = await connect(env, "n1", "n2", "n3")
    await wait_until(lambda: n1.peers() == [peer("10.0.1.7", "n2"), peer("10.0.1.8", "n2")], 3, "n1's peers")
    await wait_until(lambda: n3.assignments, 3, "n3's push")
    n3_pushes = len(n3.assignments)

    # b1 stops on n2 (its worker reports it): n1 is told, n2's own set changes too
    await n2.status([{"TaskID": "b1", "Status": {"State": "shutdown"}}])
    await wait_until(lambda: n1.peers() == [peer("10.0.1.8", "n2")], 1, "b1 gone from n1's peers")
    # b2 removed from the store
    await env.store.update(lambda tx: tx.delete("tasks", "b2"))
    await wait_until(lambda: n1.peers() == [], 1, "b2 gone from n1's peers")
    # n2 has no live task on the network any more: it is no longer sent it
    await wait_until(lambda: n2.last()["networks"] == {}, 1, "n2 off the network")
    # a new task on n3 joins the network: n1 hears of it, n3 now uses the network
    await env.add_attached("c2", "n3", {NET: "10.0.1.20/24"}, state="assigned")
    await wait_until(lambda: n1.peers() == [peer("10.0.1.20", "n3")], 1, "c2 in n1's peers")
    await wait_until(lambda: n3.peers() == [peer("10.0.1.5", "n1")], 1, "n3 uses the network")
    assert len(n3.assignments) > n3_pushes
    # n1's own task ending: n1 no longer uses the network, and the others lose it as a peer
    await env.modify_task("a1", lambda t: t.__setitem__("DesiredState", "shutdown"))
    await wait_until(lambda: n3.peers() == [], 1, "a1 gone from n3's peers")
    await n1.status([{"TaskID": "a1", "Status": {"State": "shutdown"}}])
    await wait_until(lambda: n1.last()["networks"] == {}, 1, "n1 no longer on the network")


async def test_a_down_node_s_tasks_are_not_peers(env: NetEnv) -> None:
    for nid in ("n1", "n2"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.add_attached("a1", "n1", {NET: "10.0.1.5/24"})
    await env.add_attached("b1", "n2", {NET: "10.0.1.7/24"})
    n1, n2 = await connect(env, "n1", "n2")
    await wait_until(lambda: n1.peers() == [peer("10.0.1.7", "n2")], 3, "n1's peers")

    def mark(state: str) -> Callable[[WriteTx], None]:
        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", "n2")
            assert node is not None
            node["Status"] = {**node["Status"], "State": state}
            tx.update("nodes", node)
        return fn

    await env.store.update(mark("down"))
    await wait_until(lambda: n1.peers() == [], 1, "down n2's task no longer a peer")
    # the node coming back (a new session) makes its task a peer again, at its new address
    VTEP["n2"] = "10.99.0.22"
    try:
        n2b = VtepNode("n2")
        await n2b.connect(env.port)
        await wait_until(lambda: n1.peers() == [peer("10.0.1.7", "n2")], 1, "n2's task back at its new VTEP")
        assert n1.peers() == [{"IP": "10.0.1.7", "MAC": "02:42:0a:00:01:07", "VTEP": "10.99.0.22"}]
    finally:
        VTEP["n2"] = "10.99.0.12"


async def test_network_objects_created_changed_and_removed(env: NetEnv) -> None:
    for nid in ("n1", "n2"):
        await env.add_node(nid)
    await env.add_attached("a1", "n1", {NET: "10.0.1.5/24"})
    await env.add_attached("b1", "n2", {NET: "10.0.1.7/24"})
    n1, _ = await connect(env, "n1", "n2")
    await wait_until(lambda: n1.assignments, 3, "n1's push")
    assert n1.last()["networks"] == {}  # not in the store (yet): not listed
    await env.add_network(network())
    await wait_until(lambda: n1.peers() == [peer("10.0.1.7", "n2")], 1, "the network listed once stored")

    def relabel(tx: WriteTx) -> None:
        net = tx.get("networks", NET)
        assert net is not None
        net["Spec"]["Labels"] = {"k": "v"}
        tx.update("networks", net)

    await env.store.update(relabel)
    await wait_until(lambda: n1.last()["networks"][NET]["Network"]["Spec"].get("Labels") == {"k": "v"}, 1,
                     "the changed network pushed")
    await env.store.update(lambda tx: tx.delete("networks", NET))
    await wait_until(lambda: n1.last()["networks"] == {}, 1, "the removed network dropped")
