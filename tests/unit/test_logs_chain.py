"""`service logs` through the whole chain without root: the API's write_logs → Manager.read_logs_page →
dispatcher (``logs.read``, msgpack on the wire) → Agent → Executor.read_logs_page → Runtime.read_log_page
on log files a LogWriter rotates. Follow continues by cursor across rotations (nothing lost or sent
twice), pages are bounded, and a node of the older version (no cursors) is still followed by time."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import manager.logbroker as logbroker_module
import shoal.daemon.http.logs as logs_module
import worker.executor as executor_module
from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from agent_runtime.jsonfile import LogWriter, file_count, parse_time
from agent_runtime.spec import ContainerSpec
from manager.manager import Manager
from manager.specs import default_swarm_spec
from manager.store import WriteTx
from shoal.base.util import now_rfc3339
from shoal.daemon.http.app import add_swarm_routes as add_routes
from shoal.rpc import wire
from tests.stores import open_store
from worker.agent import Agent
from worker.executor import Executor, container_id_for

Client = TestClient[web.Request, web.Application]


async def _wire(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` as the peer decodes it from a frame (what crosses 2377)."""
    reader = asyncio.StreamReader()
    reader.feed_data(wire.encode_frame(msg))
    reader.feed_eof()
    return await wire.read_frame(reader)


class OldExecutor:
    """An executor of the version before cursors: every line since ``since``, no cursors."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
        pass

    def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        out = [ln for ln in self.lines if ln["task_id"] in task_ids
               and parse_time(ln["time"]) >= since]
        return out[-tail:] if tail > 0 else ([] if tail == 0 else out)


class Node:
    """A worker: its runtime's containers have log files written by ``LogWriter``s."""

    def __init__(self, root: Path, node_id: str) -> None:
        self.runtime = Runtime(root / "containers", root / "exec", ImageStore(root / "images"))
        self.executor = Executor(self.runtime, self.runtime.images, None, lambda tid, st: None)
        self.agent = Agent(node_id, ["127.0.0.1:9"], root / "certs", self.executor, {})
        self.writers: dict[str, LogWriter] = {}

    def container(self, task_id: str, max_size: int, max_file: int) -> LogWriter:
        cid = container_id_for(task_id)
        d = self.runtime.root / cid
        d.mkdir(parents=True)
        spec = ContainerSpec(id=cid, image="busybox", labels={"com.docker.swarm.task.id": task_id})
        (d / "container.json").write_text(json.dumps({"spec": spec.to_dict(), "log_config": {
            "max-size": max_size, "max-file": max_file}}))
        self.writers[task_id] = w = LogWriter(d / "container.log", max_size, max_file)
        return w


