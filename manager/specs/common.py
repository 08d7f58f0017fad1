"""What every spec validator shares: units and limits, :class:`SpecError`, the type checks
with the messages Go's JSON decoder gives Docker, and object names."""

from __future__ import annotations

import re
from typing import Any

SECOND = 1_000_000_000  # nanoseconds, the API's duration unit
MAX_REPLICAS = 100_000
"""Most tasks a replicated service may ask for (``Mode.Replicated.Replicas``). Swarm takes any
uint64 and then tries to create that many tasks; Shoal keeps every task of a service in the
store, so it refuses more than this (split a larger workload over several services). The
orchestrator creates tasks in bounded batches (:data:`manager.orchestrator.MAX_TASK_WRITES_PER_PASS`),
so even the largest allowed scale-up never stalls the leader for long."""
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

# swarmkit's controlapi validateAnnotations: a DNS label-like name, at most 63 characters:
# letters, digits, '-' and '_', starting and ending with a letter or digit. (Written without
# nested quantifiers: Python's backtracking engine took seconds — and 2^n steps — on a name like
# "aaaa…a!" with the form swarmkit uses, which Go's linear-time regexp runs safely.)
_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[-_a-zA-Z0-9]*[a-zA-Z0-9])?")


_ALIAS_RE = re.compile(r"[a-zA-Z0-9_](?:[-_a-zA-Z0-9]{0,61}[a-zA-Z0-9_])?(?:\.[a-zA-Z0-9_](?:[-_a-zA-Z0-9]{0,61}[a-zA-Z0-9_])?)*")


def _check_alias(alias: str, target: str) -> None:
    """An alias is a DNS name (labels of letters, digits, ``-`` and ``_``, at most 63 each, 253 in
    all) that the embedded DNS can answer; ``tasks.…`` is the resolver's own name space (a service
    aliased ``tasks.api`` would hide api's task list). Raises :class:`SpecError`."""
    if len(alias) > 253 or not _ALIAS_RE.fullmatch(alias):
        raise SpecError(f"network {target}: invalid alias {alias[:80]!r}: an alias must be a DNS name "
                        "(letters, digits, '-', '_' and dots, at most 63 characters between dots)")
    if alias.lower() == "tasks" or alias.lower().startswith("tasks."):
        raise SpecError(f"network {target}: invalid alias {alias!r}: names under 'tasks.' are the embedded "
                        "DNS's own (tasks.<service> lists a service's tasks); choose another alias")


def validate_network_attachments(v: Any, field: str) -> list[dict[str, Any]]:
    """Validate a ``[{"Target", "Aliases", "DriverOpts"}]`` list (Docker's
    ``NetworkAttachmentConfig``; ``field`` names it in errors) and return it normalised: ``Target``
    a non-empty string (a network name, ID or unique ID prefix, resolved to the network ID by the
    control API), ``Aliases`` a list of DNS names, none under ``tasks.`` (:func:`_check_alias`), no ``DriverOpts`` (not
    built), no target twice. None or ``[]`` gives ``[]``. Raises :class:`SpecError`."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise SpecError(f"json: cannot unmarshal {json_type(v)} into Go struct field {field} of type "
                        "[]swarm.NetworkAttachmentConfig")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n in v:
        if not isinstance(n, dict):
            raise SpecError(f"json: cannot unmarshal {json_type(n)} into Go struct field {field} of type "
                            "swarm.NetworkAttachmentConfig")
        target = n.get("Target")
        if target is not None and not isinstance(target, str):
            raise SpecError(f"json: cannot unmarshal {json_type(target)} into Go struct field "
                            "NetworkAttachmentConfig.Target of type string")
        if not target:
            raise SpecError(f"{field}: a network attachment needs a Target (the network's name or ID)")
        aliases = _str_list(n.get("Aliases"), "NetworkAttachmentConfig.Aliases")
        for alias in aliases:
            _check_alias(alias, target)
        if n.get("DriverOpts"):
            raise SpecError(f"network {target}: driver options on a network attachment (driver-opt) are not "
                            "supported by shoal yet; remove them")
        if target in seen:
            raise SpecError(f"network {target} is attached more than once: give each network once")
        seen.add(target)
        att: dict[str, Any] = {"Target": target}
        if aliases:
            att["Aliases"] = list(aliases)
        out.append(att)
    return out


class SpecError(ValueError):
    """A spec is invalid; ``str(e)`` says what is wrong (Docker's wording where it has one)."""



def json_type(v: Any) -> str:
    """The JSON type of a decoded value as Go's decoder names it in its errors (``string``,
    ``number``, ``bool``, ``array``, ``object``, ``null``), never a Python class name."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(v), "value")


def _obj(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SpecError(f"{what} must be a JSON object, got {json_type(v)}")
    return v


def _uint(v: Any, field: str, go_type: str = "uint64") -> int:
    """Check an unsigned integer field, with the error Go's JSON decoder gives Docker."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"json: cannot unmarshal {json_type(v)} into Go struct field {field} of type {go_type}")
    limit = {"uint64": 2**64 - 1, "uint32": 2**32 - 1}.get(go_type, 2**64 - 1)
    if v < 0 or v > limit:
        raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {field} of type {go_type}")
    return v


def _int(v: Any, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"json: cannot unmarshal {json_type(v)} into Go struct field {field} of type int64")
    if not INT64_MIN <= v <= INT64_MAX:
        raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {field} of type int64")
    return v


def _check_int_ranges(v: Any, path: str) -> None:
    """Reject any integer in ``v`` that no 64-bit Go field can hold (below int64's minimum or
    above uint64's maximum), with Go's JSON decoder message. Such numbers would be accepted by
    Python's json but cannot be stored (msgpack is 64-bit)."""
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        if not INT64_MIN <= v <= UINT64_MAX:
            go_type = "int64" if v < 0 else "uint64"
            raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {path} of type {go_type}")
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_int_ranges(x, f"{path}.{k}")
    elif isinstance(v, list):
        for x in v:
            _check_int_ranges(x, path)


def _str_list(v: Any, field: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SpecError(f"json: cannot unmarshal {json_type(v)} into Go struct field {field} of type []string")
    return v


def _labels(v: Any, field: str) -> None:
    if v is None:
        return
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        what = json_type(v) if not isinstance(v, dict) else "object with a non-string value"
        raise SpecError(f"json: cannot unmarshal {what} into Go struct field {field} of type map[string]string")


def validate_name(name: Any) -> None:
    """Raise :class:`SpecError` unless ``name`` is a valid object name (swarmkit rules)."""
    if not isinstance(name, str) or not name:
        raise SpecError("meta: name must be provided")
    if len(name) > 63 or not _NAME_RE.fullmatch(name):
        raise SpecError("name must be valid as a DNS name component")

