"""Typed read-only views of the stored objects: :class:`Task`, :class:`Service`, :class:`Node`.

The store keeps objects as plain dicts in the Docker Engine API's shapes (MOBY:
api/swagger.yaml ``Task``, ``Service``, ``Node``; swarmkit api/objects.proto). A view wraps one
such dict without copying it (``view.raw`` *is* the dict) and reads its fields through
properties, so code says ``Task(t).state`` instead of ``(t.get("Status") or {}).get("State",
"new")``. Each property documents the Docker field it reads and the value it gives when the
field is missing or null.

Views never write: code that changes an object changes ``view.raw`` (the same dict). Nested
dicts returned (``Task.spec``, ``Node.labels`` …) are the stored ones, not copies: read them,
do not modify them. A missing or null nested object reads as an empty dict (a shared,
empty :class:`types.MappingProxyType` where it must never be written to).

Views are cheap (one slot, no copying), but not free on CPython 3.11: wrapping costs about 75 ns
and a property about 20 ns more than a plain function. Loops over every task of the cluster
(the orchestrator's and scheduler's passes over 20,000+ tasks) therefore read the hot task fields
with the same readers as plain functions over the raw dict — :func:`task_state`,
:func:`task_desired_order`, :func:`task_spec_version`, :func:`task_reservations` (the
:class:`Task` properties call them) —
and wrap only the few objects they look closer at (services, nodes, ended tasks).
"""

from __future__ import annotations

from typing import Any

from shoal.base.taskstate import STATE_ORDER, TERMINAL_STATES

__all__ = ["Obj", "Task", "Service", "Node", "task_state", "task_desired_order", "task_spec_version",
           "task_reservations", "task_needs_networks", "ingress_ports", "endpoint_spec_key"]

Obj = dict[str, Any]


def task_state(raw: Obj) -> str:
    """``Status.State`` of the task dict ``raw`` (:attr:`Task.state`); ``"new"`` when missing."""
    return str((raw.get("Status") or {}).get("State", "new"))


def task_desired_order(raw: Obj) -> int:
    """The order value of the task dict's ``DesiredState`` (:attr:`Task.desired_order`): ``running``
    when missing, 0 when it is not a task state."""
    return STATE_ORDER.get(str(raw.get("DesiredState", "running")), 0)


def task_spec_version(raw: Obj) -> Any:
    """``SpecVersion.Index`` of the task dict ``raw`` (:attr:`Task.spec_version`); None when missing."""
    return (raw.get("SpecVersion") or {}).get("Index")


def task_reservations(raw: Obj) -> Obj:
    """``Spec.Resources.Reservations`` of the task dict ``raw`` (:attr:`Task.reservations`); empty
    when missing or null."""
    return ((raw.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}


def ingress_ports(endpoint: Any) -> bool:
    """Whether an ``Endpoint`` or ``EndpointSpec`` dict (anything else: False) lists a port
    published in ingress mode (``PublishMode`` ``ingress``, the default)."""
    ports = endpoint.get("Ports") if isinstance(endpoint, dict) else None
    return any(isinstance(p, dict) and str(p.get("PublishMode") or "ingress").lower() == "ingress"
               for p in ports or ())


def task_needs_networks(raw: Obj) -> bool:
    """Whether the task dict ``raw`` is attached to overlay networks, so the network allocator
    must give it addresses before it is scheduled: its ``Spec.Networks`` is non-empty, or its
    ``Endpoint`` (the service's, copied at creation) publishes ingress ports (the task then joins
    the ingress network)."""
    spec = raw.get("Spec")
    return (isinstance(spec, dict) and bool(spec.get("Networks"))) or ingress_ports(raw.get("Endpoint"))


def endpoint_spec_key(ep_spec: Any) -> tuple[str, list[Any]]:
    """``(mode, ports)`` of an ``EndpointSpec`` dict (``Endpoint.Spec`` of a task or
    ``Spec.EndpointSpec`` of a service; None or missing: vip without ports), for telling whether a
    task was made with the service's current endpoint spec."""
    ep = ep_spec if isinstance(ep_spec, dict) else {}
    return str(ep.get("Mode") or "vip"), list(ep.get("Ports") or [])


class _View:
    """What every view shares: the stored dict (``raw``, never copied: a view is only valid while
    that dict is not changed) and the object's ``ID``."""

    __slots__ = ("raw",)

    def __init__(self, raw: Obj) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw.get('ID')!r})"

    @property
    def id(self) -> str:
        """``ID`` (raises ``KeyError`` when missing: every stored object has one)."""
        return str(self.raw["ID"])


