"""Real shoald daemons for the ``swarm init``/``join`` unit tests (tests/unit/test_swarm_init_join.py,
tests/unit/test_swarm_init_networks.py): a :class:`shoal.daemon.daemon.Daemon` on a temp data root
with a real Manager on a loopback port and a real agent, its API served in-process
(:func:`running_daemon`) or on a unix socket for the CLIs (:func:`daemon_on_socket`). No root needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args

__all__ = ["Client", "daemon_args", "daemon_on_socket", "no_swarm_files", "running_daemon"]

Client = TestClient[web.Request, web.Application]


def daemon_args(root: Path, port: int) -> Any:
    return parse_args(["--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                       "--socket", str(root / "s.sock"), "--cgroup-parent", "shoal-unit-test",
                       "--port", str(port), "--heartbeat-period", "0.5"])


@asynccontextmanager
async def running_daemon(root: Path, port: int) -> AsyncIterator[tuple[Daemon, Client]]:
    """A started Daemon (state.json honoured, as shoald starts) serving its API in-process."""
    d = Daemon(daemon_args(root, port))
    await d.start()
    client = TestClient(TestServer(build_app(d)))
    await client.start_server()
    try:
        yield d, client
    finally:
        await client.close()
        await d.stop()


@asynccontextmanager
async def daemon_on_socket(root: Path, port: int) -> AsyncIterator[tuple[Daemon, Path]]:
    """A started Daemon serving its API on the unix socket ``root/api.sock`` (what the shoal and
    docker CLIs talk to); yields the daemon and the socket's path."""
    d = Daemon(daemon_args(root, port))
    await d.start()
    runner = web.AppRunner(build_app(d))
    await runner.setup()
    sock = root / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        yield d, sock
    finally:
        await runner.cleanup()
        await d.stop()


def no_swarm_files(d: Daemon) -> None:
    assert not d.state.path.exists(), d.state.path.read_text()
    assert not d.certs_dir.exists() and not (d.data_root / "manager").exists()
