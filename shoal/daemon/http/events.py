"""``GET /events`` (``docker events``): the swarm's events from this manager's
:class:`manager.events.EventHub`, as moby's router writes them (daemon/server/router/system
``getEvents``): HTTP 200 at once, then one JSON message per line, flushed as it comes.

Parameters: ``since`` and ``until`` (``SECONDS[.NANOSECONDS]``, what the docker CLI makes of
``10m`` or a date), ``filters`` (Docker's JSON). With ``since`` or ``until`` the kept messages in
that window are replayed first; with ``until`` in the past the response ends after them, in the
future it ends at that time; without ``until`` it streams until the client goes away. A node that
is no manager has no swarm events (Docker shows its local events only, and Shoal has none): its
stream stays empty. Bad ``since``/``until``/``filters`` → 400 before anything is streamed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from manager.events import EventFilter, EventHub, FilterError, Subscription, parse_timestamp
from shoal.daemon.http.common import parse_filters, route
from shoal.daemon.http.errors import HttpError

log = logging.getLogger(__name__)

POLL = 1.0
"""Seconds between checks that the client is still there while no event comes."""


def add_routes(app: web.Application, hub_of: Callable[[], EventHub | None]) -> None:
    """Register ``GET /events``; ``hub_of()`` is this node's event hub now (None on a node that is
    no manager)."""

    @route(app, "GET", "/events")
    async def events(request: web.Request) -> web.StreamResponse:
        """GET /events?since=&until=&filters= → a stream of JSON messages."""
        try:
            since = parse_timestamp(request.query.get("since"), "since")
            until = parse_timestamp(request.query.get("until"), "until")
            flt = EventFilter.parse(parse_filters(request.query.get("filters")))
        except FilterError as e:
            raise HttpError(400, str(e)) from None
        if since is not None and until is not None and until < since:
            raise HttpError(400, f"`since` time ({request.query.get('since')}) cannot be after `until` time "
                                 f"({request.query.get('until')})")
        hub = hub_of()
        sub = hub.subscribe(since, until, flt) if hub is not None else None
        try:
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await _pump(request, resp, sub, until)
            if not _gone(request):
                await resp.write_eof()
        except ConnectionResetError as e:
            log.info("event stream ended: client went away (%s)", e)
        finally:
            if sub is not None:
                sub.close()
        return resp


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _line(msg: dict[str, Any]) -> bytes:
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode()


async def _pump(request: web.Request, resp: web.StreamResponse, sub: Subscription | None,
                until: float | None) -> None:
    """Write the replay, then live messages until ``until`` (seconds since the epoch) passes or
    the client goes away."""
    if sub is not None and sub.buffered:
        await resp.write(b"".join(_line(m) for m in sub.buffered))
    if until is not None and until <= time.time():
        return
    while not _gone(request):
        wait = POLL if until is None else min(POLL, until - time.time())
        if wait <= 0:
            return
        if sub is None:
            await asyncio.sleep(wait)
            continue
        msg = await sub.get(wait)
        if msg is None:
            continue
        batch = [msg]
        while len(batch) < 256:
            nxt = await sub.get(0)
            if nxt is None:
                break
            batch.append(nxt)
        await resp.write(b"".join(_line(m) for m in batch))
