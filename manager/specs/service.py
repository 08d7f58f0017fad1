"""Validation and defaults of a ServiceSpec (and the TaskSpec defaults the orchestrator writes)."""

from __future__ import annotations

import copy
import secrets
from typing import Any, cast

from manager.allocator.errors import InvalidArgument as AllocInvalidArgument
from manager.allocator.ports import normalize_port
from manager.specs.common import (
    SECOND,
    SpecError,
    _check_int_ranges,
    _int,
    _labels,
    _obj,
    _uint,
    json_type,
    validate_name,
    validate_network_attachments,
)
from manager.specs.container import validate_task_spec
from manager.specs.modes import check_job_update_config, validate_mode
from manager.specs.policies import validate_policies
from manager.specs.schema import SERVICE_SPEC_SCHEMA, canonicalize_keys

DEFAULT_RESTART_POLICY: dict[str, Any] = {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0, "Window": 0}
DEFAULT_STOP_GRACE_PERIOD = 10 * SECOND
DEFAULT_UPDATE_CONFIG: dict[str, Any] = {
    "Parallelism": 1,
    "Delay": 0,
    "FailureAction": "pause",
    "Monitor": 5 * SECOND,
    "MaxFailureRatio": 0,
    "Order": "stop-first",
}
DEFAULT_ROLLBACK_CONFIG: dict[str, Any] = dict(DEFAULT_UPDATE_CONFIG)

_ADJ = ["admiring", "brave", "clever", "eager", "festive", "gallant", "happy", "jolly", "keen", "lucid",
        "nifty", "quirky", "serene", "sharp", "tender", "vibrant", "wizardly", "zealous"]
_NOUN = ["albattani", "bell", "curie", "darwin", "euclid", "fermi", "galileo", "hopper", "kepler",
         "lovelace", "meitner", "noether", "pasteur", "ritchie", "shannon", "turing", "wozniak", "yalow"]


def _random_name() -> str:
    return f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}"


def _validate_update_config(uc: Any, name: str, actions: tuple[str, ...]) -> None:
    uc = _obj(uc, name)
    if uc.get("Parallelism") is not None:
        _uint(uc["Parallelism"], f"ServiceSpec.{name}.Parallelism")
    for f in ("Delay", "Monitor"):
        if uc.get(f) is not None and _int(uc[f], f"ServiceSpec.{name}.{f}") < 0:
            raise SpecError(f"{name}: {f.lower()} cannot be negative")
    fa = uc.get("FailureAction")
    if fa not in (None, "", *actions):
        raise SpecError(f"unrecognized {name}.FailureAction {fa!r} (use {', '.join(actions)})")
    order = uc.get("Order")
    if order not in (None, "", "stop-first", "start-first"):
        raise SpecError(f"unrecognized {name}.Order {str(order)[:64]!r} (use stop-first or start-first)")
    ratio = uc.get("MaxFailureRatio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        raise SpecError(f"json: cannot unmarshal {json_type(ratio)} into Go struct field "
                        f"{name}.MaxFailureRatio of type float32")
    if ratio is not None and not 0 <= ratio <= 1:
        raise SpecError(f"{name}: max failure ratio must be between 0 and 1")



def validate_service_spec(spec: Any) -> dict[str, Any]:
    """Validate a ServiceSpec and return a normalised deep copy: ``Name`` filled (a random
    ``adjective_name`` like Docker's when empty), ``Mode`` defaulted to ``Replicated`` with
    ``Replicas`` 1. Other defaults are not written into the stored spec (Docker keeps them
    out too; see :func:`service_spec_with_defaults`). Raises :class:`SpecError`.
    """
    if not isinstance(spec, dict):
        raise SpecError("service spec must be a JSON object")
    spec = canonicalize_keys(spec, SERVICE_SPEC_SCHEMA)
    _check_int_ranges(spec, "ServiceSpec")
    if not spec.get("Name"):
        spec["Name"] = _random_name()
    validate_name(spec["Name"])
    _labels(spec.get("Labels"), "ServiceSpec.Labels")
    spec["TaskTemplate"] = validate_task_spec(spec.get("TaskTemplate"))
    spec["Mode"] = validate_mode(spec.get("Mode"))
    check_job_update_config(spec)
    _validate_update_config(spec.get("UpdateConfig"), "UpdateConfig", ("continue", "pause", "rollback"))
    _validate_update_config(spec.get("RollbackConfig"), "RollbackConfig", ("continue", "pause"))
    validate_policies(spec)
    if spec.get("EndpointSpec") is not None:
        spec["EndpointSpec"] = validate_endpoint_spec(spec["EndpointSpec"])
    if "Networks" in spec:
        # deprecated ServiceSpec.Networks: moved into TaskTemplate.Networks, as Docker does
        old = validate_network_attachments(spec.pop("Networks"), "ServiceSpec.Networks")
        if old:
            if spec["TaskTemplate"].get("Networks"):
                raise SpecError("ServiceSpec.Networks is deprecated and cannot be used together with "
                                "TaskTemplate.Networks: give the networks in TaskTemplate.Networks only")
            spec["TaskTemplate"]["Networks"] = old
    return cast(dict[str, Any], spec)


