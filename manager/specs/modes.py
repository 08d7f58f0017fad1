"""Validation of a ServiceSpec's ``Mode`` (the four service modes) and of a mode change at
update (SK: manager/controlapi/service.go ``validateMode``, ``UpdateService``)."""

from __future__ import annotations

from typing import Any

from manager.specs.common import MAX_REPLICAS, SpecError, _obj, _uint

__all__ = ["MODES", "validate_mode", "mode_key", "check_mode_change", "check_job_update_config"]

MODES = ("Replicated", "Global", "ReplicatedJob", "GlobalJob")
"""The keys of ``Spec.Mode``."""

_CLI = {"Replicated": "replicated", "Global": "global", "ReplicatedJob": "replicated-job", "GlobalJob": "global-job"}


def _count(v: Any, field: str) -> int:
    """A count of a mode: an integer in 0..MAX_REPLICAS (Docker's fields are uint64)."""
    n = _uint(v, field)  # a negative count: Go's decoder error, as Docker gives it
    if n > MAX_REPLICAS:
        raise SpecError(f"{field.rsplit('.', 1)[-1]} {n} is over the limit of {MAX_REPLICAS} tasks per service: ask for "
                        f"at most {MAX_REPLICAS}, or split the workload over several services")
    return n


def validate_mode(raw: Any) -> dict[str, Any]:
    """``Spec.Mode`` checked and normalised: None/empty → ``{"Replicated": {"Replicas": 1}}``;
    ``Replicated.Replicas`` defaults to 1; ``ReplicatedJob.MaxConcurrent`` to 1 and
    ``TotalCompletions`` to ``MaxConcurrent`` (as the API documents); ``Global`` and
    ``GlobalJob`` are ``{}``. Raises :class:`SpecError` (HTTP 400): not exactly one mode, an
    unknown mode, a negative, non-integer or absurd count."""
    if not raw:
        return {"Replicated": {"Replicas": 1}}
    mode = _obj(raw, "Mode")
    kinds = [k for k in MODES if k in mode]
    if len(kinds) > 1:
        raise SpecError("service mode must be exactly one of Replicated, Global, ReplicatedJob, GlobalJob")
    if not kinds or len(mode) > 1:
        raise SpecError(f"unrecognized service mode {sorted(mode)!r}: use one of {', '.join(MODES)}")
    kind = kinds[0]
    body = _obj(mode[kind], f"Mode.{kind}")
    if kind == "Replicated":
        rep = body.get("Replicas")
        body["Replicas"] = 1 if rep is None else _count(rep, "ServiceSpec.Mode.Replicated.Replicas")
    elif kind == "ReplicatedJob":
        mc = body.get("MaxConcurrent")
        mc = 1 if mc is None else _count(mc, "ServiceSpec.Mode.ReplicatedJob.MaxConcurrent")
        tc = body.get("TotalCompletions")
        tc = mc if tc is None else _count(tc, "ServiceSpec.Mode.ReplicatedJob.TotalCompletions")
        body["MaxConcurrent"], body["TotalCompletions"] = mc, tc
    return {kind: body}


def mode_key(spec: Any) -> str:
    """The key of a ServiceSpec's ``Mode`` (``""`` when none)."""
    mode = spec.get("Mode") if isinstance(spec, dict) else None
    return next(iter(mode), "") if isinstance(mode, dict) else ""


def check_mode_change(old_spec: Any, new_spec: Any) -> dict[str, Any]:
    """Refuse an update that changes the service's mode, in swarmkit's words (HTTP 400): a
    service's mode is fixed at create; to change it, remove the service and create it again.
    Returns ``new_spec`` (a shallow copy)."""
    old, new = mode_key(old_spec) or "Replicated", mode_key(new_spec) or "Replicated"
    if old != new:
        raise SpecError(f"service mode change is not allowed (from {_CLI.get(old, old)} to "
                        f"{_CLI.get(new, new)}): remove the service and create it again in the new mode")
    return dict(new_spec)


def check_job_update_config(spec: dict[str, Any]) -> None:
    """Refuse a job (``ReplicatedJob``, ``GlobalJob``) whose ServiceSpec has an ``UpdateConfig``
    (null counts as none), in swarmkit's words (SK: controlapi ``validateJob``; HTTP 400): a job
    is not rolled out, each update runs it again whole. ``RollbackConfig`` is not checked (as
    swarmkit). Raises :class:`SpecError`."""
    if mode_key(spec) in ("ReplicatedJob", "GlobalJob") and spec.get("UpdateConfig") is not None:
        raise SpecError("Jobs may not have an update config: leave UpdateConfig out of the job's spec "
                        "(no --update-* flags); each update of a job runs it again whole")
