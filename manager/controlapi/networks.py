"""Control API calls on swarm (overlay) networks: create, inspect, list, remove, and the
``ingress`` network swarm init makes.

Docker's ``POST /networks/create`` body (``NetworkCreateRequest``, MOBY: api/types/network
``CreateRequest``) is validated here and stored as swarmkit stores a network, in the Docker API's
JSON spelling (``swarm.Network``; docs/contracts.md "The stored Network")::

    {"ID", "Version": {"Index"}, "CreatedAt", "UpdatedAt",          # swarmkit's Meta
     "Spec": {"Name", "Labels", "DriverConfiguration": {"Name": "overlay", "Options"},
              "IPv6Enabled": false, "Internal", "Attachable", "Ingress",
              "IPAMOptions": {"Driver": {"Name": "default", "Options"},
                              "Configs": [{"Subnet", "Gateway", "Range"}]},   # what the user asked
              "Scope": "swarm"},
     "DriverState": {"Name": "overlay", "Options": {<Spec options>, VNI_OPTION: "4097"}},
     "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet", "Gateway"[, "Range"]}]}}

Unlike swarmkit, whose allocator gives a network its subnet and VNI after the create call has
returned (an overlapping ``--subnet`` then leaves a network that never works), the subnet and VNI
are allocated inside the create transaction by a :class:`manager.allocator.Allocator` rebuilt
from the store in that same transaction, so a bad or overlapping subnet is a 400 and no two
networks can ever hold the same subnet or VNI (the store is the allocator's only memory).
Removing a network deletes the object, which is what releases its subnet and VNI.

Writes (:func:`create`, :func:`remove`) are in :data:`manager.controlapi.control.CALLS`; reads
(:func:`inspect`, :func:`list_networks`, :func:`find`) run on any manager. Served over HTTP by
:mod:`shoal.daemon.http.networks` (``/networks/create``, ``/networks``, ``/networks/{id}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from manager.allocator import (
    AddressesExhausted,
    Allocator,
    AllocatorError,
    NetworkNotFound,
    PoolExhausted,
    PortConflict,
    PortsExhausted,
    VNIExhausted,
)
from manager.allocator import InvalidArgument as AllocInvalidArgument
from manager.allocator.loop import rebuild_allocator
from manager.allocator.vni import VNI_OPTION
from manager.controlapi.common import (
    Context,
    Filters,
    Obj,
    check_filters,
    commit,
    labels_match,
    resolve,
)
from manager.controlapi.errors import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    Conflict,
    ControlError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unknown,
)
from manager.specs import NETWORK_CREATE_SCHEMA, SpecError, canonicalize_keys, validate_name
from manager.store import ReadTx, Store, WriteTx
from shoal.base.netaddr import MTU_OPTION, parse_mtu_option
from shoal.base.taskstate import is_terminal
from shoal.base.util import new_id

__all__ = [
    "DRIVER", "FILTERS", "INGRESS_NAME", "INTERNAL_LABEL", "PREDEFINED", "SCOPE", "VNI_OPTION", "allocator_error",
    "create", "store_allocator",
    "create_ingress",
    "find", "ingress_request", "inspect", "list_networks", "network_names", "remove", "validate_create_request",
]

DRIVER = "overlay"
"""The only network driver of swarm networks shoal creates."""

SCOPE = "swarm"
"""The scope of every network in the store (Docker's ``Scope`` of a swarm network)."""

INGRESS_NAME = "ingress"
"""The name of the ingress network swarm init creates (swarmkit's ``newIngressNetwork``)."""

INTERNAL_LABEL = "com.docker.swarm.internal"
"""The label swarmkit keeps for its own pre-defined networks: users may not set it."""

PREDEFINED = frozenset({"bridge", "host", "none", "default"})
"""Docker's pre-defined network names (moby ``runconfig.IsPreDefinedNetwork``): a swarm network
may not take them (``bridge`` is each node's local network here)."""

FILTERS = ("driver", "id", "label", "name", "scope", "type")
"""The filters ``networks.list`` accepts (Docker's ``GET /networks`` filters but ``dangling``)."""

ENCRYPTED_UNSUPPORTED = ("encrypted overlay networks are not supported by shoal: the hosts' kernel has "
                         "neither ESP (IPsec) nor WireGuard for the data plane; remove --opt encrypted")



# -- validation -----------------------------------------------------------------------------------

def _bad(reason: str) -> InvalidArgument:
    return InvalidArgument(INVALID_ARGUMENT + reason)


def _typed(body: Mapping[str, Any], key: str, want: type, go_type: str, default: Any,
           struct: str = "CreateRequest") -> Any:
    """``body[key]`` checked as Go's JSON decoder would (null is the zero value)."""
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
        raise _bad(f"json: cannot unmarshal {type(v).__name__} into Go struct field {struct}.{key} "
                   f"of type {go_type}")
    return v


def _str_map(v: Any, field: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise _bad(f"json: cannot unmarshal into Go struct field {field} of type map[string]string")
    return dict(v)


def _ipam(body: Mapping[str, Any]) -> dict[str, Any]:
    """The swarm ``IPAMOptions`` the user asked for, from the request's ``IPAM``."""
    ipam = body.get("IPAM")
    if ipam is None:
        ipam = {}
    if not isinstance(ipam, dict):
        raise _bad(f"json: cannot unmarshal {type(ipam).__name__} into Go struct field CreateRequest.IPAM "
                   f"of type network.IPAM")
    driver = _typed(ipam, "Driver", str, "string", "", "IPAM") or "default"
    if driver != "default":
        raise _bad(f"invalid IPAM driver {driver!r}: shoal supports the default IPAM driver only")
    options = _str_map(ipam.get("Options"), "IPAM.Options")
    raw = ipam.get("Config")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _bad("json: cannot unmarshal into Go struct field IPAM.Config of type []network.IPAMConfig")
    configs: list[dict[str, str]] = []
    for c in raw:
        if not isinstance(c, dict):
            raise _bad("json: cannot unmarshal into Go struct field IPAM.Config of type network.IPAMConfig")
        got = {}
        for key, stored in (("Subnet", "Subnet"), ("Gateway", "Gateway"), ("IPRange", "Range")):
            v = _typed(c, key, str, "string", "", "IPAMConfig")
            if v:
                got[stored] = v
        if _str_map(c.get("AuxiliaryAddresses"), "IPAMConfig.AuxiliaryAddresses"):
            raise _bad("ipam configuration: auxiliary addresses are not supported by shoal")
        if got:
            configs.append(got)
    out: dict[str, Any] = {"Driver": {"Name": "default"}, "Configs": configs}
    if options:
        out["Driver"]["Options"] = options
    return out


def allocator_error(e: AllocatorError) -> ControlError:
    """The control API error for an allocator error: bad input (a malformed, overlapping or
    misplaced subnet, gateway, range, VNI or port; an unknown network) is a 400 ``InvalidArgument``;
    a published port held by another service a 409 ``Conflict`` (the message names the service);
    no subnet, VNI, address or port left a ``FailedPrecondition`` (400, the cluster's state);
    anything else ``Unknown`` (500)."""
    if isinstance(e, AllocInvalidArgument | NetworkNotFound):
        return _bad(str(e))
    if isinstance(e, PortConflict):
        return Conflict(str(e))
    if isinstance(e, PoolExhausted | VNIExhausted | AddressesExhausted | PortsExhausted):
        return FailedPrecondition(FAILED_PRECONDITION + str(e))
    return Unknown(f"rpc error: code = Unknown desc = {e}")


def validate_create_request(body: Any) -> Obj:
    """The swarm ``NetworkSpec`` (stored shape, module docstring) of Docker's ``NetworkCreateRequest``
    ``body`` (keys matched case-insensitively, as Go decodes them). Pure: checks what can be checked
    without the store (a follower runs it before forwarding), including the subnet, gateway and
    range syntax and the VXLAN ID option through an empty :class:`Allocator`.

    Follows Docker/swarmkit: ``Name`` required and a DNS name component of at most 63 characters
    (swarmkit's ``validateAnnotations``: "meta: name must be provided", "name must be valid as a
    DNS name component"); ``Driver`` must be ``overlay`` (Docker's default ``bridge`` is a local
    network: refused); ``Scope`` empty or ``swarm``; IPv6 and config-only networks are not
    supported; ``Options["encrypted"]`` is refused (no ESP or WireGuard on these hosts); one IPAM
    config at most, default IPAM driver only (swarmkit: "invalid IPAM specified"); an ingress
    network cannot be attachable (swarmkit's message).

    Raises :class:`InvalidArgument` (``rpc error: code = InvalidArgument desc = …``: a malformed
    body, a bad name, an unsupported driver, scope or option, a malformed subnet/gateway/range,
    a gateway or range outside the subnet), :class:`PermissionDenied` (a pre-defined name such as
    ``bridge``, the ``com.docker.swarm.internal`` label)."""
    if not isinstance(body, dict):
        raise _bad(f"json: cannot unmarshal {type(body).__name__} into Go value of type network.CreateRequest")
    body = canonicalize_keys(body, NETWORK_CREATE_SCHEMA)
    name = _typed(body, "Name", str, "string", "")
    try:
        validate_name(name)
    except SpecError as e:
        raise _bad(str(e)) from None
    if name in PREDEFINED:
        raise PermissionDenied(f"{name} is a pre-defined network and cannot be created")
    driver = _typed(body, "Driver", str, "string", "") or "bridge"
    if driver != DRIVER:
        raise _bad(f"network driver {driver!r} is not supported for swarm networks: shoal creates "
                   f"{DRIVER} networks only (--driver {DRIVER})")
    scope = _typed(body, "Scope", str, "string", "") or SCOPE
    if scope != SCOPE:
        raise _bad(f"network scope {scope!r} is not supported: {DRIVER} networks are {SCOPE}-scoped")
    if _typed(body, "EnableIPv6", bool, "bool", False):
        raise _bad("IPv6 overlay networks are not supported by shoal (remove --ipv6)")
    if not _typed(body, "EnableIPv4", bool, "bool", True):
        raise _bad("an overlay network needs IPv4: EnableIPv4 cannot be false")
    if _typed(body, "ConfigOnly", bool, "bool", False):
        raise _bad("config-only networks are not supported by shoal (remove --config-only)")
    config_from = body.get("ConfigFrom")
    if isinstance(config_from, dict) and config_from.get("Network"):
        raise _bad("networks created from a config-only network are not supported by shoal (remove --config-from)")
    _typed(body, "CheckDuplicate", bool, "bool", False)  # deprecated; names are always unique
    internal = _typed(body, "Internal", bool, "bool", False)
    attachable = _typed(body, "Attachable", bool, "bool", False)
    ingress = _typed(body, "Ingress", bool, "bool", False)
    if ingress and attachable:
        raise _bad("ingress network cannot be attachable")
    options = _str_map(body.get("Options"), "CreateRequest.Options")
    if "encrypted" in options:
        raise _bad(ENCRYPTED_UNSUPPORTED)
    try:  # checked here as the nodes check it, so a bad value never reaches them
        parse_mtu_option(options.get(MTU_OPTION))
    except ValueError as e:
        raise _bad(str(e)) from e
    labels = _str_map(body.get("Labels"), "CreateRequest.Labels")
    if INTERNAL_LABEL in labels:
        raise PermissionDenied(f"label {INTERNAL_LABEL} is for predefined internal networks and cannot be "
                               f"applied by users")
    spec: Obj = {
        "Name": name, "Labels": labels, "DriverConfiguration": {"Name": DRIVER, "Options": options},
        "IPv6Enabled": False, "Internal": internal, "Attachable": attachable, "Ingress": ingress,
        "IPAMOptions": _ipam(body), "Scope": SCOPE,
    }
    try:
        Allocator().allocate_network("", spec)  # syntax only: an empty allocator has nothing to overlap
    except AllocatorError as e:
        raise allocator_error(e) from None
    return spec


# -- reading --------------------------------------------------------------------------------------

def network_names(o: Obj) -> list[str]:
    """The names a network is found by: ``Spec.Name``."""
    return [str((o.get("Spec") or {}).get("Name", ""))]


def _present(n: Obj) -> Obj:
    """Docker's ``Network`` (``GET /networks/{id}``) of stored network ``n``, as a manager shows a
    swarm network (moby ``BasicNetworkFromGRPC``): ``Options`` are the ``DriverState`` options
    (the VXLAN ID included), ``IPAM`` the allocated config, ``Created`` the RFC 3339 creation
    time, ``Containers`` empty (the manager knows no local endpoints)."""
    spec = n.get("Spec") or {}
    state = n.get("DriverState") or {}
    ipam = n.get("IPAMOptions") or spec.get("IPAMOptions") or {}
    ipam_driver = ipam.get("Driver") or {}
    config = []
    for c in ipam.get("Configs") or []:
        cfg = {"Subnet": c.get("Subnet", ""), "Gateway": c.get("Gateway", "")}
        if c.get("Range"):
            cfg["IPRange"] = c["Range"]
        config.append(cfg)
    return {
        "Name": spec.get("Name", ""), "Id": n["ID"], "Created": n.get("CreatedAt", ""), "Scope": SCOPE,
        "Driver": state.get("Name") or (spec.get("DriverConfiguration") or {}).get("Name") or DRIVER,
        "EnableIPv6": bool(spec.get("IPv6Enabled")),
        "IPAM": {"Driver": ipam_driver.get("Name") or "default", "Options": ipam_driver.get("Options") or None,
                 "Config": config},
        "Internal": bool(spec.get("Internal")), "Attachable": bool(spec.get("Attachable")),
        "Ingress": bool(spec.get("Ingress")), "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
        "Containers": {}, "Options": dict(state.get("Options") or {}), "Labels": dict(spec.get("Labels") or {}),
    }


def find(store: Store, ref: str) -> Obj:
    """The stored network (module docstring) with ID, name or unique ID prefix ``ref`` (Docker's
    lookup order). Raises :class:`NotFound` ``network {ref} not found``, :class:`InvalidArgument`
    ``network {ref} is ambiguous (N matches found)``."""
    return resolve(store.view(), "networks", ref, "network", network_names)


def inspect(store: Store, ref: str) -> Obj:
    """``networks.inspect``: Docker's ``Network`` JSON of ``ref`` (see :func:`find`)::

        {"Name", "Id", "Created", "Scope": "swarm", "Driver": "overlay", "EnableIPv6": false,
         "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet", "Gateway"[, "IPRange"]}]},
         "Internal", "Attachable", "Ingress", "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
         "Containers": {}, "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097", …},
         "Labels"}

    Raises as :func:`find`."""
    return _present(find(store, ref))


def _pattern_match(value: str, patterns: Iterable[str]) -> bool:
    """Docker's ``filters.Match``: a value matches when it equals a pattern or the pattern (a Go
    regular expression, unanchored) matches it. Shoal takes the pattern as a substring with
    optional ``^`` / ``$`` anchors and no other regex syntax, so no pattern can make a listing
    slow (``name=^web$``, ``name=web``, ``id=3f2`` work as in Docker)."""
    for p in patterns:
        if p == value:
            return True
        start, end = p.startswith("^"), p.endswith("$") and len(p) > 1
        core = p[1 if start else 0:len(p) - 1 if end else len(p)]
        if (start and end and value == core) or (start and not end and value.startswith(core)) or (
                end and not start and value.endswith(core)) or (not start and not end and core in value):
            return True
    return False


def list_networks(store: Store, filters: Filters | None = None) -> list[Obj]:
    """``networks.list``: the swarm networks as Docker ``Network`` objects (see :func:`inspect`),
    sorted by name, filtered as Docker's ``GET /networks`` (MOBY: daemon/network/filter.go):
    ``id`` and ``name`` (match, see :func:`_pattern_match`), ``label`` (``key`` or ``key=value``,
    all must match), ``driver`` (exact), ``scope`` (``swarm`` | ``global`` | ``local``: every network
    here is ``swarm``), ``type`` (``custom`` | ``builtin``: every swarm network is custom, the
    pre-defined ones are the nodes' local networks). Raises :class:`InvalidArgument` ``invalid
    filter '{key}'``, ``invalid filter 'type=x'`` / ``'scope=x'`` for a value Docker refuses."""
    f = filters or {}
    check_filters(f, FILTERS)
    for t in f.get("type", []):
        if t not in ("custom", "builtin"):
            raise InvalidArgument(f"invalid filter 'type={t}'")
    for s in f.get("scope", []):
        if s not in ("swarm", "global", "local"):
            raise InvalidArgument(f"invalid filter 'scope={s}'")
    out = []
    for n in store.view().list("networks"):
        net = _present(n)
        if "id" in f and not _pattern_match(net["Id"], f["id"]):
            continue
        if "name" in f and not _pattern_match(net["Name"], f["name"]):
            continue
        if "label" in f and not labels_match(net["Labels"], f["label"]):
            continue
        if "driver" in f and net["Driver"] not in f["driver"]:
            continue
        if "scope" in f and net["Scope"] not in f["scope"]:
            continue
        if "type" in f and "custom" not in f["type"]:
            continue
        out.append(net)
    out.sort(key=lambda n: (str(n["Name"]), str(n["Id"])))
    return out


# -- writing --------------------------------------------------------------------------------------

def store_allocator(tx: ReadTx) -> Allocator:
    """An allocator holding exactly what the store (as ``tx`` sees it) holds, as the allocator loop
    rebuilds it (:func:`manager.allocator.loop.rebuild_allocator`: only the tasks that still hold
    their addresses count; the cluster's default address pools)."""
    return rebuild_allocator(tx, tx.list_shallow("networks"), tx.list_shallow("services"),
                             tx.list_shallow("tasks"), tx.list_shallow("nodes"))


def add_network(tx: WriteTx, nid: str, spec: Obj) -> Obj:
    """Store network ``nid`` with the validated ``spec`` (:func:`validate_create_request`) in
    ``tx``, with its subnet and VNI from an allocator rebuilt from ``tx`` (the body of
    :func:`create`; swarm init calls it for the ingress network in the cluster's first
    transaction). Returns the stored network. Raises as :func:`create`."""
    name = str(spec["Name"])
    for other in tx.list_shallow("networks"):
        other_spec = other.get("Spec") or {}
        if str(other_spec.get("Name", "")).lower() == name.lower():
            raise Conflict(f"network with name {name} already exists")
        if spec["Ingress"] and other_spec.get("Ingress"):
            raise Conflict(f"rpc error: code = AlreadyExists desc = ingress network "
                           f"{other_spec.get('Name')} ({other['ID']}) is already present")
    try:
        alloc = store_allocator(tx).allocate_network(nid, spec)
    except AllocatorError as e:
        raise allocator_error(e) from None
    state = alloc.driver_state()
    state["Options"] = {**(spec["DriverConfiguration"].get("Options") or {}), **state["Options"]}
    ipam = alloc.ipam_options()
    ipam_opts = (spec["IPAMOptions"].get("Driver") or {}).get("Options")
    if ipam_opts:
        ipam["Driver"]["Options"] = dict(ipam_opts)
    network = {"ID": nid, "Spec": spec, "DriverState": state, "IPAMOptions": ipam}
    tx.create("networks", network)
    return network


async def create(ctx: Context, *, spec_body: Any) -> Obj:
    """``networks.create``: a new swarm overlay network from ``spec_body`` (Docker's
    ``NetworkCreateRequest``: ``Name``, ``Driver``, ``Options``, ``IPAM {Driver, Options, Config:
    [{Subnet, Gateway, IPRange}]}``, ``Attachable``, ``Ingress``, ``Internal``, ``Labels``; see
    :func:`validate_create_request`). In one transaction: the name must be free (case-insensitively,
    as swarmkit's name index), at most one network may be the ingress network, and the subnet (the
    user's, or the first free one of the cluster's default pools) and a VNI (4096 up, or the
    ``vxlanid_list`` option) are allocated by an allocator rebuilt from the store; the network is
    stored with them (module docstring). Returns ``{"Id", "Warning": ""}`` (Docker's
    ``NetworkCreateResponse``).

    Raises :class:`InvalidArgument` (bad request, see :func:`validate_create_request`; a subnet that
    overlaps another network's: "… subnet 10.1.0.0/24 overlaps with network \\"a\\" (10.1.0.0/16)"),
    :class:`PermissionDenied` (pre-defined name, internal label), :class:`Conflict` (``network with
    name {name} already exists``; ``… ingress network {name} ({id}) is already present``),
    :class:`FailedPrecondition` (no free subnet in the default pools, no free VNI),
    :class:`Unavailable`."""
    spec = validate_create_request(spec_body)
    nid = new_id()

    def fn(tx: WriteTx) -> Obj:
        add_network(tx, nid, spec)
        return {"Id": nid, "Warning": ""}

    result: Obj = await commit(ctx.store, fn)
    return result


def ingress_request(subnet: str | None = None) -> Obj:
    """The ``NetworkCreateRequest`` of the ingress network: ``ingress``, overlay, ``Ingress`` true,
    no IPAM config unless ``subnet`` is given, so it takes the first subnet of the cluster's default
    pools — 10.0.0.0/24 (gateway 10.0.0.1) with Docker's default pool, as swarmkit's
    ``newIngressNetwork`` (SWARM-FACTS 1.7)."""
    ipam: Obj = {"Driver": "default", "Config": [{"Subnet": subnet}] if subnet else []}
    return {"Name": INGRESS_NAME, "Driver": DRIVER, "Ingress": True, "IPAM": ipam}


async def create_ingress(ctx: Context, subnet: str | None = None) -> Obj:
    """Create the ingress network (:func:`ingress_request`) unless the store has an ingress
    network already: swarm init (on the leader, not through ``control.call``) is to call it once
    the cluster object exists. Returns ``{"Id", "Warning": ""}`` of the new or existing ingress
    network. Raises as :func:`create` (``Conflict`` when a network named ``ingress`` that is not
    the ingress network exists)."""
    for n in ctx.store.view().list("networks"):
        if (n.get("Spec") or {}).get("Ingress"):
            return {"Id": n["ID"], "Warning": ""}
    return await create(ctx, spec_body=ingress_request(subnet))


def _targets(spec: Mapping[str, Any]) -> list[str]:
    """The network targets of a service spec: ``TaskTemplate.Networks`` and (deprecated)
    ``Networks``, or of a task spec: ``Networks``."""
    out = []
    tt = spec.get("TaskTemplate")
    for holder in (tt if isinstance(tt, dict) else {}, spec):
        nets = holder.get("Networks")
        for n in nets if isinstance(nets, list) else []:
            target = n.get("Target") if isinstance(n, dict) else n
            if isinstance(target, str) and target:
                out.append(target)
    return out


def _publishes_ingress(service: Mapping[str, Any]) -> bool:
    ports = list(((service.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or [])
    ports += list((service.get("Endpoint") or {}).get("Ports") or [])
    return any(isinstance(p, dict) and str(p.get("PublishMode") or "ingress").lower() == "ingress"
               for p in ports)


def _in_use(tx: WriteTx, net: Obj) -> str | None:
    """Why ``net`` cannot be removed (the services or a live task using it), or None."""
    nid = net["ID"]
    name = str((net.get("Spec") or {}).get("Name", ""))
    refs = {nid, name}
    users = [s for s in tx.list_shallow("services") if refs & set(_targets(s.get("Spec") or {}))]
    if users:
        named = ", ".join(f"{(s.get('Spec') or {}).get('Name', '')} ({s['ID']})"
                          for s in sorted(users, key=lambda s: str((s.get("Spec") or {}).get("Name", ""))))
        return f"network {name} ({nid}) is in use by service{'s' if len(users) > 1 else ''} {named}"
    if (net.get("Spec") or {}).get("Ingress"):
        for s in tx.list_shallow("services"):
            if _publishes_ingress(s):
                return (f"ingress network cannot be removed because service {(s.get('Spec') or {}).get('Name', '')} "
                        f"({s['ID']}) depends on it")
    for t in tx.list_shallow("tasks"):
        if is_terminal(str((t.get("Status") or {}).get("State", ""))):
            continue
        attached = {str((a.get("Network") or {}).get("ID", "")) for a in t.get("NetworksAttachments") or []
                    if isinstance(a, dict)}
        if nid in attached or refs & set(_targets(t.get("Spec") or {})):
            return f"network {name} ({nid}) is in use by task {t.get('Name') or t['ID']} ({t['ID']})"
    return None


async def remove(ctx: Context, *, ref: str) -> None:
    """``networks.remove``: delete the network ``ref`` (ID, name or unique ID prefix, resolved in
    the transaction) unless something uses it, as swarmkit's ``RemoveNetwork``: a service whose
    ``TaskTemplate.Networks`` or ``Networks`` targets it (by ID or name), for the ingress network a
    service publishing a port in ingress mode, or a task not yet stopped attached to it. Deleting
    the object releases its subnet and VNI (the allocator is rebuilt from the store).

    Raises :class:`NotFound` ``network {ref} not found``, :class:`InvalidArgument` (ambiguous),
    :class:`FailedPrecondition` ``rpc error: code = FailedPrecondition desc = network {name} ({id})
    is in use by service web (ID)`` (every service named) / ``… by task …`` / ``ingress network
    cannot be removed because service {name} ({id}) depends on it``, :class:`Unavailable`."""

    def fn(tx: WriteTx) -> None:
        net = resolve(tx, "networks", ref, "network", network_names)
        why = _in_use(tx, net)
        if why is not None:
            raise FailedPrecondition(FAILED_PRECONDITION + why)
        tx.delete("networks", net["ID"])

    await commit(ctx.store, fn)
