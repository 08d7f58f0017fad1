"""Dry runs of ``service create`` and ``service update`` (beyond Swarm): where each task of the
service would go now, or why it could not be placed, written nowhere.

The spec is checked as :func:`manager.controlapi.services.create` / ``update`` check it (bad spec
400, name taken or port conflict 409, unknown network 400); then the pure scheduler
(:func:`manager.scheduler.schedule`) places the service's tasks on an index of the nodes built
from a snapshot of the store (:class:`manager.scheduler.NodeSet`), counting every other task as
it stands. For an update, the tasks whose spec the new one leaves current
(:func:`manager.specs.task_spec_with_defaults`, the orchestrator's test) stay where they are; the
others are taken off their nodes and placed again, as once the rolling update is done. The
snapshot is this manager's own store (no read barrier: a preview, not a promise).
"""

from __future__ import annotations

import time
from typing import Any

from manager.controlapi.common import Obj, resolve, service_names, spec
from manager.controlapi.errors import Conflict, Unimplemented
from manager.controlapi.services import check_host_port_conflicts, resolve_networks
from manager.orchestrator.nodes import Verdict, node_verdict
from manager.scheduler import NodeSet, Pipeline, no_suitable_node, schedule, task_is_active
from manager.specs import task_spec_with_defaults, validate_service_spec
from manager.specs.modes import check_mode_change
from manager.store import ReadTx, Store
from shoal.base.views import Node

__all__ = ["plan_create", "plan_update", "DRY_RUN_SERVICE_ID"]

DRY_RUN_SERVICE_ID = "dry-run"
"""The service ID the tasks of a service that does not exist yet are planned under."""


def _host_ports(service_spec: Obj) -> list[Obj]:
    ports = (service_spec.get("EndpointSpec") or {}).get("Ports") or []
    return [p for p in ports if isinstance(p, dict) and p.get("PublishMode") == "host" and p.get("PublishedPort")]


def _hostname(nodes: NodeSet, node_id: str) -> str:
    info = nodes.get(node_id)
    return info.hostname if info is not None else ""


def _plan(view: ReadTx, service_id: str, service_spec: Obj, version: int, keep: list[Obj],
          now: float) -> Obj:
    """The plan for service ``service_id`` with ``service_spec``: ``keep`` are its tasks that stay
    (counted where they are); every other task of the service is left out of the counts."""
    mode = service_spec.get("Mode") or {}
    if "ReplicatedJob" in mode:
        job = mode["ReplicatedJob"] or {}
        replicas = int(job.get("MaxConcurrent") or 1)
        if job.get("TotalCompletions") is not None:
            replicas = min(replicas, int(job["TotalCompletions"]))
    else:
        replicas = int((mode.get("Replicated") or {}).get("Replicas", 1))
    is_global = "Global" in mode or "GlobalJob" in mode
    # slots: 1..Replicas for a replicated service, 0..MaxConcurrent-1 for a replicated job (swarmkit)
    slots = range(0, replicas) if "ReplicatedJob" in mode else range(1, replicas + 1)
    if not is_global:  # a scale-down removes the slots above the new count
        keep = [t for t in keep if int(t.get("Slot") or 0) in slots]
    others = [t for t in view.list_shallow("tasks") if t.get("ServiceID") != service_id]
    nodes = NodeSet.from_objects(view.list_shallow("nodes"), [*others, *keep], now=now)
    task_spec = task_spec_with_defaults(service_spec.get("TaskTemplate") or {})
    ports = _host_ports(service_spec)

    def new_task(slot: int, node_id: str = "") -> Obj:
        t: Obj = {"ID": f"{service_id}.{node_id or slot}", "ServiceID": service_id, "Slot": slot,
                  "NodeID": node_id, "Spec": task_spec, "SpecVersion": {"Index": version},
                  "DesiredState": "running", "Status": {"State": "pending"}}
        if ports:
            t["Endpoint"] = {"Ports": ports}
        return t

    out: list[Obj] = []
    if is_global:
        kept_on = {str(t.get("NodeID")) for t in keep}
        pipe = Pipeline()
        pipe.set_task(new_task(0))
        raw_nodes = {str(n["ID"]): n for n in view.list_shallow("nodes")}
        for info in sorted(nodes, key=lambda n: (n.hostname, n.id)):
            if info.id in kept_on:
                out.append({"NodeID": info.id, "Node": info.hostname, "Unchanged": True})
                continue
            raw = raw_nodes.get(info.id)
            if node_verdict(Node(raw) if raw is not None else None, task_spec) is not Verdict.RUN:
                continue  # as the global orchestrator: no task on a drained, paused, down or unmatched node
            pipe.reset_counts()
            if pipe.process(info):
                out.append({"NodeID": info.id, "Node": info.hostname})
            else:
                out.append({"NodeID": info.id, "Node": info.hostname, "Error": no_suitable_node(pipe.explain())})
        return {"Tasks": out, "Warnings": []}
    kept_slots = {int(t.get("Slot") or 0): t for t in keep}
    to_place = [new_task(slot) for slot in slots if slot not in kept_slots]
    dec = schedule(nodes, to_place, now=now)
    for slot in slots:
        if slot in kept_slots:
            nid = str(kept_slots[slot].get("NodeID") or "")
            out.append({"Slot": slot, "NodeID": nid, "Node": _hostname(nodes, nid), "Unchanged": True})
            continue
        tid = f"{service_id}.{slot}"
        if tid in dec.placed:
            nid = dec.placed[tid]
            out.append({"Slot": slot, "NodeID": nid, "Node": _hostname(nodes, nid)})
        else:
            out.append({"Slot": slot, "Error": dec.failed.get(tid, no_suitable_node(""))})
    return {"Tasks": out, "Warnings": []}


