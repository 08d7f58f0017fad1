"""Small helpers shared by every part of Shoal (time formats, IDs, private directories)."""

from __future__ import annotations

import asyncio
import calendar
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


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


_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?"
                      r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$")


def is_rfc3339(ts: str | None) -> bool:
    """Whether ``ts`` is an RFC 3339 timestamp :func:`parse_rfc3339` reads."""
    return bool(_RFC3339.match(ts or ""))


def parse_rfc3339(ts: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp: ``2026-11-29T16:56:02.123456789Z``,
    ``2023-05-18T17:08:35+02:00``, fractions of any length (nanoseconds as Docker writes them),
    no zone meaning UTC. 0.0 if ``ts`` is empty, None or malformed (Go's zero time included)."""
    m = _RFC3339.match(ts or "")
    if not m:
        return 0.0
    y, mo, d, h, mi, s, frac, _z, sign, oh, om = m.groups()
    try:
        secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    except (ValueError, OverflowError):
        return 0.0
    if sign:
        secs -= (1 if sign == "+" else -1) * (int(oh) * 3600 + int(om) * 60)
    return max(0.0, secs + (int(frac) / 10 ** len(frac) if frac else 0.0))


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+) ?([kmgtp]?)(i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = "kmgtp"


def parse_size(text: str, binary: bool) -> int:
    """A size as Docker's go-units reads it, in bytes: a number (fractions allowed) and an
    optional unit ``k``, ``m``, ``g``, ``t``, ``p`` (``kb``, ``KiB`` the same), case-insensitive.
    ``binary``: 1024-based, as ``RAMInBytes`` (memory limits, ``--max-layer-size``); else
    1000-based, as ``FromHumanSize`` (json-file's ``max-size``). Raises ValueError naming the text."""
    m = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if m is None or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise ValueError(f"invalid size {text!r}: use a number of bytes with an optional unit k, m or g "
                         "(e.g. 10m, 512k)")
    unit = m.group(2).lower()
    return int(float(m.group(1)) * ((1024 if binary else 1000) ** (_SIZE_UNITS.index(unit) + 1) if unit else 1))


def new_id(length: int = 25) -> str:
    """Return a random lowercase base-36 ID of ``length`` characters, as swarmkit's identity.NewID does."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_container_id() -> str:
    """Return a 64-hex-character container ID, as Docker's are."""
    return secrets.token_hex(32)


async def wait_timeout(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (None = no limit); raises ``TimeoutError``.

    Use this instead of ``asyncio.wait_for`` in loops: on Python 3.11, ``wait_for`` can swallow a
    cancellation that arrives just as the inner awaitable finishes (CPython gh-86296), and a loop
    that then goes on waiting never stops. ``asyncio.timeout`` (3.11+) does not lose it.
    """
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


def private_dir(path: Path | str, mode: int = 0o700) -> Path:
    """Make the directory ``path`` (and missing parents) and give it ``mode`` (default 0700: only
    root may traverse it), fixing the mode of an existing one, e.g. a data root made by an older
    Shoal. Docker keeps its data root and image store the same way (0700/0710), so a setuid binary
    or a device node inside an image is not reachable by other local users. A symlink (an admin's
    data root elsewhere) is followed. Raises ``OSError`` (``FileExistsError`` for a file)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    if stat.S_IMODE(os.stat(p).st_mode) != mode:
        os.chmod(p, mode)
    return p


def private_file(path: Path | str) -> None:
    """Give the existing file ``path`` mode 0600 (no-op when missing): state written by an older
    Shoal with the default 0644."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
        os.chmod(path, 0o600)
