"""Docker's log streams of services and tasks (``GET /services/{id}/logs``, ``GET
/tasks/{id}/logs``): lines come from the manager's ``read_logs_page`` (on a follower, the leader
collects them), framed as Docker's multiplexed stream (MOBY: api/server/httputils/write_log_stream.go)."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from shoal.base.util import parse_rfc3339
from shoal.daemon.http.common import query_bool
from shoal.daemon.http.errors import HttpError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

LOG_FOLLOW_POLL = 1.0  # seconds between polls of the nodes for `logs --follow` (none while pages are pending)
LOG_RETRY_UNREACHABLE = 10.0
"""Seconds a follow leaves a node that did not answer out of its polls before asking it again (so
one frozen node does not slow every poll by the leader's per-node timeout)."""
WARNING_HEADER = "X-Shoal-Warning"
"""The response header naming the nodes whose logs could not be read when the stream started (read by
the Shoal CLI's ``service logs --follow``; clients that do not know it ignore it)."""


def incomplete_warning(unreachable: dict[str, str]) -> str:
    """Swarm's words for a log stream that lacks some nodes' lines (``unreachable``: node ID → why)."""
    return ("warning: incomplete log stream. some logs could not be retrieved for the following reasons: "
            + ", ".join(sorted(unreachable.values())))


def mux_frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: ``[stream u8, 0, 0, 0, length u32 BE] data``
    (stream 1 = stdout, 2 = stderr, 3 = system error)."""
    return struct.pack(">BxxxI", stream, len(data)) + data


def format_ts(rfc: str) -> str:
    """RFC 3339 with exactly 9 fractional digits (moby's rfc3339NanoFixed)."""
    secs = parse_rfc3339(rfc)
    whole = int(secs)
    main, _, rest = rfc.partition(".")
    frac = "".join(ch for ch in rest if ch.isdigit())[:9].ljust(9, "0") if rest else "000000000"
    if not rest:
        main = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{main}.{frac}Z"


async def write_logs(request: web.Request, manager: Any,
                     tasks_now: Callable[[], list[Obj] | None]) -> web.StreamResponse:
    """Docker's log stream (MOBY: api/server/httputils/write_log_stream.go): per line
    ``[timestamp ' '][details ' ']message``, multiplexed; details are the url-escaped,
    key-sorted ``com.docker.swarm.{node,service,task}.id`` attributes the CLI parses.

    ``manager`` serves ``read_logs_page`` (or, older, ``read_logs``). ``tasks_now()`` gives the tasks whose logs to read (None once the service or task is
    gone). Lines come in bounded pages (``manager.read_logs_page``); the next page continues
    from each task's cursor (without ``follow`` the pages go on until none is pending, so
    lines written meanwhile are sent too). With ``follow``, the nodes are polled every
    ``LOG_FOLLOW_POLL`` seconds (at once while pages are pending) until the client goes away
    or the source is removed. Lines of different tasks are in time order within a page only.

    A node that cannot be read (no session, or no answer within the leader's per-node timeout,
    :data:`manager.logbroker.LOG_NODE_TIMEOUT`) does not hold the stream up: the other nodes' lines
    are sent, the :data:`WARNING_HEADER` names the nodes missing from the first page, and a stream
    without ``follow`` ends with Swarm's "incomplete log stream" warning as a system-error frame
    (stream 3: the docker CLI prints it as "error from daemon in stream: …"). A follow leaves such a
    node out of its polls for :data:`LOG_RETRY_UNREACHABLE` seconds at a time."""
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise HttpError(400, "Bad parameters: you must choose at least one stream")
    details = query_bool(request, "details")
    timestamps = query_bool(request, "timestamps")
    follow = query_bool(request, "follow")
    tail_raw = request.query.get("tail", "all")
    if tail_raw in ("", "all"):
        tail = -1
    else:
        try:
            if len(tail_raw) > 32 and not tail_raw.lstrip("+-").isdigit():
                raise ValueError(tail_raw)
            tail = int(tail_raw) if len(tail_raw) <= 32 else (1 << 62 if not tail_raw.startswith("-") else -1)
        except ValueError:
            raise HttpError(400, f"invalid tail value {tail_raw[:64]!r}: use a number or \"all\"") from None
        if tail < 0 or tail >= 1 << 62:  # negative (as Docker) or more lines than any log holds: all of them
            tail = -1
    since_raw = request.query.get("since", "0") or "0"
    try:
        since = float(since_raw)
    except ValueError:
        since = parse_rfc3339(since_raw)
        if not since:
            raise HttpError(400, f"invalid since value {since_raw!r}: use a UNIX timestamp") from None

    unreachable: dict[str, str] = {}  # node ID → why its lines could not be read
    skip_until: dict[str, float] = {}  # follow: node ID → when (monotonic) to ask it again

    async def read(tasks: list[Obj], tail: int, since: float,
                   cursors: dict[str, str]) -> tuple[list[Obj], dict[str, str], bool]:
        """One page: (lines, the tasks' new cursors, more pages pending); the nodes that could not
        be read go to ``unreachable`` and ``skip_until``."""
        ids = [str(t["ID"]) for t in tasks]
        if not ids:
            return [], {}, False
        try:
            read_page = getattr(manager, "read_logs_page", None)
            if read_page is None:  # a manager without pages: every line at once, no cursors
                return list(await manager.read_logs(ids, tail, since, timestamps)), {}, False
            page = await read_page(ids, tail, since, timestamps, {i: cursors[i] for i in ids if i in cursors})
        except Exception as e:  # noqa: BLE001 - reported to the client as Docker does
            raise HttpError(500, f"Error grabbing logs: {e}") from e
        gone = page.get("unreachable") or {}
        if isinstance(gone, dict):
            unreachable.update({str(n): str(why) for n, why in gone.items()})
            skip_until.update({str(n): time.monotonic() + LOG_RETRY_UNREACHABLE for n in gone})
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
                prefix += format_ts(str(ln.get("time", ""))) + " "
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
        except HttpError as e:
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
            else:
                now = time.monotonic()
                current = [t for t in current if skip_until.get(str(t.get("NodeID") or ""), 0.0) <= now]
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
    headers = {"Content-Type": "application/vnd.docker.multiplexed-stream"}
    if unreachable:
        headers[WARNING_HEADER] = incomplete_warning(unreachable).encode("ascii", "replace").decode()[:2000]
    resp = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(request)
    try:
        await pump(resp, tasks, *first)
        if request.transport is None or request.transport.is_closing():
            log.info("log stream ended: client went away")
            return resp
        if unreachable and not follow:
            await resp.write(mux_frame(3, incomplete_warning(unreachable).encode()))
        await resp.write_eof()
    except ConnectionResetError as e:
        # the client went away (docker logs -f interrupted): the normal end of a stream
        # (aiohttp's ClientConnectionResetError is a ConnectionResetError)
        log.info("log stream ended: client went away (%s)", e)
    return resp
