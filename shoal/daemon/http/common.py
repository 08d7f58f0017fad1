"""What the route modules share: registering a route (plain and under ``/v{version}``, its
errors rendered by :func:`shoal.daemon.http.errors.render`) and parsing query parameters
(booleans, ``version``, Docker's ``filters``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shoal.base.boundedjson import InvalidJSON
from shoal.base.boundedjson import loads as bounded_loads
from shoal.daemon.http.errors import HttpError, render

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION_PREFIX = r"/v{version:[0-9.]+}"


def route(app: web.Application, method: str, path: str) -> Callable[[Handler], Handler]:
    """Decorator: serve ``method path`` (and ``/v{version}path``) with the handler. An API error
    it raises (see :func:`shoal.daemon.http.errors.render`) is answered as Docker does, also in
    an application without shoald's middleware."""
    def deco(fn: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except Exception as e:
                resp = render(e)
                if resp is None:
                    raise
                return resp

        wrapped.__name__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        app.router.add_route(method, path, wrapped)
        app.router.add_route(method, VERSION_PREFIX + path, wrapped)
        return fn

    return deco


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Query parameter ``name`` as Docker's boolean: ``1``, ``true``, ``yes`` (any case) are
    true; missing or empty is ``default``."""
    v = request.query.get(name)
    if v is None or v == "":
        return default
    return v.lower() in ("1", "true", "yes")


def query_version(request: web.Request) -> int:
    """The required ``version`` query parameter (an object's ``Version.Index``): a uint64 in
    decimal, as Docker parses it (``strconv.ParseUint``: no sign, no spaces). Raises
    :class:`HttpError` 400 ``invalid Version: …`` naming what was wrong."""
    v = request.query.get("version")
    if v is None or v == "":
        raise HttpError(400, "invalid Version: version parameter is required")
    if not v.isascii() or not v.isdigit():
        raise HttpError(400, f"invalid Version: strconv.ParseUint: parsing {v[:64]!r}: invalid syntax")
    n = int(v[:32])
    if n >= 1 << 64 or len(v) > 32:
        raise HttpError(400, f"invalid Version: strconv.ParseUint: parsing {v[:64]!r}: value out of range")
    return n


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Parse Docker's ``filters`` query parameter: JSON ``{"key": ["v", …]}`` or the older
    ``{"key": {"v": true}}``, through the bounded decoder. Raises :class:`HttpError` 400 if
    malformed."""
    if not raw:
        return {}
    try:
        data = bounded_loads(raw, "filters")
    except InvalidJSON as e:
        raise HttpError(400, f"invalid filter: {e}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid filter: must be a JSON object of lists")
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[str(k)] = [str(x) for x, on in v.items() if on]
        elif isinstance(v, list):
            out[str(k)] = [str(x) for x in v]
        else:
            raise HttpError(400, f"invalid filter {k!r}: expected a list of values")
    return out
