"""Tests of the swarm routes (shoal.daemon.http.{swarm,nodes,services,tasks} over
manager.controlapi) with aiohttp's test client against a real Store on a temp WAL.
``ManagerTestDouble`` stands in for manager.manager.Manager (only the attributes the routes
use); the orchestrator and scheduler loops run for real where a test needs tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import shoal.daemon.http.logs as logs_module
from manager.ca import blacklist_node, is_blacklisted
from manager.orchestrator import Orchestrator
from manager.scheduler import Scheduler
from manager.specs import default_swarm_spec
from manager.store import Store, WriteTx
from shoal.daemon.http.app import add_swarm_routes as add_routes
from tests.stores import open_store


def creating(table: str, *objs: dict[str, Any]) -> Callable[[WriteTx], None]:
    """A store transaction that creates ``objs`` in ``table``."""
    def fn(tx: WriteTx) -> None:
        for o in objs:
            tx.create(table, o)
    return fn


class ManagerTestDouble:
    """Test double of the Manager: a real store plus canned tokens, CA and log lines."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cluster_id = "cluster1"
        self.node_id = "n1"
        self.ca_cert_pem = "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n"
        self.log_calls: list[tuple[list[str], int, float, bool]] = []
        self.lines: list[dict[str, Any]] = []
        self.live: dict[str, dict[str, Any] | None] = {}

    def join_tokens(self) -> dict[str, str]:
        return {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"}

    def manager_status(self, node_id: str) -> dict[str, Any] | None:
        """As Manager.manager_status: from Raft at read time (here ``live``), else the stored copy."""
        if node_id in self.live:
            return self.live[node_id]
        node = self.store.view().get("nodes", node_id) or {}
        return node.get("ManagerStatus")

    async def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        self.log_calls.append((task_ids, tail, since, timestamps))
        return [ln for ln in self.lines if ln["task_id"] in task_ids]


def _node(id: str, host: str, state: str = "ready") -> dict[str, Any]:
    return {"ID": id, "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
            "Description": {"Hostname": host}, "Status": {"State": state}}


SPEC = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["httpd", "-f"]}},
        "Mode": {"Replicated": {"Replicas": 3}}}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], ManagerTestDouble]]:
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    await store.update(creating("nodes", *[_node(f"node{i}abc", f"h{i}") for i in (1, 2, 3)]))
    mgr = ManagerTestDouble(store)
    app = web.Application()
    add_routes(app, mgr)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, mgr
    finally:
        await client.close()
        await store.close()


