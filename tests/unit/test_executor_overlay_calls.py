"""Unit tests of the executor's overlay wiring (issue 9) with a recording test double of the driver.

``OverlayDriverTestDouble`` stands in for overlaynet.vxlan.VxlanDriver here only (no kernel); the
root integration test (tests/integration/test_executor_overlay.py) runs the real driver. Runtime,
image store and bridge doubles are those of tests/unit/test_executor_states.py.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from overlaynet.driver import (
    Attachment,
    DriverError,
    EndpointConfig,
    NetworkConfig,
    Peer,
    PeerDelta,
    VniInUse,
    mac_from_ip,
)
from tests.unit.test_executor_states import NODE, Env, StateTestDouble, make_task
from tests.waiting import wait_until as until
from worker import overlay as ov
from worker.agent import Agent
from worker.executor import Executor, container_id_for

NET_A = "neta" + "0" * 21
NET_B = "netb" + "1" * 21
TID = "task1" + "x" * 20
TID2 = "task2" + "y" * 20
OWN = "192.0.2.1"
OVNODE = {**NODE, "Status": {"State": "ready", "Addr": OWN}}


class OverlayDriverTestDouble:
    """Records every call as ``(name, args…)`` in ``calls``; ``fail_attach`` makes ``attach`` of that
    network raise DriverError; ``stale`` is what ``cleanup_stale`` reports removed."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_attach: str | None = None
        self.endpoints: dict[str, set[str]] = {}
        self.peers: dict[str, list[Peer]] = {}
        # VNI -> names cleanup_stale(..., vni) removes (a stale network holding it); ensure_network
        # of that VNI raises VniInUse until then ([]: held by something cleanup_stale cannot free)
        self.vni_holders: dict[int, list[str]] = {}

    def ensure_network(self, net: NetworkConfig) -> None:
        self.calls.append(("ensure_network", net))
        if net.vni in self.vni_holders:
            raise VniInUse(f"a VXLAN device with VNI {net.vni} and port {net.data_path_port} already exists",
                           net.network_id, net.vni, net.data_path_port)

    def attach(self, ep: EndpointConfig) -> Attachment:
        self.calls.append(("attach", ep))
        if ep.network_id == self.fail_attach:
            raise DriverError(f"endpoint address {ep.address} is not in the subnet")
        self.endpoints.setdefault(ep.network_id, set()).add(ep.endpoint_id)
        return Attachment(ep.network_id, ep.endpoint_id, ep.netns_path, ep.ifname, ep.address,
                          mac_from_ip(ep.address), 1450)

    def detach(self, ep: EndpointConfig) -> None:
        self.calls.append(("detach", ep.network_id, ep.endpoint_id))
        self.endpoints.get(ep.network_id, set()).discard(ep.endpoint_id)

    def remove_network(self, network_id: str) -> None:
        self.calls.append(("remove_network", network_id))

    def set_peers(self, network_id: str, peers: Any) -> PeerDelta:
        ps = sorted(peers)
        self.calls.append(("set_peers", network_id, ps))
        self.peers[network_id] = ps
        return PeerDelta(tuple(ps), ())

    def cleanup_stale(self, known: Any, vni: int | None = None) -> list[str]:
        if vni is not None:
            self.calls.append(("cleanup_stale", sorted(known), vni))
            return list(self.vni_holders.pop(vni)) if self.vni_holders.get(vni) else []
        self.calls.append(("cleanup_stale", sorted(known)))
        return []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def stored_network(nid: str, name: str, subnet: str, gw: str, vni: int, driver: str = "overlay") -> dict[str, Any]:
    return {"ID": nid, "Spec": {"Name": name, "DriverConfiguration": {"Name": driver, "Options": {}}},
            "DriverState": {"Name": driver, "Options": {ov.VNI_OPTION: str(vni)}},
            "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": gw}]}}


NETS = {NET_A: stored_network(NET_A, "front", "10.0.1.0/24", "10.0.1.1", 4097),
        NET_B: stored_network(NET_B, "back", "10.0.2.0/24", "10.0.2.1", 4098)}


def overlay_task(tid: str, *nets: tuple[str, str], desired: str = "running") -> dict[str, Any]:
    t = make_task(tid, desired=desired)
    for nid, addr in nets:
        t["NetworksAttachments"].append({"Network": NETS[nid], "Addresses": [addr]})
    return t


