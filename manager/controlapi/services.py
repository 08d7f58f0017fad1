"""Control API calls on services: list, inspect, create, update (and rollback), remove; the tasks
of a service for its logs."""

from __future__ import annotations

from typing import Any

from manager.allocator import AllocatorError
from manager.controlapi.common import (
    Context,
    Filters,
    Obj,
    check_filters,
    commit,
    labels_match,
    resolve,
    service_names,
    spec,
)
from manager.controlapi.errors import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from manager.controlapi.networks import allocator_error, network_names, store_allocator
from manager.orchestrator.jobs import JOB_MODES, start_iteration
from manager.orchestrator.status import service_status
from manager.specs import service_spec_with_defaults, validate_service_spec
from manager.specs.modes import check_mode_change
from manager.store import ReadTx, Store, WriteTx
from shoal.base.util import new_id, now_rfc3339

FILTERS = ("id", "name", "label", "mode")
"""The filters ``services.list`` accepts."""


def _present(s: Obj, view: ReadTx, status: bool, insert_defaults: bool = False) -> Obj:
    out = dict(s)
    if insert_defaults:
        out["Spec"] = service_spec_with_defaults(s.get("Spec") or {})
        if out.get("PreviousSpec"):
            out["PreviousSpec"] = service_spec_with_defaults(out["PreviousSpec"])
    out.setdefault("Endpoint", {"Spec": {"Mode": "vip"}})
    if status:
        out["ServiceStatus"] = service_status(s, view.list("tasks"), view.list("nodes"))
    return out


def list_services(store: Store, filters: Filters | None = None, status: bool = False) -> list[Obj]:
    """``services.list``: Docker ``Service`` objects sorted by name, filtered by ``filters`` (keys
    in :data:`FILTERS`: ``id`` / ``name`` prefixes, ``label`` ``key`` or ``key=value``, ``mode``
    ``replicated`` | ``global``); with ``status``, each has ``ServiceStatus {"RunningTasks",
    "DesiredTasks", "CompletedTasks"}``. Raises :class:`InvalidArgument` ``invalid filter '{key}'``."""
    f = filters or {}
    check_filters(f, FILTERS)
    view = store.view()
    out = []
    for s in view.list("services"):
        sp = s.get("Spec") or {}
        if "id" in f and not any(str(s["ID"]).startswith(v) for v in f["id"]):
            continue
        if "name" in f and not any(str(sp.get("Name", "")).startswith(v) for v in f["name"]):
            continue
        if "label" in f and not labels_match(sp.get("Labels"), f["label"]):
            continue
        if "mode" in f:
            mode = {"Global": "global", "ReplicatedJob": "replicated-job", "GlobalJob": "global-job"}.get(
                next(iter(sp.get("Mode") or {}), ""), "replicated")
            if mode not in f["mode"]:
                continue
        out.append(_present(s, view, status))
    out.sort(key=lambda s: str((s.get("Spec") or {}).get("Name", "")))
    return out


def find(store: Store, ref: str) -> Obj:
    """The stored service with ID, name or unique ID prefix ``ref``. Raises :class:`NotFound`
    ``service {ref} not found``, :class:`InvalidArgument` (ambiguous)."""
    return resolve(store.view(), "services", ref, "service", service_names)


def inspect(store: Store, ref: str, insert_defaults: bool = False) -> Obj:
    """``services.inspect``: the ``Service`` ``ref`` (see :func:`find`); ``insert_defaults`` fills
    the spec's defaults as ``docker service inspect`` shows them. Raises as :func:`find`."""
    view = store.view()
    return _present(resolve(view, "services", ref, "service", service_names), view, False, insert_defaults)


def tasks_of(store: Store, service_id: str) -> list[Obj] | None:
    """The tasks of service ``service_id`` now, or None once the service is gone (for logs)."""
    view = store.view()
    if view.get("services", service_id) is None:
        return None
    return view.find("tasks", lambda t: t.get("ServiceID") == service_id)


