"""The store hands its own objects to the loops (``watch(copy=False)``, ``list_shallow``,
``get_shallow``, ``list_by``, ``listen``) and keeps shallow copies of what the hot loops write,
and tasks of a service share their Spec in memory: all of it is safe only if no loop ever changes
a value inside a stored object. This test runs the real loops through a service's life; before
each log entry is applied, every stored object must still encode as it did after the last one
(a loop writing into a stored object in place is caught at the next commit), and at each step a
replay of the log into a fresh store must give the same tables."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack

from manager.allocator.loop import NetworkAllocatorLoop
from manager.clusterconfig import default_swarm_spec
from manager.events import EventHub
from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.store import Store, WriteTx
from tests.stores import open_store
from tests.unit.test_orchestrator_update import WorkerDouble
from tests.waiting import wait_until


def _replayed(store: Store) -> dict[str, Any]:
    """The tables the log gives when replayed from scratch (snapshot, then every entry)."""
    log = store._log
    state = msgpack.unpackb(Store.rebuild(log.snapshot(), log.entries_from(1)), raw=False, strict_map_key=False)
    return {t: state["tables"].get(t, {}) for t in store._tables}


def _service(replicas: int, env: str) -> dict[str, Any]:
    return {"ID": "s1", "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                                 "UpdateConfig": {"Parallelism": 2},
                                 "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Env": [env]},
                                                  "RestartPolicy": {"Condition": "any", "Delay": 0}}}}


async def test_no_loop_changes_a_stored_object_in_place(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    hub = EventHub()
    hub.attach(store)
    changed_in_place: list[str] = []
    encoded: dict[tuple[str, str], bytes] = {}
    apply = store._apply_entry

    def checking_apply(entry: Any, notify: bool) -> None:
        for table, objs in store._tables.items():
            for oid, obj in objs.items():
                if msgpack.packb(obj, use_bin_type=True) != encoded.get((table, oid)):
                    changed_in_place.append(f"{table} {oid} before entry {entry.index}")
        apply(entry, notify)
        encoded.clear()
        encoded.update(((table, oid), msgpack.packb(obj, use_bin_type=True))
                       for table, objs in store._tables.items() for oid, obj in objs.items())

    store._apply_entry = checking_apply  # type: ignore[method-assign]

    def init(tx: WriteTx) -> None:
        tx.create("cluster", {"ID": "c1", "Spec": default_swarm_spec()})
        for i in (1, 2):
            tx.create("nodes", {"ID": f"n{i}", "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
                                "Description": {"Hostname": f"h{i}"}, "Status": {"State": "ready"}})
    await store.update(init)
    loops: list[Any] = [Orchestrator(store, debounce=0.005), Scheduler(store, debounce=0.005),
                        TaskReaper(store, debounce=0.005), NetworkAllocatorLoop(store, debounce=0.005),
                        WorkerDouble(store, start=0.02, stop=0.02, fails=lambda t: t.get("Slot") == 3)]
    runners = [asyncio.create_task(lp.run()) for lp in loops]

    async def same_as_the_log(what: str) -> None:
        live = {t: dict(objs) for t, objs in store._tables.items()}
        assert live == _replayed(store), f"{what}: a stored object differs from the log's"
        assert changed_in_place == [], f"{what}: stored objects changed in place"

    try:
        await store.update(lambda tx: tx.create("services", _service(4, "A=1")))
        await wait_until(lambda: len(store.view().list_by("tasks", "ServiceID", "s1")) >= 6, 10, "tasks, failures")
        await same_as_the_log("after the create and some failures")

        def update(tx: WriteTx) -> None:
            s = tx.get("services", "s1")
            assert s is not None
            s["Spec"] = _service(2, "A=2")["Spec"]
            tx.update("services", s)
        await store.update(update)
        await wait_until(lambda: sum(1 for t in store.view().list_by("tasks", "ServiceID", "s1")
                                     if t["DesiredState"] == "running"
                                     and t["Spec"]["ContainerSpec"]["Env"] == ["A=2"]) == 2, 10, "updated, scaled")
        await same_as_the_log("after the update and scale-down")
        await store.update(lambda tx: tx.delete("services", "s1"))
        await wait_until(lambda: not store.view().list_by("tasks", "ServiceID", "s1"), 10, "tasks reaped")
        await same_as_the_log("after the removal")
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await store.close()
