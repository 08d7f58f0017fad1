"""manager.controlapi.networks on a real Store (single-voter Raft log on a temp dir): create,
inspect, list and its filters, remove; every refused input with its class, HTTP status and
message; allocations that survive a store reopen; a follower forwarding ``networks.create``
to the leader through ``control.call``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.controlapi import control, networks
from manager.controlapi.errors import (
    BY_NAME,
    Conflict,
    ControlError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from manager.specs import default_swarm_spec
from manager.store import Store
from tests.stores import open_store
from tests.unit.test_controlapi import Ctx, LinkToLeader

VNI = networks.VNI_OPTION


def req(name: str, subnet: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``NetworkCreateRequest`` as ``docker network create -d overlay [--subnet]`` sends it."""
    body: dict[str, Any] = {"Name": name, "Driver": "overlay", "IPAM": {"Driver": "default", "Config": []}}
    if subnet:
        body["IPAM"]["Config"] = [{"Subnet": subnet}]
    body.update(extra)
    return body


async def _cluster(store: Store) -> None:
    """The cluster object and one node, at 192.168.77.1 with the local bridge 10.200.1.0/24
    (what no overlay subnet may overlap)."""
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    await store.update(lambda tx: tx.create("nodes", {
        "ID": "node1abc", "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
        "Description": {"Hostname": "h1"}, "Status": {"State": "ready", "Addr": "192.168.77.1"},
        "ShoalBridge": {"Subnet": "10.200.1.0/24", "Gateway": "10.200.1.1"}}))


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    store = await open_store(tmp_path / "raft")
    await _cluster(store)
    try:
        yield Ctx(store)
    finally:
        await store.close()


async def _service(store: Store, sid: str, name: str, nets: list[str] | None = None,
                   ports: list[dict[str, Any]] | None = None, old_style: bool = False) -> None:
    """A service written straight to the store (targets as given: names or IDs)."""
    spec: dict[str, Any] = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                            "Mode": {"Replicated": {"Replicas": 1}}}
    if nets is not None:
        targets = [{"Target": n} for n in nets]
        if old_style:
            spec["Networks"] = targets
        else:
            spec["TaskTemplate"]["Networks"] = targets
    if ports is not None:
        spec["EndpointSpec"] = {"Mode": "vip", "Ports": ports}
    await store.update(lambda tx: tx.create("services", {"ID": sid, "Spec": spec}))


def _vni(n: dict[str, Any]) -> int:
    return int(n["Options"][VNI])


async def test_create_stores_swarmkits_shape_and_inspect_shows_dockers(ctx: Ctx) -> None:
    got = await networks.create(ctx, spec_body=req("front", "10.9.0.0/24", Attachable=True, Internal=True,
                                                   Labels={"tier": "web"},
                                                   Options={"com.docker.network.driver.mtu": "1400"}))
    assert set(got) == {"Id", "Warning"} and got["Warning"] == ""
    stored = ctx.store.view().get("networks", got["Id"])
    assert stored is not None
    assert stored["Spec"] == {
        "Name": "front", "Labels": {"tier": "web"},
        "DriverConfiguration": {"Name": "overlay", "Options": {"com.docker.network.driver.mtu": "1400"}},
        "IPv6Enabled": False, "Internal": True, "Attachable": True, "Ingress": False,
        "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": "10.9.0.0/24"}]}, "Scope": "swarm"}
    assert stored["IPAMOptions"] == {"Driver": {"Name": "default"},
                                     "Configs": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]}
    assert stored["DriverState"]["Name"] == "overlay"
    assert int(stored["DriverState"]["Options"][VNI]) >= 4096
    assert stored["Version"]["Index"] > 0 and stored["CreatedAt"] and stored["UpdatedAt"]

    n = networks.inspect(ctx.store, "front")
    assert n == {
        "Name": "front", "Id": got["Id"], "Created": stored["CreatedAt"], "Scope": "swarm", "Driver": "overlay",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]},
        "Internal": True, "Attachable": True, "Ingress": False, "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
        "Containers": {}, "Options": {"com.docker.network.driver.mtu": "1400", VNI: stored["DriverState"]["Options"][VNI]},
        "Labels": {"tier": "web"}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", n["Created"])
    # by ID, by unique ID prefix, by name
    assert networks.inspect(ctx.store, got["Id"])["Id"] == got["Id"]
    assert networks.inspect(ctx.store, got["Id"][:6])["Id"] == got["Id"]


