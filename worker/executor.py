"""The worker's executor: turns assigned tasks into containers and reports their states.

One controller (an asyncio task) per assigned task moves the task one state
forward at a time, as swarmkit's ``agent/exec/controller.go`` ``Do`` does:

    new|pending|assigned → accepted → preparing → (prepare: bridge, pull, create)
    → starting → running → complete (exit 0) | failed ("task: non-zero exit (N)")

with ``rejected`` for errors before ``starting`` (image pull, create) and
``failed`` for errors at or after it.  When the desired state becomes
``shutdown`` or ``remove`` the container is stopped (StopSignal, then SIGKILL
after StopGracePeriod) and ``shutdown`` is reported; ``remove`` (or the task
vanishing from the assignment set) also removes the container and its network.
States only move forward (SWARM-FACTS 1.1); each forward move is reported once.
With a health check (:mod:`worker.health`) ``starting`` lasts until the first passing probe;
an unhealthy container is stopped and its task fails ("task: non-zero exit (N): dockerexec:
unhealthy container").

Controllers run concurrently: fifty tasks assigned at once are prepared and
started in parallel (image pulls are de-duplicated by the ImageStore).

Container IDs are derived from task IDs (``sha256("shoal-task:" + task_id)``),
so after a daemon restart a task's container is found again without any state
of the executor's own; containers also carry Docker's swarm labels
(``com.docker.swarm.task.id`` …).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import fields as dc_fields
from typing import Any, TypeVar

from agent_runtime.spec import ContainerSpec  # the runtime's dataclass (docs/contracts.md, agent_runtime)
from overlaynet.dns.records import DnsTable
from overlaynet.dns.server import Endpoint as DnsEndpoint
from overlaynet.dns.server import Resolver
from overlaynet.driver import DEFAULT_DATA_PATH_PORT, EndpointConfig, NetworkConfig, VniInUse
from shoal.base.containerrules import parse_extra_host
from shoal.base.logopts import check_driver, check_options
from shoal.base.taskstate import SHUTDOWN, STATE_ORDER, TERMINAL_STATES, state_order
from shoal.base.util import now_rfc3339, wait_timeout
from shoal.base.views import Node, Task
from shoal.rpc import wire
from worker import dns as wdns
from worker import health as whealth
from worker import overlay as ov
from worker.mesh import Mesh
from worker.netplane import NetPlane

log = logging.getLogger("shoal.worker.executor")

LOG_PAGE_LIMIT = wire.LOGS_REPLY_BYTES
"""Bytes of log records one ``read_logs_page`` returns at most, all tasks together: a record
counts its JSON line plus ``RECORD_COST``, more than it takes in msgpack, so the ``logs.read``
reply fits the manager's limit for a worker's frame (``shoal.rpc.wire.WORKER_LIMITS``); a manager may
ask for less."""

T = TypeVar("T")

#: ``report(task_id, status)``: sync or async; ``status`` is a Docker TaskStatus dict.
ReportFn = Callable[[str, dict[str, Any]], Awaitable[None] | None]

#: The messages swarmkit's agent writes with each state.
MESSAGES = {"accepted": "accepted", "preparing": "preparing", "starting": "starting", "running": "started",
            "complete": "finished", "shutdown": "shutdown", "failed": "started", "rejected": "preparing"}

DEFAULT_STOP_GRACE_S = 10.0
#: Seconds ``wait_drained`` allows beyond the longest stop grace period (the exit code wait after
#: a stop is bounded by grace + 10 s; removal and network release take a few more).
DRAIN_MARGIN_S = 15.0
#: How long ``runtime.start`` may take before the task fails (unless the container runs anyway).
DEFAULT_START_TIMEOUT_S = 60.0
LABEL_TASK = "com.docker.swarm.task.id"
LABEL_SERVICE = "com.docker.swarm.service.id"
LABEL_NODE = "com.docker.swarm.node.id"


def container_id_for(task_id: str) -> str:
    """Return the 64-hex container ID of ``task_id``'s container (sha256 of ``"shoal-task:" + task_id``)."""
    return hashlib.sha256(f"shoal-task:{task_id}".encode()).hexdigest()


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