async def test_swarm_inspect_and_update(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, _ = env
    r = await client.get("/v1.41/swarm")
    assert r.status == 200
    sw = await r.json()
    assert sw["ID"] == "cluster1" and sw["JoinTokens"] == {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"}
    assert sw["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 5
    spec = sw["Spec"]
    spec["Orchestration"]["TaskHistoryRetentionLimit"] = 2
    r = await client.post(f"/swarm/update?version={sw['Version']['Index']}", json=spec)
    assert r.status == 200, await r.text()
    sw2 = await (await client.get("/swarm")).json()
    assert sw2["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    r = await client.post(f"/swarm/update?version={sw['Version']['Index']}", json=spec)  # stale
    assert r.status == 500
    assert (await r.json())["message"] == "rpc error: code = Unknown desc = update out of sequence"


async def test_service_create_inspect_list_and_errors(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, mgr = env
    r = await client.post("/v1.41/services/create", json=SPEC)
    assert r.status == 201
    body = await r.json()
    sid = body["ID"]
    assert body["Warnings"] == []
    # by ID, by name, by prefix
    for ref in (sid, "web", sid[:6]):
        r = await client.get(f"/services/{ref}")
        assert r.status == 200, ref
        assert (await r.json())["ID"] == sid
    plain = await (await client.get(f"/services/{sid}?insertDefaults=false")).json()
    assert "RestartPolicy" not in plain["Spec"]["TaskTemplate"]
    full = await (await client.get(f"/services/{sid}?insertDefaults=true")).json()
    assert full["Spec"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    assert full["Spec"]["UpdateConfig"]["Monitor"] == 5_000_000_000

    # duplicate name: 409 and nothing stored
    r = await client.post("/services/create", json=SPEC)
    assert r.status == 409
    assert (await r.json())["message"] == "rpc error: code = AlreadyExists desc = name conflicts with an existing object"
    assert len(mgr.store.view().list("services")) == 1
    # negative replicas, empty image, malformed JSON: 400 with a message, nothing stored
    bad = json.loads(json.dumps(SPEC))
    bad["Name"] = "neg"
    bad["Mode"]["Replicated"]["Replicas"] = -1
    r = await client.post("/services/create", json=bad)
    assert r.status == 400
    assert "cannot unmarshal number -1" in (await r.json())["message"]
    r = await client.post("/services/create", json={"Name": "noimg", "TaskTemplate": {"ContainerSpec": {"Image": ""}}})
    assert r.status == 400
    assert (await r.json())["message"] == "rpc error: code = InvalidArgument desc = ContainerSpec: image reference must be provided"
    r = await client.post("/services/create", data=b'{"Name": "x", ', headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await r.json())["message"].startswith("invalid JSON: ")
    assert len(mgr.store.view().list("services")) == 1

    r = await client.get("/services/nope")
    assert r.status == 404 and (await r.json())["message"] == "service nope not found"

    lst = await (await client.get('/services?filters={"name":["we"]}&status=true')).json()
    assert [s["ID"] for s in lst] == [sid]
    assert lst[0]["ServiceStatus"] == {"RunningTasks": 0, "DesiredTasks": 3, "CompletedTasks": 0}
    assert await (await client.get('/services?filters={"name":["zzz"]}')).json() == []
    r = await client.get('/services?filters={"bogus":["x"]}')
    assert r.status == 400


async def test_service_update_scale_and_remove(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, mgr = env
    sid = (await (await client.post("/services/create", json=SPEC)).json())["ID"]
    svc = await (await client.get(f"/services/{sid}")).json()
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 5
    r = await client.post(f"/services/{sid}/update?version={svc['Version']['Index']}", json=spec)
    assert r.status == 200 and (await r.json()) == {"Warnings": []}
    svc2 = await (await client.get(f"/services/{sid}")).json()
    assert svc2["Spec"]["Mode"]["Replicated"]["Replicas"] == 5
    assert svc2["PreviousSpec"]["Mode"]["Replicated"]["Replicas"] == 3
    r = await client.post(f"/services/{sid}/update?version={svc['Version']['Index']}", json=spec)
    assert r.status == 500  # out of sequence
    spec["Name"] = "renamed"
    r = await client.post(f"/services/{sid}/update?version={svc2['Version']['Index']}", json=spec)
    assert r.status == 501
    r = await client.post(f"/services/{sid}/update", json=spec)
    assert r.status == 400  # version is required
    r = await client.delete("/services/web")
    assert r.status == 200
    assert mgr.store.view().list("services") == []
    assert (await client.delete("/services/web")).status == 404


async def test_nodes(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, mgr = env
    nodes = await (await client.get("/nodes")).json()
    assert [n["Description"]["Hostname"] for n in nodes] == ["h1", "h2", "h3"]
    n = await (await client.get("/nodes/h2")).json()
    assert n["ID"] == "node2abc"
    assert (await client.get("/nodes/node")).status == 400  # ambiguous prefix
    assert (await client.get("/nodes/zz")).status == 404
    spec = dict(n["Spec"], Availability="drain")
    r = await client.post(f"/nodes/h2/update?version={n['Version']['Index']}", json=spec)
    assert r.status == 200, await r.text()
    assert (await (await client.get("/nodes/h2")).json())["Spec"]["Availability"] == "drain"
    r = await client.post(f"/nodes/h2/update?version={n['Version']['Index']}", json=dict(spec, Availability="nap"))
    assert r.status == 400 and "invalid Availability" in (await r.json())["message"]
    n = await (await client.get("/nodes/h2")).json()
    r = await client.post(f"/nodes/h2/update?version={n['Version']['Index']}", json=dict(n["Spec"], Role="manager"))
    assert r.status == 200, await r.text()  # promotion: the node itself then renews its certificate
    n = await (await client.get("/nodes/h2")).json()
    assert n["Spec"]["Role"] == "manager"
    r = await client.post(f"/nodes/h2/update?version={n['Version']['Index']}", json=dict(n["Spec"], Role="worker"))
    assert r.status == 400 and "demote the last manager" in (await r.json())["message"]
    r = await client.delete("/nodes/h3")
    assert r.status == 400 and "is not down" in (await r.json())["message"]
    assert (await client.delete("/nodes/h3?force=true")).status == 200
    assert mgr.store.view().get("nodes", "node3abc") is None
    assert len(await (await client.get('/nodes?filters={"role":["worker"]}')).json()) == 1


async def test_versions_are_uint64_as_docker_parses_them(
        env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    """``?version=`` is strconv.ParseUint's: a sign, a space or over 64 bits is a 400 naming it,
    never the 500 "update out of sequence" of a stale version (leader and follower alike)."""
    client, _ = env
    for v, why in (("-1", "invalid syntax"), ("-0", "invalid syntax"), ("1e3", "invalid syntax"),
                   (" 1", "invalid syntax"), ("18446744073709551616", "value out of range"),
                   ("9" * 400, "value out of range")):
        for path in ("/services/web/update", "/nodes/h2/update", "/swarm/update"):
            r = await client.post(path, params={"version": v}, json={})
            assert r.status == 400, (path, v, await r.text())
            assert why in (await r.json())["message"]


async def test_node_ls_shows_manager_status_as_raft_has_it_now(
        env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    """MANAGER STATUS is read from the Raft facade when the nodes are read, not from the store's
    once-a-second copy: a copy still naming a dead leader is not what node ls/inspect show."""
    client, mgr = env
    stale = {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}
    await mgr.store.update(lambda tx: tx.update("nodes", dict(tx.get("nodes", "node1abc"), ManagerStatus=stale)))
    mgr.live = {"node1abc": {"Leader": False, "Reachability": "unreachable", "Addr": "10.0.0.1:2377"},
                "node2abc": {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.2:2377"}}
    listed = {n["ID"]: n.get("ManagerStatus") for n in await (await client.get("/nodes")).json()}
    assert listed["node1abc"] == mgr.live["node1abc"] and listed["node2abc"] == mgr.live["node2abc"]
    assert listed["node3abc"] is None
    n1 = await (await client.get("/nodes/node1abc")).json()
    assert n1["ManagerStatus"]["Reachability"] == "unreachable" and not n1["ManagerStatus"]["Leader"]


async def test_tasks_filters_and_logs(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client, mgr = env
    loops = [asyncio.create_task(Orchestrator(mgr.store, debounce=0.005).run()),
             asyncio.create_task(Scheduler(mgr.store, debounce=0.005).run())]
    try:
        sid = (await (await client.post("/services/create", json=SPEC)).json())["ID"]
        async with asyncio.timeout(5):
            while True:
                f = json.dumps({"service": ["web"], "_up-to-date": ["true"]})
                tasks = await (await client.get("/tasks", params={"filters": f})).json()
                if len(tasks) == 3 and all(t["Status"]["State"] == "assigned" for t in tasks):
                    break
                await asyncio.sleep(0.01)
        assert sorted(t["Slot"] for t in tasks) == [1, 2, 3]
        assert all(t["ServiceID"] == sid and t["DesiredState"] == "running" for t in tasks)
        assert all(t["NetworksAttachments"][0]["Addresses"][0].startswith("10.200.") for t in tasks)
        t0 = tasks[0]
        assert t0["Name"] == f"web.{t0['Slot']}.{t0['ID']}"
        by_node = await (await client.get("/tasks", params={"filters": json.dumps({"node": ["h1"]})})).json()
        assert len(by_node) == 1 and by_node[0]["NodeID"] == "node1abc"
        by_state = await (await client.get("/tasks", params={"filters": json.dumps({"desired-state": ["shutdown"]})})).json()
        assert by_state == []
        assert (await client.get("/tasks", params={"filters": json.dumps({"desired-state": ["nap"]})})).status == 400
        assert (await (await client.get(f"/tasks/{t0['ID'][:10]}")).json())["ID"] == t0["ID"]
        assert (await client.get("/tasks/doesnotexist")).status == 404

        mgr.lines = [
            {"task_id": t0["ID"], "stream": "stdout", "time": "2026-11-29T17:00:00.5Z", "log": "hello\n"},
            {"task_id": t0["ID"], "stream": "stderr", "time": "2026-11-29T17:00:01.000000001Z", "log": "oops\n"},
        ]
        r = await client.get("/v1.41/services/web/logs?stdout=1&stderr=1&details=1&timestamps=1&tail=10")
        assert r.status == 200
        raw = await r.read()
        frames = []
        while raw:
            stream, length = struct.unpack(">BxxxI", raw[:8])
            frames.append((stream, raw[8:8 + length].decode()))
            raw = raw[8 + length:]
        details = (f"com.docker.swarm.node.id={t0['NodeID']},com.docker.swarm.service.id={sid},"
                   f"com.docker.swarm.task.id={t0['ID']}")
        assert frames == [
            (1, f"2026-11-29T17:00:00.500000000Z {details} hello\n"),
            (2, f"2026-11-29T17:00:01.000000001Z {details} oops\n"),
        ]
        assert sorted(mgr.log_calls[-1][0]) == sorted(t["ID"] for t in tasks) and mgr.log_calls[-1][1] == 10
        r = await client.get(f"/tasks/{t0['ID']}/logs?stdout=1")
        raw = await r.read()
        assert raw == struct.pack(">BxxxI", 1, 6) + b"hello\n"
        assert (await client.get(f"/tasks/{t0['ID']}/logs")).status == 400  # no stream chosen
        # a tail over 64 bits is "all" (it must fit the wire to a follower's leader), not a 500
        r = await client.get(f"/tasks/{t0['ID']}/logs?stdout=1&tail=18446744073709551616")
        assert r.status == 200 and mgr.log_calls[-1][1] == -1
        # a negative tail, however large, is "all" as Docker's (never an encoder error blaming the nodes)
        for neg in ("-1", "-99999999999999999999999", "-" + "9" * 40):
            r = await client.get(f"/tasks/{t0['ID']}/logs?stdout=1&tail={neg}")
            assert r.status == 200 and mgr.log_calls[-1][1] == -1, neg
        r = await client.get(f"/tasks/{t0['ID']}/logs?stdout=1&tail={'x' * 40}")
        assert r.status == 400 and "invalid tail value" in (await r.json())["message"]

        # follow: lines that appear later are streamed until the service is removed
        monkeypatch.setattr(logs_module, "LOG_FOLLOW_POLL", 0.02)
        resp = await client.get("/services/web/logs?stdout=1&follow=1")
        first = await resp.content.readexactly(8 + len("hello\n"))
        assert first.endswith(b"hello\n")
        mgr.lines.append({"task_id": t0["ID"], "stream": "stdout", "time": "2026-11-29T17:00:02Z", "log": "later\n"})
        async with asyncio.timeout(5):
            nxt = await resp.content.readexactly(8 + len("later\n"))
        assert nxt == struct.pack(">BxxxI", 1, 6) + b"later\n"
        assert (await client.delete("/services/web")).status == 200
        async with asyncio.timeout(5):
            assert await resp.content.read() == b""  # stream ended, nothing repeated
    finally:
        for lp in loops:
            lp.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def test_logs_follow_client_going_away_is_not_an_error(
        env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """As the daemon serves it (handler not cancelled when the client disconnects; the
    aiohttp test server would cancel it), ``logs -f`` interrupted ends at info level."""
    _, mgr = env
    monkeypatch.setattr(logs_module, "LOG_FOLLOW_POLL", 0.02)
    caplog.set_level(logging.INFO)
    app = web.Application()
    add_routes(app, mgr)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"http://127.0.0.1:{port}/services/create", json=SPEC)
            sid = (await r.json())["ID"]
            await mgr.store.update(creating("tasks", {"ID": "t1", "ServiceID": sid, "Slot": 1, "NodeID": "node1abc",
                                                      "DesiredState": "running", "Status": {"State": "running"}}))
            mgr.lines = [{"task_id": "t1", "stream": "stdout", "time": "2026-11-29T17:00:00Z", "log": "hi\n"}]
            resp = await http.get(f"http://127.0.0.1:{port}/services/web/logs?stdout=1&follow=1")
            assert (await resp.content.readexactly(8 + 3)).endswith(b"hi\n")
            resp.close()  # the client goes away mid-stream
            async with asyncio.timeout(5):
                while not any("/services/web/logs" in r.getMessage() for r in caplog.records
                              if r.name == "aiohttp.access"):
                    await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    assert any("log stream ended" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_huge_replicas_is_400_with_message(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, mgr = env
    body = b'{"Name": "big", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}, ' \
           b'"Mode": {"Replicated": {"Replicas": 99999999999999999999}}}'
    r = await client.post("/v1.41/services/create", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400
    msg = (await r.json())["message"]
    assert "cannot unmarshal number 99999999999999999999" in msg and "uint64" in msg
    assert mgr.store.view().list("services") == []


async def test_docker_py_service_mode_and_scale(env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    """Real docker-py: ServiceMode("replicated", replicas=2) sends {"replicated": {...}}; scale(3)."""
    import docker

    client, mgr = env
    port = client.server.port
    dc = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", version="1.41")
    try:
        def create() -> str:
            svc = dc.services.create("busybox", command=["sleep", "60"], name="pyweb",
                                     mode=docker.types.ServiceMode("replicated", replicas=2),
                                     labels={"lower": "kept"}, env=["replicas=env"])
            return str(svc.id)

        sid = await asyncio.to_thread(create)
        spec = mgr.store.view().get("services", sid)["Spec"]  # type: ignore[index]
        assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
        assert spec["Labels"] == {"lower": "kept"}
        assert spec["TaskTemplate"]["ContainerSpec"]["Env"] == ["replicas=env"]

        def scale() -> None:
            svc = dc.services.get(sid)
            assert svc.scale(3) is not None

        await asyncio.to_thread(scale)
        spec = mgr.store.view().get("services", sid)["Spec"]  # type: ignore[index]
        assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    finally:
        dc.close()


async def test_node_rm_refuses_the_node_certificate_from_now_on(
        env: tuple[TestClient[web.Request, web.Application], ManagerTestDouble]) -> None:
    client, mgr = env
    assert (await client.delete("/nodes/h3?force=true")).status == 200
    c = mgr.store.view().get("cluster", "cluster1")
    assert c is not None
    assert is_blacklisted(c, "node3abc") and not is_blacklisted(c, "node2abc")
    # until the last certificate issued to it has expired (90 days), then the entry may go
    exp = dt.datetime.fromisoformat(c["BlacklistedCertificates"]["node3abc"]["Expiry"])
    left = exp - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89) < left <= dt.timedelta(days=90)
    assert not is_blacklisted(c, "node3abc", now=exp + dt.timedelta(seconds=1))
    assert "BlacklistedCertificates" not in await (await client.get("/swarm")).json()
    # an expired entry is dropped at the next removal
    c2 = dict(c, BlacklistedCertificates={"old": {"Expiry": "2000-01-01T00:00:00Z"}})
    blacklist_node(c2, "x")
    assert set(c2["BlacklistedCertificates"]) == {"x"}
