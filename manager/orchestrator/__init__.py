"""The orchestrator: desired state vs actual tasks → store changes, one reconciler per service
mode (:mod:`.modes`): replicated (below), global (:mod:`.global_mode`: one task per eligible
node, pre-assigned), replicated and global jobs (:mod:`.jobs`, :mod:`.replicated_job`,
:mod:`.global_job`: run to completion per ``JobIteration``); ``ServiceStatus`` per mode in
:mod:`.status`. The replicated model:

Follows swarmkit (SK: manager/orchestrator/replicated/*, restart/restart.go, allocator;
design/task_model.md; SWARM-FACTS 1.1, 1.5):

- A replicated service has slots 1..Replicas. Each slot has at most one *current* task
  (``DesiredState`` ≤ running); older tasks of the slot are history (desired ``shutdown``).
- Too few slots → new tasks (``Status.State = new``, ``DesiredState = running``) in the lowest
  free slots. Too many → the highest slots' tasks get desired ``remove``.
- A current task that ended (``complete``/``failed``/``rejected``, or ``shutdown`` nobody asked
  for) is replaced in the same slot if the restart policy says so (condition ``any`` |
  ``on-failure`` | ``none``; ``MaxAttempts`` within ``Window``), once ``Delay`` has passed since
  it ended; the old task gets desired ``shutdown``.
- A current task on a node that is gone, left or ``drain`` is replaced at once elsewhere; the
  old task gets desired ``shutdown``. On a node marked ``down`` (missed heartbeats) it is
  replaced too but kept running (parked): when the node comes back one task per slot is kept
  (:mod:`.slots`).
- Rolling updates (SK: manager/orchestrator/update/updater.go): when the task template (or
  ``ForceUpdate``) changes, out-of-date slots are replaced ``Parallelism`` at a time (0 = all
  at once). ``Order`` stop-first: the old task gets desired ``shutdown`` and its replacement is
  created only once it has stopped (or its node is down); start-first: the replacement is
  created first and the old task shut down once it runs. A lane waits ``Delay`` after its
  slot's new task runs before taking the next slot. A new task that ends within ``Monitor`` of
  running (or before running) is a failure; above ``MaxFailureRatio`` the ``FailureAction``
  applies: ``pause`` (``UpdateStatus.State = paused``), ``continue``, ``rollback`` (``Spec`` =
  ``PreviousSpec``, state ``rollback_started``, then rolled out with ``RollbackConfig``; a
  failing rollback pauses as ``rollback_paused``). ``UpdateStatus`` = ``{State, StartedAt,
  CompletedAt, Message}``: ``updating`` "update in progress" → ``completed`` "update
  completed" one ``Monitor`` after the last slot (``rollback_completed`` "rollback completed").
  A paused update stays paused until the next ``service update`` clears ``UpdateStatus``;
  a newer spec restarts the update toward it. Scale changes alone do not update. The
  progress of an update lives in memory (:class:`UpdateProgress`, as swarmkit's
  ``Updater``); after a manager restart it resumes from the store.
- Tasks of a removed service get desired ``remove``.
- Allocator step: ``new`` → ``pending`` for tasks without overlay networks (nothing to allocate
  before placement for the local bridge); tasks whose spec has ``Networks`` stay ``new`` for the
  network allocator loop (:mod:`manager.allocator.loop`).
- Bounded passes (as swarmkit batches its store writes, SK: manager/state/store/batch.go,
  ``MaxChangesPerTransaction`` and ``MaxTransactionBytes``): a pass writes at most
  :data:`MAX_TASK_WRITES_PER_PASS` tasks and about :data:`manager.store.MAX_TRANSACTION_BYTES`
  bytes. Work that does not fit (a scale-up to thousands of slots, a service removal, a node
  loss) is left for the next pass (``Plan.more``), which the loop runs once the store is quiet
  again: the leader's event loop gets back control between batches, and every Raft entry stays
  small enough to replicate.

:func:`reconcile` is the pure core; :class:`Orchestrator` is the loop over the store.

The package, by responsibility: :mod:`.plan` (new tasks, the write budget, the update progress
and the plan of a pass), :mod:`.restart` (restart policy, lost nodes), :mod:`.update` (rolling
updates), :mod:`.reconcile` (:func:`reconcile`, the pass over all services), :mod:`.modes` (the
reconciler of each service mode), :mod:`.replicated` (replicated services, :func:`service_status`)
and :mod:`.loop`
(:class:`Orchestrator`). Import from ``manager.orchestrator``; the stored objects are read
through :mod:`shoal.base.views`.
"""

from __future__ import annotations

from manager.orchestrator.loop import Orchestrator
from manager.orchestrator.plan import (
    MAX_TASK_WRITES_PER_PASS,
    OLD_TASK_TIMEOUT,
    Plan,
    UpdateProgress,
    WriteBudget,
    new_task,
    task_name,
)
from manager.orchestrator.reconcile import reconcile
from manager.orchestrator.replicated import has_networks, service_status
from manager.orchestrator.update import update_config
from shoal.base.util import parse_rfc3339

__all__ = ["Plan", "UpdateProgress", "WriteBudget", "OLD_TASK_TIMEOUT", "MAX_TASK_WRITES_PER_PASS", "update_config",
           "reconcile", "service_status", "has_networks", "parse_rfc3339", "Orchestrator", "task_name", "new_task"]
