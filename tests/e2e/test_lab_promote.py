"""End to end on the lab (root): ``node promote`` / ``node demote`` and ``swarm init
--force-new-cluster`` with real shoalds.

A swarm of workers h2/h3 under manager h1: promoting them makes three Raft managers (each renews
its certificate as a manager and joins Raft); demoting the leader hands leadership over and
takes it out of Raft; a demotion that would lose quorum is refused; after losing a majority
for good, ``--force-new-cluster`` on the survivor makes it the only manager with its state, and
a lost manager that comes back turns into a worker (it can be promoted again).
"""

from __future__ import annotations

from typing import Any

import pytest

from deploy.lab import lab
from tests.e2e.conftest import client, shoal, wait_until

pytestmark = pytest.mark.root


def statuses(host: str) -> dict[str, str]:
    """``{hostname: MANAGER STATUS}`` as ``node ls`` on ``host`` shows it ("" for workers)."""
    out = {}
    for n in client(host).nodes():
        ms: dict[str, Any] = n.get("ManagerStatus") or {}
        st = "Leader" if ms.get("Leader") else str(ms.get("Reachability", "")).capitalize()
        out[n["Description"]["Hostname"]] = st
    return out


def role_of(host: str) -> str:
    """The role the host's own daemon is in (``/info`` Swarm.ControlAvailable)."""
    return "manager" if client(host).info()["Swarm"].get("ControlAvailable") else "worker"


def test_promote_demote_and_force_new_cluster(lab_up: lab.LabState) -> None:
    h1 = lab_up.host("h1")
    assert shoal("h1", "swarm", "init", "--advertise-addr", h1.ip).returncode == 0
    worker = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
    for h in ("h2", "h3"):
        r = shoal(h, "swarm", "join", "--token", worker, f"{h1.ip}:2377")
        assert r.returncode == 0, r.stderr
    assert role_of("h2") == "worker"

    # promote: both become Raft managers, reachable, seen alike from every manager
    r = shoal("h1", "node", "promote", "h2", "h3")
    assert r.returncode == 0 and "Node h2 promoted to a manager in the swarm." in r.stdout, r.stdout + r.stderr
    want = {"h1": "Leader", "h2": "Reachable", "h3": "Reachable"}
    wait_until(lambda: statuses("h1") == want, 30, "h2 and h3 to be Reachable managers")
    wait_until(lambda: role_of("h2") == "manager" and role_of("h3") == "manager", 30, "h2/h3 manager roles")
    assert statuses("h3") == want
    r = shoal("h1", "node", "promote", "h2")
    assert "Node h2 is already a manager." in r.stdout

    # a write through a promoted follower is forwarded; a read on the other follower sees it
    r = shoal("h2", "service", "create", "--detach", "--name", "keep", lab.IMAGE, "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert [s["Spec"]["Name"] for s in client("h3").services()] == ["keep"]

    # logs through a follower: the leader collects them from the nodes' sessions
    r = shoal("h2", "service", "create", "--name", "talk", "--replicas", "2", lab.IMAGE,
              "sh", "-c", "echo hello-from-$(hostname); sleep 1000", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: shoal("h3", "service", "logs", "talk").stdout.count("hello-from-") == 2, 30,
               "both tasks' lines through follower h3")
    r = shoal("h3", "service", "rm", "talk")
    assert r.returncode == 0, r.stderr

    # with h3's daemon dead, demoting h2 would leave h1 alone of two voters: refused
    lab.kill_daemon(lab_up, lab_up.host("h3"))
    wait_until(lambda: statuses("h1").get("h3") == "Unreachable", 30, "h3 Unreachable")
    r = shoal("h1", "node", "demote", "h2")
    assert r.returncode == 1 and "loss of quorum" in r.stderr, r.stdout + r.stderr
    assert statuses("h1")["h2"] == "Reachable"
    lab.start_daemon(lab_up, lab_up.host("h3"))
    wait_until(lambda: statuses("h1") == want, 30, "h3 Reachable again")

    # demote the leader: leadership moves, h1 leaves Raft and becomes a worker
    r = shoal("h1", "node", "demote", "h1")
    assert r.returncode == 0 and "Manager h1 demoted in the swarm." in r.stdout, r.stdout + r.stderr
    wait_until(lambda: statuses("h2").get("h1") == "" and "Leader" in statuses("h2").values(), 30,
               "h1 out of Raft and a new leader")
    wait_until(lambda: role_of("h1") == "worker", 30, "h1 to switch to the worker role")
    r = shoal("h1", "node", "ls")
    assert r.returncode == 1 and "not a swarm manager" in r.stderr

    # lose one of the two managers for good: no quorum; --force-new-cluster keeps the state
    leader = next(h for h, s in statuses("h2").items() if s == "Leader")
    other = "h3" if leader == "h2" else "h2"
    lab.kill_daemon(lab_up, lab_up.host(leader))

    def refused() -> bool:
        # right after the kill the survivor reports an election in progress; once the dead
        # manager has been silent for 1.5 election timeouts it reports the lost quorum
        r = shoal(other, "service", "create", "--detach", "--name", "lost", lab.IMAGE, "sleep", "1000")
        assert r.returncode == 1, "a write without quorum succeeded"
        return "no quorum: 1 of 2 managers reachable" in r.stderr

    wait_until(refused, 10, "writes refused with 'no quorum'")
    r = shoal(other, "swarm", "init", "--force-new-cluster")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: statuses(other).get(other) == "Leader", 30, f"{other} to lead alone")
    assert [s["Spec"]["Name"] for s in client(other).services()] == ["keep"]
    r = shoal(other, "service", "create", "--detach", "--name", "after", lab.IMAGE, "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert sorted(s["Spec"]["Name"] for s in client(other).services()) == ["after", "keep"]

    # the lost manager comes back: it is no member of the new cluster, so it turns into a worker
    lab.start_daemon(lab_up, lab_up.host(leader))
    wait_until(lambda: role_of(leader) == "worker", 60, f"{leader} to come back as a worker")
    wait_until(lambda: statuses(other) == {"h1": "", leader: "", other: "Leader"}, 30,
               f"{other} the only manager")
    r = shoal(other, "node", "promote", leader)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: statuses(other).get(leader) == "Reachable", 60, f"{leader} a manager again")
