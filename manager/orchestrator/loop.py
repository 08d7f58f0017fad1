"""The orchestration loop: :class:`Orchestrator` runs :func:`manager.orchestrator.reconcile`
over the store and commits each plan."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from manager.loop import reconcile_loop
from manager.orchestrator.plan import MAX_TASK_WRITES_PER_PASS, Plan, UpdateProgress, WriteBudget
from manager.orchestrator.reconcile import reconcile
from manager.store import MAX_TRANSACTION_BYTES, Store, WriteTx

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
    until cancelled."""

    def __init__(self, store: Store, debounce: float = 0.02, clock: Callable[[], float] = time.time,
                 max_writes: int = MAX_TASK_WRITES_PER_PASS) -> None:
        self.store = store
        self.debounce = debounce
        self.clock = clock
        self.max_writes = max_writes
        self._wake_at: float | None = None
        self.progress: dict[str, UpdateProgress] = {}
        self.passes = 0

    def _budget(self) -> WriteBudget | None:
        """The writes one pass may make: :attr:`max_writes` tasks and 3/4 of the transaction limit
        (headroom for the service objects a pass may also write). None = unbounded."""
        return WriteBudget(self.max_writes, MAX_TRANSACTION_BYTES * 3 // 4)

    def _pass(self, tx: WriteTx) -> Plan:
        plan = reconcile(tx.list_shallow("services"), tx.list_shallow("tasks"), tx.list_shallow("nodes"),
                         self.clock(), progress=self.progress, budget=self._budget())
        for t in plan.create:
            tx.create("tasks", t)
        for t in plan.update:
            tx.update("tasks", t)
        for s in plan.services:
            tx.update("services", s)
        return plan

    async def tick(self) -> Plan:
        """Run one reconcile pass now and commit it; the new update progress is kept only
        once the pass is committed."""
        self.passes += 1
        plan = await self.store.update(self._pass)
        self._wake_at = self.clock() if plan.more else plan.wake_at
        self.progress = plan.progress
        return plan

    async def run(self) -> None:
        """Watch and reconcile until cancelled (see :func:`manager.loop.reconcile_loop`); a failed
        pass is retried after 1 s, and a pass that has a timer due (restart delay, update delay,
        monitor window) wakes the loop when it falls due."""

        async def tick() -> None:
            try:
                await self.tick()
            except Exception:
                self._wake_at = self.clock() + 1.0
                raise

        def wake_in() -> float | None:
            return None if self._wake_at is None else max(0.0, self._wake_at - self.clock()) + 0.01

        await reconcile_loop(self.store, ["services", "tasks", "nodes"], tick, self.debounce, log,
                             "orchestrator", wake_in)
