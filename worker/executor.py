"""The worker's executor: the bookkeeping of this node's tasks; each task is driven by its controller.

:class:`Executor` keeps one :class:`worker.controller.TaskController` per assigned task (made for
a new task ID, told of a new ``DesiredState``/spec, told when the task vanished from the
assignment set), the containers found at start (:meth:`Executor.recover`), the overlay networks'
local endpoints and peers, the embedded DNS records, the service VIPs, routing mesh and host-mode
ports (:mod:`worker.netplane`), and the tasks' logs. The per-task state machine (swarmkit's
``agent/exec/controller.go`` ``Do``: one state forward per step) is :mod:`worker.controller`, its
pure decision :mod:`worker.transitions`, health checks :mod:`worker.health`.

Controllers run concurrently: fifty tasks assigned at once are prepared and started in parallel
(image pulls are de-duplicated by the ImageStore).

Container IDs are derived from task IDs (:func:`container_id_for`), so after a daemon restart a
task's container is found again without any state of the executor's own. ``container_id_for``,
``runtime_mounts`` and the state messages are defined in :mod:`worker.controller` and importable
from here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from overlaynet.dns.records import DnsTable
from overlaynet.dns.server import Resolver
from overlaynet.driver import DEFAULT_DATA_PATH_PORT, EndpointConfig, NetworkConfig, VniInUse
from shoal.base.taskstate import TERMINAL_STATES
from shoal.rpc import wire
from worker import dns as wdns
from worker import overlay as ov
from worker.controller import (
    DEFAULT_START_TIMEOUT_S,
    DEFAULT_STOP_GRACE_S,
    LABEL_NODE,
    LABEL_SERVICE,
    LABEL_TASK,
    MESSAGES,
    TaskController,
    _call,
    _in_thread,
    _maybe_await,
    _stop_grace,
    container_id_for,
    runtime_mounts,
)
from worker.mesh import Mesh
from worker.netplane import NetPlane

__all__ = ["Executor", "ReportFn", "container_id_for", "runtime_mounts", "MESSAGES", "LABEL_TASK", "LABEL_SERVICE",
           "LABEL_NODE", "DEFAULT_STOP_GRACE_S", "DEFAULT_START_TIMEOUT_S", "DRAIN_MARGIN_S", "LOG_PAGE_LIMIT",
           "TaskController"]

log = logging.getLogger("shoal.worker.executor")

LOG_PAGE_LIMIT = wire.LOGS_REPLY_BYTES
"""Bytes of log records one ``read_logs_page`` returns at most, all tasks together: a record
counts its JSON line plus ``RECORD_COST``, more than it takes in msgpack, so the ``logs.read``
reply fits the manager's limit for a worker's frame (``shoal.rpc.wire.WORKER_LIMITS``); a manager may
ask for less."""

#: ``report(task_id, status)``: sync or async; ``status`` is a Docker TaskStatus dict.
ReportFn = Callable[[str, dict[str, Any]], Awaitable[None] | None]

#: Seconds ``wait_drained`` allows beyond the longest stop grace period (the exit code wait after
#: a stop is bounded by grace + 10 s; removal and network release take a few more).
DRAIN_MARGIN_S = 15.0


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
        self._controllers: dict[str, TaskController] = {}
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
                    ctl = TaskController(self, task)
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
                    ctl = TaskController(self, {"ID": tid, "DesiredState": "running",
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

    def _forget(self, task_id: str, ctl: TaskController) -> None:
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


