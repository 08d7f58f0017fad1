"""The node routes: ``GET /nodes``, ``GET /nodes/{id}``, ``POST /nodes/{id}/update``,
``DELETE /nodes/{id}`` (through the control API, :mod:`manager.controlapi.nodes`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.controlapi import nodes
from manager.controlapi.control import Control
from shoal.daemon.http.common import parse_filters, query_bool, query_version, route
from shoal.daemon.http.errors import read_json


def add_routes(app: web.Application, manager: Any) -> None:
    """Register the node routes, served from ``manager`` (its ``store``; writes through
    :class:`manager.controlapi.control.Control`)."""

    @route(app, "GET", "/nodes")
    async def node_list(request: web.Request) -> web.StreamResponse:
        """GET /nodes?filters= (id, name, role, membership, label, node.label)."""
        return web.json_response(nodes.list_nodes(manager.store, parse_filters(request.query.get("filters")),
                                                  manager_status=manager.manager_status))

    @route(app, "GET", "/nodes/{id}")
    async def node_inspect(request: web.Request) -> web.StreamResponse:
        """GET /nodes/{id}: by ID, hostname or ID prefix."""
        return web.json_response(nodes.inspect(manager.store, request.match_info["id"],
                                                manager_status=manager.manager_status))

    @route(app, "DELETE", "/nodes/{id}")
    async def node_remove(request: web.Request) -> web.StreamResponse:
        """DELETE /nodes/{id}?force=."""
        await Control(manager).call("nodes.remove", {"ref": request.match_info["id"],
                                                     "force": query_bool(request, "force")})
        return web.Response(status=200)

    @route(app, "POST", "/nodes/{id}/update")
    async def node_update(request: web.Request) -> web.StreamResponse:
        """POST /nodes/{id}/update?version= with a NodeSpec (Role, Availability, Labels, Name)."""
        version = query_version(request)
        body = await read_json(request, empty_is_object=False)
        await Control(manager).call("nodes.update", {"ref": request.match_info["id"], "version": version,
                                                     "spec_body": body})
        return web.Response(status=200)
