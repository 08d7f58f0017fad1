"""Service modes end to end on the lab (root; run under the lab lock): a global service follows
a joining and a draining node; a replicated job completes and is not restarted; the docker CLI
creates a global service and a replicated job. Its own swarm: h1 manager, h2 joined at first,
h3 joining during the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.lab import lab
from tests.e2e.conftest import client, shoal, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def swarm(lab_up: lab.LabState) -> Iterator[tuple[str, str]]:
    """swarm init on h1, h2 joined; yields (the worker join token, h1's address)."""
    h1 = lab_up.host("h1")
    r = shoal("h1", "swarm", "init", "--advertise-addr", h1.ip)
    assert r.returncode == 0, r.stderr
    token = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
    r = shoal("h2", "swarm", "join", "--token", token, f"{h1.ip}:2377")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: sum(n["Status"]["State"] == "ready" for n in client("h1").nodes()) == 2, 60, "2 ready nodes")
    yield token, h1.ip


def hostnames() -> dict[str, str]:
    return {n["ID"]: n["Description"]["Hostname"] for n in client("h1").nodes()}


def tasks_of(service: str) -> list[dict[str, Any]]:
    c = client("h1")
    return c.tasks({"service": [c.service(service)["ID"]]})


def running_on(service: str) -> list[str]:
    """Hostnames running a task of ``service`` that is desired running."""
    names = hostnames()
    return sorted(names.get(t["NodeID"], "?") for t in tasks_of(service)
                  if t["DesiredState"] == "running" and t["Status"]["State"] == "running")


def test_a_global_service_follows_a_joining_and_a_draining_node(swarm: tuple[str, str]) -> None:
    r = shoal("h1", "service", "create", "--name", "agent", "--mode", "global", "--timeout", "120",
              lab.IMAGE, "sleep", "100000", timeout=180)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert running_on("agent") == ["h1", "h2"]
        r = shoal("h3", "swarm", "join", "--token", swarm[0], f"{swarm[1]}:2377")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: running_on("agent") == ["h1", "h2", "h3"], 90, "a task on the joining h3")
        ls = shoal("h1", "service", "ls").stdout
        assert "global" in ls and "3/3" in ls, ls
        r = shoal("h1", "node", "update", "--availability", "drain", "h2")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: running_on("agent") == ["h1", "h3"], 90, "h2's task shut down")
        ps = shoal("h1", "service", "ps", "agent").stdout
        assert "Shutdown" in ps, ps
        r = shoal("h1", "node", "update", "--availability", "active", "h2")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: running_on("agent") == ["h1", "h2", "h3"], 90, "a task on h2 again")
    finally:
        shoal("h1", "node", "update", "--availability", "active", "h2")
        shoal("h1", "service", "rm", "agent")


def test_a_replicated_job_completes_and_is_not_restarted(swarm: tuple[str, str]) -> None:
    r = shoal("h1", "service", "create", "--name", "once", "--mode", "replicated-job", "--replicas", "3",
              "--max-concurrent", "2", "--timeout", "120", lab.IMAGE, "true", timeout=180)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "verify: Job once complete" in r.stdout, r.stdout
        done = tasks_of("once")
        assert sorted(t["Status"]["State"] for t in done) == ["complete"] * 3
        assert {t["DesiredState"] for t in done} == {"complete"}
        # longer than the default restart delay (5 s): nothing is started again
        time.sleep(6)
        assert sorted(t["ID"] for t in tasks_of("once")) == sorted(t["ID"] for t in done)
        ls = shoal("h1", "service", "ls").stdout
        assert "replicated job" in ls and "(3/3 completed)" in ls, ls
        assert "Complete" in shoal("h1", "service", "ps", "once").stdout
        # a forced update is a new iteration: the job runs again
        r = shoal("h1", "service", "update", "--force", "--timeout", "120", "once", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len([t for t in tasks_of("once") if t["Status"]["State"] == "complete"]) == 6
    finally:
        shoal("h1", "service", "rm", "once")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=f"unix://{lab.socket_path('h1')}")
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not on PATH")
def test_the_docker_cli_creates_global_services_and_jobs(swarm: tuple[str, str]) -> None:
    try:
        r = docker("service", "create", "--detach", "--mode", "global", "--name", "dglobal",
                   lab.IMAGE, "sleep", "100000")
        assert r.returncode == 0, r.stderr
        n = len(client("h1").nodes())
        wait_until(lambda: len(running_on("dglobal")) == n, 90, "a dglobal task on every node")
        r = docker("service", "ls")
        assert r.returncode == 0 and f"{n}/{n}" in r.stdout, r.stdout + r.stderr
        r = docker("service", "create", "--mode", "replicated-job", "--replicas", "2", "--name", "djob",
                   lab.IMAGE, "true", timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: [t["Status"]["State"] for t in tasks_of("djob")] == ["complete"] * 2, 60,
                   "djob's 2 tasks complete")
        r = docker("service", "ls")
        assert "(2/2 completed)" in r.stdout, r.stdout
    finally:
        docker("service", "rm", "dglobal")
        docker("service", "rm", "djob")
