"""The scheduler's filters (pure): each says whether a node can take a task, and why not.

One class per swarmkit filter (SK: manager/scheduler/filter.go), in the pipeline's order
(SK: pipeline.go ``defaultFilters``): :class:`ReadyFilter`, :class:`ResourceFilter`,
:class:`ConstraintFilter`, :class:`PlatformFilter`, :class:`HostPortFilter`,
:class:`MaxReplicasFilter` (swarmkit's plugin and CSI volume filters have no counterpart: Shoal
has neither). Each has

- ``set_task(task) -> bool``: prepare for the task dict; False when the filter does not apply
  to it (then the pipeline skips it);
- ``check(node) -> bool``: whether the :class:`~manager.scheduler.nodeinfo.NodeInfo` passes;
- ``explain(nodes) -> str``: why ``nodes`` nodes failed it, in swarmkit's words; the pipeline
  joins these into the task's ``no suitable node (…)`` error.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from typing import Any

from manager.scheduler.nodeinfo import NodeInfo, host_ports, reservations
from manager.specs import SpecError, parse_constraint

__all__ = ["Filter", "ReadyFilter", "ResourceFilter", "ConstraintFilter", "PlatformFilter", "HostPortFilter",
           "MaxReplicasFilter", "default_filters", "Constraint", "parse_constraints", "node_matches", "nodes_text",
           "ip_matches", "platform_matches", "normalize_arch"]

Obj = dict[str, Any]

Constraint = tuple[str, str, str]
"""``(key, operator, value)`` as :func:`manager.specs.parse_constraint` returns it."""

NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."


def nodes_text(n: int) -> str:
    """``1 node`` / ``N nodes``."""
    return f"{n} node" if n == 1 else f"{n} nodes"


def parse_constraints(task: Obj) -> list[Constraint]:
    """The task's ``Spec.Placement.Constraints``, parsed. The control API refused bad ones at
    create/update; one that still does not parse (a task stored before a rule changed) becomes a
    constraint no node satisfies."""
    raw = ((task.get("Spec") or {}).get("Placement") or {}).get("Constraints") or []
    out: list[Constraint] = []
    for c in raw if isinstance(raw, list) else ():
        try:
            out.append(parse_constraint(c))
        except SpecError:
            out.append(("", "==", "\0"))
    return out


def _attribute(key: str, node: NodeInfo) -> str | None:
    """The node's value for constraint ``key`` (``""`` when the node lacks it, as swarmkit
    matches an absent label or platform), or None for a key no node has."""
    k = key.lower()
    if k == "node.id":
        return node.id
    if k == "node.hostname":
        return node.hostname
    if k == "node.role":
        return node.role
    if k == "node.platform.os":
        return node.os
    if k == "node.platform.arch":
        return node.arch
    if k.startswith(NODE_LABEL_PREFIX) and len(k) > len(NODE_LABEL_PREFIX):
        return node.labels.get(key[len(NODE_LABEL_PREFIX):], "")  # the label name is case-sensitive
    if k.startswith(ENGINE_LABEL_PREFIX) and len(k) > len(ENGINE_LABEL_PREFIX):
        return node.engine_labels.get(key[len(ENGINE_LABEL_PREFIX):], "")
    return None


def ip_matches(value: str, addr: str) -> bool:
    """Whether the node address ``addr`` is the address ``value`` or lies in the network
    ``value`` (``10.0.0.0/24``); False when either does not parse (SK: constraint.go ``node.ip``)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    try:
        return ip == ipaddress.ip_address(value)
    except ValueError:
        pass
    try:
        return ip in ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False


def node_matches(constraints: list[Constraint], node: NodeInfo) -> bool:
    """Whether ``node`` satisfies every constraint (SK: manager/constraint/constraint.go
    ``NodeMatches``): values compare case-insensitively (Go's ``strings.EqualFold``), label names
    exactly; a node without the label has the value ``""`` (so ``node.labels.x!=y`` holds there);
    ``node.ip`` compares the node's ``Status.Addr`` with an address or a network (CIDR), and an
    expression that is neither satisfies no node; an unknown key is never satisfied."""
    for key, op, value in constraints:
        if key.lower() == "node.ip":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    return False
            if ip_matches(value, node.addr) != (op == "=="):
                return False
            continue
        actual = _attribute(key, node)
        if actual is None:
            return False
        if (actual.casefold() == value.casefold()) != (op == "=="):
            return False
    return True


