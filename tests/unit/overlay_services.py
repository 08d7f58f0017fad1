"""What the manager-side unit tests of services on overlay networks share
(tests/unit/test_service_networks.py, tests/unit/test_service_endpoints.py): a control-API context
on a real store (single-voter Raft log on a temp dir) holding the cluster and two ready nodes, the
manager's loops with a worker test double, a service spec, and readers of a service's tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from manager.allocator.loop import NetworkAllocatorLoop
from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import BRIDGE_NETWORK_ID, Scheduler
from manager.specs import default_swarm_spec
from manager.store import Store
from tests.stores import open_store
from tests.unit.test_api import _node, creating
from tests.unit.test_controlapi import Ctx
from tests.unit.test_orchestrator_update import WorkerDouble

__all__ = ["Obj", "cluster_ctx", "live_tasks", "overlay_attachments", "running_loops", "service_spec"]

Obj = dict[str, Any]


@asynccontextmanager
async def cluster_ctx(root: Path) -> AsyncIterator[Ctx]:
    """A control-API context on a real store under ``root/raft`` holding the cluster object and two
    ready worker nodes (``node1abc``/``h1``, ``node2abc``/``h2``); the store is closed on exit."""
    store = await open_store(root / "raft")
    try:
        await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
        await store.update(creating("nodes", *[_node(f"node{i}abc", f"h{i}") for i in (1, 2)]))
        yield Ctx(store)
    finally:
        await store.close()


@asynccontextmanager
async def running_loops(store: Store) -> AsyncIterator[None]:
    """The orchestrator, network allocator, scheduler and reaper loops and a worker double (tasks
    run after 0.01 s) running on ``store`` (debounce 0.005 s); cancelled on exit."""
    runners = [asyncio.create_task(lp.run()) for lp in (
        Orchestrator(store, debounce=0.005), NetworkAllocatorLoop(store, debounce=0.005),
        Scheduler(store, debounce=0.005), TaskReaper(store, debounce=0.005), WorkerDouble(store, 0.01, 0.01))]
    try:
        yield
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)


def service_spec(name: str = "web", replicas: int = 2, nets: list[str] | None = None, **extra: Any) -> Obj:
    """A replicated busybox service spec, attached to the networks ``nets`` (targets) when given;
    ``extra`` keys are set on the spec."""
    s: Obj = {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
              "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}
    if nets is not None:
        s["TaskTemplate"]["Networks"] = [{"Target": n} for n in nets]
    s.update(extra)
    return s


def live_tasks(ctx: Ctx, sid: str) -> list[Obj]:
    """Service ``sid``'s tasks whose desired state is ``running``."""
    return [t for t in ctx.store.view().list("tasks")
            if t["ServiceID"] == sid and t["DesiredState"] == "running"]


def overlay_attachments(t: Obj) -> list[Obj]:
    """Task ``t``'s network attachments other than the node's local bridge."""
    return [a for a in t.get("NetworksAttachments") or [] if a["Network"]["ID"] != BRIDGE_NETWORK_ID]
