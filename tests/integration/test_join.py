"""Join and session on loopback: a real 2377 server (CA + Store on a WAL + Dispatcher) and a real Agent.

Everything is real (TLS with certificates from our CA, msgpack frames, the Store on disk) except
the executor: ``RecordingExecutor`` is a test double that records assignments and reports task
states the way the real executor does, without running containers. No root needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from manager.ca import RootCA, blacklist_node
from manager.dispatcher import Dispatcher
from manager.server import ManagerServer, make_node
from manager.store import Store, WriteTx
from shoal.base.util import new_id
from shoal.rpc import tlsutil, wire
from tests.memory import PeakRss
from tests.stores import open_store
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

    async def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]],
                              networks: dict[str, Any] | None = None,
                              ingress: dict[str, Any] | None = None,
                              data_path_port: int | None = None) -> None:
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
    store = await open_store(d / "raft")
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


# -- the cluster port against hostile peers (issue 7) --------------------------------------------


async def raw_tls(mgr: Manager, certs: Path | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the manager's 2377 that the test drives frame by frame: without a
    client certificate, or with the node certificate in ``certs``."""
    if certs is None:
        ctx = tlsutil.client_context(ca_pem=mgr.ca.cert_pem)
    else:
        ctx = tlsutil.client_context(certs / "node.crt", certs / "node.key", certs / "ca.crt")
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", mgr.server.port, ssl=ctx, server_hostname=tlsutil.MANAGER_SERVER_NAME), 5)


