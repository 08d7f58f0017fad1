"""Nodes that blip, on the lab (root): a worker's shoald frozen (SIGSTOP) for less than the
node-down time keeps its tasks (same IDs, same containers, nothing replaced); frozen for longer,
its tasks are replaced elsewhere and, once it is back (SIGCONT), exactly one task per slot runs,
the original. Then opt-in rebalancing spreads a 4-replica service onto a node that joins.

The lab here runs a 2 s heartbeat (node down after 3 missed beats: 5.4–6.6 s of silence with the
±10 % jitter), so a freeze of 3 s is always survived (the silence is at most the freeze plus one
period). The figures measured are printed (run with ``-s``) and recorded in docs/architecture.md,
"Nodes that blip"."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.lab import lab
from tests.e2e.conftest import Cluster, client, lab_session, shoal, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e]

HEARTBEAT = 2.0
GRACE = 3 * HEARTBEAT  # the node-down time: 3 missed beats (±10 %)
SHORT_FREEZE = 3.0  # < 2 periods × 0.9: always survived
LONG_FREEZE = 15.0  # > GRACE × 1.1: always a loss


@pytest.fixture(scope="module")
def lab_up() -> Iterator[lab.LabState]:
    """Four lab hosts with a 2 s heartbeat (this module's own lab: the freeze windows need a
    period long enough to tell a blip from a loss); torn down and checked clean whatever happens."""
    yield from lab_session(HEARTBEAT)


def node_ids() -> dict[str, str]:
    """Hostname → node ID of the nodes in the swarm (the latest one when a name repeats)."""
    return {n["Description"]["Hostname"]: n["ID"] for n in sorted(client("h1").nodes(), key=lambda n: n["CreatedAt"])}


def current(service: str) -> list[dict[str, Any]]:
    """The service's tasks whose desired state is running (parked ones on down nodes included)."""
    c = client("h1")
    sid = c.service(service)["ID"]
    return [t for t in c.tasks({"service": [sid]}) if t["DesiredState"] == "running"]


def snapshot(service: str) -> dict[int, tuple[str, str]]:
    """Slot → (task ID, container ID) of the service's current tasks; fails on two in a slot."""
    out: dict[int, tuple[str, str]] = {}
    for t in current(service):
        assert t["Slot"] not in out, f"two current tasks in slot {t['Slot']}"
        out[t["Slot"]] = (t["ID"], t["Status"].get("ContainerStatus", {}).get("ContainerID", ""))
    return out


def three_running() -> dict[int, tuple[str, str]] | None:
    """:func:`snapshot` of ``web`` once its 3 slots each run a container, else None."""
    s = snapshot("web")
    return s if len(s) == 3 and all(c for _, c in s.values()) else None


def node_state(node_id: str) -> str:
    return str(client("h1").node(node_id)["Status"]["State"])


def freeze(host: lab.HostState) -> None:
    assert host.pid and lab._alive(host.pid)
    os.kill(host.pid, signal.SIGSTOP)


def thaw(host: lab.HostState) -> None:
    if host.pid and lab._alive(host.pid):
        os.kill(host.pid, signal.SIGCONT)


def test_short_freeze_keeps_the_tasks(cluster: Cluster) -> None:
    st = cluster.state
    h2 = st.host("h2")
    h2_id = node_ids()["h2"]
    before = wait_until(three_running, 60, "3 running web tasks")
    on_h2 = [t["ID"] for t in current("web") if t["NodeID"] == h2_id]
    assert on_h2, "a web task on h2"
    t0 = time.monotonic()
    freeze(h2)
    try:
        while time.monotonic() - t0 < SHORT_FREEZE:  # watched while frozen: never down
            assert node_state(h2_id) == "ready", f"h2 marked down {time.monotonic() - t0:.1f} s into a freeze"
            time.sleep(0.1)
    finally:
        thaw(h2)
    # for the rest of the grace and the settle time: still ready, nothing replaced or restarted
    end = time.monotonic() + GRACE + 2
    while time.monotonic() < end:
        assert node_state(h2_id) == "ready"
        assert snapshot("web") == before
        time.sleep(0.2)
    print(f"\nblips: a {SHORT_FREEZE:g} s freeze of h2 (heartbeat {HEARTBEAT:g} s): node stayed ready, "
          f"tasks kept ({len(on_h2)} on h2)")


