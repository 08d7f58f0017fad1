"""The overlay's data path on the lab, beside the underlay it runs on: figures, never pass/fail.

Brings a 3-host lab up (``--mtu``, default 1400: this machine's eth0), forms a swarm (h1 manager,
h2 and h3 workers), creates the overlay network ``bench`` and two tasks of the busybox image on it:
``srv`` on h2 (``httpd -f -p 80 -h /www``), ``cli`` on h1 (``sleep``) and ``srv1`` on h1 (httpd, for
the same-host row: the overlay's veths and bridge without VXLAN). The image has no iperf3 or
sockperf, so the machine's binaries run *inside the tasks' network namespaces* (``nsenter
--net=/proc/<container pid>/ns/net``, the PID from the task's ``Status.ContainerStatus.PID``):
exactly the overlay path (task eth1 -> veth -> the network's bridge -> VXLAN -> h1's underlay ->
h2's -> VXLAN -> bridge -> veth -> task). The underlay rows run the same tools in the hosts'
namespaces (``/run/netns/shoal-h1`` -> 10.99.0.12), in the same run, alternating round by round.

    python tests/bench/bench_overlay.py                       # 3 rounds of 5 s per figure
    python tests/bench/bench_overlay.py --rounds 5 --seconds 10 --mtu 1500
    make bench                                                # installs iperf3 and sockperf first

What is measured (median over ``--rounds``; each round runs every path once):

- ``tcp_throughput``: ``iperf3 -c … -t S -J`` (one TCP stream), the receiver's bits per second
  (and the sender's retransmits); the server is ``iperf3 -s -1`` on the far side.
- ``tcp_latency``: ``sockperf ping-pong --tcp -m 64 -t S`` against ``sockperf server --tcp``, both
  pinned to one CPU (``--latency-cpu``; on a 2-vCPU VM unpinned round trips are bimodal, ~18 or
  ~55 µs, by whether a wake-up crosses CPUs); sockperf reports half the round trip, the table shows
  the round trip (×2): p50, p99, mean.
- ``connections_per_second``: a small asyncio client (this file, ``--cps-client``, run inside the
  client's namespace) opening ``--concurrency`` connections at a time for S seconds, each
  ``GET / HTTP/1.0`` read to EOF then closed; connections/s and connect+response p50/p99. Targets are
  the rows of ``CPS_TARGETS`` (one line each): srv's task IP, srv's VIP on the network (nftables DNAT
  in the cli task's namespace; ``Endpoint.VirtualIPs``), srv's published port ``MESH_PORT`` through
  the routing mesh on h3, a node without a task of srv (from h3's own namespace), and the underlay.
  The HTTP server closes each connection first (HTTP/1.0), so it holds a TIME_WAIT (60 s) per
  connection; after ~28,000 connections from one client address (the ephemeral port range) a new
  SYN meets one of them and waits for a retransmission (1 s). The VIP and direct rows share that
  pair (cli's address -> srv:80 after the DNAT), so they slowed each other down round by round (a
  first run: VIP 0.67x direct, both falling). By default the servers' namespaces (srv, h2) get
  ``net.ipv4.tcp_max_tw_buckets=0`` (no TIME_WAIT kept there; ``--server-timewait`` keeps it).
- ``dns``: ``--dns-queries`` (10,000) A queries for ``srv`` to the embedded resolver at
  127.0.0.11:53, from a UDP socket opened inside the cli task's namespace (this file,
  ``--dns-client``; the query loops are ``tests/bench/bench_dns.py``'s), one at a time, then
  ``--dns-window`` (32) in flight: p50/p99 latency and queries/s.

Prints ``FIGURE <name> <value> <unit>`` lines and a markdown table with overlay/underlay ratios.
Runs as root; tears the lab down at the end, also on failure (``--keep-lab`` leaves it up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.lab import lab  # noqa: E402
from shoal.cli.client import Client  # noqa: E402
from tests.bench.bench_dns import pct, query_wires, udp_serial, udp_window  # noqa: E402
from tests.waiting import wait_until_sync  # noqa: E402

NETWORK, SUBNET = "bench", "10.40.0.0/24"
IPERF_PORT, SOCKPERF_PORT, UNDERLAY_HTTP_PORT = 5201, 11111, 8080
MESH_PORT = 8081  # srv's published port (ingress mode): the routing mesh answers it on every node
TOOLS = {"iperf3": "iperf3", "sockperf": "sockperf"}  # binary -> Debian package


@dataclass
class Ctx:
    """What the measurements need to know of the lab: namespaces (paths ``nsenter --net`` takes) and
    addresses. ``ns`` maps a place to its namespace: ``h1``/``h2``/``h3`` (the hosts) and
    ``cli``/``srv`` (the tasks); ``ip`` maps the same places to their addresses (tasks: on the overlay)."""

    ns: dict[str, str] = field(default_factory=dict)
    ip: dict[str, str] = field(default_factory=dict)
    client: Client | None = None


@dataclass(frozen=True)
class Path2:
    """One way through the network: a client's place and a server's place (keys of Ctx.ns/ip);
    ``key`` names its FIGURE lines."""

    label: str
    key: str
    client: str
    server: str


# throughput and latency, one row each; every row is compared with REFERENCE (host to host)
REFERENCE = Path2("underlay: h1 -> h2 (host namespaces)", "underlay", "h1", "h2")
PATHS = [
    Path2("overlay: task on h1 -> task on h2", "overlay", "cli", "srv"),
    REFERENCE,
    # the overlay's bridge without VXLAN or underlay: what the veths and the bridge cost alone
    Path2("overlay, same host: task on h1 -> task on h1 (no VXLAN)", "overlay_same_host", "cli", "srv1"),
]

# connections per second: (label, where the client runs, the address:port it connects to).
CPS_TARGETS: list[tuple[str, str, Callable[[Ctx], tuple[str, int]]]] = [
    ("task IP direct (from the cli task, over the overlay)", "cli", lambda c: (c.ip["srv"], 80)),
    # the service's VIP on the network: nftables DNAT in the cli task's namespace, then the same path
    ("VIP of srv (from the cli task)", "cli", lambda c: (c.ip["srv-vip"], 80)),
    # h3 runs no task of srv: its host DNAT (output hook) -> its ingress sandbox -> LB -> ingress
    # VXLAN -> srv's task on h2
    ("routing mesh: published port on a node without the task (from h3's namespace)", "h3",
     lambda c: (c.ip["h3"], MESH_PORT)),
    ("underlay host h2 (busybox httpd in h2's namespace, from h1)", "h1", lambda c: (c.ip["h2"], UNDERLAY_HTTP_PORT)),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ns_cmd(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={ns}", "--", *argv]


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res


def _listening(ns: str, port: int) -> bool:
    res = subprocess.run(_ns_cmd(ns, "ss", "-Htln", f"sport = :{port}"), capture_output=True, text=True, timeout=10)
    return bool(res.stdout.strip())


@contextmanager
def _server(ns: str, argv: list[str], port: int, what: str) -> Iterator[None]:
    """Run ``argv`` in ``ns`` until the block ends; waits until it listens on ``port``; always stopped."""
    p = subprocess.Popen(_ns_cmd(ns, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        wait_until_sync(lambda: p.poll() is None and _listening(ns, port), 10, f"{what} to listen on {port}",
                        interval=0.05)
        yield
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


# ------------------------------------------------------------------------------ measurements
def iperf3(ctx: Ctx, path: Path2, seconds: float) -> dict[str, float]:
    """One TCP stream client -> server for ``seconds``: receiver's Gbit/s and sender's retransmits."""
    with _server(ctx.ns[path.server], ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-B", ctx.ip[path.server]],
                 IPERF_PORT, "iperf3 -s"):
        res = _run(_ns_cmd(ctx.ns[path.client], "iperf3", "-c", ctx.ip[path.server], "-p", str(IPERF_PORT),
                           "-t", f"{seconds:g}", "-J"), timeout=seconds + 30)
    end = json.loads(res.stdout)["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": float(end["sum_sent"].get("retransmits", 0))}


_PCT = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")
_AVG = re.compile(r"avg-(?:latency|lat)\s*=\s*([\d.]+)")


def sockperf(ctx: Ctx, path: Path2, seconds: float, cpu: int | None) -> dict[str, float]:
    """TCP ping-pong of 64-byte messages for ``seconds``: round-trip p50, p99 and mean in µs
    (sockperf prints half round trips; doubled here). ``cpu``: both ends pinned to that CPU (taskset)."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    with _server(ctx.ns[path.server], [*pin, "sockperf", "server", "--tcp", "-i", ctx.ip[path.server],
                                       "-p", str(SOCKPERF_PORT)], SOCKPERF_PORT, "sockperf server"):
        res = _run(_ns_cmd(ctx.ns[path.client], *pin, "sockperf", "ping-pong", "--tcp", "-i", ctx.ip[path.server],
                           "-p", str(SOCKPERF_PORT), "-m", "64", "-t", f"{seconds:g}"), timeout=seconds + 30)
    text = res.stdout + res.stderr
    pct = {float(k): float(v) for k, v in _PCT.findall(text)}
    avg = _AVG.search(text)
    if 50.0 not in pct or 99.0 not in pct or avg is None:
        raise RuntimeError(f"unexpected sockperf output:\n{text[-1500:]}")
    return {"rtt_p50_us": 2 * pct[50.0], "rtt_p99_us": 2 * pct[99.0], "rtt_mean_us": 2 * float(avg.group(1))}


