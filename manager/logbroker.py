"""``LogBroker``: the manager's side of ``service logs`` / ``task logs``.

The lines live on the nodes the tasks ran on; the leader holds the dispatcher sessions and asks
each node for its part (``logs.read`` over the session), in bounded pages with a cursor per task
so a follow continues where the previous page ended. A follower manager asks the leader to
collect them (``logs.collect`` over 2377, :class:`manager.leaderlink.LeaderLink`).
(swarmkit has a log broker of the same name with subscriptions; Shoal polls pages.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from manager.leaderlink import LeaderLink
from manager.store import Store

__all__ = ["LogBroker", "LOG_PAGE_LIMIT", "LOG_PAGE_MIN_PER_NODE", "LOG_NODE_TIMEOUT", "cursor_map", "unreachable_map"]

log = logging.getLogger(__name__)

LOG_PAGE_LIMIT = 4 * 1024 * 1024
"""Bytes of log lines one ``read_logs_page`` asks the nodes for, all nodes together (each node
caps its reply at :data:`shoal.rpc.wire.LOGS_REPLY_BYTES`, and the page fits a follower's
``logs.collect`` reply within :data:`shoal.rpc.wire.MANAGER_LIMITS`)."""
LOG_PAGE_MIN_PER_NODE = 256 * 1024
"""The share of :data:`LOG_PAGE_LIMIT` a node gets at least, however many nodes a service spans."""
LOG_NODE_TIMEOUT = 3.0
"""Seconds the leader waits for one node's page. A node that does not answer in time (frozen,
cut off) or has no session is left out of the page and named in its ``unreachable`` map, so
``service logs`` returns what the other nodes have within a few seconds (Swarm waits for every
node: moby#37336)."""


class LogSource(Protocol):
    """What the broker needs of the dispatcher: a ``logs.read`` request to a node's agent."""

    async def request_logs(self, node_id: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]: ...


class LogBroker:
    """Collects log lines for the API. ``store``: task → node; ``dispatcher``: the sessions
    (:class:`LogSource`); ``leader_link``: to the leader from a follower; ``is_leader()``: whether
    this manager collects itself (else it asks the leader); ``node_timeout``: seconds to wait for
    one node's page (default :data:`LOG_NODE_TIMEOUT`)."""

    def __init__(self, store: Store, dispatcher: LogSource, leader_link: LeaderLink | None,
                 is_leader: Callable[[], bool], node_timeout: float | None = None) -> None:
        self.node_timeout = LOG_NODE_TIMEOUT if node_timeout is None else node_timeout
        self.store = store
        self.dispatcher = dispatcher
        self.leader_link = leader_link
        self.is_leader = is_leader

    async def read_logs(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                        timestamps: bool = False) -> list[dict[str, Any]]:
        """The lines of one :meth:`read_logs_page` without cursors: ``[{"task_id", "node_id", "stream",
        "time", "log"}]`` sorted by time, at most about :data:`LOG_PAGE_LIMIT` bytes of them."""
        page = await self.read_logs_page(task_ids, tail, since, timestamps)
        return list(page["lines"])

    async def read_logs_page(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                             timestamps: bool = False, cursors: dict[str, str] | None = None,
                             limit: int | None = None) -> dict[str, Any]:
        """Collect one bounded page of log lines of ``task_ids`` from the nodes they ran on (``logs.read``
        over each node's session).

        Tasks in ``cursors`` (task ID → the cursor a previous page gave) continue after it; the others
        get their last ``tail`` lines (-1 = all) not older than ``since``. ``limit`` (bytes, default
        :data:`LOG_PAGE_LIMIT`) is shared out between the nodes, each getting at least
        :data:`LOG_PAGE_MIN_PER_NODE`. Returns ``{"lines": [{"task_id", "node_id", "stream", "time",
        "log"}] sorted by time, "cursors": {task_id: cursor}, "more": bool, "unreachable": {node_id:
        why}}``; a node of an older version answers without cursors (its tasks are then missing from
        ``cursors``; read them by ``since`` as before), and ``more`` says some node has lines left
        (ask again with the cursors). A node without a session, or that does not answer within
        ``node_timeout`` seconds, is left out and named in ``unreachable`` ("node HOSTNAME (ID) is not
        available: …", Swarm's words). On a follower the leader
        (which holds the sessions) collects them (``logs.collect`` over 2377). Raises
        :class:`Unavailable` when no leader can be reached."""
        cursors = dict(cursors or {})
        limit = LOG_PAGE_LIMIT if limit is None else max(0, min(limit, LOG_PAGE_LIMIT))
        if not self.is_leader():
            assert self.leader_link is not None
            r = await self.leader_link.request("logs.collect", {
                "task_ids": task_ids, "tail": tail, "since": since, "timestamps": timestamps,
                "cursors": cursors, "limit": limit}, timeout=60.0)
            return {"lines": list(r.get("lines") or []), "cursors": cursor_map(r.get("cursors")),
                    "more": bool(r.get("more")), "unreachable": unreachable_map(r.get("unreachable"))}
        view = self.store.view()
        by_node: dict[str, list[str]] = {}
        for tid in task_ids:
            t = view.get("tasks", tid)
            if t is not None and t.get("NodeID"):
                by_node.setdefault(t["NodeID"], []).append(tid)
        per_node = max(LOG_PAGE_MIN_PER_NODE, limit // max(1, len(by_node))) if limit else 0

        async def one(node_id: str, tids: list[str]) -> dict[str, Any]:
            body = {"task_ids": tids, "tail": tail, "since": since, "timestamps": timestamps,
                    "cursors": {t: cursors[t] for t in tids if t in cursors}, "limit": per_node}
            try:
                res = await asyncio.wait_for(self.dispatcher.request_logs(node_id, body, self.node_timeout),
                                             self.node_timeout + 0.5)
            except Exception as e:  # a node that is down, frozen, cut off or gone: skip its lines
                log.info("logs from node %s unavailable: %s", node_id, e)
                why = (f"no answer within {self.node_timeout:g} s" if isinstance(e, TimeoutError)
                       or "no reply" in str(e) else
                       "not connected to the leader" if isinstance(e, LookupError) else str(e)[:200])
                return {"unreachable": {node_id: f"node {self._hostname(view, node_id)} is not available: {why}"}}
            lines = list(res.get("lines") or [])
            for ln in lines:
                ln["node_id"] = node_id
            got = {t: c for t, c in cursor_map(res.get("cursors")).items() if t in tids}
            return {"lines": lines, "cursors": got, "more": bool(res.get("more"))}

        parts = await asyncio.gather(*(one(n, t) for n, t in by_node.items()))
        out = [ln for part in parts for ln in part.get("lines", [])]
        out.sort(key=lambda ln: ln.get("time", ""))
        new_cursors = {t: c for part in parts for t, c in part.get("cursors", {}).items()}
        unreachable = {n: why for part in parts for n, why in part.get("unreachable", {}).items()}
        return {"lines": out, "cursors": new_cursors, "more": any(part.get("more") for part in parts),
                "unreachable": unreachable}

    @staticmethod
    def _hostname(view: Any, node_id: str) -> str:
        """``HOSTNAME (ID)`` of a node for messages, the ID alone when the node is gone."""
        node = view.get_shallow("nodes", node_id)
        host = ((node or {}).get("Description") or {}).get("Hostname") if node else None
        return f"{host} ({node_id})" if host else node_id

    async def collect(self, body: dict[str, Any]) -> dict[str, Any]:
        """The leader's side of ``logs.collect`` ``{"task_ids", "tail", "since", "timestamps",
        "cursors"?, "limit"?}`` from a follower: :meth:`read_logs_page`. Returns ``{"lines",
        "cursors", "more"}``; raises ValueError for a bad body."""
        ids = body.get("task_ids")
        if not isinstance(ids, list):
            raise ValueError("logs.collect: task_ids must be a list")
        limit = body.get("limit")
        return await self.read_logs_page([str(t) for t in ids], int(body.get("tail", -1)),
                                         float(body.get("since", 0.0) or 0.0), bool(body.get("timestamps")),
                                         cursor_map(body.get("cursors")),
                                         limit if isinstance(limit, int) and not isinstance(limit, bool) else None)


def cursor_map(v: Any) -> dict[str, str]:
    """A ``{task_id: cursor}`` map from a peer: anything that is not a map of strings is dropped."""
    if not isinstance(v, dict):
        return {}
    return {k: c for k, c in v.items() if isinstance(k, str) and isinstance(c, str) and len(c) <= 64}


def unreachable_map(v: Any) -> dict[str, str]:
    """A ``{node_id: why}`` map from a peer: anything that is not a map of strings is dropped."""
    if not isinstance(v, dict):
        return {}
    return {k: w[:400] for k, w in v.items() if isinstance(k, str) and isinstance(w, str)}
