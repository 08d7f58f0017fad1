"""The scheduler with nodes sharing a local-bridge subnet: bridge addresses are node-local (like
Docker's ``docker_gwbridge``), so once the pool's subnets are all used nodes share them, and the
scheduler keeps addresses per (node, address): the same address on two nodes is two allocations."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from manager.ipam import BridgeIPAM, IPAMError, NodeSubnet
from manager.scheduler import Scheduler
from manager.store import Event, Store
from tests.stores import open_store
from tests.unit.test_scheduler_filters import node, task
from tests.unit.test_scheduler_loop import change, create, placed_on


def bridge_addr(store: Store, tid: str) -> str:
    t = store.view().get("tasks", tid)
    assert t is not None
    return str(t["NetworksAttachments"][0]["Addresses"][0])


async def test_1000_nodes_all_get_a_subnet_and_can_host_tasks(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        await create(store, "nodes", *[node(f"n{i:04}") for i in range(1000)])
        sched = Scheduler(store)
        sched.rebuild()
        await sched.tick()
        view = store.view()
        subs = [view.get("nodes", f"n{i:04}")["ShoalBridge"]["Subnet"] for i in range(1000)]  # type: ignore[index]
        counts = Counter(subs)
        assert len(counts) == 255 and set(counts.values()) == {3, 4}
        # one task per node (spread): every node takes one
        await create(store, "tasks", *[task(f"t{i:04}", slot=i) for i in range(1000)])
        sched.pending |= {f"t{i:04}" for i in range(1000)}
        assert await sched.tick() == 1000
        ts = store.view().list("tasks")
        assert len({t["NodeID"] for t in ts}) == 1000
        for t in ts:
            sub = store.view().get("nodes", t["NodeID"])["ShoalBridge"]  # type: ignore[index]
            att = t["NetworksAttachments"][0]
            assert att["Network"]["IPAMOptions"]["Configs"] == [sub]
            assert att["Addresses"][0] == sub["Subnet"].replace(".0/24", ".2/24")  # each node's first
    finally:
        await store.close()


async def test_shared_subnet_tasks_allocate_and_release_per_node(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    sched = Scheduler(store, ipam=BridgeIPAM("10.200.0.0/23", 24), debounce=0.01, max_latency=60.0)
    runner = asyncio.create_task(sched.run())
    try:
        await create(store, "nodes", node("a"), node("b"))
        await create(store, "tasks", task("a1", node_id="a"), task("b1", slot=2, node_id="b"))
        assert await placed_on(store, "a1") == "a" and await placed_on(store, "b1") == "b"
        view = store.view()
        assert view.get("nodes", "a")["ShoalBridge"] == view.get("nodes", "b")["ShoalBridge"]  # type: ignore[index]
        assert bridge_addr(store, "a1") == bridge_addr(store, "b1") == "10.200.1.2/24"
        # a1 ends: a's address is freed, b's stays taken
        await change(store, "tasks", "a1", Status={"State": "failed"})
        await create(store, "tasks", task("b2", slot=3, node_id="b"))
        assert await placed_on(store, "b2") == "b"
        assert bridge_addr(store, "b2") == "10.200.1.3/24"
        assert sched.ipam.in_use("a") == 0 and sched.ipam.in_use("b") == 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()


async def test_rebuild_from_store_with_shared_subnets(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        await create(store, "nodes", node("a"), node("b"), node("c"))
        sched = Scheduler(store, ipam=BridgeIPAM("10.200.0.0/22", 24))  # 3 subnets
        sched.rebuild()
        await sched.tick()
        await create(store, "nodes", node("d"))  # shares with a
        sched.rebuild()
        await sched.tick()
        await create(store, "tasks", *[task(f"{n}{i}", slot=10 * ord(n) + i, node_id=n)
                                       for n in "ad" for i in range(3)])
        sched.rebuild()
        assert await sched.tick() == 6
        assert bridge_addr(store, "a0") == bridge_addr(store, "d0") == "10.200.1.2/24"
        # a restarted scheduler (or one rebuilding after a failed pass) gets the same state back
        fresh = Scheduler(store, ipam=BridgeIPAM("10.200.0.0/22", 24))
        fresh.rebuild()
        assert fresh.ipam.users("10.200.1.0/24") == 2
        assert (fresh.ipam.in_use("a"), fresh.ipam.in_use("d")) == (3, 3)
        assert fresh._addr_owner[("a", "10.200.1.2/24")] == "a0"
        assert fresh._addr_owner[("d", "10.200.1.2/24")] == "d0"
        await create(store, "tasks", task("a3", slot=999, node_id="a"), task("d3", slot=998, node_id="d"))
        fresh.pending |= {"a3", "d3"}
        assert await fresh.tick() == 2
        assert bridge_addr(store, "a3") == bridge_addr(store, "d3") == "10.200.1.5/24"
    finally:
        await store.close()


async def test_a_removed_node_frees_its_pool_not_its_neighbours(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        await create(store, "nodes", node("a"), node("b"))
        sched = Scheduler(store, ipam=BridgeIPAM("10.200.0.0/23", 24))
        sched.rebuild()
        await sched.tick()
        await create(store, "tasks", task("a1", node_id="a"), task("b1", slot=2, node_id="b"))
        sched.pending |= {"a1", "b1"}
        assert await sched.tick() == 2
        gone = store.view().get("nodes", "a")
        assert gone is not None
        await store.update(lambda tx: tx.delete("nodes", "a"))
        sched.observe(Event("delete", "nodes", gone, None))
        assert sched.ipam.node_subnet("a") is None and sched.ipam.users("10.200.1.0/24") == 1
        assert sched.ipam.in_use("b") == 1
        # the removed node's task ending later releases nothing of b's
        a1 = store.view().get("tasks", "a1")
        assert a1 is not None
        sched.observe(Event("delete", "tasks", a1, None))
        assert sched.ipam.in_use("b") == 1
    finally:
        await store.close()


class _NoSubnetFor(BridgeIPAM):
    """An IPAM that cannot give node ``n3`` a subnet (the pool no longer runs out of subnets, so
    this stands in for any assignment error)."""

    def assign_node(self, node_id: str) -> NodeSubnet:
        if node_id == "n3":
            raise IPAMError("no subnet for this node")
        return super().assign_node(node_id)


async def test_a_node_without_a_subnet_is_logged_once_not_on_every_pass(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        sched = Scheduler(store, ipam=_NoSubnetFor("10.200.0.0/22", 24))
        await create(store, "nodes", *[node(f"n{i}") for i in range(4)])
        sched.rebuild()
        assert isinstance(sched.ipam, _NoSubnetFor)  # the rebuild keeps the IPAM's kind
        with caplog.at_level(logging.ERROR, logger="manager.scheduler.loop"):
            for _ in range(3):
                await sched.tick()
        said = [r for r in caplog.records if "no subnet for this node" in r.getMessage()]
        assert len(said) == 1
        view = store.view()
        got: list[Any] = [(view.get("nodes", f"n{i}") or {}).get("ShoalBridge") for i in range(4)]
        assert [bool(g) for g in got] == [True, True, True, False]
        assert got[0] != got[1] != got[2] != got[0]
    finally:
        await store.close()
