"""The scheduler: places pending tasks on nodes (pure core + an async loop over the store).

Follows swarmkit's design (SK: design/scheduler.md, manager/scheduler/filter.go,
scheduler.go; SWARM-FACTS 1.2):

- A filter pipeline (ready/active, resources, constraints, host-mode ports); each filter has ``set_task`` (does it apply to this task?), ``check``
  (does this node pass?) and ``explain`` (why N nodes failed). A task no node passes stays
  ``pending`` with ``Status.Err = "no suitable node (<explanations>)"``.
- Spread: among the nodes that pass, the one with the fewest tasks of this service, then the
  fewest tasks in total, then the lowest hostname / ID (deterministic).
- The loop batches store events (debounce 50 ms, at most 1 s) and commits all assignments of a
  pass in one store update: ``NodeID``, ``Status.State = "assigned"``, and the task's local
  bridge address from the node's subnet as ``NetworksAttachments[0]``, followed by the overlay
  attachments the network allocator wrote before the task became pending (docs/contracts.md).
- A task is placed once and never revisited (no preemption).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from manager.ipam import BridgeIPAM, IPAMError
from manager.specs import SpecError, parse_constraint
from manager.store import Store, WriteTx
from shoal.base.taskstate import RUNNING, TERMINAL_STATES
from shoal.base.util import now_rfc3339, wait_timeout
from shoal.base.views import Node, Task, task_desired_order, task_reservations, task_state

__all__ = [
    "NodeInfo",
    "Filter",
    "ReadyFilter",
    "ResourceFilter",
    "ConstraintFilter",
    "HostPortFilter",
    "default_filters",
    "host_ports",
    "build_node_infos",
    "schedule",
    "Scheduler",
    "BRIDGE_NETWORK_ID",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

BRIDGE_NETWORK_ID = "shoal-bridge"


def task_is_active(task: Obj) -> bool:
    """Whether ``task`` occupies its node (placed, desired to run, not yet terminal)."""
    return (
        bool(task.get("NodeID"))
        and task_desired_order(task) <= RUNNING
        and task_state(task) not in TERMINAL_STATES
    )


@dataclass
class NodeInfo:
    """What the filters and the spread need about one node, plus running counts."""

    id: str
    hostname: str
    role: str
    availability: str
    state: str
    labels: dict[str, str]
    engine_labels: dict[str, str]
    os: str
    arch: str
    nano_cpus: int  # unreserved CPU (ns of CPU per s); 0 = unknown/unlimited
    memory_bytes: int  # unreserved memory; 0 = unknown/unlimited
    service_tasks: dict[str, int] = field(default_factory=dict)
    total_tasks: int = 0
    used_host_ports: set[tuple[str, int]] = field(default_factory=set)
    """(protocol, published port) of the host-mode ports its active tasks hold."""

    @classmethod
    def from_node(cls, node: Obj) -> NodeInfo:
        """Build from an API ``Node`` object."""
        n = Node(node)
        plat, res = n.platform, n.resources
        return cls(
            id=n.id,
            hostname=n.hostname,
            role=n.role,
            availability=n.availability,
            state=n.state,
            labels=dict(n.labels),
            engine_labels=dict(n.engine_labels),
            os=str(plat.get("OS", "linux")),
            arch=str(plat.get("Architecture", "x86_64")),
            nano_cpus=int(res.get("NanoCPUs") or 0),
            memory_bytes=int(res.get("MemoryBytes") or 0),
        )

    def add_task(self, task: Obj) -> None:
        """Count ``task`` as running here and take its reservations off the free resources."""
        sid = str(task.get("ServiceID", ""))
        self.service_tasks[sid] = self.service_tasks.get(sid, 0) + 1
        self.total_tasks += 1
        self.used_host_ports.update(host_ports(task))
        cpu, mem = _reservations(task)
        if self.nano_cpus:
            self.nano_cpus -= cpu
        if self.memory_bytes:
            self.memory_bytes -= mem


def host_ports(task: Obj) -> set[tuple[str, int]]:
    """``{(protocol, published port)}`` of the host-mode ports with a published port in ``task``'s
    ``Endpoint.Ports`` (the service's, copied into the task when it was made)."""
    ep = task.get("Endpoint")
    ports = ep.get("Ports") if isinstance(ep, dict) else None
    out = set()
    for p in ports if isinstance(ports, list) else ():
        if isinstance(p, dict) and str(p.get("PublishMode") or "ingress") == "host":
            pub = p.get("PublishedPort")
            if isinstance(pub, int) and pub > 0:
                out.add((str(p.get("Protocol") or "tcp"), pub))
    return out


def _reservations(task: Obj) -> tuple[int, int]:
    r = task_reservations(task)
    return int(r.get("NanoCPUs") or 0), int(r.get("MemoryBytes") or 0)


class Filter(ABC):
    """One step of the pipeline (SK: manager/scheduler/filter.go)."""

    @abstractmethod
    def set_task(self, task: Obj) -> bool:
        """Prepare for ``task``; return False if this filter does not apply to it."""

    @abstractmethod
    def check(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes for the current task."""

    @abstractmethod
    def explain(self, nodes: int) -> str:
        """Why ``nodes`` nodes failed this filter (becomes part of the task's error)."""


def _nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


class ReadyFilter(Filter):
    """Node status ``ready`` and availability ``active``."""

    def set_task(self, task: Obj) -> bool:
        return True

    def check(self, node: NodeInfo) -> bool:
        return node.state == "ready" and node.availability == "active"

    def explain(self, nodes: int) -> str:
        return f"{_nodes(nodes)} not available for new tasks"


class ResourceFilter(Filter):
    """Enough unreserved CPU and memory for the task's reservations (only if it has any)."""

    def __init__(self) -> None:
        self.cpu = 0
        self.mem = 0

    def set_task(self, task: Obj) -> bool:
        self.cpu, self.mem = _reservations(task)
        return self.cpu > 0 or self.mem > 0

    def check(self, node: NodeInfo) -> bool:
        if self.cpu and node.nano_cpus and node.nano_cpus < self.cpu:
            return False
        return not (self.mem and node.memory_bytes and node.memory_bytes < self.mem)

    def explain(self, nodes: int) -> str:
        return f"insufficient resources on {_nodes(nodes)}"


class ConstraintFilter(Filter):
    """``Placement.Constraints`` (SK: manager/constraint/constraint.go): ``node.id``,
    ``node.hostname``, ``node.role``, ``node.platform.os|arch``, ``node.labels.<k>``,
    ``engine.labels.<k>`` with ``==`` / ``!=``. Values compare case-insensitively except labels."""

    def __init__(self) -> None:
        self.constraints: list[tuple[str, str, str]] = []

    def set_task(self, task: Obj) -> bool:
        raw = Task(task).constraints
        self.constraints = []
        for c in raw:
            try:
                self.constraints.append(parse_constraint(c))
            except SpecError:
                # validated at create; an unparsable one matches nothing
                self.constraints.append(("", "==", "\0"))
        return bool(self.constraints)

    def check(self, node: NodeInfo) -> bool:
        for key, op, value in self.constraints:
            k = key.lower()
            fold = True
            actual: str | None
            if k == "node.id":
                actual = node.id
            elif k == "node.hostname":
                actual = node.hostname
            elif k == "node.role":
                actual = node.role
            elif k == "node.platform.os":
                actual = node.os
            elif k == "node.platform.arch":
                actual = node.arch
            elif k.startswith("node.labels."):
                actual, fold = node.labels.get(key[len("node.labels."):]), False
            elif k.startswith("engine.labels."):
                actual, fold = node.engine_labels.get(key[len("engine.labels."):]), False
            else:
                return False
            equal = actual is not None and (actual.lower() == value.lower() if fold else actual == value)
            if (op == "==") != equal:
                return False
        return True

    def explain(self, nodes: int) -> str:
        return f"scheduling constraints not satisfied on {_nodes(nodes)}"


class HostPortFilter(Filter):
    """A host-mode published port is used at most once per node (SK: filter.go ``HostPortFilter``):
    a node where an active task already holds one of the task's host ports (same protocol and
    published port, :func:`host_ports`) does not pass. Applies to tasks with host-mode ports only."""

    def __init__(self) -> None:
        self.ports: set[tuple[str, int]] = set()

    def set_task(self, task: Obj) -> bool:
        self.ports = host_ports(task)
        return bool(self.ports)

    def check(self, node: NodeInfo) -> bool:
        return not (self.ports & node.used_host_ports)

    def explain(self, nodes: int) -> str:
        return f"host-mode port already in use on {_nodes(nodes)}"


def default_filters() -> list[Filter]:
    """A fresh pipeline: ready/active, resources, constraints, host ports (swarmkit's order)."""
    return [ReadyFilter(), ResourceFilter(), ConstraintFilter(), HostPortFilter()]


def build_node_infos(nodes: Iterable[Obj], tasks: Iterable[Obj]) -> dict[str, NodeInfo]:
    """NodeInfo per node ID, with the active tasks (see :func:`task_is_active`) counted."""
    infos = {str(n["ID"]): NodeInfo.from_node(n) for n in nodes}
    for t in tasks:
        if task_is_active(t):
            info = infos.get(str(t["NodeID"]))
            if info is not None:
                info.add_task(t)
    return infos


@dataclass
class Decisions:
    """Output of :func:`schedule`: ``placed`` task ID → node ID; ``failed`` task ID → message."""

    placed: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def schedule(nodes: dict[str, NodeInfo], tasks: Iterable[Obj], filters: list[Filter] | None = None) -> Decisions:
    """Place ``tasks`` (pending, unassigned) on ``nodes``; ``nodes`` is updated with the new
    placements (counts, reservations) so spreading holds within the batch.

    Tasks are taken in (ServiceID, Slot, ID) order for determinism.
    """
    pipeline = filters if filters is not None else default_filters()
    out = Decisions()
    ordered = sorted(tasks, key=lambda t: (str(t.get("ServiceID", "")), int(t.get("Slot") or 0), str(t["ID"])))
    node_list = sorted(nodes.values(), key=lambda n: (n.hostname, n.id))
    for task in ordered:
        active = [f for f in pipeline if f.set_task(task)]
        fails = [0] * len(active)
        eligible: list[NodeInfo] = []
        for n in node_list:
            for i, f in enumerate(active):
                if not f.check(n):
                    fails[i] += 1
                    break
            else:
                eligible.append(n)
        tid = str(task["ID"])
        if not eligible:
            if not node_list:
                out.failed[tid] = "no suitable node (no nodes available)"
            else:
                why = "; ".join(f.explain(c) for f, c in zip(active, fails, strict=True) if c)
                out.failed[tid] = f"no suitable node ({why})"
            continue
        sid = str(task.get("ServiceID", ""))
        best = min(eligible, key=lambda n: (n.service_tasks.get(sid, 0), n.total_tasks))
        best.add_task(task)
        out.placed[tid] = best.id
        log.debug("task %s -> node %s", tid, best.id)
    return out


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


def _task_addresses(task: Obj) -> list[str]:
    out: list[str] = []
    for att in task.get("NetworksAttachments") or []:
        if ((att.get("Network") or {}).get("ID")) == BRIDGE_NETWORK_ID:
            out.extend(str(a) for a in att.get("Addresses") or [])
    return out


class Scheduler:
    """The scheduling loop over ``store``; owns the bridge IPAM (``ipam``).

    ``await run()`` until cancelled. ``debounce`` seconds of quiet (default 0.05) or
    ``max_latency`` seconds (default 1.0) end a batch. Node subnets: every node without
    ``ShoalBridge`` gets one from the IPAM in the next pass.
    """

    def __init__(self, store: Store, ipam: BridgeIPAM | None = None, debounce: float = 0.05,
                 max_latency: float = 1.0) -> None:
        self.store = store
        self.ipam = ipam or BridgeIPAM()
        self.debounce = debounce
        self.max_latency = max_latency
        self._addr_owner: dict[str, str] = {}  # address -> task ID
        self.passes = 0

    def rebuild(self) -> None:
        """Rebuild the IPAM from the committed store (node subnets; addresses of tasks that
        are not terminal)."""
        self.ipam = BridgeIPAM(str(self.ipam.pool), self.ipam.prefix)
        self._addr_owner.clear()
        view = self.store.view()
        for n in view.list("nodes"):
            sb = Node(n).bridge
            if sb.get("Subnet"):
                try:
                    self.ipam.reserve_node(str(n["ID"]), str(sb["Subnet"]))
                except IPAMError as e:
                    log.error("node %s: %s", n["ID"], e)
        for t in view.list("tasks"):
            if task_state(t) in TERMINAL_STATES:
                continue
            for a in _task_addresses(t):
                try:
                    self.ipam.reserve(a)
                    self._addr_owner[a] = str(t["ID"])
                except IPAMError as e:
                    log.error("task %s: %s", t["ID"], e)

    def _release_task(self, task: Obj) -> None:
        for a in _task_addresses(task):
            if self._addr_owner.get(a) == task.get("ID"):
                del self._addr_owner[a]
                self.ipam.release(a)

    def _pass(self, tx: WriteTx) -> int:
        """One scheduling pass inside a store transaction; returns how many tasks were placed."""
        now = now_rfc3339()
        nodes = tx.list("nodes")
        for n in nodes:
            if not Node(n).bridge.get("Subnet"):
                try:
                    n["ShoalBridge"] = self.ipam.assign_node(str(n["ID"])).as_dict()
                except IPAMError as e:
                    log.error("node %s: %s", n["ID"], e)
                    continue
                tx.update("nodes", n)
        # shallow copies: this pass reads every task but only sets keys of the pending ones it
        # places (ReadTx.list_shallow), so it does not deep-copy the whole table each time
        tasks = tx.list_shallow("tasks")
        pending = [
            t for t in tasks
            if task_state(t) == "pending" and not t.get("NodeID") and task_desired_order(t) <= RUNNING
        ]
        if not pending:
            return 0
        infos = build_node_infos(nodes, tasks)
        # nodes without a subnet cannot host bridge-attached tasks yet
        usable = {nid: i for nid, i in infos.items() if self.ipam.node_subnet(nid) is not None}
        dec = schedule(usable, pending)
        by_id = {str(t["ID"]): t for t in pending}
        placed = 0
        for tid, nid in dec.placed.items():
            t = by_id[tid]
            sub = self.ipam.node_subnet(nid)
            assert sub is not None
            try:
                addr = self.ipam.allocate(nid)
            except IPAMError as e:
                dec.failed[tid] = f"no suitable node ({e})"
                continue
            self._addr_owner[addr] = tid
            t["NodeID"] = nid
            t["Status"] = {"Timestamp": now, "State": "assigned", "Message": "scheduler assigned task to node"}
            # the bridge first (eth0), then the overlay attachments the network allocator wrote
            overlays = [a for a in t.get("NetworksAttachments") or []
                        if isinstance(a, dict) and (a.get("Network") or {}).get("ID") != BRIDGE_NETWORK_ID]
            t["NetworksAttachments"] = [bridge_attachment(sub.subnet, sub.gateway, addr), *overlays]
            tx.update("tasks", t)
            placed += 1
        for tid, msg in dec.failed.items():
            t = by_id[tid]
            if Task(t).status.get("Err") != msg:
                t["Status"] = {"Timestamp": now, "State": "pending", "Message": "pending task scheduling", "Err": msg}
                tx.update("tasks", t)
        return placed

    async def tick(self) -> int:
        """Run one pass now; returns how many tasks were placed."""
        self.passes += 1
        try:
            return await self.store.update(self._pass)
        except Exception:
            # allocations made for a transaction that did not commit must be undone
            log.exception("scheduler pass failed; rebuilding IPAM from the store")
            self.rebuild()
            return 0

    async def run(self) -> None:
        """Watch the store and schedule until cancelled."""
        watch = self.store.watch(["tasks", "nodes"])
        try:
            self.rebuild()
            await self.tick()
            while True:
                ev = await watch.__anext__()
                events = [ev]
                start = time.monotonic()
                while time.monotonic() - start < self.max_latency:
                    try:
                        events.append(await wait_timeout(watch.__anext__(), self.debounce))
                    except TimeoutError:
                        break
                    except StopAsyncIteration:
                        return
                for e in events:
                    if e.table == "tasks" and (e.action == "delete" or task_state(e.obj) in TERMINAL_STATES):
                        self._release_task(e.obj)
                    elif e.table == "nodes" and e.action == "delete":
                        self.ipam.release_node(str(e.obj["ID"]))
                await self.tick()
        except StopAsyncIteration:
            return
        finally:
            watch.close()
