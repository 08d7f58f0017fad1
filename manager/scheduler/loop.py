"""The scheduler's loop over the store: :class:`Scheduler`.

It keeps the index of nodes (:class:`~manager.scheduler.nodeset.NodeSet`) and the set of pending
task IDs up to date from the store's events, one task or node at a time, and runs a pass after
each batch of events (debounce 50 ms of quiet, at most 0.5 s: swarmkit caps a batch at 1 s,
SWARM-FACTS 1.2; half that keeps "placed within a second" true under a steady stream of events,
pass included). A pass places the
pending tasks (:func:`~manager.scheduler.placement.schedule`) and commits, in one store update:
``NodeID``, ``Status.State = "assigned"``, and the task's local bridge address from the node's
subnet as ``NetworksAttachments[0]``, followed by the overlay attachments the network allocator
wrote before the task became pending (docs/contracts.md). A task no node can take stays
``pending`` with ``Status.Err = "no suitable node (…)"``, written only when the message changes.

Because every node change (joins, labels, availability, status) and every task change (a task
ending frees its reservations, host ports and max-replicas share) is an event, a pending task is
placed in the pass that follows the change that makes room for it — no timer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from manager.ipam import BridgeIPAM, IPAMError
from manager.scheduler.nodeset import NodeSet
from manager.scheduler.placement import schedule
from manager.store import Event, Store, WriteTx
from shoal.base.taskstate import COMPLETE, TERMINAL_STATES
from shoal.base.util import now_rfc3339, wait_timeout
from shoal.base.views import Node, Task, task_desired_order, task_state

__all__ = ["Scheduler", "BRIDGE_NETWORK_ID", "bridge_attachment", "is_pending"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

BRIDGE_NETWORK_ID = "shoal-bridge"


def is_pending(task: Obj) -> bool:
    """Whether the scheduler should place the task dict ``task``: ``pending`` with desired state
    at most ``complete`` (a job's); one with a ``NodeID`` already (a global service's) is only
    checked against that node."""
    return task_state(task) == "pending" and task_desired_order(task) <= COMPLETE


def bridge_attachment(subnet: str, gateway: str, address: str) -> Obj:
    """The ``NetworksAttachments[0]`` entry for the node-local bridge (docs/contracts.md)."""
    return {
        "Network": {
            "ID": BRIDGE_NETWORK_ID,
            "Spec": {"Name": "bridge", "Driver": "bridge", "Scope": "local"},
            "DriverState": {"Name": "bridge"},
            "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": gateway}]},
        },
        "Addresses": [address],
    }


def _task_addresses(task: Obj) -> list[tuple[str, str]]:
    """``[(node ID, "10.200.K.X/24")]``: the task's local-bridge addresses with its ``NodeID``
    (bridge addresses are node-local and nodes may share a subnet, so an address alone does not
    say whose it is); empty for a task without a ``NodeID``."""
    nid = task.get("NodeID")
    if not nid:
        return []
    out: list[tuple[str, str]] = []
    for att in task.get("NetworksAttachments") or []:
        if ((att.get("Network") or {}).get("ID")) == BRIDGE_NETWORK_ID:
            out.extend((str(nid), str(a)) for a in att.get("Addresses") or [])
    return out


class Scheduler:
    """The scheduling loop over ``store``; owns the bridge IPAM (``ipam``), the index of nodes
    (``nodes``) and the pending task IDs (``pending``).

    ``await run()`` until cancelled. ``debounce`` seconds of quiet (default 0.05) or
    ``max_latency`` seconds (default 0.5) end a batch of events. ``clock`` (default
    :func:`time.time`, seconds since the epoch) dates the task failures the faulty-node rule
    counts. Node subnets: every node without ``ShoalBridge`` gets one from the IPAM in the next
    pass (nodes share subnets once the pool's are all used: the addresses are node-local, so
    they are tracked per (node, address)).
    """

    def __init__(self, store: Store, ipam: BridgeIPAM | None = None, debounce: float = 0.05,
                 max_latency: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ipam = ipam or BridgeIPAM()
        self.debounce = debounce
        self.max_latency = max_latency
        self.clock = clock
        self.nodes = NodeSet()
        self.pending: set[str] = set()
        self._addr_owner: dict[tuple[str, str], str] = {}  # (node ID, address) -> task ID
        self._need_subnet: set[str] = set()  # IDs of nodes stored without a ShoalBridge subnet
        self.passes = 0
        self._told: dict[str, str] = {}
        """Node ID → the last reason it got no subnet, as logged (once, not on every pass)."""

    def rebuild(self) -> None:
        """Rebuild the IPAM (node subnets; addresses of tasks that are not terminal), the index of
        nodes (with the failures of the last 5 minutes the store still shows) and the pending set
        from the committed store."""
        self.ipam = type(self.ipam)(str(self.ipam.pool), self.ipam.prefix)
        self._addr_owner.clear()
        view = self.store.view()
        nodes = view.list_shallow("nodes")
        tasks = view.list_shallow("tasks")
        for n in nodes:
            sb = Node(n).bridge
            if sb.get("Subnet"):
                try:
                    self.ipam.reserve_node(str(n["ID"]), str(sb["Subnet"]))
                except IPAMError as e:
                    log.error("node %s: %s", n["ID"], e)
        for t in tasks:
            if task_state(t) in TERMINAL_STATES:
                continue
            for key in _task_addresses(t):
                try:
                    self.ipam.reserve(*key)
                    self._addr_owner[key] = str(t["ID"])
                except IPAMError as e:
                    log.error("task %s: %s", t["ID"], e)
        self.nodes = NodeSet.from_objects(nodes, tasks, now=self.clock())
        self._need_subnet = {str(n["ID"]) for n in nodes if not Node(n).bridge.get("Subnet")}
        self.pending = {str(t["ID"]) for t in tasks if is_pending(t)}

    def observe(self, ev: Event) -> None:
        """Apply one store event to the index, the pending set and the IPAM."""
        if ev.table == "tasks":
            tid = str(ev.obj["ID"])
            if ev.action == "delete":
                self.nodes.forget_task(tid)
                self.pending.discard(tid)
                self._release_task(ev.obj)
                return
            self.nodes.observe_task(ev.obj, ev.old, now=self.clock())
            if is_pending(ev.obj):
                self.pending.add(tid)
            else:
                self.pending.discard(tid)
            if task_state(ev.obj) in TERMINAL_STATES:
                self._release_task(ev.obj)
        elif ev.table == "nodes":
            nid = str(ev.obj["ID"])
            if ev.action == "delete":
                self.nodes.remove_node(nid)
                self.ipam.release_node(nid)
                self._need_subnet.discard(nid)
            else:
                self.nodes.set_node(ev.obj)
                if Node(ev.obj).bridge.get("Subnet"):
                    self._need_subnet.discard(nid)
                else:
                    self._need_subnet.add(nid)

    def _release_task(self, task: Obj) -> None:
        for key in _task_addresses(task):
            if self._addr_owner.get(key) == task.get("ID"):
                del self._addr_owner[key]
                self.ipam.release(*key)

    def _pass(self, tx: WriteTx) -> int:
        """One scheduling pass inside a store transaction; returns how many tasks were placed.
        Reads only the nodes that need a subnet and the pending tasks (never every node or task)."""
        now = now_rfc3339()
        for nid in sorted(self._need_subnet):
            n = tx.get_shallow("nodes", nid)
            if n is None or Node(n).bridge.get("Subnet"):
                self._need_subnet.discard(nid)
                continue
            try:
                n["ShoalBridge"] = self.ipam.assign_node(nid).as_dict()
            except IPAMError as e:
                if self._told.get(nid) != str(e):
                    self._told[nid] = str(e)
                    log.error("node %s: %s", nid, e)
                continue
            self._told.pop(nid, None)
            tx.update("nodes", n)
            self._need_subnet.discard(nid)
        pending: list[Obj] = []
        # shallow copies: a pass only sets top-level keys of the tasks it places (ReadTx.get_shallow)
        for tid in sorted(self.pending):
            t = tx.get_shallow("tasks", tid)
            if t is None or not is_pending(t):
                self.pending.discard(tid)
            else:
                pending.append(t)
        if not pending:
            return 0
        # nodes without a subnet cannot host bridge-attached tasks yet
        no_subnet = {n.id for n in self.nodes if self.ipam.node_subnet(n.id) is None}
        dec = schedule(self.nodes, pending, now=self.clock(), exclude=no_subnet)
        by_id = {str(t["ID"]): t for t in pending}
        placed = 0
        for tid, nid in dec.placed.items():
            t = by_id[tid]
            sub = self.ipam.node_subnet(nid)
            assert sub is not None
            try:
                addr = self.ipam.allocate(nid)
            except IPAMError as e:
                self.nodes.forget_task(tid)
                dec.failed[tid] = f"no suitable node ({e})"
                continue
            self._addr_owner[(nid, addr)] = tid
            t["NodeID"] = nid
            t["Status"] = {"Timestamp": now, "State": "assigned", "Message": "scheduler assigned task to node"}
            # the bridge first (eth0), then the overlay attachments the network allocator wrote
            overlays = [a for a in t.get("NetworksAttachments") or []
                        if isinstance(a, dict) and (a.get("Network") or {}).get("ID") != BRIDGE_NETWORK_ID]
            t["NetworksAttachments"] = [bridge_attachment(sub.subnet, sub.gateway, addr), *overlays]
            tx.update("tasks", t, shallow=True)  # (a shallow copy whose top-level keys were set)
            self.pending.discard(tid)
            placed += 1
        for tid, msg in dec.failed.items():
            t = by_id[tid]
            if Task(t).status.get("Err") != msg:
                t["Status"] = {"Timestamp": now, "State": "pending", "Message": "pending task scheduling", "Err": msg}
                tx.update("tasks", t, shallow=True)
        return placed

    async def tick(self) -> int:
        """Run one pass now; returns how many tasks were placed."""
        self.passes += 1
        try:
            return await self.store.update(self._pass)
        except Exception:
            # what a transaction that did not commit placed and allocated must be undone
            log.exception("scheduler pass failed; rebuilding the IPAM and the node index from the store")
            self.rebuild()
            return 0

    async def run(self) -> None:
        """Watch the store and schedule until cancelled."""
        watch = self.store.watch(["tasks", "nodes"], copy=False)  # the index only reads the events' objects
        try:
            self.rebuild()
            await self.tick()
            while True:
                self.observe(await watch.__anext__())
                start = time.monotonic()
                while time.monotonic() - start < self.max_latency:
                    try:
                        self.observe(await wait_timeout(watch.__anext__(), self.debounce))
                    except TimeoutError:
                        break
                    except StopAsyncIteration:
                        return
                for ev in watch.drain():
                    self.observe(ev)
                await self.tick()
        except StopAsyncIteration:
            return
        finally:
            watch.close()
