"""Tests of manager.orchestrator (pure reconcile) and manager.reaper, and the loops together
on a real store (orchestrator + scheduler + reaper; a test stand-in plays the workers)."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.orchestrator import Orchestrator, new_task, reconcile, service_status
from manager.reaper import TaskReaper, reap
from manager.scheduler import Scheduler
from manager.store import WriteTx
from shoal.base.util import now_rfc3339
from tests.stores import open_store
from tests.waiting import wait_until

NOW = 1_800_000_000.0


def creating(table: str, *objs: dict[str, Any]) -> Callable[[WriteTx], None]:
    """A store transaction that creates ``objs`` in ``table``."""
    def fn(tx: WriteTx) -> None:
        for o in objs:
            tx.create(table, o)
    return fn


def ids() -> Any:
    c = itertools.count(1)
    return lambda: f"task{next(c)}"


def svc(replicas: int = 3, **tt: Any) -> dict[str, Any]:
    template = {"ContainerSpec": {"Image": "busybox"}}
    template.update(tt)
    return {"ID": "s1", "Version": {"Index": 7},
            "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}}, "TaskTemplate": template}}


def node(id: str, state: str = "ready", avail: str = "active") -> dict[str, Any]:
    return {"ID": id, "Spec": {"Role": "worker", "Availability": avail}, "Status": {"State": state},
            "Description": {"Hostname": id}}


def running(service: dict[str, Any], slot: int, node_id: str, state: str = "running", t: float = NOW - 100) -> dict[str, Any]:
    task = new_task(service, slot, now_rfc3339(t), ids())
    task["ID"] = f"{service['ID']}-{slot}-{state}-{node_id}"
    task["NodeID"] = node_id
    task["CreatedAt"] = now_rfc3339(t)
    task["Status"] = {"State": state, "Timestamp": now_rfc3339(t)}
    return task


def test_create_scale_up_and_down() -> None:
    s = svc(3)
    plan = reconcile([s], [], [], NOW, ids())
    assert sorted(t["Slot"] for t in plan.create) == [1, 2, 3]
    t0 = plan.create[0]
    assert t0["Name"] == f"web.{t0['Slot']}.{t0['ID']}"
    assert t0["Status"]["State"] == "pending" and t0["DesiredState"] == "running"
    assert t0["Spec"]["RestartPolicy"]["Condition"] == "any"
    tasks = [running(s, i, "n1") for i in (1, 2, 3)]
    s5 = svc(5)
    plan = reconcile([s5], tasks, [node("n1")], NOW, ids())
    assert sorted(t["Slot"] for t in plan.create) == [4, 5] and plan.update == []
    s1 = svc(1)
    plan = reconcile([s1], [running(s1, i, "n1") for i in (1, 2, 3)], [node("n1")], NOW, ids())
    assert plan.create == []
    assert sorted((t["Slot"], t["DesiredState"]) for t in plan.update) == [(2, "remove"), (3, "remove")]


def test_restart_policy_and_delay() -> None:
    s = svc(1)
    failed = running(s, 1, "n1", state="failed", t=NOW - 1)
    plan = reconcile([s], [failed], [node("n1")], NOW, ids())
    assert plan.create == [] and plan.wake_at == NOW - 1 + 5  # waits the 5 s default delay
    plan = reconcile([s], [failed], [node("n1")], NOW + 5, ids())
    assert [t["Slot"] for t in plan.create] == [1]
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(failed["ID"], "shutdown")]
    # condition none: never restarted; on-failure: not after a clean exit
    s_none = svc(1, RestartPolicy={"Condition": "none"})
    assert reconcile([s_none], [running(s_none, 1, "n1", state="failed")], [node("n1")], NOW, ids()).create == []
    s_onf = svc(1, RestartPolicy={"Condition": "on-failure", "Delay": 0})
    assert reconcile([s_onf], [running(s_onf, 1, "n1", state="complete")], [node("n1")], NOW, ids()).create == []
    assert len(reconcile([s_onf], [running(s_onf, 1, "n1", state="failed")], [node("n1")], NOW, ids()).create) == 1
    # MaxAttempts: 2 runs already in history -> no more
    s_max = svc(1, RestartPolicy={"Condition": "any", "Delay": 0, "MaxAttempts": 2})
    hist = [running(s_max, 1, "n1", state="failed", t=NOW - 50 + i) for i in range(3)]
    hist[0]["DesiredState"] = hist[1]["DesiredState"] = "shutdown"
    hist[0]["ID"], hist[1]["ID"] = "h0", "h1"
    assert reconcile([s_max], hist, [node("n1")], NOW, ids()).create == []


def test_node_down_and_drain_replace_elsewhere() -> None:
    s = svc(2)
    t1, t2 = running(s, 1, "n1"), running(s, 2, "n2")
    plan = reconcile([s], [t1, t2], [node("n1", state="down"), node("n2", avail="drain")], NOW, ids())
    assert sorted(t["Slot"] for t in plan.create) == [1, 2]
    # the drained node's task is shut down; the down node's is parked (it may still run: it is
    # kept until the node comes back, tests/unit/test_orchestrator_blips.py)
    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [(t2["ID"], "shutdown")]


def test_rolling_update_respects_parallelism() -> None:
    """Stop-first (the default): the old task is asked to stop first, its replacement comes
    once it has stopped; one slot at a time (more in tests/unit/test_orchestrator_update.py)."""
    old = svc(3)
    tasks = [running(old, i, "n1") for i in (1, 2, 3)]
    new = svc(3)
    new["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = "busybox:1.36"
    new["Version"] = {"Index": 8}  # the store gives the updated service a new index
    plan = reconcile([new], copy.deepcopy(tasks), [node("n1")], NOW, ids())
    assert plan.create == []
    assert [(t["Slot"], t["DesiredState"]) for t in plan.update] == [(1, "shutdown")]  # default Parallelism 1
    shut = copy.deepcopy(tasks)
    shut[0]["DesiredState"] = "shutdown"
    shut[0]["Status"] = {"State": "shutdown", "Timestamp": now_rfc3339(NOW)}
    plan = reconcile([new], copy.deepcopy(shut), [node("n1")], NOW + 1, ids(), plan.progress)
    assert [t["Slot"] for t in plan.create] == [1] and plan.update == []
    assert plan.create[0]["Spec"]["ContainerSpec"]["Image"] == "busybox:1.36"
    new["Spec"]["UpdateConfig"] = {"Parallelism": 0}
    plan = reconcile([new], copy.deepcopy(tasks), [node("n1")], NOW, ids())
    assert sorted(t["Slot"] for t in plan.update if t["DesiredState"] == "shutdown") == [1, 2, 3]


def test_service_removed_and_status() -> None:
    s = svc(2)
    tasks = [running(s, 1, "n1"), running(s, 2, "n2")]
    plan = reconcile([], copy.deepcopy(tasks), [node("n1"), node("n2")], NOW, ids())
    assert [t["DesiredState"] for t in plan.update] == ["remove", "remove"]
    assert service_status(s, tasks, [node("n1"), node("n2", state="down")]) == {
        "RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0}


def test_reaper_rules() -> None:
    s = svc(1)
    hist = [running(s, 1, "n1", state="failed", t=NOW - 100 + i) for i in range(8)]
    for i, h in enumerate(hist):
        h["ID"] = f"h{i}"
        h["DesiredState"] = "shutdown"
    cur = running(s, 1, "n1", t=NOW)
    removed_live = running(s, 2, "n1")
    removed_live["DesiredState"] = "remove"
    removed_dead = running(s, 3, "n1", state="shutdown")
    removed_dead["DesiredState"] = "remove"
    on_down = running(s, 4, "n2")
    on_down["DesiredState"] = "remove"
    out = reap([*hist, cur, removed_live, removed_dead, on_down], [node("n1"), node("n2", state="down")], [s], None)
    assert set(out) == {"h0", "h1", "h2", "h3", removed_dead["ID"], on_down["ID"]}  # 9 in slot 1 -> keep 5
    cluster = {"ID": "c", "Spec": {"Orchestration": {"TaskHistoryRetentionLimit": -1}}}
    assert set(reap([*hist, cur], [node("n1")], [s], cluster)) == set()


async def test_loops_converge_scale_and_remove(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(creating("nodes", *[node(f"n{i}") for i in (1, 2, 3)]))
    loops: list[Any] = [Orchestrator(store, debounce=0.005), Scheduler(store, debounce=0.005), TaskReaper(store, debounce=0.005)]
    runners = [asyncio.create_task(lp.run()) for lp in loops]

    async def worker_stand_in() -> None:
        """Test stand-in for the workers: runs assigned tasks, stops tasks asked to stop."""
        w = store.watch(["tasks"])
        async for _ in w:
            def fn(tx: WriteTx) -> None:
                for t in tx.list("tasks"):
                    st = t["Status"]["State"]
                    if t["DesiredState"] == "running" and st == "assigned":
                        t["Status"] = {"State": "running", "Timestamp": now_rfc3339()}
                        tx.update("tasks", t)
                    elif t["DesiredState"] in ("shutdown", "remove") and st in ("assigned", "running"):
                        t["Status"] = {"State": "shutdown", "Timestamp": now_rfc3339()}
                        tx.update("tasks", t)
            await store.update(fn)

    runners.append(asyncio.create_task(worker_stand_in()))

    async def wait_for(pred: Any) -> list[dict[str, Any]]:
        def matched() -> tuple[list[dict[str, Any]]] | None:
            ts = store.view().list("tasks")
            return (ts,) if pred(ts) else None  # a tuple: an empty task list may be what we wait for

        return (await wait_until(matched, 10, "the tasks to reach the expected state"))[0]

    def live(ts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [t for t in ts if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]

    try:
        s = svc(3)
        await store.update(lambda tx: tx.create("services", s))
        ts = await wait_for(lambda ts: len(live(ts)) == 3)
        assert sorted(t["NodeID"] for t in live(ts)) == ["n1", "n2", "n3"]  # spread

        def scale(n: int) -> Any:
            def fn(tx: WriteTx) -> None:
                cur = tx.get("services", "s1")
                assert cur is not None
                cur["Spec"]["Mode"]["Replicated"]["Replicas"] = n
                tx.update("services", cur)
            return fn

        await store.update(scale(5))
        await wait_for(lambda ts: len(live(ts)) == 5)
        await store.update(scale(2))
        ts = await wait_for(lambda ts: len(ts) == 2 and len(live(ts)) == 2)
        assert sorted(t["Slot"] for t in ts) == [1, 2]

        # node down: its task is replaced on another node
        victim = next(t for t in ts)
        def down(tx: WriteTx) -> None:
            n = tx.get("nodes", victim["NodeID"])
            assert n is not None
            n["Status"]["State"] = "down"
            tx.update("nodes", n)
        await store.update(down)
        ts = await wait_for(lambda ts: len([t for t in live(ts) if t["NodeID"] != victim["NodeID"]]) == 2)
        # the down node's task is parked, not shut down: it may still run (test_orchestrator_blips.py)
        assert [t["ID"] for t in live(ts) if t["NodeID"] == victim["NodeID"]] == [victim["ID"]]

        await store.update(lambda tx: tx.delete("services", "s1"))
        await wait_for(lambda ts: all(t["NodeID"] == victim["NodeID"] for t in ts))
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await store.close()