def peers_msg(nid: str, *ips_vteps: tuple[str, str]) -> dict[str, Any]:
    return {"Network": NETS[nid], "Peers": [{"IP": ip, "MAC": mac_from_ip(ip), "VTEP": vtep}
                                            for ip, vtep in ips_vteps]}


class OvEnv(Env):
    def __init__(self) -> None:
        super().__init__()
        self.driver = OverlayDriverTestDouble()
        self.dns_netns: list[str] = []  # the namespaces the embedded DNS sockets were asked for
        self.ex = Executor(self.runtime, self.images, self.bridge, self.report, overlay=self.driver,
                           dns_sockets=self.dns_sockets)

    def dns_sockets(self, netns_path: str) -> tuple[socket.socket, socket.socket]:
        """Stands in for worker.dns.open_dns_sockets: loopback sockets on ephemeral ports here."""
        self.dns_netns.append(netns_path)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        return udp, tcp


async def test_attach_in_order_with_peers_after_ensure_then_detach_on_remove() -> None:
    e = OvEnv()
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"), (NET_B, "10.0.2.5/24"))
    nets = {NET_A: peers_msg(NET_A, ("10.0.1.9", "192.0.2.2"), ("10.0.1.5", OWN)),  # own endpoint: dropped
            NET_B: peers_msg(NET_B)}
    await e.ex.set_assignments(OVNODE, [t], nets)
    await until(lambda: e.states(TID)[-1:] == ["running"])
    cid = container_id_for(TID)
    calls = e.driver.calls
    assert calls[0] == ("cleanup_stale", [])  # first assignment, before any ensure
    assert e.driver.names()[1:] == ["ensure_network", "set_peers", "attach", "ensure_network", "set_peers", "attach"]
    cfg_a, cfg_b = calls[1][1], calls[4][1]
    assert cfg_a == NetworkConfig(NET_A, "10.0.1.0/24", "10.0.1.1", 4097, OWN, 4789, {ov.VNI_OPTION: "4097"})
    assert (cfg_b.network_id, cfg_b.vni, cfg_b.subnet) == (NET_B, 4098, "10.0.2.0/24")
    assert calls[2] == ("set_peers", NET_A, [Peer("10.0.1.9", mac_from_ip("10.0.1.9"), "192.0.2.2")])
    assert calls[5] == ("set_peers", NET_B, [])
    ep_a, ep_b = calls[3][1], calls[6][1]
    assert (ep_a.ifname, ep_a.address, ep_a.endpoint_id) == ("eth1", "10.0.1.5/24", TID)
    assert (ep_b.ifname, ep_b.address) == ("eth2", "10.0.2.5/24")
    assert ep_a.netns_path == ep_b.netns_path == f"/tmp/test-double-netns/{cid[:12]}"
    assert e.bridge.attached[cid] == "10.200.1.7/24"  # eth0: the local bridge, unchanged
    assert e.runtime.specs[cid].netns == ep_a.netns_path

    n = len(calls)
    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}], nets)
    await until(lambda: TID not in e.ex.task_states())
    detached = [c for c in calls[n:] if c[0] == "detach"]
    assert detached[:2] == [("detach", NET_A, TID), ("detach", NET_B, TID)]
    assert cid in e.bridge.detached
    await e.ex.close()


async def test_new_assignment_updates_peers_of_local_networks_only() -> None:
    e = OvEnv()
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"))
    await e.ex.set_assignments(OVNODE, [t], {NET_A: peers_msg(NET_A)})
    await until(lambda: e.states(TID)[-1:] == ["running"])
    n = len(e.driver.calls)
    nets = {NET_A: peers_msg(NET_A, ("10.0.1.9", "192.0.2.2"), ("10.0.1.10", "192.0.2.3")),
            NET_B: peers_msg(NET_B, ("10.0.2.9", "192.0.2.2"))}  # no endpoint here: not applied
    await e.ex.set_assignments(OVNODE, [t], nets)
    await until(lambda: len(e.driver.calls) > n)
    await asyncio.sleep(0.05)
    assert e.driver.calls[n:] == [("set_peers", NET_A, sorted([
        Peer("10.0.1.9", mac_from_ip("10.0.1.9"), "192.0.2.2"),
        Peer("10.0.1.10", mac_from_ip("10.0.1.10"), "192.0.2.3")]))]
    # an assignment without "networks" (an older manager) changes no peers
    n = len(e.driver.calls)
    await e.ex.set_assignments(OVNODE, [t])
    await asyncio.sleep(0.05)
    assert e.driver.calls[n:] == []
    await e.ex.close()


