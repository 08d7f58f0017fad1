"""Task states, the one table that manager and worker share.

Source: swarmkit ``api/types.proto`` ``enum TaskState`` (values spaced 64 apart; see
``../shared/SWARM-FACTS.md`` §1.1). States only move forward, so the order value works as a
Lamport clock: of two observations of a task, the greater state wins.

Every module that compares task states uses this table and these helpers; none keeps an alias
of its own.
"""

from __future__ import annotations

__all__ = ["STATE_ORDER", "TERMINAL_STATES", "state_order", "is_terminal", "NEW", "ASSIGNED", "RUNNING",
           "COMPLETE", "SHUTDOWN", "REMOVE"]

STATE_ORDER: dict[str, int] = {
    "new": 0, "pending": 64, "assigned": 192, "accepted": 256, "preparing": 320, "ready": 384,
    "starting": 448, "running": 512, "complete": 576, "shutdown": 640, "failed": 704,
    "rejected": 768, "remove": 800, "orphaned": 832,
}
"""Task state → order value."""

NEW = STATE_ORDER["new"]
ASSIGNED = STATE_ORDER["assigned"]
RUNNING = STATE_ORDER["running"]
COMPLETE = STATE_ORDER["complete"]
"""The first terminal order value: at or past it a task's container has stopped for good."""
SHUTDOWN = STATE_ORDER["shutdown"]
REMOVE = STATE_ORDER["remove"]

TERMINAL_STATES: frozenset[str] = frozenset(s for s, v in STATE_ORDER.items() if v >= COMPLETE)
"""States at or past ``complete``: the task's container has stopped for good."""


def state_order(state: str | None, unknown: int = -1) -> int:
    """The order value of task state ``state``; ``unknown`` (default -1) when it is not a task
    state or None."""
    return STATE_ORDER.get(state or "", unknown)


def is_terminal(state: str | None) -> bool:
    """Whether ``state`` is terminal (at or past ``complete``)."""
    return state in TERMINAL_STATES
