"""Unit tests of the node's service networking (issue 9), no root: the push → VIP states
(worker/vip), the push's ingress → mesh ports and sandbox calls (worker/mesh), host-mode ports
(worker/hostports), the host DNAT table scripts (overlaynet/lb/portmap), the sandbox's scripts
(overlaynet/mesh with a recording nft), embedded DNS answers for VIP and dnsrr services from the
push, and the executor calling it all (with the test doubles of test_executor_overlay_calls).
The kernel side is in tests/integration/test_service_networking.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import pytest

from overlaynet.dns.answers import answer
from overlaynet.dns.records import DnsTable
from overlaynet.driver import Attachment, EndpointConfig, NetworkConfig, mac_from_ip
from overlaynet.lb import portmap, rules
from overlaynet.lb.rules import Endpoint, LBState, ServiceKey
from overlaynet.mesh import IngressSandbox, MeshPort
from tests.unit.test_executor_overlay_calls import (
    NET_A,
    NET_B,
    OVNODE,
    TID,
    OvEnv,
    overlay_task,
    peers_msg,
)
from tests.waiting import wait_until as until
from worker import overlay as ov
from worker.executor import Executor
from worker.hostports import HostPorts, host_port_entries
from worker.mesh import SANDBOX_ENDPOINT_ID, Mesh, mesh_ports
from worker.vip import VipBalancers, vip_state


def dns_entry(nid: str, services: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {**peers_msg(nid), "DNS": {"Services": services, "Tasks": tasks}}


def task_rec(service: str, ip: str, n: int) -> dict[str, Any]:
    return {"Service": service, "Slot": n, "ID": f"{service}task{n:020d}", "IP": ip, "Hostname": None}


PUSH = {
    NET_A: dns_entry(NET_A, [{"Name": "api", "Aliases": [], "VIP": "10.0.1.2"},
                             {"Name": "db", "Aliases": [], "VIP": None},
                             {"Name": "idle", "Aliases": [], "VIP": "10.0.1.3"}],
                     [task_rec("api", "10.0.1.5", 1), task_rec("api", "10.0.1.6", 2), task_rec("db", "10.0.1.7", 1)]),
    NET_B: dns_entry(NET_B, [{"Name": "back", "Aliases": [], "VIP": "10.0.2.2/24"}],
                     [task_rec("back", "10.0.2.5", 1)]),
}


# -- VIPs ---------------------------------------------------------------------------------------


def test_vip_state_maps_each_vip_to_its_tasks_on_that_network() -> None:
    st = vip_state(PUSH, [NET_A])
    assert st == LBState({ServiceKey.whole("10.0.1.2"): (Endpoint("10.0.1.5", None), Endpoint("10.0.1.6", None)),
                          ServiceKey.whole("10.0.1.3"): ()})  # no task: rejected; db (dnsrr): no VIP
    both = vip_state(PUSH, [NET_A, NET_B])
    assert both.services[ServiceKey.whole("10.0.2.2")] == (Endpoint("10.0.2.5", None),)
    assert vip_state(PUSH, [NET_B]).services.keys() == {ServiceKey.whole("10.0.2.2")}
    assert vip_state({}, [NET_A]) == LBState()


def test_embedded_dns_answers_the_vip_and_the_tasks() -> None:
    table = DnsTable()
    for nid, entry in PUSH.items():
        table.replace(ov.dns_records(nid, entry))

    def ask(name: str) -> list[str]:
        resp = answer(dns.message.make_query(name, dns.rdatatype.A), [NET_A, NET_B], table)
        assert isinstance(resp, dns.message.Message)
        return sorted(r.to_text() for rr in resp.answer for r in rr)

    assert ask("api") == ["10.0.1.2"]  # the VIP
    assert ask("tasks.api") == ["10.0.1.5", "10.0.1.6"]
    assert ask("db") == ["10.0.1.7"] == ask("tasks.db")  # dnsrr: the task IPs
    assert ask("idle") == ["10.0.1.3"] and ask("tasks.idle") == []  # a VIP without tasks (it rejects)
    assert ask("back") == ["10.0.2.2"]


class Nft:
    """Records ``(script, netns)`` of every nft run; ``fail`` makes the next run raise."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any]] = []
        self.fail = False

    def __call__(self, script: str, netns: Any = None) -> None:
        if self.fail:
            self.fail = False
            raise OSError("nft failed")
        self.runs.append((script, netns))


def conntrack(ip: str, vip: Any = None, port: Any = None, netns: Any = None) -> int:
    return 0