async def test_task_started_after_the_push_gets_the_stored_peers() -> None:
    e = OvEnv()
    nets = {NET_A: peers_msg(NET_A, ("10.0.1.9", "192.0.2.2"))}
    await e.ex.set_assignments(OVNODE, [], nets)
    assert e.driver.names() == ["cleanup_stale"]
    await e.ex.set_assignments(OVNODE, [overlay_task(TID, (NET_A, "10.0.1.5/24"))])  # no networks this time
    await until(lambda: e.states(TID)[-1:] == ["running"])
    assert ("set_peers", NET_A, [Peer("10.0.1.9", mac_from_ip("10.0.1.9"), "192.0.2.2")]) in e.driver.calls
    await e.ex.close()


async def test_attach_failure_rejects_the_task_naming_the_network_and_releases() -> None:
    e = OvEnv()
    e.driver.fail_attach = NET_B
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"), (NET_B, "10.0.2.5/24"))
    await e.ex.set_assignments(OVNODE, [t])
    await until(lambda: e.states(TID)[-1:] == ["rejected"])
    err = e.last(TID)["Err"]
    assert "back" in err and NET_B[:12] in err and "not in the subnet" in err, err
    assert ("detach", NET_A, TID) in e.driver.calls and ("detach", NET_B, TID) in e.driver.calls
    assert container_id_for(TID) in e.bridge.detached
    assert e.runtime.calls == []  # no container made
    await e.ex.close()


@pytest.mark.parametrize("change, words", [
    (lambda n: n["DriverState"]["Options"].clear(), "no VXLAN ID"),
    (lambda n: n["IPAMOptions"].update(Configs=[]), "no subnet"),
])
async def test_bad_network_is_rejected_before_any_driver_call(change: Any, words: str) -> None:
    e = OvEnv()
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"))
    net = {**NETS[NET_A], "DriverState": {"Name": "overlay", "Options": dict(NETS[NET_A]["DriverState"]["Options"])},
           "IPAMOptions": dict(NETS[NET_A]["IPAMOptions"])}
    change(net)
    t["NetworksAttachments"][1]["Network"] = net
    await e.ex.set_assignments(OVNODE, [t])
    await until(lambda: e.states(TID)[-1:] == ["rejected"])
    assert words in e.last(TID)["Err"] and "front" in e.last(TID)["Err"]
    assert e.driver.names() == ["cleanup_stale"]
    await e.ex.close()


async def test_no_data_path_address_rejects() -> None:
    e = OvEnv()
    await e.ex.set_assignments(NODE, [overlay_task(TID, (NET_A, "10.0.1.5/24"))])
    await until(lambda: e.states(TID)[-1:] == ["rejected"])
    assert "data path address" in e.last(TID)["Err"]
    await e.ex.close()


async def test_no_overlay_attachment_makes_no_driver_call() -> None:
    e = OvEnv()
    t = make_task(TID)
    other = make_task(TID2)  # a non-overlay network in a second attachment is ignored too
    other["NetworksAttachments"].append({"Network": stored_network(NET_A, "x", "10.0.1.0/24", "10.0.1.1", 1,
                                                                   driver="bridge"), "Addresses": ["10.0.1.2/24"]})
    other["NetworksAttachments"][0]["Addresses"] = ["10.200.1.8/24"]
    await e.ex.set_assignments(OVNODE, [t, other], {NET_A: peers_msg(NET_A, ("10.0.1.9", "192.0.2.2"))})
    await until(lambda: e.states(TID)[-1:] == ["running"] and e.states(TID2)[-1:] == ["running"])
    e.runtime.exit(container_id_for(TID), 0)
    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}, {**other, "DesiredState": "remove"}])
    await until(lambda: e.ex.task_states() == {})
    assert e.driver.names() == ["cleanup_stale"]  # once at start, nothing per task
    await e.ex.close()


async def test_overlay_task_without_driver_is_rejected_and_plain_tasks_run() -> None:
    e = Env()  # no overlay driver
    await e.ex.set_assignments(OVNODE, [overlay_task(TID, (NET_A, "10.0.1.5/24")), make_task(TID2)])
    await until(lambda: e.states(TID)[-1:] == ["rejected"] and e.states(TID2)[-1:] == ["running"])
    assert "overlay networks are not supported" in e.last(TID)["Err"]
    await e.ex.close()


