"""Incremental assignments: after a session's first, complete ``assignments`` push, the
dispatcher sends a node only the tasks that changed and the IDs of those that left its set, as
swarmkit's dispatcher does (SK: manager/dispatcher/dispatcher.go ``Assignments``: one
``COMPLETE`` message, then ``INCREMENTAL`` ones with ``Changes`` of action update/remove).

A push body (docs/contracts.md, "assignments"):

- complete: ``{"node", "tasks": [every task of the set], "networks", "ingress", "data_path_port"}``
  (no ``incremental`` key: what every manager sent before, and what an agent takes as the
  whole set);
- incremental: ``{"incremental": True, "node", "tasks": [changed or new tasks], "removed": [task
  IDs that left the set]}`` plus ``networks``, ``ingress`` and ``data_path_port`` only when they
  changed since the last push (absent: the agent keeps the ones it has).

What was sent is kept per session as a digest per task (:class:`SentState`), so deciding a push
costs O(tasks of the node) dictionary lookups, and encoding one costs O(what changed). A task's
digest is computed once per stored version (:class:`DigestCache`: the store never changes an
object in place, so the object's identity names its version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = ["DigestCache", "SentState", "merge_pushes", "plan_push", "rest_digest"]

_VOLATILE = ("Status", "Version", "UpdatedAt")
"""Fields of a task the worker does not act on (its own reports, the store's bookkeeping)."""

Obj = dict[str, Any]


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(msgpack.packb(value, use_bin_type=True), digest_size=16).digest()


class DigestCache:
    """Task ID → (the task object digested, its 16-byte digest without :data:`_VOLATILE`)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Obj, bytes]] = {}

    def of(self, task: Obj) -> bytes:
        """The digest of ``task`` (a stored object, only read), computed once per version."""
        tid = str(task.get("ID"))
        hit = self._cache.get(tid)
        if hit is not None and hit[0] is task:
            return hit[1]
        d = _digest({k: v for k, v in task.items() if k not in _VOLATILE})
        self._cache[tid] = (task, d)
        return d

    def forget(self, tid: str) -> None:
        """Drop task ``tid`` (deleted from the store)."""
        self._cache.pop(tid, None)

    def __len__(self) -> int:
        return len(self._cache)


def rest_digest(node: Mapping[str, Any], networks: Any, extra: Any) -> bytes:
    """A digest of what a push carries besides the tasks: the node (without ``Status``,
    ``Version``, ``UpdatedAt``, ``Description`` and ``ManagerStatus``, but whether it is still a
    Raft member), its ``networks`` and ``extra`` (ingress, data path port)."""
    n = {k: v for k, v in node.items() if k not in _VOLATILE + ("Description", "ManagerStatus")}
    n["_raft_member"] = bool(node.get("ManagerStatus"))
    return _digest([n, networks, extra])


@dataclass
class SentState:
    """What a session's connection was sent: task ID → digest, and the :func:`rest_digest`."""

    tasks: dict[str, bytes] = field(default_factory=dict)
    rest: bytes = b""


def plan_push(sent: SentState | None, node: Obj, tasks: list[Obj], rest: dict[str, Any], rest_fp: bytes,
              digests: DigestCache) -> tuple[Obj | None, SentState]:
    """The push that brings a node from ``sent`` (None: nothing sent on this connection) to
    ``tasks`` (its assignment set, sorted) and ``rest`` (``{"networks", "ingress",
    "data_path_port"}``, whose digest is ``rest_fp``): ``(body, new state)``; body None when
    nothing the worker acts on changed. The first push of a connection is complete."""
    new = SentState({str(t["ID"]): digests.of(t) for t in tasks}, rest_fp)
    if sent is None:
        return {"node": node, "tasks": tasks, **rest}, new
    changed = [t for t in tasks if sent.tasks.get(str(t["ID"])) != new.tasks[str(t["ID"])]]
    removed = sorted(tid for tid in sent.tasks if tid not in new.tasks)
    rest_changed = rest_fp != sent.rest
    if not changed and not removed and not rest_changed:
        return None, sent
    body: Obj = {"incremental": True, "node": node, "tasks": changed, "removed": removed}
    if rest_changed:
        body.update(rest)
    return body, new


def merge_pushes(old: Obj, new: Obj) -> Obj:
    """One push equal to ``old`` then ``new`` (both for the same connection; ``old`` not yet
    written): a complete ``new`` wins; an incremental ``new`` is folded into ``old``, complete or
    incremental (its tasks replace or join old's, its removals drop them, its networks, ingress
    and data path port replace old's when present)."""
    if not new.get("incremental"):
        return new
    removed = set(new.get("removed") or ())
    tasks = {str(t["ID"]): t for t in old.get("tasks") or () if str(t["ID"]) not in removed}
    tasks.update((str(t["ID"]), t) for t in new.get("tasks") or ())
    out = {**old, "node": new["node"], "tasks": sorted(tasks.values(), key=lambda t: str(t["ID"]))}
    for key in ("networks", "ingress", "data_path_port"):
        if key in new:
            out[key] = new[key]
    if old.get("incremental"):
        out["removed"] = sorted((set(old.get("removed") or ()) | removed) - set(tasks))
    return out
