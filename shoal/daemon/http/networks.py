"""The network routes: ``GET /networks``, ``GET /networks/{id}``, ``POST /networks/create``,
``DELETE /networks/{id}``.

Every node has one local network, its bridge (``bridge``, ``shoal-bridge``, scope ``local``),
listed and inspected on any node, in or out of a swarm. A manager also serves the swarm's overlay
networks (:mod:`manager.controlapi.networks`): reads from its own store after the read barrier
(as every swarm GET), writes (create, remove) through :class:`manager.controlapi.control.Control`
(run on the Raft leader). A worker, or a node outside a swarm, lists only its bridge, as Docker
lists only the local networks there. Networks are therefore not among the swarm routes the
application's middleware guards (``SWARM_PREFIXES``): these handlers ask :class:`SwarmAccess`.

Shapes (Docker Engine API v1.41):

- ``POST /networks/create`` body ``NetworkCreateRequest`` ``{"Name", "Driver": "overlay",
  "Options", "IPAM": {"Driver", "Config": [{"Subnet", "Gateway", "IPRange"}]}, "Attachable",
  "Internal", "Labels", …}`` → 201 ``{"Id", "Warning": ""}``. Errors: 400 a driver other than
  ``overlay`` (``bridge``/``local``/none: each node has its one bridge), and the control API's
  400 (bad request, overlapping subnet, ``encrypted``), 403 (pre-defined name), 409 (name taken);
  503 ``This node is not a swarm manager…`` on a node that is not a manager.
- ``GET /networks?filters=`` → ``[Network]``: the bridge, then the swarm networks by name.
  Filters ``id``, ``name``, ``label``, ``driver``, ``scope``, ``type`` (apply to the bridge too:
  it is ``builtin``, scope ``local``, driver ``bridge``); 400 ``invalid filter …``.
- ``GET /networks/{id}?scope=swarm|local&verbose=`` → ``Network`` (by ID, name or ID prefix; the
  bridge first unless ``scope=swarm``, the swarm networks unless ``scope=local``); 404
  ``network X not found``.
- ``DELETE /networks/{id}`` → 204. The bridge: 403 ``bridge is a pre-defined network and cannot
  be removed``; a swarm network through ``networks.remove`` (404, 400 in use).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from manager.controlapi import networks
from manager.controlapi.common import Filters, check_filters, labels_match
from manager.controlapi.control import Control
from manager.controlapi.errors import NotFound
from shoal.base.util import now_rfc3339
from shoal.daemon.http.common import parse_filters, route
from shoal.daemon.http.errors import HttpError, api_error, read_json

__all__ = ["BRIDGE_ID", "BRIDGE_NAME", "SwarmAccess", "add_routes", "bridge_matches", "check_network_filters",
           "swarm_access"]

BRIDGE_NAME = "bridge"
BRIDGE_ID = "shoal-bridge"

_BRIDGE_NETWORK: dict[str, Any] = {
    "Name": BRIDGE_NAME, "Id": BRIDGE_ID, "Created": "", "Scope": "local", "Driver": "bridge",
    "EnableIPv6": False, "Internal": False, "Attachable": False, "Ingress": False,
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.200.0.0/16"}]},
    "Options": {}, "Labels": {}, "Containers": {},
}
"""Each node's local network: its bridge (a /24 of 10.200.0.0/16 per node; node-local like
docker_gwbridge, so nodes share /24s once the pool's are all used)."""

ONE_BRIDGE = ("each node has one local bridge network (bridge) and no other local network can be "
              "created: shoal creates overlay networks only (docker network create -d overlay NAME)")

BRIDGE_NOT_REMOVABLE = "bridge is a pre-defined network and cannot be removed"

SCOPES = ("swarm", "local", "global")


class SwarmAccess(Protocol):
    """What the network routes need to know of the node's swarm role."""

    def manager(self) -> Any | None:
        """The node's manager role (a :class:`manager.manager.Manager` or a double with ``store``),
        or None on a worker or outside a swarm."""

    def refusal(self) -> str:
        """Docker's message for a swarm write on this node when it is not a manager."""

    async def barrier(self, request: web.Request) -> web.StreamResponse | None:
        """The manager's read barrier for ``request``: None to serve it, else the 503 to answer."""


def _pattern_match(value: str, patterns: list[str]) -> bool:
    """Docker's ``filters.Match`` as :mod:`manager.controlapi.networks` applies it to swarm
    networks: equal, or a substring with optional ``^`` / ``$`` anchors."""
    for p in patterns:
        start, end = p.startswith("^"), p.endswith("$") and len(p) > 1
        core = p[1 if start else 0:len(p) - 1 if end else len(p)]
        if p == value or (start and end and value == core) or (start and not end and value.startswith(core)) or (
                end and not start and value.endswith(core)) or (not start and not end and core in value):
            return True
    return False


def check_network_filters(f: Filters) -> None:
    """Refuse the filters Docker refuses on ``GET /networks``: an unknown key (``invalid filter
    'x'``), a ``type`` other than custom/builtin (``invalid filter 'type=x'``), a ``scope`` other
    than swarm/global/local. Raises :class:`manager.controlapi.errors.InvalidArgument` or
    :class:`HttpError`, both 400."""
    check_filters(f, networks.FILTERS)
    for t in f.get("type", []):
        if t not in ("custom", "builtin"):
            raise HttpError(400, f"invalid filter 'type={t}'")
    for s in f.get("scope", []):
        if s not in SCOPES:
            raise HttpError(400, f"invalid filter 'scope={s}'")


