"""The dispatcher: worker sessions, heartbeats, assignments and task status updates.

The package, by responsibility: :mod:`.dispatcher` (:class:`Dispatcher`: sessions, heartbeats,
deadlines, pushes; its module docstring describes the whole behaviour), :mod:`.assignments`
(what a node is sent: :func:`assignment_set`, the push fingerprint, the per-session outbox) and
:mod:`.taskstatus` (``session.status`` validation and the batched store change). Import from
``manager.dispatcher``.
"""

from __future__ import annotations

from manager.dispatcher.assignments import assignment_set
from manager.dispatcher.dispatcher import (
    DEFAULT_GRACE_MULTIPLIER,
    DEFAULT_HEARTBEAT_PERIOD,
    JITTER,
    MAX_BATCH_INTERVAL,
    MAX_BATCH_ITEMS,
    MAX_DESCRIPTION,
    Dispatcher,
)

__all__ = ["Dispatcher", "assignment_set", "DEFAULT_HEARTBEAT_PERIOD", "DEFAULT_GRACE_MULTIPLIER", "JITTER",
           "MAX_BATCH_INTERVAL", "MAX_BATCH_ITEMS", "MAX_DESCRIPTION"]
