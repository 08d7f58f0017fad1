"""The etcd half of ``tests/bench/bench_raft.py --etcd``: a 3-member etcd on 127.0.0.1, same workload.

Runs in its own virtualenv (PyPI ``etcd3`` + ``aiohttp``; see :func:`ensure_env`), never in the
project's: ``etcd3`` is only a benchmark client, and no test depends on etcd. The workload is the
one of our side (and of ``/work/shared/anchors/03_etcd.py``): 256-byte values,

- sequential: one client, ``--seq`` puts to the leader after 50 warm-up puts, latency p50/p99,
  twice: native gRPC (``etcd3``; pure-Python protobuf, as the anchor) and the HTTP/JSON gateway
  ``/v3/kv/put`` over one aiohttp keep-alive connection (asyncio, the style of our client);
- concurrent: ``--conc`` asyncio writers over the gateway (one keep-alive connection each),
  ``--total`` puts in all, commits per second;
- failover: SIGKILL the leader, then a put through each survivor in turn (0.2 s timeout, retried
  every 10 ms) until one succeeds; the killed member is restarted (``--initial-cluster-state
  existing``) and the cluster waits for it before the next round.

Members: ``etcd`` from Debian's ``etcd-server`` (3.4), default heartbeat 100 ms and election
timeout 1000 ms, fresh data dirs under one temp dir, free ports. Every member is killed and the
temp dir removed at the end, also on failure or SIGTERM. Prints ``FIGURE etcd3_<name> <value>
<unit>`` lines (the names of our side with ``raft3`` → ``etcd3``).

    python tests/bench/bench_raft_etcd.py [--seq 2000] [--conc 32] [--total 12000] [--failovers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HOST = "127.0.0.1"
VALUE = b"x" * 256
B64V = base64.b64encode(VALUE).decode()


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pct(xs: list[float], p: float) -> float:
    """The ``p``-th percentile of ``xs`` (nearest rank, as our side computes it)."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class EtcdCluster:
    """Three etcd processes on 127.0.0.1 in a fresh temp dir; :meth:`stop_all` removes everything."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-etcd.")
        ports = free_ports(6)
        self.members = [(f"e{i}", ports[2 * i], ports[2 * i + 1]) for i in range(3)]
        self.cluster = ",".join(f"{n}=http://{HOST}:{pp}" for n, _, pp in self.members)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int, state: str = "new") -> None:
        name, cp, pp = self.members[i]
        with open(os.path.join(self.dir, f"{name}.log"), "ab") as logf:
            self.procs[i] = subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", os.path.join(self.dir, name),
                 "--listen-client-urls", f"http://{HOST}:{cp}", "--advertise-client-urls", f"http://{HOST}:{cp}",
                 "--listen-peer-urls", f"http://{HOST}:{pp}", "--initial-advertise-peer-urls", f"http://{HOST}:{pp}",
                 "--initial-cluster", self.cluster, "--initial-cluster-state", state,
                 "--initial-cluster-token", "bench-raft-etcd"],
                stdout=logf, stderr=logf)

    def kill(self, i: int) -> None:
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for i in list(self.procs):
            p = self.procs.pop(i)
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, i: int) -> str:
        return f"http://{HOST}:{self.members[i][1]}"

    def leader(self, timeout: float = 20.0) -> int:
        """Index of the member all running members agree is the leader (``etcdctl endpoint
        status``). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            eps = ",".join(self.url(i) for i in self.procs)
            r = subprocess.run(["etcdctl", "--endpoints", eps, "--command-timeout=2s", "endpoint", "status",
                                "-w", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                st = json.loads(r.stdout) if r.stdout.strip() else []
            except ValueError:
                st = []
            if len(st) == len(self.procs):
                leaders = {s["Status"]["leader"] for s in st}
                if len(leaders) == 1 and 0 not in leaders:
                    lid = leaders.pop()
                    for s in st:
                        if s["Status"]["header"]["member_id"] == lid:
                            port = int(s["Endpoint"].rsplit(":", 1)[1])
                            return [cp for _, cp, _ in self.members].index(port)
            time.sleep(0.1)
        raise TimeoutError(f"etcd elected no leader within {timeout:g} s; logs in {self.dir}")


def body(key: str) -> str:
    return json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": B64V})


async def seq_gateway(url: str, n: int, prefix: str) -> list[float]:
    import aiohttp

    lat = []
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for k in range(n):
            t0 = time.perf_counter()
            async with s.post(url + "/v3/kv/put", data=body(f"{prefix}/{k}")) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"etcd gateway put: HTTP {r.status}")
            lat.append(time.perf_counter() - t0)
    return lat


def seq_grpc(port: int, n: int, prefix: str) -> list[float]:
    import etcd3

    c = etcd3.client(host=HOST, port=port)
    lat = []
    try:
        for k in range(n):
            t0 = time.perf_counter()
            c.put(f"{prefix}/{k}", VALUE)
            lat.append(time.perf_counter() - t0)
    finally:
        c.close()
    return lat


async def concurrent_gateway(url: str, clients: int, total: int) -> float:
    import aiohttp

    per = total // clients
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def put(key: str) -> None:
            async with s.post(url + "/v3/kv/put", data=body(key)) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"etcd gateway put: HTTP {r.status}")

        async def writer(w: int) -> None:
            for k in range(per):
                await put(f"conc/{w}/{k}")

        await asyncio.gather(*(put(f"warm/{w}") for w in range(clients)))  # open the connections
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(clients)))
        return per * clients / (time.perf_counter() - t0)


