"""Tests of manager.allocator.Allocator: networks, services (VIPs, ports), tasks, rebuild."""

from __future__ import annotations

from typing import Any

import pytest

from manager.allocator import (
    AddressesExhausted,
    Allocator,
    InvalidArgument,
    NetworkNotFound,
    PortConflict,
    network_attachment,
)
from manager.allocator.vni import VNI_OPTION


def _svc(sid: str, name: str, nets: list[str], mode: str = "vip", ports: list[dict[str, Any]] | None = None,
         endpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"Mode": mode}
    if ports is not None:
        ep["Ports"] = ports
    s: dict[str, Any] = {"ID": sid, "Spec": {"Name": name, "TaskTemplate": {"Networks": [{"Target": n} for n in nets]},
                                             "EndpointSpec": ep}}
    if endpoint is not None:
        s["Endpoint"] = endpoint
    return s


def _task(tid: str, sid: str, nets: list[str] | None = None, atts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {} if nets is None else {"Networks": [{"Target": n} for n in nets]}
    return {"ID": tid, "ServiceID": sid, "Spec": spec, "NetworksAttachments": atts or []}


def _stored_network(a: Allocator, nid: str, name: str, ingress: bool = False) -> dict[str, Any]:
    got = a.network(nid)
    assert got is not None
    return {"ID": nid, "Spec": {"Name": name, "Ingress": ingress}, "DriverState": got.driver_state(),
            "IPAMOptions": got.ipam_options()}


def test_network_allocation_shapes() -> None:
    a = Allocator()
    got = a.allocate_network("n1", {"Name": "front", "IPAM": {"Config": [
        {"Subnet": "10.50.0.0/24", "Gateway": "10.50.0.254", "IPRange": "10.50.0.128/25"}]}})
    assert got.ipam_options() == {"Driver": {"Name": "default"}, "Configs": [
        {"Subnet": "10.50.0.0/24", "Gateway": "10.50.0.254", "Range": "10.50.0.128/25"}]}
    assert got.engine_ipam()["Config"] == [{"Subnet": "10.50.0.0/24", "Gateway": "10.50.0.254",
                                             "IPRange": "10.50.0.128/25"}]
    assert got.driver_state() == {"Name": "overlay", "Options": {VNI_OPTION: "4096"}}
    assert a.allocate_network("n1", {}) == got  # idempotent
    assert a.allocate_network("n2", {"Options": {VNI_OPTION: "5000"}}).vni == 5000
    with pytest.raises(InvalidArgument, match="already in use"):
        a.allocate_network("n3", {"Options": {VNI_OPTION: "5000"}})
    assert a.network("n3") is None
    assert a.allocate_network("n3", {}).vni == 4097


def test_vip_per_network_and_dnsrr_has_none() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    a.allocate_network("n2", {"Name": "back"})
    ep = a.allocate_service(_svc("s1", "web", ["front", "n2"]))
    assert ep["VirtualIPs"] == [{"NetworkID": "n1", "Addr": "10.0.0.2/24"}, {"NetworkID": "n2", "Addr": "10.0.1.2/24"}]
    assert ep["Spec"]["Mode"] == "vip" and ep["Ports"] == []
    dns = a.allocate_service(_svc("s2", "db", ["front"], mode="dnsrr", ports=[
        {"TargetPort": 5432, "PublishedPort": 5432, "PublishMode": "host"}]))
    assert dns["VirtualIPs"] == [] and dns["Ports"][0]["PublishMode"] == "host"
    assert a.addresses_in_use("n1") == 1


def test_default_endpoint_mode_is_vip() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    ep = a.allocate_service({"ID": "s", "Spec": {"Name": "x", "Networks": [{"Target": "n1"}]}})
    assert ep["Spec"] == {"Mode": "vip"} and len(ep["VirtualIPs"]) == 1


def test_dnsrr_with_ingress_ports_refused() -> None:
    a = Allocator()
    with pytest.raises(InvalidArgument, match="can't be used with dnsrr"):
        a.allocate_service(_svc("s", "x", [], mode="dnsrr", ports=[{"TargetPort": 80}]))
    with pytest.raises(InvalidArgument, match="endpoint mode"):
        a.allocate_service(_svc("s", "x", [], mode="round-robin"))


def test_ingress_network_gets_a_vip_and_task_address_when_ports_published() -> None:
    a = Allocator()
    a.allocate_network("ing", {"Name": "ingress", "Ingress": True})
    a.allocate_network("n1", {"Name": "front"})
    svc = _svc("s1", "web", ["front"], ports=[{"TargetPort": 80, "PublishedPort": 8080}])
    ep = a.allocate_service(svc)
    assert [v["NetworkID"] for v in ep["VirtualIPs"]] == ["n1", "ing"]
    svc["Endpoint"] = ep
    assert list(a.allocate_task(_task("t1", "s1"), svc)) == ["n1", "ing"]
    plain = _svc("s2", "api", ["front"])
    assert [v["NetworkID"] for v in a.allocate_service(plain)["VirtualIPs"]] == ["n1"]
    assert list(a.allocate_task(_task("t2", "s2"), plain)) == ["n1"]


def test_published_port_used_by_another_service_is_a_conflict() -> None:
    a = Allocator()
    a.allocate_service(_svc("s1", "web", [], ports=[{"TargetPort": 80, "PublishedPort": 8080}]))
    a.allocate_network("n1", {"Name": "front", "IPAM": {"Config": [{"Subnet": "10.9.0.0/30"}]}})
    with pytest.raises(PortConflict, match="service 'web'"):
        a.allocate_service(_svc("s2", "api", ["front"], ports=[{"TargetPort": 80, "PublishedPort": 8080}]))
    assert a.addresses_in_use("n1") == 0  # the VIP taken before the port check was given back


def test_subnet_too_small_for_replicas_leaves_tasks_pending() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "tiny", "IPAM": {"Config": [{"Subnet": "10.9.0.0/29"}]}})  # 5 addresses
    svc = _svc("s1", "web", ["tiny"])
    svc["Endpoint"] = a.allocate_service(svc)  # the VIP takes one
    got = [a.allocate_task(_task(f"t{i}", "s1"), svc) for i in range(4)]
    assert len({g["n1"] for g in got}) == 4
    with pytest.raises(AddressesExhausted, match="network tiny is out of addresses") as e:
        a.allocate_task(_task("t5", "s1"), svc)
    assert e.value.network == "tiny"
    a.deallocate_task(_task("t0", "s1", atts=[network_attachment({"ID": "n1"}, got[0]["n1"])]))
    assert a.allocate_task(_task("t5", "s1"), svc)["n1"] == got[0]["n1"]


