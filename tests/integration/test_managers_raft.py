"""Three real managers replicating their store through Raft, in one process, on loopback.

Everything on the main path is real: ``Manager.init_cluster`` / ``Manager.start``, joins with
the MANAGER token through :func:`worker.join.join`, mutual TLS with certificates from the
cluster CA, the 2377 server carrying both requests and Raft messages, the WAL on disk. Each
manager listens on its own free port of 127.0.0.1 and advertises that address. The Raft tick
is :data:`TICK` seconds (election after 10–20 ticks), so an election takes well under a
second. Every test builds its own swarm in ``tmp_path`` and stops every manager it started in
a ``finally`` block (:func:`swarm`), so nothing keeps running after a failure.

What is checked (docs/contracts.md, the issue "Raft: replicated managers"): convergence on one
leader and replication of store writes; ``ManagerStatus``; the CA key on joined managers;
``ca.join`` sent to a follower runs on the leader; leader failover with the dispatcher moving
to the new leader and the old leader catching up after a restart; the quorum check on
demotion and demotion through the store; fast failure of writes and reads without a quorum;
``--force-new-cluster``; a write through a follower's API runs on the leader as a
``control.call``, which only managers may send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.x509.oid import NameOID

from manager.ca import RootCA, blacklist_node
from manager.controlapi import control
from manager.manager import Manager, raft_id
from manager.store import Unavailable, WriteTx
from raft.core import message_to_dict
from raft.core.messages import MsgVote
from shoal.base.util import new_id
from shoal.daemon.http.app import add_swarm_routes
from shoal.rpc import tlsutil, wire
from tests.ports import free_port
from tests.waiting import wait_until
from worker.join import JoinError, join, local_description, renew_certificate

pytestmark = pytest.mark.timeout(60)

TICK = 0.03
"""Seconds per Raft tick: heartbeat every 30 ms, election timeout 0.3–0.6 s."""

JOIN_TIMEOUT = 10.0

T = TypeVar("T")


STOP_TIMEOUT = 15.0


def pending_tasks() -> str:
    """Every unfinished asyncio task with the chain of awaits it is suspended in (for hang
    reports), innermost last."""
    out = []
    for t in asyncio.all_tasks():
        chain: list[str] = []
        co: Any = t.get_coro()
        while co is not None and len(chain) < 12:
            f = getattr(co, "cr_frame", None) or getattr(co, "gi_frame", None)
            if f is not None:
                chain.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}")
            co = getattr(co, "cr_await", None) or getattr(co, "gi_yieldfrom", None)
        out.append(f"[{t.get_name()}] " + " -> ".join(chain))
    return "; ".join(out)


@dataclass
class Member:
    """One manager node: its directories, identity and address, and the running Manager (or None)."""

    name: str
    data: Path
    certs: Path
    node_id: str
    addr: str
    mgr: Manager | None = None

    @property
    def m(self) -> Manager:
        """The running Manager (the test fails if this member is stopped)."""
        assert self.mgr is not None, f"manager {self.name} is not running"
        return self.mgr

    @property
    def rid(self) -> int:
        return raft_id(self.node_id)


@dataclass
class Swarm:
    """The managers of one test swarm, under ``root``."""

    root: Path
    members: list[Member] = field(default_factory=list)

    def running(self) -> list[Member]:
        return [x for x in self.members if x.mgr is not None]

    def leader(self) -> Member | None:
        """The running member that is leader, if exactly one is."""
        leaders = [x for x in self.running() if x.m.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def followers(self) -> list[Member]:
        return [x for x in self.running() if not x.m.is_leader]

    async def start(self, x: Member, force_new_cluster: bool = False) -> Manager:
        """Start (or restart, on the same directories and address) member ``x``."""
        m = Manager(x.data, x.certs, x.node_id, x.addr, x.addr, heartbeat_period=1.0,
                    raft_tick=TICK, force_new_cluster=force_new_cluster)
        try:
            await m.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await m.stop()
            raise
        x.mgr = m
        return m

    async def stop(self, *xs: Member) -> None:
        """Stop members ``xs`` (``await Manager.stop()``), concurrently. A stop that takes more
        than :data:`STOP_TIMEOUT` seconds fails the test, naming the tasks still running."""
        ms = [(x.name, x.mgr) for x in xs if x.mgr is not None]
        for x in xs:
            x.mgr = None

        async def one(name: str, m: Manager) -> None:
            try:
                await asyncio.wait_for(asyncio.shield(m.stop()), STOP_TIMEOUT)
            except TimeoutError:
                raise AssertionError(f"Manager.stop() of {name} did not return within {STOP_TIMEOUT} s; "
                                     f"tasks: {pending_tasks()}") from None

        await asyncio.gather(*(one(n, m) for n, m in ms))

    async def init(self, name: str) -> Member:
        """``swarm init`` on a new member, then start it."""
        port = free_port()
        x = Member(name, self.root / name / "data", self.root / name / "certs", "", f"127.0.0.1:{port}")
        self.members.append(x)
        x.node_id = await Manager.init_cluster(x.data, x.certs, x.addr, local_description(name), {})
        await self.start(x)
        await wait_until(lambda: x.m.is_leader, 5, f"{name} to lead its new swarm")
        return x

    async def join_manager(self, name: str, via: Member) -> Member:
        """``swarm join --token <manager token>`` through ``via``, start the manager, join Raft."""
        port = free_port()
        x = Member(name, self.root / name / "data", self.root / name / "certs", "", f"127.0.0.1:{port}")
        self.members.append(x)
        token = via.m.join_tokens()["Manager"]
        node_id, role, managers = await join(via.addr, token, name, "127.0.0.1", x.certs,
                                             description=local_description(name), timeout=JOIN_TIMEOUT)
        assert role == "manager"
        x.node_id = node_id
        await self.start(x)
        await x.m.join_raft([via.addr, *managers], timeout=JOIN_TIMEOUT)
        return x

    async def converged(self, timeout: float = 5.0) -> Member:
        """Wait until every running member knows the same leader and that leader is running and
        leads; return it."""
        def ok() -> bool:
            run = self.running()
            ld = self.leader()
            return ld is not None and all(x.m.log.leader_id == ld.rid for x in run)

        await wait_until(ok, timeout, "every running manager to agree on one leader")
        ld = self.leader()
        assert ld is not None
        return ld

    async def close(self) -> None:
        """Stop every running member."""
        await self.stop(*self.running())


@contextlib.asynccontextmanager
async def swarm(root: Path, managers: int = 3) -> AsyncIterator[Swarm]:
    """A swarm of ``managers`` managers (one init, the others joined with the manager token,
    each through the manager joined before it: from the third on, through a follower, so
    ``ca.join`` and ``raft.join`` are forwarded to the leader); every manager is stopped on the
    way out, failure or not."""
    s = Swarm(root)
    try:
        first = await s.init("m1")
        for i in range(2, managers + 1):
            await s.join_manager(f"m{i}", s.members[-1])
        await wait_until(lambda: len(first.m.log.driver.voters) == managers, 10,
                         f"{managers} voters in the Raft configuration")
        yield s
    finally:
        await s.close()


def service(name: str) -> Callable[[WriteTx], str]:
    """A store transaction creating service ``name`` (the API's shape, enough for the store);
    returns its ID."""
    def fn(tx: WriteTx) -> str:
        sid = new_id()
        tx.create("services", {"ID": sid, "Spec": {"Name": name, "Labels": {},
                                                   "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                                                   "Mode": {"Replicated": {"Replicas": 0}}}})
        return sid
    return fn


async def write(m: Manager, fn: Callable[[WriteTx], T], timeout: float = 5.0) -> T:
    """``await m.store.update(fn)`` with a deadline: a write that neither commits nor fails within
    ``timeout`` seconds fails the test (``TimeoutError``) instead of hanging it."""
    return await asyncio.wait_for(m.store.update(fn), timeout)


def has_service(x: Member, sid: str) -> bool:
    return x.m.store.view().get("services", sid) is not None


def cert_ou(certs: Path) -> str:
    cert = x509.load_pem_x509_certificate((certs / "node.crt").read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)


async def open_session(certs: Path, addr: str) -> dict[str, Any]:
    """``session.open`` on the manager at ``addr`` with the node certificate in ``certs``;
    returns the reply (the connection is closed again). Raises ``shoal.rpc.wire.RemoteError``."""
    host, port = addr.rsplit(":", 1)
    ctx = tlsutil.client_context(certs / "node.crt", certs / "node.key", certs / "ca.crt")
    peer = await wire.connect(host, int(port), ctx, None, timeout=5.0, server_hostname=tlsutil.MANAGER_SERVER_NAME)
    try:
        return await peer.request("session.open", {"description": local_description("w1")}, timeout=5.0)
    finally:
        await peer.close()


async def eventually(call: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
    """Retry ``await call()`` until it returns (every 50 ms; wire and socket errors are "not yet"),
    with :func:`tests.waiting.wait_until`: after ``timeout`` seconds an ``AssertionError`` names
    ``what`` and the last error."""
    async def once() -> tuple[T]:
        return (await call(),)  # a tuple: a falsy result is a result

    return (await wait_until(once, timeout, what, interval=0.05, retry=(wire.WireError, OSError)))[0]


# -- 1. three managers -------------------------------------------------------------------------


async def test_three_managers_elect_one_leader_and_replicate(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        m1, m2, m3 = s.members
        leader = await s.converged()
        assert sorted(x.rid for x in s.members) == sorted(leader.m.log.driver.voters)
        followers = s.followers()
        assert len(followers) == 2

        sid = await write(leader.m, service("web"))
        await wait_until(lambda: all(has_service(x, sid) for x in s.members), 5,
                         "the service to be applied on both followers")
        for x in followers:
            svc = x.m.store.view().get("services", sid)
            assert svc is not None and svc["Spec"]["Name"] == "web"
            assert svc["Version"] == leader.m.store.view().get("services", sid)["Version"]  # type: ignore[index]
        # the three nodes are in every store, all managers
        for x in s.members:
            nodes = {n["ID"]: n for n in x.m.store.view().list("nodes")}
            assert set(nodes) == {m1.node_id, m2.node_id, m3.node_id}
            assert all(n["Spec"]["Role"] == "manager" for n in nodes.values())

        def statuses_ok() -> bool:
            st = leader.m.manager_statuses()
            vals = [v for v in st.values() if v is not None]
            return (len(vals) == 3 and sum(1 for v in vals if v["Leader"]) == 1
                    and all(v["Reachability"] == "reachable" for v in vals))

        await wait_until(statuses_ok, 5, "the leader to see one Leader and every manager reachable")
        st = leader.m.manager_statuses()
        assert st[leader.node_id]["Leader"] is True  # type: ignore[index]
        for x in s.members:
            assert st[x.node_id]["Addr"] == x.addr  # type: ignore[index]
        # the leader records them in the store too (what `docker node ls` shows), on every manager
        await wait_until(lambda: all(
            (x.m.store.view().get("nodes", leader.node_id) or {}).get("ManagerStatus", {}).get("Leader") is True
            for x in s.members), 5, "ManagerStatus.Leader of the leader replicated to every store")

        # the joined managers got the CA key: they can issue certificates
        for x in (m2, m3):
            assert (x.certs / "ca.key").exists()
            assert x.m.ca.can_sign
            ca = RootCA.load(x.certs)
            _key, csr = tlsutil.generate_key_and_csr()
            assert ca.issue(csr, "somenode", "worker", x.m.cluster_id).startswith("-----BEGIN CERTIFICATE-----")


# -- 2. ca.join forwarded ------------------------------------------------------------------------


async def test_worker_join_through_a_follower_is_forwarded_to_the_leader(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        follower = s.followers()[0]
        token = follower.m.join_tokens()["Worker"]
        wcerts = tmp_path / "w1"
        node_id, role, managers = await join(follower.addr, token, "w1", "", wcerts, timeout=JOIN_TIMEOUT)
        assert role == "worker"
        assert cert_ou(wcerts) == "swarm-worker"
        assert not (wcerts / "ca.key").exists()
        assert managers  # the leader's list of manager addresses
        # the node was created by the leader's transaction and replicated everywhere
        await wait_until(lambda: all(x.m.store.view().get("nodes", node_id) is not None for x in s.members),
                         5, "the joined worker in every manager's store")
        for x in s.members:
            n = x.m.store.view().get("nodes", node_id)
            assert n is not None and n["Spec"]["Role"] == "worker"
            assert n["Description"]["Hostname"] == "w1"
            assert n["Status"]["Addr"] == "127.0.0.1"
        assert leader.m.is_leader  # no leadership change was needed for this
        # a bad token through the follower is refused by the leader, with nothing written
        before = len(leader.m.store.view().list("nodes"))
        with pytest.raises(JoinError, match="invalid join token"):
            await join(follower.addr, leader.m.ca.join_token(), "w2", "", tmp_path / "w2", timeout=JOIN_TIMEOUT)
        assert len(leader.m.store.view().list("nodes")) == before


# -- 3. failover -----------------------------------------------------------------------------------


async def test_leader_stop_elects_a_new_leader_and_the_old_one_catches_up(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        old = await s.converged()
        wcerts = tmp_path / "w1"
        await join(old.addr, old.m.join_tokens()["Worker"], "w1", "", wcerts, timeout=JOIN_TIMEOUT)
        before = await write(old.m, service("before"))
        await wait_until(lambda: all(has_service(x, before) for x in s.members), 5, "the first write everywhere")
        old_term = old.m.log.term

        t0 = time.monotonic()
        await s.stop(old)
        new = await s.converged(5)
        elected = time.monotonic() - t0
        assert new is not old and new.m.log.term > old_term
        assert elected < 5, f"new leader after {elected:.2f} s"
        # the new leader runs the dispatcher: a worker's session opens there, not on the follower
        reply = await eventually(lambda: open_session(wcerts, new.addr), 5,
                                 "a worker session to open on the new leader")
        assert reply["session_id"] and reply["node"]["Status"]["State"] == "ready"
        other = next(x for x in s.running() if x is not new)
        with pytest.raises(wire.RemoteError, match="not the leader"):
            await open_session(wcerts, other.addr)
        # writes work with one manager down
        during = await write(new.m, service("during"))
        await wait_until(lambda: has_service(other, during), 5, "the write on the remaining follower")

        # the old leader restarts on the same directories: a follower that catches up
        await s.start(old)
        await s.converged(5)
        await wait_until(lambda: has_service(old, during), 5, "the restarted manager to catch up")
        assert not old.m.is_leader and old.m.log.leader_id == new.rid
        assert has_service(old, before)
        after = await write(new.m, service("after"))
        await wait_until(lambda: all(has_service(x, after) for x in s.members), 5,
                         "a write after the restart on all three")
        with pytest.raises(wire.RemoteError, match="not the leader"):
            await open_session(wcerts, old.addr)


# -- 4. demotion -----------------------------------------------------------------------------------


async def test_demotion_checks_quorum_and_goes_through_the_store(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        a, b = s.followers()
        await wait_until(lambda: leader.m.demote_problem(a.node_id) is None, 5,
                         "demoting a follower to be allowed with all three up")
        assert leader.m.demote_problem(b.node_id) is None

        # one manager down: demoting another reachable one would leave 1 of 2 remaining
        await s.stop(b)
        await wait_until(lambda: leader.m.demote_problem(a.node_id) is not None, 5,
                         "the leader to notice the stopped manager")
        problem = leader.m.demote_problem(a.node_id)
        assert problem is not None and "loss of quorum" in problem, problem
        await s.start(b)
        await s.converged()
        await wait_until(lambda: leader.m.demote_problem(a.node_id) is None, 5,
                         "demotion to be allowed again once all three are up")

        # `node demote a`: the spec changes in the store; the leader takes it out of Raft
        def demote(tx: WriteTx) -> None:
            n = tx.get("nodes", a.node_id)
            assert n is not None
            n["Spec"] = {**n["Spec"], "Role": "worker"}
            n.pop("Version", None)
            tx.update("nodes", n)

        await write(leader.m, demote)
        await wait_until(lambda: a.rid not in leader.m.log.driver.voters, 5,
                         "the leader to remove the demoted manager from the Raft configuration")
        assert leader.m.log.driver.voters == frozenset({leader.rid, b.rid})
        await wait_until(lambda: "ManagerStatus" not in (leader.m.store.view().get("nodes", a.node_id) or {}),
                         5, "the demoted node's ManagerStatus to disappear")
        assert leader.m.manager_statuses().get(a.node_id) is None
        await wait_until(lambda: all("ManagerStatus" not in (x.m.store.view().get("nodes", a.node_id) or {})
                                     for x in (leader, b)), 5, "that change on the other manager too")

        # the demoted node stops its manager role and renews its certificate as a worker
        await s.stop(a)
        assert (a.certs / "ca.key").exists()
        role = await renew_certificate(a.node_id, [b.addr, leader.addr], a.certs)
        assert role == "worker"
        assert not (a.certs / "ca.key").exists()
        assert cert_ou(a.certs) == "swarm-worker"
        # the two remaining managers still write
        sid = await write(leader.m, service("after-demotion"))
        await wait_until(lambda: has_service(b, sid), 5, "a write with two managers")


# -- 5. quorum loss ------------------------------------------------------------------------------

async def lose_quorum(s: Swarm, survivor: str) -> tuple[Member, str]:
    """Write a service, stop the two managers other than the ``survivor`` (``leader`` |
    ``follower``) and return the survivor and the service's ID."""
    leader = await s.converged()
    sid = await write(leader.m, service("kept"))
    await wait_until(lambda: all(has_service(x, sid) for x in s.members), 5, "the write everywhere")
    keep = leader if survivor == "leader" else s.followers()[0]
    await s.stop(*(x for x in s.members if x is not keep))
    return keep, sid


@pytest.mark.parametrize("survivor", ["follower", "leader"])
async def test_losing_quorum_fails_a_write_at_once(tmp_path: Path, survivor: str) -> None:
    async with swarm(tmp_path) as s:
        keep, sid = await lose_quorum(s, survivor)
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as ei:
            await write(keep.m, service("lost"), 10)
        took = time.monotonic() - t0
        msg = str(ei.value)
        assert msg.startswith(("no quorum", "not the leader", "no leader")), msg
        assert took < 10, f"the write failed only after {took:.1f} s"

        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            await keep.m.read_barrier(timeout=3.0)
        assert time.monotonic() - t0 < 10
        assert has_service(keep, sid)  # what was committed stays


async def test_a_write_in_flight_when_the_quorum_goes_says_no_quorum(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        keep, _ = await lose_quorum(s, "leader")
        with pytest.raises(Unavailable) as ei:
            await write(keep.m, service("lost"), 10)
        assert str(ei.value).startswith("no quorum: 1 of 3 managers reachable"), str(ei.value)


async def test_losing_quorum_is_noticed_then_writes_and_reads_fail_fast(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        sid = await write(leader.m, service("kept"))
        await wait_until(lambda: all(has_service(x, sid) for x in s.members), 5, "the write everywhere")

        t0 = time.monotonic()
        await s.stop(*s.followers())
        # the leader notices within ~1.5 election timeouts and steps down (check-quorum)
        await wait_until(lambda: not leader.m.log.driver.has_quorum() and not leader.m.is_leader, 10,
                         "the survivor to notice it lost the quorum")
        assert time.monotonic() - t0 < 10
        t1 = time.monotonic()
        with pytest.raises(Unavailable) as ei:
            await write(leader.m, service("lost"), 10)
        msg = str(ei.value)
        assert msg.startswith(("no quorum", "not the leader", "no leader")), msg
        assert time.monotonic() - t1 < 1, "a write without a quorum must be refused at once"
        with pytest.raises(Unavailable, match="no quorum|no leader|not the leader|not confirmed"):
            await leader.m.read_barrier(timeout=3.0)
        assert time.monotonic() - t0 < 10
        assert has_service(leader, sid)
        assert leader.m.store.view().find_by_name("services", "lost") is None


# -- 6. force new cluster ----------------------------------------------------------------------


async def test_force_new_cluster_keeps_the_state_and_writes_alone(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        sid = await write(leader.m, service("survivor"))
        await wait_until(lambda: all(has_service(x, sid) for x in s.members), 5, "the write everywhere")
        nodes = {x.node_id for x in s.members}
        cluster_id = leader.m.cluster_id
        await s.close()

        x = s.members[1]  # any manager will do: this one was a follower
        m = await s.start(x, force_new_cluster=True)
        await wait_until(lambda: m.is_leader, 5, "the forced manager to lead alone")
        assert m.log.driver.voters == frozenset({x.rid})
        assert has_service(x, sid)
        assert {n["ID"] for n in m.store.view().list("nodes")} == nodes
        assert m.cluster_id == cluster_id
        sid2 = await write(m, service("after-force"))
        await m.read_barrier()
        assert has_service(x, sid2)

        # and it stays that way across a normal restart
        await s.stop(x)
        m = await s.start(x)
        await wait_until(lambda: m.is_leader, 5, "the forced manager to lead again after a restart")
        assert m.log.driver.voters == frozenset({x.rid})
        assert has_service(x, sid) and has_service(x, sid2)


# -- 7. ex-managers lose their rights at once (issue 7) -----------------------------------------


async def call_as(certs: Path, addr: str, type: str, body: dict[str, Any]) -> dict[str, Any]:
    """Request ``type`` on the manager at ``addr`` with the node certificate in ``certs``."""
    host, port = addr.rsplit(":", 1)
    p = await wire.connect_node(host, int(port), certs, timeout=5.0)
    try:
        return await p.request(type, body, timeout=10.0)
    finally:
        await p.close()


def set_role(node_id: str, role: str) -> Callable[[WriteTx], None]:
    def fn(tx: WriteTx) -> None:
        n = tx.get("nodes", node_id)
        assert n is not None
        n["Spec"] = {**n["Spec"], "Role": role}
        n.pop("Version", None)
        tx.update("nodes", n)
    return fn


async def test_a_demoted_manager_loses_manager_calls_and_raft_at_once(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        a, b = s.followers()
        await write(leader.m, set_role(a.node_id, "worker"))  # `node demote a`
        await wait_until(lambda: a.rid not in leader.m.log.driver.voters and all(
            (x.m.store.view().get("nodes", a.node_id) or {})["Spec"]["Role"] == "worker" for x in (leader, b)),
            5, "the demotion applied everywhere and a out of the Raft configuration")
        await s.stop(a)  # what its daemon does; its certificate still says manager
        assert cert_ou(a.certs) == "swarm-manager"
        refused = (rf"only manager nodes may call this \(node {a.node_id} is a worker now; "
                   r"its certificate still says manager\)")
        for x in (leader, b):
            for t, body in (("control.call", {"call": "services.remove", "args": {"ref": "x"}}),
                            ("raft.join", {"addr": a.addr}),
                            ("logs.collect", {"task_ids": []})):
                with pytest.raises(wire.RemoteError, match=refused):
                    await call_as(a.certs, x.addr, t, body)
        assert a.rid not in leader.m.log.driver.voters

        # its Raft messages are refused too: a vote in a much higher term (a leadership
        # transfer's, which skips the leader's stickiness) would depose the leader
        term = leader.m.log.term
        host, port = leader.addr.rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port), ssl=tlsutil.node_client_context(a.certs),
                                             server_hostname=tlsutil.MANAGER_SERVER_NAME)
        try:
            w.write(wire.encode_frame({"t": "raft-hello", "from": a.rid, "ch": "msg", "addr": a.addr}))
            vote = MsgVote(term=term + 100, frm=a.rid, to=leader.rid, index=10**9, log_term=term + 99,
                           transfer=True)
            w.write(wire.encode_frame({"t": "raft", "m": message_to_dict(vote)}))
            async with asyncio.timeout(5):
                assert await r.read() == b""  # closed
        finally:
            w.close()
        assert leader.m.is_leader and leader.m.log.term == term

        # `node rm a`: even its connections are refused now
        def node_rm(tx: WriteTx) -> None:
            c = tx.get("cluster", leader.m.cluster_id)
            assert c is not None
            blacklist_node(c, a.node_id)
            tx.update("cluster", c)
            tx.delete("nodes", a.node_id)

        await write(leader.m, node_rm)
        await wait_until(lambda: b.m.store.view().get("nodes", a.node_id) is None, 5, "the removal on b")
        for x in (leader, b):
            with pytest.raises(wire.RemoteError, match=f"^node {a.node_id} was removed from the swarm$"):
                await call_as(a.certs, x.addr, "ca.renew", {"csr": "x"})


async def test_raft_leave_removes_the_caller_only(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        a, b = s.followers()
        # a follower does not forward a leave (it would carry someone's ID): the leaver asks the leader
        with pytest.raises(wire.RemoteError, match="not the leader"):
            await call_as(a.certs, b.addr, "raft.leave", {"node_id": b.node_id})
        # the body's node ID is ignored: a leaves, b stays
        assert await call_as(a.certs, leader.addr, "raft.leave", {"node_id": b.node_id}) == {"ok": True}
        await wait_until(lambda: a.rid not in leader.m.log.driver.voters, 5, "a out of the Raft configuration")
        view = leader.m.store.view()
        assert view.get("nodes", a.node_id)["Spec"]["Role"] == "worker"  # type: ignore[index]
        assert view.get("nodes", b.node_id)["Spec"]["Role"] == "manager"  # type: ignore[index]
        assert leader.m.log.driver.voters == frozenset({leader.rid, b.rid})
        # what `swarm leave --force` on a manager runs: through the leader
        await b.m.leave_raft()
        await wait_until(lambda: leader.m.log.driver.voters == frozenset({leader.rid}), 5, "b out too")


# -- 8. the control API on a follower: control.call to the leader ---------------------------------


SPEC = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
        "Mode": {"Replicated": {"Replicas": 0}}}


async def test_a_write_through_a_followers_api_reaches_the_leader_as_a_control_call(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        follower = s.followers()[0]
        calls: list[dict[str, Any]] = []
        serve = control.handler(leader.m)

        async def spy(peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
            calls.append({"from": node_id, **body})
            return await serve(peer, node_id, role, body)

        assert leader.m.server is not None
        leader.m.server.register(control.MESSAGE, spy, role="manager")
        app = web.Application()
        add_swarm_routes(app, follower.m)
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/services/create", json=SPEC)
            assert r.status == 201, await r.text()
            sid = (await r.json())["ID"]
            assert has_service(leader, sid)  # committed by the leader before the answer
            assert calls == [{"from": follower.node_id, "call": "services.create", "args": {"spec_body": SPEC}}]
            await wait_until(lambda: has_service(follower, sid), 5, "the service on the follower")

            # the leader's errors come back as the same class: status and message as on the leader
            r = await client.post(f"/services/{sid}/update?version=1", json=SPEC)
            assert r.status == 500 and r.headers["Content-Type"] == "application/json"
            assert "out of sequence" in (await r.json())["message"]
            r = await client.delete(f"/nodes/{leader.node_id}")
            assert r.status == 400
            assert (await r.json())["message"] == (
                f"rpc error: code = FailedPrecondition desc = node {leader.node_id} is a cluster manager and "
                "is a member of the raft cluster. It must be demoted to worker before removal")
            assert [c["call"] for c in calls] == ["services.create", "services.update", "nodes.remove"]

            # a spec the leader refuses: its InvalidArgument comes back as the follower's 400
            r = await client.post("/services/create", json={"Name": "x", "TaskTemplate": {"ContainerSpec": {}}})
            assert r.status == 400 and "InvalidArgument" in (await r.json())["message"]
            assert len(calls) == 4
            # a body msgpack cannot carry never leaves the follower: its spec is checked there (400)
            r = await client.post("/services/create", json=dict(SPEC, Mode={"Replicated": {"Replicas": 2**70}}))
            assert r.status == 400 and "InvalidArgument" in (await r.json())["message"], await r.text()
            assert len(calls) == 4

            r = await client.delete(f"/services/{sid}")
            assert r.status == 200
            assert not has_service(leader, sid)
            assert calls[-1]["call"] == "services.remove"


async def test_a_workers_control_call_is_refused(tmp_path: Path) -> None:
    async with swarm(tmp_path) as s:
        leader = await s.converged()
        wcerts = tmp_path / "w1"
        node_id, role, _ = await join(leader.addr, leader.m.join_tokens()["Worker"], "w1", "", wcerts,
                                      timeout=JOIN_TIMEOUT)
        assert role == "worker"
        for x in s.members:
            with pytest.raises(wire.RemoteError, match=r"control\.call: only manager nodes may call this "
                                                       r"\(this node is a worker\)"):
                await call_as(wcerts, x.addr, control.MESSAGE, {"call": "services.create", "args": {"spec_body": SPEC}})
        assert leader.m.store.view().list("services") == []

        # between managers, a call or argument the registry does not know is an InvalidArgument
        follower = s.followers()[0]
        r = await call_as(follower.certs, leader.addr, control.MESSAGE, {"call": "services.create",
                                                                        "args": {"spec_body": SPEC, "x": 1}})
        assert r == {"error": {"type": "InvalidArgument",
                               "message": "services.create: unknown argument 'x'"}}
        r = await call_as(follower.certs, leader.addr, control.MESSAGE, {"call": "nodes.list", "args": {}})
        assert r["error"]["type"] == "InvalidArgument"
        # a follower answers "leadership moved" rather than run a call it is sent
        r = await call_as(leader.certs, follower.addr, control.MESSAGE, {"call": "services.remove",
                                                                        "args": {"ref": "x"}})
        assert r == {"error": {"type": "Unavailable", "message": control.LEADERSHIP_MOVED}}
