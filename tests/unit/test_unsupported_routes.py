"""Docker Engine API routes Shoal does not serve yet answer 501 with Docker's JSON error naming the
feature and what to use instead (issue 8: they answered "page not found"); paths Docker does not
have stay 404 "page not found"; the routes Shoal serves are not shadowed. The real docker CLI
prints the message (skipped without a `docker` binary on PATH)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from shoal.daemon.daemon import Daemon
from shoal.daemon.http import unsupported
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args
from tests.unit.test_orchestrator_cli import DOCKER, docker

NEED_DOCKER = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")


def _args(base: Path) -> Any:
    return parse_args(["--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                       "--socket", str(base / "s.sock"), "--cgroup-parent", "shoal-unit-test"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Daemon, web.Application]]:
    daemon = Daemon(_args(tmp_path))
    app = build_app(daemon)
    async with TestClient(TestServer(app)) as c:
        yield c, daemon, app


async def expect(r: Any, status: int, message: str, exact: bool = True) -> None:
    text = await r.text()
    assert r.status == status, (r.method, r.url, text)
    assert r.headers["Content-Type"] == "application/json"  # exactly: the docker CLI needs it so
    got = json.loads(text)["message"]
    assert (got == message) if exact else (message in got), (r.method, r.url, got)


def _concrete(path: str) -> str:
    """A request path for a route pattern: ``{version}`` becomes 1.41, every other placeholder a name."""
    return re.sub(r"\{[^}]*\}", "some-name", re.sub(r"\{version[^}]*\}", "1.41", path))


def _ours(route: Any) -> bool:
    return getattr(route.handler, "__name__", "") == "not_implemented"


class _Leader:
    """The manager role as the swarm middleware sees it on a leader."""

    is_leader = True

    async def read_barrier(self) -> None:
        return None


async def test_every_route_of_the_table_answers_501(
        env: tuple[TestClient[Any, Any], Daemon, web.Application]) -> None:
    client, daemon, _ = env
    # /swarm/* routes need a manager first (the middleware answers 503 otherwise, as Docker does)
    daemon.state.data = {"NodeID": "n1", "Role": "manager"}
    daemon.manager = _Leader()
    try:
        for item in unsupported.UNSUPPORTED:
            for method, path in item.routes:
                for prefix in ("", "/v1.41", "/v1.24"):
                    r = await client.request(method, prefix + _concrete(path))
                    if method == "HEAD":
                        assert r.status == 501 and r.headers["Content-Type"] == "application/json"
                    else:
                        await expect(r, 501, unsupported.message(item))
    finally:
        daemon.manager = None
        daemon.state.data = {}


async def test_messages_name_the_feature_and_the_alternative(
        env: tuple[TestClient[Any, Any], Daemon, web.Application]) -> None:
    client, _, _ = env
    await expect(await client.get("/v1.41/containers/json?all=1"), 501,
                 "containers are not supported by Shoal yet: run it as a service (docker service create …)",
                 exact=False)
    await expect(await client.post("/v1.41/containers/create", json={"Image": "busybox"}), 501,
                 "containers are not supported by Shoal yet", exact=False)
    await expect(await client.get("/containers/web.1.abc/logs"), 501, "docker service logs SERVICE", exact=False)
    await expect(await client.post("/v1.41/containers/abc/exec", json={}), 501,
                 "exec is not supported by Shoal yet")
    await expect(await client.get("/v1.41/volumes"), 501, "--mount type=bind", exact=False)
    await expect(await client.get("/v1.41/system/df"), 501, "disk usage (docker system df) is not supported",
                 exact=False)
    await expect(await client.post("/v1.41/secrets/create", json={}), 501, "secrets are not supported by Shoal yet")
    await expect(await client.delete("/v1.41/images/docker.io/library/busybox:latest"), 501,
                 "removing images is not supported by Shoal yet")
    await expect(await client.post("/v1.41/networks/bridge/connect", json={}), 501,
                 "connecting, disconnecting and pruning networks is not supported by Shoal yet", exact=False)
    # outside a swarm the autolock routes answer as every swarm route does there
    await expect(await client.get("/v1.41/swarm/unlockkey"), 503, "This node is not a swarm manager", exact=False)


async def test_paths_docker_lacks_stay_page_not_found(
        env: tuple[TestClient[Any, Any], Daemon, web.Application]) -> None:
    client, _, _ = env
    for path in ("/frobnicate", "/v1.41/frobnicate", "/containers", "/v1.41/container/json",
                 "/secrets/a/b", "/exec/abc", "/v1.41/system/frobnicate"):
        await expect(await client.get(path), 404, "page not found")
    # a method a path does not take is "page not found" too, as Docker's router answers (not 405)
    for method, path in (("GET", "/containers/a/b"), ("PUT", "/_ping"), ("DELETE", "/v1.41/info")):
        await expect(await client.request(method, path), 404, "page not found")


async def test_served_routes_are_not_shadowed(
        env: tuple[TestClient[Any, Any], Daemon, web.Application]) -> None:
    client, _, app = env
    ours = [r for r in app.router.routes() if _ours(r)]
    # every entry of the table is registered (plain and under /v{version}): none is a served route
    assert len(ours) == 2 * sum(len(item.routes) for item in unsupported.UNSUPPORTED)
    r = await client.get("/v1.41/images/json")
    assert r.status == 200 and await r.json() == []
    await expect(await client.get("/v1.41/images/docker.io/library/nope:1/json"), 404, "No such image", exact=False)
    r = await client.get("/v1.41/networks/bridge")
    assert r.status == 200 and (await r.json())["Name"] == "bridge"
    # outside a swarm: the bridge is listed, an overlay network needs a manager, DELETE is served
    await expect(await client.post("/v1.41/networks/create", json={"Name": "n", "Driver": "overlay"}), 503,
                 "This node is not a swarm manager", exact=False)
    await expect(await client.delete("/v1.41/networks/bridge"), 403,
                 "bridge is a pre-defined network and cannot be removed")
    await expect(await client.post("/v1.41/services/create", json={}), 503, "not a swarm manager", exact=False)
    r = await client.get("/v1.41/_ping")
    assert r.status == 200 and await r.text() == "OK"


async def test_no_table_pattern_catches_a_request_of_a_served_route(
        env: tuple[TestClient[Any, Any], Daemon, web.Application]) -> None:
    # aiohttp tries the routes with the longest static prefix first: a table pattern more specific
    # than a served one would win; resolve a request for every served route to be sure
    _, _, app = env
    served = [r for r in app.router.routes() if not _ours(r) and r.resource is not None]
    assert len(served) > 40
    for route in served:
        assert route.resource is not None
        path = _concrete(route.resource.canonical)
        match = await app.router.resolve(make_mocked_request(route.method, path, app=app))
        assert not _ours(match.route), (route.method, path)


@pytest.fixture
async def daemon_sock() -> AsyncIterator[tuple[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="shoal-501-cli-"))
    runner = web.AppRunner(build_app(Daemon(_args(base))))
    await runner.setup()
    await web.UnixSite(runner, str(base / "s.sock")).start()
    try:
        yield f"unix://{base / 's.sock'}", base
    finally:
        await runner.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@NEED_DOCKER
async def test_the_docker_cli_prints_the_501_message(daemon_sock: tuple[str, Path]) -> None:
    host, base = daemon_sock
    for argv, words in (
            (("ps",), "containers are not supported by Shoal yet: run it as a service (docker service create"),
            (("volume", "ls"), "volumes are not supported by Shoal yet: mount a host directory"),
            (("system", "df"), "disk usage (docker system df) is not supported by Shoal yet"),
            # `docker exec` inspects the container first
            (("exec", "web.1", "ls"), "containers are not supported by Shoal yet"),
            (("secret", "ls"), "secrets are not supported by Shoal yet")):
        rc, out, err = await docker(host, base, *argv)
        assert rc != 0 and "Error response from daemon: " + words in err, (argv, out, err)
        assert "page not found" not in err
