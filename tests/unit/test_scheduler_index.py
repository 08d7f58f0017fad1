"""The scheduler loop never rescans the store once it runs: after its start-up rebuild, a pass
reads the nodes that need a bridge subnet and the pending tasks by ID, and everything else
comes from the index kept one event at a time — checked by counting every whole-table read
(``list``, ``list_shallow``, ``find``) while a node joins and tasks are placed and freed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from manager.scheduler import Scheduler
from manager.store import ReadTx
from tests.stores import open_store
from tests.unit.test_scheduler_filters import CPU, GIB, node, task
from tests.unit.test_scheduler_loop import change, create, placed_on
from tests.waiting import wait_until


async def test_passes_read_no_whole_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(tmp_path)
    await create(store, "nodes", *[node(f"n{i}", cpus=4 * CPU, mem=4 * GIB) for i in range(20)])
    await create(store, "tasks", *[task(f"r{i}", svc="other", slot=i, node_id=f"n{i % 20}", state="running",
                                        cpus=CPU) for i in range(100)])
    sched = Scheduler(store, debounce=0.01, max_latency=60.0)
    runner = asyncio.create_task(sched.run())
    try:
        await create(store, "tasks", task("warm"))
        await placed_on(store, "warm")
        scans: list[str] = []

        def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(self: ReadTx, table: str, *args: Any) -> Any:
                scans.append(f"{name}({table})")
                return real(self, table, *args)
            return wrapper

        for name in ("list", "list_shallow", "find"):
            monkeypatch.setattr(ReadTx, name, counting(name, getattr(ReadTx, name)))
        passes = sched.passes
        # a node joins (it gets a subnet), a task lands on it, another waits for room and is
        # placed once a task ends
        await create(store, "nodes", node("new", cpus=8 * CPU, mem=8 * GIB))
        await create(store, "tasks", task("t1", cpus=5 * CPU))
        assert await placed_on(store, "t1") == "new"
        await create(store, "tasks", task("t2", slot=2, cpus=5 * CPU))
        await change(store, "tasks", "t1", Status={"State": "failed"})
        assert await placed_on(store, "t2") == "new"
        assert sched.passes > passes
        assert scans == []
        new = store.view().get("nodes", "new")
        assert new is not None and new["ShoalBridge"]["Subnet"]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()


async def test_labelled_node_takes_the_pending_task_within_a_second_under_a_steady_event_stream(
        tmp_path: Path) -> None:
    """With the production batching (50 ms of quiet, at most :attr:`Scheduler.max_latency`) and
    another task's status changing every 20 ms — so a batch never ends on quiet — a pending task
    is placed within a second of the label that makes room for it."""
    store = await open_store(tmp_path)
    sched = Scheduler(store)
    assert sched.max_latency <= 0.5
    runner = asyncio.create_task(sched.run())
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await change(store, "tasks", "busy", Status={"State": "running", "Message": f"beat {i}"})
            await asyncio.sleep(0.02)

    try:
        await create(store, "nodes", node("n1"), node("n2"))
        await create(store, "tasks", task("busy", svc="other", node_id="n1", state="running"),
                     task("t1", constraints=["node.labels.zone==eu"]))
        await wait_until(lambda: ((store.view().get("tasks", "t1") or {}).get("Status") or {}).get("Err"),
                         what="t1 pending with a reason")
        churner = asyncio.create_task(churn())
        await asyncio.sleep(0.3)  # the stream is under way: batches now end on max_latency only
        n2 = store.view().get("nodes", "n2")
        assert n2 is not None
        start = time.monotonic()
        await change(store, "nodes", "n2", Spec={**n2["Spec"], "Labels": {"zone": "eu"}})
        assert await placed_on(store, "t1", timeout=3.0) == "n2"
        took = time.monotonic() - start
        assert took < 1.0, f"placed {took:.2f} s after the label"
        stop.set()
        await churner
    finally:
        stop.set()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
