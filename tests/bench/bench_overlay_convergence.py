"""How fast a task change reaches every node's embedded DNS and nftables VIP rules: figures, never pass/fail.

Issue 9's aim: a task starting or stopping is reflected in every node's DNS and VIP rules in under
1 s, with the rules changed by deltas (not rewritten), at 10 and at 1,000 services on one network.

Setup: a 3-host lab (``--mtu`` 1400, heartbeat 1 s), a swarm (h1 manager, h2 and h3 workers), one
overlay network ``conv`` (10.60.0.0/16) and on it:

- one *watcher* task per host (services ``watch-h1`` … ``watch-h3``, ``sleep``, pinned by
  constraint): the places where DNS and nftables are observed;
- N background services ``bg0`` … (VIP mode). At the 10-service scale they run 1 task each; the
  1,000-service scale adds 990 services with **0 replicas** (so 1,000 services: 10 with a task,
  990 without). 1,000 running containers would need ~333 per host: each is a shim process and a
  container on this 2-vCPU, 24 GiB box, which would take many minutes to start and leave the box
  loaded while measuring. What a change costs at scale lies in the tables every node keeps: the
  DNS table still holds 1,000 service names and the nftables table 1,000 VIPs (with their
  ``no-endpoint`` entries), and each push carries the whole network's records;
- the measured service ``probe`` (``sleep``, VIP mode), 1 replica.

Each round scales ``probe`` 1 → 2 (a task added) then 2 → 1 (a task removed), ``--rounds`` times
per scale. For each change and each host:

- ``t0``, added: the new task's ``Status.Timestamp`` when it is ``running`` (set by the worker that
  runs it, when the container started); removed: the ``UpdatedAt`` of the write that moved the task's
  ``DesiredState`` past ``running`` (first seen by polling the API every 10 ms);
- ``t1`` DNS: the first moment the host's watcher task's resolver (127.0.0.11:53 in its network
  namespace) answers ``tasks.probe`` with the new set of addresses. A helper process per watcher
  (this file, ``--watch``, run with ``nsenter --net=/proc/<pid>/ns/net``) queries it every 5 ms;
- ``t1`` nft: the first moment the chain ``service_chain(ServiceKey.whole(<probe's VIP>))`` of table
  ``ip shoal-vip`` in that namespace sends to exactly the new set of endpoint chains. The helper
  runs ``nft monitor`` there and lists the chain on each event (the event's arrival time is t1), so
  it costs nothing between changes.

All hosts are namespaces of one machine: one clock. Prints ``FIGURE`` lines (median, p99, max of
t1 - t0 in ms, per kind, per host and the worst host per change) and a markdown table with, as
the reference, figures *quoted* from ../shared/NETWORKING-FACTS.md and SWARM-FACTS.md (no dockerd
in the lab, so Swarm cannot run beside it here).

    python tests/bench/bench_overlay_convergence.py                    # 10 and 1,000 services, 10 rounds
    python tests/bench/bench_overlay_convergence.py --scales 10 --rounds 3

Runs as root; tears the lab down at the end, also on failure (``--keep-lab`` leaves it up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.lab import lab  # noqa: E402
from overlaynet.lb.rules import Endpoint, ServiceKey, endpoint_chain, service_chain  # noqa: E402
from shoal.base.util import parse_rfc3339  # noqa: E402
from shoal.cli.client import Client  # noqa: E402
from tests.bench.bench_dns import pct  # noqa: E402
from tests.bench.bench_overlay import form_swarm, service_vip  # noqa: E402
from tests.waiting import wait_until_sync  # noqa: E402

NETWORK, SUBNET = "conv", "10.60.0.0/16"
HOSTS = ("h1", "h2", "h3")
VIP_TABLE = "shoal-vip"
POLL = 0.005  # the watcher's DNS poll period (s)

# reference figures quoted (not measured here) from ../shared/NETWORKING-FACTS.md §5 and SWARM-FACTS.md §1.7
QUOTED = [
    ("kube-proxy (iptables), 5,000 nodes: endpoint change → rules programmed, median",
     "27 s; ~5 s with partial syncs and a 1 s minimum interval (KEP-3453)", "NETWORKING-FACTS.md §5"),
    ("Docker Swarm: service/task records spread by gossip (NetworkDB on memberlist)",
     "gossip interval 200 ms, push-pull 30 s (no end-to-end figure published)", "SWARM-FACTS.md §1.7"),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- the watcher (in a task's netns)
def _chain_eps(chain: str) -> list[str] | None:
    res = subprocess.run(["nft", "list", "chain", "ip", VIP_TABLE, chain], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        return None
    return sorted(set(re.findall(r"\bep-[a-z0-9]+", res.stdout)))


def watch(chain: str, name: str) -> None:
    """Print a JSON line ``{"k": "dns"|"nft", "t": <time.time()>, "v": [...]}`` whenever the answer
    to ``name`` from 127.0.0.11 or the endpoint chains of ``chain`` change (and once at start)."""
    import dns.message

    out_lock = threading.Lock()

    def emit(kind: str, t: float, v: list[str] | None) -> None:
        with out_lock:
            sys.stdout.write(json.dumps({"k": kind, "t": t, "v": v}) + "\n")
            sys.stdout.flush()

    def nft_loop() -> None:
        mon = subprocess.Popen(["nft", "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert mon.stdout is not None
        fd = mon.stdout.fileno()
        last = _chain_eps(chain)
        emit("nft", time.time(), last)
        while True:
            if not os.read(fd, 1 << 16):  # blocks until an event (a committed change) is printed
                return
            t = time.time()
            while select.select([fd], [], [], 0)[0]:  # the rest of the burst, unparsed
                if not os.read(fd, 1 << 16):
                    return
            now = _chain_eps(chain)
            if now != last:
                emit("nft", t, now)
                last = now

    threading.Thread(target=nft_loop, daemon=True).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.11", 53))
    sock.settimeout(1.0)
    q = dns.message.make_query(name, "A")
    last: list[str] | None = ["<none yet>"]
    while True:
        t = time.time()
        try:
            sock.send(q.to_wire())
            r = dns.message.from_wire(sock.recv(65535))
            v: list[str] | None = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
        except (OSError, dns.exception.DNSException):
            v = None
        if v != last:
            emit("dns", t, v)
            last = v
        time.sleep(POLL)


@dataclass
class Watcher:
    host: str
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def first(self, kind: str, value: list[str], since: float) -> float | None:
        """The time of the first ``kind`` event at or after ``since`` showing ``value``."""
        with self.lock:
            evs = [e for e in self.events if e["k"] == kind]
        # the state at ``since`` may already be the value (an event just before it)
        before = [e for e in evs if e["t"] < since]
        if before and before[-1]["v"] == value:
            return before[-1]["t"]
        return next((e["t"] for e in evs if e["t"] >= since and e["v"] == value), None)

    def current(self, kind: str) -> list[str] | None:
        with self.lock:
            evs = [e for e in self.events if e["k"] == kind]
        return evs[-1]["v"] if evs else None


# ------------------------------------------------------------------------------------ the lab
def _task_ip(t: dict[str, Any]) -> str | None:
    for att in t.get("NetworksAttachments") or []:
        if att["Network"]["Spec"]["Name"] == NETWORK and att.get("Addresses"):
            return str(att["Addresses"][0]).split("/")[0]
    return None


def _spec(name: str, replicas: int, args: list[str], constraint: str | None = None) -> dict[str, Any]:
    tt: dict[str, Any] = {"ContainerSpec": {"Image": lab.IMAGE, "Args": args}, "Networks": [{"Target": NETWORK}]}
    if constraint:
        tt["Placement"] = {"Constraints": [constraint]}
    return {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}}, "TaskTemplate": tt}


def _create_many(specs: list[dict[str, Any]]) -> None:
    sock = f"unix://{lab.socket_path('h1')}"

    def one(spec: dict[str, Any]) -> None:
        Client(sock, timeout=60).service_create(spec)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, specs))


def _running(c: Client, service: str, want: int) -> list[dict[str, Any]] | None:
    ts = [t for t in c.tasks({"service": [service], "desired-state": ["running"]})]
    ok = [t for t in ts if t["Status"]["State"] == "running" and _task_ip(t)]
    return ok if len(ok) == want == len(ts) else None


def _scale(c: Client, service: str, replicas: int) -> None:
    svc = c.service(service)
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = replicas
    c.service_update(svc["ID"], svc["Version"]["Index"], spec)


@dataclass
class Change:
    kind: str  # "add" | "remove"
    t0: float
    dns: dict[str, float]  # host -> t1 - t0 (s)
    nft: dict[str, float]


def measure(c: Client, watchers: list[Watcher], key: ServiceKey, rounds: int, timeout: float) -> list[Change]:
    def eps_of(ips: list[str]) -> list[str]:
        return sorted(endpoint_chain(key, Endpoint(ip, None)) for ip in ips)

    def wait_all(ips: list[str], since: float, what: str) -> tuple[dict[str, float], dict[str, float]]:
        ips = sorted(ips)
        eps = eps_of(ips)
        got: dict[str, dict[str, float]] = {"dns": {}, "nft": {}}

        def done() -> bool:
            for w in watchers:
                for kind, val in (("dns", ips), ("nft", eps)):
                    if w.host not in got[kind]:
                        t = w.first(kind, val, since)
                        if t is not None:
                            got[kind][w.host] = t
            return all(len(v) == len(watchers) for v in got.values())

        wait_until_sync(done, timeout, what, interval=0.02,
                        detail=lambda: "; ".join(f"{w.host}: dns {w.current('dns')} nft {w.current('nft')}"
                                                 for w in watchers) + f"; want {ips} / {eps}")
        return got["dns"], got["nft"]

    out: list[Change] = []
    (first,) = wait_until_sync(lambda: _running(c, "probe", 1), 60, "probe's task", retry=(Exception,))
    ips = [str(_task_ip(first))]
    wait_all(ips, 0.0, "every watcher to see probe's first task")
    for r in range(rounds):
        # add: 1 -> 2
        since = time.time()
        _scale(c, "probe", 2)
        two = wait_until_sync(lambda: _running(c, "probe", 2), 60, "probe's second task running", interval=0.01,
                              retry=(Exception,))
        new = next(t for t in two if _task_ip(t) not in ips)
        t0 = parse_rfc3339(new["Status"]["Timestamp"])
        ips2 = sorted(str(_task_ip(t)) for t in two)
        d, n = wait_all(ips2, since, f"round {r + 1}: every watcher to see 2 probe tasks")
        out.append(Change("add", t0, {h: t - t0 for h, t in d.items()}, {h: t - t0 for h, t in n.items()}))
        log(f"  round {r + 1} add:    dns {_fmt(out[-1].dns)}  nft {_fmt(out[-1].nft)}")

        # remove: 2 -> 1
        since = time.time()
        _scale(c, "probe", 1)

        def gone(ids: frozenset[str] = frozenset(x["ID"] for x in two)) -> tuple[dict[str, Any], float] | None:
            for t in c.tasks({"service": ["probe"]}):
                if t["ID"] in ids and t.get("DesiredState") not in ("ready", "running"):
                    return t, parse_rfc3339(t["UpdatedAt"])
            return None
        removed, t0 = wait_until_sync(gone, 30, "a probe task's desired state to pass running", interval=0.01,
                                      retry=(Exception,))
        ips = sorted(str(_task_ip(t)) for t in two if t["ID"] != removed["ID"])
        d, n = wait_all(ips, since, f"round {r + 1}: every watcher to see 1 probe task")
        out.append(Change("remove", t0, {h: t - t0 for h, t in d.items()}, {h: t - t0 for h, t in n.items()}))
        log(f"  round {r + 1} remove: dns {_fmt(out[-1].dns)}  nft {_fmt(out[-1].nft)}")
        # the removed task stops (sleep ignores SIGTERM as pid 1: the stop grace period); wait for
        # the service to be back at one running task before the next round
        wait_until_sync(lambda: _running(c, "probe", 1), 60, "probe back at 1 task", retry=(Exception,))
    return out


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{h}={1000 * v:.0f}ms" for h, v in sorted(d.items()))


def report(scale: int, changes: list[Change], rows: list[str]) -> None:
    for kind in ("dns", "nft"):
        for which in ("add", "remove", "all"):
            ch = [x for x in changes if which in ("all", x.kind)]
            for host in (*HOSTS, "worst"):
                xs = [1000 * (max(getattr(x, kind).values()) if host == "worst" else getattr(x, kind)[host])
                      for x in ch]
                print(f"FIGURE convergence_{kind}_{which}_{host}_ms services={scale} median={statistics.median(xs):.0f} "
                      f"p99={pct(xs, 0.99):.0f} max={max(xs):.0f} min={min(xs):.0f} n={len(xs)}", flush=True)
                if host == "worst" or which == "all":
                    rows.append(f"| {scale} | {kind.upper() if kind == 'dns' else 'nftables'} | {which} | {host} | "
                                f"{statistics.median(xs):.0f} | {pct(xs, 0.99):.0f} | {max(xs):.0f} | {len(xs)} |")


def bench(args: argparse.Namespace) -> None:
    state = lab.up(3, heartbeat_period=1.0, mtu=args.mtu or None)
    watchers: list[Watcher] = []
    rows: list[str] = []
    try:
        c = form_swarm(state, NETWORK, SUBNET)
        sleep = ["sleep", "100000"]
        _create_many([_spec(f"watch-{h}", 1, sleep, f"node.hostname=={h}") for h in HOSTS]
                     + [_spec("probe", 1, sleep)])
        vip = wait_until_sync(lambda: service_vip(c, "probe", NETWORK), 30, "probe's VIP", retry=(Exception,))
        key = ServiceKey.whole(vip)
        chain = service_chain(key)
        for h in HOSTS:
            (t,) = wait_until_sync(lambda h=h: _running(c, f"watch-{h}", 1), 120, f"watch-{h} running",
                                   retry=(Exception,))
            pid = t["Status"]["ContainerStatus"]["PID"]
            p = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-I",
                                  str(Path(__file__).resolve()), "--watch", chain, "tasks.probe"],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
            w = Watcher(h, p)
            threading.Thread(target=w.read, daemon=True).start()
            watchers.append(w)
        have = 0
        for scale in args.scales:
            replicas = 1 if scale <= 10 else 0
            t = time.monotonic()
            _create_many([_spec(f"bg{i}", replicas, sleep) for i in range(have, scale)])
            log(f"bench_overlay_convergence: {scale - have} background services created ({replicas} replicas each "
                f"for the new ones) in {time.monotonic() - t:.1f} s")
            if replicas:
                for i in range(have, scale):
                    wait_until_sync(lambda i=i: _running(c, f"bg{i}", 1), 120, f"bg{i} running", retry=(Exception,))
            have = scale
            # every node's tables hold the background services before measuring: the last one's
            # name resolves in every watcher
            last = f"bg{scale - 1}"
            for w in watchers:
                wait_until_sync(lambda w=w, last=last: _resolves(w, last), 120, f"{last} to resolve on {w.host}",
                                retry=(Exception,))
            log(f"bench_overlay_convergence: {scale} services on {NETWORK}; {args.rounds} rounds")
            changes = measure(c, watchers, key, args.rounds, args.timeout)
            report(scale, changes, rows)
    finally:
        for w in watchers:
            w.proc.kill()
            w.proc.wait(timeout=10)
        if not args.keep_lab:
            left = lab.down(quiet=True)
            if left:
                log(f"bench_overlay_convergence: the lab left: {left}")

    print("\nTask change → every node's DNS / nftables VIP rules (ms; t0: the task running, or its desired state "
          "past running; t1: first seen by the watcher task on that host). `worst`: per change, the slowest "
          "of the 3 hosts\n")
    print("| services on the network | what | change | host | median | p99 | max | n |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print("\nReference, quoted (not measured here: no dockerd in the lab)\n")
    print("| system | figure | source |")
    print("| --- | --- | --- |")
    for what, fig, src in QUOTED:
        print(f"| {what} | {fig} | {src} |")


def _resolves(w: Watcher, name: str) -> bool:
    """Whether ``name`` resolves from ``w``'s task (a one-off query in its namespace)."""
    pid = w.proc.pid  # nsenter's pid: its child runs in the task's namespace, so does nsenter itself
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c",
                          "import sys, dns.resolver; r = dns.resolver.Resolver(configure=False); "
                          "r.nameservers = ['127.0.0.11']; r.lifetime = 2; r.resolve(sys.argv[1], 'A')", name],
                         capture_output=True, text=True, timeout=30)
    return res.returncode == 0


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":  # run inside a task's namespace by bench()
        watch(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[10, 1000], help="services on the network (ascending)")
    ap.add_argument("--rounds", type=int, default=10, help="add + remove changes per scale")
    ap.add_argument("--timeout", type=float, default=30.0, help="give up on a change after this long (s)")
    ap.add_argument("--mtu", type=int, default=1400)
    ap.add_argument("--keep-lab", action="store_true")
    args = ap.parse_args()
    bench(args)


if __name__ == "__main__":
    main()
