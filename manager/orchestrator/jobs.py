"""What the job reconcilers share (``Mode.ReplicatedJob``, ``Mode.GlobalJob``; SK:
manager/orchestrator/jobs): tasks that run to completion.

- A job's tasks have desired state ``complete`` (a worker runs them as any task; the
  orchestrator never asks a finished one to run again). A ``complete`` task is never restarted.
- A task that failed (or was shut down without being asked) is replaced in its slot (or on its
  node) per the restart policy; the condition ``any`` acts as ``on-failure`` for a job.
- ``JobStatus.JobIteration.Index`` (set by the control API at create and at every update,
  ``service update --force`` included) names the run: each task carries the ``JobIteration`` it
  was made for; tasks of an older iteration are shut down if they still run and are otherwise
  history. A new iteration therefore runs the job again from scratch.
- A task on a node that is drained or removed is replaced; one on a down node is left alone
  (the node may come back with it: never two copies of one job task running).
"""

from __future__ import annotations

from typing import Any

from manager.orchestrator.plan import Obj
from manager.orchestrator.update import Ctx
from shoal.base.taskstate import COMPLETE, TERMINAL_STATES
from shoal.base.views import task_desired_order, task_state

__all__ = ["JOB_MODES", "job_iteration", "task_iteration", "as_job_task", "current_iteration", "job_counts",
           "start_iteration"]

JOB_MODES = ("ReplicatedJob", "GlobalJob")
"""The keys of ``Spec.Mode`` that are jobs."""


def job_iteration(service: Obj) -> int:
    """``JobStatus.JobIteration.Index`` of ``service`` (0 when missing)."""
    js = service.get("JobStatus")
    it = (js.get("JobIteration") if isinstance(js, dict) else None) or {}
    idx = it.get("Index") if isinstance(it, dict) else None
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else 0


def task_iteration(task: Obj) -> int:
    """``JobIteration.Index`` of a job task (0 when missing)."""
    it = task.get("JobIteration")
    idx = it.get("Index") if isinstance(it, dict) else None
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else 0


def as_job_task(task: Obj, iteration: int) -> Obj:
    """``task`` (new) made a job task of ``iteration``: desired ``complete``."""
    task["DesiredState"] = "complete"
    task["JobIteration"] = {"Index": iteration}
    return task


def current_iteration(ctx: Ctx, service: Obj, tasks: list[Obj]) -> tuple[int, list[Obj]]:
    """(the service's iteration, its tasks of that iteration); tasks of older iterations that
    still run get desired ``shutdown`` (within the budget)."""
    it = job_iteration(service)
    out = []
    for t in tasks:
        if task_iteration(t) == it:
            out.append(t)
        elif task_desired_order(t) <= COMPLETE and task_state(t) not in TERMINAL_STATES \
                and ctx.budget.take(1, ctx.task_size):
            ctx.set_desired(t, "shutdown")
    return it, out


def job_counts(service: Obj) -> tuple[int, int]:
    """``(MaxConcurrent, TotalCompletions)`` of a ``ReplicatedJob`` (defaults as the spec
    validation writes them: MaxConcurrent 1, TotalCompletions = MaxConcurrent)."""
    mode = ((service.get("Spec") or {}).get("Mode") or {}).get("ReplicatedJob") or {}
    mc = _nat(mode.get("MaxConcurrent"), 1) or 1
    return mc, _nat(mode.get("TotalCompletions"), mc)


def _nat(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default




def start_iteration(service: Obj, now: str) -> None:
    """At create or update of a job (the control API calls it): ``JobStatus`` =
    ``{"JobIteration": {"Index": previous + 1}, "LastExecution": now}`` (``now`` RFC 3339), so
    the job runs again (as swarmkit, where every update of a job is a new execution). Leaves a
    service that is not a job without ``JobStatus``."""
    mode = ((service.get("Spec") or {}).get("Mode") or {})
    if not any(k in mode for k in JOB_MODES):
        service.pop("JobStatus", None)
        return
    prev = job_iteration(service) if isinstance(service.get("JobStatus"), dict) else -1
    service["JobStatus"] = {"JobIteration": {"Index": prev + 1}, "LastExecution": now}
