"""How long a large scale-up stalls the leader's event loop (issue 7): a service scaled from 0
to N replicas (default 20,000) on the in-process harness — a real Store on a one-voter log (WAL
with fsync, in a temp dir), the orchestrator, and with ``--loops all`` the scheduler and task
reaper too, as on a leader — with 100 ready nodes (each node's bridge /24 holds 253 tasks) and no
workers (tasks stop at ``assigned``).

A probe coroutine sleeps 2 ms at a time; the longest gap between its wake-ups beyond that is the
longest stall of the event loop. Prints ``FIGURE <name> <value> <unit>`` lines; never passes or
fails on time.

    python tests/bench/bench_orchestrator_batches.py                  # batched (the orchestrator as it runs)
    python tests/bench/bench_orchestrator_batches.py --unbatched      # one pass creates every task (before issue 7)
    python tests/bench/bench_orchestrator_batches.py --loops all --replicas 20000

Figures: ``max_loop_stall_ms`` / ``p99_loop_stall_ms`` (stalls of the event loop),
``median_pass_ms`` / ``max_pass_ms`` (orchestrator passes that wrote tasks, commit included), ``passes``, ``max_entry_kib`` (the largest Raft log entry proposed),
``scale_up_s`` (until every slot has a task; with ``--loops all`` until every task is assigned).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from manager.orchestrator import Orchestrator, Plan, WriteBudget  # noqa: E402
from manager.reaper import TaskReaper  # noqa: E402
from manager.scheduler import Scheduler  # noqa: E402
from manager.store import WriteTx  # noqa: E402
from tests.stores import open_log, store_on  # noqa: E402


class UnbatchedOrchestrator(Orchestrator):
    """The orchestrator as it was before issue 7: one pass writes everything it decides."""

    def _budget(self) -> WriteBudget | None:
        return None


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def node(i: int) -> dict[str, Any]:
    return {"ID": f"node{i:03d}", "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
            "Description": {"Hostname": f"h{i:03d}", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                            "Resources": {"NanoCPUs": 0, "MemoryBytes": 0}},
            "Status": {"State": "ready", "Addr": f"10.0.{i // 250}.{i % 250 + 1}"}}


async def run(replicas: int, unbatched: bool, loops: str) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-orch-") as d:
        log = open_log(Path(d) / "raft")
        entry_sizes: list[int] = []
        submit = log.submit

        def measuring_submit(data: bytes) -> Any:
            entry_sizes.append(len(data))
            return submit(data)

        log.submit = measuring_submit  # type: ignore[method-assign]
        store = await store_on(log)

        def setup(tx: WriteTx) -> None:
            for i in range(100):
                tx.create("nodes", node(i))
            tx.create("services", {"ID": "svc1", "Spec": {
                "Name": "web", "Mode": {"Replicated": {"Replicas": 0}},
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "100000"]}}}})

        await store.update(setup)
        orch = (UnbatchedOrchestrator if unbatched else Orchestrator)(store)
        pass_ms: list[float] = []
        tick = orch.tick

        async def timed_tick() -> Plan:
            t0 = time.perf_counter()
            plan = await tick()
            if plan.create or plan.update:
                pass_ms.append((time.perf_counter() - t0) * 1000)
            return plan

        orch.tick = timed_tick  # type: ignore[method-assign]
        tasks = [asyncio.create_task(orch.run())]
        if loops == "all":
            sched = Scheduler(store)
            sched.rebuild()
            tasks += [asyncio.create_task(sched.run()), asyncio.create_task(TaskReaper(store).run())]
        stalls: list[float] = []

        async def probe() -> None:
            loop = asyncio.get_running_loop()
            while True:
                t0 = loop.time()
                await asyncio.sleep(0.002)
                stalls.append((loop.time() - t0 - 0.002) * 1000)

        tasks.append(asyncio.create_task(probe()))
        await asyncio.sleep(0.2)
        stalls.clear()
        entry_sizes.clear()

        def scale(tx: WriteTx) -> None:
            s = tx.get("services", "svc1")
            assert s is not None
            s["Spec"]["Mode"]["Replicated"]["Replicas"] = replicas
            tx.update("services", s)

        t0 = time.perf_counter()
        await store.update(scale)

        def done() -> bool:
            n = sum(1 for t in store._tables["tasks"].values()
                    if loops != "all" or (t.get("Status") or {}).get("State") == "assigned")
            return n >= replicas

        while not done():
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > 900:
                raise SystemExit("FIGURE scale_up_s n/a (timed out after 900 s)")
        took = time.perf_counter() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
    mode = "unbatched" if unbatched else "batched"
    name = f"orchestrator_{mode}_{loops}_0_to_{replicas}"
    print(f"FIGURE {name}_max_loop_stall_ms {max(stalls):.1f} ms", flush=True)
    print(f"FIGURE {name}_p99_loop_stall_ms {p99(stalls):.1f} ms", flush=True)
    if pass_ms:
        print(f"FIGURE {name}_median_pass_ms {statistics.median(pass_ms):.1f} ms", flush=True)
        print(f"FIGURE {name}_max_pass_ms {max(pass_ms):.1f} ms", flush=True)
    print(f"FIGURE {name}_passes {len(pass_ms)} passes", flush=True)
    print(f"FIGURE {name}_max_entry_kib {max(entry_sizes) / 1024:.0f} KiB", flush=True)
    print(f"FIGURE {name}_scale_up_s {took:.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=20_000)
    ap.add_argument("--unbatched", action="store_true", help="one pass writes every task (before issue 7)")
    ap.add_argument("--loops", choices=["orchestrator", "all"], default="orchestrator",
                    help="the orchestrator alone, or with the scheduler and the reaper (a leader's loops)")
    a = ap.parse_args()
    asyncio.run(run(a.replicas, a.unbatched, a.loops))


if __name__ == "__main__":
    main()
