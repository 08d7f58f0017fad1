"""Control API calls on tasks: list, inspect; a task for its logs."""

from __future__ import annotations

from manager.controlapi.common import (
    Filters,
    Obj,
    check_filters,
    labels_match,
    node_names,
    resolve,
    service_names,
    task_names,
)
from manager.controlapi.errors import InvalidArgument
from manager.specs import task_spec_with_defaults
from manager.store import Store

FILTERS = ("id", "name", "service", "node", "label", "desired-state", "_up-to-date")
"""The filters ``tasks.list`` accepts."""


def list_tasks(store: Store, filters: Filters | None = None) -> list[Obj]:
    """``tasks.list``: Docker ``Task`` objects sorted by (service ID, slot, creation time),
    filtered by ``filters`` (keys in :data:`FILTERS`: ``id`` prefix; ``name`` prefix of
    ``{service}.{slot}`` or the task's name; ``service`` / ``node`` by ID, name or prefix;
    ``label``; ``desired-state`` ``running`` | ``shutdown`` (also ``remove``) | ``accepted``;
    ``_up-to-date`` true: tasks whose spec is their service's current one). Raises
    :class:`InvalidArgument` (unknown filter, bad desired-state, ambiguous service/node),
    :class:`NotFound` (a service or node filter that names none)."""
    f = filters or {}
    check_filters(f, FILTERS)
    view = store.view()
    services = {s["ID"]: s for s in view.list("services")}
    svc_ids: set[str] | None = None
    if "service" in f:
        svc_ids = {resolve(view, "services", v, "service", service_names)["ID"] for v in f["service"]}
    node_ids: set[str] | None = None
    if "node" in f:
        node_ids = {resolve(view, "nodes", v, "node", node_names)["ID"] for v in f["node"]}
    desired: set[str] | None = None
    if "desired-state" in f:
        desired = set()
        for v in f["desired-state"]:
            if v not in ("running", "shutdown", "accepted"):
                raise InvalidArgument(f"Invalid desired-state filter: '{v}'")
            desired.update({"shutdown", "remove"} if v == "shutdown" else {v})
    up_to_date = "_up-to-date" in f and any(v.lower() in ("true", "1") for v in f["_up-to-date"])
    template_cache: dict[str, Obj] = {}
    out = []
    for t in view.list("tasks"):
        sid = str(t.get("ServiceID", ""))
        if "id" in f and not any(str(t["ID"]).startswith(v) for v in f["id"]):
            continue
        if svc_ids is not None and sid not in svc_ids:
            continue
        if node_ids is not None and t.get("NodeID") not in node_ids:
            continue
        if desired is not None and t.get("DesiredState") not in desired:
            continue
        if "label" in f and not labels_match(t.get("Labels"), f["label"]):
            continue
        if "name" in f:
            svc_name = str(((services.get(sid) or {}).get("Spec") or {}).get("Name", ""))
            short = f"{svc_name}.{t.get('Slot', '')}"
            if not any(short.startswith(v) or str(t.get("Name", "")).startswith(v) for v in f["name"]):
                continue
        if up_to_date:
            svc = services.get(sid)
            if svc is None:
                continue
            if sid not in template_cache:
                template_cache[sid] = task_spec_with_defaults(((svc.get("Spec") or {}).get("TaskTemplate")) or {})
            if t.get("Spec") != template_cache[sid]:
                continue
        out.append(t)
    out.sort(key=lambda t: (str(t.get("ServiceID", "")), int(t.get("Slot") or 0), str(t.get("CreatedAt", ""))))
    return out


def inspect(store: Store, ref: str) -> Obj:
    """``tasks.inspect``: the ``Task`` with ID, name or unique ID prefix ``ref``. Raises
    :class:`NotFound` ``task {ref} not found``, :class:`InvalidArgument` (ambiguous)."""
    return resolve(store.view(), "tasks", ref, "task", task_names)


def current(store: Store, task_id: str) -> list[Obj] | None:
    """``[task]`` now, or None once it is gone (for logs)."""
    t = store.view().get("tasks", task_id)
    return [t] if t is not None else None
