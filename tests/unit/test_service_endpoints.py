"""Service endpoints, manager side (issue 9): VIPs and published ports allocated by the control API
in the create/update transaction, tasks carrying the service's Endpoint and joining the ingress
network when the service publishes ingress ports, a change of networks or published ports rolling
the tasks, nodes' load-balancer addresses on the ingress network, and the bad input (409 naming the
service holding a port, 400 for dnsrr with ingress ports, an unknown network, a malformed port).
Real loops on a real store (single-voter Raft log on a temp dir), a worker test double
(tests/unit/overlay_services.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.allocator.loop import NetworkAllocatorLoop, endpoint_is_stale, node_attachments_wanted
from manager.controlapi import networks, services
from manager.controlapi.errors import Conflict, FailedPrecondition, InvalidArgument
from manager.orchestrator import new_task
from shoal.base.views import task_needs_networks
from tests.unit.overlay_services import (
    Obj,
    cluster_ctx,
    live_tasks,
    overlay_attachments,
    running_loops,
    service_spec,
)
from tests.unit.test_api import _node, creating
from tests.unit.test_controlapi import Ctx
from tests.waiting import wait_until


def spec(name: str = "web", replicas: int = 2, nets: list[str] | None = None, ports: list[Obj] | None = None,
         mode: str | None = None) -> Obj:
    ep: Obj = {}
    if ports is not None:
        ep["Ports"] = ports
    if mode:
        ep["Mode"] = mode
    return service_spec(name, replicas, nets, UpdateConfig={"Parallelism": 0, "Monitor": 10_000_000},
                        **({"EndpointSpec": ep} if ep else {}))


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    async with cluster_ctx(tmp_path) as c:
        await networks.create_ingress(c)
        yield c


@pytest.fixture
async def loops(ctx: Ctx) -> AsyncIterator[None]:
    async with running_loops(ctx.store):
        yield


def _svc(ctx: Ctx, sid: str) -> Obj:
    s = ctx.store.view().get("services", sid)
    assert s is not None
    return s


def _ingress_id(ctx: Ctx) -> str:
    return next(n["ID"] for n in ctx.store.view().list("networks") if n["Spec"]["Ingress"])


def _running(ctx: Ctx, sid: str) -> list[Obj]:
    return [t for t in live_tasks(ctx, sid) if t["Status"]["State"] == "running"]


def _overlay_ids(t: Obj) -> list[str]:
    return [a["Network"]["ID"] for a in overlay_attachments(t)]


async def _update(ctx: Ctx, sid: str, body: Obj) -> None:
    await services.update(ctx, ref=sid, version=_svc(ctx, sid)["Version"]["Index"], spec_body=body)


# -- the control API: Endpoint on create and update -------------------------------------------------

async def test_create_allocates_vips_and_ports_as_docker_shows_them(ctx: Ctx) -> None:
    back = (await networks.create(ctx, spec_body={"Name": "back", "Driver": "overlay",
                                                  "IPAM": {"Config": [{"Subnet": "10.5.0.0/24"}]}}))["Id"]
    ing = _ingress_id(ctx)
    sid = (await services.create(ctx, spec_body=spec(nets=["back"], ports=[
        {"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 53, "Protocol": "udp"},
        {"TargetPort": 81, "PublishedPort": 9090, "PublishMode": "host"}])))["ID"]
    ep = services.inspect(ctx.store, sid)["Endpoint"]
    assert ep["Spec"]["Mode"] == "vip" and len(ep["Spec"]["Ports"]) == 3
    assert ep["Ports"][0] == {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}
    assert ep["Ports"][1]["Protocol"] == "udp" and 30000 <= ep["Ports"][1]["PublishedPort"] <= 32767
    assert ep["Ports"][2] == {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 9090, "PublishMode": "host"}
    vips = {v["NetworkID"]: v["Addr"] for v in ep["VirtualIPs"]}
    assert set(vips) == {back, ing}
    assert ipaddress.ip_interface(vips[back]) in ipaddress.ip_network("10.5.0.0/24") or \
        ipaddress.ip_interface(vips[back]).network == ipaddress.ip_network("10.5.0.0/24")

    # dnsrr: no VIPs; no ports: no Ports key
    dn = (await services.create(ctx, spec_body=spec(name="dn", nets=["back"], mode="dnsrr")))["ID"]
    ep = services.inspect(ctx.store, dn)["Endpoint"]
    assert ep["Spec"]["Mode"] == "dnsrr" and "VirtualIPs" not in ep and "Ports" not in ep

    # an update keeps the VIPs and the dynamic port it still uses
    before = _svc(ctx, sid)["Endpoint"]
    await _update(ctx, sid, spec(nets=["back"], replicas=3, ports=[
        {"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 53, "Protocol": "udp"}]))
    after = _svc(ctx, sid)["Endpoint"]
    assert after["VirtualIPs"] == before["VirtualIPs"] and after["Ports"] == before["Ports"][:2]
    # no more ingress ports: the ingress VIP goes, and its port is free for another service
    await _update(ctx, sid, spec(nets=["back"]))
    after = _svc(ctx, sid)["Endpoint"]
    assert [v["NetworkID"] for v in after["VirtualIPs"]] == [back] and "Ports" not in after
    other = (await services.create(ctx, spec_body=spec(name="other", ports=[{"TargetPort": 1, "PublishedPort": 8080}])))
    assert _svc(ctx, other["ID"])["Endpoint"]["Ports"][0]["PublishedPort"] == 8080


async def test_bad_input_is_refused_naming_the_cause(ctx: Ctx) -> None:
    web = (await services.create(ctx, spec_body=spec(ports=[{"TargetPort": 80, "PublishedPort": 8080}])))["ID"]
    # a published port held by another service: 409 naming it, on create and on update
    with pytest.raises(Conflict, match=rf"port '8080/tcp' is already in use by service 'web' \({web}\)") as e:
        await services.create(ctx, spec_body=spec(name="api", ports=[{"TargetPort": 81, "PublishedPort": 8080}]))
    assert e.value.status == 409
    api = (await services.create(ctx, spec_body=spec(name="api")))["ID"]
    with pytest.raises(Conflict, match="already in use by service 'web'"):
        await _update(ctx, api, spec(name="api", ports=[{"TargetPort": 81, "PublishedPort": 8080}]))
    assert "Ports" not in _svc(ctx, api)["Endpoint"]  # nothing written
    # the same port over UDP is another port
    await _update(ctx, api, spec(name="api", ports=[{"TargetPort": 81, "PublishedPort": 8080, "Protocol": "udp"}]))
    # dnsrr with an ingress port, malformed ports: 400
    for body, msg in ((spec(name="d", mode="dnsrr", ports=[{"TargetPort": 80}]), "can't be used with dnsrr mode"),
                      (spec(name="d", ports=[{"TargetPort": 80, "PublishedPort": 70000}]), "published port 70000"),
                      (spec(name="d", ports=[{"TargetPort": 80, "Protocol": "gre"}]), "invalid protocol"),
                      (spec(name="d", nets=["nowhere"]), "network nowhere not found")):
        with pytest.raises(InvalidArgument, match=msg) as bad:
            await services.create(ctx, spec_body=body)
        assert bad.value.status == 400
    # dnsrr with a host-mode port is fine (no routing mesh); two services may share a host-mode port
    h = (await services.create(ctx, spec_body=spec(name="h", mode="dnsrr", ports=[
        {"TargetPort": 80, "PublishedPort": 8081, "PublishMode": "host"}])))["ID"]
    await services.create(ctx, spec_body=spec(name="h2", ports=[
        {"TargetPort": 80, "PublishedPort": 8081, "PublishMode": "host"}]))
    # but a host-mode port is not another service's ingress port, nor the other way round
    with pytest.raises(Conflict, match=rf"port '8080/tcp' is already in use by service 'web' \({web}\) as an ingress"):
        await services.create(ctx, spec_body=spec(name="h3", ports=[
            {"TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]))
    with pytest.raises(Conflict, match=rf"port '8081/tcp' is already in use by service 'h' \({h}\) as a host-published"):
        await services.create(ctx, spec_body=spec(name="h4", ports=[{"TargetPort": 80, "PublishedPort": 8081}]))
    # the ingress network cannot go while a service publishes on it: refused naming the service
    with pytest.raises(FailedPrecondition, match=r"ingress network cannot be removed because service (api|web) \(\w+\) depends on it"):
        await networks.remove(ctx, ref="ingress")


async def test_the_swarms_own_ports_cannot_be_published(ctx: Ctx) -> None:
    """The cluster port (2377/tcp, and a manager's own port) and the VXLAN data path port (UDP,
    the cluster's DataPathPort) are refused in either publish mode, on create and update: a
    published port is DNATed on every node before the node's own sockets see it."""
    for port, proto, mode, what in ((2377, "tcp", "ingress", "the swarm's cluster port"),
                                    (2377, "tcp", "host", "the swarm's cluster port"),
                                    (4789, "udp", "ingress", "the swarm's VXLAN data path port"),
                                    (4789, "udp", "host", "the swarm's VXLAN data path port")):
        with pytest.raises(InvalidArgument, match=rf"published port {port}/{proto} is reserved: it is {what}") as e:
            await services.create(ctx, spec_body=spec(name="bad", ports=[
                {"TargetPort": 80, "PublishedPort": port, "Protocol": proto, "PublishMode": mode}]))
        assert e.value.status == 400
    assert all(s["Spec"]["Name"] != "bad" for s in ctx.store.view().list("services"))
    # 4789/tcp and 2377/udp are other ports
    ok = (await services.create(ctx, spec_body=spec(name="ok", ports=[
        {"TargetPort": 80, "PublishedPort": 4789}, {"TargetPort": 80, "PublishedPort": 2377, "Protocol": "udp"}])))["ID"]
    with pytest.raises(InvalidArgument, match="published port 2377/tcp is reserved"):
        await _update(ctx, ok, spec(name="ok", ports=[{"TargetPort": 80, "PublishedPort": 2377}]))

    # the cluster's own data path port and a manager's port, as the store holds them
    def set_ports(tx: Any) -> None:
        c = tx.list("cluster")[0]
        c["DataPathPort"] = 7789
        tx.update("cluster", c)
        n = tx.get("nodes", "node1abc")
        n["ManagerStatus"] = {"Addr": "10.99.0.11:4242", "Reachability": "reachable", "Leader": True}
        tx.update("nodes", n)
    await ctx.store.update(set_ports)
    for port, proto, what in ((7789, "udp", "the swarm's VXLAN data path port"),
                              (4242, "tcp", "a manager's cluster port")):
        with pytest.raises(InvalidArgument, match=rf"published port {port}/{proto} is reserved: it is {what}"):
            await services.create(ctx, spec_body=spec(name="bad", ports=[
                {"TargetPort": 80, "PublishedPort": port, "Protocol": proto}]))


async def test_ingress_ports_need_an_ingress_network(ctx: Ctx) -> None:
    await networks.remove(ctx, ref="ingress")
    with pytest.raises(FailedPrecondition, match="no ingress network"):
        await services.create(ctx, spec_body=spec(ports=[{"TargetPort": 80, "PublishedPort": 8080}]))
    # host mode needs none
    await services.create(ctx, spec_body=spec(ports=[{"TargetPort": 80, "PublishedPort": 8080,
                                                      "PublishMode": "host"}]))
    # and `docker network create --ingress` makes one again
    await networks.create(ctx, spec_body={"Name": "mesh", "Driver": "overlay", "Ingress": True})
    await services.create(ctx, spec_body=spec(name="pub", ports=[{"TargetPort": 80, "PublishedPort": 8090}]))


# -- tasks: the Endpoint copy, the ingress network, rolling on changes -------------------------------

def test_new_tasks_carry_the_services_endpoint() -> None:
    svc = {"ID": "s1", "Spec": {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "b"}}},
           "Endpoint": {"Spec": {"Mode": "vip", "Ports": [{"TargetPort": 80, "PublishMode": "ingress"}]},
                        "Ports": [{"TargetPort": 80, "PublishedPort": 30000, "PublishMode": "ingress"}]}}
    t = new_task(svc, 1, "2026-01-01T00:00:00Z")
    assert t["Endpoint"] == svc["Endpoint"] and t["Endpoint"] is not svc["Endpoint"]
    assert task_needs_networks(t)  # no Spec.Networks, but ingress ports: it waits for the allocator
    host = dict(svc, Endpoint={"Spec": {}, "Ports": [{"TargetPort": 80, "PublishedPort": 80, "PublishMode": "host"}]})
    assert not task_needs_networks(new_task(host, 1, "2026-01-01T00:00:00Z"))


