"""Health checks on the lab (root): a task with a health check is ``starting`` until its first
passing probe, then ``running`` with the health log in its ``ContainerStatus.Health``; a task whose
check keeps failing is stopped, fails with Swarm's ``dockerexec: unhealthy container`` error and is
replaced in its slot, and is never in the service's DNS names (``tasks.<service>``) nor behind its
VIP: DNS and VIPs list running tasks only.

Probes are run by the worker inside the task's container: ``test -f /tmp/ready`` passes only once
the container itself wrote that file."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from deploy.lab import lab
from tests.e2e.conftest import Cluster, client, shoal, wait_until

_RESOLVE = ("import sys, dns.resolver\nr = dns.resolver.Resolver(configure=False); r.nameservers = ['127.0.0.11']\n"
            "r.lifetime = 3\ntry:\n    print(' '.join(sorted(a.address for a in r.resolve(sys.argv[1], 'A'))))\n"
            "except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):\n    print('')\n")
_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())"


def _in_task(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv],
                          capture_output=True, text=True, timeout=30)


def _resolve(pid: int, name: str) -> list[str]:
    """The A records the task's embedded resolver gives for ``name`` ([] for NXDOMAIN or no records)."""
    r = _in_task(pid, sys.executable, "-c", _RESOLVE, name)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _tasks(service: str) -> list[dict[str, Any]]:
    c = client("h1")
    return c.tasks({"service": [c.service(service)["ID"]]})


def _overlay_ip(task: dict[str, Any], network: str) -> str | None:
    for att in task.get("NetworksAttachments") or []:
        if att["Network"]["Spec"]["Name"] == network and att.get("Addresses"):
            return str(att["Addresses"][0]).split("/")[0]
    return None


def test_starting_until_healthy_then_unhealthy_tasks_are_replaced_and_never_served(cluster: Cluster) -> None:
    assert shoal("h1", "network", "create", "-d", "overlay", "--subnet", "10.31.0.0/24", "hnet").returncode == 0
    try:
        _healthy_service_starts_after_its_first_passing_probe()
        _unhealthy_tasks_are_replaced_and_never_in_dns_or_vip()
    finally:
        for s in ("hgood", "hbad"):
            shoal("h1", "service", "rm", s)
        wait_until(lambda: shoal("h1", "network", "rm", "hnet").returncode == 0, 60, "network hnet removed")


def _healthy_service_starts_after_its_first_passing_probe() -> None:
    r = shoal("h1", "service", "create", "--detach", "--name", "hgood", "--network", "hnet", "--replicas", "1",
              "--health-cmd", "test -f /tmp/ready", "--health-interval", "1s", "--health-retries", "1",
              "--health-start-period", "60s", "--health-start-interval", "500ms",
              lab.IMAGE, "sh", "-c", "sleep 4; touch /tmp/ready; exec httpd -f -p 80 -h /www")
    assert r.returncode == 0, r.stdout + r.stderr
    seen: set[str] = set()

    def running() -> dict[str, Any] | None:
        tasks = [t for t in _tasks("hgood") if t["DesiredState"] == "running"]
        seen.update(t["Status"]["State"] for t in tasks)
        return next((t for t in tasks if t["Status"]["State"] == "running"), None)

    task = wait_until(running, 120, "hgood running")
    assert "starting" in seen, seen  # it was starting while its probe failed
    h = task["Status"]["ContainerStatus"]["Health"]
    assert h["Status"] == "healthy" and h["FailingStreak"] == 0
    codes = [e["ExitCode"] for e in h["Log"]]
    assert codes[-1] == 0 and 1 in codes, h  # failing probes (no /tmp/ready yet), then the passing one
    assert h["Log"][-1]["End"][:19] <= task["Status"]["Timestamp"][:19]  # running after the probe passed
    assert client("h1").task(task["ID"])["Status"]["ContainerStatus"]["Health"]["Status"] == "healthy"


def _unhealthy_tasks_are_replaced_and_never_in_dns_or_vip() -> None:
    good = next(t for t in _tasks("hgood") if t["Status"]["State"] == "running")
    pid = int(good["Status"]["ContainerStatus"]["PID"])
    assert _resolve(pid, "tasks.hgood") == [_overlay_ip(good, "hnet")]
    r = shoal("h1", "service", "create", "--detach", "--name", "hbad", "--network", "hnet", "--replicas", "2",
              "--health-cmd", "false", "--health-interval", "500ms", "--health-retries", "2",
              "--stop-grace-period", "1s", lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
    assert r.returncode == 0, r.stdout + r.stderr
    vip = wait_until(lambda: _resolve(pid, "hbad") or None, 30, "the VIP of hbad in DNS")
    assert len(vip) == 1
    deadline = time.monotonic() + 90
    failed: list[dict[str, Any]] = []
    ever_running: list[str] = []
    while time.monotonic() < deadline:
        tasks = _tasks("hbad")
        ever_running += [t["ID"] for t in tasks if t["Status"]["State"] == "running"]
        bad_ips = {_overlay_ip(t, "hnet") for t in tasks}
        names = _resolve(pid, "tasks.hbad")
        assert not set(names) & bad_ips, (names, bad_ips)  # never a name of an unhealthy task
        # nothing answers behind the VIP: no task of hbad is its backend (their httpd would answer)
        assert _in_task(pid, sys.executable, "-I", "-c", _GET, f"http://{vip[0]}/").returncode != 0
        failed = [t for t in tasks if t["Status"]["State"] == "failed"]
        slots = {t["Slot"] for t in failed}
        if len(failed) >= 3 and slots == {1, 2}:
            break
        time.sleep(0.5)
    assert len(failed) >= 3 and {t["Slot"] for t in failed} == {1, 2}, [t["Status"] for t in _tasks("hbad")]
    assert not ever_running, ever_running
    for t in failed:
        st = t["Status"]
        assert st["Err"] in ("task: non-zero exit (137): dockerexec: unhealthy container",
                             "task: non-zero exit (143): dockerexec: unhealthy container"), st
        health = st["ContainerStatus"]["Health"]
        assert health["Status"] == "unhealthy" and health["FailingStreak"] >= 2
        assert all(e["ExitCode"] == 1 for e in health["Log"])
    # replaced: newer tasks in the same slots, desired running
    assert {t["Slot"] for t in _tasks("hbad") if t["DesiredState"] == "running"} == {1, 2}
    # the service ps shows the error, as docker service ps does
    ps = shoal("h1", "service", "ps", "--no-trunc", "hbad")
    assert "dockerexec: unhealthy container" in ps.stdout, ps.stdout
