"""Benchmark of our 3-node Raft (raft.replicated.ReplicatedLog) on loopback, 3 processes.

Prints ``FIGURE <name> <value> <unit>`` lines; never passes or fails on time.

    .venv/bin/python tests/bench/bench_raft.py [--seq 2000] [--conc 32] [--total 12000] [--failovers 3]
        [--timeout-failovers 3] [--etcd [--rounds 1]] [--keep-logs DIR]

Each member is its own process (``--node``; uvloop when available) with its WAL in a fresh temp
dir and a small client port speaking shoal.rpc.wire frames: request ``{"t": "put", "id": n, "v": bytes}``,
reply ``{"id": n, "ok": bool, "i": index | "err": message}``. The driving process (this one) is
the client, as etcd's anchor drives etcd with a Python client. Workload (the one of
``/work/shared/anchors/03_etcd.py``): one client writing 256-byte values sequentially to the
leader (latency p50/p99), 32 concurrent writers (commits/s), and leader failover (SIGKILL the
leader → first successful write through a survivor; the killed member is restarted after).
Default Raft timing: tick 100 ms, heartbeat 1 tick, election 10–20 ticks. Failover is measured
twice: with the defaults (a follower that sees the dead leader's connection closed campaigns
early, ``DriverConfig.leader_loss_campaign``), then ``--timeout-failovers`` more times with that
off (members restarted with ``--no-early-campaign``): only the election timeout, the case of
failures that close no connection. The leader's "entries per WAL write+fsync" line shows the
group commit at work. Kills only the processes it started and removes its temp dir (``--keep-logs``
copies the members' logs out first).

``--etcd`` then runs etcd (3 members on 127.0.0.1, the same workload; see
``tests/bench/bench_raft_etcd.py``) in the same invocation and prints both sides' FIGURE lines and
a table; ``--rounds N`` alternates the two sides N times (the box is shared and noisy) and the
table gives medians over the rounds. It installs what is missing: Debian's ``etcd-server etcd-client`` with apt-get, and a
virtualenv (``--etcd-venv``, default ``/tmp/bench-raft-etcd-venv``) with PyPI ``etcd3`` and
``aiohttp``; ``etcd3`` runs on the pure-Python protobuf (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION
=python``, as the anchor does), since its generated code predates protobuf 4.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from raft.driver import DriverConfig  # noqa: E402
from raft.log import LogUnavailable  # noqa: E402
from raft.replicated import ReplicatedLog  # noqa: E402
from shoal.rpc.wire import WireError, encode_frame, read_frame  # noqa: E402
from tests.ports import free_ports  # noqa: E402

VALUE = b"x" * 256


# ----------------------------------------------------------------------------- member process

async def serve_node(nid: int, peers: dict[int, str], client_port: int, data: str,
                     early_campaign: bool = True) -> None:
    rlog = ReplicatedLog(nid, peers, data, config=DriverConfig(leader_loss_campaign=early_campaign),
                         propose_timeout=3.0)
    count = 0

    def apply(_e: Any) -> None:
        nonlocal count
        count += 1

    rlog.set_apply(apply)
    await rlog.start()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Writes go through ReplicatedLog.submit, as the manager's store does; replies made during
        # one event-loop turn leave in one write (as a gRPC server's framer batches them).
        out: list[bytes] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
            if out:
                writer.write(b"".join(out))
                out.clear()

        def reply(body: dict[str, Any]) -> None:
            if not out:
                loop.call_soon(flush)
            out.append(encode_frame(body))

        def done(rid: int, index: int, fut: asyncio.Future[None]) -> None:
            if fut.cancelled():
                reply({"id": rid, "ok": False, "err": "cancelled"})
            elif (e := fut.exception()) is not None:
                reply({"id": rid, "ok": False, "err": str(e), "leader": rlog.leader_id})
            else:
                reply({"id": rid, "ok": True, "i": index})

        try:
            while True:
                f = await read_frame(reader)
                if f.get("t") == "stats":
                    d = rlog.driver
                    reply({"id": f["id"], "ok": True, "fsyncs": d.fsyncs, "applied": d.applied,
                           "dropped": d.transport.dropped()})
                    continue
                if f.get("t") == "leader?":
                    reply({"id": f["id"], "ok": True, "leader": rlog.leader_id, "is_leader": rlog.is_leader})
                    continue
                try:
                    index, fut = rlog.submit(f["v"])
                except LogUnavailable as e:
                    reply({"id": f["id"], "ok": False, "err": str(e), "leader": rlog.leader_id})
                    continue
                fut.add_done_callback(functools.partial(done, f["id"], index))
        except (WireError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", client_port)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    await rlog.close()


# ----------------------------------------------------------------------------- client side

class Conn:
    """One pipelined client connection to a member's client port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.task = asyncio.create_task(self._read())

    @staticmethod
    async def open(port: int) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return Conn(r, w)

    async def _read(self) -> None:
        try:
            while True:
                f = await read_frame(self.reader)
                fut = self.pending.pop(f["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
        except (WireError, ConnectionError):
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("member connection closed"))

    async def call(self, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        rid = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.writer.write(encode_frame({**body, "id": rid}))
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class Bench:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-raft.")
        ports = free_ports(6)
        self.peers = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(3)}
        self.cports = {i + 1: ports[3 + i] for i in range(3)}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.keep_logs = ""
        self.early_campaign = True

    def start(self, nid: int) -> None:
        peers = ",".join(f"{i}={a}" for i, a in self.peers.items())
        extra = [] if self.early_campaign else ["--no-early-campaign"]
        p = subprocess.Popen([sys.executable, __file__, "--node", str(nid), "--peers", peers,
                              "--client-port", str(self.cports[nid]), "--data", f"{self.dir}/n{nid}",
                              *extra],
                             stdout=subprocess.PIPE, stderr=open(f"{self.dir}/n{nid}.log", "ab"))
        assert p.stdout is not None
        line = p.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"node {nid} did not start; see {self.dir}/n{nid}.log")
        self.procs[nid] = p

    def stop(self, nid: int) -> None:
        p = self.procs.pop(nid)
        p.terminate()
        p.wait(10)

    def kill(self, nid: int) -> None:
        p = self.procs.pop(nid)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for nid in list(self.procs):
            p = self.procs.pop(nid)
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.keep_logs:
            os.makedirs(self.keep_logs, exist_ok=True)
            for f in Path(self.dir).glob("n*.log"):
                shutil.copy(f, self.keep_logs)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def leader(self, timeout: float = 10.0, exclude: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for nid in self.procs:
                if nid == exclude:
                    continue
                try:
                    c = await Conn.open(self.cports[nid])
                    r = await c.call({"t": "leader?"}, 1.0)
                    await c.close()
                    if r.get("is_leader"):
                        return nid
                except (OSError, TimeoutError, ConnectionError):
                    pass
            await asyncio.sleep(0.05)
        raise RuntimeError("no leader elected")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(args: argparse.Namespace) -> dict[str, str]:
    """Our side; returns ``{figure name: "value unit"}`` as printed."""
    figs: dict[str, str] = {}

    def fig(name: str, text: str) -> None:
        figs[name] = text
        print(f"FIGURE {name} {text}", flush=True)

    b = Bench()
    b.keep_logs = args.keep_logs
    try:
        for nid in (1, 2, 3):
            b.start(nid)
        lead = await b.leader()
        conn = await Conn.open(b.cports[lead])
        for _ in range(50):  # warm-up
            await conn.call({"t": "put", "v": VALUE})
        lat = []
        for _ in range(args.seq):
            t0 = time.perf_counter()
            r = await conn.call({"t": "put", "v": VALUE})
            lat.append(time.perf_counter() - t0)
            if not r["ok"]:
                raise RuntimeError(r["err"])
        fig("raft3_seq_put_256B_p50_ms", f"{pct(lat, 50) * 1e3:.2f} ms")
        fig("raft3_seq_put_256B_p99_ms", f"{pct(lat, 99) * 1e3:.2f} ms")

        conns = [await Conn.open(b.cports[lead]) for _ in range(args.conc)]
        per = args.total // args.conc

        async def writer(c: Conn) -> None:
            for _ in range(per):
                r = await c.call({"t": "put", "v": VALUE}, 10.0)
                if not r["ok"]:
                    raise RuntimeError(r["err"])

        st0 = await conn.call({"t": "stats"})
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(c) for c in conns))
        dt = time.perf_counter() - t0
        st1 = await conn.call({"t": "stats"})
        n_sync = max(1, st1["fsyncs"] - st0["fsyncs"])
        print(f"leader: {per * args.conc / n_sync:.1f} entries per WAL write+fsync "
              f"({n_sync} writes for {per * args.conc} puts), {st1['dropped']} frames dropped", flush=True)
        fig(f"raft3_conc{args.conc}_puts_per_s", f"{per * args.conc / dt:.0f} puts/s")
        for c in conns + [conn]:
            await c.close()

        async def failovers(n: int) -> list[float]:
            fo: list[float] = []
            for _ in range(n):
                lead = await b.leader()
                survivors = [i for i in (1, 2, 3) if i != lead]
                sconns = {i: await Conn.open(b.cports[i]) for i in survivors}
                t0 = time.perf_counter()
                b.kill(lead)
                done = False
                while not done:
                    for c in sconns.values():
                        try:
                            r = await c.call({"t": "put", "v": VALUE}, 0.2)
                        except TimeoutError:
                            continue
                        if r["ok"]:
                            done = True
                            break
                    if not done:
                        await asyncio.sleep(0.01)
                fo.append(time.perf_counter() - t0)
                print(f"failover: killed leader {lead}, first write after {fo[-1]:.3f} s", flush=True)
                for c in sconns.values():
                    await c.close()
                b.start(lead)
                await asyncio.sleep(1.0)
            return fo

        def summary(fo: list[float]) -> str:
            return (f"median={statistics.median(fo):.2f} min={min(fo):.2f} max={max(fo):.2f} "
                    f"(n={len(fo)})")

        fo = await failovers(args.failovers)
        if fo:
            fig("raft3_failover_s", summary(fo))
        if args.timeout_failovers:
            # The same with leader_loss_campaign off: only the election timeout (as etcd), the
            # figure for failures that close no connection (partitions, dead machines).
            b.early_campaign = False
            for nid in (1, 2, 3):
                b.stop(nid)
                b.start(nid)
                await b.leader()
            await asyncio.sleep(1.0)
            fo = await failovers(args.timeout_failovers)
            fig("raft3_failover_timeout_only_s", summary(fo))
    finally:
        b.stop_all()
    return figs


