"""Opt-in rebalancing of a replicated service (beyond Swarm, whose users ask for it: moby#24103).

Swarm never moves a running task: nodes that join after a service converged stay empty until a
task fails or the service is updated. A service whose ``Spec.Labels`` has
:data:`~shoal.base.servicelabels.REBALANCE_LABEL` = ``true`` (``shoal service update
--rebalance``, or the label set by any client) is spread out again by the orchestrator:

- Only when the service is steady: every slot has exactly one current task (desired
  ``running``; a move's new task aside), running on a usable node; no task of the service is
  parked on a down node; every node holding one has settled (its session opened at least
  :data:`~manager.orchestrator.slots.SETTLE` ago: a returning node's slots are sorted out
  first, :func:`manager.orchestrator.slots.hold_slot`); and no rolling update is in progress
  or paused. Services with placement preferences are left alone
  (their spread is the scheduler's, by label values rather than nodes).
- The service's tasks are counted per *eligible* node: ready, ``active``, satisfying the
  service's constraints. When the most loaded node has at least 2 tasks more than the least
  loaded one, a task of the most loaded node (its highest slot) is moved: a new task is made in
  the same slot (labelled :data:`MOVE_FROM` = the old task's ID) and the scheduler places it
  where the service has the fewest tasks; once it runs the old task gets desired ``shutdown``
  (start-first: the service never runs short).
- At most ``UpdateConfig.Parallelism`` moves at a time (0 = no limit), each lane waiting
  ``UpdateConfig.Delay`` after its move completed before the next one.
- A move whose new task fails, is placed on the old task's node, or does not run within
  :data:`MOVE_TIMEOUT` is abandoned (the new task shut down and labelled
  :data:`MOVE_ABANDONED`), and the service is not rebalanced again for :data:`ABANDON_BACKOFF`.
- Removing the label cancels the moves in flight (their new tasks are the slot's extras and
  are shut down: :func:`manager.orchestrator.slots.hold_slot` keeps the older running task).

All state lives in the store (the move labels), so a new leader picks up where the old one was.
:func:`moving_ids` and :func:`rebalance` are pure.
"""

from __future__ import annotations

from manager.orchestrator.plan import OLD_TASK_TIMEOUT, Obj, new_task
from manager.orchestrator.slots import created_at, settled_at
from manager.orchestrator.update import Ctx, update_config
from manager.scheduler.filters import node_matches, parse_constraints
from manager.scheduler.nodeinfo import NodeInfo
from shoal.base.servicelabels import REBALANCE_LABEL, label_true
from shoal.base.taskstate import RUNNING, TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import Service, task_desired_order, task_state

__all__ = ["MOVE_FROM", "MOVE_ABANDONED", "MOVE_TIMEOUT", "ABANDON_BACKOFF", "wants_rebalance", "moving_ids",
           "rebalance"]

MOVE_FROM = "com.shoal.rebalance.from"
"""Task label of a move's new task: the ID of the task it replaces."""
MOVE_ABANDONED = "com.shoal.rebalance.abandoned"
"""Task label of an abandoned move's new task: when it was abandoned (RFC 3339)."""
MOVE_TIMEOUT = OLD_TASK_TIMEOUT
"""Seconds a move's new task has to run before the move is abandoned."""
ABANDON_BACKOFF = 300.0
"""Seconds a service is not rebalanced after one of its moves was abandoned."""

_BLOCKING_UPDATES = ("updating", "rollback_started", "paused", "rollback_paused")


def wants_rebalance(svc: Obj) -> bool:
    """Whether the service's ``Spec.Labels`` ask for rebalancing (:data:`REBALANCE_LABEL`)."""
    labels = Service(svc).spec.get("Labels")
    return isinstance(labels, dict) and label_true(labels.get(REBALANCE_LABEL))


def _labels(t: Obj) -> Obj:
    labels = t.get("Labels")
    return labels if isinstance(labels, dict) else {}


def moving_ids(svc: Obj, tasks: list[Obj]) -> set[str]:
    """IDs of the new tasks of ``svc``'s moves in flight (their old task still desired running):
    the slot loop must not shut them down as extras. Empty when the service does not ask for
    rebalancing."""
    if not wants_rebalance(svc):
        return set()
    current = {str(t.get("ID")) for t in tasks if task_desired_order(t) <= RUNNING}
    return {str(t.get("ID")) for t in tasks
            if str(t.get("ID")) in current and str(_labels(t).get(MOVE_FROM, "")) in current
            and MOVE_ABANDONED not in _labels(t)}


def _abandon(ctx: Ctx, move: Obj) -> None:
    move["Labels"] = {**_labels(move), MOVE_ABANDONED: ctx.ts_now}
    ctx.set_desired(move, "shutdown")