def bridge_matches(bridge: dict[str, Any], f: Filters) -> bool:
    """Whether the bridge network passes filters ``f`` (already checked): it is ``builtin``,
    scope ``local``, driver ``bridge``, no labels."""
    return not (("id" in f and not _pattern_match(bridge["Id"], f["id"]))
                or ("name" in f and not _pattern_match(bridge["Name"], f["name"]))
                or ("label" in f and not labels_match(bridge["Labels"], f["label"]))
                or ("driver" in f and bridge["Driver"] not in f["driver"])
                or ("scope" in f and bridge["Scope"] not in f["scope"])
                or ("type" in f and "builtin" not in f["type"]))


def _driver_of(body: Any) -> Any:
    """The ``Driver`` of a create request (keys matched case-insensitively, as Go decodes them)."""
    if not isinstance(body, dict):
        return None
    for k, v in body.items():
        if isinstance(k, str) and k.lower() == "driver":
            return v
    return None


def _query_scope(request: web.Request) -> str:
    scope = request.query.get("scope", "")
    if scope and scope not in SCOPES:
        raise HttpError(400, f"invalid scope {scope[:64]!r}: use swarm, global or local")
    return scope


def add_routes(app: web.Application, swarm: SwarmAccess) -> None:
    """Register the network routes; ``swarm`` says whether this node is a manager (module
    docstring). The bridge's ``Created`` is when the routes were made (the daemon's start), in
    RFC 3339: the docker CLI parses it (an empty string breaks ``network ls``)."""
    bridge = dict(_BRIDGE_NETWORK, Created=now_rfc3339())

    def is_bridge(ref: str) -> bool:
        return ref in (BRIDGE_NAME, BRIDGE_ID)

    async def manager_for_read(request: web.Request) -> tuple[Any | None, web.StreamResponse | None]:
        mgr = swarm.manager()
        if mgr is None:
            return None, None
        return mgr, await swarm.barrier(request)

    @route(app, "GET", "/networks")
    async def networks_list(request: web.Request) -> web.StreamResponse:
        """GET /networks?filters= → the bridge (if it passes) + the swarm networks on a manager."""
        f = parse_filters(request.query.get("filters"))
        check_network_filters(f)
        mgr, refused = await manager_for_read(request)
        if refused is not None:
            return refused
        out = [bridge] if bridge_matches(bridge, f) else []
        if mgr is not None:
            out += networks.list_networks(mgr.store, f)
        return web.json_response(out)

    @route(app, "GET", "/networks/{id}")
    async def network_inspect(request: web.Request) -> web.StreamResponse:
        """GET /networks/{id}?scope=&verbose= → Network (verbose adds nothing: no local endpoints)."""
        ref = request.match_info["id"]
        scope = _query_scope(request)
        local_ok, swarm_ok = scope in ("", "local"), scope != "local"
        if local_ok and is_bridge(ref):
            return web.json_response(bridge)
        mgr, refused = await manager_for_read(request) if swarm_ok else (None, None)
        if refused is not None:
            return refused
        if mgr is not None:
            try:
                return web.json_response(networks.inspect(mgr.store, ref))
            except NotFound:
                pass
        if local_ok and ref and BRIDGE_ID.startswith(ref):
            return web.json_response(bridge)
        return api_error(404, f"network {ref} not found")

    @route(app, "POST", "/networks/create")
    async def network_create(request: web.Request) -> web.StreamResponse:
        """POST /networks/create with a NetworkCreateRequest → 201 {"Id", "Warning"}."""
        body = await read_json(request, empty_is_object=False)
        if not isinstance(body, dict):
            raise HttpError(400, "the body of POST /networks/create must be a JSON object (a "
                                 "NetworkCreateRequest: {\"Name\": …, \"Driver\": \"overlay\", …})")
        driver = _driver_of(body)
        if driver in (None, "", "bridge", "local"):
            raise HttpError(400, ONE_BRIDGE)
        if isinstance(driver, str) and driver != networks.DRIVER:
            raise HttpError(400, f"network driver {driver[:64]!r} is not supported: shoal creates "
                                 f"{networks.DRIVER} networks only (--driver {networks.DRIVER})")
        mgr = swarm.manager()
        if mgr is None:
            raise HttpError(503, swarm.refusal())
        return web.json_response(await Control(mgr).call("networks.create", {"spec_body": body}), status=201)

    @route(app, "DELETE", "/networks/{id}")
    async def network_remove(request: web.Request) -> web.StreamResponse:
        """DELETE /networks/{id} → 204; the bridge 403; a swarm network through networks.remove."""
        ref = request.match_info["id"]
        if is_bridge(ref):
            raise HttpError(403, BRIDGE_NOT_REMOVABLE)
        mgr = swarm.manager()
        if mgr is None:
            return api_error(404, f"network {ref} not found")
        await Control(mgr).call("networks.remove", {"ref": ref})
        return web.Response(status=204)


def swarm_access(manager: Callable[[], Any | None], refusal: Callable[[], str],
                 barrier: Callable[[web.Request], Awaitable[web.StreamResponse | None]]) -> SwarmAccess:
    """A :class:`SwarmAccess` from three functions (the application's, or a test's)."""

    class _Access:
        def manager(self) -> Any | None:
            return manager()

        def refusal(self) -> str:
            return refusal()

        async def barrier(self, request: web.Request) -> web.StreamResponse | None:
            return await barrier(request)

    return _Access()
