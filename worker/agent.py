"""The worker agent: keeps a mutual-TLS session with a manager's dispatcher on 2377.

Follows swarmkit's agent session (SK: agent/session.go, agent/agent.go): open a session,
heartbeat at the period the manager hands out, receive the complete assignment set whenever it
changes and hand it to the executor, send task status reports back (batched), and reconnect with
exponential backoff (and to the next known manager) whenever the session breaks. The backoff is
capped at the last heartbeat period, so a node reconnects within its grace after a manager restart.

The executor interface the agent uses (docs/contracts.md, worker/):

- ``await executor.set_assignments(node: dict, tasks: list[dict])`` (a plain function is also
  accepted): the complete set of this node's tasks, every time it changes; with
  ``networks={network_id: {"Network", "Peers", "DNS"}}`` as a keyword when the push carries
  ``networks`` (overlay networks, issue 9), then also ``ingress`` (the routing mesh entry, None when
  the push has none) and ``data_path_port=N`` when the push carries it;
- ``await executor.read_logs_page(task_ids, tail, since, cursors, limit) -> {"lines", "cursors", "more"}``
  for ``logs.read`` (an executor with only ``read_logs(task_ids, tail, since, timestamps) -> list[dict]``
  is still served: its reply has no cursors);
- the executor reports each task state move by calling :meth:`Agent.report` (give it
  ``report=lambda tid, st: agent.report(tid, st)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from shoal.rpc import wire
from worker.assigned import AssignedSet
from worker.join import split_addr

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.1  # seconds before the first reconnect
BACKOFF_MAX = 8.0  # seconds, the cap of the exponential backoff (SK: agent backoff max 8 s)
LEADER_HINT = re.compile(r"the leader is at (\S+?:\d+)")
"""How a follower manager's refusal names the leader (manager.Manager._not_leader_reason)."""
STATUS_BATCH = 0.02  # seconds the agent gathers status reports before sending them
STATUS_RETRY = 0.5  # seconds before status reports the manager could not commit are sent again
MALFORMED_STATUS = "session.status:"
"""How the dispatcher's refusal of a malformed ``session.status`` begins (not worth resending)."""
REMOVED = re.compile(r"^node (\S+) was removed from the swarm$")
"""How a manager refuses a session of a node removed from the swarm (``node rm``): final, the
node's certificate is refused for good (the session protocol's ``ErrNodeRemoved``)."""


class ExecutorLike(Protocol):
    """What the agent needs from the executor (worker.executor.Executor provides it)."""

    def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]]) -> Any:
        """Take the complete set of this node's tasks (may be a coroutine function)."""

    def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> Any:
        """Return (or return an awaitable of) ``[{"task_id", "stream", "time", "log"}]``."""


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