async def test_vip_balancers_full_then_deltas_then_removed(tmp_path: Path) -> None:
    nft = Nft()
    vb = VipBalancers(nft=nft, conntrack=conntrack)
    ns = tmp_path / "netns-of-task"
    ns.write_text("")
    await vb.add(TID, str(ns), [NET_A], PUSH)
    script, where = nft.runs[-1]
    assert where == str(ns) and script.startswith("add table ip shoal-vip\ndelete table ip shoal-vip\n")
    assert "dnat to 10.0.1.5" in script and "10.0.1.3 : goto reject-chain" in script
    n = len(nft.runs)
    await vb.update(PUSH)  # nothing changed: nothing sent
    assert len(nft.runs) == n
    scaled = {**PUSH, NET_A: dns_entry(NET_A, PUSH[NET_A]["DNS"]["Services"],
                                       [task_rec("api", "10.0.1.6", 2), task_rec("api", "10.0.1.8", 3)])}
    await vb.update(scaled)
    delta = nft.runs[-1][0]
    gone = rules.endpoint_chain(ServiceKey.whole("10.0.1.2"), Endpoint("10.0.1.5", None))
    assert "add table" not in delta and "dnat to 10.0.1.8" in delta and f"delete chain ip shoal-vip {gone}" in delta
    assert "10.0.1.3" not in delta  # the untouched service is not in the delta
    nft.fail = True
    await vb.update(PUSH)  # failure: logged; the next apply is a full load
    await vb.update(scaled)
    assert nft.runs[-1][0].startswith("add table ip shoal-vip")
    await vb.remove(TID)
    assert nft.runs[-1][0] == "add table ip shoal-vip\ndelete table ip shoal-vip\n"
    assert vb.tasks() == []
    await vb.add(TID, str(tmp_path / "gone"), [NET_A], PUSH)
    n = len(nft.runs)
    await vb.remove(TID)  # the namespace went: nothing to delete
    assert len(nft.runs) == n


# -- host-mode ports -----------------------------------------------------------------------------


def with_ports(tid: str, *ports: dict[str, Any]) -> dict[str, Any]:
    return {"ID": tid, "Endpoint": {"Ports": list(ports)}}


