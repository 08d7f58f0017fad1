"""The daemon's API errors: Docker's status + JSON ``{"message": ...}`` bodies, and the swarm-state
error (503) that the swarm routes raise when the node's role does not allow a call."""

from __future__ import annotations

import json

from aiohttp import web

NOT_IN_SWARM = (
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" "
    "to connect this node to swarm and try again."
)
WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)



def api_error(status: int, message: str) -> web.Response:
    """An API error as Docker returns it: HTTP ``status`` with JSON ``{"message": message}``."""
    # exactly "application/json": the docker CLI decodes error bodies only with that content type
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        content_type="application/json")


class SwarmStateError(Exception):
    """The node's swarm state does not allow the call (Docker answers these with 503)."""

