"""`service logs` when a node holding tasks cannot be read (manager/logbroker.py, shoal/daemon/http/logs.py,
the CLI): a frozen node (a dispatcher double whose ``logs.read`` never answers, as a SIGSTOPped
shoald's session) costs at most the per-node timeout; the other nodes' lines are sent, the stream
ends with Swarm's "incomplete log stream" warning naming the node (a stream-3 frame, as Docker), a
follow names it in a header and does not wait for it on every poll; ``shoal service logs`` prints
the warning on stderr; ``--since`` takes the docker CLI's times."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import manager.logbroker as logbroker_module
import shoal.daemon.http.logs as logs_module
from manager.manager import Manager
from shoal.cli import commands
from shoal.cli.events_cmd import format_event, parse_filter_flags, timestamp_arg
from shoal.rpc import wire
from tests.unit import test_logs_chain
from tests.unit.test_logs_chain import Dispatcher, Node

Client = TestClient[web.Request, web.Application]
logs_chain = test_logs_chain.chain  # the fixture of the logs chain, by this name
Chain = tuple[Client, dict[str, Node], Dispatcher, Manager]


class FrozenDispatcher(Dispatcher):
    """``frozen`` nodes keep their session but never answer (a SIGSTOPped daemon): the request
    fails after its timeout, as :meth:`shoal.rpc.wire.Peer.request` does; ``gone`` nodes have no
    session."""

    def __init__(self, base: Dispatcher) -> None:
        super().__init__(base.agents)
        self.frozen: set[str] = set()
        self.gone: set[str] = set()
        self.asked: list[tuple[str, float]] = []

    async def request_logs(self, node_id: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.asked.append((node_id, time.monotonic()))
        if node_id in self.gone:
            raise LookupError(f"node {node_id} is not connected to this manager; its logs are unavailable")
        if node_id in self.frozen:
            await asyncio.sleep(timeout)
            raise wire.WireError(f"no reply to 'logs.read' from {node_id} within {timeout:g} s")
        return await super().request_logs(node_id, body, timeout)


@pytest.fixture
def frozen(logs_chain: Chain, monkeypatch: pytest.MonkeyPatch) -> tuple[Client, dict[str, Node], FrozenDispatcher]:
    client, nodes, disp, m = logs_chain
    fd = FrozenDispatcher(disp)
    m.dispatcher = fd  # type: ignore[assignment]
    monkeypatch.setattr(logbroker_module, "LOG_NODE_TIMEOUT", 1.0)
    return client, nodes, fd


def _frames(raw: bytes) -> list[tuple[int, str]]:
    out = []
    while raw:
        stream, length = struct.unpack(">BxxxI", raw[:8])
        out.append((stream, raw[8:8 + length].decode()))
        raw = raw[8 + length:]
    return out


def _feed(nodes: dict[str, Node]) -> None:
    for tid, n in (("task1", "n1"), ("task2", "n2"), ("task3", "n1")):
        w = nodes[n].container(tid, 10**6, 2)
        w.feed("stdout", f"{tid} hello\n".encode())


async def test_a_frozen_node_costs_the_timeout_and_is_named_at_the_end(
        frozen: tuple[Client, dict[str, Node], FrozenDispatcher]) -> None:
    client, nodes, fd = frozen
    _feed(nodes)
    fd.frozen.add("n2")
    started = time.monotonic()
    r = await client.get("/services/web/logs?stdout=1&stderr=1")
    frames = _frames(await r.read())
    took = time.monotonic() - started
    assert r.status == 200 and took < 3.0, took  # the per-node timeout (1 s here, 3 s by default)
    assert sorted(text for s, text in frames if s == 1) == ["task1 hello\n", "task3 hello\n"]
    assert frames[-1][0] == 3  # the last frame: Docker's system-error stream, which the docker CLI prints
    assert frames[-1][1].startswith("warning: incomplete log stream. some logs could not be retrieved")
    assert "node n2 is not available: no answer within 1 s" in frames[-1][1]
    assert "n2" in r.headers[logs_module.WARNING_HEADER]


async def test_a_node_without_session_is_named_at_once(
        frozen: tuple[Client, dict[str, Node], FrozenDispatcher]) -> None:
    client, nodes, fd = frozen
    _feed(nodes)
    fd.gone.add("n2")
    started = time.monotonic()
    r = await client.get("/services/web/logs?stdout=1")
    frames = _frames(await r.read())
    assert time.monotonic() - started < 1.0
    assert frames[-1] == (3, "warning: incomplete log stream. some logs could not be retrieved for the "
                             "following reasons: node n2 is not available: not connected to the leader")
    # all nodes answer: no warning, no header
    fd.gone.clear()
    r = await client.get("/services/web/logs?stdout=1")
    assert all(s == 1 for s, _ in _frames(await r.read())) and logs_module.WARNING_HEADER not in r.headers


async def test_a_follow_names_the_node_and_does_not_wait_for_it_on_every_poll(
        frozen: tuple[Client, dict[str, Node], FrozenDispatcher], monkeypatch: pytest.MonkeyPatch) -> None:
    client, nodes, fd = frozen
    monkeypatch.setattr(logs_module, "LOG_FOLLOW_POLL", 0.05)
    _feed(nodes)
    fd.frozen.add("n2")
    started = time.monotonic()
    r = await client.get("/services/web/logs?stdout=1&follow=1")
    assert r.status == 200 and time.monotonic() - started < 3.0
    assert "node n2 is not available" in r.headers[logs_module.WARNING_HEADER]
    got: list[str] = []
    async with asyncio.timeout(5):
        while len(got) < 2:
            head = await r.content.readexactly(8)
            got.append((await r.content.readexactly(struct.unpack(">BxxxI", head)[1])).decode())
    assert sorted(got) == ["task1 hello\n", "task3 hello\n"]
    nodes["n1"].writers["task1"].feed("stdout", b"task1 later\n")
    fed = time.monotonic()
    async with asyncio.timeout(5):
        head = await r.content.readexactly(8)
        line = (await r.content.readexactly(struct.unpack(">BxxxI", head)[1])).decode()
    assert line == "task1 later\n" and time.monotonic() - fed < 0.9  # n2's timeout is not paid again
    assert sum(1 for n, _ in fd.asked if n == "n2") == 1
    r.close()


async def test_the_shoal_cli_prints_what_it_has_and_the_warning_on_stderr(
        frozen: tuple[Client, dict[str, Node], FrozenDispatcher], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    client, nodes, fd = frozen
    _feed(nodes)
    fd.frozen.add("n2")
    app = client.server.app
    assert app is not None
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        out = io.StringIO()
        started = time.monotonic()
        rc = await asyncio.to_thread(commands.main, ["--host", f"unix://{sock}", "service", "logs", "--raw", "web"], out)
        assert rc == 0 and time.monotonic() - started < 4.0
        assert sorted(out.getvalue().splitlines()) == ["task1 hello", "task3 hello"]
        err = capfd.readouterr().err
        assert "warning: incomplete log stream" in err and "node n2 is not available" in err
        # --since: a time after every line → nothing (and no error for the docker CLI's forms)
        out = io.StringIO()
        rc = await asyncio.to_thread(commands.main, ["--host", f"unix://{sock}", "service", "logs", "--raw",
                                                     "--since", "2099-01-01", "web"], out)
        assert rc == 0 and out.getvalue() == ""
    finally:
        await runner.cleanup()


def test_times_as_the_docker_cli_reads_them() -> None:
    now = 1_765_000_000.25
    assert timestamp_arg("10m", now) == "1764999400.250000000"
    assert timestamp_arg("1h30m", now) == "1764994600.250000000"
    assert timestamp_arg("0s", now) == "1765000000.250000000"
    assert timestamp_arg("1765000000", now) == "1765000000"
    assert timestamp_arg("2025-12-06T05:46:40Z", now) == "1765000000.000000000"
    assert timestamp_arg("2025-12-06", now) == "1764979200.000000000"
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        timestamp_arg("yesterday", now)
    assert parse_filter_flags(["type=service", "type=node", "event=create"]) == {
        "type": ["service", "node"], "event": ["create"]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_filter_flags(["service"])
    assert format_event({"Type": "service", "Action": "update", "timeNano": 1_765_000_000_000_000_001,
                         "Actor": {"ID": "s1", "Attributes": {"replicas.new": "3", "name": "web"}}}) == (
        "2025-12-06T05:46:40.000000001Z service update s1 (name=web, replicas.new=3)")
