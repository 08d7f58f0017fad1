"""Orchestration at scale (issue 10, "Benchmark"): 3 real managers, N simulated nodes, T tasks.

Three manager processes run the real :class:`manager.manager.Manager` (real Raft with its WAL on
disk, real mutual TLS on 2377, the real dispatcher, orchestrator, scheduler, allocator), each on
its own loopback port and data directory under a temp dir (no namespaces, no root needed). This
process then joins ``--nodes`` simulated nodes (:mod:`tests.bench.simnodes`: a test double that
speaks the real dispatcher protocol and reports tasks running without containers), creates
``--services`` services of ``--tasks / --services`` replicas each, and prints:

- placements per second and seconds from the first create to all tasks assigned (placed and
  written through Raft) and to all running (the simulated nodes' reports committed);
- the leader's RSS before and after, per 10,000 tasks and per task;
- after ``--lose L`` simulated nodes are dropped (abruptly), the seconds from the loss, and from
  their being marked down, to every task running again.

Each manager process answers a few bench-only queries (counts of tasks by state, node states,
its RSS) on a unix socket of its own; they read the manager's store in place, without copies.
Usage: ``python tests/bench/bench_scale.py --nodes 1000 --tasks 10000 --lose 100``.
Run it under the lab lock: ``flock /tmp/shoal-lab.lock python tests/bench/bench_scale.py ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from manager.controlapi.control import Control  # noqa: E402
from manager.manager import Manager  # noqa: E402
from tests.bench.simnodes import SimulatedNode, start_nodes  # noqa: E402
from tests.ports import free_port  # noqa: E402
from worker.join import join, local_description  # noqa: E402

PUBLISHED = [
    ("Nomad C1M (1M containers, 5,000 hosts)", "~3,750 placements/s"),
    ("Kubernetes scheduler at 5,000 nodes", "680-810 pods/s"),
    ("swarmkit scheduler", "3,400-5,300 tasks/s"),
]
AIM = "aim: >= 5,000 placements/s end to end; leader memory <= 1 KiB per task beyond the task object"


# -- the manager process ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS`` of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def task_counts(m: Manager, lost: set[str]) -> dict[str, Any]:
    """Counts over the store's tasks (read in place): ``assigned`` (desired running, on a node),
    ``running`` (desired running, running), ``running_ok`` (the same, not on a node of ``lost``)."""
    tasks = m.store._tables["tasks"].values()
    assigned = running = running_ok = total = 0
    for t in tasks:
        if t.get("DesiredState") != "running":
            continue
        total += 1
        if t.get("NodeID"):
            assigned += 1
        if (t.get("Status") or {}).get("State") == "running":
            running += 1
            if t.get("NodeID") not in lost:
                running_ok += 1
    return {"desired": total, "assigned": assigned, "running": running, "running_ok": running_ok}


def deep_size(obj: Any) -> int:
    """Bytes of ``obj`` and every dict, list and string inside it (sys.getsizeof summed; objects
    shared inside ``obj`` counted once)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def memory_breakdown(m: Manager) -> dict[str, Any]:
    """Where a manager's memory goes (bytes): the task objects themselves (their Python size and
    their encoded size), the Raft log's entries held in memory (count and bytes), the event
    hub's ring, and the dispatcher's last-sent fingerprints."""
    tasks = m.store._tables["tasks"]
    raft_entries = m.log.driver.node.log._entries
    sessions = getattr(m.dispatcher, "_sessions", {})
    o = getattr(m, "orchestrator", None)
    cache = m.dispatcher._digests._cache  # task ID -> (the stored task, its digest): count the digests
    return {
        "tasks": len(tasks),
        "task_objects": deep_size(tasks),
        "task_encoded": sum(len(msgpack.packb(t, use_bin_type=True)) for t in tasks.values()),
        "raft_entries": len(raft_entries),
        "raft_entry_bytes": sum(len(e.data) for e in raft_entries),
        "event_ring": len(m.events._ring),
        "orchestrator_passes": [getattr(o, "passes", 0), getattr(o, "whole_passes", 0)],
        "event_ring_bytes": deep_size(list(m.events._ring)),
        "sent_fingerprints": sum(deep_size(s.sent.tasks) if s.sent is not None else 0 for s in sessions.values())
        + sys.getsizeof(cache) + sum(sys.getsizeof(v) + sys.getsizeof(v[1]) for v in cache.values()),
    }


