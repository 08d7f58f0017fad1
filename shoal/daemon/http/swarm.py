"""The swarm routes: ``POST /swarm/init``, ``/swarm/join``, ``/swarm/leave`` (this node's role,
served by the daemon) and ``GET /swarm``, ``POST /swarm/update`` (the cluster, through the
control API)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.controlapi import cluster
from manager.controlapi.control import Control
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.common import query_bool, query_version, route
from shoal.daemon.http.errors import read_json


def add_local_routes(app: web.Application, daemon: Daemon) -> None:
    """``/swarm/init`` (``InitRequest`` → the node ID), ``/swarm/join`` (``JoinRequest``) and
    ``/swarm/leave?force=``: an empty body is ``{}``; a body that is not an object is a 400."""

    @route(app, "POST", "/swarm/init")
    async def swarm_init(request: web.Request) -> web.StreamResponse:
        body = await read_json(request, empty_is_object=True, require_object=True)
        async with daemon._swarm_lock:
            node_id = await daemon.swarm_init(body)
        return web.json_response(node_id)

    @route(app, "POST", "/swarm/join")
    async def swarm_join(request: web.Request) -> web.StreamResponse:
        body = await read_json(request, empty_is_object=True, require_object=True)
        async with daemon._swarm_lock:
            await daemon.swarm_join(body)
        return web.Response(status=200)

    @route(app, "POST", "/swarm/leave")
    async def swarm_leave(request: web.Request) -> web.StreamResponse:
        force = request.query.get("force", "") in ("1", "true", "True")
        async with daemon._swarm_lock:
            await daemon.swarm_leave(force)
        return web.Response(status=200)


def add_routes(app: web.Application, manager: Any) -> None:
    """``GET /swarm`` (``cluster.inspect``) and ``POST /swarm/update?version=&rotateWorkerToken=
    &rotateManagerToken=&rotateManagerUnlockKey=`` with a SwarmSpec (``cluster.update``), served
    from ``manager`` (see :class:`manager.controlapi.common.Context`)."""

    @route(app, "GET", "/swarm")
    async def swarm_inspect(request: web.Request) -> web.StreamResponse:
        """GET /swarm: ClusterInfo + JoinTokens."""
        return web.json_response(cluster.inspect(manager))

    @route(app, "POST", "/swarm/update")
    async def swarm_update(request: web.Request) -> web.StreamResponse:
        """POST /swarm/update with a SwarmSpec → 200."""
        version = query_version(request)
        body = await read_json(request, empty_is_object=False)
        await Control(manager).call("cluster.update", {
            "version": version, "spec_body": body,
            "rotate_worker_token": query_bool(request, "rotateWorkerToken"),
            "rotate_manager_token": query_bool(request, "rotateManagerToken"),
            "rotate_manager_unlock_key": query_bool(request, "rotateManagerUnlockKey")})
        return web.Response(status=200)
