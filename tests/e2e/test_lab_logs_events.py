"""Events and logs on the lab (root): ``docker events`` (the real docker CLI) sees a service's create
and remove, live and replayed by a bounded ``--since/--until`` call; ``service logs`` (shoal's and
docker's) returns within a few seconds while a worker's shoald is frozen (SIGSTOP), with the lines
of the other nodes and a warning naming the frozen node (Swarm would hang: moby#37336). The frozen
daemon is resumed (SIGCONT) and every service made here removed, whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.lab import lab
from tests.e2e.conftest import Cluster, client, shoal, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NEED_DOCKER = pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not on PATH")


def docker_env() -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=f"unix://{lab.socket_path('h1')}")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real docker CLI against h1's socket; never raises on rc."""
    return subprocess.run(["docker", *args], env=docker_env(), capture_output=True, text=True, timeout=timeout)


def remove_service(name: str) -> None:
    r = shoal("h1", "service", "rm", name)
    if r.returncode != 0 and "not found" not in r.stderr:
        raise AssertionError(f"service rm {name}: {r.stderr}")


@NEED_DOCKER
def test_docker_events_sees_a_service_created_and_removed(cluster: Cluster) -> None:
    name = "evsvc"
    t0 = time.time() - 1
    # --since: whether the follow subscribes before or after the create, the replay has it
    live = subprocess.Popen(["docker", "events", "--since", f"{t0:.0f}", "--filter", "type=service",
                             "--filter", f"service={name}",
                             "--format", "{{json .}}"], env=docker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert live.stdout is not None
        for line in live.stdout:
            seen.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        r = docker("service", "create", "--detach", "--name", name, lab.IMAGE, "sleep", "1000")
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip()
        r = docker("service", "rm", name)
        assert r.returncode == 0, r.stderr
        actions = wait_until(lambda: [m["Action"] for m in seen if m["Actor"]["ID"] == sid] or None, 20,
                             "docker events to show the service")
        wait_until(lambda: {"create", "remove"} <= {m["Action"] for m in seen if m["Actor"]["ID"] == sid}, 20,
                   f"create and remove in the live stream (got {actions})")
        for m in seen:
            assert m["Type"] == "service" and m["scope"] == "swarm" and m["Actor"]["Attributes"]["name"] == name
            assert abs(m["time"] - time.time()) < 120 and m["timeNano"] // 1_000_000_000 == m["time"]
        # a bounded call returns, with the replay of the window
        wait_until(lambda: int(time.time()) > int(max(m["time"] for m in seen)), 3, "the next second")
        started = time.monotonic()
        r = docker("events", "--since", f"{t0:.0f}", "--until", "0s", "--filter", "type=service",
                   "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}", timeout=30)
        assert r.returncode == 0 and time.monotonic() - started < 10, r.stderr
        lines = r.stdout.splitlines()
        assert f"service create {name}" in lines and f"service remove {name}" in lines, lines
        r = docker("events", "--since", "1m", "--until", "0s", "--filter", "type=nodes")
        assert r.returncode != 0 and "invalid filter 'type=nodes'" in r.stderr, r.stderr
        r = shoal("h1", "events", "--since", f"{t0:.0f}", "--until", "0s", "-f", f"service={name}")
        assert r.returncode == 0 and f"service create {sid} (name={name})" in r.stdout, r.stdout + r.stderr
    finally:
        live.terminate()
        live.wait(timeout=10)
        remove_service(name)


@pytest.fixture
def talker(cluster: Cluster) -> Iterator[str]:
    """Service ``talker``: one task per node, each printing a line a second; removed afterwards."""
    r = shoal("h1", "service", "create", "--name", "talker", "--replicas", "3", "--replicas-max-per-node", "1",
              "--timeout", "180", lab.IMAGE, "sh", "-c", "while true; do echo talking from $(hostname); sleep 1; done",
              timeout=240)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield "talker"
    finally:
        remove_service("talker")


def test_service_logs_returns_with_a_warning_while_a_worker_is_frozen(cluster: Cluster, talker: str) -> None:
    def all_nodes_talk() -> bool:
        r = shoal("h1", "service", "logs", talker, timeout=30)
        return r.returncode == 0 and all(f"@{h}" in r.stdout for h in ("h1", "h2", "h3"))
    wait_until(all_nodes_talk, 120, "every node's task to have logged")
    host = cluster.state.host("h2")
    assert host.pid
    nid = next(n["ID"] for n in client("h1").nodes() if n["Description"]["Hostname"] == "h2")
    os.kill(host.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = shoal("h1", "service", "logs", "--tail", "3", talker, timeout=60)
        took = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        assert took < 8, f"service logs took {took:.1f} s with a frozen node"
        print(f"\nshoal service logs with h2 frozen: {took:.2f} s")
        assert "@h1" in r.stdout and "@h3" in r.stdout and "talking from" in r.stdout, r.stdout
        assert "warning: incomplete log stream" in r.stderr and f"node h2 ({nid}) is not available" in r.stderr, r.stderr
        if shutil.which("docker"):
            started = time.monotonic()
            d = docker("service", "logs", "--tail", "3", talker, timeout=60)
            took = time.monotonic() - started
            assert took < 8, f"docker service logs took {took:.1f} s with a frozen node"
            print(f"docker service logs with h2 frozen: {took:.2f} s; stderr: {d.stderr.strip()}")
            assert "talking from" in d.stdout, d.stdout + d.stderr
            # Docker's own behaviour for missing nodes: the lines, then the warning as an error in the stream
            assert "incomplete log stream" in d.stderr and "h2" in d.stderr, d.stderr
    finally:
        os.kill(host.pid, signal.SIGCONT)
    wait_until(lambda: next(n for n in client("h1").nodes() if n["ID"] == nid)["Status"]["State"] == "ready",
               60, "h2 to be ready again")
