"""The HTTP layer's one error renderer and one JSON-body reader.

:func:`render` turns any error a handler raises into Docker's answer: HTTP status + JSON
``{"message": ...}`` with the content type exactly ``application/json`` (the docker CLI decodes
an error body, and prints just the message, only then) — :class:`HttpError` (the HTTP layer's
own: bad query parameters, too large), :class:`manager.controlapi.errors.ControlError` (its
status), :class:`shoal.daemon.errors.SwarmStateError` (503), ``ValueError`` (400). The response
itself is :func:`shoal.daemon.errors.api_error`.

:func:`read_json` reads every JSON request body: at most
:data:`shoal.base.boundedjson.MAX_JSON_BYTES` (413 over it), decoded by the bounded decoder."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.controlapi.errors import ControlError
from shoal.base.boundedjson import MAX_JSON_BYTES, InvalidJSON
from shoal.base.boundedjson import loads as bounded_loads
from shoal.daemon.errors import SwarmStateError, api_error
from shoal.daemon.request import json_type

__all__ = ["HttpError", "api_error", "read_body", "read_json", "render"]

EMPTY_BODY = "invalid JSON: got EOF while reading request body"


class HttpError(Exception):
    """An error of the HTTP layer itself, answered as ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def render(e: Exception) -> web.Response | None:
    """Docker's error response for ``e``, or None when ``e`` is not an API error (a bug: the
    caller logs it and answers 500)."""
    if isinstance(e, (HttpError, ControlError)):
        return api_error(e.status, e.message)
    if isinstance(e, SwarmStateError):
        return api_error(503, str(e))
    if isinstance(e, ValueError):
        return api_error(400, str(e))
    return None


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body too large: the limit is {limit} bytes ({limit / 1048576:g} MiB) "
                          "for an API request with a JSON body")


async def read_body(request: web.Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The request body, read in chunks and never more than ``limit`` bytes (whatever the
    application's ``client_max_size``). Raises :class:`HttpError` 413 when the body (by its
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


async def read_json(request: web.Request, *, empty_is_object: bool, require_object: bool = False) -> Any:
    """The JSON body of ``request`` through the bounded decoder
    (:func:`shoal.base.boundedjson.loads`: size, nesting depth, Go's number and string rules).

    An empty (or blank) body, or JSON ``null``, is ``{}`` when ``empty_is_object`` (where Docker
    accepts no body: ``/swarm/init``, ``/swarm/join``), else an empty body is a 400 ``invalid JSON: got EOF while reading request
    body`` (the specs of ``/swarm/update``, ``/nodes/{id}/update``, ``/services/create``,
    ``/services/{id}/update``). With ``require_object``, a body that is not a JSON object is a
    400 ``the request body must be a JSON object, got {type}`` (otherwise the control API's spec
    validation names it). Raises :class:`HttpError` 400, or 413 for a body over
    :data:`shoal.base.boundedjson.MAX_JSON_BYTES`."""
    raw = await read_body(request)
    if not raw.strip():
        if empty_is_object:
            return {}
        raise HttpError(400, EMPTY_BODY)
    try:
        body = bounded_loads(raw)
    except InvalidJSON as e:
        raise HttpError(413 if e.too_large else 400, str(e)) from None
    if body is None and empty_is_object:  # JSON null is an empty request for Go's decoder
        return {}
    if require_object and not isinstance(body, dict):
        raise HttpError(400, f"the request body must be a JSON object, got {json_type(body)}")
    return body
