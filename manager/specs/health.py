"""Validation of ``ContainerSpec.Healthcheck`` (Docker's ``HealthConfig``; MOBY:
daemon/container.go validateHealthCheck, swarmkit's controlapi likewise; never copied).

``{"Test": ["CMD", arg…] | ["CMD-SHELL", command] | ["NONE"] | [], "Interval", "Timeout",
"StartPeriod", "StartInterval": nanoseconds (0 = the image's or the default, else ≥ 1 ms),
"Retries": ≥ 0 (0 = the image's or 3)}``. The worker merges it with the image's HEALTHCHECK
(:mod:`worker.health`).
"""

from __future__ import annotations

from typing import Any

from manager.specs.common import SpecError, _int, _obj

MIN_DURATION_NS = 1_000_000
"""Smallest non-zero health check duration (1 ms, Docker's ``MinimumDuration``)."""
MAX_DURATION_NS = 365 * 24 * 3600 * 10**9
"""Largest duration accepted (a year): anything longer is a mistake (it would never probe)."""
DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")
_FLAGS = {"Interval": "--health-interval", "Timeout": "--health-timeout", "StartPeriod": "--health-start-period",
          "StartInterval": "--health-start-interval"}


def validate_healthcheck(cs: dict[str, Any]) -> None:
    """Check ``cs["Healthcheck"]`` (absent or null: nothing to check). Raises :class:`SpecError`
    (a 400) saying which field is wrong and what to give instead."""
    hc = cs.get("Healthcheck")
    if hc is None:
        return
    hc = _obj(hc, "ContainerSpec.Healthcheck")
    test = hc.get("Test")
    if test is not None:
        if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
            raise SpecError("ContainerSpec.Healthcheck.Test must be a list of strings, like "
                            '["CMD", "curl", "-f", "http://localhost/"], ["CMD-SHELL", "curl -f localhost"] or ["NONE"]')
        if any("\x00" in t for t in test):
            raise SpecError("ContainerSpec.Healthcheck.Test contains a NUL byte, which no program can be given: remove it")
        if test:
            kind = test[0]
            if kind == "NONE":
                if len(test) > 1:
                    raise SpecError('ContainerSpec.Healthcheck.Test ["NONE"] (no health check) takes no command')
            elif kind in ("CMD", "CMD-SHELL"):
                if len(test) < 2 or not any(t.strip() for t in test[1:]):
                    raise SpecError(f"ContainerSpec.Healthcheck.Test {kind} needs a command after it "
                                    "(give --health-cmd a command)")
                if kind == "CMD-SHELL" and len(test) > 2:
                    raise SpecError('ContainerSpec.Healthcheck.Test CMD-SHELL takes one command string: '
                                    '["CMD-SHELL", "curl -f http://localhost/ || exit 1"]')
            else:
                raise SpecError(f"ContainerSpec.Healthcheck.Test: unknown health check type {kind!r}: "
                                "the first item must be CMD, CMD-SHELL or NONE")
    for key in DURATIONS:
        if hc.get(key) is None:
            continue
        ns = _int(hc[key], f"ContainerSpec.Healthcheck.{key}")
        if ns != 0 and ns < MIN_DURATION_NS:
            raise SpecError(f"ContainerSpec: {key} in Healthcheck cannot be less than 1ms "
                            f"(got {ns} ns; give {_FLAGS[key]} 0 for the default, or at least 1ms)")
        if ns > MAX_DURATION_NS:
            raise SpecError(f"ContainerSpec: {key} in Healthcheck cannot be more than a year (got {ns} ns; "
                            f"give {_FLAGS[key]} a shorter duration)")
    if hc.get("Retries") is not None:
        retries = _int(hc["Retries"], "ContainerSpec.Healthcheck.Retries")
        if retries < 0:
            raise SpecError(f"ContainerSpec: Retries in Healthcheck cannot be negative (got {retries}; "
                            "give --health-retries 0 for the default of 3, or more)")
        if retries > 1_000_000:
            raise SpecError(f"ContainerSpec: Retries in Healthcheck is too large ({retries}; at most 1000000)")