def test_host_port_entries_only_host_mode_with_a_published_port_first_claim_wins() -> None:
    a = with_ports("taskA", {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
                   {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "host"},
                   {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 30001, "PublishMode": "ingress"},
                   {"Protocol": "tcp", "TargetPort": 82, "PublishedPort": 0, "PublishMode": "host"})
    b = with_ports("taskB", {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
                   {"TargetPort": 99, "PublishedPort": 9999, "PublishMode": "host"},
                   {"Protocol": "icmp", "TargetPort": 1, "PublishedPort": 1, "PublishMode": "host"})
    got = host_port_entries([(b, "10.200.1.8"), (a, "10.200.1.7")])
    assert got == {("tcp", 8080): ("10.200.1.7", 80), ("udp", 5353): ("10.200.1.7", 53),
                   ("tcp", 9999): ("10.200.1.8", 99)}


def test_host_ports_sync_cleans_once_then_follows() -> None:
    nft = Nft()
    hp = HostPorts(nft=nft)
    assert hp.sync([]) == "" and nft.runs[-1][0] == "add table ip shoal-hostports\ndelete table ip shoal-hostports\n"
    assert hp.sync([]) == "" and len(nft.runs) == 1
    a = with_ports("taskA", {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"})
    full = hp.sync([(a, "10.200.1.7")])
    assert "tcp . 8080 : 10.200.1.7 . 80" in full and "fib daddr type local" in full and "masquerade" not in full
    assert hp.sync([(a, "10.200.1.7")]) == ""
    assert hp.sync([]) == ("delete element ip shoal-hostports ports { tcp . 8080 }\n"
                           "delete element ip shoal-hostports targets { 10.200.1.7 . tcp . 80 }\n")


def test_portmap_delta_changes_a_target_as_delete_then_add() -> None:
    old = {("tcp", 8080): ("10.200.1.7", 80)}
    new = {("tcp", 8080): ("10.200.1.9", 80), ("udp", 53): ("10.200.1.9", 53)}
    d = portmap.render_delta(old, new, "pm")
    lines = d.splitlines()
    assert lines.index("delete element ip pm ports { tcp . 8080 }") < lines.index(
        "add element ip pm ports { tcp . 8080 : 10.200.1.9 . 80 }")
    assert "add element ip pm ports { udp . 53 : 10.200.1.9 . 53 }" in lines
    assert portmap.render_delta(new, new, "pm") == ""
    with pytest.raises(ValueError, match="target needs a port"):
        portmap.normalize({("tcp", 1): ("10.0.0.1", None)})  # type: ignore[dict-item]


# -- the mesh ------------------------------------------------------------------------------------

INGRESS_NET = NET_B


def ingress_entry(*ports: dict[str, Any], address: str = "10.0.2.250/24") -> dict[str, Any]:
    return {"NetworkID": INGRESS_NET, "Address": address, "Ports": list(ports)}


WEB_PORT = {"ServiceID": "svcweb", "Service": "web", "Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80,
            "Endpoints": ["10.0.2.7", "10.0.2.9"]}


def test_mesh_ports_reads_the_push_and_skips_bad_ports() -> None:
    ports = mesh_ports(ingress_entry(WEB_PORT, {**WEB_PORT, "PublishedPort": 8080},  # a second claim: dropped
                                     {"Protocol": "udp", "PublishedPort": 30053, "TargetPort": 53, "Endpoints": []},
                                     {"Protocol": "tcp", "PublishedPort": 0, "TargetPort": 80},
                                     "junk"))
    assert ports == [MeshPort("tcp", 8080, 80, ("10.0.2.7", "10.0.2.9")), MeshPort("udp", 30053, 53, ())]


def test_sandbox_ports_go_to_the_host_map_and_the_sandbox_lb(tmp_path: Path) -> None:
    nft = Nft()
    sb = IngressSandbox(tmp_path, nft=nft, conntrack=conntrack)
    sb.set_ports([MeshPort("tcp", 8080, 80, ("10.0.2.7", "10.0.2.9")), MeshPort("udp", 30053, 53, ())])
    (lb, lb_ns), (host, host_ns) = nft.runs
    assert lb_ns == tmp_path / "ingress_sbox" and host_ns is None
    assert "169.254.253.2 . tcp . 8080 : goto svc-" in lb and "meta l4proto tcp dnat to 10.0.2.9:80" in lb
    assert "169.254.253.2 . udp . 30053 : goto reject-chain" in lb  # no endpoints: rejected
    assert "tcp . 8080 : 169.254.253.2 . 8080" in host and "udp . 30053 : 169.254.253.2 . 30053" in host
    sb.set_ports([MeshPort("tcp", 8080, 80, ("10.0.2.9",))])
    lb2, host2 = nft.runs[2][0], nft.runs[3][0]
    assert "add table" not in lb2 + host2 and "30053" in host2 and "8080" not in host2
    with pytest.raises(ValueError, match="/30"):
        IngressSandbox(tmp_path, link_subnet="169.254.0.0/24")


class SandboxDouble:
    def __init__(self, path: Path) -> None:
        self.netns_path = path
        self.calls: list[tuple[Any, ...]] = []

    def ensure_netns(self) -> Path:
        self.calls.append(("ensure_netns",))
        return self.netns_path

    def ensure_link(self, mtu: int) -> None:
        self.calls.append(("ensure_link", mtu))

    def set_ports(self, ports: Any) -> None:
        self.calls.append(("set_ports", list(ports)))

    def remove(self) -> None:
        self.calls.append(("remove",))


async def test_mesh_builds_follows_and_tears_down(tmp_path: Path) -> None:
    sb = SandboxDouble(tmp_path / "ingress_sbox")
    attached: list[tuple[NetworkConfig, EndpointConfig]] = []
    detached: list[EndpointConfig] = []

    async def attach(cfg: NetworkConfig, ep: EndpointConfig) -> Attachment:
        attached.append((cfg, ep))
        return Attachment(ep.network_id, ep.endpoint_id, ep.netns_path, ep.ifname, ep.address,
                          mac_from_ip(ep.address), 1350)

    async def detach(ep: EndpointConfig) -> None:
        detached.append(ep)

    m = Mesh(sb, attach, detach)  # type: ignore[arg-type]
    nets = {INGRESS_NET: peers_msg(INGRESS_NET)}
    await m.update(ingress_entry(WEB_PORT), nets, OVNODE, 4790)
    assert sb.calls[:4] == [("remove",), ("ensure_netns",), ("ensure_link", 1350),
                            ("set_ports", [MeshPort("tcp", 8080, 80, ("10.0.2.7", "10.0.2.9"))])]
    cfg, ep = attached[0]
    assert (cfg.network_id, cfg.data_path_port, cfg.vni) == (INGRESS_NET, 4790, 4098)
    assert ep == EndpointConfig(INGRESS_NET, SANDBOX_ENDPOINT_ID, str(sb.netns_path), "10.0.2.250/24", "eth1")
    n = len(sb.calls)
    await m.update(ingress_entry(), nets, OVNODE, 4790)  # ports only
    assert sb.calls[n:] == [("set_ports", [])] and len(attached) == 1
    await m.update(ingress_entry(address="10.0.2.251/24"), nets, OVNODE, 4790)  # a new address: rebuilt
    assert detached == [ep] and attached[-1][1].address == "10.0.2.251/24"
    n = len(sb.calls)
    await m.update(None, nets, OVNODE, 4790)  # no ingress any more
    assert sb.calls[n:] == [("remove",)] and len(detached) == 2 and m.endpoint is None
    n = len(sb.calls)
    await m.update(None, nets, OVNODE, 4790)  # nothing to do
    assert sb.calls[n:] == []
    await m.update(ingress_entry(WEB_PORT), {}, OVNODE, 4790)  # the network missing: logged, nothing made
    assert m.endpoint is None
    await m.close()
    assert sb.calls[-1] == ("remove",)


# -- the executor's calls --------------------------------------------------------------------------


class PlaneEnv(OvEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.nft = Nft()
        self.sandbox = SandboxDouble(tmp / "ingress_sbox")
        self.hp = HostPorts(nft=self.nft)
        self.vips = VipBalancers(nft=self.nft, conntrack=conntrack)
        self.ex = Executor(self.runtime, self.images, self.bridge, self.report, overlay=self.driver,
                           dns_sockets=self.dns_sockets, vips=self.vips, ingress_sandbox=self.sandbox,
                           host_ports=self.hp)


async def test_executor_drives_vips_mesh_host_ports_and_data_path_port(tmp_path: Path) -> None:
    e = PlaneEnv(tmp_path)
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"))
    t["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    nets = {NET_A: PUSH[NET_A], NET_B: peers_msg(NET_B)}
    await e.ex.set_assignments(OVNODE, [t], nets, ingress=ingress_entry(WEB_PORT), data_path_port=4790)
    await until(lambda: e.states(TID)[-1:] == ["running"])
    await e.ex.net.wait_idle()
    assert e.vips.tasks() == [TID]  # the task's VIP table
    assert e.ex.data_path_port == 4790
    ensured = [c[1] for c in e.driver.calls if c[0] == "ensure_network"]
    assert {c.network_id: c.data_path_port for c in ensured} == {NET_A: 4790, NET_B: 4790}
    attached = [c[1] for c in e.driver.calls if c[0] == "attach"]
    assert (SANDBOX_ENDPOINT_ID, "eth1") in [(a.endpoint_id, a.ifname) for a in attached]  # the mesh's sandbox
    assert e.hp.map.applied == {("tcp", 8080): ("10.200.1.7", 80)}  # host port → eth0 address
    # the ingress network keeps getting its peers: the sandbox is a local endpoint
    n = len(e.driver.calls)
    nets2 = {**nets, NET_B: peers_msg(NET_B, ("10.0.2.9", "192.0.2.2"))}
    await e.ex.set_assignments(OVNODE, [t], nets2, ingress=None)
    await e.ex.net.wait_idle()
    await until(lambda: ("detach", NET_B, SANDBOX_ENDPOINT_ID) in e.driver.calls[n:])
    # the task goes: its host port and VIP table go
    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}], nets2)
    await until(lambda: TID not in e.ex.task_states())
    await e.ex.net.wait_idle()
    assert e.hp.map.applied == {} and e.vips.tasks() == []
    await e.ex.close()
    assert e.hp.map.applied is None  # the table removed at close
    await asyncio.sleep(0)


def test_mesh_ports_mark_local_tasks_and_the_sandbox_sends_them_straight(tmp_path: Path) -> None:
    ports = mesh_ports(ingress_entry(WEB_PORT), {"10.0.2.9": "10.200.1.7", "10.0.1.5": "10.200.1.8"})
    assert ports == [MeshPort("tcp", 8080, 80, ("10.0.2.7", "10.0.2.9"), ("10.200.1.7",))]
    nft = Nft()
    sb = IngressSandbox(tmp_path, nft=nft, conntrack=conntrack)
    sb.set_ports([MeshPort("tcp", 8080, 80, ("10.0.2.7",))])
    assert len(nft.runs) == 2  # no local table while no port uses it
    sb.set_ports(ports)
    local, where = nft.runs[-1]
    assert where is None and local.startswith("add table ip shoal-mesh-local")
    assert "tcp . 8080 : goto svc-" in local and "meta l4proto tcp dnat to 10.200.1.7:80" in local
    sb.set_ports([MeshPort("tcp", 8080, 80, ("10.0.2.7",))])
    assert "delete element ip shoal-mesh-local local-ports { tcp . 8080 }" in nft.runs[-1][0]


async def test_a_mesh_that_saw_no_push_touches_nothing_at_close(tmp_path: Path) -> None:
    sb = SandboxDouble(tmp_path / "ingress_sbox")

    async def never(*a: Any) -> None:
        raise AssertionError("no attach/detach expected")

    m = Mesh(sb, never, never)  # type: ignore[arg-type]
    await m.close()
    assert sb.calls == []
    hp = HostPorts(nft=Nft())
    assert not hp.touched
