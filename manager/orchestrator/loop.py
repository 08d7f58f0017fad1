"""The orchestration loop: :class:`Orchestrator` runs :func:`manager.orchestrator.reconcile`
over the store and commits each plan."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from manager.loop import reconcile_loop
from manager.orchestrator.plan import MAX_TASK_WRITES_PER_PASS, Plan, UpdateProgress, WriteBudget
from manager.orchestrator.reconcile import reconcile
from manager.store import MAX_TRANSACTION_BYTES, Event, Store, WriteTx

__all__ = ["Orchestrator"]

log = logging.getLogger("manager.orchestrator")


class Orchestrator:
    """The orchestration loop over ``store``: watches services, tasks and nodes, debounces
    (``debounce`` s, default 0.02), and commits each :func:`reconcile` plan in one update of at
    most ``max_writes`` tasks (:data:`MAX_TASK_WRITES_PER_PASS`) and about
    :data:`manager.store.MAX_TRANSACTION_BYTES`; when a pass leaves work (``Plan.more``) the next
    one follows as soon as the store is quiet for ``debounce``. Wakes itself for delayed
    restarts, update delays and monitor windows; keeps the rolling update progress between
    passes (``progress``). ``clock`` gives epoch seconds (injected in tests). ``await run()``
    until cancelled.

    A pass looks only at the services whose spec or tasks changed since the last one
    (:meth:`observe`, the tasks read through the store's ``ServiceID`` index), so its cost
    follows what changed, not the size of the cluster; the first pass, a node's change and a
    timer falling due look at every service."""

    def __init__(self, store: Store, debounce: float = 0.02, clock: Callable[[], float] = time.time,
                 max_writes: int = MAX_TASK_WRITES_PER_PASS) -> None:
        self.store = store
        self.debounce = debounce
        self.clock = clock
        self.max_writes = max_writes
        self._wake_at: float | None = None
        self._more = False
        self.whole_passes = 0
        """How many passes looked at every service (the rest looked at the changed ones)."""
        self._dirty: set[str] | None = None
        """IDs of the services whose spec or tasks changed since the last pass (None: all)."""
        self._passed: set[str] | None = None
        self.progress: dict[str, UpdateProgress] = {}
        self.passes = 0

    def _budget(self) -> WriteBudget | None:
        """The writes one pass may make: :attr:`max_writes` tasks and 3/4 of the transaction limit
        (headroom for the service objects a pass may also write). None = unbounded."""
        return WriteBudget(self.max_writes, MAX_TRANSACTION_BYTES * 3 // 4)

    def observe(self, ev: Event) -> None:
        """Note what a store event touches: a service, or the service of a task; a node's change
        may concern any service (global services, parked tasks, drains), so it makes the next
        pass whole."""
        if self._dirty is None:
            return
        if ev.table == "nodes":
            self._dirty = None
            return
        if ev.table == "services":
            self._dirty.add(str(ev.obj["ID"]))
            return
        for t in (ev.obj, ev.old):
            sid = (t or {}).get("ServiceID")
            if isinstance(sid, str) and sid:
                self._dirty.add(sid)

    def _pass(self, tx: WriteTx) -> Plan:
        dirty, self._dirty = self._dirty, set()
        if dirty is None:  # every service (the first pass, a node changed, a timer fell due)
            self.whole_passes += 1
            services = tx.list_shallow("services")
            tasks = tx.list_shallow("tasks")
            self._passed = None
        else:  # only the services whose spec or tasks changed: the others are converged
            services = [s for sid in dirty if (s := tx.get_shallow("services", sid)) is not None]
            tasks = [t for sid in dirty for t in tx.list_by("tasks", "ServiceID", sid)]
            self._passed = dirty
        plan = reconcile(services, tasks, tx.list_shallow("nodes"), self.clock(), progress=self.progress,
                         budget=self._budget())
        if plan.more:  # what did not fit in this pass is left for the next one, over those services
            self._dirty = None if self._dirty is None else self._dirty | plan.unfinished
        # shallow: reconcile sets top-level keys of the shallow copies it is given (and of the new
        # tasks it makes), never a value inside them
        for t in plan.create:
            tx.create("tasks", t, shallow=True)
        for t in plan.update:
            tx.update("tasks", t, shallow=True)
        for s in plan.services:
            tx.update("services", s)
        return plan

    async def tick(self, whole: bool = True) -> Plan:
        """Run one reconcile pass now and commit it; the new update progress is kept only
        once the pass is committed. ``whole``: over every service (False: over the services
        :meth:`observe` saw change, as :meth:`run` does)."""
        self.passes += 1
        if whole or (self._wake_at is not None and self.clock() >= self._wake_at):
            self._dirty = None  # a timer fell due: its service is not known here, so pass over all
        try:
            plan = await self.store.update(self._pass)
        except Exception:
            self._dirty = None  # nothing was written: the next pass looks at everything again
            raise
        if self._passed is None:
            self._wake_at = plan.wake_at
            self.progress = plan.progress
        else:  # the services not looked at keep their timers and update progress
            wakes = [w for w in (self._wake_at, plan.wake_at) if w is not None]
            self._wake_at = min(wakes) if wakes else None
            self.progress = {sid: p for sid, p in self.progress.items() if sid not in self._passed}
            self.progress.update(plan.progress)
        self._more = plan.more  # the rest of the work follows at once, over the same services
        return plan

    async def run(self) -> None:
        """Watch and reconcile until cancelled (see :func:`manager.loop.reconcile_loop`); a failed
        pass is retried after 1 s, and a pass that has a timer due (restart delay, update delay,
        monitor window) wakes the loop when it falls due."""

        async def tick() -> None:
            try:
                await self.tick(whole=False)
            except Exception:
                self._wake_at = self.clock() + 1.0
                self._more = False
                raise

        def wake_in() -> float | None:
            if self._more:
                return 0.0
            return None if self._wake_at is None else max(0.0, self._wake_at - self.clock()) + 0.01

        await reconcile_loop(self.store, ["services", "tasks", "nodes"], tick, self.debounce, log,
                             "orchestrator", wake_in, self.observe)
