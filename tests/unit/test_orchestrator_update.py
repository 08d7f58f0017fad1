"""Rolling updates in manager.orchestrator (SK: manager/orchestrator/update/updater.go).

The pure core (:func:`reconcile` with its carried :class:`UpdateProgress`) is driven by
:class:`Cluster`, a deterministic test harness: an injected clock, plan application like the
store's, and a hand-played worker (tests move task states by ID). The last test runs the real
loops on a real :class:`Store` over a temp WAL with a worker test double."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from manager.orchestrator import OLD_TASK_TIMEOUT, Orchestrator, reconcile
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.specs import SECOND, task_spec_with_defaults
from manager.store import Store, WriteTx
from shoal.base.taskstate import STATE_ORDER
from shoal.base.util import now_rfc3339
from tests.stores import open_store
from tests.unit.orchestrator_harness import T0, Cluster, service
from tests.waiting import wait_until

Obj = dict[str, Any]


def test_stop_first_one_at_a_time_with_delay_and_monitor() -> None:
    c = Cluster(service(3, Parallelism=1, Delay=5 * SECOND, Order="stop-first"))
    old_ids = sorted(t["ID"] for t in c.current())
    c.user_update(TaskTemplate__ContainerSpec__Env=["X=1"])
    plan = c.step()
    # the first slot's old task is asked to stop; its replacement is NOT created yet
    assert plan.create == []
    assert [t["ID"] for t in plan.update if t["DesiredState"] == "shutdown"] == [old_ids[0]]
    assert c.status() == {"State": "updating", "StartedAt": now_rfc3339(T0), "Message": "update in progress"}
    assert c.step(1).create == [] and c.step(1).create == []  # still stopping (grace period)
    assert c.stop_asked() == [old_ids[0]]
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [1]
    assert plan.create[0]["Spec"]["ContainerSpec"]["Env"] == ["X=1"]
    new1 = plan.create[0]["ID"]
    assert c.step(1).create == []  # the replacement is not running yet: nothing else moves
    c.run_new()
    ran_at = c.now + 1
    plan = c.step(1)  # slot 1 done; the lane waits Delay (5 s) before the next slot
    assert plan.update == [] and plan.wake_at == ran_at + 5
    assert c.step(4.9).update == []
    plan = c.step(0.1)
    assert [t["ID"] for t in plan.update if t["DesiredState"] == "shutdown"] == [old_ids[1]]
    # never two slots down at once, every old task stopped before its replacement exists
    for _ in range(2):
        c.stop_asked()
        created = c.step(1).create
        assert len(created) == 1 and sum(1 for t in c.current() if t["Status"]["State"] != "running") == 1
        c.run_new()
        c.step(1)
        c.step(5)
    assert c.running_images() == ["busybox:1"] * 3
    assert all(t["Spec"]["ContainerSpec"].get("Env") == ["X=1"] for t in c.current())
    assert c.status()["State"] == "updating"  # the last slot's Delay, then one Monitor window (5 s)
    assert c.wake_at is not None
    c.step(c.wake_at - c.now)
    assert c.status()["State"] == "completed" and c.status()["Message"] == "update completed"
    assert c.status()["CompletedAt"] == now_rfc3339(c.now) and c.progress == {}
    assert new1 in {t["ID"] for t in c.current()}


def test_start_first_starts_the_new_task_before_stopping_the_old() -> None:
    c = Cluster(service(2, Order="start-first"))
    old = {t["Slot"]: t["ID"] for t in c.current()}
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    plan = c.step()
    assert [t["Slot"] for t in plan.create] == [1]
    assert not any(t["DesiredState"] == "shutdown" for t in plan.update)
    assert c.tasks[old[1]]["DesiredState"] == "running"  # both run for a while
    c.step(1)
    assert c.tasks[old[1]]["DesiredState"] == "running"
    c.run_new()
    plan = c.step(1)
    assert c.tasks[old[1]]["DesiredState"] == "shutdown"
    assert [t["Slot"] for t in plan.create] == [2]  # no Delay: the next slot at once
    c.run_new()
    c.step(1)
    c.stop_asked()
    c.step(5)
    assert c.running_images() == ["busybox:2", "busybox:2"]
    assert c.status()["State"] == "completed"


def test_parallelism_two_and_zero() -> None:
    c = Cluster(service(5, Parallelism=2))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    plan = c.step()
    assert sorted(t["Slot"] for t in plan.update if t["DesiredState"] == "shutdown") == [1, 2]
    c.stop_asked()
    assert sorted(t["Slot"] for t in c.step(1).create) == [1, 2]
    # one of the two runs: its lane takes slot 3, the other lane is still busy
    first = next(t for t in c.tasks.values() if t["Status"]["State"] == "pending" and t["Slot"] == 1)
    c.place(first["ID"], "n1")
    c.worker(first["ID"], "running")
    plan = c.step(1)
    assert sorted(t["Slot"] for t in plan.update if t["DesiredState"] == "shutdown") == [3]
    c2 = Cluster(service(4, Parallelism=0))
    c2.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    assert sum(1 for t in c2.step().update if t["DesiredState"] == "shutdown") == 4


def _start_update_and_fail(c: Cluster) -> str:
    """Start an update, let slot 1's replacement fail right after it ran; returns its ID."""
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:bad")
    c.step()
    c.stop_asked()
    new = c.step(1).create[0]["ID"]
    c.run_new()
    c.step(1)
    c.worker(new, "failed")
    return str(new)


