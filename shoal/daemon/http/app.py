"""The Docker Engine API application of a node: the routes (one module per group: system, swarm,
nodes, services, tasks, images, networks), the swarm-state checks, linearizable reads on
managers, version prefixes and error rendering (:mod:`shoal.daemon.http.errors`).

Writes to the cluster go through the control API (:class:`manager.controlapi.control.Control`),
which runs them on the Raft leader: here, or sent to it as a ``control.call`` over 2377."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from manager.controlapi.errors import ControlError, unavailable
from manager.store import Unavailable
from shoal import __version__
from shoal.base.boundedjson import MAX_JSON_BYTES
from shoal.daemon.daemon import API_VERSION, CONSISTENCY_HEADER, MIN_API_VERSION, Daemon, log
from shoal.daemon.errors import NOT_IN_SWARM, WORKER_NOT_MANAGER, SwarmStateError
from shoal.daemon.http import events, images, networks, nodes, services, swarm, system, tasks, unsupported
from shoal.daemon.http.errors import api_error, render


def _split_version(path: str) -> tuple[str | None, str]:
    """``/v1.41/info`` → ``("1.41", "/info")``; a path without a ``/v{version}`` prefix (digits
    and dots, at least one digit) → ``(None, path)``, matched as it is."""
    if path.startswith("/v") and "/" in path[2:]:
        head, rest = path[2:].split("/", 1)
        if head and not head.strip("0123456789.") and head.replace(".", ""):
            return head, "/" + rest
    return None, path


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"1.41"`` → ``(1, 41)``; an empty component counts as 0 (Docker's versions.compare)."""
    return tuple(int(p) if p.isdigit() else 0 for p in text[:64].split("."))


def _version_problem(version: str) -> str | None:
    """Why API ``version`` (from a ``/v{version}`` prefix) is refused (Docker's version
    middleware: 400 when older than :data:`MIN_API_VERSION` or newer than :data:`API_VERSION`),
    None when it is served."""
    v = _version_tuple(version)
    shown = version if len(version) <= 64 else version[:64] + "…"
    if v < _version_tuple(MIN_API_VERSION):
        return (f"client version {shown} is too old. Minimum supported API version is {MIN_API_VERSION}, "
                "please upgrade your client to a newer version")
    if v > _version_tuple(API_VERSION):
        return f"client version {shown} is too new. Maximum supported API version is {API_VERSION}"
    return None


SWARM_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks")
"""The routes that need a manager. Not ``/networks``: the local bridge is served on any node, the
swarm networks by the network routes themselves (:mod:`shoal.daemon.http.networks`)."""
LOCAL_SWARM_PATHS = ("/swarm/init", "/swarm/join", "/swarm/leave")


def add_swarm_routes(app: web.Application, manager: Any) -> None:
    """The manager's routes (``/swarm``, ``/nodes*``, ``/services*``, ``/tasks*``) served from
    ``manager`` (a :class:`manager.manager.Manager` or anything with the attributes
    :class:`manager.controlapi.common.Context` lists, plus ``read_logs_page`` for logs)."""
    swarm.add_routes(app, manager)
    nodes.add_routes(app, manager)
    services.add_routes(app, manager)
    tasks.add_routes(app, manager)


def build_app(daemon: Daemon) -> web.Application:
    """The Docker Engine API application: local routes plus the manager's swarm routes."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        version, path = _split_version(request.path)
        problem = None if version is None else _version_problem(version)
        if problem is not None:
            return api_error(400, problem)
        if path.startswith(SWARM_PREFIXES) and not path.startswith(LOCAL_SWARM_PATHS):
            if not daemon.state.in_swarm:
                return api_error(503, NOT_IN_SWARM)
            if daemon.manager is None:
                return api_error(503, WORKER_NOT_MANAGER)
            refused = await _read_barrier(daemon, request)
            if refused is not None:
                return refused
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status in (404, 405):
                # Docker's router answers a path it lacks, and a method a path does not take,
                # with 404 "page not found" (moby's NotFoundHandler and MethodNotAllowedHandler)
                return api_error(404, "page not found")
            if e.status >= 400 and e.content_type != "application/json":
                return api_error(e.status, e.reason)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            rendered = render(e)
            if rendered is not None:
                return rendered
            # a bug, not bad input: the traceback goes to the log, the client gets Docker's shape
            log.exception("%s %s failed", request.method, request.path)
            return api_error(500, f"internal error serving {request.method} {path}: {type(e).__name__}: {e}")
        resp.headers.setdefault("Api-Version", API_VERSION)
        resp.headers.setdefault("Server", f"Shoal/{__version__} (linux)")
        return resp

    # JSON bodies are read through shoal.daemon.http.errors.read_body (MAX_JSON_BYTES); this is the
    # backstop for any other read. `images/load` streams request.content, which this does not limit.
    app = web.Application(middlewares=[middleware], client_max_size=MAX_JSON_BYTES)
    system.add_routes(app, daemon)
    swarm.add_local_routes(app, daemon)
    images.add_routes(app, daemon)
    networks.add_routes(app, _network_access(daemon))
    add_swarm_routes(app, _ManagerProxy(daemon))
    events.add_routes(app, lambda: getattr(daemon.manager, "events", None) if daemon.state.in_swarm else None)
    unsupported.add_routes(app)  # last: Docker's routes Shoal does not serve yet answer 501
    return app


async def _read_barrier(daemon: Daemon, request: web.Request) -> web.StreamResponse | None:
    """Make a read (GET, HEAD) linearizable with a ReadIndex barrier on this manager, unless the
    caller asked for a local read (``X-Shoal-Consistency: local``). None = serve the request;
    else Docker's 503. (Writes run on the leader through the control API.)"""
    if request.method not in ("GET", "HEAD"):
        return None
    if request.headers.get(CONSISTENCY_HEADER, "").lower() == "local":
        return None
    mgr = daemon.manager
    try:
        await mgr.read_barrier()
    except Unavailable as e:
        return api_error(503, unavailable(str(e)).message)
    except ControlError as e:
        return api_error(e.status, e.message)
    return None


def _network_access(daemon: Daemon) -> networks.SwarmAccess:
    """The network routes' view of the node's role: the manager when there is one (its reads
    after :func:`_read_barrier`), else Docker's not-a-manager message for a swarm write."""
    return networks.swarm_access(
        manager=lambda: daemon.manager if daemon.state.in_swarm else None,
        refusal=lambda: WORKER_NOT_MANAGER if daemon.state.in_swarm else NOT_IN_SWARM,
        barrier=lambda request: _read_barrier(daemon, request))


class _ManagerProxy:
    """Forwards attribute access to the daemon's current ``Manager`` (the role can start later)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        mgr = self._daemon.manager
        if mgr is None:
            raise SwarmStateError(NOT_IN_SWARM)
        return getattr(mgr, name)
