"""Typed fields of a decoded JSON request body, with Go's decoder's error wording (Docker API)."""

from __future__ import annotations

from typing import Any


def json_type(v: Any) -> str:
    """The JSON type name of a decoded value, as Go's decoder names it in errors."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(v), type(v).__name__)


def body_str(body: dict[str, Any], key: str, struct: str = "InitRequest") -> str:
    """``body[key]`` as a string ("" when missing or null); ``ValueError`` for another type."""
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"json: cannot unmarshal {json_type(v)} into Go struct field {struct}.{key} of type string")
    return v


def body_bool(body: dict[str, Any], key: str, struct: str = "InitRequest") -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ValueError(f"json: cannot unmarshal {json_type(v)} into Go struct field {struct}.{key} of type bool")
    return v


def body_str_list(body: dict[str, Any], key: str, struct: str) -> list[str]:
    v = body.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"json: cannot unmarshal {json_type(v)} into Go struct field {struct}.{key} of type []string")
    return v

