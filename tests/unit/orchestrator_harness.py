"""The shared deterministic harness for the orchestrator's reconcilers (every service mode):
:class:`Cluster` drives the pure core (:func:`manager.orchestrator.reconcile` with its carried
:class:`~manager.orchestrator.UpdateProgress`) with an injected clock, applies each plan as the
store would, and lets tests play the scheduler and the workers by hand (task states moved by ID)
and change nodes (join, drain, pause, label, leave, go down)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from manager.orchestrator import UpdateProgress, reconcile
from manager.orchestrator.jobs import start_iteration
from shoal.base.util import now_rfc3339

T0 = 1_800_000_000.0
Obj = dict[str, Any]


def service(replicas: int = 3, image: str = "busybox:1", mode: Obj | None = None, **update: Any) -> Obj:
    """Service ``s1`` (``mode``: its ``Spec.Mode``, default replicated with ``replicas``) with
    UpdateConfig fields ``update`` (Delay/Monitor in ns)."""
    spec: Obj = {"Name": "web", "Mode": mode or {"Replicated": {"Replicas": replicas}},
                 "TaskTemplate": {"ContainerSpec": {"Image": image}}}
    if update:
        spec["UpdateConfig"] = dict(update)
    return {"ID": "s1", "Version": {"Index": 1}, "Spec": spec}


class Cluster:
    """Deterministic harness for :func:`reconcile`: holds services, tasks and nodes, applies
    each plan as the store would (``CreatedAt`` = the pass's time, a new ``Version.Index`` for
    every service written) and carries the update progress between passes. ``worker(tid,
    state)`` plays the worker."""

    def __init__(self, svc: Obj, nodes: int = 3, run: bool = True) -> None:
        """``svc`` is created (as the control API does: a job gets its ``JobStatus``) on
        ``nodes`` ready, active nodes ``n1``…; with ``run``, the first pass's tasks are placed
        (on their own node, or round robin) and run."""
        self.now = T0
        start_iteration(svc, now_rfc3339(self.now))
        self.services: dict[str, Obj] = {svc["ID"]: svc}
        self.nodes: list[Obj] = [{"ID": f"n{i}", "Spec": {"Availability": "active"}, "Status": {"State": "ready"}}
                      for i in range(1, nodes + 1)]
        self.tasks: dict[str, Obj] = {}
        self.progress: dict[str, UpdateProgress] = {}
        self.ids = (f"t{i}" for i in itertools.count(1))
        self.wake_at: float | None = None
        self.step()
        if not run:
            return
        for i, t in enumerate(sorted(self.current(), key=lambda t: (t["Slot"], t["NodeID"]))):
            self.place(t["ID"], t["NodeID"] or f"n{i % nodes + 1}")
            self.worker(t["ID"], "running")
        self.step()

    # -- the store side
    def step(self, dt: float = 0.0) -> Any:
        """Advance the clock by ``dt`` s, run one pass, apply it; returns the plan."""
        self.now += dt
        plan = reconcile(copy.deepcopy(list(self.services.values())), copy.deepcopy(list(self.tasks.values())),
                         copy.deepcopy(self.nodes), self.now, lambda: next(self.ids), self.progress)
        for t in plan.create:
            t["CreatedAt"] = now_rfc3339(self.now)
            self.tasks[t["ID"]] = t
        for t in plan.update:
            self.tasks[t["ID"]] = t
        for s in plan.services:
            self.services[s["ID"]] = self.stored(s)
        self.progress = plan.progress
        self.wake_at = plan.wake_at
        return plan

    def stored(self, s: Obj) -> Obj:
        """``s`` with the next ``Version.Index``, as the store gives every object it writes."""
        self.version = getattr(self, "version", 1) + 1
        s["Version"] = {"Index": self.version}
        return s

    def user_update(self, **changes: Any) -> None:
        """What POST /services/{id}/update does: PreviousSpec = Spec, new Spec, UpdateStatus
        cleared (``rollback=True``: swap back and set rollback_started)."""
        s = self.stored(self.services["s1"])
        if changes.pop("rollback", False):
            s["Spec"], s["PreviousSpec"] = s["PreviousSpec"], s["Spec"]
            s["UpdateStatus"] = {"State": "rollback_started", "StartedAt": now_rfc3339(self.now),
                                 "Message": "manually requested rollback"}
            return
        s["PreviousSpec"] = copy.deepcopy(s["Spec"])
        for path, value in changes.items():
            obj = s["Spec"]
            keys = path.split("__")
            for k in keys[:-1]:
                obj = obj.setdefault(k, {})
            obj[keys[-1]] = value
        s.pop("UpdateStatus", None)
        start_iteration(s, now_rfc3339(self.now))  # a job runs again

    # -- the worker side
    def place(self, tid: str, node: str | None = None) -> None:
        """Play the scheduler: assign the task to ``node`` (default: the node it was made for)."""
        self.tasks[tid]["NodeID"] = node or self.tasks[tid]["NodeID"]
        self.worker(tid, "assigned")

    def worker(self, tid: str, state: str) -> None:
        self.tasks[tid]["Status"] = {"State": state, "Timestamp": now_rfc3339(self.now)}

    def run_new(self) -> list[str]:
        """Place and run every pending task (as scheduler + worker would); returns their IDs."""
        out = []
        for t in self.tasks.values():
            if t["Status"]["State"] == "pending" and t["DesiredState"] in ("running", "complete"):
                self.place(t["ID"], t["NodeID"] or "n1")
                self.worker(t["ID"], "running")
                out.append(t["ID"])
        return sorted(out)

    def stop_asked(self) -> list[str]:
        """Stop every task asked to stop that still runs; returns their IDs."""
        out = []
        for t in self.tasks.values():
            if t["DesiredState"] in ("shutdown", "remove") and t["Status"]["State"] in ("assigned", "running"):
                self.worker(t["ID"], "shutdown")
                out.append(t["ID"])
        return sorted(out)

    # -- views
    def current(self) -> list[Obj]:
        """Tasks desired to run (``running``, or ``complete`` for a job's)."""
        return [t for t in self.tasks.values() if t["DesiredState"] in ("running", "complete")]

    def live(self) -> list[Obj]:
        """Current tasks that have not ended."""
        return [t for t in self.current() if t["Status"]["State"] in ("new", "pending", "assigned", "running")]

    def on(self, node: str) -> list[Obj]:
        """Live current tasks on ``node``."""
        return [t for t in self.live() if t["NodeID"] == node]

    # -- the nodes
    def node(self, nid: str) -> Obj:
        return next(n for n in self.nodes if n["ID"] == nid)

    def add_node(self, nid: str, **labels: str) -> None:
        """A node joins (ready, active) with ``labels``."""
        self.nodes.append({"ID": nid, "Spec": {"Availability": "active", "Labels": dict(labels)},
                           "Status": {"State": "ready"}})

    def availability(self, nid: str, availability: str) -> None:
        self.node(nid)["Spec"]["Availability"] = availability

    def label(self, nid: str, **labels: str) -> None:
        """Replace the node's labels."""
        self.node(nid)["Spec"]["Labels"] = dict(labels)

    def node_state(self, nid: str, state: str) -> None:
        self.node(nid)["Status"]["State"] = state

    def remove_node(self, nid: str) -> None:
        self.nodes = [n for n in self.nodes if n["ID"] != nid]

    def image_of(self, t: Obj) -> str:
        return str(t["Spec"]["ContainerSpec"]["Image"])

    def status(self) -> Any:
        return self.services["s1"].get("UpdateStatus")

    def running_images(self) -> list[str]:
        return sorted(self.image_of(t) for t in self.current() if t["Status"]["State"] == "running")


