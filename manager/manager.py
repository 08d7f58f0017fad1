"""``Manager``: the control plane of one manager node, wired together.

It owns the replicated log and the store on it, the cluster CA, the dispatcher and the 2377
server, and the reconciling loops (orchestrator, scheduler, task reaper). The loops never call
each other: each watches the store and writes back through it (swarmkit's shape).

The log is a Raft log replicated between the managers (:class:`raft.replicated.ReplicatedLog`);
Raft's messages share the 2377 mutual-TLS port (the server hands a connection that opens with
``raft-hello`` to the Raft transport). Only the leader runs the dispatcher and the loops, as
swarmkit does (SK: manager/manager.go, becomeLeader/becomeFollower): when this node wins an
election it waits until its store has applied everything committed (a ReadIndex), then starts
them; when it loses leadership it stops them, and the workers reconnect to the new leader.
Requests that must run on the leader (a node joining, a manager asking to be added to Raft, a
control API write: ``control.call``, :mod:`manager.controlapi.control`) are forwarded to it over
2377 (:class:`LeaderLink`).

Raft node IDs are integers; Swarm node IDs are strings: :func:`raft_id` maps one to the other,
and the transport refuses a connection whose certificate's node ID does not map to the Raft ID
it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.ca import RootCA, is_blacklisted, make_token
from manager.controlapi import control
from manager.dispatcher import Dispatcher
from manager.scheduler import Scheduler
from manager.server import ManagerServer, make_node
from manager.specs import default_swarm_spec, validate_swarm_spec
from manager.store import Store, Unavailable, WriteTx
from raft.driver import DriverConfig
from raft.log import LogUnavailable
from raft.replicated import ReplicatedLog
from raft.transport import parse_addr
from shoal.base.util import new_id, now_rfc3339, private_dir
from shoal.rpc import tlsutil, wire

log = logging.getLogger(__name__)

DEFAULT_RAFT_TICK = 0.1
"""Seconds per Raft tick. Swarm ticks once a second (election after 10 ticks: over 10 s to
replace a dead leader); Shoal ticks every 100 ms with the same tick counts from the SwarmSpec
(``Raft.ElectionTick`` 10, ``Raft.HeartbeatTick`` 1): heartbeat 100 ms, election 1–2 s."""
LOG_PAGE_LIMIT = 4 * 1024 * 1024
"""Bytes of log lines one ``read_logs_page`` asks the nodes for, all nodes together (each node
caps its reply at :data:`shoal.rpc.wire.LOGS_REPLY_BYTES`, and the page fits a follower's
``logs.collect`` reply within :data:`shoal.rpc.wire.MANAGER_LIMITS`)."""
LOG_PAGE_MIN_PER_NODE = 256 * 1024
"""The share of :data:`LOG_PAGE_LIMIT` a node gets at least, however many nodes a service spans."""

def raft_id(node_id: str) -> int:
    """The Raft member ID (a positive 63-bit int) of Swarm node ``node_id`` (a string): the first
    8 bytes of its SHA-256, so every manager computes the same mapping without storing it."""
    v = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") >> 1
    return v or 1


def _is_manager(node: dict[str, Any]) -> bool:
    """Whether the node's spec makes it a manager (``Spec.Role``)."""
    return bool((node.get("Spec") or {}).get("Role") == "manager")


def _split(addr: str, default_port: int = 2377) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host:
        return port, default_port
    return host, int(port)


RAFT_SPEC_FILE = "raft-spec.json"
"""The SwarmSpec's ``Raft`` section, saved next to the log: the Raft timing and compaction must be
known before the log (which holds the spec) is open. Changes apply at the manager's next start."""


def _write_raft_spec(data_dir: Path, spec: dict[str, Any]) -> None:
    raft = spec.get("Raft")
    if not raft:
        return
    path = data_dir / RAFT_SPEC_FILE
    with contextlib.suppress(OSError):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"Raft": raft}))
        os.replace(tmp, path)


def raft_config(spec: dict[str, Any], tick: float = DEFAULT_RAFT_TICK) -> DriverConfig:
    """Raft timing and compaction from a SwarmSpec's ``Raft`` section (Docker API ``RaftConfig``):
    ``ElectionTick``, ``HeartbeatTick`` (ticks of ``tick`` seconds), ``SnapshotInterval``
    (entries between snapshots), ``LogEntriesForSlowFollowers`` (entries kept after one)."""
    r = (spec or {}).get("Raft") or {}
    return DriverConfig(
        tick=tick,
        heartbeat_tick=int(r.get("HeartbeatTick") or 1),
        election_tick=int(r.get("ElectionTick") or 10),
        snapshot_every=int(r.get("SnapshotInterval") or 10_000),
        keep=int(500 if r.get("LogEntriesForSlowFollowers") is None else r["LogEntriesForSlowFollowers"]),
    )


