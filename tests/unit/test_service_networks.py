"""Services on overlay networks, manager side (issue 9): the control API resolves
``TaskTemplate.Networks`` targets to network IDs, the orchestrator leaves such tasks ``new``, the
network allocator loop (manager.allocator.loop) gives them addresses and moves them to
``pending``, the scheduler puts the bridge attachment first and keeps the overlay ones. Real
loops on a real store (single-voter Raft log on a temp dir), a worker test double
(tests/unit/overlay_services.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.allocator.loop import NetworkAllocatorLoop
from manager.controlapi import networks, services
from manager.controlapi.errors import FailedPrecondition, InvalidArgument
from manager.orchestrator import Orchestrator
from manager.scheduler import BRIDGE_NETWORK_ID
from manager.specs import SpecError, validate_service_spec
from tests.unit.overlay_services import Obj, cluster_ctx, running_loops
from tests.unit.overlay_services import live_tasks as _live
from tests.unit.overlay_services import overlay_attachments as _overlay
from tests.unit.overlay_services import service_spec as spec
from tests.unit.test_controlapi import Ctx
from tests.waiting import wait_until


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    async with cluster_ctx(tmp_path) as c:
        yield c


@pytest.fixture
async def loops(ctx: Ctx) -> AsyncIterator[None]:
    async with running_loops(ctx.store):
        yield


# -- specs -----------------------------------------------------------------------------------------

def test_specs_accept_networks_and_move_the_deprecated_field() -> None:
    got = validate_service_spec(spec(nets=["front"]))
    assert got["TaskTemplate"]["Networks"] == [{"Target": "front"}]
    old = validate_service_spec(spec(Networks=[{"Target": "front", "Aliases": ["a"]}]))
    assert "Networks" not in old and old["TaskTemplate"]["Networks"] == [{"Target": "front", "Aliases": ["a"]}]
    assert "Networks" not in validate_service_spec(spec(Networks=None))


@pytest.mark.parametrize("body, message", [
    (spec(nets=[""]), "needs a Target"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": 5}]}),
     "cannot unmarshal number into Go struct field NetworkAttachmentConfig.Target of type string"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": {"Target": "x"}}),
     r"cannot unmarshal object into Go struct field TaskSpec.Networks of type \[\]swarm"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": "x", "Aliases": [1]}]}),
     "NetworkAttachmentConfig.Aliases"),
    (spec(nets=["x", "x"]), "network x is attached more than once"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": "x", "Aliases": ["tasks.client"]}]}),
     r"network x: invalid alias 'tasks.client': names under 'tasks.' are the embedded DNS's own"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": "x", "Aliases": ["a b"]}]}),
     "invalid alias 'a b': an alias must be a DNS name"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": "x", "Aliases": ["x" * 64]}]}),
     "an alias must be a DNS name"),
    (spec(nets=["x"], Networks=[{"Target": "y"}]), "cannot be used together with TaskTemplate.Networks"),
    (spec(TaskTemplate={"ContainerSpec": {"Image": "b"}, "Networks": [{"Target": "x", "DriverOpts": {"a": "b"}}]}),
     "driver options"),
    (spec(EndpointSpec={"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}),
     "port published with ingress mode can't be used with dnsrr mode"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": 8080},
                                  {"TargetPort": 81, "PublishedPort": 8080}]}),
     "duplicate published ports provided"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 0, "PublishedPort": 8080}]}), "target port 0"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": 70000}]}), "published port 70000"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 80, "Protocol": "icmp"}]}), "invalid protocol"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 80, "PublishMode": "bridge"}]}), "invalid publish mode"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": 80, "PublishMode": "host"}]}), "needs a published port"),
    (spec(EndpointSpec={"Ports": [{"TargetPort": "80"}]}), "cannot unmarshal string"),
    (spec(EndpointSpec={"Mode": "rr"}), "invalid endpoint mode"),
])
def test_bad_network_specs(body: Obj, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_service_spec(body)


# -- control API -----------------------------------------------------------------------------------

async def test_targets_are_stored_as_ids_and_unknown_or_ingress_refused(ctx: Ctx) -> None:
    nid = (await networks.create(ctx, spec_body={"Name": "front", "Driver": "overlay"}))["Id"]
    ing = await networks.create_ingress(ctx)
    sid = (await services.create(ctx, spec_body=spec(nets=["front"], replicas=0)))["ID"]
    stored = ctx.store.view().get("services", sid)
    assert stored is not None and stored["Spec"]["TaskTemplate"]["Networks"] == [{"Target": nid}]
    # by ID prefix, and the deprecated field
    sid2 = (await services.create(ctx, spec_body=spec("api", 0, Networks=[{"Target": nid[:6]}])))["ID"]
    s2 = ctx.store.view().get("services", sid2)
    assert s2 is not None and s2["Spec"]["TaskTemplate"]["Networks"] == [{"Target": nid}]
    with pytest.raises(InvalidArgument) as e:
        await services.create(ctx, spec_body=spec("x", nets=["nosuch"]))
    assert e.value.status == 400 and e.value.message.endswith("desc = network nosuch not found")
    with pytest.raises(InvalidArgument, match='explicitly attached to the ingress network "ingress"'):
        await services.create(ctx, spec_body=spec("y", nets=[ing["Id"]]))
    with pytest.raises(InvalidArgument, match="network front is attached more than once"):
        await services.create(ctx, spec_body=spec("z", nets=["front", nid]))
    with pytest.raises(InvalidArgument, match="network gone not found"):
        await services.update(ctx, ref="web", version=stored["Version"]["Index"], spec_body=spec(nets=["gone"]))
    # a network a service uses cannot be removed (the stored ID form is what remove checks)
    with pytest.raises(FailedPrecondition, match=r"network front \(.*\) is in use by services api"):
        await networks.remove(ctx, ref="front")
    await services.remove(ctx, ref="web")
    await services.remove(ctx, ref="api")
    await networks.remove(ctx, ref="front")


# -- the loops -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("loops")
async def test_tasks_get_overlay_addresses_and_the_bridge(ctx: Ctx) -> None:
    nid = (await networks.create(ctx, spec_body={"Name": "front", "Driver": "overlay",
                                                 "IPAM": {"Config": [{"Subnet": "10.7.0.0/24"}]}}))["Id"]
    sid = (await services.create(ctx, spec_body=spec(replicas=3, nets=["front"])))["ID"]
    plain = (await services.create(ctx, spec_body=spec("plain", replicas=2)))["ID"]

    def running() -> list[Obj] | None:
        ts = _live(ctx, sid)
        return ts if len(ts) == 3 and all(t["Status"]["State"] == "running" for t in ts) else None

    ts = await wait_until(running, 10, "3 running tasks on the overlay")
    addrs = []
    for t in ts:
        atts = t["NetworksAttachments"]
        assert atts[0]["Network"]["ID"] == BRIDGE_NETWORK_ID and len(atts) == 2
        assert atts[1]["Network"]["ID"] == nid and atts[1]["Network"]["Spec"]["Name"] == "front"
        (addr,) = atts[1]["Addresses"]
        assert ipaddress.ip_interface(addr).network == ipaddress.ip_network("10.7.0.0/24")
        assert addr != "10.7.0.1/24"  # the gateway
        addrs.append(addr)
    assert len(set(addrs)) == 3
    # a service without networks: bridge only, as before
    pts = await wait_until(lambda: (ts := _live(ctx, plain)) and len(ts) == 2
                           and all(t["Status"]["State"] == "running" for t in ts) and ts, 10, "plain tasks")
    assert all([a["Network"]["ID"] for a in t["NetworksAttachments"]] == [BRIDGE_NETWORK_ID] for t in pts)
    with pytest.raises(FailedPrecondition, match="is in use by service web"):
        await networks.remove(ctx, ref="front")


async def test_the_orchestrator_leaves_network_tasks_new(ctx: Ctx) -> None:
    """Without the allocator loop, network tasks stay new and plain tasks go pending at once."""
    await networks.create(ctx, spec_body={"Name": "front", "Driver": "overlay"})
    sid = (await services.create(ctx, spec_body=spec(replicas=2, nets=["front"])))["ID"]
    plain = (await services.create(ctx, spec_body=spec("plain", replicas=2)))["ID"]
    await Orchestrator(ctx.store).tick()
    await Orchestrator(ctx.store).tick()
    assert {t["Status"]["State"] for t in _live(ctx, sid)} == {"new"}
    assert {t["Status"]["State"] for t in _live(ctx, plain)} == {"pending"}
    moved = await NetworkAllocatorLoop(ctx.store).tick()
    assert moved == 2 and {t["Status"]["State"] for t in _live(ctx, sid)} == {"pending"}
    assert all(len(_overlay(t)) == 1 for t in _live(ctx, sid))


@pytest.mark.usefixtures("loops")
async def test_out_of_addresses_then_scale_down_frees_them(ctx: Ctx) -> None:
    # a /29: 8 addresses, minus network, broadcast, gateway and the service's VIP = 4 for tasks
    await networks.create(ctx, spec_body={"Name": "small", "Driver": "overlay",
                                          "IPAM": {"Config": [{"Subnet": "10.8.0.0/29"}]}})
    sid = (await services.create(ctx, spec_body=spec(replicas=7, nets=["small"])))["ID"]

    def split() -> tuple[list[Obj], list[Obj]] | None:
        ts = _live(ctx, sid)
        run = [t for t in ts if t["Status"]["State"] == "running"]
        new = [t for t in ts if t["Status"]["State"] == "new" and "out of addresses" in t["Status"]["Message"]]
        return (run, new) if len(run) == 4 and len(new) == 3 else None

    run, new = await wait_until(split, 10, "4 running tasks and 3 out of addresses")
    assert new[0]["Status"]["Message"].startswith("network small is out of addresses")
    assert len({_overlay(t)[0]["Addresses"][0] for t in run}) == 4
    vip = ctx.store.view().get("services", sid)["Endpoint"]["VirtualIPs"][0]["Addr"]  # type: ignore[index]
    assert vip not in {_overlay(t)[0]["Addresses"][0] for t in run}
    assert all(not t["NetworksAttachments"] for t in new)

    s = ctx.store.view().get("services", sid)
    assert s is not None
    await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=spec(replicas=3, nets=["small"]))
    await wait_until(lambda: len(ctx.store.view().find("tasks", lambda t: t["ServiceID"] == sid)) == 3, 10,
                     "the scale-down to be reaped")
    s = ctx.store.view().get("services", sid)
    assert s is not None
    await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=spec(replicas=4, nets=["small"]))

    def four() -> list[Obj] | None:
        ts = _live(ctx, sid)
        return ts if len(ts) == 4 and all(t["Status"]["State"] == "running" for t in ts) else None

    ts = await wait_until(four, 10, "4 running tasks after scaling up again")
    got = [_overlay(t)[0]["Addresses"][0] for t in ts]
    assert len(set(got)) == 4 and vip not in got  # freed addresses reused, none twice
    alive = [t for t in ctx.store.view().list("tasks") if t["Status"]["State"] not in ("shutdown", "complete")]
    every = [a for t in alive for att in _overlay(t) for a in att["Addresses"]]
    assert len(every) == len(set(every))


async def test_tasks_that_will_never_run_give_their_addresses_back(ctx: Ctx) -> None:
    """A task shut down before placement (or terminal) holds no address: a /30 has one address for
    tasks (network, gateway, broadcast taken), and the second task gets the first one's."""
    await networks.create(ctx, spec_body={"Name": "tiny", "Driver": "overlay",
                                          "IPAM": {"Config": [{"Subnet": "10.9.0.0/30"}]}})
    # dnsrr: no VIP, so the one address is for the tasks
    sid = (await services.create(ctx, spec_body=spec(replicas=1, nets=["tiny"],
                                                     EndpointSpec={"Mode": "dnsrr"})))["ID"]
    await Orchestrator(ctx.store).tick()
    assert await NetworkAllocatorLoop(ctx.store).tick() == 1
    (first,) = _live(ctx, sid)
    (addr,) = _overlay(first)[0]["Addresses"]

    def shut(tx: Any) -> None:
        t = tx.get("tasks", first["ID"])
        t["DesiredState"] = "shutdown"
        tx.update("tasks", t)
        nxt = dict(t, ID="t2", Name="web.1.t2", DesiredState="running", NetworksAttachments=[],
                   Status={"State": "new", "Message": "created"})
        tx.create("tasks", nxt)
    await ctx.store.update(shut)
    assert await NetworkAllocatorLoop(ctx.store).tick() == 1
    t2 = ctx.store.view().get("tasks", "t2")
    assert t2 is not None and t2["Status"]["State"] == "pending" and _overlay(t2)[0]["Addresses"] == [addr]