def resolve_networks(tx: ReadTx, service_spec: Obj) -> None:
    """Resolve each ``TaskTemplate.Networks[].Target`` of a validated spec (network ID, name or
    unique ID prefix) against the ``networks`` table as ``tx`` sees it and store the network's ID
    there (``Aliases`` kept). Raises :class:`InvalidArgument` ``network {target} not found``
    (swarmkit's text), ``network {target} is ambiguous (N matches found)``, ``Service cannot be
    explicitly attached to the ingress network "{name}"`` (swarmkit's), ``network {name} is
    attached more than once`` (two targets naming the same network)."""
    tt = service_spec.get("TaskTemplate") or {}
    seen: set[str] = set()
    for att in tt.get("Networks") or []:
        target = str(att["Target"])
        try:
            net = resolve(tx, "networks", target, "network", network_names)
        except NotFound:
            raise InvalidArgument(f"{INVALID_ARGUMENT}network {target} not found") from None
        except InvalidArgument as e:
            raise InvalidArgument(INVALID_ARGUMENT + e.message) from None
        name = str((net.get("Spec") or {}).get("Name", ""))
        if (net.get("Spec") or {}).get("Ingress"):
            raise InvalidArgument(f"{INVALID_ARGUMENT}Service cannot be explicitly attached to the ingress "
                                  f"network \"{name}\"")
        if net["ID"] in seen:
            raise InvalidArgument(f"{INVALID_ARGUMENT}network {name} is attached more than once: give each "
                                  "network once")
        seen.add(net["ID"])
        att["Target"] = net["ID"]


def publishes_ingress(service_spec: Obj) -> bool:
    """Whether a (validated) ServiceSpec publishes a port in ingress mode (the default mode)."""
    ports = (service_spec.get("EndpointSpec") or {}).get("Ports") or []
    return any(str(p.get("PublishMode") or "ingress") == "ingress" for p in ports if isinstance(p, dict))


def _published(ports: Any, mode: str) -> set[tuple[str, int]]:
    """``{(protocol, published port)}`` of the ``mode`` (ingress | host) ports in ``ports``."""
    out = set()
    for p in ports if isinstance(ports, list) else ():
        if isinstance(p, dict) and str(p.get("PublishMode") or "ingress") == mode and p.get("PublishedPort"):
            out.add((str(p.get("Protocol") or "tcp"), int(p["PublishedPort"])))
    return out