class Task(_View):
    """A stored task (Docker ``Task``: ``ID``, ``ServiceID``, ``Slot``, ``NodeID``,
    ``DesiredState``, ``Status{State, Timestamp, Message, Err, ContainerStatus}``, ``Spec``
    (a ``TaskSpec``), ``SpecVersion{Index}``, ``CreatedAt``)."""

    __slots__ = ()

    @property
    def service_id(self) -> str:
        """``ServiceID``; ``""`` when missing."""
        return str(self.raw.get("ServiceID", ""))

    @property
    def slot(self) -> int:
        """``Slot`` (1..Replicas for a replicated service); 0 when missing or null."""
        return int(self.raw.get("Slot") or 0)

    @property
    def node_id(self) -> str:
        """``NodeID``; ``""`` while unassigned (missing, null or empty)."""
        return str(self.raw.get("NodeID") or "")

    @property
    def desired_state(self) -> str:
        """``DesiredState``; ``"running"`` when missing."""
        return str(self.raw.get("DesiredState", "running"))

    @property
    def desired_order(self) -> int:
        """The order value (:data:`shoal.base.taskstate.STATE_ORDER`) of ``DesiredState``
        (``running`` when missing); 0 when it is not a task state."""
        return task_desired_order(self.raw)

    @property
    def status(self) -> Obj:
        """``Status`` (the stored dict; empty when missing or null)."""
        return self.raw.get("Status") or {}

    @property
    def state(self) -> str:
        """``Status.State``; ``"new"`` when missing."""
        return task_state(self.raw)

    @property
    def state_order(self) -> int:
        """The order value of ``Status.State`` (``new`` when missing); 0 when it is not a task state."""
        return STATE_ORDER.get(task_state(self.raw), 0)

    @property
    def terminal(self) -> bool:
        """Whether ``Status.State`` is terminal (at or past ``complete``)."""
        return task_state(self.raw) in TERMINAL_STATES

    @property
    def status_timestamp(self) -> Any:
        """``Status.Timestamp`` (RFC 3339 text as stored); None when missing."""
        return (self.raw.get("Status") or {}).get("Timestamp")

    @property
    def created_at(self) -> Any:
        """``CreatedAt`` (RFC 3339 text as stored); None when missing."""
        return self.raw.get("CreatedAt")

    @property
    def spec(self) -> Any:
        """``Spec`` (the ``TaskSpec`` dict as stored); None when missing."""
        return self.raw.get("Spec")

    @property
    def spec_version(self) -> Any:
        """``SpecVersion.Index``: the service version the task was made from; None when missing."""
        return task_spec_version(self.raw)

    @property
    def restart_policy(self) -> Obj:
        """``Spec.RestartPolicy`` (``Condition``, ``Delay``, ``MaxAttempts``, ``Window``); empty
        when missing or null."""
        return (self.raw.get("Spec") or {}).get("RestartPolicy") or {}

    @property
    def container_spec(self) -> Obj:
        """``Spec.ContainerSpec``; empty when missing or null."""
        return (self.raw.get("Spec") or {}).get("ContainerSpec") or {}

    @property
    def image(self) -> str:
        """``Spec.ContainerSpec.Image``; ``""`` when missing."""
        return str(self.container_spec.get("Image") or "")

    @property
    def log_driver(self) -> Obj:
        """``Spec.LogDriver`` (``Name``, ``Options``); empty when missing or null."""
        return (self.raw.get("Spec") or {}).get("LogDriver") or {}

    @property
    def reservations(self) -> Obj:
        """``Spec.Resources.Reservations`` (``NanoCPUs``, ``MemoryBytes``); empty when missing or null."""
        return task_reservations(self.raw)

    @property
    def limits(self) -> Obj:
        """``Spec.Resources.Limits`` (``NanoCPUs``, ``MemoryBytes``, ``Pids``); empty when missing or null."""
        return ((self.raw.get("Spec") or {}).get("Resources") or {}).get("Limits") or {}

    @property
    def constraints(self) -> Any:
        """``Spec.Placement.Constraints`` (``["node.role==manager", …]``); ``[]`` when missing or null."""
        return ((self.raw.get("Spec") or {}).get("Placement") or {}).get("Constraints") or []


