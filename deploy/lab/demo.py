"""``shoal-lab demo``: steps 4–8 of the end-to-end story on a lab that is up.

1. on h1: ``shoal swarm init --advertise-addr 10.99.0.11``, ``shoal swarm join-token -q worker``;
2. on h2…hN: ``shoal swarm join --token T 10.99.0.11:2377``;
3. on h1: ``shoal service create --name web --replicas R 10.99.0.2:5000/busybox:latest httpd -f -p 80 -h /www``
   (the CLI waits until the service converges);
4. ``shoal node ls``, ``shoal service ps web``; then, for each running task, from the host it runs
   on (inside that host's netns), ``GET http://<task ip>/cgi-bin/whoami`` and print the hostname;
5. say how to reach the lab and how to remove it.

Every command is printed before it runs, with its output after it. Raises LabError on failure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence

from deploy.lab import lab
from shoal.cli.client import Client


def sh(host: str, *cmd: str, capture: bool = False) -> str:
    """Run ``cmd`` inside lab host ``host`` (its netns, SHOAL_HOST=its socket); print it and its output."""
    argv, env = lab.exec_argv(host, cmd)
    lab.log(f"\n[{host}]$ {' '.join(cmd)}")
    res = subprocess.run(argv, env=env, text=True, capture_output=True, timeout=600)
    out = res.stdout
    if not capture or res.returncode != 0:
        if out:
            print(out, end="" if out.endswith("\n") else "\n", flush=True)
    if res.stderr:
        print(res.stderr, end="" if res.stderr.endswith("\n") else "\n", flush=True)
    if res.returncode != 0:
        raise lab.LabError(f"`{' '.join(cmd)}` on {host} failed with exit code {res.returncode}")
    if capture:
        print(out, end="", flush=True)
    return out


_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


def fetch_in_host(host: lab.HostState, url: str, timeout: float = 20.0) -> str:
    """GET ``url`` from inside ``host``'s netns (a Python urllib one-liner under nsenter),
    retrying until ``timeout`` seconds. (Debian's busybox wget crashes with ``-T``.)"""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        res = subprocess.run(["nsenter", f"--net={lab.NETNS_DIR / host.netns}", "--",
                              sys.executable, "-I", "-c", _GET, url],
                             capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            return res.stdout
        last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        if time.monotonic() > deadline:
            raise lab.LabError(f"GET {url} from {host.name} failed: {last}")
        time.sleep(0.3)


def whoami_all(state: lab.LabState, service: str = "web") -> list[tuple[str, str, str]]:
    """For each running task of ``service``: ``(node hostname, task ip, whoami answer)``."""
    c = Client(f"unix://{lab.socket_path(state.hosts[0].name)}")
    nodes = {n["ID"]: n for n in c.nodes()}
    svc = c.service(service)
    out = []
    for t in sorted(c.tasks({"service": [svc["ID"]]}), key=lambda t: t.get("Slot", 0)):
        if t.get("Status", {}).get("State") != "running" or t.get("DesiredState") != "running":
            continue
        hostname = nodes.get(t.get("NodeID", ""), {}).get("Description", {}).get("Hostname", "")
        addrs = [a for att in t.get("NetworksAttachments") or [] for a in att.get("Addresses") or []]
        if not addrs:
            raise lab.LabError(f"task {t['ID']} has no network address (NetworksAttachments is empty)")
        ip = addrs[0].split("/")[0]
        host = state.host(hostname)
        answer = fetch_in_host(host, f"http://{ip}/cgi-bin/whoami").strip()
        out.append((hostname, ip, answer))
    return out


def demo(replicas: int = 3, image: str = lab.IMAGE, extra: Sequence[str] = ()) -> None:
    """Run the demo on the lab that is up (see module docstring)."""
    state = lab.LabState.load()
    if state is None or not state.hosts:
        raise lab.LabError("no lab is up: run `shoal-lab up --hosts 3` first")
    first = state.hosts[0]
    lab.log(f"== step 4: {first.name} becomes the first manager")
    sh(first.name, "shoal", "swarm", "init", "--advertise-addr", first.ip)
    token = sh(first.name, "shoal", "swarm", "join-token", "-q", "worker", capture=True).strip()
    lab.log("== step 5: the other hosts join as workers")
    for h in state.hosts[1:]:
        sh(h.name, "shoal", "swarm", "join", "--token", token, f"{first.ip}:2377")
    lab.log(f"== step 6: a service with {replicas} replicas of {image}")
    sh(first.name, "shoal", "service", "create", "--name", "web", "--replicas", str(replicas), *extra,
       image, "httpd", "-f", "-p", "80", "-h", "/www")
    lab.log("== step 7: where the tasks run, and who answers")
    sh(first.name, "shoal", "node", "ls")
    sh(first.name, "shoal", "service", "ps", "web")
    answers = whoami_all(state)
    for hostname, ip, answer in answers:
        lab.log(f"  from {hostname}: GET http://{ip}/cgi-bin/whoami -> {answer}")
    distinct = {a for _, _, a in answers}
    lab.log(f"  {len(answers)} tasks answered with {len(distinct)} different container hostnames")
    lab.log(
        "== step 8: the lab stays up for you to try\n"
        f"  {lab.shoald_path().parent}/shoal-lab exec h1 -- shoal service ls\n"
        "  SHOAL_HOST=unix:///run/shoal-lab/h1.sock .venv/bin/shoal node ls\n"
        "  DOCKER_HOST=unix:///run/shoal-lab/h1.sock docker service ps web\n"
        "  logs: /var/log/shoal-lab/h1.log …\n"
        "  remove it all with: make down   (= .venv/bin/shoal-lab down)")