class Dispatcher:
    """The manager's side of the sessions: ``logs.read`` to the node's agent, through the wire codec."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        self.agents = agents
        self.requests: list[dict[str, Any]] = []
        self.reply_bytes: list[int] = []

    async def request_logs(self, node_id: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        body = await _wire(body)
        self.requests.append(body)
        reply = await self.agents[node_id]._handle(None, "logs.read", body)  # type: ignore[arg-type]
        assert reply is not None
        self.reply_bytes.append(len(wire.encode_frame(reply)))
        return await _wire(reply)


class Api:
    """What the routes use of the manager: the store and the logs of a real (unstarted) Manager."""

    def __init__(self, m: Manager) -> None:
        self.store, self.cluster_id, self.node_id = m.store, "cluster1", "n1"
        self.read_logs_page = m.read_logs_page
        self.read_logs = m.read_logs
        self.manager_status = m.manager_status


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[tuple[Client, dict[str, Node], Dispatcher, Manager]]:
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    nodes = {n: Node(tmp_path / n, n) for n in ("n1", "n2")}
    disp = Dispatcher({n: node.agent for n, node in nodes.items()})
    m = Manager(tmp_path / "m", tmp_path / "certs", "n1", "127.0.0.1:2377", "127.0.0.1:0")
    m.store, m.dispatcher = store, disp  # type: ignore[assignment]
    m.log = SimpleNamespace(is_leader=True)  # type: ignore[assignment]

    def seed(tx: WriteTx) -> None:
        tx.create("services", {"ID": "svc1", "Spec": {"Name": "web", "TaskTemplate": {}}})
        for i, n in ((1, "n1"), (2, "n2"), (3, "n1")):
            tx.create("tasks", {"ID": f"task{i}", "ServiceID": "svc1", "Slot": i, "NodeID": n,
                                "DesiredState": "running", "Status": {"State": "running"}})

    await store.update(seed)
    app = web.Application()
    add_routes(app, Api(m))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, nodes, disp, m
    finally:
        await client.close()
        await store.close()


def _frames(raw: bytes) -> list[str]:
    out = []
    while raw:
        _stream, length = struct.unpack(">BxxxI", raw[:8])
        out.append(raw[8:8 + length].decode())
        raw = raw[8 + length:]
    return out


async def _read_lines(resp: Any, n: int) -> list[str]:
    out: list[str] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            head = await resp.content.readexactly(8)
            out.append((await resp.content.readexactly(struct.unpack(">BxxxI", head)[1])).decode())
    return out


async def test_follow_by_cursor_across_rotations_sends_every_line_once(
        chain: tuple[Client, dict[str, Node], Dispatcher, Manager], monkeypatch: pytest.MonkeyPatch) -> None:
    client, nodes, disp, _ = chain
    monkeypatch.setattr(logs_module, "LOG_FOLLOW_POLL", 0.02)
    writers = {"task1": nodes["n1"].container("task1", 1500, 4), "task2": nodes["n2"].container("task2", 1500, 4),
               "task3": nodes["n1"].container("task3", 1500, 4)}
    for tid, w in writers.items():
        for i in range(5):
            w.feed("stdout", f"{tid} old {i}\n".encode())
    resp = await client.get("/services/web/logs?stdout=1&follow=1&tail=2")
    assert resp.status == 200
    first = await _read_lines(resp, 6)
    assert sorted(first) == sorted(f"{t} old {i}\n" for t in writers for i in (3, 4))
    assert all(r.get("cursors") == {} for r in disp.requests)  # the first read is by tail
    sent: list[str] = []
    for burst in range(6):  # each burst rotates every file once or twice
        for tid, w in writers.items():
            for i in range(30):
                w.feed("stdout", f"{tid} b{burst} {i:02d} {'x' * (i % 7)}\n".encode())
        sent += [f"{tid} b{burst} {i:02d} {'x' * (i % 7)}\n" for tid in writers for i in range(30)]
        got = await _read_lines(resp, 90)
        assert sorted(got) == sorted(sent[-90:])
        for tid in writers:  # per task, in the order written
            assert [x for x in got if x.startswith(tid)] == [x for x in sent[-90:] if x.startswith(tid)]
    assert all(file_count(w.path) == 4 for w in writers.values())  # the files did rotate, more than once
    assert any(r.get("cursors") for r in disp.requests[3:])  # follow asked by cursor, not by time
    assert all(float(r.get("since", 0)) == 0.0 for r in disp.requests[3:])
    resp.close()


async def test_logs_come_in_bounded_pages_and_all_arrive(
        chain: tuple[Client, dict[str, Node], Dispatcher, Manager], monkeypatch: pytest.MonkeyPatch) -> None:
    client, nodes, disp, m = chain
    monkeypatch.setattr(logbroker_module, "LOG_PAGE_LIMIT", 40_000)
    monkeypatch.setattr(logbroker_module, "LOG_PAGE_MIN_PER_NODE", 10_000)
    w1 = nodes["n1"].container("task1", 10**7, 2)
    w2 = nodes["n2"].container("task2", 10**7, 2)
    for i in range(3000):
        w1.feed("stdout", f"one {i:04d} {'a' * 60}\n".encode())
        w2.feed("stderr", f"two {i:04d} {'b' * 60}\n".encode())
    r = await client.get("/services/web/logs?stdout=1&stderr=1")
    got = _frames(await r.read())
    assert [x for x in got if x.startswith("one")] == [f"one {i:04d} {'a' * 60}\n" for i in range(3000)]
    assert [x for x in got if x.startswith("two")] == [f"two {i:04d} {'b' * 60}\n" for i in range(3000)]
    assert len(disp.requests) > 10 and max(disp.reply_bytes) < 40_000  # many small pages, none over the limit
    tail = _frames(await (await client.get("/tasks/task2/logs?stderr=1&tail=3")).read())
    assert tail == [f"two {i:04d} {'b' * 60}\n" for i in (2997, 2998, 2999)]
    # the executor never returns more than its own cap, whatever a manager asks
    monkeypatch.setattr(executor_module, "LOG_PAGE_LIMIT", 5_000)
    page = await nodes["n1"].executor.read_logs_page(["task1"], limit=10**9)
    assert page["more"] and 0 < sum(len(ln["log"]) for ln in page["lines"]) <= 5_000
    # a follower manager's logs.collect gets the same page shape from the leader
    got_collect = await m._logs_collect(None, "n2", "manager",  # type: ignore[arg-type]
                                        {"task_ids": ["task2"], "tail": 1, "since": 0, "timestamps": False})
    assert [ln["log"] for ln in got_collect["lines"]] == [f"two 2999 {'b' * 60}\n"]
    assert set(got_collect["cursors"]) == {"task2"} and got_collect["more"] is False


async def test_a_node_of_the_older_version_is_followed_by_time(
        chain: tuple[Client, dict[str, Node], Dispatcher, Manager], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    client, nodes, disp, _ = chain
    monkeypatch.setattr(logs_module, "LOG_FOLLOW_POLL", 0.02)
    old = OldExecutor()
    disp.agents["n2"] = Agent("n2", ["127.0.0.1:9"], tmp_path / "oldcerts", old, {})
    w1 = nodes["n1"].container("task1", 2000, 3)
    w1.feed("stdout", b"new 0\n")
    old.lines.append({"task_id": "task2", "stream": "stdout", "time": now_rfc3339(), "log": "old 0\n"})
    resp = await client.get("/services/web/logs?stdout=1&follow=1")
    assert sorted(await _read_lines(resp, 2)) == ["new 0\n", "old 0\n"]
    for i in range(1, 4):
        w1.feed("stdout", f"new {i}\n".encode())
        old.lines.append({"task_id": "task2", "stream": "stdout", "time": now_rfc3339(), "log": f"old {i}\n"})
        assert sorted(await _read_lines(resp, 2)) == [f"new {i}\n", f"old {i}\n"]
    requests = [r for r in disp.requests if r["task_ids"] == ["task2"]]
    assert requests[-1]["cursors"] == {} and requests[-1]["since"] > 0  # asked by time, as before
    resp.close()


async def test_service_create_refuses_other_log_drivers_and_bad_options_with_400(
        chain: tuple[Client, dict[str, Node], Dispatcher, Manager]) -> None:
    client, _, _, m = chain

    def spec(name: str, driver: dict[str, Any]) -> dict[str, Any]:
        return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "LogDriver": driver}}

    for driver, message in [
        ({"Name": "syslog"}, "TaskTemplate.LogDriver: log driver 'syslog' is not supported by shoal: the only log "
                             "driver is 'json-file'"),
        ({"Name": "json-file", "Options": {"max-size": "ten"}}, "TaskTemplate.LogDriver: invalid size 'ten'"),
        ({"Name": "json-file", "Options": {"labels": "a"}}, "unknown log opt 'labels' for the json-file log driver"),
    ]:
        r = await client.post("/services/create", json=spec("bad", driver))
        assert r.status == 400
        assert message in (await r.json())["message"]
    assert [s["Spec"]["Name"] for s in m.store.view().find("services", lambda s: True)] == ["web"]
    r = await client.post("/services/create", json=spec("small", {"Name": "json-file", "Options": {
        "max-size": "64k", "max-file": "2"}}))
    assert r.status == 201, await r.text()


async def test_a_busy_task_does_not_starve_the_others_on_its_node(
        chain: tuple[Client, dict[str, Node], Dispatcher, Manager], monkeypatch: pytest.MonkeyPatch) -> None:
    _, nodes, _, _ = chain
    monkeypatch.setattr(executor_module, "LOG_PAGE_LIMIT", 20_000)
    busy, quiet = nodes["n1"].container("task1", 10**7, 2), nodes["n1"].container("task3", 10**7, 2)
    for i in range(2000):
        busy.feed("stdout", f"busy {i}\n".encode())
    for i in range(20):
        quiet.feed("stdout", f"quiet {i}\n".encode())
    page = await nodes["n1"].executor.read_logs_page(["task1", "task3"])
    logs = [ln["log"] for ln in page["lines"]]
    assert [x for x in logs if x.startswith("quiet")] == [f"quiet {i}\n" for i in range(20)] and page["more"]
    assert 0 < sum(x.startswith("busy") for x in logs) < 100