async def failover_put(urls: list[str], t_kill: float, deadline: float = 30.0) -> float:
    import aiohttp

    to = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=to) as s:
        while time.perf_counter() - t_kill < deadline:
            for u in urls:
                try:
                    async with s.post(u + "/v3/kv/put", data=body("failover/probe")) as r:
                        txt = await r.read()
                        if r.status == 200 and b"error" not in txt:
                            return time.perf_counter() - t_kill
                except (TimeoutError, aiohttp.ClientError):
                    pass
            await asyncio.sleep(0.01)
    raise TimeoutError(f"no successful etcd put within {deadline:g} s of killing the leader")


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    cl = EtcdCluster()
    try:
        for i in range(3):
            cl.start(i)
        lead = cl.leader()
        _, lport, _ = cl.members[lead]
        seq_grpc(lport, 50, "warm")
        lat = seq_grpc(lport, args.seq, "seqgrpc")
        print(f"FIGURE etcd3_seq_put_256B_p50_ms {pct(lat, 50) * 1e3:.2f} ms (gRPC etcd3)", flush=True)
        print(f"FIGURE etcd3_seq_put_256B_p99_ms {pct(lat, 99) * 1e3:.2f} ms (gRPC etcd3)", flush=True)
        asyncio.run(seq_gateway(cl.url(lead), 50, "warmgw"))
        lat = asyncio.run(seq_gateway(cl.url(lead), args.seq, "seqgw"))
        print(f"FIGURE etcd3_seq_put_256B_gateway_p50_ms {pct(lat, 50) * 1e3:.2f} ms (HTTP gateway, aiohttp)",
              flush=True)
        print(f"FIGURE etcd3_seq_put_256B_gateway_p99_ms {pct(lat, 99) * 1e3:.2f} ms (HTTP gateway, aiohttp)",
              flush=True)
        tput = asyncio.run(concurrent_gateway(cl.url(lead), args.conc, args.total))
        print(f"FIGURE etcd3_conc{args.conc}_puts_per_s {tput:.0f} puts/s (HTTP gateway, aiohttp)", flush=True)
        fo = []
        for _ in range(args.failovers):
            lead = cl.leader()
            survivors = [cl.url(i) for i in range(3) if i != lead]
            time.sleep(1.0)  # steady heartbeats before the kill
            t0 = time.perf_counter()
            cl.kill(lead)
            fo.append(asyncio.run(failover_put(survivors, t0)))
            cl.start(lead, state="existing")
            cl.leader()
        if fo:
            print(f"FIGURE etcd3_failover_s median={statistics.median(fo):.2f} min={min(fo):.2f} "
                  f"max={max(fo):.2f} (n={len(fo)})", flush=True)
    finally:
        cl.stop_all()


def main() -> None:
    """Parse the arguments and run the etcd side (exit 143 on SIGTERM, after cleaning up)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--total", type=int, default=12000)
    ap.add_argument("--failovers", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        sys.exit("etcd/etcdctl not on PATH: apt-get install -y etcd-server etcd-client")

    def on_term(*_: Any) -> None:
        sys.exit(143)  # unwinds through run()'s finally: the members are killed, the dir removed

    signal.signal(signal.SIGTERM, on_term)
    run(args)


if __name__ == "__main__":
    main()