def test_task_allocation_is_all_or_nothing() -> None:
    a = Allocator()
    a.allocate_network("big", {"Name": "big"})
    a.allocate_network("tiny", {"Name": "tiny", "IPAM": {"Config": [{"Subnet": "10.9.0.0/30"}]}})
    svc = _svc("s1", "web", ["big", "tiny"], mode="dnsrr")
    a.allocate_task(_task("t1", "s1"), svc)
    with pytest.raises(AddressesExhausted):
        a.allocate_task(_task("t2", "s1"), svc)
    assert a.addresses_in_use("big") == 1


def test_task_keeps_its_addresses_and_uses_its_own_spec_networks() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    a.allocate_network("n2", {"Name": "back"})
    svc = _svc("s1", "web", ["front"], mode="dnsrr")
    first = a.allocate_task(_task("t1", "s1"), svc)
    t1 = _task("t1", "s1", atts=[network_attachment({"ID": "n1"}, first["n1"]),
                                 {"Network": {"ID": "bridge-id"}, "Addresses": ["10.200.1.2/24"]}])
    assert a.allocate_task(t1, svc) == first
    assert list(a.allocate_task(_task("t2", "s1", nets=["back"]), svc)) == ["n2"]


def test_unknown_network_not_found() -> None:
    a = Allocator()
    with pytest.raises(NetworkNotFound, match="network nope not found"):
        a.allocate_service(_svc("s1", "web", ["nope"]))
    with pytest.raises(NetworkNotFound):
        a.allocate_task(_task("t", "s1", nets=["nope"]))
    with pytest.raises(NetworkNotFound):
        a.allocate_address("nope")


