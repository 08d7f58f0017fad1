"""The worker's copy of its assignment set, kept from the manager's ``assignments`` pushes: a
complete push replaces it, an incremental one (``"incremental": true``) changes the tasks it
names and drops the IDs in ``removed`` (docs/contracts.md, "assignments";
``manager/dispatcher/increments.py`` builds them; swarmkit's agent does the same with
``AssignmentsMessage`` COMPLETE / INCREMENTAL)."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["AssignedSet"]

log = logging.getLogger(__name__)


class AssignedSet:
    """The node's tasks by ID, and the rest of the last push that carried it (``networks``,
    ``ingress``, ``data_path_port``)."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.complete = False
        """Whether a complete push has been applied (an incremental one needs that base)."""

    def apply(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Fold push ``body`` in; return ``(the complete set sorted by ID, keyword arguments for
        the executor's set_assignments)``. ``networks`` is passed (with ``ingress`` and
        ``data_path_port``) only once a push has carried it, so executors without overlay
        support, and managers that never send it, work as before. Malformed parts (a task
        without a string ID, a non-list) are ignored with a warning."""
        raw = body.get("tasks")
        tasks = raw if isinstance(raw, list) else []
        if not body.get("incremental"):
            self.tasks = {}
            self.extra = {}
            self.complete = True
        elif not self.complete:
            log.warning("an incremental assignments push came before a complete one: applied to an empty set")
        removed = body.get("removed")
        for tid in removed if isinstance(removed, list) else ():
            self.tasks.pop(str(tid), None)
        for t in tasks:
            tid = t.get("ID") if isinstance(t, dict) else None
            if not isinstance(tid, str):
                log.warning("assignments push: a task without an ID was ignored")
                continue
            self.tasks[tid] = t
        if isinstance(body.get("networks"), dict):
            self.extra["networks"] = body["networks"]
            ingress = body.get("ingress")
            self.extra["ingress"] = ingress if isinstance(ingress, dict) else None
            dp_port = body.get("data_path_port")
            if isinstance(dp_port, int) and not isinstance(dp_port, bool):
                self.extra["data_path_port"] = dp_port
            else:
                self.extra.pop("data_path_port", None)
        return [self.tasks[k] for k in sorted(self.tasks)], dict(self.extra)
