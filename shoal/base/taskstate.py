"""Task states, the one table that manager and worker share.

Source: swarmkit ``api/types.proto`` ``enum TaskState`` (values spaced 64 apart; see
``../shared/SWARM-FACTS.md`` §1.1). States only move forward, so the order value works as a
Lamport clock: of two observations of a task, the greater state wins.
"""

from __future__ import annotations

STATE_ORDER: dict[str, int] = {
    "new": 0, "pending": 64, "assigned": 192, "accepted": 256, "preparing": 320, "ready": 384,
    "starting": 448, "running": 512, "complete": 576, "shutdown": 640, "failed": 704,
    "rejected": 768, "remove": 800, "orphaned": 832,
}
"""Task state → order value."""

TERMINAL_STATES: frozenset[str] = frozenset(s for s, v in STATE_ORDER.items() if v >= STATE_ORDER["complete"])
"""States at or past ``complete``: the task's container has stopped for good."""


def state_order(state: str | None) -> int:
    """The order value of task state ``state``; -1 when it is unknown or None."""
    return STATE_ORDER.get(state or "", -1)
