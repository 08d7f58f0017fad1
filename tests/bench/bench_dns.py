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


def query_wires(qnames: list[str], rdtype: str = "A") -> list[bytes]:
    """The queries for ``qnames`` on the wire, with IDs 0, 1, 2, … (mod 65536): unique among any
    window of in-flight queries smaller than 65,536, so answers can be matched by ID."""
    out = []
    for i, n in enumerate(qnames):
        q = dns.message.make_query(n, rdtype)
        q.id = i & 0xFFFF
        out.append(q.to_wire())
    return out


def udp_serial(sock: socket.socket, wires: list[bytes]) -> tuple[list[float], float]:
    """Send each query on the connected UDP ``sock`` and wait for its answer before the next:
    the round trips in µs and the wall time in s."""
    lat: list[float] = []
    t_start = time.perf_counter()
    for w in wires:
        t0 = time.perf_counter_ns()
        sock.send(w)
        reply = sock.recv(4096)
        lat.append((time.perf_counter_ns() - t0) / 1000)
        if reply[:2] != w[:2]:
            raise RuntimeError("an answer to another query (ID mismatch)")
    return lat, time.perf_counter() - t_start


def udp_window(sock: socket.socket, wires: list[bytes], window: int) -> tuple[list[float], float]:
    """Keep ``window`` queries in flight on the connected UDP ``sock`` (IDs as :func:`query_wires`
    makes them): each answer's latency from its query's send in µs, and the wall time in s."""
    lat: list[float] = []
    sent_at: dict[bytes, int] = {}
    sent = got = 0
    t_start = time.perf_counter()
    while got < len(wires):
        while sent < len(wires) and sent - got < window:
            sent_at[wires[sent][:2]] = time.perf_counter_ns()
            sock.send(wires[sent])
            sent += 1
        reply = sock.recv(4096)
        t1 = time.perf_counter_ns()
        t0 = sent_at.pop(reply[:2], None)
        if t0 is None:
            raise RuntimeError("an answer to no query in flight")
        lat.append((t1 - t0) / 1000)
        got += 1
    return lat, time.perf_counter() - t_start


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
    wires = query_wires(names(args.services, args.queries))

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
        udp_serial(sock, wires[:200])  # warm up
        lat, elapsed = udp_serial(sock, wires)
        print(f"FIGURE udp_rtt_p50_us {pct(lat, 0.5):.1f} us")
        print(f"FIGURE udp_rtt_p99_us {pct(lat, 0.99):.1f} us")
        print(f"FIGURE udp_rtt_mean_us {statistics.fmean(lat):.1f} us")
        print(f"FIGURE udp_qps_serial {len(wires) / elapsed:.0f} qps")

        lat, elapsed = udp_window(sock, wires, args.window)
        print(f"FIGURE udp_qps_window{args.window} {len(wires) / elapsed:.0f} qps")
        print(f"FIGURE udp_rtt_window{args.window}_p50_us {pct(lat, 0.5):.1f} us")
        print(f"FIGURE udp_rtt_window{args.window}_p99_us {pct(lat, 0.99):.1f} us")
        sock.close()
    finally:
        child.terminate()
        child.join(5)


if __name__ == "__main__":
    main()
