"""The network allocator loop (issue 9): gives the tasks of services attached to overlay networks
their addresses before they are scheduled. A leader loop like the orchestrator and the reaper
(:func:`manager.loop.reconcile_loop`).

Each pass, in one store transaction: the tasks in state ``new`` (desired ``running`` or less)
whose spec has ``Networks`` (the orchestrator leaves those ``new``; it moves the others to
``pending`` itself) get, from an :class:`~manager.allocator.Allocator` rebuilt from the store
(networks, services, the tasks that hold their addresses — :func:`holds_addresses` —, nodes; the
cluster's default address pools), one
address per network (:meth:`~manager.allocator.Allocator.allocate_task`), written as
``NetworksAttachments: [{"Network": <stored network>, "Addresses": ["10.0.1.5/24"]}]``
(:func:`~manager.allocator.network_attachment`), and move to ``pending`` ("pending task
scheduling"); the scheduler then puts the node's bridge attachment first. A task that cannot get
its addresses stays ``new`` with ``Status.Message`` = the reason (``network NAME is out of
addresses: …``, ``network ID not found``) and is retried on the next pass, which any task change
(a task going away frees its addresses) triggers. Terminal tasks hold no addresses: theirs may be
handed to new tasks, and so may those of tasks that will never run (desired ``shutdown`` or
``remove`` before being placed).
"""

from __future__ import annotations

import logging
from typing import Any

from manager.allocator.allocator import Allocator, network_attachment
from manager.allocator.errors import AllocatorError
from manager.allocator.pools import AddressPools
from manager.loop import reconcile_loop
from manager.store import MAX_TRANSACTION_BYTES, Store, WriteTx
from shoal.base.taskstate import ASSIGNED, RUNNING, STATE_ORDER, TERMINAL_STATES
from shoal.base.util import now_rfc3339
from shoal.base.views import task_desired_order, task_needs_networks, task_state

__all__ = ["NetworkAllocatorLoop", "MAX_TASKS_PER_PASS", "holds_addresses", "needs_allocation"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MAX_TASKS_PER_PASS = 200
"""Most tasks one pass allocates (as the orchestrator's batches); the rest wait for the next pass."""


def needs_allocation(task: Obj) -> bool:
    """Whether ``task`` waits for the allocator: state ``new``, desired ``running`` or less, and
    attached to overlay networks (a spec with ``Networks``, or ingress ports in its ``Endpoint``:
    :func:`shoal.base.views.task_needs_networks`)."""
    return (task_state(task) == "new" and task_desired_order(task) <= RUNNING
            and task_needs_networks(task))


def holds_addresses(task: Obj) -> bool:
    """Whether ``task``'s overlay addresses are still its own: not terminal, and not a task that
    will never run (desired beyond ``running`` and never placed: the scheduler skips it)."""
    state = task_state(task)
    if state in TERMINAL_STATES:
        return False
    return not (task_desired_order(task) > RUNNING and STATE_ORDER.get(state, 0) < ASSIGNED)


def _pools(tx: WriteTx) -> AddressPools | None:
    for c in tx.list_shallow("cluster"):
        try:
            return AddressPools.from_cluster(c)
        except AllocatorError:
            return None
    return None


class NetworkAllocatorLoop:
    """The allocator loop over ``store``: after task, service or network changes (debounced by
    ``debounce`` s, default 0.02), allocates the waiting tasks (module docstring), at most
    ``max_tasks`` per transaction; ``await run()`` until cancelled."""

    def __init__(self, store: Store, debounce: float = 0.02, max_tasks: int = MAX_TASKS_PER_PASS) -> None:
        self.store = store
        self.debounce = debounce
        self.max_tasks = max_tasks
        self.passes = 0
        self._more = False

    def _pass(self, tx: WriteTx) -> int:
        """One pass in ``tx``; returns how many tasks moved to pending."""
        self._more = False
        tasks = tx.list_shallow("tasks")
        waiting = [t for t in tasks if needs_allocation(t)]
        if not waiting:
            return 0
        waiting.sort(key=lambda t: (str(t.get("ServiceID", "")), int(t.get("Slot") or 0), str(t["ID"])))
        if len(waiting) > self.max_tasks:
            waiting, self._more = waiting[:self.max_tasks], True
        networks = {str(n["ID"]): n for n in tx.list_shallow("networks")}
        services = {str(s["ID"]): s for s in tx.list_shallow("services")}
        live = [t for t in tasks if holds_addresses(t)]
        alloc = Allocator.from_objects(networks.values(), services.values(), live, pools=_pools(tx),
                                       nodes=tx.list_shallow("nodes"))
        for p in alloc.problems:
            log.warning("network allocator: %s", p)
        now = now_rfc3339()
        moved = 0
        budget = MAX_TRANSACTION_BYTES * 3 // 4
        for t in waiting:
            t = dict(t)
            try:
                got = alloc.allocate_task(t, services.get(str(t.get("ServiceID", ""))))
            except AllocatorError as e:
                msg = str(e)
                if (t.get("Status") or {}).get("Message") != msg:
                    t["Status"] = {**(t.get("Status") or {}), "Timestamp": now, "State": "new", "Message": msg}
                    tx.update("tasks", t)
                continue
            t["NetworksAttachments"] = [network_attachment(networks[nid], addr) for nid, addr in got.items()]
            t["Status"] = {"Timestamp": now, "State": "pending", "Message": "pending task scheduling"}
            tx.update("tasks", t)
            moved += 1
            budget -= 4096  # a stored network object per attachment: stay well inside one entry
            if budget <= 0:
                self._more = True
                break
        return moved

    async def tick(self) -> int:
        """Run one pass now; returns how many tasks got their addresses. A pass that fails to
        commit leaves nothing behind: the next one rebuilds the allocator from the store."""
        self.passes += 1
        return await self.store.update(self._pass)

    async def run(self) -> None:
        """Watch tasks, services, networks and the cluster, and allocate until cancelled (see
        :func:`manager.loop.reconcile_loop`); a pass that left tasks for later runs again at once."""
        await reconcile_loop(self.store, ["tasks", "services", "networks", "cluster"], self.tick, self.debounce,
                             log, "network allocator", lambda: 0.0 if self._more else None)
