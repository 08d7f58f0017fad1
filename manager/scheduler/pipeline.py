"""The filter pipeline (pure): runs a task's filters over nodes and explains the failures.

As swarmkit's ``Pipeline`` (SK: manager/scheduler/pipeline.go): a node is counted against the
first filter it fails; :meth:`Pipeline.explain` lists each filter that removed nodes with its
count, most nodes first (ties in pipeline order), joined by ``"; "`` and never truncated.
"""

from __future__ import annotations

from typing import Any

from manager.scheduler.filters import Filter, default_filters
from manager.scheduler.nodeinfo import NodeInfo

__all__ = ["Pipeline", "no_suitable_node"]


def no_suitable_node(explanation: str) -> str:
    """A pending task's ``Status.Err``: ``no suitable node (<explanation>)`` (swarmkit's form;
    ``no suitable node`` alone when there is nothing to explain)."""
    return f"no suitable node ({explanation})" if explanation else "no suitable node"


class Pipeline:
    """The filters for one task at a time: :meth:`set_task`, then :meth:`process` per node,
    then :meth:`explain`. ``filters`` defaults to :func:`default_filters`."""

    def __init__(self, filters: list[Filter] | None = None) -> None:
        self.filters = filters if filters is not None else default_filters()
        self.active: list[Filter] = []
        self.failures: list[int] = []
        self.nodes_seen = 0

    def set_task(self, task: dict[str, Any]) -> None:
        """Use the filters that apply to ``task``; reset the failure counts."""
        self.active = [f for f in self.filters if f.set_task(task)]
        self.reset_counts()

    def reset_counts(self) -> None:
        """Forget the failures counted so far (keep the task)."""
        self.failures = [0] * len(self.active)
        self.nodes_seen = 0

    def check(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes every active filter; counts nothing."""
        return all(f.check(node) for f in self.active)

    def process(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes every active filter; a failure counts against the first filter
        it fails."""
        self.nodes_seen += 1
        for i, f in enumerate(self.active):
            if not f.check(node):
                self.failures[i] += 1
                return False
        return True

    def explain(self) -> str:
        """``"insufficient resources on 2 nodes; scheduling constraints not satisfied on 1 node"``:
        the filters that removed nodes since the last reset, most first; ``"no nodes available"``
        when no node was processed; ``""`` when none failed."""
        if self.nodes_seen == 0:
            return "no nodes available"
        counted = [(n, i) for i, n in enumerate(self.failures) if n]
        counted.sort(key=lambda c: (-c[0], c[1]))
        return "; ".join(self.active[i].explain(n) for n, i in counted)