def rebalance(ctx: Ctx, svc: Obj, tasks: list[Obj], occupied: dict[int, Obj], updating: bool,
              crowded: bool = False) -> None:
    """One rebalancing step of replicated service ``svc`` (see the module docstring): ``tasks``
    are all its tasks, ``occupied`` slot → the task holding it after this pass's other changes,
    ``updating`` whether a rolling update is in progress, ``crowded`` whether a slot had several
    current tasks (a move's new task aside) when the pass began. Changes go into ``ctx.plan`` within
    ``ctx.budget``; timers through ``ctx.plan._wake``."""
    if not wants_rebalance(svc):
        return
    sv = Service(svc)
    now, plan = ctx.now, ctx.plan
    cfg = update_config(svc, False)
    delay = int(cfg.get("Delay") or 0) / 1e9
    parallelism = int(cfg.get("Parallelism") or 0)
    by_id = {str(t.get("ID")): t for t in tasks}

    # 1. the moves already made: complete, abandon, or wait for them
    busy = 0
    backoff_until = 0.0
    moving_slots: set[int] = set()
    for m in tasks:
        labels = _labels(m)
        if MOVE_FROM not in labels:
            continue
        if MOVE_ABANDONED in labels:
            backoff_until = max(backoff_until, parse_rfc3339(str(labels[MOVE_ABANDONED])) + ABANDON_BACKOFF)
            continue
        if task_desired_order(m) > RUNNING:
            continue
        old = by_id.get(str(labels[MOVE_FROM]))
        state = task_state(m)
        if old is None or task_desired_order(old) > RUNNING:
            ran_at = parse_rfc3339((m.get("Status") or {}).get("Timestamp"))
            if state == "running" and now < ran_at + delay:
                busy += 1  # this lane cools down
                plan._wake(ran_at + delay)
            continue
        moving_slots.add(int(m.get("Slot") or 0))
        node = str(m.get("NodeID") or "")
        if (node and node == str(old.get("NodeID") or "")) or state in TERMINAL_STATES \
                or (state != "running" and now >= created_at(m) + MOVE_TIMEOUT):
            if ctx.budget.take(1, ctx.task_size):
                _abandon(ctx, m)
                backoff_until = now + ABANDON_BACKOFF
            continue
        if state == "running":
            if ctx.budget.take(1, ctx.task_size):
                ctx.set_desired(old, "shutdown")
                plan._wake(now + delay)
            busy += 1  # (the slot is counted on the old node until the next pass)
            continue
        busy += 1
        plan._wake(created_at(m) + MOVE_TIMEOUT)

    # 2. more moves, when the service is steady and uneven
    status = sv.update_status
    if updating or crowded or (isinstance(status, dict) and status.get("State") in _BLOCKING_UPDATES):
        return
    live = [t for t in tasks if task_desired_order(t) <= RUNNING and task_state(t) not in TERMINAL_STATES]
    if any(str(t.get("NodeID") or "") not in ctx.usable_nodes for t in live if t.get("NodeID")):
        return  # parked on a down node (or being shut down on a drained one)
    settle = max((settled_at(t, ctx.node_by_id) for t in live), default=0.0)
    if now < settle:
        plan._wake(settle)  # a node holding a task just (re)opened its session
        return
    if now < backoff_until:
        plan._wake(backoff_until)
        return
    template = sv.task_template
    placement = template.get("Placement") if isinstance(template, dict) else None
    placement = placement if isinstance(placement, dict) else {}
    if placement.get("Preferences"):
        return
    want = sv.replicas
    if len(occupied) != want or any(
            task_state(t) != "running" or str(t.get("NodeID") or "") not in ctx.usable_nodes
            for t in occupied.values()):
        return
    lanes = (parallelism - busy) if parallelism > 0 else want
    if lanes <= 0:
        return
    constraints = parse_constraints({"Spec": template})
    counts: dict[str, int] = {}
    for nid, nv in ctx.node_by_id.items():
        if nid in ctx.usable_nodes and nv.availability == "active" and nv.state == "ready" \
                and node_matches(constraints, NodeInfo.from_node(nv.raw)):
            counts[nid] = 0
    on_node: dict[str, list[int]] = {}
    for slot, t in occupied.items():
        nid = str(t.get("NodeID") or "")
        if nid in counts:
            counts[nid] += 1
            if slot not in moving_slots:
                on_node.setdefault(nid, []).append(slot)
    max_per_node = int(placement.get("MaxReplicas") or 0)
    while lanes > 0 and counts:
        src = max(counts, key=lambda n: (counts[n], n))
        dst = min(counts, key=lambda n: (counts[n], n))
        if counts[src] - counts[dst] < 2 or not on_node.get(src) \
                or (max_per_node > 0 and counts[dst] >= max_per_node):
            break
        if not ctx.budget.take(1, ctx.task_size):
            break
        slot = max(on_node[src])
        on_node[src].remove(slot)
        m = new_task(svc, slot, ctx.ts_now, ctx.id_gen)
        m["Labels"] = {MOVE_FROM: str(occupied[slot]["ID"])}
        plan.create.append(m)
        counts[src] -= 1
        counts[dst] += 1
        lanes -= 1
