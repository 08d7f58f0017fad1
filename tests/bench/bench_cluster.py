"""Cluster benchmarks on the lab: convergence, failover, and Shoal beside Docker Swarm.

Prints ``FIGURE <name> <value> <unit>`` lines; never passes or fails on time.

    python tests/bench/bench_cluster.py                 # 3-host lab: N=3 and N=30, worker loss
    python tests/bench/bench_cluster.py --one-host 50   # + 1-host lab, create -> 50 Running
    python tests/bench/bench_cluster.py --swarm         # + Docker Swarm doing the same (needs docker.io)

What is measured (the clock starts just before the API call, convergence is polled through the
API every 50 ms, as ``docker service ps`` would see it):

- ``create_to_running_N{N}_3hosts_s``: ``POST /services/create`` with N replicas → N tasks Running.
- ``worker_kill_to_replaced_s``: ``kill -9`` of a worker's shoald → the service has its replicas
  Running on the other nodes again (heartbeat period 1 s here, so a node is down after ~3 s;
  with Swarm's default 5 s it is ~15 s plus the same replacement time).
- ``create_to_running_N50_1host_s`` and, with ``--swarm``, ``swarm_create_to_running_N50_1host_s``:
  the same image (busybox, ``sleep 100000``), the same machine, in the same run; dockerd runs with
  its defaults (docker0 bridge, iptables) in a network namespace of its own, as each Shoal task
  also gets a veth on a bridge.

Runs as root; tears the lab down at the end (also on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.lab import lab  # noqa: E402
from shoal.cli.client import APIError, Client  # noqa: E402

POLL = 0.05
SWARM_NETNS = "shoal-bench-dockerd"
TIMEOUT = 300.0


def fig(name: str, values: list[float], unit: str) -> None:
    """Print one figure line: median, min, max, n."""
    if not values:
        print(f"FIGURE {name} n/a", flush=True)
        return
    print(f"FIGURE {name} median={statistics.median(values):.3f} min={min(values):.3f} "
          f"max={max(values):.3f} n={len(values)} {unit}", flush=True)


def running(c: Client, svc: str, exclude_node: str | None = None) -> int:
    n = 0
    for t in c.tasks({"service": [svc], "desired-state": ["running"]}):
        if t["Status"]["State"] == "running" and t.get("NodeID") != exclude_node:
            n += 1
    return n


def wait_running(c: Client, svc: str, n: int, t0: float, exclude_node: str | None = None) -> float:
    while True:
        if running(c, svc, exclude_node) >= n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > TIMEOUT:
            raise TimeoutError(f"{svc}: not {n} running after {TIMEOUT}s")
        time.sleep(POLL)


def wait_gone(c: Client, svc: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            if not c.tasks({"service": [svc]}):
                return
        except APIError as e:  # the service is gone: Docker answers 404 for its name
            if e.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks of {svc} still present after rm")
        time.sleep(0.2)


def spec(name: str, n: int, args: list[str]) -> dict[str, Any]:
    return {"Name": name, "Mode": {"Replicated": {"Replicas": n}},
            "TaskTemplate": {"ContainerSpec": {"Image": lab.IMAGE, "Args": args,
                                               "StopSignal": "SIGKILL"},
                             "RestartPolicy": {"Condition": "any", "Delay": 0}}}


def form_cluster(state: lab.LabState) -> Client:
    c = Client(f"unix://{lab.socket_path('h1')}")
    c.swarm_init(advertise_addr=state.hosts[0].ip)
    token = c.swarm_inspect()["JoinTokens"]["Worker"]
    for h in state.hosts[1:]:
        Client(f"unix://{lab.socket_path(h.name)}").swarm_join(token, f"{state.hosts[0].ip}:2377")
    deadline = time.monotonic() + 60
    while sum(n["Status"]["State"] == "ready" for n in c.nodes()) < len(state.hosts):
        if time.monotonic() > deadline:
            raise TimeoutError("nodes did not all become ready")
        time.sleep(0.1)
    return c


def converge(c: Client, name: str, n: int, args: list[str]) -> float:
    t0 = time.monotonic()
    c.service_create(spec(name, n, args))
    dt = wait_running(c, name, n, t0)
    print(f"  {name}: {n} running after {dt:.2f}s", flush=True)
    return dt


def bench_three_hosts(runs: int) -> None:
    state = lab.up(3, heartbeat_period=1.0)
    try:
        c = form_cluster(state)
        converge(c, "warm", 1, ["sleep", "100000"])  # first pull + one-off costs
        c.service_remove("warm")
        wait_gone(c, "warm")
        res: dict[str, list[float]] = {}
        for r in range(runs):
            for n in (3, 30):
                name = f"b{n}r{r}"
                res.setdefault(f"create_to_running_N{n}_3hosts_s", []).append(
                    converge(c, name, n, ["sleep", "100000"]))
                c.service_remove(name)
                wait_gone(c, name)
        # worker loss: 6 replicas over 3 hosts, kill h3's shoald
        c.service_create(spec("loss", 6, ["sleep", "100000"]))
        wait_running(c, "loss", 6, time.monotonic())
        h3 = state.host("h3")
        node3 = next(n["ID"] for n in c.nodes() if n["Description"]["Hostname"] == "h3")
        t0 = time.monotonic()
        lab.kill_daemon(state, h3, signal.SIGKILL)
        dt = wait_running(c, "loss", 6, t0, exclude_node=node3)
        print(f"  worker h3 killed: 6 running elsewhere after {dt:.2f}s", flush=True)
        res["worker_kill_to_replaced_heartbeat1s_s"] = [dt]
        for k, v in res.items():
            fig(k, v, "s")
    finally:
        lab.down(quiet=True)


def bench_one_host(n: int) -> float:
    state = lab.up(1)
    try:
        c = form_cluster(state)
        converge(c, "warm", 1, ["sleep", "100000"])
        c.service_remove("warm")
        wait_gone(c, "warm")
        dt = converge(c, f"n{n}", n, ["sleep", "100000"])
        fig(f"create_to_running_N{n}_1host_s", [dt], "s")
        return dt
    finally:
        lab.down(quiet=True)


def bench_swarm(n: int) -> float | None:
    """Docker Swarm (Debian's dockerd) on this machine: create -> N running, as anchors/01_swarm.py."""
    if shutil.which("dockerd") is None:
        print("FIGURE swarm_create_to_running_N50_1host_s n/a (dockerd not installed: "
              "apt-get install docker.io)", flush=True)
        return None
    data = Path("/tmp/shoal-bench-dockerd")
    sock = "/tmp/shoal-bench-dockerd.sock"
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    # dockerd with its defaults (docker0 bridge, iptables NAT), as the anchor ran it, but inside a
    # network namespace of its own so its bridge and firewall rules vanish with the namespace
    subprocess.run(["ip", "netns", "add", SWARM_NETNS], check=True)
    subprocess.run(["ip", "netns", "exec", SWARM_NETNS, "ip", "link", "set", "lo", "up"], check=True)
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{SWARM_NETNS}", "dockerd", "--data-root", str(data),
                             "--host", f"unix://{sock}", "--pidfile", "/tmp/shoal-bench-dockerd.pid",
                             "--exec-root", "/tmp/shoal-bench-dockerd-exec"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def d(*args: str, check: bool = True) -> str:
        r = subprocess.run(["docker", *args], env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("dockerd did not start")
            time.sleep(0.2)
        root = Path("/tmp/shoal-bench-bbroot")
        if not (root / "bin/busybox").exists():
            (root / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy("/bin/busybox", root / "bin/busybox")
            (root / "bin/sleep").symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["docker", "import", "-", "bb:1"], input=tar, env=env, capture_output=True, check=True)
        d("swarm", "init", "--advertise-addr", "127.0.0.1")
        d("service", "create", "--detach", "--name", "warm", "--stop-signal", "KILL", "bb:1", "sleep", "100000")
        t0 = time.monotonic()
        while d("service", "ls", "--format", "{{.Replicas}}") != "1/1":
            if time.monotonic() - t0 > TIMEOUT:
                raise TimeoutError("swarm warm-up did not converge")
            time.sleep(POLL)
        d("service", "rm", "warm")
        t0 = time.monotonic()
        d("service", "create", "--detach", "--name", "n50", "--replicas", str(n), "--stop-signal", "KILL",
          "bb:1", "sleep", "100000")
        while True:
            out = d("service", "ps", "n50", "--filter", "desired-state=running", "--format", "{{.CurrentState}}")
            if sum(line.startswith("Running") for line in out.splitlines()) >= n:
                break
            if time.monotonic() - t0 > TIMEOUT:
                raise TimeoutError("swarm did not converge")
            time.sleep(POLL)
        dt = time.monotonic() - t0
        fig(f"swarm_create_to_running_N{n}_1host_s", [dt], "s")
        return dt
    finally:
        d("swarm", "leave", "--force", check=False)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["umount", "-R", "-l", str(data)], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run(["umount", "-R", "-l", "/tmp/shoal-bench-dockerd-exec"], capture_output=True)
        shutil.rmtree("/tmp/shoal-bench-dockerd-exec", ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", SWARM_NETNS], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs of the N=3/N=30 convergence (default 2)")
    ap.add_argument("--one-host", type=int, default=50, metavar="N", help="replicas on the 1-host lab (0 = skip)")
    ap.add_argument("--swarm", action="store_true", help="also run Docker Swarm (dockerd) for the 1-host figure")
    ap.add_argument("--skip-three", action="store_true", help="skip the 3-host part")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the lab makes network namespaces)")
    if not a.skip_three:
        print("# 3-host lab", flush=True)
        bench_three_hosts(a.runs)
    ours = None
    if a.one_host:
        print(f"# 1-host lab, {a.one_host} replicas", flush=True)
        ours = bench_one_host(a.one_host)
    if a.swarm and a.one_host:
        print(f"# Docker Swarm, 1 host, {a.one_host} replicas", flush=True)
        theirs = bench_swarm(a.one_host)
        if theirs and ours:
            print(f"RATIO swarm/shoal create_to_running_N{a.one_host}_1host {theirs / ours:.2f}x", flush=True)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
