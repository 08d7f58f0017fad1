"""Options of the json-file log driver, the only one Shoal has: parsed and checked the same way by the
manager's spec validation, the daemon's ``--log-opt`` flags and the node's runtime.

A container's log is Docker's json-file: ``container.log`` rotated by size into ``container.log.1``
… (agent_runtime.jsonfile). Options (MOBY: daemon/logger/jsonfilelog/jsonfilelog.go ``New`` and
``ValidateLogOpt``):

- ``max-size``: the size a file may reach before it is rotated, as Docker's go-units
  ``FromHumanSize`` reads it: a number (fractions allowed) and an optional decimal unit ``b``,
  ``k``, ``m``, ``g``, ``t``, ``p`` (1000-based; ``kb``/``kib`` are the same as ``k``), case
  insensitive: ``10m`` = 10,000,000 bytes. Must be at least 1 byte.
- ``max-file``: how many files are kept in all (the current one included), an integer ≥ 1; 1 means
  the file is truncated in place when it is full.

Shoal's defaults are :data:`DEFAULT_MAX_SIZE` (10 MiB) × :data:`DEFAULT_MAX_FILE` (3), changed per
daemon with ``shoald --log-opt`` and per service with ``TaskTemplate.LogDriver.Options``; a
service's option overrides the daemon's for that key only (as moby's ``mergeAndVerifyLogConfig``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from shoal.base import util

LOG_DRIVER = "json-file"
"""The only log driver: Docker's default, one JSON object a line."""
OPTION_KEYS = ("max-size", "max-file")
"""The json-file options Shoal applies."""
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
"""Bytes a log file may reach before rotation when neither the daemon nor the service sets max-size."""
DEFAULT_MAX_FILE = 3
"""Files kept per container (current one included) when neither the daemon nor the service sets max-file."""
MAX_MAX_FILE = 1000
"""Upper bound of max-file: each read of a container's log may look at every file."""



class LogOptError(ValueError):
    """A log driver or option is not accepted; the message says which and what to use instead."""


def parse_size(text: str) -> int:
    """Bytes of a human size as go-units ``FromHumanSize`` (decimal units): ``"10m"`` → 10000000,
    ``"512k"`` → 512000, ``"1g"``, ``"1.5m"``, ``"100"``, ``"64kb"``. Raises :class:`LogOptError`."""
    try:
        return util.parse_size(text, binary=False)
    except ValueError as e:
        raise LogOptError(str(e)) from None


def check_driver(name: Any) -> None:
    """Accept ``json-file`` or an empty name (the default driver); raise :class:`LogOptError` otherwise."""
    if name not in (None, "", LOG_DRIVER):
        raise LogOptError(f"log driver {name!r} is not supported by shoal: the only log driver is "
                          f"{LOG_DRIVER!r} (use --log-driver {LOG_DRIVER} or leave it out)")


def check_options(opts: Any) -> dict[str, str]:
    """Validate json-file options ``{"max-size": "10m", "max-file": "3"}`` (either may be missing);
    return them as a plain ``str → str`` dict. Raises :class:`LogOptError` for an unknown key, a value
    that is not a string, a bad size, a max-size below 1 byte or a max-file below 1 or above
    :data:`MAX_MAX_FILE`."""
    if opts is None:
        return {}
    if not isinstance(opts, Mapping):
        raise LogOptError(f"log options must be a map of strings, got {type(opts).__name__}")
    out: dict[str, str] = {}
    for key, value in opts.items():
        if key not in OPTION_KEYS:
            raise LogOptError(f"unknown log opt {key!r} for the {LOG_DRIVER} log driver: shoal accepts "
                              + " and ".join(OPTION_KEYS))
        if not isinstance(value, str):
            raise LogOptError(f"log opt {key} must be a string, got {type(value).__name__}")
        out[key] = value
    if "max-size" in out and parse_size(out["max-size"]) < 1:
        raise LogOptError(f"invalid log opt max-size {out['max-size']!r}: max-size must be a positive number")
    if "max-file" in out:
        raw = out["max-file"].strip()
        if not re.fullmatch(r"[+-]?\d{1,9}", raw):
            raise LogOptError(f"invalid log opt max-file {out['max-file']!r}: use a whole number of files (e.g. 3)")
        n = int(raw)
        if n < 1:
            raise LogOptError("invalid log opt max-file: max-file cannot be less than 1")
        if n > MAX_MAX_FILE:
            raise LogOptError(f"invalid log opt max-file {n}: at most {MAX_MAX_FILE} files are kept")
    return out


def effective(opts: Mapping[str, str] | None, defaults: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(max_size_bytes, max_file)`` for a container: ``opts`` (the service's), then ``defaults`` (the
    daemon's) key by key, then :data:`DEFAULT_MAX_SIZE` × :data:`DEFAULT_MAX_FILE`. Both maps are
    checked with :func:`check_options`; raises :class:`LogOptError`."""
    merged = dict(check_options(defaults))
    merged.update(check_options(opts))
    size = parse_size(merged["max-size"]) if "max-size" in merged else DEFAULT_MAX_SIZE
    files = int(merged["max-file"]) if "max-file" in merged else DEFAULT_MAX_FILE
    return size, files


def parse_flags(flags: Iterable[str]) -> dict[str, str]:
    """``["max-size=10m", "max-file=3"]`` (repeated ``--log-opt KEY=VALUE`` flags) → a checked dict; a
    later flag for the same key wins. Raises :class:`LogOptError` for a flag without ``=`` or a bad option."""
    out: dict[str, str] = {}
    for flag in flags:
        key, eq, value = flag.partition("=")
        if not eq or not key:
            raise LogOptError(f"invalid log opt {flag!r}: use KEY=VALUE, e.g. max-size=10m")
        out[key.strip()] = value.strip()
    return check_options(out)
