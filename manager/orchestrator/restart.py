"""Restart decisions (SK: manager/orchestrator/restart/restart.go): whether an ended task is
replaced, after what delay, and whether a task's node is lost."""

from __future__ import annotations

from shoal.base.util import parse_rfc3339
from shoal.base.views import Node, Obj, Task

__all__ = ["should_restart", "node_lost"]


def should_restart(task: Obj, history: list[Obj], now: float) -> tuple[bool, float]:
    """(restart?, seconds of delay) for an ended current task, per its restart policy
    (``Condition`` any | on-failure | none, ``MaxAttempts`` within ``Window``, ``Delay``);
    ``history`` holds the earlier tasks of the slot, ``now`` is epoch seconds."""
    tv = Task(task)  # (only ended tasks get here: wrapping is cheap enough)
    rp = tv.restart_policy
    cond = rp.get("Condition") or "any"
    state = tv.state
    if cond == "none":
        return False, 0.0
    if cond == "on-failure" and state == "complete":
        return False, 0.0
    max_attempts = int(rp.get("MaxAttempts") or 0)
    if max_attempts > 0:
        window = int(rp.get("Window") or 0) / 1e9
        restarts = [
            h for h in history
            if window <= 0 or now - parse_rfc3339(Task(h).status_timestamp) <= window
        ]
        # the current task is itself a run; history holds the earlier runs of the slot
        if len(restarts) >= max_attempts:
            return False, 0.0
    return True, int(rp.get("Delay", 5_000_000_000) or 0) / 1e9


def node_lost(task: Obj, node_by_id: dict[str, Node]) -> bool:
    """Whether ``task`` is placed on a node that is gone from ``node_by_id`` or ``down``."""
    nid = str(task.get("NodeID") or "")
    if not nid:
        return False
    node = node_by_id.get(nid)
    return node is None or node.down
