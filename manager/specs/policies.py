"""Bounds of a ServiceSpec's policies: ``UpdateConfig``, ``RollbackConfig`` and
``TaskTemplate.RestartPolicy``.

The shapes (types, non-negative values, known ``FailureAction`` / ``Order`` / ``Condition``) are
checked where the spec is validated (:mod:`manager.specs.service`, :mod:`manager.specs.container`);
this module then refuses values that are well-formed but absurd, which Swarm takes and then
lives with (an update delay of 292 years, a million restart attempts). Each refusal is a
:class:`SpecError` (HTTP 400) naming the field, the value and what to give instead.

Defaults are Swarm's and are not written here (see ``service_spec_with_defaults``): UpdateConfig
and RollbackConfig Parallelism 1, Delay 0, FailureAction pause, Monitor 5 s, MaxFailureRatio 0,
Order stop-first; RestartPolicy Condition any, Delay 5 s, MaxAttempts 0 (no limit), Window 0.
"""

from __future__ import annotations

import math
from typing import Any

from manager.specs.common import SECOND, SpecError

MAX_POLICY_DURATION = 24 * 3600 * SECOND
"""The longest Delay, Monitor (update and rollback) and restart Delay or Window: 24 h, in ns."""
MAX_PARALLELISM = 100_000
"""The most tasks an update or rollback may replace at once (as many as a service may have)."""
MAX_RESTART_ATTEMPTS = 1000
"""The most restart attempts a policy may ask for (0 means no limit)."""

_UPDATE_ACTIONS = ("pause", "continue", "rollback")
_ROLLBACK_ACTIONS = ("pause", "continue")
_ORDERS = ("stop-first", "start-first")
_CONDITIONS = ("none", "on-failure", "any")


def _human(ns: int) -> str:
    secs = ns / SECOND
    return f"{secs / 3600:g}h" if secs >= 3600 else f"{secs:g}s"


def _duration(value: Any, field: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{field} must be a whole number of nanoseconds, not {value!r}")
    if value < 0:
        raise SpecError(f"{field} cannot be negative ({value} ns): give 0 or more nanoseconds")
    if value > MAX_POLICY_DURATION:
        raise SpecError(f"{field} of {_human(value)} is over the limit of 24h: give at most "
                        f"{MAX_POLICY_DURATION} ns (24h)")


def _count(value: Any, field: str, limit: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{field} must be a whole number, not {value!r}")
    if value < 0:
        raise SpecError(f"{field} cannot be negative ({value}): give 0 or more")
    if value > limit:
        raise SpecError(f"{field} {value} is over the limit of {limit}: give at most {limit}")


def _choice(value: Any, field: str, allowed: tuple[str, ...]) -> None:
    if value in (None, "") or value in allowed:
        return
    raise SpecError(f"unrecognized {field} {str(value)[:64]!r}: use {' or '.join(allowed)}")


def validate_update_config(uc: Any, name: str) -> None:
    """Check ``UpdateConfig`` or ``RollbackConfig`` (``name``) ``{Parallelism, Delay,
    FailureAction, Monitor, MaxFailureRatio, Order}``: Parallelism 0..:data:`MAX_PARALLELISM`;
    Delay and Monitor 0..:data:`MAX_POLICY_DURATION` ns; MaxFailureRatio a number in [0, 1];
    FailureAction pause | continue | rollback (pause | continue for a rollback); Order
    stop-first | start-first. None passes. Raises :class:`SpecError`."""
    if uc is None:
        return
    if not isinstance(uc, dict):
        raise SpecError(f"{name} must be a JSON object")
    _count(uc.get("Parallelism"), f"{name}.Parallelism", MAX_PARALLELISM)
    _duration(uc.get("Delay"), f"{name}.Delay")
    _duration(uc.get("Monitor"), f"{name}.Monitor")
    ratio = uc.get("MaxFailureRatio")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) \
                or not 0 <= ratio <= 1:
            raise SpecError(f"{name}.MaxFailureRatio must be a number between 0 and 1, not {ratio!r}")
    actions = _UPDATE_ACTIONS if name == "UpdateConfig" else _ROLLBACK_ACTIONS
    _choice(uc.get("FailureAction"), f"{name}.FailureAction", actions)
    _choice(uc.get("Order"), f"{name}.Order", _ORDERS)


def validate_restart_policy(rp: Any) -> None:
    """Check ``TaskTemplate.RestartPolicy`` ``{Condition, Delay, MaxAttempts, Window}``:
    Condition none | on-failure | any; Delay and Window 0..:data:`MAX_POLICY_DURATION` ns;
    MaxAttempts 0..:data:`MAX_RESTART_ATTEMPTS`. None passes. Raises :class:`SpecError`."""
    if rp is None:
        return
    if not isinstance(rp, dict):
        raise SpecError("RestartPolicy must be a JSON object")
    _choice(rp.get("Condition"), "RestartPolicy.Condition", _CONDITIONS)
    _duration(rp.get("Delay"), "RestartPolicy.Delay")
    _duration(rp.get("Window"), "RestartPolicy.Window")
    _count(rp.get("MaxAttempts"), "RestartPolicy.MaxAttempts", MAX_RESTART_ATTEMPTS)


def validate_policies(spec: dict[str, Any]) -> None:
    """Check the policies of ServiceSpec ``spec`` (already shape-checked):
    :func:`validate_update_config` on ``UpdateConfig`` and ``RollbackConfig``,
    :func:`validate_restart_policy` on ``TaskTemplate.RestartPolicy``. Raises :class:`SpecError`."""
    validate_update_config(spec.get("UpdateConfig"), "UpdateConfig")
    validate_update_config(spec.get("RollbackConfig"), "RollbackConfig")
    task = spec.get("TaskTemplate")
    validate_restart_policy(task.get("RestartPolicy") if isinstance(task, dict) else None)
