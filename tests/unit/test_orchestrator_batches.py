"""Bounded orchestrator passes (issue 7): a large scale-up, scale-down, service removal or node
loss is written in batches — each pass at most the batch size of tasks and a Raft entry under
the store's transaction limit — and the next pass goes on until the service converges. Batch
sizes only: how long the event loop stalls is a benchmark (tests/bench/bench_orchestrator_batches.py).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from pathlib import Path
from typing import Any

import msgpack

from manager.orchestrator import MAX_TASK_WRITES_PER_PASS, Orchestrator, WriteBudget, new_task, reconcile
from manager.specs import MAX_REPLICAS
from manager.store import MAX_TRANSACTION_BYTES, WriteTx
from shoal.base.util import now_rfc3339
from tests.stores import open_log, store_on
from tests.waiting import wait_until

NOW = 1_800_000_000.0


def service(replicas: int, env_bytes: int = 0) -> dict[str, Any]:
    cs: dict[str, Any] = {"Image": "busybox"}
    if env_bytes:
        cs["Env"] = ["BIG=" + "x" * env_bytes]
    return {"ID": "s1", "Version": {"Index": 7},
            "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}}, "TaskTemplate": {"ContainerSpec": cs}}}


def counter() -> Any:
    c = itertools.count(1)
    return lambda: f"t{next(c)}"


def test_a_scale_up_to_the_cap_is_created_in_bounded_passes() -> None:
    """0 → 100,000 (MAX_REPLICAS): every pass creates at most the batch (and says there is
    more), the next pass continues at the lowest free slot, until every slot has one task."""
    s = service(MAX_REPLICAS)
    tasks: list[dict[str, Any]] = []
    ids = counter()
    batch = 10_000  # the pure core with a large batch, so this test stays quick; the loop's is below
    passes = 0
    while True:
        plan = reconcile([s], tasks, [], NOW, ids, budget=WriteBudget(batch))
        passes += 1
        assert len(plan.create) <= batch and plan.update == []
        tasks.extend(plan.create)
        if not plan.more:
            break
        assert len(plan.create) == batch
    assert passes == MAX_REPLICAS // batch
    assert sorted(t["Slot"] for t in tasks) == list(range(1, MAX_REPLICAS + 1))


def test_the_default_pass_stays_under_the_batch_and_the_transaction_limit() -> None:
    """The loop's budget: MAX_TASK_WRITES_PER_PASS tasks, and fewer when the tasks are big so
    the Raft entry stays under MAX_TRANSACTION_BYTES (with room for the service objects)."""
    for env_bytes, most in [(0, MAX_TASK_WRITES_PER_PASS), (60_000, MAX_TRANSACTION_BYTES // 60_000)]:
        plan = reconcile([service(MAX_REPLICAS, env_bytes)], [], [], NOW, counter(),
                         budget=WriteBudget(MAX_TASK_WRITES_PER_PASS, MAX_TRANSACTION_BYTES * 3 // 4))
        assert plan.more and 0 < len(plan.create) <= most
        size = len(msgpack.packb({"ops": [["create", "tasks", t] for t in plan.create]}, use_bin_type=True))
        assert size <= MAX_TRANSACTION_BYTES
    # a single task bigger than the whole budget still goes (one per pass): progress is guaranteed
    plan = reconcile([service(3, 2 * MAX_TRANSACTION_BYTES)], [], [], NOW, counter(),
                     budget=WriteBudget(MAX_TASK_WRITES_PER_PASS, MAX_TRANSACTION_BYTES * 3 // 4))
    assert len(plan.create) == 1 and plan.more


def test_scale_down_removal_and_node_loss_are_batched_too() -> None:
    s = service(1000)
    tasks = [new_task(s, i, now_rfc3339(NOW - 100), lambda i=i: f"t{i}") for i in range(1, 1001)]
    for t in tasks:
        t["NodeID"], t["Status"] = "n1", {"State": "running", "Timestamp": now_rfc3339(NOW - 100)}
    nodes = [{"ID": "n1", "Spec": {"Availability": "active"}, "Status": {"State": "ready"}}]

    def converge(svcs: list[dict[str, Any]], tasks: list[dict[str, Any]], nodes: list[dict[str, Any]],
                 batch: int = 100) -> tuple[list[dict[str, Any]], int]:
        by_id = {t["ID"]: t for t in copy.deepcopy(tasks)}
        passes, c = 0, itertools.count(1)

        def ids() -> str:
            return f"new{next(c)}"

        while True:
            plan = reconcile(copy.deepcopy(svcs), copy.deepcopy(list(by_id.values())), nodes, NOW, ids,
                             budget=WriteBudget(batch))
            passes += 1
            assert len(plan.create) + len(plan.update) <= batch
            for t in [*plan.create, *plan.update]:
                by_id[t["ID"]] = t
            if not plan.more:
                return list(by_id.values()), passes

    # scale 1000 -> 0: the highest slots go first, 100 tasks a pass
    down = service(0)
    out, passes = converge([down], tasks, nodes)
    assert all(t["DesiredState"] == "remove" for t in out) and passes == 10
    # the service removed: every task asked to go, in batches
    out, passes = converge([], tasks, nodes)
    assert all(t["DesiredState"] == "remove" for t in out) and passes == 10
    # the node lost: each slot replaced (a new task = 1 write; the old one is parked, still
    # desired running, as it may still run: test_orchestrator_blips.py), 100 slots a pass
    out, passes = converge([s], tasks, [{**nodes[0], "Status": {"State": "down"}}])
    current = [t for t in out if t["DesiredState"] == "running" and not t["NodeID"]]
    assert len(current) == 1000 and passes == 10


def creating(table: str, *objs: dict[str, Any]) -> Any:
    def fn(tx: WriteTx) -> None:
        for o in objs:
            tx.create(table, o)
    return fn


async def test_the_loop_goes_on_by_itself_in_bounded_transactions(tmp_path: Path) -> None:
    """The Orchestrator loop on a real store: a scale-up to 3,000 is written in passes of at
    most MAX_TASK_WRITES_PER_PASS tasks, each one Raft entry under MAX_TRANSACTION_BYTES, and
    the loop runs the next pass by itself (no other change to wake it) until all slots exist."""
    log = open_log(tmp_path / "raft")
    entries: list[int] = []
    submit = log.submit

    def measuring(data: bytes) -> Any:
        entries.append(len(data))
        return submit(data)

    log.submit = measuring  # type: ignore[method-assign]
    store = await store_on(log)
    orch = Orchestrator(store, debounce=0.005)
    creates: list[int] = []
    tick = orch.tick

    async def counting_tick(**kw: Any) -> Any:
        plan = await tick(**kw)
        creates.append(len(plan.create))
        return plan

    orch.tick = counting_tick  # type: ignore[method-assign]
    runner = asyncio.create_task(orch.run())
    try:
        await store.update(creating("services", service(3000, env_bytes=1000)))
        await wait_until(lambda: sum(creates) == 3000, 60, "3000 tasks created (and the pass returned)")
        assert max(creates) <= MAX_TASK_WRITES_PER_PASS
        assert sum(1 for n in creates if n) >= 3000 // MAX_TASK_WRITES_PER_PASS
        assert max(entries) <= MAX_TRANSACTION_BYTES
        slots = sorted(t["Slot"] for t in store.view().list("tasks"))
        assert slots == list(range(1, 3001))
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()


def test_reconcile_never_changes_a_value_inside_its_inputs() -> None:
    """The loop hands reconcile shallow copies (store.list_shallow): it may set keys of the
    dicts it is given, never change what is inside them (the store's own objects)."""
    s = service(5)
    s["Spec"]["UpdateConfig"] = {"Parallelism": 2}
    tasks = [new_task(s, i, now_rfc3339(NOW - 100), lambda i=i: f"t{i}") for i in range(1, 7)]
    for i, t in enumerate(tasks):
        t["NodeID"] = "n1" if i % 2 else "n2"
        t["Status"] = {"State": ["running", "failed", "new", "running", "complete", "running"][i],
                       "Timestamp": now_rfc3339(NOW - 50)}
        t["CreatedAt"] = now_rfc3339(NOW - 100)
    tasks[5]["Slot"] = 1  # two current tasks in one slot
    tasks.append({**copy.deepcopy(tasks[0]), "ID": "orphan", "ServiceID": "gone"})
    nodes = [{"ID": "n1", "Spec": {"Availability": "drain"}, "Status": {"State": "ready"}},
             {"ID": "n2", "Spec": {"Availability": "active"}, "Status": {"State": "down"}}]
    new = copy.deepcopy(s)
    new["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = "busybox:2"
    new["Version"] = {"Index": 9}
    frozen = copy.deepcopy([new, tasks, nodes])
    shallow = ([dict(new)], [dict(t) for t in tasks], [dict(n) for n in nodes])
    plan = reconcile(*shallow, NOW, counter())
    assert plan.create and plan.update
    assert [new, tasks, nodes] == frozen


async def test_a_pass_looks_only_at_the_services_that_changed(tmp_path: Path) -> None:
    """The loop reconciles only the services whose spec or tasks changed since its last pass
    (the tasks read through the store's ServiceID index); a node's change makes the next pass
    whole. Outcomes stay right: scaling one service of three creates its slot, nothing else."""
    store = await store_on(open_log(tmp_path / "raft"))
    orch = Orchestrator(store, debounce=0.005)
    passed: list[set[str] | None] = []
    wrote: list[int] = []
    tick = orch.tick

    async def recording_tick(**kw: Any) -> Any:
        plan = await tick(**kw)
        passed.append(None if orch._passed is None else set(orch._passed))
        wrote.append(len(plan.create) + len(plan.update) + len(plan.services))
        return plan

    orch.tick = recording_tick  # type: ignore[method-assign]
    runner = asyncio.create_task(orch.run())
    try:
        for i in range(3):
            await store.update(creating("services", {**service(2), "ID": f"s{i}", "Spec": {**service(2)["Spec"], "Name": f"web{i}"}}))
        await wait_until(lambda: len(store.view().list("tasks")) == 6, 10, "6 tasks")
        await wait_until(lambda: all(t["Status"]["State"] == "pending" for t in store.view().list("tasks")), 10, "pending")
        # quiet: the last pass wrote nothing, and no change waits to be looked at
        await wait_until(lambda: wrote and wrote[-1] == 0 and orch._dirty == set(), 10, "the loop at rest")

        def scale(tx: WriteTx) -> None:
            s = tx.get("services", "s1")
            assert s is not None
            s["Spec"]["Mode"]["Replicated"]["Replicas"] = 3
            tx.update("services", s)

        passed.clear()
        await store.update(scale)
        await wait_until(lambda: len(store.view().list_by("tasks", "ServiceID", "s1")) == 3, 10, "s1 scaled to 3")
        await wait_until(lambda: passed and passed[-1] == {"s1"}, 10, "a pass over s1 alone")
        assert all(p == {"s1"} for p in passed), passed
        assert sorted(t["Slot"] for t in store.view().list_by("tasks", "ServiceID", "s1")) == [1, 2, 3]
        assert len(store.view().list_by("tasks", "ServiceID", "s0")) == 2

        passed.clear()
        await store.update(creating("nodes", {"ID": "n1", "Status": {"State": "ready"}, "Spec": {"Availability": "active"}}))
        await wait_until(lambda: None in passed, 10, "a whole pass after a node change")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