class Executor:
    """Runs this node's tasks: ``await set_assignments(node, tasks)``, ``await recover()``, ``read_logs``.

    ``runtime``: an ``agent_runtime.containers.Runtime`` (create/start/wait/stop/remove/state/list/read_logs);
    ``images``: an ``agent_runtime.images.ImageStore`` (get/pull);
    ``bridge``: an ``overlaynet.bridge.LocalBridge`` (ensure/attach/detach; called in threads);
    ``start_timeout``: seconds ``runtime.start`` may take (default 60) before the task fails;
    ``report``: ``report(task_id, status)`` callback, sync or async, called once per forward state move
    with ``status = {"Timestamp", "State", "Message", "Err"?, "ContainerStatus"?: {"ContainerID", "PID",
    "ExitCode"}}``.  Exceptions from ``report`` are logged and otherwise ignored;
    ``overlay``: an ``overlaynet.driver.NetworkDriver`` (the VXLAN driver) for tasks attached to
    overlay networks, None when the node has none (such tasks are then rejected); every call runs
    in a thread; ``data_path_port``: the VXLAN UDP port.

    Overlay networks (issue 9): a task's ``NetworksAttachments`` entries whose network's
    ``DriverState.Name`` is ``overlay`` become, in order, ``eth1``, ``eth2``… in the container
    (after the local bridge's ``eth0``): ``ensure_network`` then ``attach`` in prepare, ``detach``
    at release/removal (the driver removes a network with its last endpoint). The assignment's
    ``networks`` (``{network_id: {"Network", "Peers"}}``) is kept and each network's peers are
    applied to networks with a local endpoint, and right after ``ensure_network``. On the first
    assignment, ``cleanup_stale`` runs once with the overlay networks of the re-attached tasks,
    before any ``ensure_network``. Tasks without overlay attachments never call the driver.

    Embedded DNS (issue 9): one :class:`DnsTable` (``dns_table``) and one :class:`Resolver`
    (``resolver``, upstreams from ``resolv_conf``) per executor. Each assignment's ``networks``
    replaces the records of every network listed (its ``"DNS"`` entry) and drops the others. A task
    attached to an overlay network gets ``nameserver 127.0.0.11`` and ``options ndots:0`` in its
    resolv.conf and, before its container is created, UDP+TCP sockets at 127.0.0.11:53 in its
    namespace (``dns_sockets(netns_path)``, :func:`worker.dns.open_dns_sockets`) served by the
    resolver for its overlay networks (in attach order) until the task's network is released.

    Service networking (issue 9, :mod:`worker.netplane`): ``vips`` (a
    :class:`worker.vip.VipBalancers`: each overlay task's VIP table, made after its DNS, removed
    before its namespace), ``ingress_sandbox`` (an :class:`overlaynet.mesh.IngressSandbox`: the
    routing mesh, from the push's ``ingress``; needs ``overlay``) and ``host_ports`` (a
    :class:`worker.hostports.HostPorts`: host-mode ports of the running tasks); None disables one.
    ``ingress_keep_client_addr``: the mesh sends a published port straight to this node's own tasks
    of the service when it runs some, keeping the client's address (:mod:`worker.mesh`).
    The push's ``data_path_port`` replaces ``data_path_port`` for networks set up from then on
    (a network already up keeps its VXLAN port until it is removed with its last local endpoint).
    """

    def __init__(self, runtime: Any, images: Any, bridge: Any, report: ReportFn,
                 start_timeout: float = DEFAULT_START_TIMEOUT_S, overlay: Any = None,
                 data_path_port: int = DEFAULT_DATA_PATH_PORT, resolv_conf: str = "/etc/resolv.conf",
                 resolver: Any = None,
                 dns_sockets: Callable[[str], tuple[Any, Any]] = wdns.open_dns_sockets,
                 vips: Any = None, ingress_sandbox: Any = None, host_ports: Any = None,
                 ingress_keep_client_addr: bool = False) -> None:
        self.runtime = runtime
        self.start_timeout = start_timeout
        self.images = images
        self.bridge = bridge
        self._report = report
        self.node: dict[str, Any] = {}
        self._controllers: dict[str, _Controller] = {}
        # containers found by recover(): container ID -> (task ID or None, ContainerState)
        self._recovered: dict[str, tuple[str | None, Any]] = {}
        self._first_assignments = True
        # tasks whose removal is done, so a lingering desired=remove entry does not start a new controller
        self._removed: set[str] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        # overlay networks (issue 9)
        self.overlay = overlay
        self.data_path_port = data_path_port
        self._networks: dict[str, Any] = {}  # the latest assignment's networks: id -> {"Network", "Peers"}
        self._local: dict[str, set[str]] = {}  # network id -> IDs of the tasks with an endpoint on it here
        self._net_locks: dict[str, asyncio.Lock] = {}  # one per network: ensure+attach / detach / set_peers
        self._overlay_ready = asyncio.Event()  # set once cleanup_stale ran (first assignment)
        self._bg: set[asyncio.Task[None]] = set()
        # embedded DNS (issue 9)
        self.dns_table = DnsTable() if resolver is None else resolver.table
        self.resolver = Resolver(self.dns_table, resolv_conf=resolv_conf) if resolver is None else resolver
        self._dns_sockets = dns_sockets
        # service VIPs, routing mesh, host-mode ports (issue 9)
        mesh = Mesh(ingress_sandbox, self._overlay_attach, self._overlay_detach,
                    self._local_overlay_addresses if ingress_keep_client_addr else None) \
            if ingress_sandbox is not None and overlay is not None else None
        self.net = NetPlane(vips, mesh, host_ports, self._running_addresses)

    # ------------------------------------------------------------ interface
    async def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]],
                              networks: dict[str, Any] | None = None, ingress: dict[str, Any] | None = None,
                              data_path_port: int | None = None) -> None:
        """Reconcile with the complete set of this node's tasks (idempotent; returns at once).

        ``node``: the Node object (``ID``, ``ShoalBridge = {"Subnet", "Gateway"}``); ``tasks``: Task
        objects.  New task IDs get a controller; known ones see the new ``DesiredState``/spec; tasks
        missing from the set are shut down and removed.  On the first call after :meth:`recover`,
        containers that belong to no assigned task are removed.  ``networks``: the overlay networks
        of the assignment with their peers (None: the manager sent none, nothing changes; see the
        class docstring). ``ingress`` (the routing mesh; None: none) is read when ``networks`` is
        given; ``data_path_port``: the cluster's VXLAN port (None: unchanged).
        Raises ValueError when a task has no ``ID``.
        """
        if self._closed:
            raise RuntimeError("executor is closed")
        async with self._lock:
            self.node = node
            if isinstance(data_path_port, int) and 0 < data_path_port < 65536:
                self.data_path_port = data_path_port
            if networks is not None:
                self._networks = dict(networks)
                self._update_dns()
            if self._first_assignments and self.overlay is not None:
                await self._overlay_startup(tasks)
            seen: set[str] = set()
            for task in tasks:
                tid = task.get("ID")
                if not isinstance(tid, str) or not tid:
                    raise ValueError(f"assigned task without an ID: {str(task)[:200]}")
                seen.add(tid)
                ctl = self._controllers.get(tid)
                if ctl is None:
                    if tid in self._removed and task.get("DesiredState") == "remove":
                        continue
                    self._removed.discard(tid)
                    ctl = _Controller(self, task)
                    self._controllers[tid] = ctl
                    ctl.start()
                else:
                    ctl.update(task)
            for tid, ctl in list(self._controllers.items()):
                if tid not in seen:
                    ctl.vanish()
            self._removed &= seen
            if networks is not None and self.overlay is not None:
                for nid in self._networks:
                    if self._local.get(nid):
                        self._background(self._apply_peers(nid))
            if networks is not None:  # a swarm push (swarm leave sends none: no kernel work then)
                self.net.on_push(node, self._networks, ingress, self.data_path_port)
                self.net.ports_changed()
            if self._first_assignments:
                self._first_assignments = False
                assigned_cids = {container_id_for(t) for t in seen}
                for cid, (tid, _st) in list(self._recovered.items()):
                    if cid not in assigned_cids and (tid is None or tid not in seen):
                        log.info("removing container %s of unassigned task %s", cid[:12], tid)
                        self._recovered.pop(cid, None)
                        asyncio.get_running_loop().create_task(self._remove_orphan(cid))

    async def recover(self) -> None:
        """Re-attach to containers left by a previous daemon run (``runtime.list()``); call once at start.

        Running containers keep running.  Each container whose task ID is known (label
        ``com.docker.swarm.task.id``) gets a controller at once and its real state is reported
        (``running`` with its PID, or ``complete``/``failed`` with the exit code); the others are
        matched to tasks by container ID when assignments arrive.
        """
        states = await _call(self.runtime.list)
        async with self._lock:
            for st in states:
                labels = getattr(st, "labels", None)
                if labels is None and hasattr(self.runtime, "spec"):
                    try:  # agent_runtime: the spec the container was created from
                        labels = (await _call(self.runtime.spec, st.id)).labels
                    except Exception:
                        labels = None
                tid = (labels or {}).get(LABEL_TASK)
                self._recovered[st.id] = (tid, st)
                if tid and tid not in self._controllers and container_id_for(tid) == st.id:
                    ctl = _Controller(self, {"ID": tid, "DesiredState": "running",
                                             "Status": {"State": "assigned"}}, synthetic=True)
                    self._controllers[tid] = ctl
                    ctl.start()

    async def read_logs(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                        timestamps: bool = False) -> list[dict[str, Any]]:
        """Return log lines of the given tasks' containers, oldest first (shape of ``logs.read`` replies).

        ``tail``: last N lines per task (-1 = all); ``since``: seconds since the epoch (0 = all);
        ``timestamps`` is accepted for the protocol's sake (every line carries its ``time`` anyway).
        Returns ``[{"task_id", "stream": "stdout"|"stderr", "time": rfc3339, "log": str}]``; tasks
        without a container on this node contribute nothing.
        """
        del timestamps
        out: list[dict[str, Any]] = []
        for tid in task_ids:
            ctl = self._controllers.get(tid)
            cid = ctl.cid if ctl is not None else container_id_for(tid)
            if await self._container_state(cid) is None:
                continue
            lines = await _call(self.runtime.read_logs, cid, tail, since)
            for line in lines:
                out.append({"task_id": tid, "stream": line.get("stream", "stdout"),
                            "time": line.get("time", ""), "log": line.get("log", "")})
        out.sort(key=lambda d: d["time"])
        return out

    async def read_logs_page(self, task_ids: list[str], tail: int = -1, since: float = 0.0,
                             cursors: dict[str, str] | None = None,
                             limit: int | None = None) -> dict[str, Any]:
        """One bounded read of the given tasks' logs (the ``logs.read`` reply).

        Tasks in ``cursors`` (task ID → cursor of an earlier reply) get the records written after
        their cursor; the others the last ``tail`` records (-1 = all) not older than ``since``
        (seconds since the epoch). At most ``limit`` bytes (:data:`LOG_PAGE_LIMIT` when None or
        larger) are returned for all tasks together (an equal share each; a task returns at least one
        record when it has any and the budget is not spent), each task's records oldest first, the
        lines sorted by time. Returns ``{"lines": [{"task_id", "stream", "time", "log"}], "cursors":
        {task_id: cursor}, "more": bool}``: ``cursors`` has every task with a container on this node
        (where its next read continues), ``more`` is True when some task has records left after its
        cursor (read again at once). Tasks without a container here contribute nothing. Raises
        ``agent_runtime.containers.ContainerError`` for a malformed cursor.
        """
        budget = LOG_PAGE_LIMIT if limit is None else max(0, min(int(limit), LOG_PAGE_LIMIT))
        cursors = cursors or {}
        here: list[tuple[str, str]] = []
        for tid in dict.fromkeys(task_ids):
            ctl = self._controllers.get(tid)
            cid = ctl.cid if ctl is not None else container_id_for(tid)
            if await self._container_state(cid) is not None:
                here.append((tid, cid))
        # an equal share each, so one busy task cannot keep the others waiting page after page
        share = budget // max(1, len(here)) if budget else 0
        out: list[dict[str, Any]] = []
        new_cursors: dict[str, str] = {}
        more = False
        for tid, cid in here:
            page = await _call(self.runtime.read_log_page, cid, tail, since, cursors.get(tid),
                               max(1, min(share, budget)) if budget else 0)
            for rec in page.records:
                line = {"task_id": tid, "stream": rec.get("stream", "stdout"), "time": rec.get("time", ""),
                        "log": rec.get("log", "")}
                out.append(line)
            budget = max(0, budget - page.used)
            new_cursors[tid] = page.cursor
            more = more or page.more
        out.sort(key=lambda d: d["time"])
        return {"lines": out, "cursors": new_cursors, "more": more}

    async def close(self) -> None:
        """Stop the controllers (not the containers: they keep running for the next daemon run)."""
        self._closed = True
        await self.net.close()
        for t in list(self._bg):
            t.cancel()
        ctls = list(self._controllers.values())
        for ctl in ctls:
            ctl.cancel()
        for ctl in ctls:
            await ctl.join()
        try:
            await self.resolver.close()
        except Exception:
            log.exception("closing the embedded DNS failed")

    def drain_timeout(self) -> float:
        """Seconds :meth:`wait_drained` waits by default: the longest ``StopGracePeriod`` of the
        tasks held (10 s when unset) + :data:`DRAIN_MARGIN_S`."""
        graces = [_stop_grace(ctl.task) for ctl in self._controllers.values()]
        return max(graces, default=0.0) + DRAIN_MARGIN_S

    async def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until every task is gone: each controller finished (container stopped and
        removed, its DNS, VIP table, overlay endpoints and bridge attachment released) and no
        overlay endpoint is left here (the driver removes a network's namespace with its last
        endpoint). Call it after a ``set_assignments`` without the tasks (``swarm leave``).

        ``timeout``: seconds, None for :meth:`drain_timeout`. Returns True when drained, False
        at the deadline (logged, naming the tasks left); never raises.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.drain_timeout() if timeout is None else max(0.0, timeout))
        while True:
            runners = [c._runner for c in self._controllers.values()
                       if c._runner is not None and not c._runner.done()]
            if not self._controllers and not self._local:
                return True
            left = deadline - loop.time()
            if left <= 0:
                log.warning("tasks not drained in time: %s; overlay endpoints left on %s",
                            ", ".join(sorted(self._controllers)) or "none",
                            ", ".join(n[:12] for n in sorted(self._local)) or "none")
                return False
            if runners:
                await asyncio.wait(runners, timeout=min(left, 0.5))
            else:  # controllers forgotten but endpoints still being released, or a dead runner
                await asyncio.sleep(min(left, 0.05))

    async def drop_overlays(self) -> list[str]:
        """``swarm leave``: remove every overlay network's data plane left on this node (the
        driver's ``cleanup_stale`` with no network known) and forget the local endpoints, so a new
        swarm's networks can take their VNIs at once. Returns what was removed; never raises
        (a failure is logged)."""
        if self.overlay is None:
            return []
        self._local.clear()
        try:
            removed: list[str] = await _in_thread(self.overlay.cleanup_stale, [])
        except Exception:
            log.exception("removing the overlay networks' data planes failed")
            return []
        if removed:
            log.info("left the swarm: removed overlay data planes %s", ", ".join(removed))
        return removed

    def task_states(self) -> dict[str, str]:
        """Return ``{task_id: last observed state}`` of the tasks this executor holds (for tests, /info)."""
        return {tid: ctl.state for tid, ctl in self._controllers.items()}

    # -------------------------------------------------------------- helpers
    def _running_addresses(self) -> list[tuple[dict[str, Any], str]]:
        """``[(task, local-bridge IPv4)]`` of the running tasks (for host-mode ports)."""
        out = []
        for ctl in self._controllers.values():
            addr = ctl._network()[0] if ctl.state == "running" and not ctl._stopping() else None
            if addr:
                out.append((ctl.task, addr.split("/")[0]))
        return out

    def _local_overlay_addresses(self) -> dict[str, str]:
        """``{overlay IP: local-bridge IP}`` of the running tasks (the mesh's local preference)."""
        out: dict[str, str] = {}
        for task, bridge_ip in self._running_addresses():
            try:
                atts = ov.overlay_attachments(task)
            except ValueError:
                continue
            for a in atts:
                out[a.address.split("/")[0]] = bridge_ip
        return out

    async def _send(self, task_id: str, status: dict[str, Any]) -> None:
        if status.get("State") == "running" or status.get("State") in TERMINAL_STATES:
            self.net.ports_changed()
        try:
            await _maybe_await(self._report(task_id, status))
        except Exception:
            log.exception("report of task %s (%s) failed", task_id, status.get("State"))

    async def _container_state(self, cid: str) -> Any:
        try:
            return await _maybe_await(self.runtime.state(cid))
        except Exception:  # the runtime raises for unknown IDs
            return None

    async def _remove_orphan(self, cid: str) -> None:
        try:
            await self.runtime.remove(cid)
        except Exception:
            log.exception("removing orphaned container %s failed", cid[:12])
        await _in_thread(self.bridge.detach, cid)

    def _forget(self, task_id: str, ctl: _Controller) -> None:
        if self._controllers.get(task_id) is ctl:
            del self._controllers[task_id]

    # ------------------------------------------------------ overlay networks
    def _update_dns(self) -> None:
        """The DNS table from the latest ``networks``: listed networks replaced, the others dropped."""
        for nid, entry in self._networks.items():
            try:
                self.dns_table.replace(ov.dns_records(str(nid), entry))
            except ValueError as e:  # dns_records checks the addresses; defensive
                log.warning("network %s: DNS records not updated: %s", str(nid)[:12], e)
        for nid in self.dns_table.network_ids() - set(self._networks):
            self.dns_table.remove(nid)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def _net_lock(self, nid: str) -> asyncio.Lock:
        lock = self._net_locks.get(nid)
        if lock is None:
            lock = self._net_locks[nid] = asyncio.Lock()
        return lock

    async def _overlay_startup(self, tasks: list[dict[str, Any]]) -> None:
        """Once, on the first assignment: the re-attached tasks' overlay endpoints become local ones
        and ``cleanup_stale`` removes every other network's data plane left by an earlier run."""
        known: set[str] = set()
        for task in tasks:
            tid = task.get("ID")
            if not isinstance(tid, str) or container_id_for(tid) not in self._recovered:
                continue
            try:
                atts = ov.overlay_attachments(task)
            except ValueError as e:
                log.warning("task %s: %s", tid, e)
                continue
            for att in atts:
                known.add(att.network_id)
                self._local.setdefault(att.network_id, set()).add(tid)
        try:
            removed = await _in_thread(self.overlay.cleanup_stale, sorted(known))
            if removed:
                log.info("removed stale overlay data planes: %s", ", ".join(removed))
        except Exception:
            log.exception("overlay cleanup at start failed")
        finally:
            self._overlay_ready.set()

    async def _set_peers_locked(self, nid: str) -> None:
        """Apply the stored peers of ``nid`` (caller holds its lock); failures are logged."""
        entry = self._networks.get(nid)
        if entry is None:
            return
        peers: list[Any] = []
        try:
            peers = ov.peers_of(entry, ov.data_path_addr(self.node))
            delta = await _in_thread(self.overlay.set_peers, nid, peers)
            if getattr(delta, "added", None) or getattr(delta, "removed", None):
                log.info("network %s: peers +%d -%d", nid[:12], len(delta.added), len(delta.removed))
        except Exception as e:
            log.warning("network %s: setting %d peers failed: %s", nid[:12], len(peers), e)

    async def _apply_peers(self, nid: str) -> None:
        async with self._net_lock(nid):
            if self._local.get(nid):
                await self._set_peers_locked(nid)

    async def _overlay_attach(self, cfg: NetworkConfig, ep: EndpointConfig) -> Any:
        """``ensure_network`` + peers + ``attach`` under the network's lock; returns the driver's
        Attachment (tasks, and the ingress sandbox through :mod:`worker.mesh`)."""
        await self._overlay_ready.wait()
        async with self._net_lock(cfg.network_id):
            try:
                await _in_thread(self.overlay.ensure_network, cfg)
            except VniInUse as e:
                if not await self._free_stale_vni(cfg, e):
                    raise
                await _in_thread(self.overlay.ensure_network, cfg)
            await self._set_peers_locked(cfg.network_id)
            att = await _in_thread(self.overlay.attach, ep)
            self._local.setdefault(cfg.network_id, set()).add(ep.endpoint_id)
            return att

    async def _free_stale_vni(self, cfg: NetworkConfig, err: VniInUse) -> bool:
        """``cfg``'s VNI is held by another VXLAN device: when it belongs to a network this node no
        longer knows (not in the latest push, no endpoint here — e.g. the ingress of a swarm left
        just before; a network whose only endpoints here are of tasks shutting down counts as
        unknown), remove that network's data plane (``cleanup_stale`` with the VNI) and return
        True so the caller retries once; else False (the error stands)."""
        live = {tid for tid, ctl in self._controllers.items() if not ctl._stopping()}
        known = set(self._networks) | {n for n, eps in self._local.items() if eps & live} | {cfg.network_id}
        try:
            removed = await _in_thread(self.overlay.cleanup_stale, sorted(known), cfg.vni)
        except Exception as e:
            log.warning("network %s: freeing VNI %d failed: %s", cfg.network_id[:12], cfg.vni, e)
            return False
        if removed:
            log.warning("network %s: VNI %d was held by a stale data plane (%s): removed it",
                        cfg.network_id[:12], err.vni, ", ".join(removed))
        return bool(removed)

    async def _overlay_detach(self, ep: EndpointConfig) -> None:
        async with self._net_lock(ep.network_id):
            await _in_thread(self.overlay.detach, ep)
            tids = self._local.get(ep.network_id)
            if tids is not None:
                tids.discard(ep.endpoint_id)
                if not tids:
                    del self._local[ep.network_id]


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await ``fn(*args)`` if it is a coroutine function, else run it in a thread (it may do file I/O)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await _maybe_await(await asyncio.to_thread(fn, *args))