class Filter(ABC):
    """One step of the pipeline (SK: manager/scheduler/filter.go ``Filter``)."""

    @abstractmethod
    def set_task(self, task: Obj) -> bool:
        """Prepare for ``task``; return False if this filter does not apply to it."""

    @abstractmethod
    def check(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes for the current task."""

    @abstractmethod
    def explain(self, nodes: int) -> str:
        """Why ``nodes`` nodes failed this filter (becomes part of the task's error)."""


class ReadyFilter(Filter):
    """Node ``Status.State`` ``ready`` and ``Spec.Availability`` ``active`` (a paused or drained
    node takes no new tasks)."""

    def set_task(self, task: Obj) -> bool:
        return True

    def check(self, node: NodeInfo) -> bool:
        return node.state == "ready" and node.availability == "active"

    def explain(self, nodes: int) -> str:
        return f"{nodes_text(nodes)} not available for new tasks"


class ResourceFilter(Filter):
    """The task's ``Resources.Reservations`` (NanoCPUs, MemoryBytes) fit in what the node's
    active tasks have not reserved of its ``Description.Resources``; applies to tasks that
    reserve something. A node reporting no capacity for a resource is not limited in it."""

    def __init__(self) -> None:
        self.cpus = 0
        self.memory = 0

    def set_task(self, task: Obj) -> bool:
        self.cpus, self.memory = reservations(task)
        return self.cpus > 0 or self.memory > 0

    def check(self, node: NodeInfo) -> bool:
        free_cpus, free_memory = node.free_cpus, node.free_memory
        if self.cpus and free_cpus is not None and free_cpus < self.cpus:
            return False
        return not (self.memory and free_memory is not None and free_memory < self.memory)

    def explain(self, nodes: int) -> str:
        return f"insufficient resources on {nodes_text(nodes)}"


class ConstraintFilter(Filter):
    """``Placement.Constraints`` (:func:`node_matches`); applies to tasks that have any."""

    def __init__(self) -> None:
        self.constraints: list[Constraint] = []

    def set_task(self, task: Obj) -> bool:
        self.constraints = parse_constraints(task)
        return bool(self.constraints)

    def check(self, node: NodeInfo) -> bool:
        return node_matches(self.constraints, node)

    def explain(self, nodes: int) -> str:
        return f"scheduling constraints not satisfied on {nodes_text(nodes)}"


def normalize_arch(arch: str) -> str:
    """An architecture name as the image index writes it: ``x86_64`` → ``amd64``, ``aarch64`` →
    ``arm64`` (the others unchanged)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)


def platform_matches(platform: Obj, os: str, arch: str) -> bool:
    """Whether a node of ``os`` / ``arch`` runs the image platform ``platform`` (``{"OS",
    "Architecture"}``; an empty field matches any), architectures compared after
    :func:`normalize_arch` (SK: filter.go ``platformEqual``)."""
    want_arch = str(platform.get("Architecture") or "")
    want_os = str(platform.get("OS") or "")
    return ((not want_arch or normalize_arch(want_arch) == normalize_arch(arch))
            and (not want_os or want_os == os))


class PlatformFilter(Filter):
    """``Placement.Platforms``, the platforms the service's image is built for (the docker CLI
    fills them in from the registry when it creates or updates a service): a node passes when its
    ``Description.Platform`` is one of them (:func:`platform_matches`). Applies to tasks that
    list any (SK: filter.go ``PlatformFilter``)."""

    def __init__(self) -> None:
        self.platforms: list[Obj] = []

    def set_task(self, task: Obj) -> bool:
        raw = ((task.get("Spec") or {}).get("Placement") or {}).get("Platforms") or []
        self.platforms = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
        return bool(self.platforms)

    def check(self, node: NodeInfo) -> bool:
        return any(platform_matches(p, node.os, node.arch) for p in self.platforms)

    def explain(self, nodes: int) -> str:
        return f"unsupported platform on {nodes_text(nodes)}"


class HostPortFilter(Filter):
    """A host-mode published port is used at most once per node (SK: filter.go ``HostPortFilter``):
    a node where an active task already holds one of the task's host ports (same protocol and
    published port, :func:`host_ports`) does not pass. Applies to tasks with host-mode ports only."""

    def __init__(self) -> None:
        self.ports: frozenset[tuple[str, int]] = frozenset()

    def set_task(self, task: Obj) -> bool:
        self.ports = host_ports(task)
        return bool(self.ports)

    def check(self, node: NodeInfo) -> bool:
        return not any(p in node.host_ports for p in self.ports)

    def explain(self, nodes: int) -> str:
        return f"host-mode port already in use on {nodes_text(nodes)}"


class MaxReplicasFilter(Filter):
    """``Placement.MaxReplicas`` (``--replicas-max-per-node``): a node already running that many
    active tasks of the service does not pass (SK: filter.go ``MaxReplicasFilter``; its
    explanation has no count, as swarmkit's). Applies when MaxReplicas > 0."""

    def __init__(self) -> None:
        self.service_id = ""
        self.max_replicas = 0

    def set_task(self, task: Obj) -> bool:
        mr = ((task.get("Spec") or {}).get("Placement") or {}).get("MaxReplicas")
        self.max_replicas = mr if isinstance(mr, int) and not isinstance(mr, bool) and mr > 0 else 0
        self.service_id = str(task.get("ServiceID", ""))
        return self.max_replicas > 0

    def check(self, node: NodeInfo) -> bool:
        return node.service_tasks.get(self.service_id, 0) < self.max_replicas

    def explain(self, nodes: int) -> str:
        return "max replicas per node limit exceed"


def default_filters() -> list[Filter]:
    """A fresh pipeline in swarmkit's order: ready/active, resources, constraints, platforms,
    host ports, max replicas per node."""
    return [ReadyFilter(), ResourceFilter(), ConstraintFilter(), PlatformFilter(), HostPortFilter(),
            MaxReplicasFilter()]
