"""What the scheduler knows of one node: :class:`NodeInfo` (pure).

Follows swarmkit's ``NodeInfo`` (SK: manager/scheduler/nodeinfo.go): the node's attributes that
filters read, its active tasks counted per service and in total, the reservations they hold, the
host-mode ports they publish, and the recent failures of each service's tasks there (the
"faulty node" rule: :data:`MAX_FAILURES` failures of one service version within
:data:`MONITOR_FAILURES` seconds make the node rank last for that service).

Times are seconds since the epoch (floats) given by the caller: nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.base.taskstate import ASSIGNED, COMPLETE, TERMINAL_STATES, state_order
from shoal.base.views import Node, task_desired_order, task_reservations, task_spec_version, task_state

__all__ = ["NodeInfo", "MAX_FAILURES", "MONITOR_FAILURES", "FAILED_STATES", "task_is_active", "host_ports",
           "reservations", "failure_key"]

Obj = dict[str, Any]

MAX_FAILURES = 5
"""Failures of one service version's tasks on a node within :data:`MONITOR_FAILURES` that make
the node rank below every other eligible node for that service (SK: scheduler.go ``maxFailures``)."""
MONITOR_FAILURES = 300.0
"""Seconds a task failure counts against its node (SK: scheduler.go ``monitorFailures`` = 5 min)."""
FAILED_STATES = frozenset({"failed", "rejected"})
"""The task states that count as a failure on the node (SK: scheduler.go ``updateTask``)."""

FailureKey = tuple[str, Any]
"""``(ServiceID, SpecVersion.Index)``: failures are kept per service version, as swarmkit's
``versionedService`` (a new version of a service starts with a clean record)."""


def failure_key(task: Obj) -> FailureKey:
    """The :data:`FailureKey` of the task dict ``task``."""
    return str(task.get("ServiceID", "")), task_spec_version(task)


def task_is_active(task: Obj) -> bool:
    """Whether ``task`` occupies its node: placed (``NodeID`` set, past ``pending``: a
    pre-assigned task counts once the scheduler accepts it), desired to run (desired state at most
    ``complete``) and not yet terminal (``Status.State`` before ``complete``)."""
    return (
        bool(task.get("NodeID"))
        and task_desired_order(task) <= COMPLETE
        and state_order(task_state(task)) >= ASSIGNED
        and task_state(task) not in TERMINAL_STATES
    )


def host_ports(task: Obj) -> frozenset[tuple[str, int]]:
    """``{(protocol, published port)}`` of the host-mode ports with a published port in ``task``'s
    ``Endpoint.Ports`` (the service's, copied into the task when it was made)."""
    ep = task.get("Endpoint")
    ports = ep.get("Ports") if isinstance(ep, dict) else None
    out = set()
    for p in ports if isinstance(ports, list) else ():
        if isinstance(p, dict) and str(p.get("PublishMode") or "ingress") == "host":
            pub = p.get("PublishedPort")
            if isinstance(pub, int) and not isinstance(pub, bool) and pub > 0:
                out.add((str(p.get("Protocol") or "tcp"), pub))
    return frozenset(out)


def reservations(task: Obj) -> tuple[int, int]:
    """``(NanoCPUs, MemoryBytes)`` the task reserves (``Spec.Resources.Reservations``; 0 when unset)."""
    r = task_reservations(task)
    cpu, mem = r.get("NanoCPUs"), r.get("MemoryBytes")
    return (cpu if isinstance(cpu, int) and cpu > 0 else 0), (mem if isinstance(mem, int) and mem > 0 else 0)


@dataclass
class NodeInfo:
    """One node as the filters and the ranking see it.

    ``nano_cpus`` / ``memory_bytes`` are the node's capacity (``Description.Resources``; 0 when
    the node reports none: then reservations are not counted against it, as a node of unknown
    size). ``reserved_cpus`` / ``reserved_memory`` are the sums of its active tasks' reservations.
    ``service_tasks`` counts its active tasks per ``ServiceID``; ``total_tasks`` all of them;
    ``host_ports`` counts the active tasks holding each host-mode ``(protocol, port)``.
    """

    id: str
    hostname: str = ""
    role: str = "worker"
    availability: str = "active"
    state: str = "ready"
    labels: dict[str, str] = field(default_factory=dict)
    engine_labels: dict[str, str] = field(default_factory=dict)
    os: str = "linux"
    arch: str = "x86_64"
    addr: str = ""
    """``Status.Addr``, the address the node is reached at (the ``node.ip`` constraint)."""
    nano_cpus: int = 0
    memory_bytes: int = 0
    reserved_cpus: int = 0
    reserved_memory: int = 0
    service_tasks: dict[str, int] = field(default_factory=dict)
    total_tasks: int = 0
    host_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    recent_failures: dict[FailureKey, list[float]] = field(default_factory=dict)
    """Failure times (seconds since the epoch, oldest first) per :data:`FailureKey`."""

    @classmethod
    def from_node(cls, node: Obj) -> NodeInfo:
        """A NodeInfo with no tasks from an API ``Node`` object (see :meth:`describe`)."""
        info = cls(id=str(node["ID"]))
        info.describe(node)
        return info

    def describe(self, node: Obj) -> None:
        """Take the node's attributes from the API ``Node`` object ``node`` (``Spec`` role,
        availability, labels; ``Description`` hostname, platform, resources, engine labels;
        ``Status.State`` and ``Addr``), keeping the task counts and failure record."""
        n = Node(node)
        plat, res = n.platform, n.resources
        self.hostname = n.hostname
        self.role = n.role
        self.availability = n.availability
        self.state = n.state
        self.labels = {str(k): str(v) for k, v in n.labels.items()}
        self.engine_labels = {str(k): str(v) for k, v in n.engine_labels.items()}
        self.os = str(plat.get("OS") or "linux")
        self.arch = str(plat.get("Architecture") or "x86_64")
        self.addr = str(n.status.get("Addr") or "")
        cpus, mem = res.get("NanoCPUs"), res.get("MemoryBytes")
        self.nano_cpus = cpus if isinstance(cpus, int) and cpus > 0 else 0
        self.memory_bytes = mem if isinstance(mem, int) and mem > 0 else 0

    @property
    def free_cpus(self) -> int | None:
        """Unreserved NanoCPUs, or None when the node reports no CPU capacity."""
        return self.nano_cpus - self.reserved_cpus if self.nano_cpus else None

    @property
    def free_memory(self) -> int | None:
        """Unreserved memory in bytes, or None when the node reports no memory capacity."""
        return self.memory_bytes - self.reserved_memory if self.memory_bytes else None

    def add_task(self, service_id: str, cpus: int, memory: int, ports: frozenset[tuple[str, int]]) -> None:
        """Count one more active task of ``service_id`` reserving ``cpus`` NanoCPUs and ``memory``
        bytes and holding the host-mode ``ports``."""
        self.service_tasks[service_id] = self.service_tasks.get(service_id, 0) + 1
        self.total_tasks += 1
        self.reserved_cpus += cpus
        self.reserved_memory += memory
        for p in ports:
            self.host_ports[p] = self.host_ports.get(p, 0) + 1

    def remove_task(self, service_id: str, cpus: int, memory: int, ports: frozenset[tuple[str, int]]) -> None:
        """Undo :meth:`add_task` with the same arguments."""
        left = self.service_tasks.get(service_id, 0) - 1
        if left > 0:
            self.service_tasks[service_id] = left
        else:
            self.service_tasks.pop(service_id, None)
        self.total_tasks = max(0, self.total_tasks - 1)
        self.reserved_cpus = max(0, self.reserved_cpus - cpus)
        self.reserved_memory = max(0, self.reserved_memory - memory)
        for p in ports:
            held = self.host_ports.get(p, 0) - 1
            if held > 0:
                self.host_ports[p] = held
            else:
                self.host_ports.pop(p, None)

    def task_failed(self, key: FailureKey, at: float) -> None:
        """Record a failure of a task of ``key`` at ``at`` (seconds since the epoch). Failures
        older than :data:`MONITOR_FAILURES` before ``at`` are dropped, so a record never holds
        more than a window's worth (SK: nodeinfo.go ``taskFailed``)."""
        times = [t for t in self.recent_failures.get(key, []) if at - t < MONITOR_FAILURES]
        times.append(at)
        times.sort()
        self.recent_failures[key] = times[-MAX_FAILURES * 4:]
        for k in [k for k, ts in self.recent_failures.items() if not ts or at - ts[-1] >= MONITOR_FAILURES]:
            del self.recent_failures[k]

    def recent_failure_count(self, key: FailureKey, now: float) -> int:
        """How many failures of ``key`` happened within :data:`MONITOR_FAILURES` before ``now``."""
        return sum(1 for t in self.recent_failures.get(key, ()) if now - t <= MONITOR_FAILURES)

    def faulty(self, key: FailureKey, now: float) -> int:
        """The failure count that ranks this node down for ``key`` (0 below :data:`MAX_FAILURES`)."""
        n = self.recent_failure_count(key, now)
        return n if n >= MAX_FAILURES else 0