def _stop_grace(task: dict[str, Any]) -> float:
    """Seconds of the task's ``StopGracePeriod`` (ns; :data:`DEFAULT_STOP_GRACE_S` when unset)."""
    grace_ns = Task(task).container_spec.get("StopGracePeriod")
    try:
        return DEFAULT_STOP_GRACE_S if grace_ns is None else max(0.0, int(grace_ns) / 1e9)
    except (TypeError, ValueError):
        return DEFAULT_STOP_GRACE_S


class _Interrupted(Exception):
    """The desired state moved to shutdown/remove while an operation was in flight."""


def runtime_mounts(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn the API's ``ContainerSpec.Mounts`` (``Type`` bind | tmpfs) into the runtime's mount dicts
    (``agent_runtime.spec.ContainerSpec.mounts``). A bind ``Source`` must be an absolute path that
    exists on this node (``BindOptions.CreateMountpoint`` creates a missing directory, as Docker
    API 1.42+). Raises ValueError (the task is then ``rejected`` with this message), with moby's
    wording (MOBY: daemon/cluster/executor/container/validate.go, volume/mounts/linux_parser.go)."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        mtype, target = m.get("Type"), m.get("Target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise ValueError(f"invalid mount target, must be an absolute path: {target}")
        read_only = bool(m.get("ReadOnly"))
        if mtype == "bind":
            source = m.get("Source")
            if not isinstance(source, str) or not source.startswith("/"):
                raise ValueError(f"invalid bind mount source, must be an absolute path: {source}")
            bo = m.get("BindOptions") or {}
            if not os.path.exists(source):
                if not bo.get("CreateMountpoint"):
                    raise ValueError(f'invalid mount config for type "bind": bind source path does not exist: '
                                     f"{source} (create it on this node, or set BindOptions.CreateMountpoint)")
                os.makedirs(source, exist_ok=True)
            out.append({"type": "bind", "source": source, "target": target, "read_only": read_only,
                        "propagation": bo.get("Propagation") or None, "recursive": not bo.get("NonRecursive")})
        elif mtype == "tmpfs":
            to = m.get("TmpfsOptions") or {}
            out.append({"type": "tmpfs", "target": target, "read_only": read_only,
                        "size_bytes": to.get("SizeBytes") or None, "mode": to.get("Mode") or None})
        else:
            raise ValueError(f"mount type {mtype!r} for {target} is not supported by shoal: use bind or tmpfs")
    return out


class _Controller:
    """Drives one task; see the module docstring for the state machine."""

    def __init__(self, ex: Executor, task: dict[str, Any], synthetic: bool = False) -> None:
        self.ex = ex
        self.task = task
        self.tid: str = task["ID"]
        self.cid = container_id_for(self.tid)
        self.synthetic = synthetic  # made by recover() before the task's spec was known
        self.state: str = Task(task).status.get("State") or "new"
        self.vanished = False
        self.cstate: Any = None  # the runtime's ContainerState, when a container exists
        self.exit_code: int | None = None
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._exit_wait: asyncio.Task[int] | None = None
        self._net_attached = False
        self._overlay_eps: list[EndpointConfig] = []  # overlay endpoints attached (or tried) in prepare
        self._overlay_recovered = False  # the container was found at start: its endpoints are the task's
        self._dns_ep: DnsEndpoint | None = None  # the embedded DNS serving this container (overlay tasks)
        self._dns_recovered = False  # _recover_dns tried for the container found at start
        self._last_status: dict[str, Any] | None = None
        self._last_sent = 0.0
        self.health: whealth.ContainerHealth | None = None  # the running container's health check
        self._health_looked = False  # _health_setup ran (once: it reads the image's config)

    # ------------------------------------------------------------ plumbing
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"task-{self.tid}")

    def update(self, task: dict[str, Any]) -> None:
        was_recovered = self.synthetic
        self.task = task
        self.synthetic = False
        self.vanished = False
        # The manager is behind what we observed: a report may have been lost (recover() reports before
        # the session is up).  Send the last status again: at once for a recovered task, else when it
        # is more than 5 s old (reports in flight are normally a few batches behind, not 5 s).
        seen = str(Task(task).status.get("State") or "new")
        if (self._last_status is not None and state_order(seen, 0) < state_order(self.state, 0)
                and (was_recovered or time.monotonic() - self._last_sent > 5.0)):
            self._last_sent = time.monotonic()
            asyncio.get_running_loop().create_task(self.ex._send(self.tid, dict(self._last_status)))
        self._wake.set()

    def vanish(self) -> None:
        self.vanished = True
        self._wake.set()

    def cancel(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self._runner is not None:
            self._runner.cancel()
        if self._exit_wait is not None:
            self._exit_wait.cancel()

    async def join(self) -> None:
        for t in (self._runner, self._exit_wait):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def desired(self) -> str:
        if self.vanished:
            return "remove"
        return str(self.task.get("DesiredState") or "running")

    def _stopping(self) -> bool:
        return state_order(self.desired(), 0) >= SHUTDOWN

    async def report(self, state: str, err: str | None = None, message: str | None = None) -> None:
        if state == self.state:
            return
        self.state = state
        status: dict[str, Any] = {"Timestamp": now_rfc3339(), "State": state,
                                  "Message": message or MESSAGES.get(state, state)}
        if err is not None:
            status["Err"] = err
        if self.cstate is not None or state in ("running", "complete", "failed", "shutdown"):
            pid = int(getattr(self.cstate, "pid", 0) or 0) if state == "running" else 0
            status["ContainerStatus"] = {"ContainerID": self.cid if self.cstate is not None else "",
                                         "PID": pid, "ExitCode": self.exit_code or 0}
            if self.health is not None:  # Docker's State.Health, for `docker inspect` of the task
                status["ContainerStatus"]["Health"] = self.health.to_docker()
        log.info("task %s -> %s%s", self.tid, state, f" ({err})" if err else "")
        self._last_status, self._last_sent = status, time.monotonic()
        await self.ex._send(self.tid, status)

    async def _interruptible(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; cancel it and raise _Interrupted if the task is asked to stop meanwhile."""
        op: asyncio.Future[T] = asyncio.ensure_future(aw)
        try:
            while True:
                if self._stopping():
                    raise _Interrupted()
                self._wake.clear()
                waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait([op, waker], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                if op.done():
                    return op.result()
        except BaseException:
            if not op.done():
                op.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await op
            raise

    # ------------------------------------------------------------ main loop
    async def _run(self) -> None:
        backoff = 0.5
        try:
            self.cstate = await self.ex._container_state(self.cid)
            if self.cstate is not None:
                self._net_attached = True  # whatever it had stays until removal
                self._overlay_recovered = True
            while True:
                self._wake.clear()
                try:
                    done = await self._step()
                    backoff = 0.5
                except _Interrupted:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("task %s in state %s: %s", self.tid, self.state, e)
                    try:
                        await self._fail(str(e) or type(e).__name__)
                    except Exception:
                        log.exception("task %s: reporting the failure failed", self.tid)
                    # do not spin on a step that keeps failing (e.g. remove): retry later or on a change
                    with contextlib.suppress(TimeoutError):
                        await wait_timeout(self._wake.wait(), backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if done:
                    return
        except asyncio.CancelledError:
            pass
        finally:
            if self._exit_wait is not None:
                self._exit_wait.cancel()

    async def _fail(self, err: str) -> None:
        if self.state in TERMINAL_STATES:
            return
        await self.report("rejected" if state_order(self.state, 0) < STATE_ORDER["starting"] else "failed", err=err)
        await self._release_network()

    async def _idle(self) -> None:
        await self._wake.wait()

    async def _step(self) -> bool:
        """Do one thing; return True when the controller is finished (task removed)."""
        s = self.state
        if self._stopping():
            if s not in TERMINAL_STATES:
                await self._shutdown()
                return False
            if self.desired() == "remove":
                await self._remove()
                return True
            await self._idle()
            return False
        if self.synthetic:
            # recovered before the task was assigned: report what the container really does, but
            # start nothing until the assignment says the task should run
            if self.cstate is not None and self.cstate.status == "created":
                await self._idle()
                return False
            await self._observe_container()
            if self.state not in TERMINAL_STATES:
                await self._watch_running()
            else:
                await self._idle()
            return False
        if s in TERMINAL_STATES:
            await self._idle()
            return False
        if state_order(s, 0) < STATE_ORDER["accepted"]:
            if self.cstate is not None:  # a container from an earlier daemon run
                await self._observe_container()
            else:
                await self.report("accepted")
            return False
        if s == "accepted":
            await self.report("preparing")
            return False
        if s in ("preparing", "ready"):
            if self.cstate is None:
                await self._interruptible(self._prepare())
            elif self.cstate.status == "created":
                await self.report("starting")
            else:
                await self._observe_container()
            return False
        if s == "starting":
            if self.cstate is None:
                await self._fail(f"container {self.cid[:12]} not found on this node")
            elif self.cstate.status == "created":
                await self._start()
            elif self.health is not None:
                await self._watch_running()  # until healthy (running), unhealthy or exited
            else:
                await self._observe_container()
            return False
        if s == "running":
            if self.cstate is None:
                await self._fail(f"container {self.cid[:12]} not found on this node")
            else:
                await self._watch_running()
            return False
        await self._idle()  # an unknown state: wait for the manager to change something
        return False

    # ------------------------------------------------------------- actions
    async def _prepare(self) -> None:
        spec = Task(self.task).container_spec
        image = spec.get("Image")
        if not image or not isinstance(image, str):
            raise ValueError("task spec has no ContainerSpec.Image")
        # network
        addr, subnet, gateway = self._network()
        overlays = self._overlay_configs(addr)
        netns_path: str | None = None
        if addr is not None:
            if subnet is None or gateway is None:
                raise ValueError(
                    "task has an address but the node has no bridge subnet (Node.ShoalBridge) "
                    "and the attachment no IPAMOptions.Configs")
            await _in_thread(self.ex.bridge.ensure, subnet, gateway)
        # image: pull unless present (the store de-duplicates concurrent pulls)
        if await _maybe_await(self.ex.images.get(image)) is None:
            # shielded: another task may share this pull; leaving early must not cancel it
            await asyncio.shield(self.ex.images.pull(image))
        try:
            if addr is not None:
                netns_path = await _in_thread(self.ex.bridge.attach, self.cid, addr, gateway)
                self._net_attached = True
            if overlays:
                assert netns_path is not None
                await self._attach_overlays(overlays, netns_path)
                await self._serve_dns([cfg.network_id for cfg, _, _ in overlays], netns_path)
                await self.ex.net.task_up(self.tid, netns_path, [cfg.network_id for cfg, _, _ in overlays])
            cspec = self._container_spec(spec, image, netns_path, addr, embedded_dns=bool(overlays))
            await self._health_setup(spec, image)
            self.cstate = await self.ex.runtime.create(cspec)
        except BaseException:
            await self._release_network()
            raise

    def _network(self) -> tuple[str | None, str | None, str | None]:
        # the local bridge's attachment: the first one that is not an overlay's (NetworksAttachments[0])
        atts = [a for a in self.task.get("NetworksAttachments") or []
                if not (isinstance(a, dict) and ov.is_overlay(a.get("Network")))]
        if not atts:
            return None, None, None
        att = atts[0]
        addrs = att.get("Addresses") or []
        if not addrs:
            return None, None, None
        sb = Node(self.ex.node).bridge
        subnet, gateway = sb.get("Subnet"), sb.get("Gateway")
        if not subnet or not gateway:
            cfgs = ((att.get("Network") or {}).get("IPAMOptions") or {}).get("Configs") or []
            if cfgs:
                subnet, gateway = cfgs[0].get("Subnet"), cfgs[0].get("Gateway")
        return str(addrs[0]), subnet, gateway

    def _overlay_configs(self, addr: str | None) -> list[tuple[NetworkConfig, str, str]]:
        """``[(config, address, label)]`` of the task's overlay attachments, in order; [] for none.
        Raises ValueError naming the network when one cannot be set up here."""
        atts = ov.overlay_attachments(self.task)
        if not atts:
            return []
        if self.ex.overlay is None:
            raise ValueError(f"network {atts[0].label}: overlay networks are not supported on this node "
                             "(no overlay driver)")
        if addr is None:
            raise ValueError(f"network {atts[0].label}: the task has no local bridge address (eth0), so "
                             "it has no network namespace to attach the overlay to")
        dp = ov.data_path_addr(self.ex.node)
        return [(ov.network_config(a.network, dp, self.ex.data_path_port), a.address, a.label) for a in atts]

    async def _attach_overlays(self, overlays: list[tuple[NetworkConfig, str, str]], netns_path: str) -> None:
        """``ensure_network`` + ``attach`` each overlay as ``eth1``, ``eth2``… in order; a failure
        raises RuntimeError naming the network (the caller releases what was made)."""
        for i, (cfg, address, label) in enumerate(overlays, start=1):
            ep = EndpointConfig(cfg.network_id, self.tid, netns_path, address, ifname=f"eth{i}")
            self._overlay_eps.append(ep)  # released even if attach fails half-way (detach is idempotent)
            try:
                await self.ex._overlay_attach(cfg, ep)
            except Exception as e:
                raise RuntimeError(f"attaching to network {label} failed: {e or type(e).__name__}") from e

    async def _serve_dns(self, network_ids: list[str], netns_path: str) -> None:
        """The embedded DNS at 127.0.0.11:53 in the container's namespace, for ``network_ids``.
        Raises RuntimeError saying so when it cannot be set up (the caller releases the network)."""
        try:
            udp, tcp = await _in_thread(self.ex._dns_sockets, netns_path)
            self._dns_ep = await self.ex.resolver.serve_socket(udp, tcp, networks=network_ids)
        except Exception as e:
            raise RuntimeError(f"setting up the embedded DNS server ({wdns.DNS_ADDR}:{wdns.DNS_PORT}) in the "
                               f"container's network namespace failed: {e or type(e).__name__}") from e

    async def _recover_dns(self) -> None:
        """A running container found at start (a daemon restart) on overlay networks: its embedded
        DNS again, in ``/proc/<pid>/ns/net`` (once; a failure is logged, the container keeps running)."""
        if self._dns_ep is not None or self._dns_recovered or not self._overlay_recovered:
            return
        try:
            nids = [a.network_id for a in ov.overlay_attachments(self.task)]
        except ValueError:
            nids = []
        pid = int(getattr(self.cstate, "pid", 0) or 0)
        if not nids or pid <= 0 or getattr(self.cstate, "status", None) != "running":
            return
        self._dns_recovered = True
        try:
            await self._serve_dns(nids, f"/proc/{pid}/ns/net")
            await self.ex.net.task_up(self.tid, f"/proc/{pid}/ns/net", nids)
        except Exception as e:
            log.warning("task %s: %s", self.tid, e)

    async def _stop_dns(self) -> None:
        ep, self._dns_ep = self._dns_ep, None
        if ep is not None:
            try:
                await ep.close()
            except Exception:
                log.exception("task %s: closing its embedded DNS failed", self.tid)

    def _overlay_endpoints(self) -> list[EndpointConfig]:
        """What to detach: the endpoints made in prepare, else (a recovered container) the task's."""
        if self._overlay_eps or self.ex.overlay is None:
            return list(self._overlay_eps)
        try:
            atts = ov.overlay_attachments(self.task)
        except ValueError:
            return []
        return [EndpointConfig(a.network_id, self.tid, "", a.address) for a in atts]

    async def _release_overlays(self) -> None:
        eps = self._overlay_endpoints()
        self._overlay_eps = []
        self._overlay_recovered = False
        for ep in eps:
            try:
                await self.ex._overlay_detach(ep)
            except Exception:
                log.exception("task %s: detaching from network %s failed", self.tid, ep.network_id[:12])

    def _container_spec(self, spec: dict[str, Any], image: str, netns_path: str | None,
                        addr: str | None, embedded_dns: bool = False) -> Any:
        res = Task(self.task).limits
        ip = addr.split("/")[0] if addr else None
        hostname = spec.get("Hostname") or None
        labels = {LABEL_TASK: self.tid}
        if self.task.get("ServiceID"):
            labels[LABEL_SERVICE] = str(self.task["ServiceID"])
        if self.ex.node.get("ID"):
            labels[LABEL_NODE] = str(self.ex.node["ID"])
        hosts: list[tuple[str, str]] = []
        for line in spec.get("Hosts") or []:  # "IP_ADDRESS HOSTNAME [ALIAS…]" or "HOSTNAME:IP"
            hosts.extend(parse_extra_host(str(line)))
        dns = spec.get("DNSConfig") or {}
        # swarmkit's Task.LogDriver (the service's or the cluster's default) wins over the spec's
        driver = self.task.get("LogDriver") or Task(self.task).log_driver
        if not isinstance(driver, dict):
            raise ValueError(f"task LogDriver must be an object, got {type(driver).__name__}")
        check_driver(driver.get("Name"))
        log_opts = check_options(driver.get("Options"))
        caps_add = spec.get("CapabilityAdd") or []
        caps_drop = spec.get("CapabilityDrop") or []
        kw: dict[str, Any] = dict(
            id=self.cid, image=image, command=spec.get("Command") or None, args=spec.get("Args") or None,
            env=list(spec.get("Env") or []), cwd=spec.get("Dir") or None, user=spec.get("User") or None,
            hostname=hostname, netns=netns_path, hosts=hosts,
            memory_bytes=res.get("MemoryBytes") or None, nano_cpus=res.get("NanoCPUs") or None,
            pids_limit=res.get("Pids") or None, labels=labels,
            stop_signal=spec.get("StopSignal") or "SIGTERM",
            read_only=bool(spec.get("ReadOnly")), mounts=runtime_mounts(spec.get("Mounts") or []),
            dns=list(dns.get("Nameservers") or []), dns_search=list(dns.get("Search") or []),
            dns_options=[str(o) for o in dns.get("Options") or []],
            cap_add=[str(c) for c in caps_add], cap_drop=[str(c) for c in caps_drop],
            ulimits=[{"name": str(u.get("Name", "")), "soft": int(u.get("Soft", 0)), "hard": int(u.get("Hard", 0))}
                     for u in spec.get("Ulimits") or []],
            sysctls={str(k): str(v) for k, v in (spec.get("Sysctls") or {}).items()},
            groups=[str(g) for g in spec.get("Groups") or []],
            oom_score_adj=int(spec["OomScoreAdj"]) if spec.get("OomScoreAdj") is not None else None,
            log_opts=log_opts)
        if embedded_dns:  # the embedded DNS answers, and forwards to the host's resolvers
            kw["dns"] = [wdns.DNS_ADDR]
            kw["dns_options"] = wdns.dns_options(kw["dns_options"])
        names = {f.name for f in dc_fields(ContainerSpec)}
        if ip is not None:
            if "ip" in names:
                kw["ip"] = ip  # the runtime writes "<ip> <hostname>" to /etc/hosts
            else:
                kw["hosts"].append((hostname or self.cid[:12], ip))
        return ContainerSpec(**{k: v for k, v in kw.items() if k in names})

    async def _start(self) -> None:
        try:
            self.cstate = await self._interruptible(
                asyncio.wait_for(self.ex.runtime.start(self.cid), self.ex.start_timeout))
        except TimeoutError:
            st = await self.ex._container_state(self.cid)
            if getattr(st, "status", None) != "running":
                self.cstate = st
                await self._fail(f"container {self.cid[:12]} did not start within {self.ex.start_timeout:g} s")
                return
            log.warning("task %s: runtime.start did not return within %g s but the container runs",
                        self.tid, self.ex.start_timeout)
            self.cstate = st
        except _Interrupted:
            raise  # shutdown asked for meanwhile: the shutdown step stops whatever was started
        except Exception as e:
            self.cstate = await self.ex._container_state(self.cid)
            code = getattr(self.cstate, "exit_code", None)
            if code is not None:
                self.exit_code = int(code)
            await self._fail(str(e) or type(e).__name__)
            return
        if getattr(self.cstate, "status", None) == "exited":
            # exited before start returned (e.g. 127: command not found): no "running" to report
            code = self.cstate.exit_code
            await self._exited(int(code if code is not None else -1), getattr(self.cstate, "error", None))
            return
        self._ensure_exit_wait()
        if self.health is not None:  # with a health check: "starting" until the first passing probe
            self.health.start()
            return
        await self.report("running")

    async def _observe_container(self) -> None:
        """Report the state the existing container is really in (after a restart)."""
        st = await self.ex._container_state(self.cid)
        self.cstate = st
        if st is None:
            await self._fail(f"container {self.cid[:12]} not found on this node")
        elif st.status == "running":
            self._ensure_exit_wait()
            await self.report("running")
        elif st.status == "exited":
            await self._exited(int(st.exit_code if st.exit_code is not None else -1))
        elif st.status == "created":
            if state_order(self.state, 0) < STATE_ORDER["starting"]:
                await self.report("starting")  # the next step starts it
            else:
                await self._start()
        else:
            await self._idle()

    def _ensure_exit_wait(self) -> None:
        if self._exit_wait is None:
            self._exit_wait = asyncio.get_running_loop().create_task(self.ex.runtime.wait(self.cid))

    async def _watch_running(self) -> None:
        """Wait for the container to exit or for a change of the task; report the exit."""
        await self._recover_dns()
        self._ensure_exit_wait()
        assert self._exit_wait is not None
        if self.health is None and not self.synthetic:  # a container found at start: its check again
            await self._health_setup(Task(self.task).container_spec, None)
        if self.health is not None:
            self.health.start()
        waker = asyncio.ensure_future(self._wake.wait())
        hc = asyncio.ensure_future(self.health.changed.wait()) if self.health is not None else waker
        try:
            await asyncio.wait({self._exit_wait, waker, hc}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            hc.cancel()
        if self._exit_wait.done() and not self._stopping():
            await self._exited(self._exit_result())
        elif self.health is not None and not self._stopping():
            self.health.changed.clear()
            if self.health.status == whealth.UNHEALTHY:
                await self._unhealthy()
            elif self.health.status == whealth.HEALTHY and self.state == "starting":
                await self.report("running")

    def _exit_result(self) -> int:
        assert self._exit_wait is not None
        try:
            return int(self._exit_wait.result())
        except Exception as e:
            log.warning("task %s: wait for container failed: %s", self.tid, e)
            return -1

    async def _exited(self, code: int, detail: str | None = None) -> None:
        """Report ``complete`` (0) or ``failed`` with Swarm's Err; ``detail`` (the runtime's error) goes
        to Message."""
        self.exit_code = code
        self.cstate = await self.ex._container_state(self.cid) or self.cstate
        if detail is None:
            detail = getattr(self.cstate, "error", None)
        if code == 0:
            await self.report("complete")
        else:
            # the runtime's own error (e.g. `exec: "x": executable file not found in $PATH`) is
            # what a user needs in `service ps`'s ERROR column, as Docker shows it
            err = f"starting container failed: {detail}" if detail else f"task: non-zero exit ({code})"
            await self.report("failed", err=err, message=detail or None)
        await self._release_network()

    async def _health_setup(self, spec: dict[str, Any], image: str | None) -> None:
        """``self.health`` from the spec's and the image's check (:func:`worker.health.task_config`);
        None without a check or when the runtime cannot exec. Raises ValueError for a bad check."""
        if self._health_looked or not hasattr(self.ex.runtime, "exec"):
            return
        self._health_looked = True
        image = image or spec.get("Image")
        img = await _maybe_await(self.ex.images.get(image)) if isinstance(image, str) and image else None
        try:
            cfg = whealth.task_config(spec, getattr(img, "config", None))
        except whealth.HealthConfigError as e:
            raise ValueError(str(e)) from e
        if cfg is not None:
            self.health = whealth.ContainerHealth(cfg, self.ex.runtime, self.cid)

    async def _unhealthy(self) -> None:
        """The check failed: stop the container (StopSignal, then SIGKILL after the grace period) and
        fail the task with Swarm's error ``task: non-zero exit (N): dockerexec: unhealthy container``."""
        spec = Task(self.task).container_spec
        grace = _stop_grace(self.task)
        assert self.health is not None
        self.health.stop()
        log.warning("task %s: unhealthy container, stopping it", self.tid)
        await self.ex.runtime.stop(self.cid, grace, spec.get("StopSignal") or "SIGTERM")
        code = -1
        if self._exit_wait is not None:
            try:
                code = int(await asyncio.wait_for(asyncio.shield(self._exit_wait), grace + 10.0))
            except (TimeoutError, Exception) as e:
                log.warning("task %s: no exit code after stop: %s", self.tid, e)
        self.exit_code = code
        self.cstate = await self.ex._container_state(self.cid) or self.cstate
        await self.report("failed", err=f"task: non-zero exit ({code}): dockerexec: unhealthy container")
        await self._release_network()

    async def _shutdown(self) -> None:
        spec = Task(self.task).container_spec
        grace = _stop_grace(self.task)
        signal = spec.get("StopSignal") or "SIGTERM"
        self.cstate = await self.ex._container_state(self.cid)
        if self.cstate is not None and self.cstate.status == "running":
            await self.ex.runtime.stop(self.cid, grace, signal)
            self._ensure_exit_wait()
            assert self._exit_wait is not None
            try:
                self.exit_code = int(await asyncio.wait_for(asyncio.shield(self._exit_wait), grace + 10.0))
            except (TimeoutError, Exception) as e:
                log.warning("task %s: no exit code after stop: %s", self.tid, e)
            self.cstate = await self.ex._container_state(self.cid)
        elif self.cstate is not None and self.cstate.exit_code is not None:
            self.exit_code = int(self.cstate.exit_code)
        await self.report("shutdown")
        await self._release_network()

    async def _release_network(self) -> None:
        if self.health is not None:
            self.health.stop()
        await self.ex.net.task_down(self.tid)
        await self._stop_dns()
        if self._overlay_eps or self._overlay_recovered:
            await self._release_overlays()
        if self._net_attached:
            await _in_thread(self.ex.bridge.detach, self.cid)
            self._net_attached = False

    async def _remove(self) -> None:
        if await self.ex._container_state(self.cid) is not None:
            await self.ex.runtime.remove(self.cid)
        self.cstate = None
        await self.ex.net.task_down(self.tid)
        await self._stop_dns()
        await self._release_overlays()  # idempotent; no driver call for a task without overlays
        await _in_thread(self.ex.bridge.detach, self.cid)  # idempotent, also for half-made ones
        self._net_attached = False
        self.ex._recovered.pop(self.cid, None)
        self.ex._forget(self.tid, self)
        if not self.vanished:
            self.ex._removed.add(self.tid)

