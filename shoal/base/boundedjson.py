"""Decoding JSON from untrusted peers (API request bodies, the ``filters`` query parameter, the
``X-Registry-Auth`` header) with explicit bounds, so that no input can make a decoder use
unbounded memory or stack.

Bounds: at most :data:`MAX_JSON_BYTES` bytes (Docker's API server has no JSON limit of its own,
but Swarm refuses a store transaction over 1.5 MiB, SK: manager/state/store/memory.go
``MaxTransactionBytes``, so a larger spec could never be stored anyway) and at most
:data:`MAX_JSON_DEPTH` nested arrays/objects (Go's encoding/json stops at 10000; the deepest
Docker API object a client sends nests fewer than 10 levels). Python's decoder would turn a deep
document into a ``RecursionError``; here it is an :class:`InvalidJSON` like any other malformed
input.

Beyond what the standard library accepts, these are refused as Go's decoder refuses them (MOBY
decodes every body with encoding/json): ``NaN``/``Infinity``, numbers that overflow a float64,
and strings with an unpaired UTF-16 surrogate escape (``"\\ud800"``: Python would keep it and
the store could not encode it later). Integers over 4300 digits are refused by Python itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sys
from typing import Any

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "InvalidJSON", "loads", "decode_registry_auth"]

MAX_JSON_BYTES = 4 * 1024 * 1024
"""Largest JSON document accepted (bytes): 4 MiB."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (the top-level value is depth 1)."""

MAX_REGISTRY_AUTH_BYTES = 64 * 1024
"""Largest ``X-Registry-Auth`` header value decoded (bytes of base64)."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class InvalidJSON(ValueError):
    """The input is not JSON within the bounds; ``str(e)`` is ``invalid JSON[ in <what>]: <why>``
    (fit for an API client: the API answers 400 with it, or 413 when ``too_large``)."""

    def __init__(self, what: str, why: str, too_large: bool = False) -> None:
        super().__init__(f"invalid JSON{f' in {what}' if what else ''}: {why}")
        self.why = why
        self.too_large = too_large


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise ValueError(f"number {text} is out of range for a 64-bit float")
    return v


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``max_depth`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > max_depth:
            return True
        for x in (v.values() if isinstance(v, dict) else v):
            if isinstance(x, (dict, list)):
                stack.append((x, depth + 1))
    return False


def loads(raw: bytes | str, what: str = "", max_bytes: int = MAX_JSON_BYTES,
          max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode one JSON document from ``raw`` (UTF-8/16/32 bytes, or a str) within the bounds.

    ``what`` names the input in errors ("request body", "filters"). Raises :class:`InvalidJSON`
    for anything else: over ``max_bytes`` (``too_large``), malformed, nested deeper than
    ``max_depth``, ``NaN``/``Infinity``, an out-of-range float, an unpaired surrogate escape,
    an integer over Python's digit limit, or bytes that are not valid Unicode.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise InvalidJSON(what, f"{len(data)} bytes is over the limit of {max_bytes} bytes "
                                f"({max_bytes / 1048576:g} MiB)", too_large=True)
    if data.startswith(b"\xef\xbb\xbf"):  # Go's decoder has no byte-order mark either
        raise InvalidJSON(what, "invalid character 'ï' looking for beginning of value (a UTF-8 byte-order "
                                "mark: send the JSON without it)")
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidJSON(what, f"nesting too deep (over {max_depth} levels of arrays and objects)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, digit limit, the hooks above
        if "int_max_str_digits" in str(e) or "integer string conversion" in str(e):
            raise InvalidJSON(what, f"a number has more than {sys.get_int_max_str_digits()} digits, "
                                    "more than any field can hold") from None
        raise InvalidJSON(what, str(e)) from None
    # a cheap upper bound first: a document with few brackets cannot nest deeply
    if isinstance(value, (dict, list)) and data.count(b"[") + data.count(b"{") > max_depth \
            and _too_deep(value, max_depth):
        raise InvalidJSON(what, f"nesting too deep (over {max_depth} levels of arrays and objects)")
    if _SURROGATE_ESCAPE.search(data):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJSON(what, "a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return value


def decode_registry_auth(header: str | None) -> dict[str, Any]:
    """Decode Docker's ``X-Registry-Auth`` header: base64url (padding optional) of a JSON
    object such as ``{"username", "password", "serveraddress"}`` or ``{"identitytoken"}``
    (MOBY: api/types/registry/authconfig.go ``DecodeAuthConfig``). An empty or missing header
    is ``{}``. Raises :class:`InvalidJSON` for a header over :data:`MAX_REGISTRY_AUTH_BYTES`,
    bad base64, bad JSON, or JSON that is not an object."""
    if not header:
        return {}
    what = "X-Registry-Auth header"
    if len(header) > MAX_REGISTRY_AUTH_BYTES:
        raise InvalidJSON(what, f"{len(header)} bytes is over the limit of {MAX_REGISTRY_AUTH_BYTES} bytes",
                          too_large=True)
    text = header.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidJSON(what, f"not base64url: {e}") from None
    value = loads(raw, what, max_bytes=MAX_REGISTRY_AUTH_BYTES, max_depth=4)
    if not isinstance(value, dict):
        raise InvalidJSON(what, "expected a JSON object, got " + {bool: "bool", int: "number", float: "number",
                                  str: "string", list: "array", type(None): "null"}.get(type(value), "value"))
    return value
