"""Rolling updates and rollback on the lab (h1 manager, h2 and h3 workers; tests/e2e/conftest.py),
driven by the ``shoal`` CLI inside the hosts, as a user would:

- ``service update --update-parallelism 1 --update-delay 2s`` of 3 replicas replaces one task at a
  time: each slot's old task runs until the previous slot's new task was created and the delay
  passed (checked from the tasks' timestamps);
- an update to a broken image (a tag the registry does not have) pauses and says why (exit 1,
  ``service update paused: …``); ``service rollback`` returns to the previous image;
- with ``--update-failure-action rollback`` the same update rolls back by itself (exit 1,
  ``service rolled back: …``);
- ``service rollback`` after a good update returns to the previous image;
- last (it kills h2 and h3): after ``swarm init --force-new-cluster`` the managers left behind
  show Down / Unreachable (not the old cluster's Ready / Reachable), one is removed with ``node rm``
  without ``--force``, and the survivor's ``swarm leave`` is refused in Docker's words for the
  last manager.

Run: ``flock /tmp/shoal-lab.lock .venv/bin/pytest -q tests/e2e/test_lab_update.py``
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.lab import lab
from manager.membership import LOST_MANAGER_MESSAGE
from shoal.cli import format as fmt
from shoal.cli.client import APIError
from tests.e2e.conftest import Cluster, client, shoal, wait_until

IMAGE2 = f"{lab.REGISTRY}/busybox:v2"  # the lab image under a second tag (pushed by the fixture)
BROKEN = f"{lab.REGISTRY}/busybox:nosuchtag"
DELAY = 2.0  # seconds, --update-delay


@pytest.fixture(scope="module")
def upd(cluster: Cluster) -> Iterator[str]:
    """Service ``upd``: 3 replicas of the lab image, ``--update-monitor 2s``; the lab image also
    pushed as ``busybox:v2``. Removed afterwards, whatever happens."""
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{lab.IMAGE}", f"docker://{IMAGE2}"], check=True, timeout=120)
    r = shoal("h1", "service", "create", "--name", "upd", "--replicas", "3", "--update-monitor", "2s",
              "--timeout", "180", lab.IMAGE, "sleep", "100000", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield "upd"
    finally:
        try:
            client("h1").service_remove("upd")
        except APIError:
            pass


def _tasks(name: str) -> list[dict[str, Any]]:
    c = client("h1")
    return c.tasks({"service": [c.service(name)["ID"]]})


def _running_images(name: str) -> list[str]:
    return sorted(t["Spec"]["ContainerSpec"]["Image"] for t in _tasks(name)
                  if t["DesiredState"] == "running" and t["Status"]["State"] == "running")


def _ts(t: dict[str, Any], key: str) -> float:
    v = fmt.parse_time(t["CreatedAt"] if key == "created" else t["Status"]["Timestamp"])
    assert v is not None, t
    return v


def test_rolling_update_replaces_one_task_at_a_time(upd: str) -> None:
    before = {t["ID"]: t for t in _tasks(upd)}
    r = shoal("h1", "service", "update", "--update-parallelism", "1", "--update-delay", f"{DELAY:g}s",
              "--env-add", "V=2", "--timeout", "180", upd, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"verify: Service {upd} converged" in r.stdout
    after = _tasks(upd)
    new = sorted((t for t in after if t["ID"] not in before and t["DesiredState"] == "running"),
                 key=lambda t: _ts(t, "created"))
    assert sorted(t["Slot"] for t in new) == [1, 2, 3], new
    assert all("V=2" in (t["Spec"]["ContainerSpec"].get("Env") or []) for t in new)
    assert all(t["Status"]["State"] == "running" for t in new)
    old_by_slot = {t["Slot"]: t for t in after if t["ID"] in before and t["DesiredState"] == "running"}
    assert old_by_slot == {}, "old tasks still wanted running"
    olds = {t["Slot"]: t for t in after if t["ID"] in before}
    created = [_ts(t, "created") for t in new]
    for i in range(2):
        # the next slot's replacement came at least the delay after this one's
        assert created[i + 1] - created[i] >= DELAY - 0.1, (i, created)
        # one at a time: the next slot's old task was stopped only after this slot's new task
        # was created and the delay passed (stop-first; its Status.Timestamp is its shutdown)
        nxt = olds.get(new[i + 1]["Slot"])
        if nxt is not None and nxt["Status"]["State"] in ("shutdown", "complete"):
            assert _ts(nxt, "status") >= created[i] + DELAY - 0.1, (i, nxt["Status"], created)
    svc = client("h1").service(upd)
    assert svc["Spec"]["UpdateConfig"]["Parallelism"] == 1
    assert svc["Spec"]["UpdateConfig"]["Delay"] == int(DELAY * 1e9)


def test_update_to_a_broken_image_pauses_and_says_why_then_rollback(upd: str) -> None:
    r = shoal("h1", "service", "update", "--image", BROKEN, "--update-delay", "0s", "--timeout", "180", upd,
              timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Error: service update paused: update paused due to failure or early termination of task" in r.stdout
    svc = client("h1").service(upd)
    assert svc["UpdateStatus"]["State"] == "paused"
    assert "update paused due to failure" in svc["UpdateStatus"]["Message"]
    # the tasks not yet replaced still run the old image (parallelism 1: one slot was tried)
    assert _running_images(upd).count(lab.IMAGE) >= 2
    failed = [t for t in _tasks(upd) if t["Spec"]["ContainerSpec"]["Image"] == BROKEN
              and t["Status"]["State"] in ("rejected", "failed")]
    assert failed and failed[0]["Status"].get("Err"), failed

    r = shoal("h1", "service", "rollback", "--timeout", "180", upd, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: _running_images(upd) == [lab.IMAGE] * 3, 120, "3 tasks on the previous image")
    assert client("h1").service(upd)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == lab.IMAGE


def test_update_to_a_broken_image_rolls_back_with_failure_action_rollback(upd: str) -> None:
    r = shoal("h1", "service", "update", "--image", BROKEN, "--update-failure-action", "rollback",
              "--timeout", "180", upd, timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Error: service rolled back: " in r.stdout
    svc = client("h1").service(upd)
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == lab.IMAGE
    wait_until(lambda: client("h1").service(upd)["UpdateStatus"]["State"] == "rollback_completed", 60,
               "the rollback to complete")
    wait_until(lambda: _running_images(upd) == [lab.IMAGE] * 3, 120, "3 tasks on the previous image")


def test_service_rollback_returns_to_the_previous_image(upd: str) -> None:
    r = shoal("h1", "service", "update", "--image", IMAGE2, "--timeout", "180", upd, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _running_images(upd) == [IMAGE2] * 3
    r = shoal("h1", "service", "rollback", "--timeout", "180", upd, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"verify: Service {upd} converged" in r.stdout
    wait_until(lambda: _running_images(upd) == [lab.IMAGE] * 3, 120, "3 tasks on the previous image")
    svc = client("h1").service(upd)
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == lab.IMAGE
    assert svc["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"] == IMAGE2


def test_force_new_cluster_shows_the_lost_managers_down_and_unreachable(cluster: Cluster, upd: str) -> None:
    c = client("h1")
    r = shoal("h1", "node", "promote", "h2", "h3")
    assert r.returncode == 0, r.stdout + r.stderr

    def reach() -> dict[str, str]:
        return {n["Description"]["Hostname"]: (n.get("ManagerStatus") or {}).get("Reachability", "")
                for n in c.nodes()}
    wait_until(lambda: reach() == {"h1": "reachable", "h2": "reachable", "h3": "reachable"}, 90,
               "3 reachable managers")
    st = cluster.state
    for h in ("h2", "h3"):
        lab.kill_daemon(st, st.host(h))  # for good: the lab's teardown cleans up
    r = shoal("h1", "swarm", "init", "--force-new-cluster")
    assert r.returncode == 0, r.stdout + r.stderr

    def lost() -> dict[str, tuple[str, str, str]]:
        return {n["Description"]["Hostname"]: (n["Status"]["State"], n["Status"].get("Message", ""),
                                               (n.get("ManagerStatus") or {}).get("Reachability", ""))
                for n in client("h1").nodes() if n["Description"]["Hostname"] != "h1"}
    want = {h: ("down", LOST_MANAGER_MESSAGE, "unreachable") for h in ("h2", "h3")}
    wait_until(lambda: lost() == want, 30, "h2 and h3 shown Down / Unreachable")
    r = shoal("h1", "node", "ls")
    assert r.returncode == 0
    rows = {ln.split()[1] if ln.split()[1] != "*" else ln.split()[2]: ln for ln in r.stdout.splitlines()[1:]}
    for h in ("h2", "h3"):
        assert " Down " in rows[h] and " Unreachable " in rows[h], r.stdout
    assert " Ready " in rows["h1"] and " Leader " in rows["h1"], r.stdout

    r = shoal("h1", "node", "rm", "h2")  # down and no Raft member: no --force needed
    assert r.returncode == 0 and r.stdout == "h2\n", r.stdout + r.stderr
    r = shoal("h1", "swarm", "leave")
    assert r.returncode == 1
    assert ("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last "
            "manager erases all current state of the swarm. Use `--force` to ignore this message.") in r.stderr
    assert "managers out of" not in r.stderr and "shoal" not in r.stderr.replace("shoal:", "")
