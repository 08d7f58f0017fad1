"""shoald's local Docker API routes (no swarm yet): shapes, headers and error bodies as Docker's."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.test_utils import TestClient, TestServer

from shoal.base.util import is_rfc3339
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import ClientErrorLogFilter, parse_args


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    args = parse_args(["--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
                       "--socket", str(tmp_path / "s.sock"), "--cgroup-parent", "shoal-unit-test"])
    daemon = Daemon(args)
    async with TestClient(TestServer(build_app(daemon))) as c:
        yield c


async def test_ping_version_info(client: TestClient[Any, Any]) -> None:
    r = await client.get("/_ping")
    assert await r.text() == "OK"
    assert r.headers["Api-Version"] == "1.41" and r.headers["Swarm"] == "inactive"
    r = await client.head("/v1.41/_ping")
    assert r.status == 200 and r.headers["OSType"] == "linux"
    v = await (await client.get("/v1.41/version")).json()
    assert v["ApiVersion"] == "1.41" and v["MinAPIVersion"] == "1.24" and v["Os"] == "linux"
    info = await (await client.get("/info")).json()
    assert info["Swarm"]["LocalNodeState"] == "inactive" and info["Swarm"]["ControlAvailable"] is False
    assert info["Containers"] == 0 and info["OSType"] == "linux"


async def expect_error(r: Any, status: int, words: str) -> None:
    assert r.status == status, await r.text()
    assert r.headers["Content-Type"] == "application/json"  # exactly: the docker CLI needs it so
    body = json.loads(await r.text())
    assert words in body["message"], body


async def test_swarm_routes_need_a_swarm(client: TestClient[Any, Any]) -> None:
    for path in ("/nodes", "/v1.41/services", "/tasks", "/swarm"):
        await expect_error(await client.get(path), 503, "This node is not a swarm manager")


async def test_bad_input_gets_clear_errors(client: TestClient[Any, Any]) -> None:
    await expect_error(await client.post("/swarm/join", data=b"{not json"), 400, "invalid JSON")
    await expect_error(await client.post("/swarm/join", json={}), 400, "RemoteAddr")
    await expect_error(await client.post("/swarm/join", json={"RemoteAddrs": ["10.0.0.1:2377"]}), 400,
                       "join token is required")
    await expect_error(await client.post("/swarm/join", json={"RemoteAddrs": ["10.0.0.1:2377"],
                                                              "JoinToken": "SWMTKN-1-nope"}), 400,
                       "invalid join token")
    await expect_error(await client.post("/swarm/leave"), 503, "not part of a swarm")
    await expect_error(await client.get("/no/such/route"), 404, "page not found")


async def test_images_and_networks(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/images/json")).json() == []
    await expect_error(await client.get("/images/10.99.0.2:5000/busybox:latest/json"), 404, "No such image")
    await expect_error(await client.post("/images/create"), 400, "fromImage")
    nets = await (await client.get("/networks")).json()
    assert [n["Name"] for n in nets] == ["bridge"]
    assert is_rfc3339(nets[0]["Created"]), nets[0]  # `docker network ls` parses it
    assert (await (await client.get("/networks/bridge")).json())["Driver"] == "bridge"
    await expect_error(await client.get("/networks/foo"), 404, "network foo not found")


async def test_api_versions_outside_what_shoal_serves_are_refused_as_docker_does(
        client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1.24/_ping")).status == 200
    assert (await client.get("/v1.41/_ping")).status == 200
    for path in ("/v1.99/info", "/v9999999999999999999999/services", "/v2/info"):
        await expect_error(await client.get(path), 400, "is too new. Maximum supported API version is 1.41")
    for path in ("/v0/info", "/v1.5/info", "/v1.23/version"):
        await expect_error(await client.get(path), 400, "is too old. Minimum supported API version is 1.24")
    await expect_error(await client.get("/vfoo/info"), 404, "page not found")


def test_a_clients_bad_http_is_one_log_line_not_a_traceback() -> None:
    """aiohttp logs a malformed request (a 10 KB URL, a bad Content-Length) with a traceback;
    shoald's filter makes it one INFO line; a real error keeps its traceback."""
    f = ClientErrorLogFilter()
    for exc in (LineTooLong(b"/v1.41/nodes/aaaa", "8190"), BadHttpMessage("Invalid character in Content-Length"),
                ConnectionResetError("Connection lost")):
        rec = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (),
                                (type(exc), exc, None))
        assert f.filter(rec) and rec.exc_info is None and rec.levelno == logging.INFO
        assert type(exc).__name__ in rec.getMessage()
    bug = RuntimeError("a bug")
    rec = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (),
                            (RuntimeError, bug, None))
    assert f.filter(rec) and rec.exc_info is not None and rec.levelno == logging.ERROR