async def test_defaults_keys_and_gateway_range(ctx: Ctx) -> None:
    # no subnet: the first /24 of the default pool; keys matched case-insensitively as Go does
    a = await networks.create(ctx, spec_body={"name": "a", "driver": "overlay"})
    assert networks.inspect(ctx.store, a["Id"])["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    b = await networks.create(ctx, spec_body=req("b"))
    assert networks.inspect(ctx.store, "b")["IPAM"]["Config"][0]["Subnet"] == "10.0.1.0/24"
    c = await networks.create(ctx, spec_body={"Name": "c", "Driver": "overlay", "IPAM": {"Config": [
        {"Subnet": "172.28.0.0/16", "Gateway": "172.28.5.254", "IPRange": "172.28.5.0/24"}]}})
    assert networks.inspect(ctx.store, c["Id"])["IPAM"]["Config"] == [
        {"Subnet": "172.28.0.0/16", "Gateway": "172.28.5.254", "IPRange": "172.28.5.0/24"}]
    vnis = {_vni(networks.inspect(ctx.store, x["Id"])) for x in (a, b, c)}
    assert len(vnis) == 3
    # a VXLAN ID asked for in the options is the one given
    d = await networks.create(ctx, spec_body=req("d", Options={VNI: "5000"}))
    assert _vni(networks.inspect(ctx.store, d["Id"])) == 5000
    with pytest.raises(InvalidArgument, match="VXLAN ID 5000"):
        await networks.create(ctx, spec_body=req("e", Options={VNI: "5000"}))


async def test_list_and_filters(ctx: Ctx) -> None:
    ids = {}
    for name, labels in (("web-net", {"tier": "web"}), ("db-net", {"tier": "db", "x": ""}), ("webby", {})):
        ids[name] = (await networks.create(ctx, spec_body=req(name, Labels=labels)))["Id"]

    def names(filters: dict[str, list[str]] | None = None) -> list[str]:
        return [n["Name"] for n in networks.list_networks(ctx.store, filters)]

    assert names() == ["db-net", "web-net", "webby"]
    assert names({"name": ["web"]}) == ["web-net", "webby"]
    assert names({"name": ["^web-net$"]}) == ["web-net"]
    assert names({"name": ["net$"]}) == ["db-net", "web-net"]
    assert names({"name": ["^db", "^webby"]}) == ["db-net", "webby"]
    assert names({"id": [ids["db-net"][:8]]}) == ["db-net"]
    assert names({"label": ["tier"]}) == ["db-net", "web-net"]
    assert names({"label": ["tier=web"]}) == ["web-net"]
    assert names({"label": ["tier", "x"]}) == ["db-net"]
    assert names({"driver": ["overlay"]}) == names()
    assert names({"driver": ["bridge"]}) == []
    assert names({"scope": ["swarm"]}) == names()
    assert names({"scope": ["local"]}) == []
    assert names({"type": ["custom"]}) == names()
    assert names({"type": ["builtin"]}) == []
    with pytest.raises(InvalidArgument, match="^invalid filter 'dangling'$"):
        names({"dangling": ["true"]})
    with pytest.raises(InvalidArgument, match="^invalid filter 'type=odd'$"):
        names({"type": ["odd"]})
    with pytest.raises(InvalidArgument, match="^invalid filter 'scope=planet'$"):
        names({"scope": ["planet"]})


BAD = "^rpc error: code = InvalidArgument desc = "


@pytest.mark.parametrize(("body", "message"), [
    ({"Driver": "overlay"}, BAD + "meta: name must be provided$"),
    (req("bad name!"), BAD + "name must be valid as a DNS name component$"),
    (req("x" * 64), BAD + "name must be valid as a DNS name component$"),
    ({"Name": "n"}, BAD + "network driver 'bridge' is not supported for swarm networks: shoal creates overlay "
                          "networks only \\(--driver overlay\\)$"),
    (req("n", Driver="macvlan"), BAD + "network driver 'macvlan' is not supported"),
    (req("n", Options={"encrypted": ""}), BAD + "encrypted overlay networks are not supported by shoal: .*ESP.*WireGuard"),
    (req("n", "10.1.0.0/33"), BAD + "ipam configuration: invalid subnet 10.1.0.0/33$"),
    (req("n", "banana"), BAD + "ipam configuration: invalid subnet banana$"),
    ({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "Gateway": "10.2.0.1"}]}},
     BAD + "ipam configuration: subnet 10.1.0.0/24 does not contain gateway 10.2.0.1$"),
    ({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "IPRange": "10.3.0.0/25"}]}},
     BAD + "ipam configuration: subnet 10.1.0.0/24 does not contain range 10.3.0.0/25$"),
    ({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Gateway": "10.2.0.1"}]}}, BAD + "ipam configuration: a gateway"),
    ({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}, {"Subnet": "10.2.0.0/24"}]}},
     BAD + "ipam configuration: shoal supports one subnet per overlay network$"),
    ({"Name": "n", "Driver": "overlay", "IPAM": {"Driver": "infoblox"}}, BAD + "invalid IPAM driver 'infoblox'"),
    (req("n", "fd00::/64"), BAD + "ipam configuration: invalid subnet fd00::/64: IPv6"),
    (req("n", EnableIPv6=True), BAD + "IPv6 overlay networks are not supported"),
    (req("n", Scope="local"), BAD + "network scope 'local' is not supported"),
    (req("n", Ingress=True, Attachable=True), BAD + "ingress network cannot be attachable$"),
    (req("n", Attachable="yes"), BAD + "json: cannot unmarshal str into Go struct field CreateRequest.Attachable of type bool$"),
    (req("n", Labels={"a": 1}), BAD + "json: cannot unmarshal into Go struct field CreateRequest.Labels"),
    (["n"], BAD + "json: cannot unmarshal list into Go value of type network.CreateRequest$"),
    # subnets that cannot carry task addresses, and what the nodes themselves use
    (req("n", "127.0.0.0/24"), BAD + r"ipam configuration: invalid subnet 127.0.0.0/24: it overlaps 127.0.0.0/8 \(loopback"),
    (req("n", "224.1.0.0/24"), BAD + r".*224.0.0.0/4 \(multicast"),
    (req("n", "169.254.253.0/24"), BAD + r".*169.254.0.0/16 \(link-local addresses \(the routing mesh's link"),
    (req("n", "0.0.0.0/8"), BAD + r".*'this network'"),
    (req("n", "10.200.1.0/24"), BAD + r".*overlaps .*host route 10.200.0.0/16"),
    (req("n", "192.168.77.0/24"), BAD + r".*overlaps .*host route 192.168.77.1/32"),
    (req("n", Options={"com.docker.network.driver.mtu": "x"}),
     BAD + "invalid com.docker.network.driver.mtu 'x': expected an integer number of bytes$"),
    (req("n", Options={"com.docker.network.driver.mtu": "99999"}),
     BAD + "invalid com.docker.network.driver.mtu 99999: must be between 68 and 65485$"),
])
async def test_bad_requests_are_400(ctx: Ctx, body: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as e:
        await networks.create(ctx, spec_body=body)
    assert e.value.status == 400
    assert ctx.store.view().list("networks") == []


async def test_permission_denied_names_and_labels(ctx: Ctx) -> None:
    with pytest.raises(PermissionDenied, match="^bridge is a pre-defined network and cannot be created$") as e:
        await networks.create(ctx, spec_body=req("bridge"))
    assert e.value.status == 403
    with pytest.raises(PermissionDenied, match="^label com.docker.swarm.internal is for predefined"):
        await networks.create(ctx, spec_body=req("n", Labels={"com.docker.swarm.internal": "true"}))


async def test_duplicate_name_overlap_and_second_ingress(ctx: Ctx) -> None:
    first = await networks.create(ctx, spec_body=req("app", "10.1.0.0/16"))
    with pytest.raises(Conflict, match="^network with name app already exists$") as e:
        await networks.create(ctx, spec_body=req("app", "10.2.0.0/16"))
    assert e.value.status == 409
    with pytest.raises(Conflict, match="^network with name APP already exists$"):  # swarmkit's names fold case
        await networks.create(ctx, spec_body=req("APP"))
    with pytest.raises(InvalidArgument, match=BAD + r"invalid pool request: .*subnet 10\.1\.2\.0/24 overlaps with "
                                              r"network \"app\" \(10\.1\.0\.0/16\)$") as bad:
        await networks.create(ctx, spec_body=req("other", "10.1.2.0/24"))
    assert bad.value.status == 400
    with pytest.raises(InvalidArgument, match=r"overlaps with network \"app\""):
        await networks.create(ctx, spec_body=req("wider", "10.0.0.0/8"))
    # the default pool skips what is taken
    auto = await networks.create(ctx, spec_body=req("auto"))
    assert networks.inspect(ctx.store, auto["Id"])["IPAM"]["Config"][0]["Subnet"] == "10.0.0.0/24"

    ing = await networks.create_ingress(ctx)
    n = networks.inspect(ctx.store, "ingress")
    assert n["Id"] == ing["Id"] and n["Ingress"] is True and n["IPAM"]["Config"] == [
        {"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]  # the next free default subnet ("auto" took 10.0.0.0/24)
    assert await networks.create_ingress(ctx) == ing  # idempotent: swarm init may retry
    with pytest.raises(Conflict, match=rf"^rpc error: code = AlreadyExists desc = ingress network ingress \({ing['Id']}\) "
                                       r"is already present$") as e:
        await networks.create(ctx, spec_body=req("ingress2", Ingress=True))
    assert e.value.status == 409
    assert sorted(x["Name"] for x in networks.list_networks(ctx.store)) == ["app", "auto", "ingress"]
    assert first["Id"] in {x["Id"] for x in networks.list_networks(ctx.store)}


async def test_ingress_takes_10_0_0_0_24_on_a_new_cluster(ctx: Ctx) -> None:
    ing = await networks.create_ingress(ctx)
    n = networks.inspect(ctx.store, ing["Id"])
    assert (n["Name"], n["Ingress"], n["Driver"], n["Scope"]) == ("ingress", True, "overlay", "swarm")
    assert n["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    assert networks.ingress_request() == {"Name": "ingress", "Driver": "overlay", "Ingress": True,
                                          "IPAM": {"Driver": "default", "Config": []}}


async def test_the_cluster_default_address_pool_is_used(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        await store.update(lambda tx: tx.create("cluster", {"ID": "c", "Spec": default_swarm_spec(),
                                                            "DefaultAddrPool": ["192.168.0.0/16"], "SubnetSize": 26}))
        ing = await networks.create_ingress(Ctx(store))
        assert networks.inspect(store, ing["Id"])["IPAM"]["Config"] == [{"Subnet": "192.168.0.0/26",
                                                                          "Gateway": "192.168.0.1"}]
    finally:
        await store.close()


async def test_remove_refused_while_in_use_then_released(ctx: Ctx) -> None:
    net = await networks.create(ctx, spec_body=req("backend", "10.5.0.0/24"))
    await _service(ctx.store, "svc1", "api", [net["Id"]])
    await _service(ctx.store, "svc2", "worker", ["backend"], old_style=True)
    with pytest.raises(FailedPrecondition, match=rf"^rpc error: code = FailedPrecondition desc = network backend "
                                                 rf"\({net['Id']}\) is in use by services api \(svc1\), "
                                                 r"worker \(svc2\)$") as e:
        await networks.remove(ctx, ref="backend")
    assert e.value.status == 400
    await ctx.store.update(lambda tx: tx.delete("services", "svc1"))
    with pytest.raises(FailedPrecondition, match=r"in use by service worker \(svc2\)$"):
        await networks.remove(ctx, ref=net["Id"][:5])
    await ctx.store.update(lambda tx: tx.delete("services", "svc2"))
    # a task still running on it (its service gone) keeps it too
    task = {"ID": "t1", "Name": "worker.1.t1", "ServiceID": "svc2", "Status": {"State": "running"},
            "DesiredState": "shutdown", "NetworksAttachments": [{"Network": {"ID": net["Id"]},
                                                                  "Addresses": ["10.5.0.3/24"]}]}
    await ctx.store.update(lambda tx: tx.create("tasks", task))
    with pytest.raises(FailedPrecondition, match=r"in use by task worker\.1\.t1 \(t1\)$"):
        await networks.remove(ctx, ref="backend")
    await ctx.store.update(lambda tx: tx.update("tasks", dict(task, Status={"State": "shutdown"})))
    await networks.remove(ctx, ref="backend")
    assert ctx.store.view().list("networks") == []
    with pytest.raises(NotFound, match="^network backend not found$") as missing:
        await networks.remove(ctx, ref="backend")
    assert missing.value.status == 404
    # its subnet is free again
    again = await networks.create(ctx, spec_body=req("backend2", "10.5.0.0/24"))
    assert networks.inspect(ctx.store, again["Id"])["IPAM"]["Config"][0]["Subnet"] == "10.5.0.0/24"


async def test_ingress_removal_refused_while_a_service_publishes(ctx: Ctx) -> None:
    ing = await networks.create_ingress(ctx)
    await _service(ctx.store, "svc1", "web", ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}])
    with pytest.raises(FailedPrecondition, match=r"ingress network cannot be removed because service web \(svc1\) "
                                                 r"depends on it$"):
        await networks.remove(ctx, ref="ingress")
    await ctx.store.update(lambda tx: tx.delete("services", "svc1"))
    await networks.remove(ctx, ref=ing["Id"])


async def test_unknown_and_ambiguous_refs(ctx: Ctx) -> None:
    with pytest.raises(NotFound, match="^network nope not found$") as e:
        networks.inspect(ctx.store, "nope")
    assert e.value.status == 404
    with pytest.raises(NotFound, match="^network nope not found$"):
        await networks.remove(ctx, ref="nope")
    with pytest.raises(NotFound, match="^network  not found$"):
        networks.inspect(ctx.store, "")
    for i in (1, 2):  # IDs of our choosing, for a prefix both share
        net = {"ID": f"abc{i}", "Spec": {"Name": f"n{i}"}}
        await ctx.store.update(lambda tx, net=net: tx.create("networks", net))  # type: ignore[misc]
    with pytest.raises(InvalidArgument, match=r"^network abc is ambiguous \(2 matches found\)$") as amb:
        networks.inspect(ctx.store, "abc")
    assert amb.value.status == 400
    assert networks.inspect(ctx.store, "abc2")["Name"] == "n2"


async def test_allocations_survive_a_store_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    await _cluster(store)
    try:
        for name in ("one", "two", "three"):
            await networks.create(Ctx(store), spec_body=req(name))
    finally:
        await store.close()
    store = await open_store(tmp_path / "raft")
    try:
        assert len(store.view().list("networks")) == 3
        await networks.create(Ctx(store), spec_body=req("four"))
        nets = networks.list_networks(store)
        subnets = [n["IPAM"]["Config"][0]["Subnet"] for n in nets]
        vnis = [_vni(n) for n in nets]
        assert len(nets) == 4 and len(set(subnets)) == 4 and len(set(vnis)) == 4
        assert networks.inspect(store, "four")["IPAM"]["Config"][0]["Subnet"] == "10.0.3.0/24"
    finally:
        await store.close()


async def test_a_follower_forwards_networks_create_and_remove(ctx: Ctx, tmp_path: Path) -> None:
    lagging = await open_store(tmp_path / "lagging")
    try:
        follower = Ctx(lagging, leader=False)
        link = LinkToLeader(ctx)
        follower.leader_link = link
        ctl = control.Control(follower)
        got = await ctl.call("networks.create", {"spec_body": req("shared", "10.7.0.0/24")})
        assert link.sent == [("control.call", {"call": "networks.create",
                                               "args": {"spec_body": req("shared", "10.7.0.0/24")}})]
        assert networks.inspect(ctx.store, "shared")["Id"] == got["Id"]
        assert lagging.view().list("networks") == []  # written on the leader only
        # the leader's errors come back as the same class and message
        with pytest.raises(Conflict, match="^network with name shared already exists$"):
            await ctl.call("networks.create", {"spec_body": req("shared")})
        with pytest.raises(InvalidArgument, match=r"overlaps with network \"shared\""):
            await ctl.call("networks.create", {"spec_body": req("other", "10.7.0.0/16")})
        await _service(ctx.store, "svc1", "api", ["shared"])
        with pytest.raises(FailedPrecondition, match=r"in use by service api \(svc1\)$"):
            await ctl.call("networks.remove", {"ref": "shared"})
        await ctx.store.update(lambda tx: tx.delete("services", "svc1"))
        await ctl.call("networks.remove", {"ref": "shared"})
        assert ctx.store.view().list("networks") == []
        with pytest.raises(NotFound):
            await ctl.call("networks.remove", {"ref": "shared"})
        with pytest.raises(InvalidArgument, match="^networks.remove: argument ref must be str$"):
            await ctl.call("networks.remove", {"ref": 5})
        # a body msgpack cannot carry is checked on the follower as the leader would
        n = len(link.sent)
        with pytest.raises(InvalidArgument, match=BAD + "encrypted overlay"):
            await ctl.call("networks.create", {"spec_body": req("x", Options={"encrypted": ""}, Huge=2**70)})
        assert len(link.sent) == n
    finally:
        await lagging.close()


def test_the_writes_are_registered() -> None:
    assert control.CALLS["networks.create"][0] is networks.create
    assert control.CALLS["networks.remove"] == (networks.remove, {"ref": str})
    assert issubclass(PermissionDenied, ControlError) and BY_NAME["PermissionDenied"] is PermissionDenied
