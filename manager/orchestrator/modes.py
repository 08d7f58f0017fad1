"""The service modes' reconcilers, by the key of ``Spec.Mode`` (SK: manager/orchestrator/
replicated, global, jobs/replicated, jobs/global): the orchestrator's pass
(:func:`manager.orchestrator.reconcile.reconcile`) hands each service to the reconciler of its
mode. Adding a mode is adding a module with a :data:`Reconciler` and one line here."""

from __future__ import annotations

from collections.abc import Callable

from manager.orchestrator.global_job import reconcile_global_job
from manager.orchestrator.global_mode import reconcile_global
from manager.orchestrator.plan import Obj
from manager.orchestrator.replicated import reconcile_replicated
from manager.orchestrator.replicated_job import reconcile_replicated_job
from manager.orchestrator.update import Ctx

__all__ = ["Reconciler", "RECONCILERS", "mode_of"]

Reconciler = Callable[[Ctx, Obj, list[Obj]], None]
"""``(ctx, service, its tasks) -> None``: puts the service's changes into ``ctx.plan`` within
``ctx.budget``; pure (no I/O, time from ``ctx.now``)."""

RECONCILERS: dict[str, Reconciler] = {
    "Replicated": reconcile_replicated,
    "Global": reconcile_global,
    "ReplicatedJob": reconcile_replicated_job,
    "GlobalJob": reconcile_global_job,
}


def mode_of(service: Obj) -> str:
    """The key of the service's ``Spec.Mode`` (``Replicated``, ``Global``, ``ReplicatedJob``,
    ``GlobalJob``); ``""`` when the spec has none."""
    spec = service.get("Spec")
    mode = spec.get("Mode") if isinstance(spec, dict) else None
    if isinstance(mode, dict):
        for key in mode:
            return str(key)
    return ""
