"""The network routes: ``GET /networks``, ``GET /networks/{id}``, ``POST /networks/create``
(not supported yet: each node has its one local bridge network)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal.base.util import now_rfc3339
from shoal.daemon.http.common import route
from shoal.daemon.http.errors import api_error

_BRIDGE_NETWORK: dict[str, Any] = {
    "Name": "bridge", "Id": "shoal-bridge", "Created": "", "Scope": "local", "Driver": "bridge",
    "EnableIPv6": False, "Internal": False, "Attachable": False, "Ingress": False,
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.200.0.0/16"}]},
    "Options": {}, "Labels": {}, "Containers": {},
}
"""The one network each node has for now: its local bridge (a /24 of 10.200.0.0/16 per node)."""


def add_routes(app: web.Application) -> None:
    """Register the network routes. The bridge's ``Created`` is when the routes were made (the
    daemon's start), in RFC 3339: the docker CLI parses it (an empty string breaks ``network ls``)."""
    bridge = dict(_BRIDGE_NETWORK, Created=now_rfc3339())

    @route(app, "GET", "/networks")
    async def networks(request: web.Request) -> web.Response:
        return web.json_response([bridge])

    @route(app, "GET", "/networks/{id}")
    async def network_inspect(request: web.Request) -> web.Response:
        name = request.match_info["id"]
        if name in (bridge["Name"], bridge["Id"]):
            return web.json_response(bridge)
        return api_error(404, f"network {name} not found")

    @route(app, "POST", "/networks/create")
    async def network_create(request: web.Request) -> web.Response:
        return api_error(501, "creating networks is not supported yet: each node has one local bridge "
                              "network (overlay networks come with the overlay work)")
