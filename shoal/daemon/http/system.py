"""The system routes: ``GET``/``HEAD /_ping``, ``GET /version``, ``GET /info`` (this node)."""

from __future__ import annotations

from aiohttp import web

from shoal.daemon.daemon import API_VERSION, Daemon
from shoal.daemon.http.common import route


def add_routes(app: web.Application, daemon: Daemon) -> None:
    """Register the system routes, served from ``daemon``."""

    def ping_headers() -> dict[str, str]:
        return {"Api-Version": API_VERSION, "Docker-Experimental": "false", "OSType": "linux",
                "Swarm": daemon.swarm_header(), "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache"}

    @route(app, "GET", "/_ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="OK", headers=ping_headers())

    @route(app, "HEAD", "/_ping")
    async def ping_head(request: web.Request) -> web.Response:
        return web.Response(headers=ping_headers())

    @route(app, "GET", "/version")
    async def version(request: web.Request) -> web.Response:
        return web.json_response(daemon.version())

    @route(app, "GET", "/info")
    async def info(request: web.Request) -> web.Response:
        return web.json_response(daemon.info())
