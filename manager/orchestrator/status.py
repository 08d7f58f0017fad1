"""``ServiceStatus`` of a service per its mode, for ``GET /services?status=true`` (Docker's
``{"RunningTasks", "DesiredTasks", "CompletedTasks"}``).

- ``Replicated``: running tasks / ``Replicas``; completed 0.
- ``Global``: running tasks / the nodes that should run one (active and matching the
  constraints, or paused with a task; never down or drained).
- ``ReplicatedJob``: running / the tasks that should be running now
  (``min(MaxConcurrent, TotalCompletions - completed)``); completed = tasks of the current
  ``JobIteration`` that are ``complete``.
- ``GlobalJob``: running / the eligible nodes whose task has not completed; completed as above.

Running tasks are counted only on nodes that are not down."""

from __future__ import annotations

from collections.abc import Iterable

from manager.orchestrator.jobs import job_counts, job_iteration, task_iteration
from manager.orchestrator.modes import mode_of
from manager.orchestrator.nodes import Verdict, node_verdict
from manager.orchestrator.plan import Obj
from manager.orchestrator.replicated import service_status as replicated_status
from manager.specs import task_spec_with_defaults
from shoal.base.taskstate import COMPLETE, RUNNING
from shoal.base.views import Node, Service, task_desired_order, task_state

__all__ = ["service_status"]


def service_status(service: Obj, tasks: Iterable[Obj], nodes: Iterable[Obj]) -> Obj:
    """``ServiceStatus`` of ``service`` given all tasks and nodes (see the module docstring)."""
    mode = mode_of(service)
    node_list = [Node(n) for n in nodes]
    if mode == "Replicated" or mode == "":
        return replicated_status(service, tasks, [n.raw for n in node_list])
    sid = service["ID"]
    mine = [t for t in tasks if t.get("ServiceID") == sid]
    down = {n.id for n in node_list if n.down}
    job = mode in ("ReplicatedJob", "GlobalJob")
    it = job_iteration(service)
    if job:
        mine = [t for t in mine if task_iteration(t) == it]
    final = COMPLETE if job else RUNNING
    running = sum(1 for t in mine if task_state(t) == "running" and task_desired_order(t) <= final
                  and str(t.get("NodeID")) not in down)
    completed = sum(1 for t in mine if task_state(t) == "complete") if job else 0
    if mode == "ReplicatedJob":
        max_concurrent, total = job_counts(service)
        desired = max(0, min(max_concurrent, total - completed))
    else:
        template = task_spec_with_defaults(Service(service).task_template)
        holding = {str(t.get("NodeID")) for t in mine if task_desired_order(t) <= final}
        done = {str(t.get("NodeID")) for t in mine if task_state(t) == "complete"}
        desired = 0
        for n in node_list:
            v = node_verdict(n, template)
            if n.down or v is Verdict.STOP or (v is Verdict.KEEP and n.id not in holding) or n.id in done:
                continue
            desired += 1
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}