def cps(ctx: Ctx, client_place: str, addr: tuple[str, int], seconds: float, concurrency: int) -> dict[str, float]:
    """Connections per second from ``client_place`` to ``addr`` (this file's ``--cps-client``)."""
    res = _run(_ns_cmd(ctx.ns[client_place], sys.executable, "-I", str(Path(__file__).resolve()), "--cps-client",
                       addr[0], str(addr[1]), f"{seconds:g}", str(concurrency)), timeout=seconds + 60)
    return {k: float(v) for k, v in json.loads(res.stdout).items()}


async def _cps_client(host: str, port: int, seconds: float, concurrency: int) -> dict[str, float]:
    request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    done, errors, lat = 0, 0, []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                writer.write(request)
                await writer.drain()
                body = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closes (HTTP/1.0)
                writer.close()
                if not body.startswith(b"HTTP/1."):
                    raise OSError("not an HTTP answer")
                lat.append(time.perf_counter() - t0)
                done += 1
            except (TimeoutError, OSError):
                errors += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - t0
    lat.sort()

    def q(f: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
    return {"cps": done / wall, "errors": float(errors), "p50_ms": q(0.5), "p99_ms": q(0.99), "n": float(done)}


def dns(ctx: Ctx, place: str, name: str, queries: int, window: int) -> dict[str, Any]:
    """``queries`` A queries for ``name`` to the embedded resolver (127.0.0.11:53) from task
    ``place``'s namespace (this file's ``--dns-client``): one at a time, then ``window`` in flight."""
    res = _run(_ns_cmd(ctx.ns[place], sys.executable, "-I", str(Path(__file__).resolve()), "--dns-client",
                       name, str(queries), str(window)), timeout=300)
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def _dns_client(name: str, queries: int, window: int) -> dict[str, Any]:
    import dns.message  # the bench's venv has dnspython (a test dependency)

    wires = query_wires([name] * queries)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.11", 53))
    sock.settimeout(5)
    sock.send(wires[0])
    first = dns.message.from_wire(sock.recv(4096))
    answer = sorted(rd.to_text() for rrset in first.answer for rd in rrset)
    udp_serial(sock, wires[:200])  # warm up
    lat, elapsed = udp_serial(sock, wires)
    wlat, welapsed = udp_window(sock, wires, window)
    sock.close()
    return {"answer": answer, "serial_p50_us": pct(lat, 0.5), "serial_p99_us": pct(lat, 0.99),
            "serial_qps": len(wires) / elapsed, "window_p50_us": pct(wlat, 0.5), "window_p99_us": pct(wlat, 0.99),
            "window_qps": len(wires) / welapsed}


# ------------------------------------------------------------------------------------ the lab
def _running_task(c: Client, service: str) -> dict[str, Any] | None:
    for t in c.tasks({"service": [service], "desired-state": ["running"]}):
        pid = (t["Status"].get("ContainerStatus") or {}).get("PID")
        addrs = [a for att in t.get("NetworksAttachments") or [] if att["Network"]["Spec"]["Name"] == NETWORK
                 for a in att.get("Addresses") or []]
        if t["Status"]["State"] == "running" and pid and addrs:
            return {"pid": int(pid), "ip": addrs[0].split("/")[0], "node": t["NodeID"]}
    return None


def form_swarm(state: lab.LabState, network: str, subnet: str) -> Client:
    """swarm init on h1, every other lab host joins as a worker, wait until all are ready, then
    the overlay ``network`` on ``subnet``; returns h1's client. Shared with bench_overlay_convergence."""
    c = Client(f"unix://{lab.socket_path('h1')}")
    h1 = state.host("h1")
    c.swarm_init(advertise_addr=h1.ip)
    token = c.swarm_inspect()["JoinTokens"]["Worker"]
    for h in state.hosts[1:]:
        Client(f"unix://{lab.socket_path(h.name)}").swarm_join(token, f"{h1.ip}:2377")
    n = len(state.hosts)
    wait_until_sync(lambda: sum(x["Status"]["State"] == "ready" for x in c.nodes()) == n, 60, f"{n} ready nodes",
                    retry=(Exception,))
    c.network_create({"Name": network, "Driver": "overlay", "IPAM": {"Config": [{"Subnet": subnet}]}})
    return c


def setup(mtu: int | None) -> Ctx:
    state = lab.up(3, heartbeat_period=1.0, mtu=mtu)
    c = form_swarm(state, NETWORK, SUBNET)
    httpd = ["httpd", "-f", "-p", "80", "-h", "/www"]
    for name, host, args in (("srv", "h2", httpd), ("srv1", "h1", httpd), ("cli", "h1", ["sleep", "100000"])):
        spec: dict[str, Any] = {"Name": name, "Mode": {"Replicated": {"Replicas": 1}}, "TaskTemplate": {
            "ContainerSpec": {"Image": lab.IMAGE, "Args": args}, "Networks": [{"Target": NETWORK}],
            "Placement": {"Constraints": [f"node.hostname=={host}"]}}}
        if name == "srv":  # published through the routing mesh (ingress mode)
            spec["EndpointSpec"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": MESH_PORT}]}
        c.service_create(spec)
    ctx = Ctx(client=c)
    for name in ("srv", "srv1", "cli"):
        t = wait_until_sync(lambda name=name: _running_task(c, name), 120, f"the {name} task running",
                            retry=(Exception,))
        ctx.ns[name], ctx.ip[name] = f"/proc/{t['pid']}/ns/net", t["ip"]
    for h in state.hosts:
        ctx.ns[h.name], ctx.ip[h.name] = str(lab.NETNS_DIR / h.netns), h.ip
    ctx.ip["srv-vip"] = wait_until_sync(lambda: service_vip(c, "srv"), 30, "srv's VIP on the network", retry=(Exception,))
    return ctx


def service_vip(c: Client, service: str, network: str = NETWORK) -> str | None:
    """``service``'s virtual IP on ``network`` (its ``Endpoint.VirtualIPs``), None until allocated."""
    net_id = next(n["Id"] for n in c.networks() if n["Name"] == network)
    for v in c.service(service).get("Endpoint", {}).get("VirtualIPs") or []:
        if v.get("NetworkID") == net_id and v.get("Addr"):
            return str(v["Addr"]).split("/")[0]
    return None


# --------------------------------------------------------------------------------------- main
def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def bench(args: argparse.Namespace) -> None:
    missing = [pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None]
    if missing:
        sys.exit(f"bench_overlay: missing {' '.join(missing)}: apt-get install {' '.join(missing)} "
                 "(`make bench` installs them)")
    log(f"bench_overlay: lab up (3 hosts, underlay MTU {args.mtu or 'default'})")
    ctx = setup(args.mtu)
    if not args.server_timewait:
        for place in ("srv", "h2"):  # the HTTP servers of the connections/s rows
            _run(_ns_cmd(ctx.ns[place], "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"))
    www = Path(tempfile.mkdtemp(prefix="shoal-bench-www-"))
    (www / "index.html").write_text("<html><body>underlay</body></html>\n")
    httpd = subprocess.Popen(_ns_cmd(ctx.ns["h2"], "busybox", "httpd", "-f", "-p", str(UNDERLAY_HTTP_PORT),
                                     "-h", str(www)), start_new_session=True)
    try:
        wait_until_sync(lambda: _listening(ctx.ns["h2"], UNDERLAY_HTTP_PORT), 10, "busybox httpd on h2")
        for label, where, target in CPS_TARGETS:  # every target answers before anything is measured
            wait_until_sync(lambda where=where, target=target: (lambda r: r["n"] > 0 and not r["errors"])(
                cps(ctx, where, target(ctx), 0.3, 1)), 60, f"{label} to answer", retry=(Exception,))
        mtus = {p: json.loads(_run(_ns_cmd(ctx.ns[p], "ip", "-j", "link", "show", dev))
                              .stdout)[0]["mtu"] for p, dev in (("cli", "eth1"), ("h1", "eth0"))}
        log(f"bench_overlay: MTU task eth1 {mtus['cli']}, host eth0 {mtus['h1']}; "
            f"{args.rounds} rounds of {args.seconds:g} s per figure")
        thr: dict[str, list[dict[str, float]]] = {p.label: [] for p in PATHS}
        lat: dict[str, list[dict[str, float]]] = {p.label: [] for p in PATHS}
        con: dict[str, list[dict[str, float]]] = {t[0]: [] for t in CPS_TARGETS}
        res: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = PATHS if r % 2 == 0 else list(reversed(PATHS))  # alternate who goes first
            for p in order:
                thr[p.label].append(iperf3(ctx, p, args.seconds))
                log(f"  round {r + 1} iperf3   {p.label}: {thr[p.label][-1]['gbps']:.2f} Gbit/s")
            for p in order:
                lat[p.label].append(sockperf(ctx, p, args.seconds, args.latency_cpu))
                log(f"  round {r + 1} sockperf {p.label}: p50 {lat[p.label][-1]['rtt_p50_us']:.1f} µs RTT")
            for label, where, target in CPS_TARGETS:
                con[label].append(cps(ctx, where, target(ctx), args.seconds, args.concurrency))
                log(f"  round {r + 1} conns/s  {label}: {con[label][-1]['cps']:.0f}")
            res.append(dns(ctx, "cli", "srv", args.dns_queries, args.dns_window))
            log(f"  round {r + 1} dns      srv -> {res[-1]['answer']}: p50 {res[-1]['serial_p50_us']:.0f} µs, "
                f"{res[-1]['serial_qps']:.0f}/s; window {args.dns_window}: {res[-1]['window_qps']:.0f}/s")
    finally:
        httpd.kill()
        httpd.wait(timeout=10)
        shutil.rmtree(www, ignore_errors=True)
        if not args.keep_lab:
            left = lab.down(quiet=True)
            if left:
                log(f"bench_overlay: the lab left: {left}")

    ref = REFERENCE.label
    for p in PATHS:
        print(f"FIGURE tcp_throughput_{p.key}_gbps median={_median(thr[p.label], 'gbps'):.2f} "
              f"all={[round(x['gbps'], 2) for x in thr[p.label]]}", flush=True)
        for k in ("rtt_p50_us", "rtt_p99_us", "rtt_mean_us"):
            print(f"FIGURE tcp_{k}_{p.key} median={_median(lat[p.label], k):.1f} "
                  f"all={[round(x[k], 1) for x in lat[p.label]]}", flush=True)
    for label, _, _ in CPS_TARGETS:
        print(f"FIGURE cps [{label}] median={_median(con[label], 'cps'):.0f} "
              f"all={[round(x['cps']) for x in con[label]]} errors={sum(x['errors'] for x in con[label]):.0f}",
              flush=True)

    def cell(rows: list[dict[str, float]], k: str, fmt: str) -> str:
        v = [x[k] for x in rows]
        return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}–{max(v):{fmt}})"

    pinned = f"both ends on CPU {args.latency_cpu}" if args.latency_cpu is not None else "unpinned"
    print(f"\nUnderlay MTU {args.mtu or 'default'} (task eth1 {mtus['cli']}), {args.rounds} rounds × "
          f"{args.seconds:g} s, median (min–max); iperf3 unpinned, sockperf {pinned}. Ratios: the underlay's "
          "figure = 1; higher is better for both (throughput: this / underlay; round trip: underlay / this)\n")
    print("| path | TCP Gbit/s, 1 stream | ratio | retransmits | RTT p50 (µs) | ratio | RTT p99 (µs) | ratio "
          "| RTT mean (µs) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in PATHS:
        t, lt = thr[p.label], lat[p.label]
        print(f"| {p.label} | {cell(t, 'gbps', '.2f')} | {_ratio(_median(t, 'gbps'), _median(thr[ref], 'gbps'))} "
              f"| {_median(t, 'retransmits'):.0f} | {cell(lt, 'rtt_p50_us', '.1f')} "
              f"| {_ratio(_median(lat[ref], 'rtt_p50_us'), _median(lt, 'rtt_p50_us'))} "
              f"| {cell(lt, 'rtt_p99_us', '.1f')} | {_ratio(_median(lat[ref], 'rtt_p99_us'), _median(lt, 'rtt_p99_us'))} "
              f"| {cell(lt, 'rtt_mean_us', '.1f')} |")
    print(f"\nConnections per second ({args.concurrency} at a time, GET / HTTP/1.0 to EOF, {args.seconds:g} s per round)\n")
    print("| target | connections/s | p50 (ms) | p99 (ms) | errors |")
    print("| --- | --- | --- | --- | --- |")
    for label, _, _ in CPS_TARGETS:
        rows = con[label]
        print(f"| {label} | {cell(rows, 'cps', '.0f')} | {_median(rows, 'p50_ms'):.2f} | {_median(rows, 'p99_ms'):.2f} "
              f"| {sum(x['errors'] for x in rows):.0f} |")
    for k in ("serial_p50_us", "serial_p99_us", "serial_qps", "window_p50_us", "window_p99_us", "window_qps"):
        print(f"FIGURE dns_in_task_{k} median={_median(res, k):.0f} all={[round(x[k]) for x in res]}", flush=True)
    print(f"\nEmbedded resolver in the lab: {args.dns_queries} A queries for `srv` (answer {res[0]['answer']}, its VIP) "
          "to 127.0.0.11:53 from inside the cli task's namespace, UDP, per round\n")
    print("| mode | p50 (µs) | p99 (µs) | queries/s |")
    print("| --- | --- | --- | --- |")
    for mode, k in (("one at a time", "serial"), (f"{args.dns_window} in flight", "window")):
        print(f"| {mode} | {cell(res, k + '_p50_us', '.0f')} | {cell(res, k + '_p99_us', '.0f')} "
              f"| {cell(res, k + '_qps', '.0f')} |")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--cps-client":  # run inside a namespace by cps()
        host, port, seconds, conc = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(asyncio.run(_cps_client(host, port, seconds, conc))))
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--dns-client":  # run inside a task's namespace by dns()
        print(json.dumps(_dns_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtu", type=int, default=1400, help="underlay MTU of the lab (0: the kernel's default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    ap.add_argument("--latency-cpu", type=int, default=(os.cpu_count() or 1) - 1, metavar="N",
                    help="pin both sockperf ends to CPU N (default: the last CPU; -1: no pinning). Unpinned, "
                         "a 2-vCPU VM's cross-CPU wake-ups make round trips bimodal (~18 or ~55 µs)")
    ap.add_argument("--concurrency", type=int, default=8, help="connections at a time (connections/s)")
    ap.add_argument("--dns-queries", type=int, default=10_000, help="A queries per round to the embedded resolver")
    ap.add_argument("--dns-window", type=int, default=32, help="queries in flight in the resolver's second phase")
    ap.add_argument("--server-timewait", action="store_true",
                    help="keep the kernel's TIME_WAIT on the HTTP servers of the connections/s rows (see the "
                         "docstring: the rows to srv then slow down as the client's ports come round again)")
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    args = ap.parse_args()
    args.mtu = args.mtu or None
    args.latency_cpu = None if args.latency_cpu < 0 else args.latency_cpu
    socket.setdefaulttimeout(30)
    bench(args)


if __name__ == "__main__":
    main()