async def test_published_service_tasks_join_ingress_and_roll_on_changes(ctx: Ctx, loops: None) -> None:
    ing = _ingress_id(ctx)
    back = (await networks.create(ctx, spec_body={"Name": "back", "Driver": "overlay"}))["Id"]
    sid = (await services.create(ctx, spec_body=spec(ports=[{"TargetPort": 80, "PublishedPort": 8080}])))["ID"]
    ts = await wait_until(lambda: (r := _running(ctx, sid)) and len(r) == 2 and r, 10, "2 running tasks")
    for t in ts:
        assert _overlay_ids(t) == [ing]
        assert t["Endpoint"]["Ports"][0]["PublishedPort"] == 8080
    first = {t["ID"] for t in ts}

    # --network-add back: new tasks on back and ingress
    await _update(ctx, sid, spec(nets=["back"], ports=[{"TargetPort": 80, "PublishedPort": 8080}]))
    ts = await wait_until(lambda: (r := _running(ctx, sid)) and len(r) == 2 and not first & {t["ID"] for t in r}
                          and r, 10, "2 new tasks on back and ingress")
    assert all(_overlay_ids(t) == [back, ing] for t in ts)
    second = {t["ID"] for t in ts}

    # --publish-rm: tasks roll, off the ingress network; the service's ingress VIP is freed
    await _update(ctx, sid, spec(nets=["back"]))
    ts = await wait_until(lambda: (r := _running(ctx, sid)) and len(r) == 2 and not second & {t["ID"] for t in r}
                          and r, 10, "2 new tasks without the ingress network")
    assert all(_overlay_ids(t) == [back] and "Ports" not in t["Endpoint"] for t in ts)
    assert [v["NetworkID"] for v in _svc(ctx, sid)["Endpoint"]["VirtualIPs"]] == [back]
    third = {t["ID"] for t in ts}

    # --publish-add of a host-mode port alone rolls too (the node opens it from the task's Endpoint)
    await _update(ctx, sid, spec(nets=["back"], ports=[{"TargetPort": 80, "PublishedPort": 9000,
                                                        "PublishMode": "host"}]))
    ts = await wait_until(lambda: (r := _running(ctx, sid)) and len(r) == 2 and not third & {t["ID"] for t in r}
                          and r, 10, "2 new tasks with the host port")
    assert all(t["Endpoint"]["Ports"][0]["PublishMode"] == "host" for t in ts)


