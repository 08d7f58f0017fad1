"""Join and session on loopback: a real 2377 server (CA + Store on a WAL + Dispatcher) and a real Agent.

Everything is real (TLS with certificates from our CA, msgpack frames, the Store on disk) except
the executor: ``RecordingExecutor`` is a test double that records assignments and reports task
states the way the real executor does, without running containers. No root needed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from manager.ca import RootCA
from manager.dispatcher import Dispatcher
from manager.server import ManagerServer, make_node
from manager.store import Store, WriteTx
from raft.log import SingleVoterLog
from shoal import tlsutil, wire
from shoal.util import new_id
from tests.waiting import wait_until as wait_for
from worker.agent import Agent
from worker.join import JoinError, join, local_description

PERIOD = 0.3


class RecordingExecutor:
    """Test double of worker.executor.Executor: records assignments, reports each new task as
    accepted → running (with a fake ContainerStatus), serves canned log lines."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self.report: Callable[[str, dict[str, Any]], None] | None = None
        self.seen: set[str] = set()

    async def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
        self.calls.append((node, tasks))
        assert self.report is not None
        for t in tasks:
            if t["ID"] not in self.seen and t["DesiredState"] == "running":
                self.seen.add(t["ID"])
                self.report(t["ID"], {"State": "accepted", "Message": "accepted"})
                self.report(t["ID"], {"State": "running", "Message": "started",
                                      "ContainerStatus": {"ContainerID": "c" * 64, "PID": 777, "ExitCode": None}})

    async def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        return [{"task_id": t, "stream": "stdout", "time": "2026-01-01T00:00:00.000000000Z", "log": f"hello from {t}\n"}
                for t in task_ids]


@dataclass
class Manager:
    """The manager side as manager.manager will wire it: store, CA, dispatcher, 2377 server."""

    dir: Path
    store: Store
    ca: RootCA
    dispatcher: Dispatcher
    server: ManagerServer
    cluster_id: str

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def tokens(self) -> dict[str, str]:
        c = self.store.view().get("cluster", self.cluster_id)
        assert c is not None
        return dict(c["JoinTokens"])

    def nodes(self) -> list[dict[str, Any]]:
        return self.store.view().list("nodes")

    def node(self, nid: str) -> dict[str, Any]:
        n = self.store.view().get("nodes", nid)
        assert n is not None
        return n


async def start_manager(d: Path, period: float = PERIOD, port: int = 0) -> Manager:
    certs = d / "certs"
    if (certs / "ca.key").exists():
        ca = RootCA.load(certs)
    else:
        ca = RootCA.create(certs)
    store = Store(SingleVoterLog(d / "raft"))
    clusters = store.view().list("cluster")
    mgr_id = ""
    if clusters:
        cluster_id = clusters[0]["ID"]
    else:
        cluster_id = new_id()
        mgr_id = new_id()
        ca.issue_node_files(certs, mgr_id, "manager", cluster_id)
        await store.update(lambda tx: tx.create(
            "cluster", {"ID": cluster_id, "Spec": {"Name": "default"}, "JoinTokens": ca.new_join_tokens()}))
    dispatcher = Dispatcher(store, heartbeat_period=period, grace_multiplier=3)
    await dispatcher.start()
    ctx = tlsutil.server_context(certs / "node.crt", certs / "node.key", certs / "ca.crt")
    server = ManagerServer(store, ca, dispatcher, ctx)
    await server.start("127.0.0.1", port)
    server.advertise_addr = f"127.0.0.1:{server.port}"
    if mgr_id:  # the manager's own Node, with the port we got
        node = make_node(mgr_id, "manager", {"Hostname": "mgr"}, "127.0.0.1", server.advertise_addr)
        await store.update(lambda tx: tx.create("nodes", node))
    return Manager(d, store, ca, dispatcher, server, cluster_id)


async def stop_manager(m: Manager) -> None:
    await m.server.stop()
    await m.dispatcher.stop()
    await m.store.close()


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[Manager]:
    m = await start_manager(tmp_path / "mgr")
    try:
        yield m
    finally:
        await stop_manager(m)


async def free_port() -> int:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(srv.sockets[0].getsockname()[1])
    srv.close()
    await srv.wait_closed()
    return port