def validate_endpoint_spec(raw: Any) -> dict[str, Any] | None:
    """A ServiceSpec's ``EndpointSpec`` (``{"Mode": "vip"|"dnsrr", "Ports": [PortConfig]}``, None
    when absent) checked and normalised: each port gets ``Protocol`` (tcp) and ``PublishMode``
    (ingress) filled; a port without ``PublishedPort`` (or 0) is left without one (the allocator
    picks one from 30000-32767 for an ingress port), as swarmkit's controlapi
    ``validateEndpointSpec`` and the allocator expect.

    Raises :class:`SpecError` (HTTP 400): a mode other than vip/dnsrr; a malformed port (bad
    protocol or publish mode, a target port of 0 or over 65535, a published port over 65535); an
    ingress-mode port with ``dnsrr`` (swarmkit: "port published with ingress mode can't be used
    with dnsrr mode"); the same published port and protocol twice ("duplicate published ports
    provided"); a host-mode port without a published port (shoal does not pick host ports)."""
    if raw is None:
        return None
    ep = _obj(raw, "EndpointSpec")
    mode = ep.get("Mode")
    if mode not in (None, "", "vip", "dnsrr"):
        raise SpecError(f"invalid endpoint mode {mode!r} (use vip or dnsrr)")
    ports = ep.get("Ports")
    if ports is not None and not isinstance(ports, list):
        raise SpecError("json: cannot unmarshal into Go struct field EndpointSpec.Ports of type []swarm.PortConfig")
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for p in ports or []:
        p = _obj(p, "EndpointSpec.Ports[]")
        for key, go in (("TargetPort", "uint32"), ("PublishedPort", "uint32")):
            if p.get(key) is not None:
                _uint(p[key], f"PortConfig.{key}", go)
        try:
            n = normalize_port(p)
        except AllocInvalidArgument as e:
            raise SpecError(f"EndpointSpec: {e}") from None
        if mode == "dnsrr" and n["PublishMode"] == "ingress":
            raise SpecError("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")
        if n["PublishMode"] == "host" and not n["PublishedPort"]:
            raise SpecError(f"EndpointSpec: the host-mode port with target {n['TargetPort']}/{n['Protocol']} needs "
                            "a published port (mode=host,target=80,published=8080): shoal does not pick host ports")
        if n["PublishedPort"]:
            key2 = (n["Protocol"], n["PublishedPort"])
            if key2 in seen:
                raise SpecError(f"EndpointSpec: duplicate published ports provided "
                                f"({n['PublishedPort']}/{n['Protocol']})")
            seen.add(key2)
        else:
            del n["PublishedPort"]  # as Docker shows it (omitempty): the allocator picks one
        out.append(n)
    ep["Mode"] = mode or "vip"
    if ports is not None:
        ep["Ports"] = out
    return ep


def task_spec_with_defaults(ts: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of TaskSpec ``ts`` with swarmkit's defaults filled in (RestartPolicy,
    ContainerSpec.StopGracePeriod, Resources, Placement)."""
    ts = copy.deepcopy(ts)
    rp = dict(DEFAULT_RESTART_POLICY)
    rp.update({k: v for k, v in (ts.get("RestartPolicy") or {}).items() if v is not None and v != ""})
    ts["RestartPolicy"] = rp
    cs = ts.setdefault("ContainerSpec", {})
    if cs.get("StopGracePeriod") is None:
        cs["StopGracePeriod"] = DEFAULT_STOP_GRACE_PERIOD
    ts.setdefault("Resources", {"Limits": {}, "Reservations": {}})
    ts.setdefault("Placement", {})
    ts.setdefault("ForceUpdate", 0)
    return ts


def service_spec_with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a validated ServiceSpec with swarmkit's defaults (for
    ``GET /services/{id}?insertDefaults=true``)."""
    spec = copy.deepcopy(spec)
    spec["TaskTemplate"] = task_spec_with_defaults(spec.get("TaskTemplate") or {})
    for key, default in (("UpdateConfig", DEFAULT_UPDATE_CONFIG), ("RollbackConfig", DEFAULT_ROLLBACK_CONFIG)):
        merged = dict(default)
        merged.update({k: v for k, v in (spec.get(key) or {}).items() if v is not None and v != ""})
        spec[key] = merged
    if not isinstance(spec.get("EndpointSpec"), dict):  # missing or null
        spec["EndpointSpec"] = {"Mode": "vip"}
    if not spec["EndpointSpec"].get("Mode"):
        spec["EndpointSpec"]["Mode"] = "vip"
    return spec
