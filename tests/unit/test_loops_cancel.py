"""The store-watching loops stop when cancelled, even while events keep arriving.

On Python 3.11, ``asyncio.wait_for`` could swallow a cancellation that landed just as the
watched event arrived, and the loop then waited forever (a hang seen under load in CI). The
loops now wait with ``shoal.base.util.wait_timeout``; this stresses cancel-while-busy many times.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.store import WriteTx
from shoal.base.util import wait_timeout
from tests.stores import open_store


async def test_wait_timeout_returns_times_out_and_is_cancellable() -> None:
    assert await wait_timeout(asyncio.sleep(0, result=7), 1) == 7
    try:
        await wait_timeout(asyncio.sleep(10), 0.01)
    except TimeoutError:
        pass
    else:
        raise AssertionError("no TimeoutError")
    q: asyncio.Queue[int] = asyncio.Queue()
    t = asyncio.create_task(wait_timeout(q.get(), 5))
    await asyncio.sleep(0)
    t.cancel()
    done, _ = await asyncio.wait({t}, timeout=1)
    assert t in done and t.cancelled()


async def test_loops_stop_when_cancelled_under_a_stream_of_events(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            node = {"ID": f"n{i % 3}", "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
                    "Description": {"Hostname": f"h{i % 3}"}, "Status": {"State": "ready", "Addr": ""}}

            def fn(tx: WriteTx, node: dict = node, i: int = i) -> None:  # type: ignore[type-arg]
                if tx.get("nodes", node["ID"]) is None:
                    tx.create("nodes", node)
                else:
                    cur = tx.get("nodes", node["ID"])
                    assert cur is not None
                    cur["Spec"]["Labels"] = {"i": str(i)}
                    tx.update("nodes", cur)

            await store.update(fn)
            await asyncio.sleep(0)

    producer = asyncio.create_task(churn())
    try:
        for round_ in range(40):
            loops = [asyncio.create_task(Orchestrator(store, debounce=0.001).run()),
                     asyncio.create_task(Scheduler(store, debounce=0.001).run()),
                     asyncio.create_task(TaskReaper(store, debounce=0.001).run())]
            await asyncio.sleep(0.001 * (round_ % 7))
            for t in loops:
                t.cancel()
            done, pending = await asyncio.wait(loops, timeout=5)
            assert not pending, f"round {round_}: {len(pending)} loop(s) ignored cancellation"
    finally:
        stop.set()
        await producer
        await store.close()
