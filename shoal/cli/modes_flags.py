"""Service-mode flags of ``shoal service create`` (as docker/cli's ``service/opts.go``):
``--mode replicated|global|replicated-job|global-job``, ``--replicas`` (for a replicated job:
``TotalCompletions``), ``--max-concurrent``; waiting for a job to complete (as the docker CLI's
job progress); the REPLICAS column of ``service ls`` per mode."""

from __future__ import annotations

import argparse
import time
from typing import Any, TextIO

from shoal.cli.client import APIError, Client

__all__ = ["MODES", "add_mode_args", "build_mode", "is_job", "wait_job", "replicas_text"]

MODES = ["replicated", "global", "replicated-job", "global-job"]
"""The values of ``--mode``."""


class ModeFlagError(ValueError):
    """A bad combination of mode flags (the CLI shows it as a usage error)."""


def add_mode_args(parser: argparse.ArgumentParser) -> None:
    """``--mode`` and ``--max-concurrent`` on ``parser`` (``--replicas`` is the command's own)."""
    parser.add_argument("--mode", choices=MODES, default="replicated",
                        help="replicated (default), global (one task per node), replicated-job or global-job "
                             "(run to completion)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="replicated-job: at most N tasks at once (default: --replicas)")


def build_mode(a: argparse.Namespace) -> dict[str, Any]:
    """The ServiceSpec ``Mode`` for ``a.mode``, ``a.replicas`` and ``a.max_concurrent``. As the
    docker CLI: a replicated job runs ``--replicas`` tasks in total (default 1), at most
    ``--max-concurrent`` at once (default: the same number). Raises :class:`ModeFlagError` for
    ``--replicas`` with a global mode, ``--max-concurrent`` without replicated-job, or a
    negative count."""
    mode = getattr(a, "mode", "replicated") or "replicated"
    replicas, concurrent = a.replicas, getattr(a, "max_concurrent", None)
    for flag, v in (("--replicas", replicas), ("--max-concurrent", concurrent)):
        if v is not None and v < 0:
            raise ModeFlagError(f"invalid {flag} value {v}: must be 0 or more")
    if replicas is not None and mode in ("global", "global-job"):
        raise ModeFlagError("replicas can only be used with replicated or replicated-job mode")
    if concurrent is not None and mode != "replicated-job":
        raise ModeFlagError("max-concurrent can only be used with replicated-job mode")
    if mode == "global":
        return {"Global": {}}
    if mode == "global-job":
        return {"GlobalJob": {}}
    if mode == "replicated-job":
        total = 1 if replicas is None else replicas
        return {"ReplicatedJob": {"MaxConcurrent": total if concurrent is None else concurrent,
                                  "TotalCompletions": total}}
    return {"Replicated": {"Replicas": 1 if replicas is None else replicas}}


def is_job(spec: dict[str, Any]) -> bool:
    """Whether a ServiceSpec's mode is a job."""
    mode = spec.get("Mode") or {}
    return "ReplicatedJob" in mode or "GlobalJob" in mode


def replicas_text(service: dict[str, Any], running: Any, desired: Any) -> str:
    """The REPLICAS column of ``service ls`` as the docker CLI shows it: ``running/desired``;
    for a replicated job ``running/desired (completed/TotalCompletions completed)``; for a
    global job ``running/desired (completed/nodes completed)``."""
    mode = (service.get("Spec") or {}).get("Mode") or {}
    st = service.get("ServiceStatus") or {}
    done = st.get("CompletedTasks", 0)
    if "ReplicatedJob" in mode:
        return f"{running}/{desired} ({done}/{(mode['ReplicatedJob'] or {}).get('TotalCompletions', 1)} completed)"
    if "GlobalJob" in mode:
        total = (desired or 0) + done if isinstance(desired, int) else desired
        return f"{running}/{desired} ({done}/{total} completed)"
    return f"{running}/{desired}"


def wait_job(c: Client, service_id: str, out: TextIO, timeout: float = 300.0, interval: float = 0.2) -> int:
    """Poll every ``interval`` s until the job's current iteration has completed: every task
    ``complete`` and none left to run (``ServiceStatus``: no desired nor running task, at least
    one completed, or a replicated job of 0 completions). Prints ``job progress: C out of T
    complete`` as it changes, then ``verify: Job NAME complete``. Returns 0 when done, 1 after
    ``timeout`` s (the job keeps running). Raises APIError 404 when the service is removed."""
    deadline = time.monotonic() + timeout
    last = ""
    name = service_id
    while True:
        try:
            svc = c.service(service_id)
            name = svc["Spec"].get("Name", service_id)
            [listed] = [s for s in c.services({"id": [svc["ID"]]}) if s["ID"] == svc["ID"]] or [svc]
        except APIError as e:
            if e.status == 404:
                raise APIError(404, f"service {name} not found") from e
            raise
        st = listed.get("ServiceStatus") or {}
        done, desired, running = st.get("CompletedTasks", 0), st.get("DesiredTasks", 0), st.get("RunningTasks", 0)
        mode = svc["Spec"].get("Mode") or {}
        total = (mode.get("ReplicatedJob") or {}).get("TotalCompletions") if "ReplicatedJob" in mode else done + desired
        line = f"job progress: {done} out of {total} complete ({running} running)"
        if line != last:
            out.write(line + "\n")
            out.flush()
            last = line
        if desired == 0 and running == 0 and (done > 0 or total == 0):
            out.write(f"verify: Job {name} complete\n")
            return 0
        if time.monotonic() > deadline:
            out.write(f"Error: job {name} did not complete within {timeout:.0f}s ({done} of {total} complete); "
                      f"see `shoal service ps {name}`\n")
            return 1
        time.sleep(interval)
