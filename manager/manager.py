"""``Manager``: the control plane of one manager node, wired together.

It owns the replicated log and the store on it, the cluster CA, the dispatcher and the 2377
server, and the reconciling loops (orchestrator, scheduler, task reaper). The loops never call
each other: each watches the store and writes back through it (swarmkit's shape).

The log is a single-voter Raft log for now (``raft.log.SingleVoterLog``): every change is a
durable WAL entry before it is applied, so ``kill -9`` of ``shoald`` loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from manager.ca import RootCA, make_token
from manager.dispatcher import Dispatcher
from manager.scheduler import Scheduler
from manager.server import ManagerServer, make_node
from manager.specs import default_swarm_spec, validate_swarm_spec
from manager.store import Store, WriteTx
from raft.log import SingleVoterLog
from shoal import tlsutil
from shoal.util import new_id, now_rfc3339

log = logging.getLogger(__name__)


def _split(addr: str, default_port: int = 2377) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host:
        return port, default_port
    return host, int(port)


class Manager:
    """The manager role of one node.

    ``data_dir``: where the log lives (``raft/`` under it); ``certs_dir``: ``ca.crt``, ``ca.key``,
    ``node.crt``, ``node.key``; ``node_id``: this node's ID; ``advertise_addr``: ``ip:port`` other
    nodes reach this manager at; ``listen_addr``: ``ip:port`` the 2377 server binds;
    ``heartbeat_period``: dispatcher heartbeat period in seconds; ``heartbeat_misses``: periods a
    node may miss before it is marked down (Swarm: 5 s and 3).
    """

    def __init__(self, data_dir: Path, certs_dir: Path, node_id: str, advertise_addr: str,
                 listen_addr: str, heartbeat_period: float = 5.0, heartbeat_misses: int = 3) -> None:
        self.data_dir = Path(data_dir)
        self.certs_dir = Path(certs_dir)
        self.node_id = node_id
        self.advertise_addr = advertise_addr
        self.listen_addr = listen_addr
        self.heartbeat_period = heartbeat_period
        self.heartbeat_misses = heartbeat_misses
        self.log: SingleVoterLog | None = None
        self.store: Store = None  # type: ignore[assignment]  # set by start()
        self.ca: RootCA = None  # type: ignore[assignment]
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        self.server: ManagerServer | None = None
        self._loops: list[asyncio.Task[Any]] = []

    # -- cluster creation ------------------------------------------------------------------

    @staticmethod
    async def init_cluster(data_dir: Path, certs_dir: Path, advertise_addr: str,
                           description: dict[str, Any], spec: dict[str, Any],
                           heartbeat_period: float | None = None) -> str:
        """Create a new cluster on this node (``swarm init``): root CA, this node's manager
        certificate, the cluster object and this node, written to a fresh log. Returns the node ID.

        ``heartbeat_period`` (seconds; shoald's ``--heartbeat-period``) goes into the cluster spec's
        ``Dispatcher.HeartbeatPeriod`` unless ``spec`` sets one, so ``docker info`` shows the period in
        force. Raises ``ValueError`` (from spec validation) for a bad SwarmSpec; nothing is written then.
        """
        swarm_spec = default_swarm_spec()
        if heartbeat_period is not None:
            swarm_spec["Dispatcher"]["HeartbeatPeriod"] = int(heartbeat_period * 1e9)
        if spec:
            merged = {**swarm_spec, **{k: v for k, v in spec.items() if v not in (None, {}, "")}}
            swarm_spec = validate_swarm_spec(merged)
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        ca = RootCA.create(certs_dir)
        node_id = new_id()
        cluster_id = new_id()
        ca.issue_node_files(certs_dir, node_id, "manager", cluster_id)
        rlog = SingleVoterLog(Path(data_dir) / "raft")
        store = Store(rlog)
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
            await store.update(fn)
        finally:
            await store.close()
        return node_id

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the log and store, then start the dispatcher, the 2377 server and the loops.

        Raises ``OSError`` if 2377 cannot be bound, ``raft.wal.WALCorruptError`` for a damaged log.
        """
        from manager.orchestrator import Orchestrator
        from manager.reaper import TaskReaper

        self.log = SingleVoterLog(self.data_dir / "raft")
        self.store = Store(self.log)
        self.ca = RootCA.load(self.certs_dir)
        self.dispatcher = Dispatcher(self.store, heartbeat_period=self._spec_heartbeat_period(),
                                     grace_multiplier=self.heartbeat_misses)
        ctx = tlsutil.server_context(self.certs_dir / "node.crt", self.certs_dir / "node.key",
                                     self.certs_dir / "ca.crt")
        self.server = ManagerServer(self.store, self.ca, self.dispatcher, ctx,
                                    advertise_addr=self.advertise_addr, accept_managers=False)
        await self._mark_leader()
        await self.dispatcher.start()
        host, port = _split(self.listen_addr)
        await self.server.start(host, port)
        scheduler = Scheduler(self.store)
        scheduler.rebuild()
        for name, coro in (("heartbeat-period", self._follow_heartbeat_period()),
                           ("orchestrator", Orchestrator(self.store).run()),
                           ("scheduler", scheduler.run()),
                           ("reaper", TaskReaper(self.store).run())):
            self._loops.append(asyncio.create_task(coro, name=name))
        log.info("manager %s serving on %s (advertised %s)", self.node_id, self.listen_addr,
                 self.advertise_addr)

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

    async def _mark_leader(self) -> None:
        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", self.node_id)
            if node is None:
                return
            ms = node.get("ManagerStatus") or {}
            want = {"Leader": True, "Reachability": "reachable", "Addr": self.advertise_addr}
            if ms != want:
                node["ManagerStatus"] = want
                tx.update("nodes", node)

        await self.store.update(fn)

    async def stop(self) -> None:
        """Stop the loops, the server and the dispatcher, then close the log."""
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._loops.clear()
        if self.server is not None:
            await self.server.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
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

    def swarm_info(self) -> dict[str, Any]:
        """The manager-only part of ``/info``'s ``Swarm`` section (Docker API ``SwarmInfo``)."""
        view = self.store.view()
        nodes = view.list("nodes")
        managers = [n for n in nodes if n.get("Spec", {}).get("Role") == "manager"]
        c = self.cluster
        return {
            "Nodes": len(nodes), "Managers": len(managers),
            "RemoteManagers": [{"NodeID": n["ID"], "Addr": (n.get("ManagerStatus") or {}).get("Addr", "")}
                               for n in managers],
            "Cluster": {k: c.get(k) for k in ("ID", "Version", "CreatedAt", "UpdatedAt", "Spec",
                                              "TLSInfo", "RootRotationInProgress",
                                              "DefaultAddrPool", "SubnetSize", "DataPathPort")},
        }

    async def read_logs(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                        timestamps: bool = False) -> list[dict[str, Any]]:
        """Collect log lines of ``task_ids`` from the nodes they ran on (``logs.read`` over each
        node's session). Returns ``[{"task_id", "node_id", "stream", "time", "log"}]`` sorted by
        time. Nodes without a session are skipped (their lines are not reachable)."""
        view = self.store.view()
        by_node: dict[str, list[str]] = {}
        for tid in task_ids:
            t = view.get("tasks", tid)
            if t is not None and t.get("NodeID"):
                by_node.setdefault(t["NodeID"], []).append(tid)

        async def one(node_id: str, tids: list[str]) -> list[dict[str, Any]]:
            try:
                res = await self.dispatcher.request_logs(
                    node_id, {"task_ids": tids, "tail": tail, "since": since, "timestamps": timestamps})
            except Exception as e:  # a node that is down or gone: skip its lines
                log.info("logs from node %s unavailable: %s", node_id, e)
                return []
            lines = list(res.get("lines") or [])
            for ln in lines:
                ln["node_id"] = node_id
            return lines

        parts = await asyncio.gather(*(one(n, t) for n, t in by_node.items()))
        out = [ln for part in parts for ln in part]
        out.sort(key=lambda ln: ln.get("time", ""))
        return out
