"""What a reconcile pass produces and spends: new tasks (:func:`new_task`), the write budget of a
pass (:class:`WriteBudget`), the rolling-update progress kept between passes
(:class:`UpdateProgress`) and the pass's result (:class:`Plan`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from manager.specs import task_spec_with_defaults
from shoal.base.util import new_id
from shoal.base.views import Service

__all__ = ["Obj", "task_name", "new_task", "MAX_TASK_WRITES_PER_PASS", "WriteBudget", "packed_size",
           "OLD_TASK_TIMEOUT", "UpdateProgress", "Plan"]

Obj = dict[str, Any]


def task_name(service_name: str, slot: int, task_id: str) -> str:
    """Docker's task name: ``<service>.<slot>.<task id>``."""
    return f"{service_name}.{slot}.{task_id}"


def new_task(service: Obj, slot: int, now: str, id_gen: Callable[[], str] = new_id) -> Obj:
    """A new task of ``service`` in ``slot`` (state ``new``, desired ``running``), with a copy of
    the service's ``Endpoint`` (swarmkit copies it into every task: the node opens host-mode ports
    from it, and the orchestrator compares its ``Spec`` with the service's ``EndpointSpec``)."""
    tid = id_gen()
    svc = Service(service)
    version = svc.version
    return {
        "ID": tid,
        "Name": task_name(svc.name, slot, tid),
        "Labels": {},
        "Spec": task_spec_with_defaults(svc.task_template),
        "SpecVersion": {"Index": 0 if version is None else version},
        "ServiceID": service["ID"],
        "Slot": slot,
        "NodeID": "",
        "Status": {"Timestamp": now, "State": "new", "Message": "created"},
        "DesiredState": "running",
        "NetworksAttachments": [],
        "Endpoint": copy.deepcopy(service.get("Endpoint") or {"Spec": {"Mode": "vip"}}),
    }


MAX_TASK_WRITES_PER_PASS = 200
"""Most tasks one orchestrator pass creates or updates (swarmkit's ``MaxChangesPerTransaction``
is 200 too). Measured in tests/bench/bench_orchestrator_batches.py (BENCHMARKS.md)."""


class WriteBudget:
    """How many task writes (``writes``) and about how many bytes (``nbytes``, msgpack size of
    the objects written) one :func:`manager.orchestrator.reconcile` pass may still spend; None =
    unbounded. ``more`` is set once something was refused: the pass left work for the next one."""

    def __init__(self, writes: int | None = None, nbytes: int | None = None) -> None:
        self.writes, self.nbytes = writes, nbytes
        self.more = False
        self._spent = False

    def take(self, n: int, size: int) -> bool:
        """Spend ``n`` writes of about ``size`` bytes each, or refuse (False, ``more`` set).
        The first take of a pass is never refused for its size alone, so a pass always moves."""
        if n <= 0:
            return True
        if self.more:
            return False  # once something waits for the next pass, so does everything after it
        if (self.writes is not None and n > self.writes) or \
                (self.nbytes is not None and n * size > self.nbytes and self._spent):
            self.more = True
            return False
        if self.writes is not None:
            self.writes -= n
        if self.nbytes is not None:
            self.nbytes -= n * size
        self._spent = True
        return True


def packed_size(obj: Obj) -> int:
    """The msgpack size of ``obj`` in bytes (what it costs in a Raft entry)."""
    return len(msgpack.packb(obj, use_bin_type=True))


OLD_TASK_TIMEOUT = 60.0
"""Seconds a stop-first update waits for an old task to stop before creating its replacement
anyway (SK: manager/orchestrator/restart/restart.go ``defaultOldTaskTimeout`` = 1 min)."""

@dataclass
class UpdateProgress:
    """In-memory state of one service's rolling update (swarmkit keeps the same in its
    ``Updater``; after a manager restart an update resumes from what the store shows).

    ``target`` is the task spec (with defaults) the update moves slots to; ``rollback`` whether
    it runs with ``RollbackConfig``; ``total`` the number of out-of-date slots when it started
    (the denominator of ``MaxFailureRatio``). Per slot: ``stopping`` (stop-first: the old task ID
    being stopped before its replacement is created, at most ``OLD_TASK_TIMEOUT`` s after
    ``stop_asked_at``), ``in_flight`` (the new task ID, until it
    runs), ``start_first_old`` (start-first: old task IDs shut down once the new one runs),
    ``cooling`` (epoch s at which the slot's lane may take the next slot: ``Delay``).
    ``monitored``: new task ID → epoch s it was first seen running (None = not yet);
    ``failures``: task IDs counted as failed; ``idle_since``: when the last slot finished
    (completion comes ``Monitor`` later)."""

    target: Obj
    rollback: bool
    total: int
    stopping: dict[int, str] = field(default_factory=dict)
    stop_asked_at: dict[int, float] = field(default_factory=dict)
    in_flight: dict[int, str] = field(default_factory=dict)
    start_first_old: dict[int, list[str]] = field(default_factory=dict)
    cooling: dict[int, float] = field(default_factory=dict)
    monitored: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    idle_since: float | None = None
    nodes: set[str] = field(default_factory=set)
    """Node-bound (global) services: nodes whose old task the update stopped and whose new task
    is not created yet (the new one is then monitored)."""
    endpoint: tuple[str, list[Any]] | None = None
    """The service's endpoint spec (:func:`shoal.base.views.endpoint_spec_key`) the update moves
    slots to, beside ``target``: a change of either starts the update over."""

    def busy(self) -> int:
        """Lanes in use: slots stopping, in flight or cooling down."""
        return len(set(self.stopping) | set(self.in_flight) | set(self.cooling))

    def forget_slot(self, slot: int, task_ids: Iterable[str] = ()) -> None:
        """Drop every record of ``slot`` (scaled away), ``task_ids`` its tasks: the update no
        longer monitors them (their removal is no failure of the update)."""
        for tid in task_ids:
            self.monitored.pop(tid, None)
        self.stopping.pop(slot, None)
        self.stop_asked_at.pop(slot, None)
        self.in_flight.pop(slot, None)
        self.start_first_old.pop(slot, None)
        self.cooling.pop(slot, None)


@dataclass
class Plan:
    """What :func:`reconcile` decided: tasks to create and to update and services to update
    (full objects), the time (epoch s) at which to look again (None = no timer), the
    rolling-update progress to carry into the next pass (service ID → :class:`UpdateProgress`),
    and whether work was left for the next pass (``more``)."""

    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    wake_at: float | None = None
    progress: dict[str, UpdateProgress] = field(default_factory=dict)
    more: bool = False
    """The pass hit its :class:`WriteBudget`: run another pass soon to go on."""
    unfinished: set[str] = field(default_factory=set)
    """IDs of the services whose work the budget cut short (the next pass goes on with them)."""

    def _wake(self, t: float) -> None:
        self.wake_at = t if self.wake_at is None else min(self.wake_at, t)