def plan_create(store: Store, *, spec_body: Any, now: float | None = None) -> Obj:
    """``POST /services/plan``: what ``services.create`` of ``spec_body`` would place now::

        {"Tasks": [{"Slot": 1, "NodeID": "…", "Node": "h1"},
                   {"Slot": 2, "Error": "no suitable node (insufficient resources on 3 nodes)"}],
         "Warnings": []}

    (a global service: one entry per node, ``{"NodeID", "Node", "Error"?}``). ``now`` (seconds
    since the epoch, default the wall clock) dates the failures the faulty-node rule counts.
    Raises as ``services.create`` would: :class:`InvalidArgument` (bad spec, unknown network),
    :class:`Conflict` (name taken; a published port another service holds)."""
    service_spec = spec(validate_service_spec, spec_body)
    view = store.view()
    name = str(service_spec.get("Name") or "")
    if name and view.find_by_name("services", name) is not None:
        raise Conflict("rpc error: code = AlreadyExists desc = name conflicts with an existing object")
    resolve_networks(view, service_spec)
    check_host_port_conflicts(view, {"ID": "", "Spec": service_spec})
    return _plan(view, DRY_RUN_SERVICE_ID, service_spec, 0, [], time.time() if now is None else now)


def plan_update(store: Store, *, ref: str, spec_body: Any, now: float | None = None) -> Obj:
    """``POST /services/{id}/plan``: what ``services.update`` of service ``ref`` to ``spec_body``
    would place once its update is done (shape as :func:`plan_create`; entries for tasks that
    stay where they are have ``"Unchanged": true``). Raises :class:`NotFound`,
    :class:`InvalidArgument` (bad spec, ambiguous ref, unknown network, another mode: swarmkit's
    ``service mode change is not allowed``), :class:`Unimplemented` (a new name), as
    ``services.update``."""
    view = store.view()
    s = resolve(view, "services", ref, "service", service_names)
    service_spec = spec(validate_service_spec, spec_body)
    spec(lambda body: check_mode_change(s.get("Spec"), body), service_spec)  # as services.update
    if service_spec.get("Name") != (s.get("Spec") or {}).get("Name"):
        raise Unimplemented("rpc error: code = Unimplemented desc = renaming services is not supported")
    resolve_networks(view, service_spec)
    check_host_port_conflicts(view, {"ID": s["ID"], "Spec": service_spec})
    new_spec = task_spec_with_defaults(service_spec.get("TaskTemplate") or {})
    mine = [t for t in view.list_shallow("tasks") if t.get("ServiceID") == s["ID"]]
    keep = [t for t in mine if task_is_active(t) and t.get("Spec") == new_spec]
    version = int(((s.get("Version") or {}).get("Index")) or 0) + 1
    return _plan(view, str(s["ID"]), service_spec, version, keep, time.time() if now is None else now)