async def test_full_join_session_assignment_status_logs(mgr: Manager, tmp_path: Path) -> None:
    wcerts = tmp_path / "w1" / "certs"
    desc = local_description("w1")
    node_id, role, managers = await join(mgr.addr, mgr.tokens()["Worker"], "w1", "10.99.0.12", wcerts, desc, timeout=10)
    assert role == "worker" and managers == [mgr.addr]  # the store's manager list
    # files: pinned CA, our cert (CN = node ID, OU = swarm-worker), private key 0600
    for f in ("ca.crt", "node.crt", "node.key"):
        assert (wcerts / f).is_file()
    assert stat.S_IMODE(os.stat(wcerts / "node.key").st_mode) == 0o600
    assert (wcerts / "ca.crt").read_text() == mgr.ca.cert_pem
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate((wcerts / "node.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node_id
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "swarm-worker"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == mgr.cluster_id
    # the Node object
    n = mgr.node(node_id)
    assert n["Spec"]["Role"] == "worker" and n["Spec"]["Availability"] == "active"
    assert n["Description"]["Hostname"] == "w1"
    assert n["Description"]["Platform"]["OS"] == "linux"
    assert n["Description"]["Resources"]["NanoCPUs"] == desc["Resources"]["NanoCPUs"] > 0
    assert n["Description"]["Engine"]["EngineVersion"]
    assert n["Status"]["State"] == "unknown" and n["Status"]["Addr"] == "10.99.0.12"
    assert "ManagerStatus" not in n

    # the session: the real Agent with the recording executor
    ex = RecordingExecutor()
    agent = Agent(node_id, [mgr.server.advertise_addr], wcerts, ex, desc, advertise_addr="10.99.0.12")
    ex.report = agent.report
    agent.start()
    try:
        await agent.wait_connected(5)
        await wait_for(lambda: mgr.node(node_id)["Status"]["State"] == "ready", 5, "node ready")
        assert mgr.node(node_id)["Status"]["Addr"] == "10.99.0.12"
        assert 0.9 * PERIOD <= (agent.heartbeat_period or 0) <= 1.1 * PERIOD
        await wait_for(lambda: len(ex.calls) >= 1, 5, "initial (empty) assignments")
        assert ex.calls[-1][0]["ID"] == node_id and ex.calls[-1][1] == []

        # the scheduler assigns a task → the executor gets it → its reports reach the store
        task = {"ID": "task1", "ServiceID": "svc1", "Slot": 1, "NodeID": node_id, "DesiredState": "running",
                "Spec": {"ContainerSpec": {"Image": "busybox"}}, "Status": {"State": "assigned", "Message": ""}}
        await mgr.store.update(lambda tx: tx.create("tasks", task))
        await wait_for(lambda: any(t["ID"] == "task1" for t in ex.calls[-1][1]), 5, "task1 assigned to the executor")
        await wait_for(lambda: mgr.store.view().get("tasks", "task1")["Status"]["State"] == "running", 5,  # type: ignore[index]
                       "task1 running in the store")
        st = mgr.store.view().get("tasks", "task1")["Status"]  # type: ignore[index]
        assert st["ContainerStatus"]["PID"] == 777 and st["Message"] == "started"

        # logs through the session
        r = await mgr.dispatcher.request_logs(node_id, {"task_ids": ["task1"], "tail": -1, "since": 0, "timestamps": False})
        assert r["lines"][0]["log"] == "hello from task1\n"

        # heartbeats keep it ready for well over the grace period (3 × 0.3 s)
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            assert mgr.node(node_id)["Status"]["State"] == "ready"
            await asyncio.sleep(0.05)
    finally:
        await agent.stop()
    # no more heartbeats → down after the grace
    await wait_for(lambda: mgr.node(node_id)["Status"]["State"] == "down", 5, "node down after the agent stopped")
    assert mgr.node(node_id)["Status"]["Message"] == "heartbeat failure"


async def test_agent_reconnects_after_manager_restart(tmp_path: Path) -> None:
    m = await start_manager(tmp_path / "mgr", period=1.0)
    port = m.server.port
    agent: Agent | None = None
    try:
        wcerts = tmp_path / "w" / "certs"
        node_id, _, _ = await join(m.addr, m.tokens()["Worker"], "w", "", wcerts, timeout=10)
        ex = RecordingExecutor()
        agent = Agent(node_id, [m.addr], wcerts, ex, local_description("w"), backoff_max=0.5)
        ex.report = agent.report
        agent.start()
        await agent.wait_connected(5)
        first = agent.session_id
        task = {"ID": "tr", "ServiceID": "s", "Slot": 1, "NodeID": node_id, "DesiredState": "running",
                "Spec": {"ContainerSpec": {"Image": "busybox"}}, "Status": {"State": "assigned", "Message": ""}}
        await m.store.update(lambda tx: tx.create("tasks", task))
        await wait_for(lambda: m.store.view().get("tasks", "tr")["Status"]["State"] == "running", 5,  # type: ignore[index]
                       "tr running")
        # restart the manager side on the same port, with the same data (the store replays its WAL)
        await stop_manager(m)
        await wait_for(lambda: agent is not None and not agent.connected.is_set(), 5, "agent notices the loss")
        # a status reported while disconnected is kept and sent after reconnecting
        agent.report("tr", {"State": "complete", "Message": "finished",
                            "ContainerStatus": {"ContainerID": "c" * 64, "PID": 0, "ExitCode": 0}})
        await asyncio.sleep(4.0)  # a long outage: the uncapped backoff would have grown past 4 s
        m = await start_manager(tmp_path / "mgr", period=1.0, port=port)
        restarted = time.monotonic()
        await wait_for(lambda: agent is not None and agent.connected.is_set() and agent.session_id != first, 10,
                       "a new session after the restart")
        # the backoff is capped at the heartbeat period (1 s ± jitter)
        assert time.monotonic() - restarted < 2.0
        await wait_for(lambda: m.node(node_id)["Status"]["State"] == "ready", 5, "node ready again")
        assert m.node(node_id)["Status"]["Addr"] == "127.0.0.1"  # no advertise address: the peer's
        await wait_for(lambda: m.store.view().get("tasks", "tr")["Status"]["State"] == "complete", 5,  # type: ignore[index]
                       "the status reported while disconnected reaches the store")
    finally:
        if agent is not None:
            await agent.stop()
        await stop_manager(m)


async def test_manager_token_gives_manager_role(mgr: Manager, tmp_path: Path) -> None:
    node_id, role, _ = await join(mgr.addr, mgr.tokens()["Manager"], "m2", "10.99.0.13", tmp_path / "m2", timeout=10)
    assert role == "manager"
    n = mgr.node(node_id)
    assert n["Spec"]["Role"] == "manager"
    assert n["ManagerStatus"]["Addr"] == "10.99.0.13:2377"
    assert "10.99.0.13:2377" in mgr.dispatcher.manager_addrs()
    assert tlsutil.ROLE_BY_OU["swarm-manager"] == "manager"


async def test_a_node_that_cannot_manage_is_refused_a_manager_token(mgr: Manager, tmp_path: Path) -> None:
    """Issue 7: a joiner whose listen address is busy says so (``cannot_manage``); a manager
    token is then refused before the node is added (it would be a manager that never comes up),
    while a worker token, which needs no listener, is accepted."""
    before, index = mgr.nodes(), mgr.store.applied_index
    why = "listen address 0.0.0.0:2377 is already in use: another process listens on port 2377"
    with pytest.raises(JoinError, match=f"refused the join: this node cannot join as a manager: {why}"):
        await join(mgr.addr, mgr.tokens()["Manager"], "m2", "10.99.0.13", tmp_path / "m2", timeout=10,
                   cannot_manage=why)
    assert mgr.nodes() == before and mgr.store.applied_index == index
    assert not (tmp_path / "m2").exists()
    node_id, role, _ = await join(mgr.addr, mgr.tokens()["Worker"], "w2", "10.99.0.14", tmp_path / "w2",
                                  timeout=10, cannot_manage=why)
    assert role == "worker" and mgr.node(node_id)["Spec"]["Role"] == "worker"


async def test_wrong_revoked_and_foreign_tokens_are_refused(mgr: Manager, tmp_path: Path) -> None:
    before = mgr.nodes()
    index = mgr.store.applied_index
    good = mgr.tokens()["Worker"]
    d = tmp_path / "w"

    # right CA, wrong secret
    wrong = mgr.ca.join_token()
    with pytest.raises(JoinError, match=r"refused the join: invalid join token$"):
        await join(mgr.addr, wrong, "w", "", d, timeout=10)

    # a token of another swarm's CA: the joiner refuses the served CA before sending anything
    other = RootCA.create(tmp_path / "otherca")
    with pytest.raises(JoinError, match=rf"the CA served by {mgr.addr} does not match the join token"):
        await join(mgr.addr, other.join_token(), "w", "", d, timeout=10)

    # a rotated (revoked) token
    def rotate(tx: WriteTx) -> None:
        c = tx.get("cluster", mgr.cluster_id)
        assert c is not None
        c["JoinTokens"]["Worker"] = mgr.ca.join_token()
        tx.update("cluster", c)

    await mgr.store.update(rotate)
    index += 1
    with pytest.raises(JoinError, match="invalid join token"):
        await join(mgr.addr, good, "w", "", d, timeout=10)

    # malformed: clear ValueError before any network traffic (the address has nothing listening)
    port = await free_port()
    with pytest.raises(ValueError, match="invalid join token: .*50 base-36"):
        await join(f"127.0.0.1:{port}", "SWMTKN-1-abc-def", "w", "", d, timeout=10)

    # nothing changed in the cluster, and no files were written
    assert mgr.nodes() == before
    assert mgr.store.applied_index == index
    assert not d.exists()


async def test_nothing_listening_and_silent_server_fail_within_timeout(mgr: Manager, tmp_path: Path) -> None:
    tok = mgr.tokens()["Worker"]
    port = await free_port()
    t0 = time.monotonic()
    with pytest.raises(JoinError, match=rf"could not connect to 127.0.0.1:{port}: connection refused"):
        await join(f"127.0.0.1:{port}", tok, "w", "", tmp_path / "w", timeout=5)
    assert time.monotonic() - t0 < 2

    # a server that accepts but never answers TLS: a clear error once the timeout passes
    conns: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    sport = srv.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(JoinError, match=rf"127.0.0.1:{sport}.*(timed out|within) "):
            await join(f"127.0.0.1:{sport}", tok, "w", "", tmp_path / "w", timeout=1.0)
        assert 0.9 <= time.monotonic() - t0 < 3
    finally:
        for w in conns:
            w.close()
        srv.close()
        await srv.wait_closed()
    with pytest.raises(ValueError, match="port must be a number"):
        await join("127.0.0.1:notaport", tok, "w", "", tmp_path / "w", timeout=1.0)


async def test_session_calls_need_a_node_certificate(mgr: Manager, tmp_path: Path) -> None:
    # no client certificate: only ca.root / ca.join are allowed
    anon = await wire.connect("127.0.0.1", mgr.server.port, tlsutil.client_context(ca_pem=mgr.ca.cert_pem),
                              server_hostname=tlsutil.MANAGER_SERVER_NAME, timeout=5)
    try:
        assert (await anon.request("ca.root", {}))["cert"] == mgr.ca.cert_pem
        with pytest.raises(wire.RemoteError, match="needs a node certificate"):
            await anon.request("session.open", {})
    finally:
        await anon.close()
    # a certificate from another CA: the TLS handshake (or the first exchange) fails
    other = RootCA.create(tmp_path / "otherca")
    other.issue_node_files(tmp_path / "intruder", "intruder", "worker", "x")
    ctx = tlsutil.client_context(tmp_path / "intruder/node.crt", tmp_path / "intruder/node.key", ca_pem=mgr.ca.cert_pem)
    with pytest.raises(wire.WireError):
        p = await wire.connect("127.0.0.1", mgr.server.port, ctx, server_hostname=tlsutil.MANAGER_SERVER_NAME, timeout=5)
        try:
            await p.request("session.open", {}, timeout=5)
        finally:
            await p.close()
    assert all(n["ID"] != "intruder" for n in mgr.nodes())


async def test_registered_calls_check_the_role(mgr: Manager, tmp_path: Path) -> None:
    async def ping(peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"pong": node_id, "role": role}

    mgr.server.register("raft.ping", ping, role="manager")
    wid, _, _ = await join(mgr.addr, mgr.tokens()["Worker"], "w", "", tmp_path / "w", timeout=10)
    mid, _, _ = await join(mgr.addr, mgr.tokens()["Manager"], "m", "", tmp_path / "m", timeout=10)

    async def call(d: Path) -> dict[str, Any]:
        ctx = tlsutil.client_context(d / "node.crt", d / "node.key", d / "ca.crt")
        p = await wire.connect("127.0.0.1", mgr.server.port, ctx, server_hostname=tlsutil.MANAGER_SERVER_NAME)
        try:
            return await p.request("raft.ping", {})
        finally:
            await p.close()

    with pytest.raises(wire.RemoteError, match="only manager nodes may call this"):
        await call(tmp_path / "w")
    assert await call(tmp_path / "m") == {"pong": mid, "role": "manager"}
    assert wid != mid


async def test_removed_node_loses_its_session(mgr: Manager, tmp_path: Path) -> None:
    wcerts = tmp_path / "w"
    node_id, _, _ = await join(mgr.addr, mgr.tokens()["Worker"], "w", "", wcerts, timeout=10)
    ex = RecordingExecutor()
    agent = Agent(node_id, [mgr.addr], wcerts, ex, local_description("w"), backoff_max=0.3)
    ex.report = agent.report
    agent.start()
    try:
        await agent.wait_connected(5)
        await mgr.store.update(lambda tx: tx.delete("nodes", node_id))
        await wait_for(lambda: "not part of this swarm" in agent.last_error, 5, "the agent told it was removed")
        assert not agent.connected.is_set()
    finally:
        await agent.stop()


def test_join_and_session_on_uvloop(tmp_path: Path) -> None:
    """The full path again on uvloop's event loop, which shoald installs (TLS identity, pushes, timers)."""
    import uvloop

    async def main() -> None:
        m = await start_manager(tmp_path / "mgr")
        try:
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            await test_full_join_session_assignment_status_logs(m, tmp_path)
        finally:
            await stop_manager(m)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