def check_host_port_conflicts(tx: ReadTx, svc: Obj) -> None:
    """Host-mode and ingress ports do not share a port (swarmkit's controlapi
    ``checkPortConflicts``): an ingress port is open on every node, so a host-mode port of another
    service on the same port and protocol cannot be, and the other way round. Two services may
    publish the same port in host mode (the scheduler keeps them on different nodes); two ingress
    ports are the allocator's to refuse. Raises :class:`Conflict` (409) naming the other service."""
    ep_spec = (svc.get("Spec") or {}).get("EndpointSpec") or {}
    mine_host = _published(ep_spec.get("Ports"), "host")
    mine_ingress = _published(ep_spec.get("Ports"), "ingress")
    if not mine_host and not mine_ingress:
        return
    for other in tx.list_shallow("services"):
        if other["ID"] == svc.get("ID"):
            continue
        name = (other.get("Spec") or {}).get("Name", "")
        theirs_ingress = _published((other.get("Endpoint") or {}).get("Ports"), "ingress")
        theirs_host = _published(((other.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports"), "host")
        for proto, port in sorted(mine_host & theirs_ingress):
            raise Conflict(f"port '{port}/{proto}' is already in use by service '{name}' ({other['ID']}) as an "
                           "ingress port")
        for proto, port in sorted(mine_ingress & theirs_host):
            raise Conflict(f"port '{port}/{proto}' is already in use by service '{name}' ({other['ID']}) as a "
                           "host-published port")


def allocate_endpoint(tx: WriteTx, svc: Obj) -> Obj:
    """The ``Endpoint`` of service ``svc`` (``{"ID", "Spec", "Endpoint"?}``; its network targets
    already resolved) from an allocator rebuilt from ``tx``
    (:meth:`manager.allocator.Allocator.allocate_service`)::

        {"Spec": {"Mode": "vip"|"dnsrr", "Ports"?: [...]},
         "Ports": [{"Protocol", "TargetPort", "PublishedPort", "PublishMode"}],   # when published
         "VirtualIPs": [{"NetworkID", "Addr": "10.0.1.2/24"}]}                  # when any

    VIPs and dynamic ports the service already holds (its current ``Endpoint``) are kept; what it
    held and no longer uses is free once the service is written (the store is the allocator's only
    memory). Raises :class:`Conflict` (409: an ingress port held by another service, named; a
    host-mode port that is another service's ingress port or the other way round,
    :func:`check_host_port_conflicts`),
    :class:`InvalidArgument` (bad port, ingress ports with dnsrr, unknown network),
    :class:`FailedPrecondition` (ingress ports but no ingress network; no address or port left)."""
    spec_ = svc.get("Spec") or {}
    check_host_port_conflicts(tx, svc)
    alloc = store_allocator(tx)
    if publishes_ingress(spec_) and alloc.ingress_network() is None:
        raise FailedPrecondition(f"{FAILED_PRECONDITION}service {spec_.get('Name', '')} publishes ports in "
                                 "ingress mode but the swarm has no ingress network: create one with `docker "
                                 "network create --ingress -d overlay ingress`, or publish with mode=host")
    try:
        endpoint = alloc.allocate_service(svc)
    except AllocatorError as e:
        raise allocator_error(e) from None
    if not endpoint.get("Ports"):
        endpoint.pop("Ports", None)
    if not endpoint.get("VirtualIPs"):
        endpoint.pop("VirtualIPs", None)
    return endpoint


async def create(ctx: Context, *, spec_body: Any) -> Obj:
    """``services.create``: a new service from ``spec_body`` (a ServiceSpec;
    :func:`manager.specs.validate_service_spec`); its network targets are stored as network IDs
    (:func:`resolve_networks`) and its ``Endpoint`` (VIPs, published ports) allocated
    (:func:`allocate_endpoint`), both in the transaction. Returns ``{"ID", "Warnings": []}``.
    Raises :class:`InvalidArgument` (bad spec, unknown or ingress network, dnsrr with ingress
    ports), :class:`Conflict` (name taken; a published port held by another service, named),
    :class:`FailedPrecondition` (ingress ports without an ingress network), :class:`Unavailable`."""
    service_spec = spec(validate_service_spec, spec_body)
    sid = new_id()
    svc: Obj = {"ID": sid, "Spec": service_spec}
    start_iteration(svc, now_rfc3339())

    def fn(tx: WriteTx) -> None:
        resolve_networks(tx, service_spec)
        svc["Endpoint"] = allocate_endpoint(tx, svc)
        tx.create("services", svc)

    await commit(ctx.store, fn)
    return {"ID": sid, "Warnings": []}


async def update(ctx: Context, *, ref: str, version: int, spec_body: Any, rollback: bool = False) -> Obj:
    """``services.update``: replace the service's spec with ``spec_body`` (or, with ``rollback``,
    its ``PreviousSpec``) at ``version``; the old spec becomes ``PreviousSpec``. A rollback starts
    ``UpdateStatus`` ``rollback_started`` (not for a job: its rollback is a new iteration of
    the previous spec); any other update clears it. Returns ``{"Warnings":
    []}``. Raises :class:`NotFound`, :class:`InvalidArgument` (bad spec, ambiguous ref),
    :class:`FailedPrecondition` (400, swarmkit's: no previous spec to roll back to),
    :class:`Unknown` (out of sequence), :class:`Unimplemented`
    (a new name), :class:`Unavailable`. Network targets are resolved and the ``Endpoint``
    re-allocated as in :func:`create` (VIPs and dynamic ports it keeps using are kept; a port
    conflict is a :class:`Conflict`). Removing a service frees its VIPs and ports by deleting it."""
    s = find(ctx.store, ref)
    if rollback:
        prev = s.get("PreviousSpec")
        if not prev:
            raise FailedPrecondition(f"{FAILED_PRECONDITION}service {s['ID']} does not have a previous spec")
        spec_body = prev
    service_spec = spec(validate_service_spec, spec_body)
    if service_spec.get("Name") != (s.get("Spec") or {}).get("Name"):
        raise Unimplemented("rpc error: code = Unimplemented desc = renaming services is not supported")
    spec(lambda body: check_mode_change(s.get("Spec"), body), service_spec)  # 400 in swarmkit's words

    def fn(tx: WriteTx) -> None:
        cur = tx.get("services", s["ID"])
        if cur is None:
            raise NotFound(f"service {s['ID']} not found")
        resolve_networks(tx, service_spec)
        cur["Version"] = {"Index": version}
        cur["PreviousSpec"] = cur.get("Spec")
        cur["Spec"] = service_spec
        start_iteration(cur, now_rfc3339())  # a job runs again
        # UpdateStatus as swarmkit's controlapi: a rollback starts one, any other update
        # clears it (the orchestrator's updater then sets "updating" if slots change). A job has
        # no rolling update (nothing would ever complete it): its rollback is only the swapped
        # spec and a new iteration, without an UpdateStatus.
        if rollback and not any(k in (service_spec.get("Mode") or {}) for k in JOB_MODES):
            cur["UpdateStatus"] = {"State": "rollback_started", "StartedAt": now_rfc3339(),
                                   "Message": "manually requested rollback"}
        else:
            cur.pop("UpdateStatus", None)
        cur["Endpoint"] = allocate_endpoint(tx, cur)
        tx.update("services", cur)

    await commit(ctx.store, fn)
    return {"Warnings": []}


async def remove(ctx: Context, *, ref: str) -> None:
    """``services.remove``: delete the service (the orchestrator and reaper shut its tasks down
    and remove them). Raises :class:`NotFound`, :class:`InvalidArgument` (ambiguous),
    :class:`Unavailable`."""
    s = find(ctx.store, ref)
    await commit(ctx.store, lambda tx: tx.delete("services", s["ID"]))