class Service(_View):
    """A stored service (Docker ``Service``: ``ID``, ``Version{Index}``, ``Spec`` (a
    ``ServiceSpec``: ``Name``, ``Mode``, ``TaskTemplate``, ``UpdateConfig`` …), ``PreviousSpec``,
    ``UpdateStatus``)."""

    __slots__ = ()

    @property
    def spec(self) -> Obj:
        """``Spec`` (the ``ServiceSpec`` dict as stored); empty when missing or null."""
        return self.raw.get("Spec") or {}

    @property
    def name(self) -> str:
        """``Spec.Name``; ``""`` when missing."""
        return str(self.spec.get("Name", ""))

    @property
    def version(self) -> Any:
        """``Version.Index`` (the store's index of its last write); None when missing."""
        return (self.raw.get("Version") or {}).get("Index")

    @property
    def mode(self) -> Obj:
        """``Spec.Mode`` (``{"Replicated": {"Replicas": n}}``, ``{"Global": {}}`` …); empty when missing."""
        return self.spec.get("Mode") or {}

    @property
    def replicated(self) -> bool:
        """Whether the mode is ``Replicated``."""
        return "Replicated" in self.mode

    @property
    def replicas(self) -> int:
        """``Spec.Mode.Replicated.Replicas`` (1 when that key is missing, 0 when null); 0 for a
        service that is not replicated."""
        rep = self.mode.get("Replicated")
        if rep is None:
            return 0
        return int(rep.get("Replicas", 1) or 0)

    @property
    def task_template(self) -> Obj:
        """``Spec.TaskTemplate`` (a ``TaskSpec``); empty when missing or null."""
        return self.spec.get("TaskTemplate") or {}

    @property
    def restart_policy(self) -> Obj:
        """``Spec.TaskTemplate.RestartPolicy``; empty when missing or null."""
        return self.task_template.get("RestartPolicy") or {}

    @property
    def update_status(self) -> Any:
        """``UpdateStatus`` (``State``, ``StartedAt``, ``CompletedAt``, ``Message``); None when
        missing, null or empty."""
        return self.raw.get("UpdateStatus") or None

    @property
    def previous_spec(self) -> Any:
        """``PreviousSpec`` (the spec before the last update); None when missing."""
        return self.raw.get("PreviousSpec")


class Node(_View):
    """A stored node (Docker ``Node``: ``ID``, ``Spec{Role, Availability, Labels, Name}``,
    ``Status{State, Message, Addr}``, ``Description{Hostname, Platform{OS, Architecture},
    Resources{NanoCPUs, MemoryBytes}, Engine{Labels}}``, ``ManagerStatus{Addr, …}``)."""

    __slots__ = ()

    @property
    def spec(self) -> Obj:
        """``Spec``; empty when missing or null."""
        return self.raw.get("Spec") or {}

    @property
    def role(self) -> str:
        """``Spec.Role`` (``worker`` | ``manager``); ``"worker"`` when missing."""
        return str(self.spec.get("Role", "worker"))

    @property
    def availability(self) -> str:
        """``Spec.Availability`` (``active`` | ``pause`` | ``drain``); ``"active"`` when missing."""
        return str((self.raw.get("Spec") or {}).get("Availability", "active"))

    @property
    def labels(self) -> Obj:
        """``Spec.Labels`` (the node's user labels); empty when missing or null."""
        return self.spec.get("Labels") or {}

    @property
    def status(self) -> Obj:
        """``Status`` (``State``, ``Message``, ``Addr``); empty when missing or null."""
        return self.raw.get("Status") or {}

    @property
    def state(self) -> str:
        """``Status.State`` (``unknown`` | ``down`` | ``ready`` | ``disconnected``); ``"unknown"``
        when missing."""
        return str((self.raw.get("Status") or {}).get("State", "unknown"))

    @property
    def down(self) -> bool:
        """Whether ``Status.State`` is ``down``."""
        state: object = (self.raw.get("Status") or {}).get("State")
        return state == "down"

    @property
    def description(self) -> Obj:
        """``Description`` (what the node reported at ``session.open``); empty when missing or null."""
        return self.raw.get("Description") or {}

    @property
    def hostname(self) -> str:
        """``Description.Hostname``; ``""`` when missing."""
        return str(self.description.get("Hostname", ""))

    @property
    def platform(self) -> Obj:
        """``Description.Platform`` (``OS``, ``Architecture``); empty when missing or null."""
        return self.description.get("Platform") or {}

    @property
    def resources(self) -> Obj:
        """``Description.Resources`` (``NanoCPUs``, ``MemoryBytes``); empty when missing or null."""
        return self.description.get("Resources") or {}

    @property
    def engine_labels(self) -> Obj:
        """``Description.Engine.Labels``; empty when missing or null."""
        return (self.description.get("Engine") or {}).get("Labels") or {}

    @property
    def manager_addr(self) -> str | None:
        """``ManagerStatus.Addr`` (``host:port`` of a manager); None for a worker."""
        a = (self.raw.get("ManagerStatus") or {}).get("Addr")
        return a if isinstance(a, str) else None

    @property
    def bridge(self) -> Obj:
        """``ShoalBridge`` (Shoal's field: the node's local bridge ``Subnet``/``Gateway``); empty
        when missing or null."""
        return self.raw.get("ShoalBridge") or {}