def test_long_freeze_replaces_then_keeps_one_task_per_slot(cluster: Cluster) -> None:
    st = cluster.state
    h2 = st.host("h2")
    h2_id = node_ids()["h2"]
    before = wait_until(three_running, 60, "3 running web tasks")
    (orig,) = [t for t in current("web") if t["NodeID"] == h2_id]
    slot = orig["Slot"]
    t0 = time.monotonic()
    freeze(h2)
    try:
        wait_until(lambda: node_state(h2_id) == "down", GRACE * 1.1 + 5, "h2 to be marked down", interval=0.05)
        t_down = time.monotonic() - t0

        def replaced() -> dict[str, Any] | None:
            for t in current("web"):
                if t["Slot"] == slot and t["ID"] != orig["ID"] and t["Status"]["State"] == "running":
                    return t
            return None

        repl = wait_until(replaced, 60, f"slot {slot} to run a replacement elsewhere", interval=0.05)
        assert repl is not None
        repl_id = str(repl["ID"])
        t_repl = time.monotonic() - t0
        assert repl["NodeID"] != h2_id
        # the original is parked, not shut down: it may still run on a node only cut off
        assert {t["ID"] for t in current("web")} >= {orig["ID"], repl["ID"]}
        r = shoal("h1", "service", "ps", "web")
        assert r.returncode == 0, r.stderr
        left = LONG_FREEZE - (time.monotonic() - t0)
        if left > 0:
            wait_until(lambda: time.monotonic() - t0 >= LONG_FREEZE, left + 1, "the end of the freeze")
    finally:
        thaw(h2)
    t_thaw = time.monotonic()
    wait_until(lambda: node_state(h2_id) == "ready", 30, "h2 to be ready again", interval=0.05)
    t_ready = time.monotonic() - t_thaw

    def one_per_slot() -> dict[int, tuple[str, str]] | None:
        ts = current("web")
        slots = [t["Slot"] for t in ts]
        if sorted(slots) != [1, 2, 3] or any(t["Status"]["State"] != "running" for t in ts):
            return None
        return snapshot("web")

    after = wait_until(one_per_slot, 60, "exactly one running task per slot", interval=0.05)
    t_one = time.monotonic() - t_thaw
    assert after == before, "the original (still running on h2) is kept, the replacement stopped"
    sid = client("h1").service("web")["ID"]
    wait_until(lambda: next(t for t in client("h1").tasks({"service": [sid]}) if t["ID"] == repl_id)
               ["Status"]["State"] == "shutdown", 60, "the replacement to be stopped")
    os.kill(int(orig["Status"]["ContainerStatus"]["PID"]), 0)  # the original's container never stopped
    print(f"\nblips: {LONG_FREEZE:g} s freeze of h2 (heartbeat {HEARTBEAT:g} s, grace {GRACE:g} s): "
          f"down after {t_down:.2f} s, replacement running after {t_repl:.2f} s; after SIGCONT "
          f"ready in {t_ready:.2f} s, one task per slot (the original) in {t_one:.2f} s")


def test_rebalance_spreads_onto_a_joining_node(cluster: Cluster) -> None:
    st = cluster.state
    h1 = st.host("h1")
    r = shoal("h1", "service", "create", "--name", "rb", "--replicas", "4", "--timeout", "180",
              lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    joined = False
    try:
        def spread() -> dict[str, int]:
            ids = {v: k for k, v in node_ids().items()}
            out: dict[str, int] = {}
            for t in current("rb"):
                if t["Status"]["State"] == "running":
                    name = ids.get(t["NodeID"], "?")
                    out[name] = out.get(name, 0) + 1
            return out

        wait_until(lambda: sum(spread().values()) == 4, 120, "4 running rb tasks")
        assert sorted(spread().values()) == [1, 1, 2]
        r = shoal("h1", "service", "update", "--rebalance", "--detach", "rb")
        assert r.returncode == 0, r.stdout + r.stderr
        assert client("h1").service("rb")["Spec"]["Labels"].get("com.shoal.rebalance") == "true"
        r = shoal("h4", "swarm", "join", "--token", cluster.worker_token, f"{h1.ip}:2377")
        assert r.returncode == 0, r.stdout + r.stderr
        joined = True
        t0 = time.monotonic()
        wait_until(lambda: spread() == {"h1": 1, "h2": 1, "h3": 1, "h4": 1}, 120,
                   "rb to spread one task per node", interval=0.2)
        print(f"\nrebalance: 4 replicas spread onto the joining h4 in {time.monotonic() - t0:.2f} s")
        assert sorted(t["Slot"] for t in current("rb")) == [1, 2, 3, 4]
    finally:
        shoal("h1", "service", "rm", "rb")
        if joined:
            h4_id = node_ids().get("h4")
            shoal("h4", "swarm", "leave", "--force", timeout=120)
            if h4_id:
                wait_until(lambda: node_state(h4_id) == "down", 60, "h4 to be down after leaving")
                client("h1").request("DELETE", f"/nodes/{h4_id}", {"force": "1"})
                wait_until(lambda: "h4" not in node_ids(), 30, "h4 to be removed")