async def test_startup_cleanup_keeps_networks_of_reattached_tasks() -> None:
    e = OvEnv()
    cid = container_id_for(TID)
    e.runtime.containers[cid] = StateTestDouble(cid, "running", pid=777, labels={"com.docker.swarm.task.id": TID})
    await e.ex.recover()
    await until(lambda: e.states(TID)[-1:] == ["running"])
    assert e.driver.calls == []  # nothing before the first assignment
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"), (NET_B, "10.0.2.5/24"))
    t["Status"]["State"] = "running"
    await e.ex.set_assignments(OVNODE, [t], {NET_A: peers_msg(NET_A, ("10.0.1.9", "192.0.2.2"))})
    await until(lambda: "set_peers" in e.driver.names())
    assert e.driver.calls[0] == ("cleanup_stale", sorted([NET_A, NET_B]))
    assert "ensure_network" not in e.driver.names()  # re-attached: nothing re-made
    # its endpoints are detached when the task is removed
    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}])
    await until(lambda: TID not in e.ex.task_states())
    assert ("detach", NET_A, TID) in e.driver.calls and ("detach", NET_B, TID) in e.driver.calls
    await e.ex.close()


def test_overlay_reading() -> None:
    assert ov.data_path_addr({"Status": {"Addr": "192.0.2.7"}}) == "192.0.2.7"
    assert ov.data_path_addr({"Status": {"Addr": "192.0.2.7:2377"}}) == "192.0.2.7"
    assert ov.data_path_addr({}) is None
    net = stored_network(NET_A, "front", "10.0.1.0/24", "", 4097)
    net["DriverState"]["Options"][ov.VNI_OPTION] = "4097,4098"
    cfg = ov.network_config(net, OWN)
    assert (cfg.gateway, cfg.vni, cfg.data_path_port) == ("10.0.1.1", 4097, 4789)
    peers = ov.peers_of({"Peers": [{"IP": "10.0.1.3/24", "VTEP": "192.0.2.2"}, {"IP": "bad", "VTEP": "x"},
                                   {"IP": "10.0.1.4", "MAC": "02:42:0A:00:01:04", "VTEP": OWN}]}, OWN)
    assert peers == [Peer("10.0.1.3", mac_from_ip("10.0.1.3"), "192.0.2.2")]
    assert ov.network_label(net) == f"front ({NET_A[:12]})"


class _RecordingExecutor:
    def __init__(self, with_networks: bool) -> None:
        self.got: list[tuple[Any, ...]] = []
        self.with_networks = with_networks

    async def set_assignments(self, node: Any, tasks: Any, **kw: Any) -> None:
        self.got.append((node, tasks, kw))

    def read_logs(self, *a: Any) -> list[Any]:
        return []


async def test_agent_passes_networks_only_when_sent() -> None:
    rec = _RecordingExecutor(True)
    agent = Agent("node1", ["127.0.0.1:2377"], "/nonexistent", rec, description={})
    await agent._handle(None, "assignments", {"node": OVNODE, "tasks": []})  # type: ignore[arg-type]
    nets = {NET_A: peers_msg(NET_A)}
    await agent._handle(None, "assignments", {"node": OVNODE, "tasks": [], "networks": nets})  # type: ignore[arg-type]
    ingress = {"NetworkID": NET_A, "Address": "10.0.1.9/24", "Ports": []}
    await agent._handle(None, "assignments", {"node": OVNODE, "tasks": [], "networks": nets,  # type: ignore[arg-type]
                                              "ingress": ingress, "data_path_port": 4790})
    assert rec.got == [(OVNODE, [], {}), (OVNODE, [], {"networks": nets, "ingress": None}),
                       (OVNODE, [], {"networks": nets, "ingress": ingress, "data_path_port": 4790})]


def test_malformed_input_is_not_an_overlay_and_gives_no_peers() -> None:
    assert not ov.is_overlay({"DriverState": "overlay"}) and not ov.is_overlay(None)
    assert ov.overlay_attachments({"NetworksAttachments": [{"Network": {"DriverState": "x"}}, "junk"]}) == []
    assert ov.peers_of(["junk"], OWN) == [] and ov.peers_of({"Peers": None}, OWN) == []  # type: ignore[arg-type]
