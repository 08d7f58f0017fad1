"""The dispatcher: worker sessions, heartbeats, assignments and task status updates.

Follows swarmkit's dispatcher (SK: manager/dispatcher/dispatcher.go, nodes.go, period.go;
SWARM-FACTS 1.3):

- ``session.open`` registers a node's session and marks the node ``ready``; a node has one
  session at a time (a new one replaces the old).
- The heartbeat period handed out is the configured period with ±10 % random jitter; a node
  whose last heartbeat is older than ``grace_multiplier`` × that period is marked ``down``
  (``Status.Message`` "heartbeat failure") and its session is dropped. Losing the connection
  does not mark the node down at once: the same grace applies, so a quick reconnect is seamless.
- Nodes the store says are up when the dispatcher starts (e.g. after a manager restart) get
  twice the grace to open a session before they are marked down, as swarmkit does for
  "unknown" nodes after a leader change.
- Assignments: the dispatcher watches the store and, whenever a connected node's task set (or
  the node object itself) changes, pushes the node its set — complete on a connection's first
  push, then only what changed (:mod:`manager.dispatcher.increments`) — coalescing bursts of
  changes (``coalesce`` seconds, 30 ms by default). Changes that touch only ``Status``,
  ``Version`` or ``UpdatedAt`` of a task do not cause a push (as SK: ``TasksEqualStable``).
- Overlay networks (issue 9): the push also carries ``networks``, each overlay network the node's
  non-terminal tasks are attached to with its peers, the tasks of *other* nodes on it
  (:func:`~manager.dispatcher.assignments.node_networks`). A peer appearing, leaving or moving
  (a task of another node reaching ``assigned``, passing ``running``, changing its desired state
  or address; its node going down or changing ``Status.Addr``; a network object changing) pushes
  to every connected node that uses the network, within the same coalescing. Cost: the sessions
  using each network are kept (``_net_users``, refreshed at each push) so a task change marks only
  the users of the networks its peer entries changed on; a node's ``Status`` change or a network
  change marks every node using a network (both are rare). The tasks are indexed once at start
  and then one change at a time from the watch (:class:`~manager.dispatcher.assignments.TaskIndex`);
  a flush re-reads only the services and nodes (O(S + N)) however many nodes are dirty, and never
  every task.
- Service names: each network entry also carries ``DNS``, the services attached to the network
  and its running tasks on every node (the worker's embedded DNS table). A task starting or
  stopping running (or its address or hostname changing) marks the users of its networks, as a
  peer change does; a service created, removed, renamed or with changed networks/aliases marks
  the users of the networks it was and is on (other service updates do not).
- Service VIPs and the routing mesh: a network's ``DNS`` services carry the service's VIP on it
  (``Endpoint.VirtualIPs``; null for dnsrr), so a VIP change marks the users of that network as a
  rename does. The ingress network is listed for every node that has a load-balancer address on it
  (``Node.Attachments``, given by the allocator loop), its peers include the other nodes'
  load-balancer addresses, and the push's ``ingress`` key lists every ingress-mode published port
  with the ingress IPs of the service's running tasks. A service's ingress ports changing, a task
  starting or stopping running on the ingress network, and a node's load-balancer address changing
  mark the users of the ingress network (every node with an address on it); a change of the
  cluster object (``DataPathPort``, pushed as ``data_path_port``) marks every node.
- Pushes to one session go out one at a time (:class:`~manager.dispatcher.assignments.Session` ``outbox``): while one is being
  written, a newer assignment set or manager list replaces the one waiting, so a node that
  reads slowly (or not at all) costs at most one unsent message of each kind, never a queue
  (the connection's own write timeout closes it if it reads nothing).
- A node's ``Description`` (merged from ``session.open``) is at most :data:`MAX_DESCRIPTION`
  bytes encoded.
- ``session.status`` updates are batched (at most ``batch_interval`` = 100 ms) into one store
  transaction that applies only forward moves of ``Status.State`` (SWARM-FACTS 1.1: the state is
  a Lamport clock) and only to tasks assigned to the reporting node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import msgpack

from manager.dispatcher.assignments import (
    Session,
    TaskIndex,
    assignment_set,
    dns_task_keys,
    ingress_port_keys,
    manager_addr,
    node_ingress,
    node_lb_addresses,
    node_network_ids,
    node_networks,
    peer_keys,
    send_outbox,
    service_dns_keys,
    vtep,
)
from manager.dispatcher.increments import DigestCache, merge_pushes, plan_push, rest_digest
from manager.dispatcher.taskstatus import StatusBatch, apply_status_updates, parse_status_updates
from manager.store import Store, StoreError, Unavailable, WriteTx
from shoal.base.views import Node
from shoal.rpc import wire

log = logging.getLogger("manager.dispatcher")

DEFAULT_HEARTBEAT_PERIOD = 5.0  # seconds, SK: DefaultHeartBeatPeriod
DEFAULT_GRACE_MULTIPLIER = 3  # SK: defaultGracePeriodMultiplier
JITTER = 0.10  # ±10 % of the period per beat (SK: 500 ms of 5 s)
MAX_BATCH_INTERVAL = 0.1  # seconds, SK: maxBatchInterval
MAX_BATCH_ITEMS = 10000  # SK: maxBatchItems
DEFAULT_DATA_PATH_PORT = 4789
"""The data path port pushed when the cluster object holds none (older clusters)."""
MAX_DESCRIPTION = 64 * 1024
"""Bytes (msgpack) a node's ``Description`` may take in the store."""