async def manager_main(a: argparse.Namespace) -> None:
    """One manager process: ``swarm init`` (``--init``) or join with the manager token in
    ``--token-file`` through ``--via``; then serve bench queries on ``--sock``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(a.dir)
    data, certs = root / "data", root / "certs"
    addr = f"127.0.0.1:{a.port}"
    if a.init:
        node_id = await Manager.init_cluster(data, certs, addr, local_description(a.name), {},
                                             heartbeat_period=a.heartbeat)
    else:
        token = Path(a.token_file).read_text().strip()
        node_id, _role, _ms = await join(a.via, token, a.name, "127.0.0.1", certs,
                                         description=local_description(a.name), timeout=60)
    m = Manager(data, certs, node_id, addr, addr, heartbeat_period=a.heartbeat)
    await m.start()
    if not a.init:
        await m.join_raft([a.via], timeout=60)
    lost: set[str] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            q = json.loads(line)
            op = q["op"]
            r: Any
            try:
                if op == "leader":
                    r = m.is_leader
                elif op == "tokens":
                    r = m.join_tokens()
                elif op == "create":
                    r = await Control(m).call("services.create", {"spec_body": q["spec"]})
                elif op == "lost":
                    lost.clear()
                    lost.update(q["ids"])
                    r = True
                elif op == "counts":
                    r = task_counts(m, lost)
                elif op == "mem":
                    r = memory_breakdown(m)
                elif op == "nodes":
                    states: dict[str, int] = {}
                    for n in m.store._tables["nodes"].values():
                        st = (n.get("Status") or {}).get("State", "")
                        if n["ID"] in lost:
                            st = "lost-" + st
                        states[st] = states.get(st, 0) + 1
                    r = states
                else:
                    r = {"error": f"unknown op {op}"}
            except Exception as e:  # a bench query: report, keep serving
                r = {"error": f"{type(e).__name__}: {e}"}
            writer.write((json.dumps(r) + "\n").encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=a.sock)
    Path(a.sock + ".ready").write_text(node_id)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    await m.stop()


# -- the driver -------------------------------------------------------------------------------------


class ManagerProc:
    """A manager child process and its query socket."""

    def __init__(self, name: str, root: Path, heartbeat: float, profile: bool) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.sock = str(root / f"{name}.sock")
        self.heartbeat = heartbeat
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self._rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def spawn(self, via: str = "", token_file: str = "") -> None:
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", str(self.dir / "profile.out")]
        cmd += [__file__, "--manager-child", "--name", self.name, "--dir", str(self.dir),
                "--port", str(self.port), "--sock", self.sock, "--heartbeat", str(self.heartbeat)]
        cmd += ["--via", via, "--token-file", token_file] if via else ["--init"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "out.log", "wb"), stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not Path(self.sock + ".ready").exists():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"manager {self.name} exited: {(self.dir / 'out.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"manager {self.name} not ready within {timeout} s")
            await asyncio.sleep(0.1)

    async def q(self, op: str, **kw: Any) -> Any:
        if self._rw is None:
            self._rw = await asyncio.open_unix_connection(self.sock, limit=1 << 24)
        r, w = self._rw
        w.write((json.dumps({"op": op, **kw}) + "\n").encode())
        await w.drain()
        out = json.loads(await r.readline())
        if isinstance(out, dict) and "error" in out and len(out) == 1:
            raise RuntimeError(f"{self.name}: {op}: {out['error']}")
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def service_spec(name: str, replicas: int) -> dict[str, Any]:
    return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Command": ["sleep", "1d"]}},
            "Mode": {"Replicated": {"Replicas": replicas}}}


async def wait_for(pred: Any, timeout: float, what: str, period: float = 0.1, show: Any = None) -> float:
    """Poll the coroutine function ``pred`` until true; return the monotonic time it became true.
    On timeout, the ``TimeoutError`` says what ``show()`` (a coroutine function) returns then."""
    deadline = time.monotonic() + timeout
    while True:
        if await pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            seen = f"; then: {await show()}" if show is not None else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        await asyncio.sleep(period)


async def current_leader(ms: list[ManagerProc]) -> ManagerProc:
    """The manager that leads now (leadership may move under load); waits up to 120 s for one."""
    deadline = time.monotonic() + 120
    while True:
        for m in ms:
            with contextlib.suppress(Exception):
                if await m.q("leader"):
                    return m
        if time.monotonic() > deadline:
            raise TimeoutError("no manager leads")
        await asyncio.sleep(0.2)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


async def drive(a: argparse.Namespace, root: Path) -> None:
    ms = [ManagerProc(f"m{i}", root, a.heartbeat, a.profile) for i in (1, 2, 3)]
    nodes: list[SimulatedNode] = []
    try:
        t0 = time.monotonic()
        ms[0].spawn()
        await ms[0].ready()
        tokens = await ms[0].q("tokens")
        tf = root / "manager-token"
        tf.write_text(tokens["Manager"])
        for m in ms[1:]:
            m.spawn(via=ms[0].addr, token_file=str(tf))
            await m.ready()
        leader = ms[0]
        assert await leader.q("leader"), "m1 should still lead"
        print(f"3 managers up in {time.monotonic() - t0:.1f} s (leader {leader.name}, pid {leader.proc.pid})")
        t0 = time.monotonic()
        nodes = await start_nodes(a.nodes, leader.addr, tokens["Worker"], root / "nodes")
        print(f"{a.nodes} simulated nodes joined and connected in {time.monotonic() - t0:.1f} s")

        async def ready_nodes() -> bool:
            return (await (await current_leader(ms)).q("nodes")).get("ready", 0) >= a.nodes
        await wait_for(ready_nodes, 60, "every node ready")
        pid = leader.proc.pid  # type: ignore[union-attr]
        rss0 = rss_bytes(pid)
        per = a.tasks // a.services
        total = per * a.services

        spies = []
        if a.pyspy:  # sample every manager from the creates on (raw stacks in each manager's dir)
            for m in ms:
                assert m.proc is not None
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(m.proc.pid), "-f", "raw",
                     "--nonblocking", "-o", str(m.dir / "pyspy.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        t_create = time.monotonic()
        for i in range(a.services):
            await leader.q("create", spec=service_spec(f"bench{i}", per))
        t_created = time.monotonic()

        async def assigned() -> bool:
            return (await (await current_leader(ms)).q("counts"))["assigned"] >= total

        async def counts() -> Any:
            ld = await current_leader(ms)
            return f"{ld.name} leads: {await ld.q('counts')}, nodes {await ld.q('nodes')}"
        t_assigned = await wait_for(assigned, a.timeout, f"{total} tasks assigned", 0.1, counts)

        async def running() -> bool:
            return (await (await current_leader(ms)).q("counts"))["running"] >= total
        t_running = await wait_for(running, a.timeout, f"{total} tasks running", 0.1, counts)
        await asyncio.sleep(2)  # let the dust settle before reading memory
        leader = await current_leader(ms)
        rss1 = rss_bytes(leader.proc.pid)  # type: ignore[union-attr]
        if leader.proc.pid != pid:  # type: ignore[union-attr]
            print(f"  (leadership moved to {leader.name} during the run: its RSS is the 'after')")
        d_assigned, d_running = t_assigned - t_create, t_running - t_create
        print(f"\n{total} tasks ({a.services} services x {per}) on {a.nodes} simulated nodes, 3 managers:")
        print(f"  create calls returned after   {t_created - t_create:7.2f} s")
        print(f"  all assigned after            {d_assigned:7.2f} s  -> {total / d_assigned:8.0f} placements/s")
        print(f"  all running after             {d_running:7.2f} s  -> {total / d_running:8.0f} tasks/s end to end")
        print(f"  leader RSS before {mib(rss0)}, after {mib(rss1)}: "
              f"{mib((rss1 - rss0) * 10000 / total)} per 10,000 tasks, {(rss1 - rss0) / total:.0f} bytes per task")
        mem = await leader.q("mem")
        beyond = (rss1 - rss0 - mem["task_objects"]) / total
        print(f"  the task objects themselves: {mem['task_objects'] / mem['tasks']:.0f} bytes each in memory "
              f"({mem['task_encoded'] / mem['tasks']:.0f} encoded); beyond them: {beyond:.0f} bytes per task")
        print(f"  of which Raft entries in memory: {mem['raft_entries']} ({mib(mem['raft_entry_bytes'])}), "
              f"event ring: {mem['event_ring']} ({mib(mem['event_ring_bytes'])}), "
              f"dispatcher digests of what was sent: {mib(mem['sent_fingerprints'])}")
        print(f"  orchestrator passes (whole): {mem['orchestrator_passes']}")

        if a.lose:
            lost = nodes[: a.lose]
            for m in ms:
                await m.q("lost", ids=[x.node_id for x in lost])
            t_lose = time.monotonic()
            await asyncio.gather(*(x.lose() for x in lost))

            async def down() -> bool:
                return (await (await current_leader(ms)).q("nodes")).get("lost-down", 0) >= len(lost)
            t_down = await wait_for(down, a.timeout, f"{len(lost)} lost nodes marked down", 0.1, counts)

            async def recovered() -> bool:
                return (await (await current_leader(ms)).q("counts"))["running_ok"] >= total
            t_back = await wait_for(recovered, a.timeout, "every task running again", 0.1, counts)
            moved = sum(len(x.executor.running) for x in lost)
            print(f"\nlost {len(lost)} nodes holding {moved} tasks (heartbeat period {a.heartbeat:g} s, down after 3 misses):")
            print(f"  marked down after             {t_down - t_lose:7.2f} s")
            print(f"  all running again after       {t_back - t_lose:7.2f} s from the loss, "
                  f"{t_back - t_down:.2f} s from marked down")

        for sp in spies:
            sp.send_signal(signal.SIGINT)
            sp.wait(30)
        print("\npublished figures:")
        for what, fig in PUBLISHED:
            print(f"  {what:42} {fig}")
        print("  " + AIM)
    finally:
        await asyncio.gather(*(x.stop() for x in nodes), return_exceptions=True)
        for m in reversed(ms):
            m.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    p.add_argument("--tasks", type=int, default=10000, help="tasks in total (default 10000)")
    p.add_argument("--services", type=int, default=10, help="services the tasks are split between (default 10)")
    p.add_argument("--lose", type=int, default=100, help="simulated nodes to drop after all run (default 100; 0: skip)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="dispatcher heartbeat period, seconds (default 5)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds each phase may take (default 600)")
    p.add_argument("--profile", action="store_true", help="run the managers under cProfile (profile.out in each dir)")
    p.add_argument("--pyspy", action="store_true", help="sample the managers with py-spy from the creates on "
                   "(pyspy.txt in each manager's dir; implies --keep)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    # the manager child process
    p.add_argument("--manager-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sock", help=argparse.SUPPRESS)
    p.add_argument("--init", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--via", default="", help=argparse.SUPPRESS)
    p.add_argument("--token-file", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.manager_child:
        asyncio.run(manager_main(a))
        return
    logging.basicConfig(level=logging.ERROR)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-scale-"))
    try:
        asyncio.run(drive(a, root))
    finally:
        if a.keep or a.pyspy:
            print(f"kept {root}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)


if __name__ == "__main__":
    main()
