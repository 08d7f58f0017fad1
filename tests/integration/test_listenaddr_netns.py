"""`swarm init` without --advertise-addr in a network namespace of its own, on uvloop as shoald
runs (issue 7): with exactly one non-loopback address the node advertises it (with the listen
port); with two, the answer is a 400 that lists both. Each case runs a real Daemon in a fresh
namespace (veth pairs: the machines this runs on may lack the dummy link module) through
``ip netns exec``; the namespaces are removed even on failure.
Needs root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.conftest import require_root

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import asyncio, json, sys
import uvloop
from aiohttp.test_utils import TestClient, TestServer
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args

async def main():
    root, port = sys.argv[1], sys.argv[2]
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    d = Daemon(parse_args(["--data-root", root + "/data", "--exec-root", root + "/exec",
                           "--socket", root + "/s.sock", "--cgroup-parent", "shoal-netns-test",
                           "--port", port]))
    await d.start()
    try:
        async with TestClient(TestServer(build_app(d))) as c:
            r = await c.post("/swarm/init", json={})
            out = {"status": r.status, "body": await r.json(), "state": dict(d.state.data),
                   "state_file": d.state.path.exists(), "certs": d.certs_dir.exists()}
            if r.status == 200:
                leave = await c.post("/swarm/leave?force=1")
                out["left"] = leave.status
    finally:
        await d.stop()
    print(json.dumps(out))

uvloop.run(main())
'''


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def netns(name: str, addrs: list[str]) -> Iterator[str]:
    """A network namespace with lo up and, per address in ``addrs``, a veth pair ``d<i>``/``p<i>``
    (both ends inside) with the address on ``d<i>``."""
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for i, a in enumerate(addrs):
            ip("-n", name, "link", "add", f"d{i}", "type", "veth", "peer", "name", f"p{i}")
            ip("-n", name, "addr", "add", a, "dev", f"d{i}")
            ip("-n", name, "link", "set", f"d{i}", "up")
            ip("-n", name, "link", "set", f"p{i}", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def init_in(ns: str, root: Path, port: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, str(root), str(port)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def test_init_without_address_in_a_namespace_with_one_address(tmp_path: Path) -> None:
    require_root()
    with netns(f"shoal-t7a-{os.getpid()}", ["10.77.0.2/24"]) as ns:
        out = init_in(ns, tmp_path, 4377)
    assert out["status"] == 200, out
    assert out["state"]["AdvertiseAddr"] == "10.77.0.2:4377", out  # the one address, the listen port
    assert out["state"]["ListenAddr"] == "0.0.0.0:4377"
    assert out["left"] == 200


def test_init_without_address_in_a_namespace_with_two_addresses(tmp_path: Path) -> None:
    require_root()
    with netns(f"shoal-t7b-{os.getpid()}", ["10.77.0.2/24", "10.78.0.2/24"]) as ns:
        out = init_in(ns, tmp_path, 4377)
    assert out["status"] == 400, out
    msg = out["body"]["message"]
    assert "could not choose an IP address to advertise" in msg
    assert "10.77.0.2 on d0" in msg and "10.78.0.2 on d1" in msg and "--advertise-addr" in msg
    assert not out["state_file"] and not out["certs"] and out["state"] == {}


def test_no_namespace_is_left_behind() -> None:
    require_root()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"shoal-t7a-{os.getpid()}" not in names and f"shoal-t7b-{os.getpid()}" not in names