# -- nodes' load-balancer addresses ----------------------------------------------------------------

def test_node_attachments_wanted() -> None:
    nets = {"ing": {"ID": "ing"}}
    up = {"ID": "n1", "Status": {"State": "ready"}}
    assert node_attachments_wanted(up, "ing", nets) == ["ing"]
    assert node_attachments_wanted(up, None, nets) is None
    assert node_attachments_wanted({**up, "Status": {"State": "down"}}, "ing", nets) is None
    has = {**up, "Attachments": [{"Network": {"ID": "ing"}, "Addresses": ["10.0.0.3/24"]}]}
    assert node_attachments_wanted(has, "ing", nets) is None
    gone = {**up, "Attachments": [{"Network": {"ID": "old"}, "Addresses": ["10.0.0.3/24"]}]}
    assert node_attachments_wanted(gone, None, nets) == []
    assert node_attachments_wanted(gone, "ing", nets) == ["ing"]


async def test_nodes_get_ingress_addresses_freed_with_the_network(ctx: Ctx) -> None:
    loop = NetworkAllocatorLoop(ctx.store)
    await loop.tick()
    ing = _ingress_id(ctx)
    nodes = ctx.store.view().list("nodes")
    addrs = []
    for n in nodes:
        (att,) = n["Attachments"]
        assert att["Network"]["ID"] == ing and att["Network"]["Spec"]["Ingress"]
        addrs.append(att["Addresses"][0])
    assert len(set(addrs)) == 2 and all(ipaddress.ip_interface(a).network.prefixlen == 24 for a in addrs)
    # a service's VIP on ingress never takes a node's address, nor the other way round
    sid = (await services.create(ctx, spec_body=spec(ports=[{"TargetPort": 80}])))["ID"]
    vip = _svc(ctx, sid)["Endpoint"]["VirtualIPs"][0]["Addr"]
    assert vip not in addrs
    await loop.tick()  # stable: nothing rewritten
    assert [n["Attachments"] for n in ctx.store.view().list("nodes")] == [n["Attachments"] for n in nodes]
    await services.remove(ctx, ref=sid)
    # the network removed: the nodes' attachments go; a new ingress network gives new ones
    await networks.remove(ctx, ref="ingress")
    await loop.tick()
    assert all(n["Attachments"] == [] for n in ctx.store.view().list("nodes"))
    await networks.create(ctx, spec_body={"Name": "mesh", "Driver": "overlay", "Ingress": True})
    await loop.tick()
    assert all(len(n["Attachments"]) == 1 for n in ctx.store.view().list("nodes"))
    # a node that is down gets none (but keeps the one it has)
    await ctx.store.update(creating("nodes", {**_node("node3abc", "h3"), "Status": {"State": "down"}}))
    await loop.tick()
    assert not ctx.store.view().get("nodes", "node3abc").get("Attachments")  # type: ignore[union-attr]


def test_endpoint_is_stale() -> None:
    ports = [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}]
    svc = {"Spec": {"EndpointSpec": {"Mode": "vip", "Ports": ports}}, "Endpoint": {"Spec": {"Mode": "vip", "Ports": ports}}}
    assert not endpoint_is_stale(svc)
    assert endpoint_is_stale({**svc, "Endpoint": {"Spec": {"Mode": "vip"}}})
    assert not endpoint_is_stale({"Spec": {}, "Endpoint": {"Spec": {"Mode": "vip"}}})
