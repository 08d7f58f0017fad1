"""The control API called directly (no HTTP): manager.controlapi.{cluster,nodes,services,tasks}
against a real Store on a temp WAL, their errors (class, HTTP status, exact message), and
manager.controlapi.control: the call registry, a follower sending ``control.call`` to the
leader (a fake leader link that runs the leader's handler) and errors coming back as the same
class."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.ca import is_blacklisted
from manager.controlapi import cluster, control, nodes, services, tasks
from manager.controlapi.errors import (
    Conflict,
    ControlError,
    FailedPrecondition,
    InvalidArgument,
    NoQuorum,
    NotFound,
    Unavailable,
    Unimplemented,
    Unknown,
    from_store,
)
from manager.specs import default_swarm_spec
from manager.store import Store
from manager.store import Unavailable as StoreUnavailable
from shoal.rpc import wire
from tests.stores import open_store
from tests.unit.test_api import SPEC, _node, creating


class Ctx:
    """The manager a call runs on: a real store, canned tokens and CA."""

    def __init__(self, store: Store, leader: bool = True) -> None:
        self.store = store
        self.cluster_id = "cluster1"
        self.ca_cert_pem = "PEM"
        self.is_leader = leader
        self.rotated: list[str] = []
        self.problem: str | None = None
        self.leader_link: Any = None

    def join_tokens(self) -> dict[str, str]:
        return {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"}

    def rotate_join_token(self, role: str) -> str:
        self.rotated.append(role)
        return f"SWMTKN-1-new-{role}"

    def demote_problem(self, node_id: str) -> str | None:
        return self.problem


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    await store.update(creating("nodes", *[_node(f"node{i}abc", f"h{i}") for i in (1, 2, 3)]))
    try:
        yield Ctx(store)
    finally:
        await store.close()


def test_error_classes_carry_docker_statuses() -> None:
    assert [c.status for c in (InvalidArgument, FailedPrecondition, NotFound, Conflict, Unknown, Unimplemented,
                               Unavailable, NoQuorum)] == [400, 400, 404, 409, 500, 501, 503, 503]
    e = from_store(StoreUnavailable("no quorum: 1 of 3 managers reachable"))
    assert isinstance(e, NoQuorum) and e.message == "rpc error: code = Unavailable desc = no quorum: 1 of 3 managers reachable"
    e = from_store(StoreUnavailable("disk full"))
    assert type(e) is Unavailable and e.message == "rpc error: code = Unavailable desc = disk full"


async def test_cluster_inspect_and_update(ctx: Ctx) -> None:
    sw = cluster.inspect(ctx)
    assert sw["ID"] == "cluster1" and sw["JoinTokens"] == ctx.join_tokens()
    assert sw["TLSInfo"]["TrustRoot"] == "PEM"
    spec = dict(sw["Spec"], Labels={"a": "b"})
    await cluster.update(ctx, version=sw["Version"]["Index"], spec_body=spec, rotate_worker_token=True)
    c = ctx.store.view().get("cluster", "cluster1")
    assert c is not None and c["Spec"]["Labels"] == {"a": "b"} and c["JoinTokens"] == {"Worker": "SWMTKN-1-new-worker"}
    assert ctx.rotated == ["worker"]
    with pytest.raises(Unknown, match=r"^rpc error: code = Unknown desc = update out of sequence$"):
        await cluster.update(ctx, version=sw["Version"]["Index"], spec_body=spec)
    with pytest.raises(InvalidArgument, match=r"^rpc error: code = InvalidArgument desc = "):
        await cluster.update(ctx, version=1, spec_body=[])
    with pytest.raises(InvalidArgument, match="^autolock is not supported by shoal$"):
        await cluster.update(ctx, version=1, spec_body=spec, rotate_manager_unlock_key=True)


async def test_cluster_update_without_rotation_is_unimplemented(ctx: Ctx) -> None:
    class NoRotate:
        store, cluster_id, ca_cert_pem = ctx.store, "cluster1", "PEM"

        def join_tokens(self) -> dict[str, str]:
            return {}

        def demote_problem(self, node_id: str) -> str | None:
            return None

    with pytest.raises(Unimplemented) as e:
        await cluster.update(NoRotate(), version=1, spec_body=default_swarm_spec(), rotate_manager_token=True)
    assert e.value.status == 501


async def test_nodes_calls(ctx: Ctx) -> None:
    assert [n["Description"]["Hostname"] for n in nodes.list_nodes(ctx.store)] == ["h1", "h2", "h3"]
    assert [n["ID"] for n in nodes.list_nodes(ctx.store, {"name": ["h2"]})] == ["node2abc"]
    with pytest.raises(InvalidArgument, match="^invalid filter 'bogus'$"):
        nodes.list_nodes(ctx.store, {"bogus": ["x"]})
    assert nodes.inspect(ctx.store, "h2")["ID"] == "node2abc"
    with pytest.raises(InvalidArgument, match=r"^node node is ambiguous \(3 matches found\)$"):
        nodes.inspect(ctx.store, "node")
    with pytest.raises(NotFound, match="^node zz not found$"):
        nodes.inspect(ctx.store, "zz")

    # ManagerStatus: the stored one, or the provider's when given
    status = {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}
    shown = nodes.inspect(ctx.store, "h1", manager_status=lambda i: status if i == "node1abc" else None)
    assert shown["ManagerStatus"] == status
    assert all("ManagerStatus" not in n for n in nodes.list_nodes(ctx.store, manager_status=lambda i: None))

    n = nodes.inspect(ctx.store, "h2")
    await nodes.update(ctx, ref="h2", version=n["Version"]["Index"], spec_body=dict(n["Spec"], Role="manager"))
    n = nodes.inspect(ctx.store, "h2")
    with pytest.raises(FailedPrecondition, match="demote the last manager of the swarm$") as e:
        await nodes.update(ctx, ref="h2", version=n["Version"]["Index"], spec_body=dict(n["Spec"], Role="worker"))
    assert e.value.status == 400
    n1 = nodes.inspect(ctx.store, "h1")
    await nodes.update(ctx, ref="h1", version=n1["Version"]["Index"], spec_body=dict(n1["Spec"], Role="manager"))
    ctx.problem = "quorum would be lost"
    with pytest.raises(FailedPrecondition, match="^rpc error: code = FailedPrecondition desc = quorum would be lost$"):
        await nodes.update(ctx, ref="h2", version=n["Version"]["Index"], spec_body=dict(n["Spec"], Role="worker"))
    with pytest.raises(InvalidArgument, match="invalid Availability"):
        await nodes.update(ctx, ref="h3", version=1, spec_body={"Role": "worker", "Availability": "nap"})

    with pytest.raises(FailedPrecondition, match="is a cluster manager"):
        await nodes.remove(ctx, ref="h2", force=True)
    with pytest.raises(FailedPrecondition, match="^rpc error: code = FailedPrecondition desc = node node3abc is not down"):
        await nodes.remove(ctx, ref="h3")
    await nodes.remove(ctx, ref="h3", force=True)
    assert ctx.store.view().get("nodes", "node3abc") is None
    c = ctx.store.view().get("cluster", "cluster1")
    assert c is not None and is_blacklisted(c, "node3abc")


async def test_services_calls(ctx: Ctx) -> None:
    created = await services.create(ctx, spec_body=SPEC)
    sid = created["ID"]
    assert created == {"ID": sid, "Warnings": []}
    with pytest.raises(Conflict) as conflict:
        await services.create(ctx, spec_body=SPEC)
    assert conflict.value.status == 409
    with pytest.raises(InvalidArgument, match="^rpc error: code = InvalidArgument desc = "):
        await services.create(ctx, spec_body={"Name": "x"})
    for ref in (sid, "web", sid[:5]):
        assert services.inspect(ctx.store, ref)["ID"] == sid
    assert services.inspect(ctx.store, "web", insert_defaults=True)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    with pytest.raises(NotFound, match="^service nope not found$"):
        services.inspect(ctx.store, "nope")
    [listed] = services.list_services(ctx.store, {"mode": ["replicated"]}, status=True)
    assert listed["ServiceStatus"]["DesiredTasks"] == 3
    assert services.list_services(ctx.store, {"mode": ["global"]}) == []

    s = services.inspect(ctx.store, sid)
    # swarmkit's FailedPrecondition, which Docker answers 400
    with pytest.raises(FailedPrecondition, match=rf"^rpc error: code = FailedPrecondition desc = service {sid} "
                       "does not have a previous spec$") as e:
        await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body={}, rollback=True)
    assert e.value.status == 400
    with pytest.raises(Unimplemented, match="renaming services is not supported"):
        await services.update(ctx, ref=sid, version=s["Version"]["Index"], spec_body=dict(SPEC, Name="other"))
    scaled = dict(SPEC, Mode={"Replicated": {"Replicas": 1}})
    assert await services.update(ctx, ref="web", version=s["Version"]["Index"], spec_body=scaled) == {"Warnings": []}
    s = services.inspect(ctx.store, sid)
    assert s["Spec"]["Mode"]["Replicated"]["Replicas"] == 1 and s["PreviousSpec"]["Mode"]["Replicated"]["Replicas"] == 3
    await services.update(ctx, ref="web", version=s["Version"]["Index"], spec_body=None, rollback=True)
    s = services.inspect(ctx.store, sid)
    assert s["Spec"]["Mode"]["Replicated"]["Replicas"] == 3 and s["UpdateStatus"]["State"] == "rollback_started"
    assert services.tasks_of(ctx.store, sid) == []

    await services.remove(ctx, ref="web")
    assert services.tasks_of(ctx.store, sid) is None
    with pytest.raises(NotFound):
        await services.remove(ctx, ref="web")


async def test_tasks_calls(ctx: Ctx) -> None:
    sid = (await services.create(ctx, spec_body=SPEC))["ID"]
    task = {"ID": "task1xyz", "ServiceID": sid, "Slot": 1, "Name": "web.1.task1xyz", "NodeID": "node1abc",
            "DesiredState": "running", "Status": {"State": "running"}, "Spec": {}}
    await ctx.store.update(creating("tasks", task))
    assert [t["ID"] for t in tasks.list_tasks(ctx.store, {"service": ["web"], "node": ["h1"]})] == ["task1xyz"]
    assert tasks.list_tasks(ctx.store, {"desired-state": ["shutdown"]}) == []
    assert [t["ID"] for t in tasks.list_tasks(ctx.store, {"name": ["web.1"]})] == ["task1xyz"]
    with pytest.raises(InvalidArgument, match="^Invalid desired-state filter: 'bogus'$"):
        tasks.list_tasks(ctx.store, {"desired-state": ["bogus"]})
    with pytest.raises(NotFound, match="^service nope not found$"):
        tasks.list_tasks(ctx.store, {"service": ["nope"]})
    assert tasks.inspect(ctx.store, "task1")["ID"] == "task1xyz"
    assert tasks.inspect(ctx.store, "web.1.task1xyz")["ID"] == "task1xyz"
    with pytest.raises(NotFound, match="^task zz not found$"):
        tasks.inspect(ctx.store, "zz")
    assert tasks.current(ctx.store, "task1xyz") == [tasks.inspect(ctx.store, "task1xyz")]
    assert tasks.current(ctx.store, "zz") is None


class LinkToLeader:
    """A follower's leader link that hands ``control.call`` to the leader's handler in-process
    (through msgpack, as the wire does)."""

    def __init__(self, leader: Ctx) -> None:
        self.handle = control.handler(leader)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def request(self, type: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.sent.append((type, body))
        frame = wire.encode_frame({"b": body})
        decoded = wire.decode_frame(frame[4:], wire.MANAGER_LIMITS)["b"]
        reply = await self.handle(None, "follower1", "manager", decoded)  # type: ignore[arg-type]
        return dict(wire.decode_frame(wire.encode_frame({"b": reply})[4:])["b"])


async def test_a_follower_sends_writes_to_the_leader_and_gets_its_errors_back(ctx: Ctx) -> None:
    follower = Ctx(ctx.store, leader=False)
    link = LinkToLeader(ctx)
    follower.leader_link = link
    ctl = control.Control(follower)
    created = await ctl.call("services.create", {"spec_body": SPEC})
    assert link.sent == [("control.call", {"call": "services.create", "args": {"spec_body": SPEC}})]
    assert ctx.store.view().get("services", created["ID"]) is not None
    # the leader's error, re-raised as the same class with the same message
    with pytest.raises(Unknown, match="out of sequence"):
        await ctl.call("services.update", {"ref": "web", "version": 1, "spec_body": SPEC})
    with pytest.raises(FailedPrecondition, match="is not down"):
        await ctl.call("nodes.remove", {"ref": "h3"})
    # a bad spec is refused on the follower already, with the leader's message
    n = len(link.sent)
    with pytest.raises(InvalidArgument, match="^rpc error: code = InvalidArgument desc = "):
        await ctl.call("services.create", {"spec_body": {"Name": "x", "Huge": 2**70}})
    with pytest.raises(InvalidArgument, match="^unknown control API call 'nodes.list'$"):
        await ctl.call("nodes.list", {})
    with pytest.raises(InvalidArgument, match="^services.remove: argument ref must be str$"):
        await ctl.call("services.remove", {"ref": 5})
    assert len(link.sent) == n

    # the leader cannot be reached / refuses the message: Unavailable (503)
    class Down:
        async def request(self, type: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
            raise StoreUnavailable("no leader: an election is going on")

    class Refusing:
        async def request(self, type: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
            raise wire.RemoteError("control.call: only manager nodes may call this")

    follower.leader_link = Down()
    with pytest.raises(Unavailable, match="^rpc error: code = Unavailable desc = no leader: an election is going on$"):
        await ctl.call("services.remove", {"ref": "web"})
    follower.leader_link = Refusing()
    with pytest.raises(Unavailable, match="desc = forwarding to the leader failed: control.call: only manager"):
        await ctl.call("services.remove", {"ref": "web"})


async def test_the_handler_refuses_when_not_the_leader_and_decodes_unknown_errors(ctx: Ctx) -> None:
    follower = Ctx(ctx.store, leader=False)
    reply = await control.handler(follower)(None, "m2", "manager", {"call": "services.remove",  # type: ignore[arg-type]
                                                                     "args": {"ref": "web"}})
    assert reply == {"error": {"type": "Unavailable", "message": control.LEADERSHIP_MOVED}}
    with pytest.raises(ControlError, match="^strange$") as e:
        control.decode_reply({"error": {"type": "SomethingNew", "message": "strange"}})
    assert e.value.status == 500
    assert control.decode_reply({"result": {"Warnings": []}}) == {"Warnings": []}


async def test_a_follower_resolves_nothing_in_its_own_store(ctx: Ctx, tmp_path: Path) -> None:
    """A follower's store may lag the leader's: the object named is looked up on the leader only."""
    sid = (await services.create(ctx, spec_body=SPEC))["ID"]
    lagging = await open_store(tmp_path / "lagging")
    try:
        follower = Ctx(lagging, leader=False)
        follower.leader_link = LinkToLeader(ctx)
        s = services.inspect(ctx.store, sid)
        scaled = dict(SPEC, Mode={"Replicated": {"Replicas": 2}})
        await control.Control(follower).call("services.update", {"ref": "web", "version": s["Version"]["Index"],
                                                                 "spec_body": scaled})
        assert services.inspect(ctx.store, sid)["Spec"]["Mode"] == {"Replicated": {"Replicas": 2}}
        await control.Control(follower).call("services.remove", {"ref": sid})
        assert services.tasks_of(ctx.store, sid) is None
    finally:
        await lagging.close()
