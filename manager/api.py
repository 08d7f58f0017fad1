"""The swarm routes of the Docker Engine API (``/swarm``, ``/nodes*``, ``/services*``, ``/tasks*``).

Shapes, query parameters and status codes follow the Docker Engine API (MOBY: api/swagger.yaml,
v1.41+) and the errors moby returns for them (MOBY: daemon/cluster/*.go, errdefs): HTTP status
plus JSON ``{"message": ...}``. Every route is also served under ``/v{version}/``.

``add_routes(app, manager)`` needs from ``manager`` (see docs/contracts.md): ``store``
(:class:`manager.store.Store`), ``cluster_id``, ``node_id``, ``join_tokens() -> {"Worker",
"Manager"}``, ``ca_cert_pem``, ``await read_logs(task_ids, tail, since, timestamps) ->
[{"task_id", "stream", "time", "log", "node_id"?}]`` or, preferred when present, ``await
read_logs_page(task_ids, tail, since, timestamps, cursors) -> {"lines", "cursors", "more"}``, and optionally
``rotate_join_token(role) -> str`` for ``/swarm/update?rotate…Token=true``. Attribute access may
raise (the daemon's proxy raises its own "not in a swarm" error, which it turns into 503).

Object IDs in paths may be a full ID, a name (services: ``Spec.Name``; nodes: hostname or
``Spec.Name``) or a unique ID prefix, as Docker resolves them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from manager.ca import blacklist_node
from manager.orchestrator import service_status
from manager.specs import (
    SpecError,
    service_spec_with_defaults,
    task_spec_with_defaults,
    validate_node_spec,
    validate_service_spec,
    validate_swarm_spec,
)
from manager.store import Conflict, NotFound, ReadTx, Store, Unavailable, WriteTx
from shoal.base.boundedjson import MAX_JSON_BYTES, InvalidJSON
from shoal.base.boundedjson import loads as bounded_loads
from shoal.base.util import new_id, now_rfc3339, parse_rfc3339

__all__ = ["add_routes", "ApiError", "parse_filters", "mux_frame", "read_body", "read_json"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INVALID_ARGUMENT = "rpc error: code = InvalidArgument desc = "
LOG_FOLLOW_POLL = 1.0  # seconds between polls of the nodes for `logs --follow` (none while pages are pending)


class ApiError(Exception):
    """An error to return as ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    # Content-Type exactly "application/json": the docker client only decodes the error body
    # (and prints just the message) when the header is that string, without a charset.
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        content_type="application/json")


def _store_error(e: Exception) -> ApiError:
    msg = str(e)
    if isinstance(e, Conflict):
        # a version mismatch is a plain (Unknown) gRPC error in swarmkit -> 500 in Docker
        return ApiError(500 if "out of sequence" in msg else 409, msg)
    if isinstance(e, NotFound):
        return ApiError(404, msg)
    if isinstance(e, Unavailable):
        return ApiError(503, f"rpc error: code = Unavailable desc = {msg}")
    return ApiError(500, msg)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body too large: the limit is {limit} bytes ({limit / 1048576:g} MiB) "
                         "for an API request with a JSON body")


