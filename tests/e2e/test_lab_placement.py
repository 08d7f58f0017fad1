"""Placement in the lab: a service constrained to a label no node has stays Pending with Swarm's
reason in `service ps`'s ERROR column (the `shoal` CLI and the docker CLI), and is placed and
runs once a node is labelled — without any retry timer; the dry run says the same beforehand."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from deploy.lab import lab
from tests.e2e.conftest import Cluster, client, shoal, wait_until

REASON = "no suitable node (scheduling constraints not satisfied on 3 nodes)"


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The docker CLI against h1's socket."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{lab.socket_path('h1')}")
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_pending_with_reason_then_placed_when_a_node_is_labelled(cluster: Cluster) -> None:
    c = client("h1")
    r = shoal("h1", "service", "create", "--dry-run", "--name", "zoned", "--replicas", "2",
              "--constraint", "node.labels.zone==eu", lab.IMAGE, "sleep", "1000")
    assert r.returncode == 1, r.stdout + r.stderr  # a task would stay pending
    assert r.stdout.count(f"pending: {REASON}") == 2 and "nothing was written" in r.stdout, r.stdout
    assert not [s for s in c.services() if s["Spec"]["Name"] == "zoned"]
    r = shoal("h1", "service", "create", "--detach", "--name", "zoned", "--replicas", "2",
              "--constraint", "node.labels.zone==eu", lab.IMAGE, "sleep", "1000")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        sid = r.stdout.strip().splitlines()[-1]

        def reasons() -> list[str] | None:
            ts = c.tasks({"service": [sid]})
            errs = [str(t["Status"].get("Err") or "") for t in ts if t["Status"]["State"] == "pending"]
            return errs if len(errs) == 2 and all(errs) else None

        assert wait_until(reasons, 30, "two pending tasks with a reason") == [REASON, REASON]
        r = shoal("h1", "service", "ps", "--no-trunc", "zoned")
        assert r.returncode == 0 and r.stdout.count(f'"{REASON}"') == 2, r.stdout
        if shutil.which("docker") is not None:
            r = docker("service", "ps", "--no-trunc", "zoned")
            assert r.returncode == 0 and r.stdout.count(f'"{REASON}"') == 2, r.stdout + r.stderr
        # label h3: both tasks go there (the only node that satisfies the constraint)
        start = time.monotonic()
        r = shoal("h1", "node", "update", "--label-add", "zone=eu", "h3")
        assert r.returncode == 0, r.stderr
        h3 = next(n["ID"] for n in c.nodes() if n["Description"]["Hostname"] == "h3")

        def assigned() -> bool:
            ts = c.tasks({"service": [sid]})
            return len(ts) == 2 and all(t.get("NodeID") == h3 and t["Status"]["State"] != "pending" for t in ts)

        wait_until(assigned, 10, "both tasks assigned to h3")
        placed_after = time.monotonic() - start
        wait_until(lambda: all(t["Status"]["State"] == "running" for t in c.tasks({"service": [sid]})), 90,
                   "both tasks running on h3")
        # the CLI round trips (a process start each) are in this figure; the scheduler's part is < 1 s
        assert placed_after < 5, f"placed {placed_after:.1f} s after the label"
    finally:
        shoal("h1", "service", "rm", "zoned")
        shoal("h1", "node", "update", "--label-rm", "zone", "h3")
