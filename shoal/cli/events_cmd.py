"""``shoal events`` and the times ``shoal events`` / ``shoal service logs --since`` take, as the docker
CLI reads them (docker/cli ``opts.GetTimestamp``): a Go duration before now (``10m``, ``1h30m``,
``0s``), an RFC 3339 date or a plain ``YYYY-MM-DD[THH:MM:SS]`` (UTC), or seconds since the epoch.

``shoal events [--since T] [--until T] [-f KEY=VALUE]… [--format json]`` prints one line per event as
the docker CLI does: ``TIME TYPE ACTION ID (key=value, …)`` (TIME in UTC, nanoseconds), or each
message as JSON with ``--format json``."""

from __future__ import annotations

import argparse
import calendar
import json
import re
import time
from typing import Any, TextIO

from shoal.base.util import parse_rfc3339
from shoal.cli.client import Client

__all__ = ["timestamp_arg", "add_events_parser", "cmd_events", "format_event", "parse_filter_flags"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _duration(value: str) -> float | None:
    """Seconds of a Go duration (``1h30m``, ``10m``, ``0s``, ``-5s``), None if it is not one."""
    if value == "0":
        return 0.0
    if not _DURATION.match(value):
        return None
    sign = -1.0 if value.startswith("-") else 1.0
    return sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))


def timestamp_arg(value: str, now: float | None = None) -> str:
    """``value`` as Docker sends a time: ``SECONDS.NANOSECONDS``. A duration counts back from
    ``now`` (seconds since the epoch; the current time when None). Raises ValueError naming the
    value and the accepted forms."""
    value = value.strip()
    ref = time.time() if now is None else now
    d = _duration(value)
    if d is not None:
        t = ref - d
    elif re.fullmatch(r"\d+(\.\d{1,9})?", value):
        return value
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        t = float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    else:
        t = parse_rfc3339(value)
        if not t:
            raise ValueError(f"invalid time {value!r}: use a duration before now (10m, 1h30m, 0s), "
                             "an RFC 3339 date (2026-12-06T10:00:00Z) or seconds since the epoch")
    us = int(round(t * 1e6))  # a float holds microseconds of today's epoch times exactly, not nanoseconds
    return f"{us // 1_000_000}.{us % 1_000_000:06d}000"


def parse_filter_flags(flags: list[str] | None) -> dict[str, list[str]]:
    """``["type=service", "event=create"]`` → ``{"type": ["service"], "event": ["create"]}``.
    Raises ValueError for a flag without ``=``."""
    out: dict[str, list[str]] = {}
    for f in flags or []:
        k, eq, v = f.partition("=")
        if not eq or not k:
            raise ValueError(f"bad format of filter {f!r} (expected KEY=VALUE, e.g. type=service)")
        out.setdefault(k.strip().lower(), []).append(v)
    return out


def format_event(msg: dict[str, Any]) -> str:
    """The docker CLI's line for a message: ``TIME TYPE ACTION ID (k=v, …)`` (TIME in UTC)."""
    ns = int(msg.get("timeNano") or int(msg.get("time") or 0) * 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"
    actor = msg.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    line = f"{stamp} {msg.get('Type', '')} {msg.get('Action', '')} {actor.get('ID', '')}"
    if attrs:
        line += " (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")"
    return line


def cmd_events(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """Print the events of the swarm (``GET /events``) until ``--until`` passes (or Ctrl-C)."""
    since = timestamp_arg(a.since) if a.since else None
    until = timestamp_arg(a.until) if a.until else None
    for msg in c.events(since, until, parse_filter_flags(a.filter)):
        out.write((json.dumps(msg) if a.format == "json" else format_event(msg)) + "\n")
        out.flush()
    return 0


def add_events_parser(top: Any) -> None:
    """Add ``events`` to the ``shoal`` subcommands (``top``: argparse's subparsers)."""
    x = top.add_parser("events", help="print the swarm's events (services, nodes, tasks, networks)")
    x.add_argument("--since", default="", metavar="TIME", help="replay kept events from TIME (10m, a date, seconds)")
    x.add_argument("--until", default="", metavar="TIME", help="stop at TIME (0s: now)")
    x.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                   help="type, event, service, node, network, scope, label (as docker events)")
    x.add_argument("--format", default="", choices=("", "json"), help="json: one JSON message per line")
    x.set_defaults(func=cmd_events)
