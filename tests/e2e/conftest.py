"""The e2e lab fixture: four lab hosts (h1 manager, h2 and h3 workers, h4 kept out of the
swarm for bad-join tests), brought up once per test module and ALWAYS torn down, even when setup or
a test fails; teardown asserts that nothing of the lab is left."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from deploy.lab import lab
from shoal.cli.client import Client
from tests.waiting import wait_until_sync

HEARTBEAT = 1.0  # seconds; a node is down after 3 missed beats
LAB_MTU = 1400  # the underlay links' MTU (`shoal-lab up --mtu`): this machine's eth0's, below the kernel's 1500
T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """:func:`tests.waiting.wait_until_sync` as the lab tests wait: every error of ``fn`` (a
    command or request against hosts that are still coming up) counts as "not yet"."""
    return wait_until_sync(fn, timeout, what, interval, retry=(Exception,))


def shoal(host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``shoal ARGS`` inside lab host ``host`` (as `shoal-lab exec` does); never raises on rc."""
    argv, env = lab.exec_argv(host, ["shoal", *args])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def client(host: str) -> Client:
    """An API client for lab host ``host``'s socket."""
    return Client(f"unix://{lab.socket_path(host)}", timeout=30)


@dataclass
class Cluster:
    """The swarm made on the lab: h1 manager, h2/h3 workers, service ``web`` (3 replicas)."""

    state: lab.LabState
    worker_token: str
    manager_token: str


def lab_session(heartbeat: float) -> Iterator[lab.LabState]:
    """Four lab hosts with heartbeat period ``heartbeat`` s, underlay MTU ``LAB_MTU``; torn down
    (and checked clean) whatever happens. Skips without root. For a module fixture to yield from."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        yield lab.up(4, heartbeat_period=heartbeat, mtu=LAB_MTU)
    finally:
        leftovers = lab.down()
        assert leftovers == [], f"the lab left things behind: {leftovers}"


@pytest.fixture(scope="module")
def lab_up() -> Iterator[lab.LabState]:
    """Four lab hosts with fast heartbeats (:func:`lab_session`)."""
    yield from lab_session(HEARTBEAT)


@pytest.fixture(scope="module")
def cluster(lab_up: lab.LabState) -> Cluster:
    """swarm init on h1, join h2 and h3, service web with 3 replicas, converged."""
    h1 = lab_up.host("h1")
    r = shoal("h1", "swarm", "init", "--advertise-addr", h1.ip)
    assert r.returncode == 0, r.stderr
    worker = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
    manager = shoal("h1", "swarm", "join-token", "-q", "manager").stdout.strip()
    assert worker.startswith("SWMTKN-1-") and worker != manager
    for h in ("h2", "h3"):
        r = shoal(h, "swarm", "join", "--token", worker, f"{h1.ip}:2377")
        assert r.returncode == 0, f"{h}: {r.stderr}"
    wait_until(lambda: sum(n["Status"]["State"] == "ready" for n in client("h1").nodes()) == 3, 60, "3 ready nodes")
    r = shoal("h1", "service", "create", "--name", "web", "--replicas", "3", "--timeout", "180",
              lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return Cluster(lab_up, worker, manager)