# ----------------------------------------------------------------------------- etcd side by side

ETCD_SCRIPT = Path(__file__).with_name("bench_raft_etcd.py")


def ensure_etcd_env(venv: Path) -> Path:
    """Install what the etcd side needs when missing: Debian's etcd-server/etcd-client (apt-get,
    needs root) and a virtualenv at ``venv`` with etcd3 + aiohttp. Returns the venv's python.
    Raises RuntimeError saying which step failed and how to do it by hand."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        print("installing etcd-server etcd-client (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = subprocess.run(["apt-get", "install", "-y", "etcd-server", "etcd-client"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or shutil.which("etcd") is None:
            raise RuntimeError("could not install etcd (run `apt-get update && apt-get install -y "
                               f"etcd-server etcd-client` as root):\n{r.stdout[-2000:]}")
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import etcd3, aiohttp"]
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    if not py.exists() or subprocess.run(check, env=env, capture_output=True).returncode != 0:
        print(f"making the etcd client virtualenv {venv} (etcd3, aiohttp from PyPI)", flush=True)
        for cmd in ([sys.executable, "-m", "venv", str(venv)],
                    [str(py), "-m", "pip", "install", "-q", "etcd3", "aiohttp"]):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{r.stdout[-2000:]}")
    return py


def run_etcd(args: argparse.Namespace) -> dict[str, str]:
    """Run the etcd side in its own venv; echo and return its ``{figure name: "value unit"}``."""
    py = ensure_etcd_env(Path(args.etcd_venv))
    cmd = [str(py), str(ETCD_SCRIPT), "--seq", str(args.seq), "--conc", str(args.conc),
           "--total", str(args.total), "--failovers", str(args.failovers)]
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    figs: dict[str, str] = {}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        for line in p.stdout:
            print(line, end="", flush=True)
            m = re.match(r"FIGURE (\S+) (.*)$", line.rstrip())
            if m:
                figs[m.group(1)] = m.group(2)
        if p.wait() != 0:
            raise RuntimeError(f"the etcd side failed (exit {p.returncode}); its output is above")
    finally:
        if p.poll() is None:  # we were interrupted: let it kill its members and remove its dir
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return figs


def table(ours: list[dict[str, str]], etcd: list[dict[str, str]], conc: int) -> str:
    """A markdown table of both sides' figures: the median over the rounds (each round's value in
    brackets when there are several) and the ratio ours / etcd of the medians."""
    def num(s: str | None) -> float | None:
        if s is None:
            return None
        m = re.search(r"(?:median=)?([0-9.]+)", s)
        return float(m.group(1)) if m else None

    def cell(rounds: list[dict[str, str]], key: str) -> tuple[float | None, str]:
        xs = [x for x in (num(r.get(key)) for r in rounds) if x is not None]
        if not xs:
            return None, "—"
        med = statistics.median(xs)
        text = f"{med:g}"
        if len(xs) > 1:
            text += " (" + ", ".join(f"{x:g}" for x in xs) + ")"
        return med, text

    rows = [("sequential put p50 (ms)", "seq_put_256B_p50_ms"),
            ("sequential put p99 (ms)", "seq_put_256B_p99_ms"),
            (f"{conc} concurrent writers (puts/s)", f"conc{conc}_puts_per_s"),
            ("kill -9 leader → first write (s), median", "failover_s"),
            ("… ours with the early campaign off: election timeout only (s)", "failover_timeout_only_s")]
    out = ["| figure | Shoal Raft | etcd 3.4 | ours / etcd |", "| --- | --- | --- | --- |"]
    for label, key in rows:
        a, ta = cell(ours, "raft3_" + key)
        b, tb = cell(etcd, "etcd3_" + key.replace("_timeout_only", ""))
        ratio = f"{a / b:.2f}" if a is not None and b else "—"
        out.append(f"| {label} | {ta} | {tb} | {ratio} |")
    _, gw = cell(etcd, "etcd3_seq_put_256B_gateway_p50_ms")
    out.append(f"| (etcd sequential p50 through its HTTP gateway with aiohttp, ms) | | {gw} | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--total", type=int, default=12000)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--etcd", action="store_true", help="also run etcd with the same workload, side by side")
    ap.add_argument("--rounds", type=int, default=1, help="with --etcd: rounds of (ours, etcd), alternated")
    ap.add_argument("--etcd-venv", default="/tmp/bench-raft-etcd-venv", help="virtualenv for the etcd3 client")
    ap.add_argument("--keep-logs", default="", help="copy the members' logs to this directory at the end")
    ap.add_argument("--timeout-failovers", type=int, default=3,
                    help="failovers with the early campaign off (election timeout only)")
    ap.add_argument("--no-early-campaign", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--node", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peers", help=argparse.SUPPRESS)
    ap.add_argument("--client-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.node:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        peers = {int(k): v for k, v in (x.split("=", 1) for x in args.peers.split(","))}
        os.makedirs(args.data, exist_ok=True)
        asyncio.run(serve_node(args.node, peers, args.client_port, args.data, not args.no_early_campaign))
        return
    if not args.etcd:
        asyncio.run(run(args))
        return
    ours: list[dict[str, str]] = []
    etcd: list[dict[str, str]] = []
    for r in range(args.rounds):  # alternate the sides so that noise on the box hits both
        print(f"--- round {r + 1}/{args.rounds}: Shoal Raft", flush=True)
        ours.append(asyncio.run(run(args)))
        print(f"--- round {r + 1}/{args.rounds}: etcd", flush=True)
        etcd.append(run_etcd(args))
    print()
    print(table(ours, etcd, args.conc), flush=True)


if __name__ == "__main__":
    main()