_ZERO_IS_DEFAULT = {("Raft", "ElectionTick"), ("Raft", "HeartbeatTick"), ("Raft", "SnapshotInterval"),
                    ("Dispatcher", "HeartbeatPeriod"), ("CAConfig", "NodeCertExpiry")}
"""SwarmSpec fields a ``swarm init`` sends as 0 when not given: 0 is not a valid value for
them, so they keep swarmkit's default (a 0 elsewhere, e.g. TaskHistoryRetentionLimit, is kept)."""


def initial_swarm_spec(spec: dict[str, Any], heartbeat_period: float | None = None) -> dict[str, Any]:
    """The SwarmSpec of a new cluster: swarmkit's defaults, ``heartbeat_period`` (seconds) as
    ``Dispatcher.HeartbeatPeriod``, then the sections ``spec`` (from ``swarm init``) sets.
    Raises :class:`manager.specs.SpecError` (a ``ValueError``) for a bad spec."""
    swarm_spec = default_swarm_spec()
    if heartbeat_period is not None:
        swarm_spec["Dispatcher"]["HeartbeatPeriod"] = int(heartbeat_period * 1e9)
    if spec:
        # a null value keeps the default, and so does a zero where zero means "not set" (the
        # engine sanitizes an init request the same way): the docker CLI sends every section,
        # with Raft.ElectionTick and HeartbeatTick 0 when `swarm init` is not told them
        merged = copy.deepcopy(swarm_spec)
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update({k: v for k, v in value.items()
                                    if v is not None and not (v == 0 and (key, k) in _ZERO_IS_DEFAULT)})
            elif value not in (None, {}, ""):
                merged[key] = value
        swarm_spec = validate_swarm_spec(merged)
    return swarm_spec