def test_service_update_keeps_vips_and_ports_and_frees_dropped_networks() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    a.allocate_network("n2", {"Name": "back"})
    svc = _svc("s1", "web", ["front", "back"], ports=[{"TargetPort": 80}])
    ep = a.allocate_service(svc)
    upd = _svc("s1", "web", ["front"], ports=[{"TargetPort": 80}], endpoint=ep)
    ep2 = a.allocate_service(upd)
    assert ep2["VirtualIPs"] == ep["VirtualIPs"][:1] and ep2["Ports"] == ep["Ports"]
    assert a.addresses_in_use("n2") == 0
    ep3 = a.allocate_service(_svc("s1", "web", ["front"], mode="dnsrr", endpoint=ep2))
    assert ep3["VirtualIPs"] == [] and a.addresses_in_use("n1") == 0
    a.deallocate_service({"ID": "s1", "Endpoint": ep3})
    assert a.allocate_service(_svc("s2", "x", [], ports=[{"TargetPort": 1, "PublishedPort": 30000}]))


def test_rebuild_from_objects_never_reuses_what_objects_hold() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    a.allocate_network("ing", {"Name": "ingress", "Ingress": True})
    svc = _svc("s1", "web", ["front"], ports=[{"TargetPort": 80}, {"TargetPort": 81, "PublishedPort": 8081}])
    svc["Endpoint"] = a.allocate_service(svc)
    tasks = []
    for i in range(3):
        t = _task(f"t{i}", "s1")
        got = a.allocate_task(t, svc)
        t["NetworksAttachments"] = [network_attachment(_stored_network(a, nid, nid), addr) for nid, addr in got.items()]
        tasks.append(t)
    node: dict[str, Any] = {"ID": "node1", "Attachments": [{"Network": {"ID": "n1"}, "Addresses": [a.allocate_address("n1")]}]}
    nets = [_stored_network(a, "n1", "front"), _stored_network(a, "ing", "ingress", ingress=True)]
    b = Allocator.from_objects(nets, [svc], tasks, nodes=[node])
    assert b.problems == []
    held = {v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]} | {x for t in tasks for att in t["NetworksAttachments"]
                                                              for x in att["Addresses"]}
    held |= set(node["Attachments"][0]["Addresses"])
    new = [b.allocate_address("n1") for _ in range(5)] + [b.allocate_address("ing") for _ in range(5)]
    assert not held & set(new)
    n9 = b.allocate_network("n9", {})
    assert (n9.subnet, n9.vni) == ("10.0.2.0/24", 4098) and b.network("n9") == n9
    with pytest.raises(PortConflict, match="'web'"):
        b.allocate_service(_svc("s2", "x", [], ports=[{"TargetPort": 1, "PublishedPort": 8081}]))
    assert b.allocate_service(_svc("s2", "x", [], ports=[{"TargetPort": 1}]))["Ports"][0]["PublishedPort"] == 30001
    # tasks of a known service keep their addresses after the rebuild
    assert b.allocate_task(tasks[0], svc) == {att["Network"]["ID"]: att["Addresses"][0]
                                              for att in tasks[0]["NetworksAttachments"]}