async def read_until_closed(r: asyncio.StreamReader, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Read frames until the server closes the connection; return them. Fails the test if the
    connection is still open after ``timeout`` seconds."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                frames.append(await wire.read_frame(r))
            except (wire.WireError, OSError, ssl.SSLError):
                return frames


MILLION_MAPS = b"\xdd" + struct.pack(">I", 1_000_000) + b"\x80" * 1_000_000


def frame_with_raw_body(t: str, rid: int, body: bytes) -> bytes:
    """``{"t": t, "id": rid, "b": <body>}`` with ``body`` given as raw msgpack bytes."""
    data = b"\x83" + msgpack.packb("t") + msgpack.packb(t) + msgpack.packb("id") + msgpack.packb(rid) \
        + msgpack.packb("b") + body
    return struct.pack(">I", len(data)) + data


async def test_oversized_first_frame_without_certificate_is_closed_and_logged_once(
        mgr: Manager, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r, w = await raw_tls(mgr)
    try:
        # a well-formed ca.root, padded to 70 KB: over the 64 KiB a peer without a certificate may send
        w.write(wire.encode_frame({"t": "ca.root", "id": 1, "b": {"pad": "x" * 70_000}}))
        assert await read_until_closed(r) == []  # closed, not answered
    finally:
        w.close()
    lines = [rec for rec in caplog.records if "frame over pre-authentication limit" in rec.getMessage()]
    assert len(lines) == 1, [rec.getMessage() for rec in caplog.records]
    assert lines[0].levelno == logging.INFO and "65536" in lines[0].getMessage()
    assert not [rec for rec in caplog.records if rec.exc_info]
    await wait_for(lambda: mgr.server.preauth_connections == 0, 5, "the connection to be forgotten")


@pytest.mark.parametrize("who", ["no certificate", "worker"])
async def test_a_million_empty_maps_on_2377_is_refused_with_bounded_memory(
        mgr: Manager, tmp_path: Path, who: str) -> None:
    certs = None
    if who == "worker":
        certs = tmp_path / "w"
        await join(mgr.addr, mgr.tokens()["Worker"], "w", "", certs, timeout=10)
    r, w = await raw_tls(mgr, certs)
    try:
        with PeakRss() as mem:
            w.write(frame_with_raw_body("session.heartbeat", 1, MILLION_MAPS))
            assert await read_until_closed(r, 10) == []
        assert mem.growth < 50 * 1024 * 1024
    finally:
        w.close()
    # the server is fine
    r, w = await raw_tls(mgr)
    try:
        w.write(wire.encode_frame({"t": "ca.root", "id": 1, "b": {}}))
        assert (await wire.read_frame(r))["b"]["cert"] == mgr.ca.cert_pem
    finally:
        w.close()


@pytest.mark.parametrize("who", ["no certificate", "worker"])
async def test_a_connection_without_a_first_frame_is_closed(mgr: Manager, tmp_path: Path, who: str) -> None:
    certs = None
    if who == "worker":
        certs = tmp_path / "w"
        await join(mgr.addr, mgr.tokens()["Worker"], "w", "", certs, timeout=10)
    mgr.server.first_frame_timeout = 0.3
    r, w = await raw_tls(mgr, certs)
    try:
        t0 = time.monotonic()
        assert await read_until_closed(r, 5) == []
        assert time.monotonic() - t0 < 3
    finally:
        w.close()


async def test_unauthenticated_connections_are_capped(mgr: Manager, tmp_path: Path) -> None:
    wcerts = tmp_path / "w"
    await join(mgr.addr, mgr.tokens()["Worker"], "w", "", wcerts, timeout=10)
    mgr.server.max_preauth = 3
    idle = [await raw_tls(mgr) for _ in range(3)]
    try:
        await wait_for(lambda: mgr.server.preauth_connections == 3, 5, "three unauthenticated connections")
        r, w = await raw_tls(mgr)  # the fourth is closed at once, without a word
        w.write(wire.encode_frame({"t": "ca.root", "id": 1, "b": {}}))
        t0 = time.monotonic()
        assert await read_until_closed(r) == []
        assert time.monotonic() - t0 < 2
        w.close()
        # a node with a certificate still gets in
        r, w = await raw_tls(mgr, wcerts)
        w.write(wire.encode_frame({"t": "ca.root", "id": 1, "b": {}}))
        assert (await wire.read_frame(r))["b"]["cert"] == mgr.ca.cert_pem
        w.close()
    finally:
        for _, iw in idle:
            iw.close()
    # once they are gone, joins work again
    await wait_for(lambda: mgr.server.preauth_connections == 0, 5, "the idle connections to be forgotten")
    await join(mgr.addr, mgr.tokens()["Worker"], "w2", "", tmp_path / "w2", timeout=10)


async def test_garbage_without_a_certificate_is_one_log_line_not_tracebacks(
        mgr: Manager, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    garbage = [
        wire.encode_frame({"t": "session.open", "id": 1, "b": {}}),  # a call that needs a certificate
        wire.encode_frame({"t": "session.status", "b": {"updates": []}}),  # a push
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # not msgpack
        wire.encode_frame({"id": 1, "b": {}}),  # no type
        struct.pack(">I", 5) + b"\x93\x01\x02\x03\x04",  # not a map, trailing bytes
    ]
    replies = []
    for _ in range(8):
        for g in garbage:
            r, w = await raw_tls(mgr)
            w.write(g)
            replies.append(await read_until_closed(r))
            w.close()
    # a request is answered (once) before the connection is closed
    assert replies[0] == [{"t": "error", "id": 1, "msg": "session.open: this call needs a node certificate "
                                                         "issued by this swarm's CA; join the swarm first"}]
    assert all(rep == [] for i, rep in enumerate(replies) if i % len(garbage) != 0)
    assert not [rec for rec in caplog.records if rec.exc_info], "no tracebacks"
    ours = [rec for rec in caplog.records if rec.name.startswith(("manager", "shoal")) and rec.levelno >= logging.INFO]
    assert 1 <= len(ours) <= 2, [rec.getMessage() for rec in ours]  # throttled: one line per 10 s


async def test_a_flooding_worker_that_does_not_read_is_bounded_and_disconnected(
        mgr: Manager, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="manager.server")
    wcerts = tmp_path / "w"
    await join(mgr.addr, mgr.tokens()["Worker"], "w", "", wcerts, timeout=10)
    mgr.server.write_timeout = 0.5
    r, w = await raw_tls(mgr, wcerts)
    try:
        most = 0
        for i in range(1, 20_001):  # ~14 MB of replies that are never read
            w.write(wire.encode_frame({"t": "ca.root", "id": i, "b": {}}))
            if i % 500 == 0:
                await asyncio.sleep(0)
                most = max([most, *(p.inflight for p in mgr.server.peers)])
        await wait_for(lambda: not mgr.server.peers, 15, "the server to drop the connection")
        assert most <= wire.MAX_INFLIGHT
        assert any("read nothing for 0.5 s" in rec.getMessage() for rec in caplog.records)
    finally:
        w.close()


async def test_a_removed_node_is_refused_on_2377(mgr: Manager, tmp_path: Path) -> None:
    wcerts = tmp_path / "w"
    node_id, _, _ = await join(mgr.addr, mgr.tokens()["Worker"], "w", "", wcerts, timeout=10)
    old = await wire.connect_node("127.0.0.1", mgr.server.port, wcerts, timeout=5)
    try:
        assert (await old.request("session.open", {}))["session_id"]

        def node_rm(tx: WriteTx) -> None:  # what DELETE /nodes/{id} writes (manager.controlapi.nodes.remove)
            c = tx.get("cluster", mgr.cluster_id)
            assert c is not None
            blacklist_node(c, node_id)
            tx.update("cluster", c)
            tx.delete("nodes", node_id)

        await mgr.store.update(node_rm)
        # a new connection with its certificate: refused with the reason, then closed
        p = await wire.connect_node("127.0.0.1", mgr.server.port, wcerts, timeout=5)
        try:
            with pytest.raises(wire.RemoteError, match=f"^node {node_id} was removed from the swarm$"):
                await p.request("ca.renew", {"csr": "x"})
            await asyncio.wait_for(p.wait_closed(), 5)
        finally:
            await p.close()
        # a connection opened before: its next request is refused the same way and it is closed
        if not old.closed:
            with pytest.raises(wire.WireError, match="removed from the swarm|closed"):
                await old.request("ca.root", {})
            await asyncio.wait_for(old.wait_closed(), 5)
    finally:
        await old.close()


async def test_a_demoted_manager_loses_manager_calls_at_once(mgr: Manager, tmp_path: Path) -> None:
    async def ping(peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"pong": node_id}

    mgr.server.register("raft.ping", ping, role="manager")
    mcerts = tmp_path / "m"
    mid, _, _ = await join(mgr.addr, mgr.tokens()["Manager"], "m", "", mcerts, timeout=10)
    p = await wire.connect_node("127.0.0.1", mgr.server.port, mcerts, timeout=5)
    try:
        assert await p.request("raft.ping", {}) == {"pong": mid}

        def demote(tx: WriteTx) -> None:
            n = tx.get("nodes", mid)
            assert n is not None
            n["Spec"]["Role"] = "worker"
            tx.update("nodes", n)

        await mgr.store.update(demote)
        with pytest.raises(wire.RemoteError, match=rf"raft.ping: only manager nodes may call this \(node {mid} "
                                                   r"is a worker now; its certificate still says manager\)"):
            await p.request("raft.ping", {})
        await mgr.store.update(lambda tx: tx.delete("nodes", mid))
        with pytest.raises(wire.RemoteError, match=f"node {mid} is not part of this swarm"):
            await p.request("raft.ping", {})
    finally:
        await p.close()
