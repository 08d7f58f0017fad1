"""The Docker Engine API application of a node: local routes, the swarm routes of the manager
(``manager.api``), routing of writes to the Raft leader, version prefixes and error rendering."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_runtime.images import ImageError
from manager.api import ApiError, add_routes, read_body, read_json
from manager.store import Unavailable
from shoal import __version__
from shoal.base.boundedjson import MAX_JSON_BYTES
from shoal.base.util import is_rfc3339, parse_rfc3339
from shoal.daemon.daemon import (
    API_VERSION,
    CONSISTENCY_HEADER,
    FORWARDED_MARK,
    Daemon,
    log,
)
from shoal.daemon.errors import NOT_IN_SWARM, WORKER_NOT_MANAGER, SwarmStateError, api_error
from shoal.daemon.http import unsupported
from shoal.daemon.request import json_type
from shoal.rpc.wire import WireError


def _strip_version(path: str) -> str:
    """``/v1.41/info`` → ``/info``; other paths unchanged."""
    if path.startswith("/v") and "/" in path[1:]:
        head, rest = path[1:].split("/", 1)
        if head[1:].replace(".", "").isdigit():
            return "/" + rest
    return path


SWARM_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks")
LOCAL_SWARM_PATHS = ("/swarm/init", "/swarm/join", "/swarm/leave")




def build_app(daemon: Daemon) -> web.Application:
    """The Docker Engine API application: local routes plus the manager's swarm routes."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        path = _strip_version(request.path)
        if path.startswith(SWARM_PREFIXES) and not path.startswith(LOCAL_SWARM_PATHS):
            if not daemon.state.in_swarm:
                return api_error(503, NOT_IN_SWARM)
            if daemon.manager is None:
                return api_error(503, WORKER_NOT_MANAGER)
            routed = await _route_to_leader(daemon, request, path)
            if routed is not None:
                return routed
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return api_error(e.status, e.reason if e.status != 404 else "page not found")
            raise
        except ApiError as e:
            return api_error(e.status, e.message)
        except SwarmStateError as e:
            return api_error(503, str(e))
        except ValueError as e:
            return api_error(400, str(e))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            # a bug, not bad input: the traceback goes to the log, the client gets Docker's shape
            log.exception("%s %s failed", request.method, request.path)
            return api_error(500, f"internal error serving {request.method} {path}: {type(e).__name__}: {e}")
        resp.headers.setdefault("Api-Version", API_VERSION)
        resp.headers.setdefault("Server", f"Shoal/{__version__} (linux)")
        return resp

    # JSON bodies are read through manager.api.read_body (MAX_JSON_BYTES); this is the backstop
    # for any other read. `images/load` streams request.content, which this does not limit.
    app = web.Application(middlewares=[middleware], client_max_size=MAX_JSON_BYTES)
    routes = web.RouteTableDef()

    def both(method: str, path: str) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            app.router.add_route(method, path, fn)
            app.router.add_route(method, r"/v{version:[0-9.]+}" + path, fn)
            return fn
        return deco

    def ping_headers() -> dict[str, str]:
        return {"Api-Version": API_VERSION, "Docker-Experimental": "false", "OSType": "linux",
                "Swarm": daemon.swarm_header(), "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache"}

    @both("GET", "/_ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="OK", headers=ping_headers())

    @both("HEAD", "/_ping")
    async def ping_head(request: web.Request) -> web.Response:
        return web.Response(headers=ping_headers())

    @both("GET", "/version")
    async def version(request: web.Request) -> web.Response:
        return web.json_response(daemon.version())

    @both("GET", "/info")
    async def info(request: web.Request) -> web.Response:
        return web.json_response(daemon.info())

    @both("POST", "/swarm/init")
    async def swarm_init(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with daemon._swarm_lock:
            node_id = await daemon.swarm_init(body)
        return web.json_response(node_id)

    @both("POST", "/swarm/join")
    async def swarm_join(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with daemon._swarm_lock:
            await daemon.swarm_join(body)
        return web.Response(status=200)

    @both("POST", "/swarm/leave")
    async def swarm_leave(request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true", "True")
        async with daemon._swarm_lock:
            await daemon.swarm_leave(force)
        return web.Response(status=200)

    # ---- images

    @both("GET", "/images/json")
    async def images_json(request: web.Request) -> web.Response:
        by_id: dict[str, dict[str, Any]] = {}
        for img in daemon.images.list():
            cur = by_id.setdefault(img.id, image_summary(img))
            for tag in image_summary(img)["RepoTags"]:
                if tag not in cur["RepoTags"]:
                    cur["RepoTags"].append(tag)
        return web.json_response(list(by_id.values()))

    def image_summary(img: Any) -> dict[str, Any]:
        """``ImageSummary`` of the Engine API: ``Created`` in seconds since the epoch (the config
        holds it as RFC 3339, as every image on Docker Hub does)."""
        tags = list(img.familiar_repo_tags or [img.ref])
        return {"Id": img.id, "RepoTags": tags, "RepoDigests": list(img.repo_digests), "ParentId": "",
                "Created": int(parse_rfc3339(img.created)), "Size": img.size, "SharedSize": -1,
                "VirtualSize": img.size, "Labels": (img.config or {}).get("Labels") or {}, "Containers": -1}

    @both("GET", "/images/{name:.*}/json")
    async def image_inspect(request: web.Request) -> web.Response:
        """``ImageInspect``: ``Created`` is the config's RFC 3339 time as stored (Go's zero time
        when the image has none, as Docker prints it), ``RootFS.Layers`` the diff_ids."""
        name = request.match_info["name"]
        try:
            img = daemon.images.get(name)
        except Exception:  # an unparsable reference is simply not an image we have
            img = None
        if img is None:
            return api_error(404, f"No such image: {name}")
        out = image_summary(img)
        created = img.created if is_rfc3339(img.created) else "0001-01-01T00:00:00Z"
        return web.json_response({
            "Id": out["Id"], "RepoTags": out["RepoTags"], "RepoDigests": out["RepoDigests"], "Parent": "",
            "Comment": "", "Created": created, "Container": "",
            "DockerVersion": "", "Author": "", "Config": img.config, "Architecture": img.architecture,
            "Os": img.os_name, "Size": img.size, "VirtualSize": img.size,
            "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": ":".join(str(p) for p in img.layers)}},
            "RootFS": {"Type": "layers", "Layers": list(img.diff_ids)},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}})

    @both("GET", "/networks")
    async def networks(request: web.Request) -> web.Response:
        return web.json_response([_BRIDGE_NETWORK])

    @both("GET", "/networks/{id}")
    async def network_inspect(request: web.Request) -> web.Response:
        name = request.match_info["id"]
        if name in (_BRIDGE_NETWORK["Name"], _BRIDGE_NETWORK["Id"]):
            return web.json_response(_BRIDGE_NETWORK)
        return api_error(404, f"network {name} not found")

    @both("POST", "/networks/create")
    async def network_create(request: web.Request) -> web.Response:
        return api_error(501, "creating networks is not supported yet: each node has one local bridge "
                              "network (overlay networks come with the overlay work)")

    @both("POST", "/images/load")
    async def images_load(request: web.Request) -> web.StreamResponse:

        cap = int(daemon.args.max_image_archive_size)
        too_big = (f"the image archive is larger than this daemon accepts ({cap} bytes; shoald "
                   "--max-image-archive-size)")
        if request.content_length is not None and request.content_length > cap:
            return api_error(413, too_big)
        fd, tmp = tempfile.mkstemp(dir=daemon.data_root, prefix=".load-", suffix=".tar")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > cap:
                        return api_error(413, too_big)
                    f.write(chunk)
            try:
                refs = await asyncio.to_thread(daemon.images.load, Path(tmp), "the uploaded image archive")
            except ImageError as e:
                return api_error(400, str(e))
        finally:
            os.unlink(tmp)
        text = "".join(json.dumps({"stream": f"Loaded image: {r}\n"}) + "\n" for r in refs)
        # exactly "application/json" (no charset): the docker CLI renders the stream only then
        return web.Response(body=text.encode(), content_type="application/json")

    @both("POST", "/images/create")
    async def images_create(request: web.Request) -> web.StreamResponse:

        ref = request.query.get("fromImage", "")
        tag = request.query.get("tag", "")
        if not ref:
            return api_error(400, "fromImage is required (the image to pull)")
        if tag and not tag.startswith("sha256:"):
            ref = f"{ref}:{tag}"
        elif tag:
            ref = f"{ref}@{tag}"
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write((json.dumps({"status": f"Pulling from {ref}"}) + "\n").encode())
        try:
            img = await daemon.images.pull(ref)
            msg = {"status": f"Digest: {img.id}"}
            await resp.write((json.dumps(msg) + "\n").encode())
            await resp.write((json.dumps({"status": f"Status: Downloaded image for {img.ref}"})
                              + "\n").encode())
        except ImageError as e:
            await resp.write((json.dumps({"errorDetail": {"message": str(e)}, "error": str(e)})
                              + "\n").encode())
        await resp.write_eof()
        return resp

    @both("GET", "/distribution/{name:.*}/json")
    async def distribution(request: web.Request) -> web.Response:

        name = request.match_info["name"]
        resolve = getattr(daemon.images, "resolve", None)
        if resolve is None:
            return api_error(501, "digest resolution is not supported by this daemon")
        try:
            return web.json_response(await resolve(name))
        except ImageError as e:
            return api_error(404, str(e))

    app.add_routes(routes)
    add_routes(app, _ManagerProxy(daemon))
    unsupported.add_routes(app)
    return app


_BRIDGE_NETWORK: dict[str, Any] = {
    "Name": "bridge", "Id": "shoal-bridge", "Created": "", "Scope": "local", "Driver": "bridge",
    "EnableIPv6": False, "Internal": False, "Attachable": False, "Ingress": False,
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.200.0.0/16"}]},
    "Options": {}, "Labels": {}, "Containers": {},
}
"""The one network each node has for now: its local bridge (a /24 of 10.200.0.0/16 per node)."""




def _leader_only(method: str, path: str) -> bool:
    """Requests that must run on the Raft leader: every write. (Logs are served by any manager:
    a follower's ``Manager.read_logs`` asks the leader for the lines, so ``--follow`` streams.)"""
    return method not in ("GET", "HEAD")


async def _route_to_leader(daemon: Daemon, request: web.Request, path: str) -> web.StreamResponse | None:
    """On a follower, forward a leader-only request to the leader and return its response; on
    any manager, make a GET linearizable with a ReadIndex barrier (unless the caller asked for a
    local read). None = serve the request here. Errors become 503 with Docker's JSON body."""

    mgr = daemon.manager
    try:
        if _leader_only(request.method, path):
            if mgr.is_leader:
                return None
            if request.headers.get(FORWARDED_MARK):
                return api_error(503, "rpc error: code = Unavailable desc = leadership moved while the "
                                      "request was forwarded; retry")
            body = await read_body(request)
            status, headers, data = await mgr.forward_api(
                request.method, str(request.rel_url), dict(request.headers), body)
            resp = web.Response(body=data, status=status)
            ctype = headers.get("Content-Type") or headers.get("content-type")
            if ctype:
                resp.headers["Content-Type"] = ctype
            return resp
        if request.headers.get(CONSISTENCY_HEADER, "").lower() != "local":
            await mgr.read_barrier()
    except Unavailable as e:
        return api_error(503, f"rpc error: code = Unavailable desc = {e}")
    except WireError as e:
        return api_error(503, f"rpc error: code = Unavailable desc = forwarding to the leader failed: {e}")
    except ApiError as e:
        return api_error(e.status, e.message)
    return None


class _ManagerProxy:
    """Forwards attribute access to the daemon's current ``Manager`` (the role can start later)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        mgr = self._daemon.manager
        if mgr is None:
            raise SwarmStateError(NOT_IN_SWARM)
        return getattr(mgr, name)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body through the bounded decoder (an empty body is ``{}``).
    Raises :class:`manager.api.ApiError` (400/413) or ``ValueError`` (400)."""
    body = await read_json(request, allow_empty=True)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object, got {json_type(body)}")
    return body