def test_rebuild_reads_engine_shaped_networks_and_reports_problems() -> None:
    nets = [
        {"Id": "x", "ID": "e1", "Name": "eng", "Options": {VNI_OPTION: "4200"},
         "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.7.0.0/24", "Gateway": "10.7.0.1"}]}},
        {"ID": "unallocated", "Spec": {"Name": "new"}},
        {"ID": "bad", "IPAM": {"Config": [{"Subnet": "nonsense"}]}, "Options": {VNI_OPTION: "4300"}},
        {"ID": "dupvni", "IPAM": {"Config": [{"Subnet": "10.8.0.0/24"}]}, "Options": {VNI_OPTION: "4200"}},
    ]
    tasks = [_task("t1", "s", atts=[{"Network": {"ID": "e1"}, "Addresses": ["10.7.0.2/24", "10.9.9.9/24"]}])]
    b = Allocator.from_objects(nets, [], tasks)
    assert b.network("e1") is not None and b.network("unallocated") is None and b.network("bad") is None
    assert len(b.problems) == 3  # bad subnet, VNI held twice, address outside its subnet
    assert b.allocate_address("e1") == "10.7.0.3/24"
    with pytest.raises(InvalidArgument, match="overlaps"):
        b.allocate_network("z", {"IPAM": {"Config": [{"Subnet": "10.8.0.0/16"}]}})  # dupvni's subnet still held
    assert b.allocate_network("z", {}).vni not in (4200,)
    b.deallocate_network("dupvni")
    with pytest.raises(InvalidArgument, match="already in use by network e1"):
        b.allocate_network("w", {"Options": {VNI_OPTION: "4200"}})


def test_deallocate_network_frees_subnet_and_vni() -> None:
    a = Allocator()
    n = a.allocate_network("n1", {"Name": "front"})
    a.deallocate_network("n1")
    a.deallocate_network("n1")
    m = a.allocate_network("n2", {"Name": "back"})
    assert m.subnet == n.subnet and m.vni == n.vni + 1  # subnet lowest-first, VNI serial
    assert a.resolve("back") == "n2" and a.ingress_network() is None


def test_addresses_have_holders_stale_objects_free_nothing() -> None:
    a = Allocator()
    a.allocate_network("n1", {"Name": "front"})
    svc = _svc("s1", "web", ["front"], mode="dnsrr")
    got = a.allocate_task(_task("t1", "s1"), svc)["n1"]
    # another task claiming t1's address neither keeps it nor frees it
    impostor = _task("t2", "s1", atts=[{"Network": {"ID": "n1"}, "Addresses": [got]}])
    assert a.allocate_task(impostor, svc)["n1"] != got
    a.deallocate_task(impostor)
    assert a.addresses_in_use("n1") == 2
    stale = {"ID": "s9", "Endpoint": {"VirtualIPs": [{"NetworkID": "n1", "Addr": got}]}}
    a.deallocate_service(stale)
    a.release_address("n1", got, "node:x")
    assert a.addresses_in_use("n1") == 2
    lb = a.allocate_address("n1", "node:x")
    a.release_address("n1", lb, "node:x")
    assert a.addresses_in_use("n1") == 2


def test_duplicate_address_in_store_first_holder_keeps_it_second_is_healed() -> None:
    a = Allocator()
    n = a.allocate_network("n1", {"Name": "front"})
    net = {"ID": "n1", "Spec": {"Name": "front"}, "DriverState": n.driver_state(), "IPAMOptions": n.ipam_options()}
    att = [{"Network": {"ID": "n1"}, "Addresses": ["10.0.0.5/24"]}]
    t1, t2 = _task("t1", "s1", atts=att), _task("t2", "s1", atts=att)
    b = Allocator.from_objects([net], [], [t1, t2])
    assert len(b.problems) == 1 and "already held by task:t1" in b.problems[0]
    svc = _svc("s1", "web", ["front"], mode="dnsrr")
    assert b.allocate_task(t1, svc) == {"n1": "10.0.0.5/24"}
    assert b.allocate_task(t2, svc)["n1"] != "10.0.0.5/24"