class LeaderLink:
    """A 2377 connection from this manager to the current Raft leader, with this manager's
    certificate, for requests that must run on the leader.

    ``leader_addr()`` returns the leader's ``host:port`` or None (no leader known);
    ``certs_dir`` holds this node's ``node.crt``/``node.key``/``ca.crt``.
    """

    def __init__(self, certs_dir: Path, leader_addr: Callable[[], str | None],
                 no_leader: Callable[[], str]) -> None:
        self.certs_dir = certs_dir
        self.leader_addr = leader_addr
        self.no_leader = no_leader
        self._peer: wire.Peer | None = None
        self._addr: str | None = None
        self._lock = asyncio.Lock()

    async def request(self, type: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send request ``type`` to the leader and return its reply. Raises :class:`Unavailable`
        when no leader is known or it cannot be reached, :class:`shoal.rpc.wire.RemoteError` with
        the leader's error."""
        addr = self.leader_addr()
        if not addr:
            raise Unavailable(self.no_leader())
        async with self._lock:
            if self._peer is None or self._peer.closed or self._addr != addr:
                if self._peer is not None:
                    await self._peer.close("leader changed")
                host, port = parse_addr(addr)
                try:
                    self._peer = await wire.connect_node(host, port, self.certs_dir, timeout=5.0)
                except (OSError, wire.WireError) as e:
                    raise Unavailable(f"cannot reach the leader at {addr}: {e}") from e
                self._addr = addr
            peer = self._peer
        try:
            return await peer.request(type, body, timeout=timeout)
        except wire.RemoteError:
            raise
        except wire.WireError as e:
            raise Unavailable(f"the leader at {addr} did not answer: {e}") from e

    async def close(self) -> None:
        """Close the connection (if any)."""
        if self._peer is not None:
            await self._peer.close("manager stopping")
            self._peer = None


class Manager:
    """The manager role of one node.

    ``data_dir``: where the log lives (``raft/`` under it); ``certs_dir``: ``ca.crt``, ``ca.key``,
    ``node.crt``, ``node.key``; ``node_id``: this node's ID; ``advertise_addr``: ``ip:port`` other
    nodes reach this manager at; ``listen_addr``: ``ip:port`` the 2377 server binds;
    ``heartbeat_period``: dispatcher heartbeat period in seconds; ``heartbeat_misses``: periods a
    node may miss before it is marked down (Swarm: 5 s and 3); ``raft_tick``: seconds per Raft
    tick (:data:`DEFAULT_RAFT_TICK`); ``force_new_cluster``: rewrite the log so this manager is
    the only member before starting (``swarm init --force-new-cluster``).
    """

    def __init__(self, data_dir: Path, certs_dir: Path, node_id: str, advertise_addr: str,
                 listen_addr: str, heartbeat_period: float = 5.0, heartbeat_misses: int = 3,
                 raft_tick: float = DEFAULT_RAFT_TICK, force_new_cluster: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.certs_dir = Path(certs_dir)
        self.node_id = node_id
        self.raft_id = raft_id(node_id)
        self.advertise_addr = advertise_addr
        self.listen_addr = listen_addr
        self.heartbeat_period = heartbeat_period
        self.heartbeat_misses = heartbeat_misses
        self.raft_tick = raft_tick
        self.force_new_cluster = force_new_cluster
        self.log: ReplicatedLog = None  # type: ignore[assignment]  # set by start()
        self.store: Store = None  # type: ignore[assignment]
        self.ca: RootCA = None  # type: ignore[assignment]
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        self.server: ManagerServer | None = None
        self.leader_link: LeaderLink | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._leader_loops: list[asyncio.Task[Any]] = []
        self._leading = False
        self._role_task: asyncio.Task[None] | None = None

    # -- cluster creation ------------------------------------------------------------------

    @staticmethod
    async def init_cluster(data_dir: Path, certs_dir: Path, advertise_addr: str,
                           description: dict[str, Any], spec: dict[str, Any],
                           heartbeat_period: float | None = None) -> str:
        """Create a new cluster on this node (``swarm init``): root CA, this node's manager
        certificate, and a Raft log whose only voter is this node, holding the cluster object
        and this node. Returns the node ID.

        ``heartbeat_period`` (seconds; shoald's ``--heartbeat-period``) goes into the cluster spec's
        ``Dispatcher.HeartbeatPeriod`` unless ``spec`` sets one, so ``docker info`` shows the period in
        force. Raises ``ValueError`` (from spec validation) for a bad SwarmSpec; nothing is written then.
        """
        swarm_spec = initial_swarm_spec(spec, heartbeat_period)
        private_dir(data_dir)
        ca = RootCA.create(certs_dir)
        node_id = new_id()
        cluster_id = new_id()
        ca.issue_node_files(certs_dir, node_id, "manager", cluster_id)
        rid = raft_id(node_id)
        rlog = ReplicatedLog(rid, {rid: advertise_addr}, Path(data_dir) / "raft", bootstrap=True,
                             config=raft_config(swarm_spec))
        store = Store(rlog, snapshot_interval=0)
        ip, _ = _split(advertise_addr)
        now = now_rfc3339()

        def fn(tx: WriteTx) -> None:
            tx.create("cluster", {
                "ID": cluster_id, "CreatedAt": now, "Spec": swarm_spec,
                "JoinTokens": ca.new_join_tokens(),
                "TLSInfo": {"TrustRoot": ca.cert_pem, "CertIssuerSubject": "", "CertIssuerPublicKey": ""},
                "RootRotationInProgress": False, "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
                "DataPathPort": 4789,
            })
            node = make_node(node_id, "manager", description, ip, advertise_addr)
            node["ManagerStatus"] = {"Leader": True, "Reachability": "reachable", "Addr": advertise_addr}
            tx.create("nodes", node)

        try:
            await rlog.start(listen=False)
            await store.update(fn)
        finally:
            await store.close()
        _write_raft_spec(Path(data_dir), swarm_spec)
        return node_id

    # -- lifecycle ---------------------------------------------------------------------------

    def _peer_check(self, ident: tuple[str, str] | None, rid: int) -> str | None:
        """Vet an inbound Raft connection (:data:`raft.transport.PeerCheck`): the certificate's
        node ID must map to the Raft ID it claims, must not be a removed node's, and the node
        must be a current member: in this node's Raft configuration; or, when it is not (this
        node has no configuration yet — a joiner hearing from the leader — or lags behind a
        member that joined since), not a node this store knows to be demoted."""
        if ident is None:
            return "no certificate"
        node_id = ident[0]
        if raft_id(node_id) != rid:
            return f"certificate of node {node_id} does not belong to Raft member {rid}"
        view = self.store.view() if self.store is not None else None
        clusters = view.list("cluster") if view is not None else []
        if clusters and is_blacklisted(clusters[0], node_id):
            return f"node {node_id} was removed from the swarm"
        members = self.log.driver.node.conf.nodes() if self.log is not None else frozenset()
        if rid in members or not members:
            return None
        node = view.get("nodes", node_id) if view is not None else None
        if node is not None and not _is_manager(node):
            role = (node.get("Spec") or {}).get("Role") or "worker"
            return f"node {node_id} is not a Raft member (it is a {role} now)"
        return None

    async def _current_role(self, node_id: str) -> str | None:
        """The node's ``Spec.Role`` now (for the 2377 server's role checks). A follower's store
        may lag behind the leader's (a manager that just joined or was promoted): when it says
        the node is no manager, ask for a read barrier first and look again."""
        assert self.server is not None
        role = await self.server.store_role(node_id)
        if role != "manager" and not self.is_leader:
            with contextlib.suppress(Unavailable):
                await self.read_barrier(timeout=2.0)
                role = await self.server.store_role(node_id)
        return role

    async def start(self) -> None:
        """Open the log and store, serve 2377 (CA, dispatcher sessions, Raft), and follow the
        Raft role: as leader, run the dispatcher and the loops.

        Raises ``OSError`` if 2377 cannot be bound, ``raft.wal.WALCorruptError`` /
        ``raft.snapshot.SnapshotCorruptError`` for a damaged log.
        """
        raft_dir = self.data_dir / "raft"
        private_dir(self.data_dir)  # the log holds the join tokens and the cluster's secrets: root only
        self.ca = RootCA.load(self.certs_dir)
        if self.force_new_cluster:
            idx = ReplicatedLog.force_new_cluster(raft_dir, self.raft_id, self.advertise_addr, Store.rebuild)
            log.warning("forced a new cluster: this manager is the only Raft member, state kept up to "
                        "index %d", idx)
        sctx = tlsutil.node_server_context(self.certs_dir)
        cctx = tlsutil.node_client_context(self.certs_dir)
        # timing comes from the spec in the log; open once to read it is not possible before
        # the log is open, so the spec's values apply from the next start (as Swarm's do)
        cfg = raft_config(self._saved_spec(), self.raft_tick)
        self.log = ReplicatedLog(self.raft_id, {self.raft_id: self.advertise_addr}, raft_dir,
                                 bootstrap=False, config=cfg, server_ssl=sctx, client_ssl=cctx,
                                 peer_check=self._peer_check)
        self.store = Store(self.log, snapshot_interval=0)
        self.log.set_restore(self.store.restore)
        self.log.set_snapshot_source(self.store.snapshot_bytes)
        self._save_spec()
        self.dispatcher = Dispatcher(self.store, heartbeat_period=self._spec_heartbeat_period(),
                                     grace_multiplier=self.heartbeat_misses)
        self.dispatcher.unavailable_reason = self._not_leader_reason
        self.leader_link = LeaderLink(self.certs_dir, self.leader_addr, self.log.driver.not_leader_message)
        self.server = ManagerServer(self.store, self.ca, self.dispatcher, sctx,
                                    advertise_addr=self.advertise_addr)
        self.server.forward = self._forward_to_leader
        self.server.current_role = self._current_role
        self.server.register_stream("raft-hello", self.log.accept)
        self.server.register("raft.join", self._raft_join, role="manager")
        self.server.register(control.MESSAGE, control.handler(self), role="manager")
        self.server.register("raft.leave", self._raft_leave, role="manager")
        self.server.register("logs.collect", self._logs_collect, role="manager")
        await self.log.start(listen=False)
        host, port = _split(self.listen_addr)
        await self.server.start(host, port)
        self._role_task = asyncio.create_task(self._follow_role(), name="manager-role")
        log.info("manager %s (raft %d) serving on %s (advertised %s)", self.node_id, self.raft_id,
                 self.listen_addr, self.advertise_addr)

    def _saved_spec(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            d = json.loads((self.data_dir / RAFT_SPEC_FILE).read_text())
            if isinstance(d, dict):
                return d
        return {}

    def _save_spec(self) -> None:
        """Remember the SwarmSpec's Raft section next to the log, for the timing at next start."""
        _write_raft_spec(self.data_dir, self.cluster.get("Spec") or {})

    # -- leadership ----------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this manager is the Raft leader now."""
        return self.log is not None and self.log.is_leader

    def leader_addr(self) -> str | None:
        """``host:port`` of the leader's 2377 listener, or None while no leader is known."""
        lid = self.log.leader_id
        if not lid:
            return None
        if lid == self.raft_id:
            return self.advertise_addr
        return self.log.driver.addrs.get(lid)

    def _not_leader_reason(self) -> str:
        addr = self.leader_addr()
        if addr and addr != self.advertise_addr:
            return f"this manager is not the leader; the leader is at {addr}"
        return self.log.driver.not_leader_message()

    async def _follow_role(self) -> None:
        """Start the leader's work when this node becomes leader, stop it when it steps down;
        as leader, keep every manager's ``ManagerStatus`` current once a second."""
        last_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self.log.driver.wait_changed(0.2)
            try:
                if self.log.is_leader and not self._leading:
                    await self._become_leader()
                    last_status = loop.time() - 0.5
                elif not self.log.is_leader and self._leading:
                    await self._become_follower()
                if self._leading and loop.time() - last_status >= 1.0:
                    last_status = loop.time()
                    await self._reconcile_roles()
                    await self._update_manager_status()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("manager role change failed; retrying")
                await asyncio.sleep(0.5)

    async def _become_leader(self) -> None:
        from manager.orchestrator import Orchestrator
        from manager.reaper import TaskReaper

        try:
            await self.log.read_index(timeout=5.0)  # everything committed is applied here
        except LogUnavailable as e:
            log.info("won an election but cannot confirm leadership yet: %s", e)
            return
        if not self.log.is_leader:
            return
        log.info("manager %s is the leader (term %d)", self.node_id, self.log.term)
        if self.force_new_cluster:
            await self._demote_lost_managers()
        self._leading = True
        self.dispatcher.heartbeat_period = self._spec_heartbeat_period()
        await self.dispatcher.start()
        scheduler = Scheduler(self.store)
        scheduler.rebuild()
        for name, coro in (("heartbeat-period", self._follow_heartbeat_period()),
                           ("orchestrator", Orchestrator(self.store).run()),
                           ("scheduler", scheduler.run()),
                           ("reaper", TaskReaper(self.store).run())):
            self._leader_loops.append(asyncio.create_task(coro, name=name))

    async def _demote_lost_managers(self) -> None:
        """After ``--force-new-cluster``: the other managers of the old cluster are no Raft
        members any more; make them workers in the spec, so that when one comes back its
        daemon switches to the worker role (its node is pushed without ManagerStatus) instead
        of waiting for a quorum that no longer exists. ``node promote`` brings one back."""

        def fn(tx: WriteTx) -> None:
            for n in tx.list("nodes"):
                if n["ID"] != self.node_id and _is_manager(n):
                    n["Spec"] = {**n["Spec"], "Role": "worker"}
                    n.pop("ManagerStatus", None)
                    n.pop("Version", None)
                    tx.update("nodes", n)

        try:
            await self.store.update(fn)
            self.force_new_cluster = False
        except Unavailable as e:
            log.warning("could not demote the managers lost with the old cluster: %s", e)

    async def _become_follower(self) -> None:
        log.info("manager %s is no longer the leader: stopping the dispatcher and the loops", self.node_id)
        self._leading = False
        await self._stop_leader_loops()
        await self.dispatcher.stop()

    async def _stop_leader_loops(self) -> None:
        for t in self._leader_loops:
            t.cancel()
        for t in self._leader_loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._leader_loops.clear()

    def _reachable(self, within: float | None = None) -> set[int]:
        """Raft members this node heard from within ``within`` seconds (default 1.5 election
        timeouts), itself included."""
        d = self.log.driver
        return d.transport.reachable(d.cfg.election_timeout * 1.5 if within is None else within) | {self.raft_id}

    def _handover_target(self) -> int | None:
        """A reachable voter other than this one to hand leadership to (None if there is none)."""
        others = sorted((self.log.driver.voters - {self.raft_id}) & self._reachable())
        return others[0] if others else None

    def manager_statuses(self) -> dict[str, dict[str, Any] | None]:
        """``{node_id: ManagerStatus | None}`` as the leader sees it now (Docker API
        ``ManagerStatus``: ``Leader``, ``Reachability`` reachable | unreachable | unknown,
        ``Addr``); None for a node demoted and already out of the Raft configuration."""
        d = self.log.driver
        heard = self._reachable()
        members = d.node.conf.nodes()
        out: dict[str, dict[str, Any] | None] = {}
        # only managers, Raft members and nodes still showing a ManagerStatus (not every worker)
        for n in self.store.view().find("nodes", lambda n: _is_manager(n) or bool(n.get("ManagerStatus"))
                                        or raft_id(n["ID"]) in members):
            rid = raft_id(n["ID"])
            if not _is_manager(n) and rid not in members:
                if n.get("ManagerStatus"):
                    out[n["ID"]] = None
                continue
            ms = dict(n.get("ManagerStatus") or {})
            if rid not in members:
                reach = "unknown"
            elif rid in heard:
                reach = "reachable"
            else:
                reach = "unreachable"
            out[n["ID"]] = {"Leader": rid == self.log.leader_id, "Reachability": reach,
                            "Addr": d.addrs.get(rid) or ms.get("Addr", "")}
        return out

    async def _update_manager_status(self) -> None:
        want = self.manager_statuses()

        def fn(tx: WriteTx) -> None:
            for nid, ms in want.items():
                node = tx.get("nodes", nid)
                if node is None or node.get("ManagerStatus") == ms:
                    continue
                if ms is None:
                    node.pop("ManagerStatus", None)
                else:
                    node["ManagerStatus"] = ms
                node.pop("Version", None)
                tx.update("nodes", node)

        try:
            await self.store.update(fn)
        except Unavailable as e:
            log.info("could not record manager status: %s", e)

    # -- promotion and demotion ------------------------------------------------------------------

    def demote_problem(self, node_id: str) -> str | None:
        """Why demoting manager ``node_id`` now would be unsafe (None if it is fine): it must not
        leave the Raft configuration without a reachable quorum (swarmkit's CanRemoveMember)."""
        rid = raft_id(node_id)
        voters = self.log.driver.voters
        if rid not in voters:
            return None
        # managers already demoted in the spec but not yet out of Raft are leaving too
        leaving = {raft_id(n["ID"]) for n in self.store.view().find("nodes", lambda n: not _is_manager(n))}
        remaining = voters - {rid} - leaving
        if not remaining:
            return "attempting to demote the last manager of the swarm"
        # heard from within one election timeout (the leader's check-quorum window)
        up = len(remaining & self._reachable(self.log.driver.cfg.election_timeout))
        if up < len(remaining) // 2 + 1:
            return (f"can't remove member from the raft: this would result in a loss of quorum "
                    f"({up} of the {len(remaining)} remaining managers are reachable)")
        return None

    async def _reconcile_roles(self) -> None:
        """On the leader: take nodes whose spec says worker out of the Raft configuration
        (``node demote``); the leader hands leadership to a reachable voter before leaving.
        Promotion is driven by the promoted node itself (it renews its certificate and asks
        ``raft.join``)."""
        members = self.log.driver.node.conf.nodes()
        for n in self.store.view().find("nodes", lambda n: not _is_manager(n) and raft_id(n["ID"]) in members):
            await self._remove_member(raft_id(n["ID"]), n["ID"])

    async def _remove_member(self, rid: int, node_id: str) -> None:
        try:
            if rid == self.raft_id:
                to = self._handover_target()
                if to is not None:
                    log.info("handing leadership to raft %d before leaving the Raft cluster", to)
                    await self.log.transfer_leadership(to)
                return
            await self.log.remove_voter(rid)
            log.info("node %s (raft %d) removed from the Raft cluster", node_id, rid)
        except (LogUnavailable, ValueError) as e:
            log.warning("could not remove node %s (raft %d) from the Raft cluster: %s", node_id, rid, e)

    async def _raft_leave(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """``raft.leave`` ``{}``: the calling manager — the node of the certificate, whatever the
        body says — leaves the swarm (``swarm leave --force``): its node becomes a worker in the
        spec and it is taken out of Raft. Served by the leader only: a follower answers "not the
        leader" (it never forwards a leave, so no manager can make another one leave); the
        leaving manager asks the leader directly (:meth:`leave_raft`)."""
        if not self.log.is_leader:
            raise LookupError(self._not_leader_reason())

        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", node_id)
            if node is None:
                return
            node["Spec"] = {**(node.get("Spec") or {}), "Role": "worker"}
            node.pop("Version", None)
            tx.update("nodes", node)

        await self.store.update(fn)
        await self._remove_member(raft_id(node_id), node_id)
        return {"ok": True}

    async def leave_raft(self, timeout: float = 10.0) -> None:
        """Leave the Raft cluster before this manager leaves the swarm (best effort: a leader
        first hands leadership over), asking the leader itself (``raft.leave``); retried while
        leadership moves. Raises :class:`Unavailable` / ``shoal.rpc.wire.WireError``."""
        if self.log.driver.voters == frozenset({self.raft_id}):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.log.is_leader:
            to = self._handover_target()
            if to is None:
                raise Unavailable("no other manager is reachable to take over")
            await self.log.transfer_leadership(to, timeout=timeout)
        assert self.leader_link is not None
        while True:
            try:
                await self.leader_link.request("raft.leave", {}, timeout=max(0.5, deadline - loop.time()))
                return
            except (wire.RemoteError, Unavailable) as e:
                moving = isinstance(e, Unavailable) or "not the leader" in e.msg or "no leader" in e.msg
                if not moving or loop.time() >= deadline:
                    raise
            await self.log.driver.wait_changed(0.1)

    # -- requests that run on the leader ---------------------------------------------------------

    async def _forward_to_leader(self, type: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """For the 2377 server: None when this node is the leader (serve locally), else the
        leader's reply to the same request."""
        if self.log.is_leader:
            return None
        assert self.leader_link is not None
        return await self.leader_link.request(type, body, timeout=60.0)

    async def _raft_join(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """``raft.join`` ``{"addr": "host:port", "node_id"?}``: add the calling manager (or, when a
        follower forwards it, ``node_id``) to the Raft configuration as a voter. Runs on the
        leader; followers forward it. The 2377 server lets only current managers (certificate
        and ``Spec.Role``) call it, and the node added must be a manager in the store: a node
        that is not one cannot get itself or another node into Raft."""
        joiner = str(body.get("node_id") or node_id)
        addr = body.get("addr")
        if not isinstance(addr, str):
            raise ValueError("raft.join: addr (host:port of the joining manager) is required")
        parse_addr(addr)
        fwd = await self._forward_to_leader("raft.join", {"addr": addr, "node_id": joiner})
        if fwd is not None:
            return fwd
        node = self.store.view().get("nodes", joiner)
        if node is None or not _is_manager(node):
            raise PermissionError(f"raft.join: node {joiner} is not a manager of this swarm")
        rid = raft_id(joiner)
        if rid in self.log.driver.voters:
            if self.log.driver.addrs.get(rid) == addr:
                return {"ok": True}
            await self.log.remove_voter(rid)
        try:
            await self.log.add_voter(rid, addr, timeout=30.0)
        except LogUnavailable as e:
            raise Unavailable(str(e)) from e
        log.info("manager %s (raft %d) at %s added to the Raft cluster", joiner, rid, addr)
        await self._update_manager_status()
        return {"ok": True}

    async def _logs_collect(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """``logs.collect`` ``{"task_ids", "tail", "since", "timestamps", "cursors"?, "limit"?}`` from a
        follower manager: :meth:`read_logs_page` here (the leader). Returns ``{"lines", "cursors", "more"}``."""
        if not self.log.is_leader:
            raise LookupError(self._not_leader_reason())
        ids = body.get("task_ids")
        if not isinstance(ids, list):
            raise ValueError("logs.collect: task_ids must be a list")
        limit = body.get("limit")
        return await self.read_logs_page([str(t) for t in ids], int(body.get("tail", -1)),
                                         float(body.get("since", 0.0) or 0.0), bool(body.get("timestamps")),
                                         _cursor_map(body.get("cursors")),
                                         limit if isinstance(limit, int) and not isinstance(limit, bool) else None)

    async def join_raft(self, managers: list[str], timeout: float = 60.0) -> None:
        """Ask the swarm (through any of ``managers``, ``host:port``) to add this manager to the
        Raft configuration, and wait until this node has caught up. Raises ``RuntimeError``
        naming the managers tried and their errors."""
        errors = []
        for addr in managers:
            if addr == self.advertise_addr:
                continue
            try:
                host, port = parse_addr(addr)
                peer = await wire.connect_node(host, port, self.certs_dir, timeout=5.0)
            except (OSError, ValueError, wire.WireError) as e:
                errors.append(f"{addr}: {e}")
                continue
            try:
                await peer.request("raft.join", {"addr": self.advertise_addr}, timeout=timeout)
                return
            except wire.WireError as e:
                errors.append(f"{addr}: {e}")
            finally:
                await peer.close()
        raise RuntimeError("could not join the Raft cluster: " + "; ".join(errors or ["no manager to ask"]))

    async def read_barrier(self, timeout: float = 5.0) -> None:
        """Wait until this manager's store reflects every write committed before the call
        (ReadIndex, thesis §6.4), so a read of it is linearizable. Raises :class:`Unavailable`
        ("no quorum: …" / "no leader …")."""
        try:
            await self.log.read_index(timeout=timeout)
        except LogUnavailable as e:
            raise Unavailable(str(e)) from e

    def _spec_heartbeat_period(self) -> float:
        """The cluster spec's ``Dispatcher.HeartbeatPeriod`` in seconds (the spec is the source of
        truth; shoald's flag only seeds it at ``swarm init``), else the flag's value."""
        ns = ((self.cluster.get("Spec") or {}).get("Dispatcher") or {}).get("HeartbeatPeriod")
        return int(ns) / 1e9 if ns else self.heartbeat_period

    async def _follow_heartbeat_period(self) -> None:
        """Apply ``swarm update --dispatcher-heartbeat`` live, as Swarm does."""
        async for _ev in self.store.watch(["cluster"]):
            period = self._spec_heartbeat_period()
            if period != self.dispatcher.heartbeat_period:
                log.info("dispatcher heartbeat period now %.3g s", period)
                self.dispatcher.heartbeat_period = period
            self._save_spec()

    async def stop(self) -> None:
        """Stop the role follower, the leader's loops, the server and the dispatcher, then close
        the log."""
        if self._role_task is not None:
            # Cancel until it has ended: on Python 3.11, asyncio.wait_for (in the driver's
            # wait_changed) loses a cancellation that arrives as its event fires.
            while not self._role_task.done():
                self._role_task.cancel()
                await asyncio.wait((self._role_task,), timeout=0.5)
            self._role_task = None
        await self._stop_leader_loops()
        self._leading = False
        if self.server is not None:
            await self.server.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.leader_link is not None:
            await self.leader_link.close()
        if self.store is not None:
            await self.store.close()

    # -- what the API needs -------------------------------------------------------------------

    @property
    def cluster(self) -> dict[str, Any]:
        clusters = self.store.view().list("cluster")
        return clusters[0] if clusters else {}

    @property
    def cluster_id(self) -> str:
        return str(self.cluster.get("ID", ""))

    @property
    def ca_cert_pem(self) -> str:
        return self.ca.cert_pem

    def join_tokens(self) -> dict[str, str]:
        """``{"Worker": token, "Manager": token}`` as ``GET /swarm`` shows them."""
        jt = self.cluster.get("JoinTokens") or {}
        return {"Worker": jt.get("Worker", ""), "Manager": jt.get("Manager", "")}

    def rotate_join_token(self, role: str) -> str:
        """A fresh join token for ``role`` (``worker`` | ``manager``) pinned to this cluster's root
        CA; the API stores it in the cluster object, which revokes the old one."""
        if role not in ("worker", "manager"):
            raise ValueError(f"unknown role {role!r}: expected worker or manager")
        return make_token(self.ca.digest)

    def quorum_error(self) -> str:
        """"" when this manager can serve the API, else why not ("no quorum: …" / "no leader …"),
        for ``/info``'s ``Swarm.Error``."""
        d = self.log.driver
        if not d.has_quorum():
            return d.no_quorum_message()
        if not d.node.leader:
            return d.not_leader_message()
        return ""

    def swarm_info(self) -> dict[str, Any]:
        """The manager-only part of ``/info``'s ``Swarm`` section (Docker API ``SwarmInfo``)."""
        view = self.store.view()
        nodes = view.list("nodes")
        managers = [n for n in nodes if n.get("Spec", {}).get("Role") == "manager"]
        c = self.cluster
        return {
            "Error": self.quorum_error(),
            "Nodes": len(nodes), "Managers": len(managers),
            "ShoalRaft": {"ID": self.raft_id, "Term": self.log.term, "Leader": self.log.leader_id,
                     "Applied": self.log.applied_index, "Role": "leader" if self.is_leader else "follower"},
            "RemoteManagers": [{"NodeID": n["ID"], "Addr": (n.get("ManagerStatus") or {}).get("Addr", "")}
                               for n in managers],
            "Cluster": {k: c.get(k) for k in ("ID", "Version", "CreatedAt", "UpdatedAt", "Spec",
                                              "TLSInfo", "RootRotationInProgress",
                                              "DefaultAddrPool", "SubnetSize", "DataPathPort")},
        }

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
        "log"}] sorted by time, "cursors": {task_id: cursor}, "more": bool}``; a node of an older
        version answers without cursors (its tasks are then missing from ``cursors``; read them by
        ``since`` as before), and ``more`` says some node has lines left (ask again with the cursors).
        Nodes without a session are skipped (their lines are not reachable). On a follower the leader
        (which holds the sessions) collects them (``logs.collect`` over 2377). Raises
        :class:`Unavailable` when no leader can be reached."""
        cursors = dict(cursors or {})
        limit = LOG_PAGE_LIMIT if limit is None else max(0, min(limit, LOG_PAGE_LIMIT))
        if self.log is not None and not self.log.is_leader:
            assert self.leader_link is not None
            r = await self.leader_link.request("logs.collect", {
                "task_ids": task_ids, "tail": tail, "since": since, "timestamps": timestamps,
                "cursors": cursors, "limit": limit}, timeout=60.0)
            return {"lines": list(r.get("lines") or []), "cursors": _cursor_map(r.get("cursors")),
                    "more": bool(r.get("more"))}
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
                res = await self.dispatcher.request_logs(node_id, body)
            except Exception as e:  # a node that is down or gone: skip its lines
                log.info("logs from node %s unavailable: %s", node_id, e)
                return {}
            lines = list(res.get("lines") or [])
            for ln in lines:
                ln["node_id"] = node_id
            got = {t: c for t, c in _cursor_map(res.get("cursors")).items() if t in tids}
            return {"lines": lines, "cursors": got, "more": bool(res.get("more"))}

        parts = await asyncio.gather(*(one(n, t) for n, t in by_node.items()))
        out = [ln for part in parts for ln in part.get("lines", [])]
        out.sort(key=lambda ln: ln.get("time", ""))
        new_cursors = {t: c for part in parts for t, c in part.get("cursors", {}).items()}
        return {"lines": out, "cursors": new_cursors, "more": any(part.get("more") for part in parts)}


def _cursor_map(v: Any) -> dict[str, str]:
    """A ``{task_id: cursor}`` map from a peer: anything that is not a map of strings is dropped."""
    if not isinstance(v, dict):
        return {}
    return {k: c for k, c in v.items() if isinstance(k, str) and isinstance(c, str) and len(c) <= 64}
