"""Control API calls on nodes: list, inspect, update (role, availability, labels, name), remove."""

from __future__ import annotations

from typing import Any

from manager.ca import blacklist_node
from manager.controlapi.common import (
    Context,
    Filters,
    ManagerStatus,
    Obj,
    check_filters,
    commit,
    labels_match,
    node_names,
    resolve,
    spec,
)
from manager.controlapi.errors import FAILED_PRECONDITION, FailedPrecondition, NotFound
from manager.membership import lost_manager
from manager.specs import validate_node_spec
from manager.store import Store, WriteTx

FILTERS = ("id", "name", "role", "membership", "label", "node.label")
"""The filters ``nodes.list`` accepts."""


def _present(n: Obj, manager_status: ManagerStatus | None) -> Obj:
    """The node as the API shows it: with ``ManagerStatus`` from ``manager_status`` when given
    (dropped when it says None), else as stored."""
    if manager_status is None:
        return n
    out = dict(n)
    ms = manager_status(str(n["ID"]))
    if ms is None:
        out.pop("ManagerStatus", None)
    else:
        out["ManagerStatus"] = ms
    return out


def list_nodes(store: Store, filters: Filters | None = None, manager_status: ManagerStatus | None = None) -> list[Obj]:
    """``nodes.list``: Docker ``Node`` objects sorted by hostname, filtered by ``filters`` (keys in
    :data:`FILTERS`: ``id`` prefix, ``name`` prefix of hostname or ``Spec.Name``, ``role``,
    ``membership`` (only ``accepted`` matches), ``label`` (engine labels), ``node.label`` (spec
    labels), each ``key`` or ``key=value``). ``manager_status``: see
    :data:`manager.controlapi.common.ManagerStatus` (None: the stored ``ManagerStatus``). Raises
    :class:`InvalidArgument` ``invalid filter '{key}'``."""
    f = filters or {}
    check_filters(f, FILTERS)
    out = []
    for n in store.view().list("nodes"):
        if "id" in f and not any(str(n["ID"]).startswith(v) for v in f["id"]):
            continue
        if "name" in f and not any(any(nm.startswith(v) for nm in node_names(n) if nm) for v in f["name"]):
            continue
        if "role" in f and (n.get("Spec") or {}).get("Role") not in f["role"]:
            continue
        if "membership" in f and "accepted" not in f["membership"]:
            continue
        if "label" in f and not labels_match(((n.get("Description") or {}).get("Engine") or {}).get("Labels"),
                                             f["label"]):
            continue
        if "node.label" in f and not labels_match((n.get("Spec") or {}).get("Labels"), f["node.label"]):
            continue
        out.append(_present(n, manager_status))
    out.sort(key=lambda n: str((n.get("Description") or {}).get("Hostname", "")))
    return out


def inspect(store: Store, ref: str, manager_status: ManagerStatus | None = None) -> Obj:
    """``nodes.inspect``: the ``Node`` with ID, hostname, ``Spec.Name`` or unique ID prefix
    ``ref``. Raises :class:`NotFound` ``node {ref} not found``, :class:`InvalidArgument`
    (ambiguous)."""
    return _present(resolve(store.view(), "nodes", ref, "node", node_names), manager_status)


async def remove(ctx: Context, *, ref: str, force: bool = False) -> None:
    """``nodes.remove``: delete a node that is not Ready (or any worker with ``force``); its ID goes
    into the cluster's ``BlacklistedCertificates`` so its certificate is refused on 2377 at once
    (:func:`manager.ca.blacklist_node`). Raises :class:`NotFound`, :class:`InvalidArgument`
    (ambiguous), :class:`FailedPrecondition` (a manager; Ready without ``force``),
    :class:`Unavailable`."""
    n = resolve(ctx.store.view(), "nodes", ref, "node", node_names)
    if (n.get("Spec") or {}).get("Role") == "manager" or (n.get("ManagerStatus") and not lost_manager(n)):
        raise FailedPrecondition(f"{FAILED_PRECONDITION}node {n['ID']} is a cluster manager and is a member "
                                 "of the raft cluster. It must be demoted to worker before removal")
    # swarmkit's rule (controlapi RemoveNode): only a node that is Ready needs --force; one that
    # is down, disconnected or unknown is removed without it
    if not force and (n.get("Status") or {}).get("State") == "ready":
        raise FailedPrecondition(f"{FAILED_PRECONDITION}node {n['ID']} is not down and can't be removed")

    def fn(tx: WriteTx) -> None:
        # its certificate stays valid for up to 90 days: refuse it on 2377 from now on
        # (SK: controlapi RemoveNode adds it to Cluster.BlacklistedCertificates)
        for c in tx.list("cluster"):
            blacklist_node(c, n["ID"])
            c.pop("Version", None)
            tx.update("cluster", c)
        tx.delete("nodes", n["ID"])

    await commit(ctx.store, fn)


async def update(ctx: Context, *, ref: str, version: int, spec_body: Any) -> None:
    """``nodes.update``: replace the node's ``NodeSpec`` (``spec_body``: ``Role``,
    ``Availability``, ``Labels``, ``Name``; :func:`manager.specs.validate_node_spec`) at
    ``version``. Demoting a manager needs another manager and ``ctx.demote_problem`` to allow it
    (quorum). Raises :class:`InvalidArgument` (bad spec, ambiguous ref), :class:`NotFound`,
    :class:`FailedPrecondition` (the last manager; quorum), :class:`Unknown` (out of sequence),
    :class:`Unavailable`."""
    node_spec = spec(validate_node_spec, spec_body)
    n = resolve(ctx.store.view(), "nodes", ref, "node", node_names)

    def fn(tx: WriteTx) -> None:
        cur = tx.get("nodes", n["ID"])
        if cur is None:
            raise NotFound(f"node {n['ID']} not found")
        old_role = (cur.get("Spec") or {}).get("Role")
        if old_role == "manager" and node_spec["Role"] == "worker":
            managers = tx.find("nodes", lambda o: (o.get("Spec") or {}).get("Role") == "manager")
            if len(managers) <= 1:
                raise FailedPrecondition(f"{FAILED_PRECONDITION}attempting to demote the last manager of the swarm")
            problem = ctx.demote_problem(n["ID"])
            if problem is not None:
                raise FailedPrecondition(f"{FAILED_PRECONDITION}{problem}")
        cur["Version"] = {"Index": version}
        cur["Spec"] = node_spec
        tx.update("nodes", cur)

    await commit(ctx.store, fn)