def test_failure_pauses_the_update_with_swarms_message() -> None:
    # Delay keeps slot 2 from being handed out before the failure is seen (slots already
    # handed out finish their update, as swarmkit's workers do)
    c = Cluster(service(3, Parallelism=1, Delay=30 * SECOND, Monitor=10 * SECOND))
    bad = _start_update_and_fail(c)
    c.step(1)
    st = c.status()
    assert st["State"] == "paused"
    assert st["Message"] == f"update paused due to failure or early termination of task {bad}"
    # paused: the other slots keep the old spec, whatever passes follow
    for _ in range(3):
        c.stop_asked()
        c.run_new()
        c.step(10)
    assert sorted(c.image_of(t) for t in c.current() if t["Slot"] != 1) == ["busybox:1", "busybox:1"]
    assert c.status()["State"] == "paused"
    # a new `service update` resets UpdateStatus and resumes toward the new spec
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:3")
    c.step()
    assert c.status()["State"] == "updating"


def test_failure_after_the_monitor_window_does_not_count() -> None:
    c = Cluster(service(2, Parallelism=1, Monitor=2 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.stop_asked()
    new = c.step(1).create[0]["ID"]
    c.run_new()
    c.step(1)
    c.step(3)  # 3 s after running: out of the window
    c.worker(new, "failed")
    c.step(1)
    assert c.status()["State"] == "updating"


def test_failure_action_continue_carries_on() -> None:
    c = Cluster(service(3, Parallelism=1, FailureAction="continue"))
    _start_update_and_fail(c)
    for _ in range(6):
        c.stop_asked()
        c.run_new()
        c.step(6)
    assert c.status()["State"] == "completed"
    assert [c.image_of(t) for t in c.current()] == ["busybox:bad"] * 3


def test_failure_action_rollback_returns_to_the_previous_spec() -> None:
    svc = service(3, Parallelism=1, FailureAction="rollback")
    svc["Spec"]["RollbackConfig"] = {"Parallelism": 0, "Monitor": 1 * SECOND}
    c = Cluster(svc)
    bad = _start_update_and_fail(c)
    c.step(1)
    st = c.status()
    assert st["State"] == "rollback_started"
    assert st["Message"] == f"update rolled back due to failure or early termination of task {bad}"
    assert c.services["s1"]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:1"
    assert "PreviousSpec" not in c.services["s1"]
    for _ in range(3):
        c.stop_asked()
        c.run_new()
        c.step(2)
    assert c.status()["State"] == "rollback_completed" and c.status()["Message"] == "rollback completed"
    assert [c.image_of(t) for t in c.current()] == ["busybox:1"] * 3


def test_a_failing_rollback_pauses_it() -> None:
    c = Cluster(service(2, Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    for _ in range(8):
        c.stop_asked()
        c.run_new()
        c.step(6)
    assert c.status()["State"] == "completed"
    c.user_update(rollback=True)
    c.step()
    c.stop_asked()
    new = c.step(1).create[0]["ID"]
    assert c.image_of(c.tasks[new]) == "busybox:1"
    c.worker(new, "rejected")
    c.step(1)
    assert c.status()["State"] == "rollback_paused"
    assert c.status()["Message"] == f"rollback paused due to failure or early termination of task {new}"


def test_manual_rollback_uses_rollback_config() -> None:
    svc = service(3, Parallelism=0, Monitor=0)
    svc["Spec"]["RollbackConfig"] = {"Parallelism": 0, "Order": "start-first", "Monitor": 0}
    c = Cluster(svc)
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    for _ in range(3):
        c.stop_asked()
        c.run_new()
        c.step(1)
    assert c.status()["State"] == "completed" and c.running_images() == ["busybox:2"] * 3
    c.user_update(rollback=True)
    plan = c.step()
    # RollbackConfig: all out-of-date slots at once, start-first (nothing stopped yet)
    assert c.status()["State"] == "rollback_started"
    assert c.status()["Message"] == "manually requested rollback"
    assert [c.image_of(t) for t in plan.create] == ["busybox:1"] * 3
    assert not any(t["DesiredState"] == "shutdown" for t in plan.update)
    c.stop_asked()
    c.run_new()
    c.step(1)
    c.stop_asked()
    c.step(1)
    assert c.status()["State"] == "rollback_completed"
    assert c.running_images() == ["busybox:1"] * 3


def test_a_newer_update_supersedes_the_running_one() -> None:
    c = Cluster(service(3, Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.stop_asked()
    c.step(1)
    c.run_new()
    c.step(1)  # slot 1 on busybox:2
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:3")
    plan = c.step(1)
    assert c.status()["State"] == "updating" and c.status()["StartedAt"] == now_rfc3339(c.now)
    assert len([t for t in plan.update if t["DesiredState"] == "shutdown"]) == 1
    target = c.progress["s1"].target
    assert target == task_spec_with_defaults({"ContainerSpec": {"Image": "busybox:3"}})
    # slot 1 (busybox:2) is out of date again; slot 2 was stopping for the superseded update
    # and is refilled with busybox:3 at once; slot 3 is still on busybox:1
    assert c.progress["s1"].total == 2
    for _ in range(8):
        c.stop_asked()
        c.run_new()
        c.step(6)
    assert c.status()["State"] == "completed"
    assert c.running_images() == ["busybox:3"] * 3


def test_scale_only_changes_do_not_update() -> None:
    c = Cluster(service(2))
    before = {t["ID"] for t in c.current()}
    c.user_update(Mode__Replicated__Replicas=4)
    plan = c.step()
    assert len(plan.create) == 2 and plan.services == [] and c.status() is None
    assert not any(t["DesiredState"] != "running" for t in plan.update)
    assert before <= {t["ID"] for t in c.current()} and c.progress == {}
    # ForceUpdate alone does update
    c.run_new()
    c.step()
    c.user_update(TaskTemplate__ForceUpdate=1)
    plan = c.step()
    assert c.status()["State"] == "updating"
    assert len([t for t in plan.update if t["DesiredState"] == "shutdown"]) == 1


def test_scale_down_during_a_stop_first_update_forgets_the_slot() -> None:
    c = Cluster(service(3, Parallelism=0))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()  # all three stopping
    c.services["s1"]["Spec"]["Mode"]["Replicated"]["Replicas"] = 1
    c.step()
    c.stop_asked()
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [1]
    assert sorted(t["Slot"] for t in c.current()) == [1]


@pytest.mark.parametrize("action", ["pause", "rollback"])
def test_scale_down_mid_update_keeps_the_lowest_slots_and_forgets_the_removed_ones(action: str) -> None:
    """3 replicas, stop-first one at a time: slot 1 updated, slot 2's old task stopped and its
    new task pending; scaled to 1: slot 1 stays, slots 2 and 3 (the in-flight new task too)
    are removed, and their removal (the reaper deleting them) is no failure of the update."""
    c = Cluster(service(3, Parallelism=1, Monitor=5 * SECOND, FailureAction=action))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.stop_asked()
    c.step(1)
    c.run_new()
    c.step(1)  # slot 1 runs busybox:2
    c.step(1)
    c.stop_asked()
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [2]  # slot 2's new task, pending
    slot1 = next(t["ID"] for t in c.current() if t["Slot"] == 1)
    c.user_update(Mode__Replicated__Replicas=1)
    plan = c.step(1)
    removed = sorted((t["Slot"], t["ID"]) for t in plan.update if t["DesiredState"] == "remove")
    assert removed == sorted((t["Slot"], t["ID"]) for t in c.tasks.values() if t["Slot"] in (2, 3))
    assert [t["ID"] for t in c.current()] == [slot1] and c.tasks[slot1]["Status"]["State"] == "running"
    prog = c.progress["s1"]
    assert 2 not in prog.in_flight and plan.create == []
    assert all(c.tasks[tid]["Slot"] == 1 for tid in prog.monitored)
    c.stop_asked()
    for tid in [t["ID"] for t in c.tasks.values() if t["DesiredState"] == "remove"]:
        del c.tasks[tid]  # the task reaper
    for _ in range(10):
        plan = c.step(1)
        assert plan.create == [] and plan.update == []
    assert c.status()["State"] == "completed"
    assert c.services["s1"]["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    assert [t["ID"] for t in c.current()] == [slot1] and c.running_images() == ["busybox:2"]


def test_old_task_on_a_down_node_does_not_hold_the_slot() -> None:
    c = Cluster(service(2, Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    stopping = next(t for t in c.tasks.values() if t["DesiredState"] == "shutdown")
    # its node goes down before it reports the stop
    for n in c.nodes:
        if n["ID"] == stopping["NodeID"]:
            n["Status"]["State"] = "down"
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [stopping["Slot"]]


def test_an_old_task_that_never_stops_is_given_up_after_a_minute() -> None:
    c = Cluster(service(2, Parallelism=1))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    plan = c.step()
    assert plan.wake_at == T0 + OLD_TASK_TIMEOUT
    assert c.step(OLD_TASK_TIMEOUT - 1).create == []  # the worker never reports the stop
    plan = c.step(1)
    assert [t["Slot"] for t in plan.create] == [1]


# ------------------------------------------------------------------------------ async, real store


class WorkerDouble:
    """Test double for the workers: takes ``start`` s from assigned to running and ``stop`` s
    from a stop request to shutdown (the stop grace period), writing states to the store; it
    records (monotonic time, event) for every task it sees created or stopped."""

    def __init__(self, store: Store, start: float, stop: float, fails: Callable[[Obj], bool] | None = None) -> None:
        """``fails(task)``: tasks for which it is true fail (exit 1) ``start`` s after running."""
        self.store, self.start, self.stop, self.fails = store, start, stop, fails
        self.events: list[tuple[float, str, str]] = []  # (t, "created"|"stopped"|"running", task ID)
        self._scheduled: set[tuple[str, str]] = set()  # (task ID, state) moves already under way
        self._jobs: set[asyncio.Task[None]] = set()

    async def _set(self, tid: str, state: str, after: float) -> None:
        await asyncio.sleep(after)

        def fn(tx: WriteTx) -> None:
            t = tx.get("tasks", tid)
            if t is not None and STATE_ORDER[state] > STATE_ORDER[t["Status"]["State"]]:  # forward only
                t["Status"] = {"State": state, "Timestamp": now_rfc3339()}
                tx.update("tasks", t)
        await self.store.update(fn)
        self.events.append((time.monotonic(), "stopped" if state == "shutdown" else state, tid))

    async def run(self) -> None:
        w = self.store.watch(["tasks"])
        try:
            async for ev in w:
                t = ev.obj
                tid, st = str(t["ID"]), t["Status"]["State"]
                if ev.action == "create":
                    self.events.append((time.monotonic(), "created", tid))
                if ev.action == "delete":
                    continue
                move: tuple[str, float] | None = None
                if t["DesiredState"] in ("shutdown", "remove") and st in ("assigned", "running"):
                    move = ("shutdown", self.stop)
                elif t["DesiredState"] == "running" and st == "assigned":
                    move = ("running", self.start)
                elif t["DesiredState"] == "running" and st == "running" and self.fails and self.fails(t):
                    move = ("failed", self.start)
                if move is not None and (tid, move[0]) not in self._scheduled:
                    self._scheduled.add((tid, move[0]))
                    task = asyncio.create_task(self._set(tid, *move))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
        finally:
            w.close()
            for j in list(self._jobs):
                j.cancel()


@pytest.mark.asyncio
async def test_loops_roll_stop_first_on_a_real_store(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    nodes = [{"ID": f"n{i}", "Spec": {"Role": "worker", "Availability": "active"}, "Status": {"State": "ready"},
              "Description": {"Hostname": f"n{i}"}} for i in (1, 2, 3)]

    def create_nodes(tx: WriteTx) -> None:
        for n in nodes:
            tx.create("nodes", n)
    await store.update(create_nodes)
    worker = WorkerDouble(store, start=0.05, stop=0.3)
    loops: list[Any] = [Orchestrator(store, debounce=0.005), Scheduler(store, debounce=0.005),
                        TaskReaper(store, debounce=0.005), worker]
    runners = [asyncio.create_task(lp.run()) for lp in loops]

    async def wait_for(pred: Any, timeout: float = 15) -> Any:
        def matched() -> tuple[Any, list[Obj]] | None:
            s, ts = store.view().get("services", "s1"), store.view().list("tasks")
            return (s, ts) if pred(s, ts) else None

        return await wait_until(matched, timeout, "service s1 and its tasks to reach the expected state")

    def live(ts: list[Obj]) -> list[Obj]:
        return [t for t in ts if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]

    try:
        svc = service(3, Parallelism=1, Delay=int(0.4 * SECOND), Monitor=int(0.2 * SECOND), Order="stop-first")
        await store.update(lambda tx: tx.create("services", svc))
        _, ts = await wait_for(lambda s, ts: len(live(ts)) == 3)
        old = {str(t["ID"]) for t in ts}
        t_update = time.monotonic()

        def update(tx: WriteTx) -> None:
            s = tx.get("services", "s1")
            assert s is not None
            s["PreviousSpec"] = copy.deepcopy(s["Spec"])
            s["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] = ["X=1"]
            s.pop("UpdateStatus", None)
            tx.update("services", s)
        await store.update(update)
        s, _ = await wait_for(lambda s, ts: (s.get("UpdateStatus") or {}).get("State") == "updating", 5)
        assert s["UpdateStatus"]["Message"] == "update in progress"
        s, ts = await wait_for(lambda s, ts: (s.get("UpdateStatus") or {}).get("State") == "completed")
        assert s["UpdateStatus"]["Message"] == "update completed"
        cur = live(ts)
        assert len(cur) == 3 and all(t["Spec"]["ContainerSpec"]["Env"] == ["X=1"] for t in cur)

        by_task = {tid: t["Slot"] for t in ts for tid in [str(t["ID"])]}
        stopped = {tid: at for at, what, tid in worker.events if what == "stopped" and tid in old}
        created = sorted((at, tid) for at, what, tid in worker.events if what == "created" and at > t_update)
        assert len(created) == 3 and len(stopped) == 3
        # stop-first: each replacement was created after some old task stopped, one per stop
        stops = sorted(stopped.values())
        for (at, _tid), stop_at in zip(created, stops, strict=True):
            assert at >= stop_at
        # Delay between slots: the next old task is asked to stop only after the previous
        # replacement ran + 0.4 s, so consecutive stops are ≥ start + delay + stop grace apart
        for a, b in itertools.pairwise(stops):
            assert b - a >= 0.4 + 0.3 - 0.05
        assert {by_task[tid] for _, tid in created} == {1, 2, 3}
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await store.close()


def test_the_core_is_deterministic() -> None:
    """Same inputs (clock, IDs, progress) → the same plan, and the inputs are not modified."""
    c = Cluster(service(3, Parallelism=2, Delay=3 * SECOND))
    c.user_update(TaskTemplate__ContainerSpec__Image="busybox:2")
    c.step()
    c.stop_asked()
    args = (list(c.services.values()), list(c.tasks.values()), c.nodes)
    progress = copy.deepcopy(c.progress)

    def plan() -> Any:
        ids = (f"x{i}" for i in itertools.count())
        return reconcile(*copy.deepcopy(args), c.now + 1, lambda: next(ids), c.progress)
    assert plan() == plan()
    assert c.progress == progress