class Dispatcher:
    """Sessions of worker agents with the manager (the manager side of ``session.*`` on 2377).

    ``store``: the manager's :class:`manager.store.Store`. ``heartbeat_period``: seconds (Swarm's
    default 5 s; may be changed live by assigning :attr:`heartbeat_period`). A node is marked
    down after ``grace_multiplier`` missed periods. ``batch_interval``: seconds status updates
    wait to share one store transaction. ``coalesce``: seconds of quiet before assignments go out.

    Call :meth:`start` before serving sessions and :meth:`stop` at shutdown. The 2377 server
    routes ``session.*`` requests of authenticated nodes to :meth:`handle` and reports closed
    connections to :meth:`connection_lost`.
    """

    def __init__(
        self,
        store: Store,
        heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD,
        grace_multiplier: int | float = DEFAULT_GRACE_MULTIPLIER,
        batch_interval: float = MAX_BATCH_INTERVAL,
        coalesce: float = 0.03,
    ) -> None:
        if heartbeat_period <= 0:
            raise ValueError(f"heartbeat period must be > 0 seconds, got {heartbeat_period}")
        if grace_multiplier < 1:
            raise ValueError(f"grace multiplier must be >= 1, got {grace_multiplier}")
        self.store = store
        self.heartbeat_period = float(heartbeat_period)
        self.grace_multiplier = grace_multiplier
        self.batch_interval = batch_interval
        self.coalesce = coalesce
        self._sessions: dict[str, Session] = {}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._dirty: set[str] = set()
        self._net_users: dict[str, set[str]] = {}
        """Network ID → IDs of the nodes whose last push listed it (may name gone sessions)."""
        self._node_nets: dict[str, set[str]] = {}
        """Node ID → the network IDs its last push listed (the inverse of ``_net_users``)."""
        self._ingress_id: str | None = None
        """The ID of the ingress network (refreshed on every network change)."""
        self._index = TaskIndex()
        """The tasks indexed for the pushes (rebuilt at start, then kept by the watch loop)."""
        self._digests = DigestCache()
        """Each task's digest as last pushed (:mod:`manager.dispatcher.increments`)."""
        self._flush_handle: asyncio.TimerHandle | None = None
        self._batch = StatusBatch()
        self._batch_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._running = False
        self.unavailable_reason: Callable[[], str] | None = None
        self._announced: list[str] = []
        self._managers: list[str] | None = None
        """:meth:`manager_addrs`' cache; None when a node event may have changed it."""
        """Why sessions cannot open here while stopped (e.g. "this manager is not the leader; the
        leader is at …"); agents move on to the next manager."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the store, and give every node the store shows as up a deadline
        of 2 × grace to open a session (else it is marked down)."""
        if self._running:
            return
        self._running = True
        self._managers = None
        # the watch loop only reads the events' objects: no copies
        watch = self.store.watch(["nodes", "tasks", "networks", "services", "cluster"], copy=False)
        self._ingress_id = self._find_ingress()
        # indexed once here, then one task at a time from the watch's events (which start now)
        self._index = TaskIndex(self.store.view().list_shallow("tasks"))
        self._watch_task = asyncio.create_task(self._watch_loop(watch), name="dispatcher-watch")
        ttl = 2 * self.grace_multiplier * self.heartbeat_period
        for node in self.store.view().list("nodes"):
            if Node(node).state != "down":
                self._arm(node["ID"], ttl)

    async def stop(self) -> None:
        """Stop: cancel deadlines, flush pending status updates, close sessions' connections."""
        if not self._running:
            return
        self._running = False
        for h in self._deadlines.values():
            h.cancel()
        self._deadlines.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._batch.items:
            await self._commit_batch()
        for t in [self._watch_task, self._batch_task, *self._tasks]:
            if t is not None:
                t.cancel()
        for t in [self._watch_task, self._batch_task, *self._tasks]:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for s in sessions:
            if s.peer is not None:
                await s.peer.close("manager stopping")

    def _spawn(self, coro: Any, name: str) -> None:
        t = asyncio.create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- periods and deadlines --------------------------------------------------------------

    def period(self) -> float:
        """Return the heartbeat period to hand out now: the configured one ±10 % (seconds)."""
        return self.heartbeat_period * random.uniform(1 - JITTER, 1 + JITTER)

    def _arm(self, node_id: str, ttl: float) -> None:
        old = self._deadlines.pop(node_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[node_id] = loop.call_later(ttl, self._expired, node_id)

    def _expired(self, node_id: str) -> None:
        self._deadlines.pop(node_id, None)
        s = self._sessions.pop(node_id, None)
        log.info("node %s missed its heartbeats: marking it down", node_id)
        if s is not None and s.peer is not None:
            self._spawn(s.peer.close("heartbeat failure"), "dispatcher-close")
        self._spawn(self._mark_down(node_id), f"dispatcher-down {node_id}")

    async def _mark_down(self, node_id: str) -> None:
        def fn(tx: WriteTx) -> None:
            if node_id in self._deadlines or node_id in self._sessions:
                return  # the node came back before we got here
            node = tx.get("nodes", node_id)
            if node is None:
                return
            status = Node(node).status
            if status.get("State") == "down":
                return
            node["Status"] = {**status, "State": "down", "Message": "heartbeat failure"}
            node.pop("Version", None)
            tx.update("nodes", node)

        try:
            await self.store.update(fn)
        except StoreError as e:
            log.warning("could not mark node %s down: %s", node_id, e)

    # -- routing ----------------------------------------------------------------------------

    async def handle(self, peer: wire.Peer, node_id: str, type: str, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``session.open`` / ``session.heartbeat`` / ``session.status`` from node ``node_id``
        (already authenticated by its certificate) on ``peer``. Raises ``LookupError`` for an
        unknown request or session, ``ValueError`` for a malformed body (sent back as errors)."""
        if type == "session.open":
            try:
                return await self.open_session(peer, node_id, body)
            except Unavailable as e:  # leadership just moved: the agent tries the next manager
                raise LookupError(f"cannot open a session here now: {e}") from e
        if type == "session.heartbeat":
            return self.heartbeat(node_id, body)
        if type == "session.status":
            return await self.status(node_id, body)
        if type == "session.leave":
            return await self.leave(node_id, body)
        raise LookupError(f"unknown request type {type!r}")

    def _session(self, node_id: str, body: dict[str, Any]) -> Session:
        sid = body.get("session_id")
        s = self._sessions.get(node_id)
        if s is None or not isinstance(sid, str) or s.session_id != sid:
            raise LookupError("session invalid: no such session for this node; open a new session")
        return s

    # -- sessions ---------------------------------------------------------------------------

    async def open_session(self, peer: wire.Peer, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Open a session for ``node_id``: mark the node ready and return
        ``{"session_id", "heartbeat_period", "node", "managers"}``.

        ``body``: ``{"description": NodeDescription (optional; merged into the node),
        "addr": advertised IP (optional; else the connection's address)}``.
        Raises ``LookupError`` if the node is not in the store (removed from the cluster).
        """
        if not self._running:
            why = self.unavailable_reason() if self.unavailable_reason else "the dispatcher is not running"
            raise LookupError(f"{why} (dispatcher unavailable on this manager)")
        description = body.get("description")
        if description is not None and not isinstance(description, dict):
            raise ValueError("session.open: description must be a map (NodeDescription)")
        addr = body.get("addr")
        if not isinstance(addr, str) or not addr:
            pa = peer.peer_address
            addr = pa[0] if pa else ""

        def fn(tx: WriteTx) -> dict[str, Any]:
            node = tx.get("nodes", node_id)
            if node is None:
                raise LookupError(
                    f"node {node_id} is not part of this swarm (was it removed?); leave the swarm and join again"
                )
            if description:
                merged = {**Node(node).description, **description}
                size = len(msgpack.packb(merged, use_bin_type=True))
                if size > MAX_DESCRIPTION:
                    raise ValueError(f"session.open: the node description takes {size} bytes, over the "
                                     f"{MAX_DESCRIPTION}-byte limit")
                node["Description"] = merged
            node["Status"] = {"State": "ready", "Message": "", "Addr": addr}
            node.pop("Version", None)
            tx.update("nodes", node)
            return node

        # register first, so the deadline of an old session cannot mark the node down meanwhile
        old = self._sessions.get(node_id)
        sid = secrets.token_hex(16)
        s = Session(node_id, sid, peer)
        self._sessions[node_id] = s
        period = self.period()
        self._arm(node_id, period * self.grace_multiplier)
        try:
            node = await self.store.update(fn)
        except BaseException:
            if self._sessions.get(node_id) is s:
                del self._sessions[node_id]
                if old is not None:
                    self._sessions[node_id] = old
                else:
                    h = self._deadlines.pop(node_id, None)
                    if h is not None:
                        h.cancel()
            raise
        if old is not None and old.peer is not None and old.peer is not peer:
            self._spawn(old.peer.close("replaced by a new session"), "dispatcher-close")
        self._mark_dirty(node_id)
        log.info("node %s opened session %s from %s", node_id, sid[:8], addr)
        return {"session_id": sid, "heartbeat_period": period, "node": node, "managers": self.manager_addrs()}

    def manager_addrs(self) -> list[str]:
        """Return the ``ip:port`` of every manager node in the store (``ManagerStatus.Addr``).

        Kept until a node event changes a manager's address (every heartbeat answers with it:
        without the cache, 1,000 nodes heartbeating read every node 200 times a second)."""
        if self._managers is None:
            self._managers = sorted(a for n in self.store.view().list_shallow("nodes") if (a := manager_addr(n)))
        return list(self._managers)

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record a heartbeat of ``node_id``'s session ``body["session_id"]``; return
        ``{"period": seconds, "managers": ["host:port"]}`` (the next period, jittered; the managers
        the node may fail over to, as swarmkit's heartbeat carries its manager weights). Raises
        ``LookupError`` for an unknown or replaced session."""
        self._session(node_id, body)
        period = self.period()
        self._arm(node_id, period * self.grace_multiplier)
        return {"period": period, "managers": self.manager_addrs()}

    async def leave(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``session.leave``: the node is leaving the swarm (``swarm leave``). Its session
        ends and it is marked down at once (``Status.Message`` "node left the swarm"), as Docker
        shows a node that left; its tasks are then replaced like those of any down node."""
        self._session(node_id, body)
        self._sessions.pop(node_id, None)
        handle = self._deadlines.pop(node_id, None)
        if handle is not None:
            handle.cancel()

        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", node_id)
            if node is None:
                return
            node["Status"] = {**Node(node).status, "State": "down", "Message": "node left the swarm"}
            node.pop("Version", None)
            tx.update("nodes", node)

        await self.store.update(fn)
        return {}

    def connection_lost(self, peer: wire.Peer) -> None:
        """Forget ``peer`` as a session's connection. The node keeps its deadline: it is marked
        down after the grace unless it opens a new session first."""
        for s in self._sessions.values():
            if s.peer is peer:
                s.peer = None

    def connected_nodes(self) -> list[str]:
        """IDs of nodes with a session and a live connection."""
        return [n for n, s in self._sessions.items() if s.peer is not None and not s.peer.closed]

    # -- assignments ------------------------------------------------------------------------

    async def _watch_loop(self, watch: Any) -> None:
        try:
            async for ev in watch:
                if ev.table == "tasks":
                    self._index.set_task(str(ev.obj["ID"]), None if ev.action == "delete" else ev.obj)
                    if ev.action == "delete":
                        self._digests.forget(str(ev.obj["ID"]))
                    for t in (ev.obj, ev.old):
                        nid = (t or {}).get("NodeID")
                        if nid and nid in self._sessions:
                            self._mark_dirty(nid)
                    # only a change of the task's peer entries concerns the other nodes
                    new = set() if ev.action == "delete" else peer_keys(ev.obj)
                    changed = {k[0] for k in new ^ peer_keys(ev.old)}
                    # and of its DNS records (running or not, address, hostname)
                    new_dns = set() if ev.action == "delete" else dns_task_keys(ev.obj)
                    changed.update(k[0] for k in new_dns ^ dns_task_keys(ev.old))
                    for net_id in changed:
                        self._mark_net_users(net_id)
                elif ev.table == "services":
                    # a service's name, networks or aliases changing: the users of its networks
                    # (old and new); a rename also renames its tasks' records
                    new_svc = set() if ev.action == "delete" else service_dns_keys(ev.obj)
                    for net_id in {k[0] for k in new_svc ^ service_dns_keys(ev.old)}:
                        self._mark_net_users(net_id)
                    # its ingress ports (published, target, protocol, name): every mesh node
                    new_ports = set() if ev.action == "delete" else ingress_port_keys(ev.obj)
                    if new_ports != ingress_port_keys(ev.old) and self._ingress_id:
                        self._mark_net_users(self._ingress_id)
                elif ev.table == "networks":
                    # rare; a network just created may be used by tasks no push has listed it for
                    self._ingress_id = self._find_ingress()
                    for nid in self._sessions:
                        self._mark_dirty(nid)
                elif ev.table == "cluster":
                    # rare: the data path port (or anything else of the cluster) may have changed
                    for nid in self._sessions:
                        self._mark_dirty(nid)
                elif ev.table == "nodes":
                    new_vtep = None if ev.action == "delete" else vtep(ev.obj)
                    if new_vtep != vtep(ev.old):  # its tasks joined or left peer lists, or moved
                        self._mark_net_users(None)
                    # its load-balancer addresses: peers of the other nodes on those networks
                    new_lb = set() if ev.action == "delete" else node_lb_addresses(ev.obj)
                    for net_id in {k[0] for k in new_lb ^ node_lb_addresses(ev.old)}:
                        self._mark_net_users(net_id)
                    if manager_addr(ev.obj) != manager_addr(ev.old) or ev.action == "delete":
                        self._managers = None
                        self._announce_managers()
                    nid = ev.obj.get("ID")
                    if ev.action == "delete" and isinstance(nid, str):
                        self._set_node_nets(nid, set())
                    if nid in self._sessions:
                        self._mark_dirty(nid)
                        if ev.action == "delete":
                            s = self._sessions.pop(nid)
                            if s.peer is not None:
                                await s.peer.close("node removed from the swarm")
        finally:
            watch.close()

    def _find_ingress(self) -> str | None:
        """The ID of the ingress network in the store (``Spec.Ingress``), or None."""
        for n in self.store.view().list_shallow("networks"):
            if (n.get("Spec") or {}).get("Ingress"):
                return str(n["ID"])
        return None

    def _announce_managers(self) -> None:
        """Push the manager list to every session when it changes (a manager joined, was
        promoted, demoted or removed), so every agent can fail over to any manager at once
        rather than after its next heartbeat."""
        managers = self.manager_addrs()
        if managers == self._announced:
            return
        self._announced = managers
        for s in list(self._sessions.values()):
            self._enqueue(s, "managers", {"managers": managers})

    def _enqueue(self, s: Session, type: str, body: dict[str, Any]) -> None:
        """Send push ``type`` to session ``s`` after what is being written to it now; an unsent
        one of the same type is replaced (``managers``: the complete list) or, for
        ``assignments``, merged with this one (:func:`~manager.dispatcher.increments.merge_pushes`)."""
        if s.peer is None or s.peer.closed:
            return
        unsent = s.outbox.get(type)
        s.outbox[type] = merge_pushes(unsent, body) if unsent is not None and type == "assignments" else body
        if s.sender is None or s.sender.done():
            s.sender = asyncio.create_task(send_outbox(s), name=f"dispatcher-push {s.node_id}")
            self._tasks.add(s.sender)
            s.sender.add_done_callback(self._tasks.discard)

    def _mark_net_users(self, net_id: str | None) -> None:
        """Mark dirty the nodes with a session whose last push listed network ``net_id`` (None:
        listed any network)."""
        users = self._node_nets if net_id is None else self._net_users.get(net_id, ())
        for nid in users:
            if nid in self._sessions:
                self._mark_dirty(nid)

    def _set_node_nets(self, node_id: str, net_ids: set[str]) -> None:
        """Record that node ``node_id``'s last push listed networks ``net_ids``."""
        for net_id in self._node_nets.pop(node_id, set()) - net_ids:
            users = self._net_users.get(net_id)
            if users is not None:
                users.discard(node_id)
                if not users:
                    del self._net_users[net_id]
        if net_ids:
            self._node_nets[node_id] = net_ids
            for net_id in net_ids:
                self._net_users.setdefault(net_id, set()).add(node_id)

    def _mark_dirty(self, node_id: str) -> None:
        self._dirty.add(node_id)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.coalesce, self._flush_assignments)

    def _flush_assignments(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, set()
        view = self.store.view()
        refreshed = False
        networks: dict[str, dict[str, Any] | None] = {}
        vteps: dict[str, str | None] = {}

        def network(net_id: str) -> dict[str, Any] | None:
            if net_id not in networks:
                networks[net_id] = view.get("networks", net_id)
            return networks[net_id]

        def node_vtep(node_id: str) -> str | None:
            if node_id not in vteps:
                vteps[node_id] = vtep(view.get("nodes", node_id))
            return vteps[node_id]

        clusters = view.list_shallow("cluster")
        dpp = (clusters[0].get("DataPathPort") if clusters else None) or DEFAULT_DATA_PATH_PORT
        for node_id in dirty:
            s = self._sessions.get(node_id)
            if s is None or s.peer is None or s.peer.closed:
                continue
            node = view.get_shallow("nodes", node_id)
            if node is None:
                continue
            index = self._index
            if not refreshed:  # the services and nodes once for every node of this flush
                index.refresh(view.list_shallow("services"), view.list_shallow("nodes"), self._ingress_id)
                refreshed = True
            # no copies: the push may wait in the outbox while the store changes, but the store
            # replaces an object on every change and never changes one in place (the contract
            # of ReadTx.list_shallow), so these tasks stay as they were when indexed
            tasks = assignment_set(index.tasks_of(node_id))
            used = node_network_ids(tasks, index, network, node)
            self._set_node_nets(node_id, {nid for nid, _net in used})
            ingress = node_ingress(node, index)
            # the networks' entries (peer lists of every node, DNS) are built only when their
            # digest says this node must get them again
            rest_fp = rest_digest(node, [(nid, index.network_digest(nid, net, node_vtep)) for nid, net in used],
                                  [ingress, dpp])
            rest: dict[str, Any] = {}
            if s.sent is None or s.sent.rest != rest_fp:
                rest = {"networks": node_networks(node_id, tasks, index, network, node_vtep, node),
                        "ingress": ingress, "data_path_port": int(dpp)}
            # the first push of a connection is complete, the next ones carry what changed
            body, s.sent = plan_push(s.sent, node, tasks, rest, rest_fp, self._digests)
            if body is not None:
                self._enqueue(s, "assignments", body)

    # -- status updates ---------------------------------------------------------------------

    async def status(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Queue ``body["updates"]`` (``[{"TaskID", "Status": TaskStatus}]``) from node ``node_id``'s
        session and return ``{}`` once the batch holding them is committed.

        Raises ``ValueError`` for a malformed update or unknown state, ``LookupError`` for an
        unknown session, ``StoreError`` if the store cannot commit.
        """
        self._session(node_id, body)
        clean = parse_status_updates(node_id, body)
        if not clean:
            return {}
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.items.extend(clean)
        self._batch.waiters.append(fut)
        if len(self._batch.items) >= MAX_BATCH_ITEMS:
            self._spawn(self._commit_batch(), "dispatcher-status-commit")
        elif self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._batch_timer(), name="dispatcher-status-timer")
        await fut
        return {}

    async def _batch_timer(self) -> None:
        # loop: updates that arrive while a batch is being committed go into the next batch
        while self._batch.items:
            await asyncio.sleep(self.batch_interval)
            await self._commit_batch()

    async def _commit_batch(self) -> None:
        batch, self._batch = self._batch, StatusBatch()
        if not batch.items:
            return

        def fn(tx: WriteTx) -> int:
            return apply_status_updates(tx, batch.items)

        try:
            await self.store.update(fn)
        except Exception as e:
            for w in batch.waiters:
                if not w.done():
                    w.set_exception(e)
            return
        for w in batch.waiters:
            if not w.done():
                w.set_result(None)

    # -- logs -------------------------------------------------------------------------------

    async def request_logs(self, node_id: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Ask node ``node_id`` for task logs over its session (``logs.read``) and return its reply
        ``{"lines": [{"task_id", "stream", "time", "log"}]}``.

        ``body``: ``{"task_ids": [...], "tail": int | -1, "since": float, "timestamps": bool}``.
        Raises ``LookupError`` if the node has no live session, :class:`shoal.rpc.wire.WireError`
        (or :class:`shoal.rpc.wire.RemoteError`) if the request fails or times out.
        """
        s = self._sessions.get(node_id)
        if s is None or s.peer is None or s.peer.closed:
            raise LookupError(f"node {node_id} is not connected to this manager; its logs are unavailable")
        return await s.peer.request("logs.read", body, timeout)