class Agent:
    """The session of this node with the swarm's managers.

    ``node_id``: this node's ID (the CN of ``certs_dir/node.crt``); ``managers``: ``["ip:port"]``
    to try in turn; ``certs_dir``: holds ``ca.crt``, ``node.crt``, ``node.key`` (written by
    :func:`worker.join.join`); ``executor``: see :class:`ExecutorLike`; ``description``: this node's
    NodeDescription, sent on every ``session.open``; ``advertise_addr``: this node's IP as other
    nodes reach it ("" = the address the manager sees).

    ``on_node(node)``: called with this node's Node object whenever the manager pushes it (the
    daemon follows ``Spec.Role`` changes: ``node promote``/``demote``). ``on_managers(list)``:
    called when the known manager list changes (the daemon keeps it in ``state.json``, so a
    restarted node can reach managers that joined after it, as Swarm's state.json does).
    ``on_removed(reason)``: called once, from the session loop, when a manager refuses this node
    as removed from the swarm (:data:`REMOVED`); the loop has then ended for good (no more
    retries, :attr:`removed` is True) and the callee decides what the node does (the daemon
    leaves the swarm locally). It must not await :meth:`stop` itself (schedule that instead).

    :meth:`start` runs the session loop in the background; :meth:`stop` ends it. :attr:`connected`
    is set while a session is open. Status reports made while disconnected are kept (the
    latest per task) and sent after reconnecting.
    """

    def __init__(
        self,
        node_id: str,
        managers: list[str],
        certs_dir: Path | str,
        executor: ExecutorLike,
        description: dict[str, Any],
        advertise_addr: str = "",
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        on_node: Any = None,
        on_managers: Any = None,
        on_removed: Any = None,
    ) -> None:
        if not managers:
            raise ValueError("Agent needs at least one manager address (ip:port)")
        for m in managers:
            split_addr(m)  # ValueError for a malformed address
        self.node_id = node_id
        self.managers = list(managers)
        self.certs_dir = Path(certs_dir)
        self.executor = executor
        self.description = description
        self.advertise_addr = advertise_addr
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.session_id: str | None = None
        self.heartbeat_period: float | None = None
        self.manager: str | None = None  # the manager of the current session
        self.last_error: str = ""
        self.node: dict[str, Any] | None = None
        self.on_node = on_node
        self.on_managers = on_managers
        self.on_removed = on_removed
        self.removed = False  # a manager said this node was removed from the swarm
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pending_event = asyncio.Event()
        self._peer: wire.Peer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._assign_lock = asyncio.Lock()
        self._assigned = AssignedSet()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the session loop in the background (connects, then keeps reconnecting)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"agent {self.node_id}")

    async def stop(self, leaving: bool = False) -> None:
        """Close the session and stop reconnecting. Pending status reports are dropped.
        ``leaving``: the node is leaving the swarm; tell the manager first (``session.leave``,
        best effort) so it marks the node down at once instead of after the heartbeat grace."""
        self._stopping = True
        if leaving and self._peer is not None and self.session_id is not None:
            with contextlib.suppress(Exception):
                await self._peer.request("session.leave", {"session_id": self.session_id},
                                         timeout=self.request_timeout)
        if self._peer is not None:
            await self._peer.close("agent stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.connected.clear()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a session is open; raises ``TimeoutError`` after ``timeout`` seconds
        (the message names the last connection error)."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError as e:
            raise TimeoutError(
                f"no session with a manager within {timeout:g} s (last error: {self.last_error or 'none'})"
            ) from e

    # -- status reports ---------------------------------------------------------------------

    def report(self, task_id: str, status: dict[str, Any]) -> None:
        """Queue ``status`` (a TaskStatus dict) of ``task_id`` for the manager; returns at once.

        Only the latest status per task is kept; the manager applies forward moves only, so an
        intermediate state skipped this way is harmless.
        """
        self._pending[task_id] = status
        self._pending.move_to_end(task_id)
        self._pending_event.set()

    # -- the session loop -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.backoff_initial
        i = 0
        while not self._stopping:
            addr = self.managers[i % len(self.managers)]
            i += 1
            opened = False
            try:
                opened = await self._session(addr)
            except asyncio.CancelledError:
                raise
            except (wire.WireError, OSError, ValueError) as e:
                self.last_error = f"{addr}: {e}"
                if self._refused_as_removed(e):
                    self._removed_by_manager(addr, str(e))
                    break
                log.info("session with %s ended: %s", addr, e)
                m = LEADER_HINT.search(str(e))
                if m and m.group(1) != addr:
                    # a follower manager named the leader: go there next, without backing off
                    self._learn_managers([], first=m.group(1))
                    i = 0
                    backoff = self.backoff_initial
            except Exception as e:  # keep the agent alive whatever happens
                self.last_error = f"{addr}: {e}"
                log.exception("session with %s failed", addr)
            finally:
                self.connected.clear()
                self.session_id = None
                self._peer = None
            if self._stopping:
                break
            if opened:
                backoff = self.backoff_initial
            # never wait longer than one heartbeat period between attempts: after a manager
            # restart, the node has only 2 × grace to come back before it is marked down
            cap = min(self.backoff_max, self.heartbeat_period or self.backoff_max)
            delay = min(backoff, cap) * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, cap)
            await asyncio.sleep(delay)

    def _refused_as_removed(self, e: Exception) -> bool:
        """Whether ``e`` is a manager's refusal of this very node as removed from the swarm."""
        if not isinstance(e, wire.RemoteError):
            return False
        m = REMOVED.match(e.msg)
        return m is not None and m.group(1) == self.node_id

    def _removed_by_manager(self, addr: str, reason: str) -> None:
        """End the session loop for good: the swarm removed this node (``reason`` as ``addr`` said)."""
        self._stopping = True
        self.removed = True
        self.connected.clear()
        self._pending.clear()
        log.warning("manager %s refused this node: %s; the agent stops (no more retries)", addr, reason)
        if self.on_removed is not None:
            try:
                self.on_removed(reason)
            except Exception:  # the agent has stopped anyway
                log.exception("handling the removal of this node failed")

    async def _session(self, addr: str) -> bool:
        """Run one session with ``addr`` until it breaks; return whether it was opened."""
        host, port = split_addr(addr)
        peer = await wire.connect_node(host, port, self.certs_dir, self._handle, timeout=self.connect_timeout)
        self._peer = peer
        try:
            reply = await peer.request(
                "session.open",
                {"description": self.description, "addr": self.advertise_addr},
                timeout=self.request_timeout,
            )
            self.session_id = str(reply["session_id"])
            self.heartbeat_period = float(reply["heartbeat_period"])
            self.node = reply.get("node")
            self._learn_managers(reply.get("managers"))
            self.manager = addr
            self.last_error = ""
            self.connected.set()
            log.info("session %s open with %s (heartbeat %.2f s)", self.session_id[:8], addr, self.heartbeat_period)
            hb = asyncio.create_task(self._heartbeats(peer), name="agent-heartbeat")
            st = asyncio.create_task(self._status_sender(peer), name="agent-status")
            closed = asyncio.create_task(peer.wait_closed())
            try:
                done, _ = await asyncio.wait({hb, st, closed}, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not closed and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            finally:
                for t in (hb, st, closed):
                    t.cancel()
                for t in (hb, st, closed):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            raise wire.WireError(f"session closed: {peer.close_reason}")
        finally:
            await peer.close()

    async def _heartbeats(self, peer: wire.Peer) -> None:
        while True:
            period = self.heartbeat_period or 5.0
            await asyncio.sleep(period)
            r = await peer.request(
                "session.heartbeat", {"session_id": self.session_id}, timeout=max(period, self.request_timeout)
            )
            p = r.get("period")
            if isinstance(p, int | float) and p > 0:
                self.heartbeat_period = float(p)
            self._learn_managers(r.get("managers"))

    def _learn_managers(self, mgrs: Any, first: str | None = None) -> None:
        """Put the managers the swarm lists (and ``first``, e.g. the leader a follower named)
        ahead of the ones this agent knew, keeping the rest for failover."""
        known = [str(m) for m in mgrs] if isinstance(mgrs, list) else []
        if first:
            known = [first, *[m for m in known if m != first]]
        if known:
            new = known + [m for m in self.managers if m not in known]
            if new != self.managers:
                self.managers = new
                if self.on_managers is not None:
                    self.on_managers(list(new))

    async def _status_sender(self, peer: wire.Peer) -> None:
        while True:
            await self._pending_event.wait()
            await asyncio.sleep(STATUS_BATCH)
            self._pending_event.clear()
            batch = list(self._pending.items())
            if not batch:
                continue
            updates = [{"TaskID": tid, "Status": st} for tid, st in batch]
            try:
                await peer.request(
                    "session.status", {"session_id": self.session_id, "updates": updates}, timeout=self.request_timeout
                )
            except wire.RemoteError as e:
                if e.msg.startswith("session invalid"):
                    raise
                if not e.msg.startswith(MALFORMED_STATUS):
                    # the manager could not commit them now (no quorum, leadership moving): they
                    # stay pending and go again, as swarmkit's agent retries its status updates
                    log.info("manager could not take %d status updates (%s); retrying", len(updates), e.msg)
                    self._pending_event.set()
                    await asyncio.sleep(STATUS_RETRY)
                    continue
                # the manager refused these updates as malformed: resending would not help
                log.warning("manager refused %d status updates: %s", len(updates), e.msg)
            # drop what was sent, unless a newer status came in meanwhile
            for tid, st in batch:
                if self._pending.get(tid) is st:
                    del self._pending[tid]
            if self._pending:
                self._pending_event.set()

    # -- requests and pushes from the manager -----------------------------------------------

    async def _handle(self, peer: wire.Peer, type: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if type == "assignments":
            node = body.get("node") or {}
            self.node = node
            if self.on_node is not None and node:
                self.on_node(node)
            async with self._assign_lock:
                tasks, kw = self._assigned.apply(body)
                await _maybe_await(self.executor.set_assignments(node, tasks, **kw))
            return None
        if type == "managers":  # the swarm's manager list changed: fail over to any of them
            self._learn_managers(body.get("managers"))
            return None
        if type == "logs.read":
            return await self._logs_read(body)
        raise LookupError(f"unknown request type {type!r}")

    async def _logs_read(self, body: dict[str, Any]) -> dict[str, Any]:
        """``logs.read`` ``{"task_ids", "tail", "since", "timestamps", "cursors"?, "limit"?}`` →
        ``{"lines", "cursors", "more"}`` (docs/contracts.md); a manager that sends no cursors gets the
        last ``tail`` lines since ``since``, at most one page of them."""
        task_ids = body.get("task_ids") or []
        if not isinstance(task_ids, list):
            raise ValueError("logs.read: task_ids must be a list")
        tail = int(body.get("tail", -1))
        since = float(body.get("since", 0.0) or 0.0)
        timestamps = bool(body.get("timestamps", False))
        cursors = body.get("cursors") or {}
        if not isinstance(cursors, dict) or not all(isinstance(c, str) for c in cursors.values()):
            raise ValueError("logs.read: cursors must map task IDs to cursor strings")
        limit = body.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError("logs.read: limit must be a number of bytes")
        ids = [str(t) for t in task_ids]
        read_page = getattr(self.executor, "read_logs_page", None)
        if read_page is None:  # an executor without pages: the newest lines that fit one reply
            lines = await _maybe_await(self.executor.read_logs(ids, tail, since, timestamps))
            return {"lines": wire.fit_log_lines(list(lines))}
        page: dict[str, Any] = await _maybe_await(
            read_page(ids, tail, since, {str(k): v for k, v in cursors.items()}, limit))
        return page
