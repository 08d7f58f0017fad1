"""Small helpers shared by every part of Shoal (time formats, IDs)."""

from __future__ import annotations

import secrets
import time


def now_rfc3339(t: float | None = None) -> str:
    """Return time ``t`` (seconds since the epoch; now when None) as RFC 3339 UTC with nanoseconds.

    Docker's API writes timestamps this way, e.g. ``2026-11-29T16:56:02.123456789Z``.
    """
    if t is None:
        ns = time.time_ns()
    else:
        ns = int(t * 1_000_000_000)
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def new_id(length: int = 25) -> str:
    """Return a random lowercase base-36 ID of ``length`` characters, as swarmkit's identity.NewID does."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_container_id() -> str:
    """Return a 64-hex-character container ID, as Docker's are."""
    return secrets.token_hex(32)
