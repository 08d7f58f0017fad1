"""Latency and throughput of the embedded DNS (overlaynet.dns) on loopback: figures, never pass/fail.

The resolver runs in a child process (its own event loop, uvloop as in ``shoald`` unless
``--no-uvloop``) on 127.0.0.1, serving a table of ``--services`` services (VIP mode) with 3 tasks
each on one network. The client (this process) sends ``--queries`` (10,000) A queries for a mix
of names (``<service>``, ``tasks.<service>``, ``<service>.<slot>.<task id>``, hostnames) over
UDP from a plain blocking socket, one at a time, then again with ``--window`` queries in flight.

    python tests/bench/bench_dns.py
    python tests/bench/bench_dns.py --queries 50000 --services 5000 --window 64

Prints ``FIGURE <name> <value> <unit>`` lines: ``answer_p50_us`` / ``answer_p99_us`` (the pure
decision, :func:`answer`, in process), ``handle_p50_us`` / ``handle_p99_us`` (parse + decide +
render, what the server does per UDP query), ``udp_rtt_p50_us`` / ``udp_rtt_p99_us`` (a round trip
through the server, client included), ``udp_qps_serial``, ``udp_qps_window``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dns.message  # noqa: E402

from overlaynet.dns.answers import answer  # noqa: E402
from overlaynet.dns.records import DnsTable, NetworkRecords, ServiceRecord, TaskRecord  # noqa: E402
from overlaynet.dns.server import Resolver  # noqa: E402

NET = "bench-net"


def build_table(services: int) -> DnsTable:
    svcs = []
    tasks = []
    for i in range(services):
        b, c = divmod(i, 250)
        svcs.append(ServiceRecord(f"svc{i}", f"10.{b // 250}.{b % 250}.{c + 1}", aliases=(f"alias{i}",)))
        for slot in (1, 2, 3):
            n = i * 3 + slot
            x, y = divmod(n, 250)
            tasks.append(TaskRecord(f"svc{i}", slot, f"{n:025d}", f"10.{100 + x // 250}.{x % 250}.{y + 1}",
                                    hostname=f"host{n}"))
    t = DnsTable()
    t.replace(NetworkRecords(NET, tuple(svcs), tuple(tasks)))
    return t


def names(services: int, count: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        i = rnd.randrange(services)
        slot = rnd.randint(1, 3)
        n = i * 3 + slot
        out.append(rnd.choice((f"svc{i}", f"tasks.svc{i}", f"svc{i}.{slot}.{n:025d}", f"host{n}", f"alias{i}")))
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def serve(services: int, use_uvloop: bool, port_box: mp.Queue[int]) -> None:  # the child process
    if use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass

    async def main() -> None:
        r = Resolver(build_table(services), resolv_conf=os.devnull)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        ep = await r.serve_socket(udp, tcp, {NET})
        port_box.put(ep.udp_address[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--window", type=int, default=32, help="queries in flight in the second phase")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()

    table = build_table(args.services)
    qs = [dns.message.make_query(n, "A") for n in names(args.services, args.queries)]
    wires = [q.to_wire() for q in qs]

    # the decision alone, and what the server does per UDP datagram
    lat: list[float] = []
    for q in qs:
        t0 = time.perf_counter_ns()
        answer(q, {NET}, table)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    print(f"FIGURE answer_p50_us {pct(lat, 0.5):.1f} us")
    print(f"FIGURE answer_p99_us {pct(lat, 0.99):.1f} us")
    r = Resolver(table, resolv_conf=os.devnull)
    lat = []
    for w in wires:
        t0 = time.perf_counter_ns()
        r._decide(w, (NET,), False)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    print(f"FIGURE handle_p50_us {pct(lat, 0.5):.1f} us")
    print(f"FIGURE handle_p99_us {pct(lat, 0.99):.1f} us")

    ctx = mp.get_context("spawn")
    box: mp.Queue[int] = ctx.Queue()
    child = ctx.Process(target=serve, args=(args.services, not args.no_uvloop, box), daemon=True)
    child.start()
    try:
        port = box.get(timeout=60)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(2)
        for w in wires[:200]:  # warm up
            sock.send(w)
            sock.recv(4096)
        lat = []
        t_start = time.perf_counter()
        for w in wires:
            t0 = time.perf_counter_ns()
            sock.send(w)
            reply = sock.recv(4096)
            lat.append((time.perf_counter_ns() - t0) / 1000)
            assert reply[:2] == w[:2]
        elapsed = time.perf_counter() - t_start
        print(f"FIGURE udp_rtt_p50_us {pct(lat, 0.5):.1f} us")
        print(f"FIGURE udp_rtt_p99_us {pct(lat, 0.99):.1f} us")
        print(f"FIGURE udp_rtt_mean_us {statistics.fmean(lat):.1f} us")
        print(f"FIGURE udp_qps_serial {len(wires) / elapsed:.0f} qps")

        sent = got = 0
        t_start = time.perf_counter()
        while got < len(wires):
            while sent < len(wires) and sent - got < args.window:
                sock.send(wires[sent])
                sent += 1
            sock.recv(4096)
            got += 1
        elapsed = time.perf_counter() - t_start
        print(f"FIGURE udp_qps_window{args.window} {len(wires) / elapsed:.0f} qps")
        sock.close()
    finally:
        child.terminate()
        child.join(5)


if __name__ == "__main__":
    main()
