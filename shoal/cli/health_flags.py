"""``shoal service create/update`` health check flags, with the docker CLI's names and meanings
(docker/cli ``service/opts.go`` healthCheckOptions and ``service/update.go`` updateHealthcheck;
never copied).

``--health-cmd CMD`` (run with ``/bin/sh -c`` in the container: ``Test ["CMD-SHELL", CMD]``),
``--health-interval``, ``--health-timeout``, ``--health-start-period``, ``--health-start-interval``
(Go durations: ``30s``, ``1m30s``, ``250ms``), ``--health-retries N`` and ``--no-healthcheck``
(``Test ["NONE"]``: also disables the image's HEALTHCHECK). Values left out keep the image's.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import format as fmt

_DURATIONS = (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
              ("start_interval", "StartInterval"))


def add_health_args(parser: argparse.ArgumentParser) -> None:
    """Add the health flags to ``service create`` or ``service update``."""
    parser.add_argument("--health-cmd", default=None, metavar="CMD", help="command run to check health")
    parser.add_argument("--health-interval", default=None, metavar="DURATION",
                        help="time between running the check (ms|s|m|h)")
    parser.add_argument("--health-timeout", default=None, metavar="DURATION",
                        help="maximum time to allow one check to run (ms|s|m|h)")
    parser.add_argument("--health-retries", type=int, default=None, metavar="N",
                        help="consecutive failures needed to report unhealthy")
    parser.add_argument("--health-start-period", default=None, metavar="DURATION",
                        help="start period for the container to initialize before counting retries "
                             "towards unstable (ms|s|m|h)")
    parser.add_argument("--health-start-interval", default=None, metavar="DURATION",
                        help="time between running the check during the start period (ms|s|m|h)")
    parser.add_argument("--no-healthcheck", action="store_true", help="disable any container-specified HEALTHCHECK")


def _changed(a: argparse.Namespace) -> bool:
    return any(getattr(a, f"health_{n}", None) is not None for n in ("cmd", "interval", "timeout", "retries",
                                                                       "start_period", "start_interval"))


def _duration(a: argparse.Namespace, name: str) -> int | None:
    text = getattr(a, f"health_{name}", None)
    if text is None:
        return None
    flag = "--health-" + name.replace("_", "-")
    try:
        ns = fmt.parse_duration(text)
    except ValueError as e:
        raise ValueError(f"invalid argument {text!r} for {flag}: {e}") from None
    if ns < 0:
        raise ValueError(f"invalid argument {text!r} for {flag}: duration cannot be negative")
    return ns


def health_config(a: argparse.Namespace) -> dict[str, Any] | None:
    """``ContainerSpec.Healthcheck`` for ``service create`` flags, or None when none is given.
    Raises ValueError for a bad duration, or ``--no-healthcheck`` with ``--health-*``."""
    if a.no_healthcheck:
        if _changed(a):
            raise ValueError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not _changed(a):
        return None
    hc: dict[str, Any] = {"Test": ["CMD-SHELL", a.health_cmd] if a.health_cmd else []}
    for name, key in _DURATIONS:
        hc[key] = _duration(a, name) or 0
    hc["Retries"] = a.health_retries or 0
    return hc


def apply_health(cspec: dict[str, Any], a: argparse.Namespace) -> None:
    """``service create``: set ``cspec["Healthcheck"]`` from the flags (unchanged without any)."""
    hc = health_config(a)
    if hc is not None:
        cspec["Healthcheck"] = hc


def update_health(cspec: dict[str, Any], a: argparse.Namespace) -> None:
    """``service update``: change ``cspec["Healthcheck"]`` by the flags given (the others keep their
    values; ``--health-cmd ""`` drops the command, so the image's runs; a given option ends a
    ``--no-healthcheck``). Raises ValueError as :func:`health_config`."""
    if not a.no_healthcheck and not _changed(a):
        return
    if a.no_healthcheck:
        if _changed(a):
            raise ValueError("--no-healthcheck conflicts with --health-* options")
        cspec["Healthcheck"] = {"Test": ["NONE"]}
        return
    hc = dict(cspec.get("Healthcheck") or {})
    if (hc.get("Test") or [None])[0] == "NONE":
        hc["Test"] = []
    for name, key in _DURATIONS:
        ns = _duration(a, name)
        if ns is not None:
            hc[key] = ns
    if a.health_retries is not None:
        hc["Retries"] = a.health_retries
    if a.health_cmd is not None:
        hc["Test"] = ["CMD-SHELL", a.health_cmd] if a.health_cmd else []
    cspec["Healthcheck"] = hc