async def read_body(request: web.Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The request body, read in chunks and never more than ``limit`` bytes (whatever the
    application's ``client_max_size``). Raises :class:`ApiError` 413 when the body (by its
    ``Content-Length`` or as it arrives) is larger."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    if not request.body_exists:
        return b""
    buf = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > limit:
            raise _too_large(limit)
    return bytes(buf)


async def read_json(request: web.Request, allow_empty: bool = False) -> Any:
    """Read and decode the JSON body of ``request`` through the bounded decoder
    (:func:`shoal.base.boundedjson.loads`: size, nesting depth, Go's number and string rules).
    An empty body is None when ``allow_empty``, else a 400. Raises :class:`ApiError` 400 (or
    413 for a body over :data:`shoal.base.boundedjson.MAX_JSON_BYTES`) with the reason."""
    raw = await read_body(request)
    if not raw.strip():
        if allow_empty:
            return None
        raise ApiError(400, "invalid JSON: got EOF while reading request body")
    try:
        return bounded_loads(raw)
    except InvalidJSON as e:
        raise ApiError(413 if e.too_large else 400, str(e)) from None


async def _json_body(request: web.Request) -> Any:
    return await read_json(request)


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Parse Docker's ``filters`` query parameter: JSON ``{"key": ["v", …]}`` or the older
    ``{"key": {"v": true}}``, through the bounded decoder. Raises :class:`ApiError` 400 if
    malformed."""
    if not raw:
        return {}
    try:
        data = bounded_loads(raw, "filters")
    except InvalidJSON as e:
        raise ApiError(400, f"invalid filter: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid filter: must be a JSON object of lists")
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[str(k)] = [str(x) for x, on in v.items() if on]
        elif isinstance(v, list):
            out[str(k)] = [str(x) for x in v]
        else:
            raise ApiError(400, f"invalid filter {k!r}: expected a list of values")
    return out


def _check_filters(filters: dict[str, list[str]], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for k in filters:
        if k not in allowed:
            raise ApiError(400, f"invalid filter '{k}'")


def _bool(request: web.Request, name: str, default: bool = False) -> bool:
    v = request.query.get(name)
    if v is None or v == "":
        return default
    return v.lower() in ("1", "true", "yes")


def _version(request: web.Request) -> int:
    v = request.query.get("version")
    if v is None or v == "":
        raise ApiError(400, "invalid Version: version parameter is required")
    try:
        return int(v)
    except ValueError:
        raise ApiError(400, f"invalid Version: strconv.ParseUint: parsing {v!r}: invalid syntax") from None


def _labels_match(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    labels = labels or {}
    for w in wanted:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


def _resolve(view: ReadTx, table: str, ref: str, kind: str, names: Callable[[Obj], Iterable[str]]) -> Obj:
    """Docker's lookup: exact ID, then name, then unique ID prefix."""
    obj = view.get(table, ref)
    if obj is not None:
        return obj
    items = view.list(table)
    by_name = [o for o in items if ref in set(names(o))]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ApiError(400, f"{kind} {ref} is ambiguous ({len(by_name)} matches found)")
    by_prefix = [o for o in items if str(o["ID"]).startswith(ref)] if ref else []
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise ApiError(400, f"{kind} {ref} is ambiguous ({len(by_prefix)} matches found)")
    raise ApiError(404, f"{kind} {ref} not found")


def _service_names(o: Obj) -> list[str]:
    return [str((o.get("Spec") or {}).get("Name", ""))]


def _node_names(o: Obj) -> list[str]:
    return [str((o.get("Description") or {}).get("Hostname", "")), str((o.get("Spec") or {}).get("Name", ""))]


def _task_names(view: ReadTx) -> Callable[[Obj], list[str]]:
    return lambda o: [str(o.get("Name", ""))]


def mux_frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: ``[stream u8, 0, 0, 0, length u32 BE] data``
    (stream 1 = stdout, 2 = stderr, 3 = system error)."""
    return struct.pack(">BxxxI", stream, len(data)) + data


def _format_ts(rfc: str) -> str:
    """RFC 3339 with exactly 9 fractional digits (moby's rfc3339NanoFixed)."""
    secs = parse_rfc3339(rfc)
    whole = int(secs)
    main, _, rest = rfc.partition(".")
    frac = "".join(ch for ch in rest if ch.isdigit())[:9].ljust(9, "0") if rest else "000000000"
    if not rest:
        main = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{main}.{frac}Z"


def add_routes(app: web.Application, manager: Any) -> None:
    """Register the swarm routes on ``app`` (plain and under ``/v{version}``), served from
    ``manager`` (see the module docstring)."""

    def store() -> Store:
        s: Store = manager.store
        return s

    def route(method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            async def wrapped(request: web.Request) -> web.StreamResponse:
                try:
                    return await fn(request)
                except ApiError as e:
                    return _error(e.status, e.message)
                except SpecError as e:
                    return _error(400, INVALID_ARGUMENT + str(e))
                except (Conflict, NotFound, Unavailable) as e:
                    err = _store_error(e)
                    return _error(err.status, err.message)

            wrapped.__name__ = fn.__name__
            wrapped.__doc__ = fn.__doc__
            app.router.add_route(method, path, wrapped)
            app.router.add_route(method, r"/v{version:[0-9.]+}" + path, wrapped)
            return fn

        return deco

    async def update(fn: Callable[[WriteTx], Any]) -> Any:
        try:
            return await store().update(fn)
        except (Conflict, NotFound, Unavailable) as e:
            raise _store_error(e) from e

    # ------------------------------------------------------------------------------ swarm

    def swarm_object() -> Obj:
        view = store().view()
        cid = manager.cluster_id
        c = view.get("cluster", cid) if cid else None
        if c is None:
            clusters = view.list("cluster")
            c = clusters[0] if clusters else {"ID": cid}
        out: Obj = {
            "ID": c.get("ID", cid),
            "Version": c.get("Version", {"Index": 0}),
            "CreatedAt": c.get("CreatedAt", ""),
            "UpdatedAt": c.get("UpdatedAt", ""),
            "Spec": c.get("Spec") or {},
            "TLSInfo": c.get("TLSInfo") or {"TrustRoot": manager.ca_cert_pem, "CertIssuerSubject": "",
                                             "CertIssuerPublicKey": ""},
            "RootRotationInProgress": bool(c.get("RootRotationInProgress", False)),
            "DefaultAddrPool": c.get("DefaultAddrPool", ["10.0.0.0/8"]),
            "SubnetSize": c.get("SubnetSize", 24),
            "DataPathPort": c.get("DataPathPort", 4789),
            "JoinTokens": manager.join_tokens(),
        }
        return out

    @route("GET", "/swarm")
    async def swarm_inspect(request: web.Request) -> web.StreamResponse:
        """GET /swarm: ClusterInfo + JoinTokens."""
        return web.json_response(swarm_object())

    @route("POST", "/swarm/update")
    async def swarm_update(request: web.Request) -> web.StreamResponse:
        """POST /swarm/update?version=&rotateWorkerToken=&rotateManagerToken= with a SwarmSpec."""
        version = _version(request)
        spec = validate_swarm_spec(await _json_body(request))
        rotate = [r for r, q in (("worker", "rotateWorkerToken"), ("manager", "rotateManagerToken"))
                  if _bool(request, q)]
        if _bool(request, "rotateManagerUnlockKey"):
            raise ApiError(400, "autolock is not supported by shoal")
        new_tokens: dict[str, str] = {}
        rotate_fn = getattr(manager, "rotate_join_token", None) if rotate else None
        if rotate and rotate_fn is None:
            raise ApiError(501, "join token rotation is not supported by this manager")
        for role in rotate:
            assert rotate_fn is not None
            new_tokens[role.capitalize()] = rotate_fn(role)
        cid = manager.cluster_id

        def fn(tx: WriteTx) -> None:
            c = tx.get("cluster", cid)
            if c is None:
                raise ApiError(404, f"cluster {cid} not found")
            c["Version"] = {"Index": version}
            c["Spec"] = spec
            if new_tokens:
                jt = dict(c.get("JoinTokens") or {})
                jt.update(new_tokens)
                c["JoinTokens"] = jt
            tx.update("cluster", c)

        await update(fn)
        return web.Response(status=200)

    # ------------------------------------------------------------------------------ nodes

    @route("GET", "/nodes")
    async def node_list(request: web.Request) -> web.StreamResponse:
        """GET /nodes?filters= (id, name, role, membership, label, node.label)."""
        f = parse_filters(request.query.get("filters"))
        _check_filters(f, ("id", "name", "role", "membership", "label", "node.label"))
        out = []
        for n in store().view().list("nodes"):
            if "id" in f and not any(str(n["ID"]).startswith(v) for v in f["id"]):
                continue
            if "name" in f and not any(any(nm.startswith(v) for nm in _node_names(n) if nm) for v in f["name"]):
                continue
            if "role" in f and (n.get("Spec") or {}).get("Role") not in f["role"]:
                continue
            if "membership" in f and "accepted" not in f["membership"]:
                continue
            if "label" in f and not _labels_match(((n.get("Description") or {}).get("Engine") or {}).get("Labels"), f["label"]):
                continue
            if "node.label" in f and not _labels_match((n.get("Spec") or {}).get("Labels"), f["node.label"]):
                continue
            out.append(n)
        out.sort(key=lambda n: str((n.get("Description") or {}).get("Hostname", "")))
        return web.json_response(out)

    @route("GET", "/nodes/{id}")
    async def node_inspect(request: web.Request) -> web.StreamResponse:
        """GET /nodes/{id}: by ID, hostname or ID prefix."""
        return web.json_response(_resolve(store().view(), "nodes", request.match_info["id"], "node", _node_names))

    @route("DELETE", "/nodes/{id}")
    async def node_remove(request: web.Request) -> web.StreamResponse:
        """DELETE /nodes/{id}?force=: a node must be down (or ``force``) and not a manager. The
        node's ID goes into the cluster's ``BlacklistedCertificates``, so its certificate is
        refused on 2377 at once (manager.ca.blacklist_node)."""
        force = _bool(request, "force")
        n = _resolve(store().view(), "nodes", request.match_info["id"], "node", _node_names)
        if (n.get("Spec") or {}).get("Role") == "manager" or n.get("ManagerStatus"):
            raise ApiError(400, f"rpc error: code = FailedPrecondition desc = node {n['ID']} is a cluster "
                                "manager and is a member of the raft cluster. It must be demoted to worker before removal")
        if not force and (n.get("Status") or {}).get("State") != "down":
            raise ApiError(400, f"rpc error: code = FailedPrecondition desc = node {n['ID']} is not down and "
                                "can't be removed")
        def fn(tx: WriteTx) -> None:
            # its certificate stays valid for up to 90 days: refuse it on 2377 from now on
            # (SK: controlapi RemoveNode adds it to Cluster.BlacklistedCertificates)
            for c in tx.list("cluster"):
                blacklist_node(c, n["ID"])
                c.pop("Version", None)
                tx.update("cluster", c)
            tx.delete("nodes", n["ID"])

        await update(fn)
        return web.Response(status=200)

    @route("POST", "/nodes/{id}/update")
    async def node_update(request: web.Request) -> web.StreamResponse:
        """POST /nodes/{id}/update?version= with a NodeSpec (Role, Availability, Labels, Name)."""
        version = _version(request)
        spec = validate_node_spec(await _json_body(request))
        n = _resolve(store().view(), "nodes", request.match_info["id"], "node", _node_names)

        def fn(tx: WriteTx) -> None:
            cur = tx.get("nodes", n["ID"])
            if cur is None:
                raise ApiError(404, f"node {n['ID']} not found")
            old_role = (cur.get("Spec") or {}).get("Role")
            if old_role == "manager" and spec["Role"] == "worker":
                managers = tx.find("nodes", lambda o: (o.get("Spec") or {}).get("Role") == "manager")
                if len(managers) <= 1:
                    raise ApiError(400, "rpc error: code = FailedPrecondition desc = attempting to demote the "
                                        "last manager of the swarm")
                problem = manager.demote_problem(n["ID"])
                if problem is not None:
                    raise ApiError(400, f"rpc error: code = FailedPrecondition desc = {problem}")
            cur["Version"] = {"Index": version}
            cur["Spec"] = spec
            tx.update("nodes", cur)

        await update(fn)
        return web.Response(status=200)

    # ------------------------------------------------------------------------------ services

    def present_service(s: Obj, view: ReadTx, status: bool, insert_defaults: bool = False) -> Obj:
        out = dict(s)
        if insert_defaults:
            out["Spec"] = service_spec_with_defaults(s.get("Spec") or {})
            if out.get("PreviousSpec"):
                out["PreviousSpec"] = service_spec_with_defaults(out["PreviousSpec"])
        out.setdefault("Endpoint", {"Spec": {"Mode": "vip"}})
        if status:
            out["ServiceStatus"] = service_status(s, view.list("tasks"), view.list("nodes"))
        return out

    @route("GET", "/services")
    async def service_list(request: web.Request) -> web.StreamResponse:
        """GET /services?filters=&status= (filters: id, name, label, mode)."""
        f = parse_filters(request.query.get("filters"))
        _check_filters(f, ("id", "name", "label", "mode"))
        want_status = _bool(request, "status")
        view = store().view()
        out = []
        for s in view.list("services"):
            spec = s.get("Spec") or {}
            if "id" in f and not any(str(s["ID"]).startswith(v) for v in f["id"]):
                continue
            if "name" in f and not any(str(spec.get("Name", "")).startswith(v) for v in f["name"]):
                continue
            if "label" in f and not _labels_match(spec.get("Labels"), f["label"]):
                continue
            if "mode" in f:
                mode = "replicated" if "Replicated" in (spec.get("Mode") or {}) else "global"
                if mode not in f["mode"]:
                    continue
            out.append(present_service(s, view, want_status))
        out.sort(key=lambda s: str((s.get("Spec") or {}).get("Name", "")))
        return web.json_response(out)

    @route("POST", "/services/create")
    async def service_create(request: web.Request) -> web.StreamResponse:
        """POST /services/create with a ServiceSpec → 201 {"ID", "Warnings"}."""
        spec = validate_service_spec(await _json_body(request))
        sid = new_id()
        svc = {
            "ID": sid,
            "Spec": spec,
            "Endpoint": {"Spec": spec.get("EndpointSpec") or {"Mode": "vip"}},
        }
        await update(lambda tx: tx.create("services", svc))
        return web.json_response({"ID": sid, "Warnings": []}, status=201)

    @route("GET", "/services/{id}")
    async def service_inspect(request: web.Request) -> web.StreamResponse:
        """GET /services/{id}?insertDefaults=: by ID, name or ID prefix."""
        view = store().view()
        s = _resolve(view, "services", request.match_info["id"], "service", _service_names)
        return web.json_response(present_service(s, view, False, _bool(request, "insertDefaults")))

    @route("DELETE", "/services/{id}")
    async def service_remove(request: web.Request) -> web.StreamResponse:
        """DELETE /services/{id}: its tasks are shut down and removed by the orchestrator/reaper."""
        s = _resolve(store().view(), "services", request.match_info["id"], "service", _service_names)
        await update(lambda tx: tx.delete("services", s["ID"]))
        return web.Response(status=200)

    @route("POST", "/services/{id}/update")
    async def service_update(request: web.Request) -> web.StreamResponse:
        """POST /services/{id}/update?version=&rollback= with a ServiceSpec → {"Warnings"}."""
        version = _version(request)
        body = await _json_body(request)
        s = _resolve(store().view(), "services", request.match_info["id"], "service", _service_names)
        rollback = request.query.get("rollback") == "previous"
        if rollback:
            prev = s.get("PreviousSpec")
            if not prev:
                raise ApiError(500, f"rpc error: code = FailedPrecondition desc = service {s['ID']} does not "
                                    "have a previous spec")
            body = prev
        spec = validate_service_spec(body)
        old_name = (s.get("Spec") or {}).get("Name")
        if spec.get("Name") != old_name:
            raise ApiError(501, "rpc error: code = Unimplemented desc = renaming services is not supported")

        def fn(tx: WriteTx) -> None:
            cur = tx.get("services", s["ID"])
            if cur is None:
                raise ApiError(404, f"service {s['ID']} not found")
            cur["Version"] = {"Index": version}
            cur["PreviousSpec"] = cur.get("Spec")
            cur["Spec"] = spec
            # UpdateStatus as swarmkit's controlapi: a rollback starts one, any other update
            # clears it (the orchestrator's updater then sets "updating" if slots change)
            if rollback:
                cur["UpdateStatus"] = {"State": "rollback_started", "StartedAt": now_rfc3339(),
                                       "Message": "manually requested rollback"}
            else:
                cur.pop("UpdateStatus", None)
            cur["Endpoint"] = {"Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}
            tx.update("services", cur)

        await update(fn)
        return web.json_response({"Warnings": []})

    # ------------------------------------------------------------------------------ tasks

    @route("GET", "/tasks")
    async def task_list(request: web.Request) -> web.StreamResponse:
        """GET /tasks?filters= (id, name, service, node, label, desired-state, _up-to-date)."""
        f = parse_filters(request.query.get("filters"))
        _check_filters(f, ("id", "name", "service", "node", "label", "desired-state", "_up-to-date"))
        view = store().view()
        services = {s["ID"]: s for s in view.list("services")}
        svc_ids: set[str] | None = None
        if "service" in f:
            svc_ids = {_resolve(view, "services", v, "service", _service_names)["ID"] for v in f["service"]}
        node_ids: set[str] | None = None
        if "node" in f:
            node_ids = {_resolve(view, "nodes", v, "node", _node_names)["ID"] for v in f["node"]}
        desired: set[str] | None = None
        if "desired-state" in f:
            desired = set()
            for v in f["desired-state"]:
                if v not in ("running", "shutdown", "accepted"):
                    raise ApiError(400, f"Invalid desired-state filter: '{v}'")
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
            if "label" in f and not _labels_match(t.get("Labels"), f["label"]):
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
        return web.json_response(out)

    @route("GET", "/tasks/{id}")
    async def task_inspect(request: web.Request) -> web.StreamResponse:
        """GET /tasks/{id}: by ID or unique ID prefix."""
        view = store().view()
        return web.json_response(_resolve(view, "tasks", request.match_info["id"], "task", _task_names(view)))

    # ------------------------------------------------------------------------------ logs

    async def write_logs(request: web.Request, tasks_now: Callable[[], list[Obj] | None]) -> web.StreamResponse:
        """Docker's log stream (MOBY: api/server/httputils/write_log_stream.go): per line
        ``[timestamp ' '][details ' ']message``, multiplexed; details are the url-escaped,
        key-sorted ``com.docker.swarm.{node,service,task}.id`` attributes the CLI parses.

        ``tasks_now()`` gives the tasks whose logs to read (None once the service or task is
        gone). Lines come in bounded pages (``manager.read_logs_page``); the next page continues
        from each task's cursor (without ``follow`` the pages go on until none is pending, so
        lines written meanwhile are sent too). With ``follow``, the nodes are polled every
        ``LOG_FOLLOW_POLL`` seconds (at once while pages are pending) until the client goes away
        or the source is removed. Lines of different tasks are in time order within a page only."""
        stdout, stderr = _bool(request, "stdout"), _bool(request, "stderr")
        if not (stdout or stderr):
            raise ApiError(400, "Bad parameters: you must choose at least one stream")
        details = _bool(request, "details")
        timestamps = _bool(request, "timestamps")
        follow = _bool(request, "follow")
        tail_raw = request.query.get("tail", "all")
        if tail_raw in ("", "all"):
            tail = -1
        else:
            try:
                tail = int(tail_raw)
            except ValueError:
                raise ApiError(400, f"invalid tail value {tail_raw!r}: use a number or \"all\"") from None
        since_raw = request.query.get("since", "0") or "0"
        try:
            since = float(since_raw)
        except ValueError:
            since = parse_rfc3339(since_raw)
            if not since:
                raise ApiError(400, f"invalid since value {since_raw!r}: use a UNIX timestamp") from None

        async def read(tasks: list[Obj], tail: int, since: float,
                       cursors: dict[str, str]) -> tuple[list[Obj], dict[str, str], bool]:
            """One page: (lines, the tasks' new cursors, more pages pending)."""
            ids = [str(t["ID"]) for t in tasks]
            if not ids:
                return [], {}, False
            try:
                read_page = getattr(manager, "read_logs_page", None)
                if read_page is None:  # a manager without pages: every line at once, no cursors
                    return list(await manager.read_logs(ids, tail, since, timestamps)), {}, False
                page = await read_page(ids, tail, since, timestamps, {i: cursors[i] for i in ids if i in cursors})
            except Exception as e:  # noqa: BLE001 - reported to the client as Docker does
                raise ApiError(500, f"Error grabbing logs: {e}") from e
            return list(page.get("lines") or []), dict(page.get("cursors") or {}), bool(page.get("more"))

        def frames(lines: list[Obj], by_id: dict[str, Obj]) -> bytes:
            buf = bytearray()
            for ln in lines:
                stream = 2 if ln.get("stream") == "stderr" else 1
                if (stream == 1 and not stdout) or (stream == 2 and not stderr):
                    continue
                t = by_id.get(str(ln.get("task_id")), {})
                msg = str(ln.get("log", ""))
                if not msg.endswith("\n"):
                    msg += "\n"
                prefix = ""
                if timestamps:
                    prefix += _format_ts(str(ln.get("time", ""))) + " "
                if details:
                    attrs = sorted({
                        "com.docker.swarm.node.id": str(ln.get("node_id") or t.get("NodeID", "")),
                        "com.docker.swarm.service.id": str(t.get("ServiceID", "")),
                        "com.docker.swarm.task.id": str(t.get("ID", ln.get("task_id", ""))),
                    }.items())
                    prefix += ",".join(f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(v)}"
                                       for k, v in attrs) + " "
                buf += mux_frame(stream, (prefix + msg).encode())
            return bytes(buf)

        def key(ln: Obj) -> tuple[Any, ...]:
            return (ln.get("task_id"), ln.get("time"), ln.get("stream"), ln.get("log"))

        async def pump(resp: web.StreamResponse, tasks: list[Obj], lines: list[Obj], cursors: dict[str, str],
                       more: bool) -> None:
            """Write the first read, then (follow, or more pages) read on from each task's cursor: the
            position after its last line sent, which survives rotation. Tasks without a cursor (a node
            of an older version, a task not reached yet) are read by time as before: lines not older
            than the newest time seen among them, minus those already sent at that time."""
            by_time = [ln for ln in lines if str(ln.get("task_id")) not in cursors]
            last = max([parse_rfc3339(str(ln.get("time", ""))) for ln in by_time] + [since])
            sent_at_last = {key(ln) for ln in by_time if parse_rfc3339(str(ln.get("time", ""))) >= last}
            await resp.write(frames(lines, {str(t["ID"]): t for t in tasks}))
            try:
                await pump_more(resp, cursors, more, last, sent_at_last)
            except ApiError as e:
                log.info("log stream ended: %s", e)

        async def pump_more(resp: web.StreamResponse, cursors: dict[str, str], more: bool, last: float,
                            sent_at_last: set[tuple[Any, ...]]) -> None:
            while follow or more:
                if not more:
                    await asyncio.sleep(LOG_FOLLOW_POLL)
                if request.transport is None or request.transport.is_closing():
                    break
                current = tasks_now()
                if current is None:
                    break
                if not follow:  # only the pages left of what was there: tasks read by cursor
                    current = [t for t in current if str(t["ID"]) in cursors]
                had_cursor = set(cursors)
                lines, got, more = await read(current, -1, last, cursors)
                cursors.update(got)
                new = []
                for ln in lines:
                    if str(ln.get("task_id")) in had_cursor:
                        new.append(ln)
                        continue
                    ts = parse_rfc3339(str(ln.get("time", "")))
                    if ts < last or (ts == last and key(ln) in sent_at_last):
                        continue
                    new.append(ln)
                    if ts > last:
                        last, sent_at_last = ts, set()
                    if ts == last:
                        sent_at_last.add(key(ln))
                if new:
                    await resp.write(frames(new, {str(t["ID"]): t for t in current}))

        tasks = tasks_now() or []
        first = await read(tasks, tail, since, {})  # an error here is the response's status, not a cut stream
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/vnd.docker.multiplexed-stream"})
        await resp.prepare(request)
        try:
            await pump(resp, tasks, *first)
            if request.transport is None or request.transport.is_closing():
                log.info("log stream ended: client went away")
                return resp
            await resp.write_eof()
        except ConnectionResetError as e:
            # the client went away (docker logs -f interrupted): the normal end of a stream
            # (aiohttp's ClientConnectionResetError is a ConnectionResetError)
            log.info("log stream ended: client went away (%s)", e)
        return resp

    @route("GET", "/services/{id}/logs")
    async def service_logs(request: web.Request) -> web.StreamResponse:
        """GET /services/{id}/logs?details&follow&stdout&stderr&since&timestamps&tail."""
        s = _resolve(store().view(), "services", request.match_info["id"], "service", _service_names)

        def tasks_now() -> list[Obj] | None:
            view = store().view()
            if view.get("services", s["ID"]) is None:
                return None
            return view.find("tasks", lambda t: t.get("ServiceID") == s["ID"])

        return await write_logs(request, tasks_now)

    @route("GET", "/tasks/{id}/logs")
    async def task_logs(request: web.Request) -> web.StreamResponse:
        """GET /tasks/{id}/logs (same parameters as service logs)."""
        view = store().view()
        t = _resolve(view, "tasks", request.match_info["id"], "task", _task_names(view))

        def tasks_now() -> list[Obj] | None:
            cur = store().view().get("tasks", t["ID"])
            return [cur] if cur is not None else None

        return await write_logs(request, tasks_now)
