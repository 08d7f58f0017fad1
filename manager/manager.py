"""``Manager``: the control plane of one manager node, wired together.

It owns the replicated log and the store on it, the cluster CA, the dispatcher and the 2377
server, and the reconciling loops (orchestrator, network allocator, scheduler, task reaper). The loops never call
each other: each watches the store and writes back through it (swarmkit's shape).

The log is a Raft log replicated between the managers (:class:`raft.replicated.ReplicatedLog`);
Raft's messages share the 2377 mutual-TLS port (the server hands a connection that opens with
``raft-hello`` to the Raft transport). Only the leader runs the dispatcher and the loops, as
swarmkit does (SK: manager/manager.go, becomeLeader/becomeFollower): when this node wins an
election it waits until its store has applied everything committed (a ReadIndex), then starts
them; when it loses leadership it stops them, and the workers reconnect to the new leader.
Requests that must run on the leader (a node joining, a manager asking to be added to Raft, a
control API write: ``control.call``, :mod:`manager.controlapi.control`) are forwarded to it over
2377 (:class:`manager.leaderlink.LeaderLink`).

This module keeps the wiring and the leadership loop. Raft is reached only through its facade,
:class:`raft.replicated.ReplicatedLog`; the membership rules (promote, demote, the quorum check,
handing leadership over, role reconciliation, ManagerStatus) are :mod:`manager.membership`'s,
the logs of services and tasks :mod:`manager.logbroker`'s, cluster creation and the Raft
settings of the spec :mod:`manager.clusterconfig`'s.

Raft node IDs are integers; Swarm node IDs are strings: :func:`raft_id` maps one to the other,
and the transport refuses a connection whose certificate's node ID does not map to the Raft ID
it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from manager.allocator.loop import NetworkAllocatorLoop
from manager.ca import RootCA, make_token
from manager.clusterconfig import (
    DEFAULT_RAFT_TICK,
    init_cluster,
    raft_config,
    read_raft_spec,
    split_addr,
    write_raft_spec,
)
from manager.clusterconfig import (
    initial_swarm_spec as initial_swarm_spec,  # shoald's (it checks a spec early)
)
from manager.clusterconfig import (
    network_config as network_config,  # shoald's (it checks DefaultAddrPool/SubnetSize/DataPathPort early)
)
from manager.controlapi import control
from manager.dispatcher import Dispatcher
from manager.events import EventHub
from manager.leaderlink import LeaderLink, join_raft
from manager.logbroker import LogBroker
from manager.membership import Membership, raft_id
from manager.orchestrator import Orchestrator
from manager.reaper import TaskReaper
from manager.scheduler import Scheduler
from manager.server import ManagerServer
from manager.store import Store, Unavailable
from raft.replicated import LogUnavailable, ReplicatedLog, parse_addr
from shoal.base.util import private_dir
from shoal.rpc import tlsutil, wire

log = logging.getLogger(__name__)



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
        self.membership: Membership | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._leader_loops: list[asyncio.Task[Any]] = []
        self._leading = False
        self._role_task: asyncio.Task[None] | None = None
        self.events = EventHub()  # GET /events (manager/events.py), fed by the store on every manager
        self.orchestrator: Orchestrator | None = None
        """The orchestration loop while this manager leads (None before it first leads)."""

    # -- cluster creation ------------------------------------------------------------------

    @staticmethod
    async def init_cluster(data_dir: Path, certs_dir: Path, advertise_addr: str,
                           description: dict[str, Any], spec: dict[str, Any],
                           heartbeat_period: float | None = None, net_config: dict[str, Any] | None = None) -> str:
        """``swarm init``: :func:`manager.clusterconfig.init_cluster`. Returns the node ID."""
        return await init_cluster(data_dir, certs_dir, advertise_addr, description, spec, heartbeat_period,
                                  net_config)

    # -- lifecycle ---------------------------------------------------------------------------

    def _peer_check(self, ident: tuple[str, str] | None, rid: int) -> str | None:
        """Vet an inbound Raft connection (:data:`raft.transport.PeerCheck`;
        :meth:`manager.membership.Membership.peer_problem`)."""
        if self.membership is None:
            return "this manager is not started"
        return self.membership.peer_problem(ident, rid)

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
        self.events.attach(self.store)
        self.log.set_restore(self.store.restore)
        self.log.set_snapshot_source(self.store.snapshot_bytes)
        self._save_spec()
        self.dispatcher = Dispatcher(self.store, heartbeat_period=self._spec_heartbeat_period(),
                                     grace_multiplier=self.heartbeat_misses)
        self.dispatcher.unavailable_reason = self._not_leader_reason
        self.membership = Membership(self.log, self.store, self.node_id)
        self.leader_link = LeaderLink(self.certs_dir, self.leader_addr, self.log.not_leader_message)
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
        host, port = split_addr(self.listen_addr)
        await self.server.start(host, port)
        self._role_task = asyncio.create_task(self._follow_role(), name="manager-role")
        log.info("manager %s (raft %d) serving on %s (advertised %s)", self.node_id, self.raft_id,
                 self.listen_addr, self.advertise_addr)

    def _saved_spec(self) -> dict[str, Any]:
        return read_raft_spec(self.data_dir)

    def _save_spec(self) -> None:
        """Remember the SwarmSpec's Raft section next to the log, for the timing at next start."""
        write_raft_spec(self.data_dir, self.cluster.get("Spec") or {})

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
        return self.log.addr(lid)

    def _not_leader_reason(self) -> str:
        addr = self.leader_addr()
        if addr and addr != self.advertise_addr:
            return f"this manager is not the leader; the leader is at {addr}"
        return self.log.not_leader_message()

    async def _follow_role(self) -> None:
        """Start the leader's work when this node becomes leader, stop it when it steps down;
        as leader, keep every manager's ``ManagerStatus`` current once a second."""
        last_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self.log.wait_changed(0.2)
            try:
                if self.log.is_leader and not self._leading:
                    await self._become_leader()
                    last_status = loop.time() - 0.5
                elif not self.log.is_leader and self._leading:
                    await self._become_follower()
                if self._leading and loop.time() - last_status >= 1.0:
                    last_status = loop.time()
                    assert self.membership is not None
                    await self.membership.reconcile_roles()
                    await self.membership.update_manager_status()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("manager role change failed; retrying")
                await asyncio.sleep(0.5)

    async def _become_leader(self) -> None:
        try:
            await self.log.read_index(timeout=5.0)  # everything committed is applied here
        except LogUnavailable as e:
            log.info("won an election but cannot confirm leadership yet: %s", e)
            return
        if not self.log.is_leader:
            return
        log.info("manager %s is the leader (term %d)", self.node_id, self.log.term)
        if self.force_new_cluster:
            assert self.membership is not None
            if await self.membership.demote_lost_managers():
                self.force_new_cluster = False
        self._leading = True
        self.dispatcher.heartbeat_period = self._spec_heartbeat_period()
        await self.dispatcher.start()
        scheduler = Scheduler(self.store)  # (its run() rebuilds its index once its watch is on)
        self.orchestrator = Orchestrator(self.store)
        for name, coro in (("heartbeat-period", self._follow_heartbeat_period()),
                           ("orchestrator", self.orchestrator.run()),
                           ("network-allocator", NetworkAllocatorLoop(self.store).run()),
                           ("scheduler", scheduler.run()),
                           ("reaper", TaskReaper(self.store).run())):
            self._leader_loops.append(asyncio.create_task(coro, name=name))

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

    # -- membership (the rules are manager/membership.py's) ---------------------------------------

    def manager_statuses(self) -> dict[str, dict[str, Any] | None]:
        """``{node_id: ManagerStatus | None}`` as the leader sees it now
        (:meth:`manager.membership.Membership.manager_statuses`)."""
        assert self.membership is not None
        return self.membership.manager_statuses()

    def manager_status(self, node_id: str) -> dict[str, Any] | None:
        """Docker's ``ManagerStatus`` (``Leader``, ``Reachability``, ``Addr``) of node ``node_id``
        computed from Raft at call time, None for a node that is no manager
        (:meth:`manager.membership.Membership.manager_status`). For ``node ls`` / ``node
        inspect``: the copy in the store lags up to a second behind a leader change. None too
        while the manager is not started."""
        if self.membership is None:
            return None
        return self.membership.manager_status(node_id)

    def demote_problem(self, node_id: str) -> str | None:
        """Why demoting manager ``node_id`` now would be unsafe, None if it is fine
        (:meth:`manager.membership.Membership.demote_problem`)."""
        assert self.membership is not None
        return self.membership.demote_problem(node_id)

    async def _raft_leave(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """``raft.leave`` ``{}``: the calling manager — the node of the certificate, whatever the
        body says — leaves the swarm (``swarm leave --force``): its node becomes a worker in the
        spec and it is taken out of Raft. Served by the leader only: a follower answers "not the
        leader" (it never forwards a leave, so no manager can make another one leave); the
        leaving manager asks the leader directly (:meth:`leave_raft`)."""
        if not self.log.is_leader:
            raise LookupError(self._not_leader_reason())
        assert self.membership is not None
        await self.membership.leave(node_id)
        return {"ok": True}

    async def leave_raft(self, timeout: float = 10.0) -> None:
        """Leave the Raft cluster before this manager leaves the swarm (best effort: a leader
        first hands leadership over), asking the leader itself (``raft.leave``); retried while
        leadership moves. Raises :class:`Unavailable` / ``shoal.rpc.wire.WireError``."""
        if self.log.voters() == frozenset({self.raft_id}):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.log.is_leader:
            assert self.membership is not None
            to = self.membership.handover_target()
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
            await self.log.wait_changed(0.1)

    # -- requests that run on the leader ---------------------------------------------------------

    async def _forward_to_leader(self, type: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """For the 2377 server: None when this node is the leader (serve locally), else the
        leader's reply to the same request."""
        assert self.leader_link is not None
        return await self.leader_link.forward(self.log.is_leader, type, body)

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
        assert self.membership is not None
        await self.membership.add_manager(joiner, addr)
        return {"ok": True}

    async def _logs_collect(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """``logs.collect`` ``{"task_ids", "tail", "since", "timestamps", "cursors"?, "limit"?}`` from a
        follower manager: :meth:`read_logs_page` here (the leader). Returns ``{"lines", "cursors", "more"}``."""
        if not self.log.is_leader:
            raise LookupError(self._not_leader_reason())
        return await self._logs().collect(body)

    async def join_raft(self, managers: list[str], timeout: float = 60.0) -> None:
        """Ask the swarm (through any of ``managers``) to add this manager to the Raft configuration
        (:func:`manager.leaderlink.join_raft`). Raises ``RuntimeError``."""
        await join_raft(managers, self.advertise_addr, self.certs_dir, timeout)

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
        if not self.log.has_quorum():
            return self.log.no_quorum_message()
        if not self.log.leader_id:
            return self.log.not_leader_message()
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

    # -- logs (manager/logbroker.py) ----------------------------------------------------------------

    def _logs(self) -> LogBroker:
        return LogBroker(self.store, self.dispatcher, self.leader_link,
                         lambda: self.log is None or self.log.is_leader)

    async def read_logs(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                        timestamps: bool = False) -> list[dict[str, Any]]:
        """The lines of one :meth:`read_logs_page` without cursors
        (:meth:`manager.logbroker.LogBroker.read_logs`)."""
        return await self._logs().read_logs(task_ids, tail, since, timestamps)

    async def read_logs_page(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                             timestamps: bool = False, cursors: dict[str, str] | None = None,
                             limit: int | None = None) -> dict[str, Any]:
        """One bounded page of log lines of ``task_ids`` from the nodes they ran on, collected by the
        leader (:meth:`manager.logbroker.LogBroker.read_logs_page`)."""
        return await self._logs().read_logs_page(task_ids, tail, since, timestamps, cursors, limit)
