"""``shoald``: the Shoal daemon, one per host.

It serves the Docker Engine API (v1.41 shapes) on a unix socket, runs the worker role on every
node (agent + executor + container runtime + local bridge) and, on managers, the control plane
(``manager.Manager``). ``swarm init`` / ``swarm join`` / ``swarm leave`` (:mod:`.swarmflow`) move the
node between roles at run time, and so do ``node promote`` / ``demote`` (followed here); the node's
local state (``state.json`` and ``certs/`` under the data root, :mod:`.state`) makes a restarted
daemon come back in the same role, re-attached to its running containers. ``/version`` and ``/info``
are made by :mod:`.sysinfo`.

Docs followed: Docker Engine API v1.41 (``/_ping``, ``/version``, ``/info``, ``/swarm/*``,
``/images/*``, ``/distribution/{name}/json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import socket
from pathlib import Path
from typing import Any

from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from manager.manager import Manager
from overlaynet.bridge import LocalBridge
from overlaynet.mesh import IngressSandbox
from overlaynet.vxlan import VxlanDriver
from shoal.daemon import swarmflow, sysinfo
from shoal.daemon.state import LocalState, secure_data_root
from shoal.daemon.sysinfo import API_VERSION, MIN_API_VERSION, node_description
from worker.agent import Agent
from worker.executor import Executor
from worker.hostports import HostPorts
from worker.join import JoinError, renew_certificate
from worker.vip import VipBalancers

__all__ = ["API_VERSION", "CONSISTENCY_HEADER", "MIN_API_VERSION", "Daemon", "log"]

log = logging.getLogger("shoald")


CONSISTENCY_HEADER = "X-Shoal-Consistency"
"""``X-Shoal-Consistency: local`` on a GET reads this manager's store as it is (no ReadIndex)."""


class Daemon:
    """One host's daemon: API server, worker role always, manager role when this node is one.

    Args (from the command line, see ``main``): data_root, exec_root, socket path, OCI runtime
    name (``shoal`` or ``runc``), cgroup parent, insecure registries, dispatcher heartbeat period
    (seconds), listen port for 2377.
    """

    def __init__(self, args: argparse.Namespace) -> None:

        self.args = args
        self.data_root = Path(args.data_root)
        self.exec_root = Path(args.exec_root)
        self.engine_labels: dict[str, str] = dict(getattr(args, "label", None) or [])
        secure_data_root(self.data_root)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.state = LocalState(self.data_root / "state.json")
        self.certs_dir = self.data_root / "certs"
        self.images = ImageStore(self.data_root / "images", list(args.insecure_registry or []),
                                 max_layer_size=args.max_layer_size)
        self.runtime = Runtime(
            self.data_root / "containers", self.exec_root, self.images,
            cgroup_parent=args.cgroup_parent, oci_runtime=args.runtime,
            log_opts=args.log_opts,
        )
        self.bridge = LocalBridge("shoal0", self.exec_root)
        # overlay networks (issue 9): their namespace files in a directory of their own, not the
        # bridge's exec_root/netns (whose cleanup removes every file there)
        self.overlay = VxlanDriver(self.exec_root / "overlay-netns")
        # service VIPs, the ingress routing mesh (its sandbox namespace in a directory of its own)
        # and host-mode ports (issue 9)
        self.executor = Executor(self.runtime, self.images, self.bridge, self._report, overlay=self.overlay,
                                 vips=VipBalancers(), ingress_sandbox=IngressSandbox(self.exec_root / "ingress-netns"),
                                 host_ports=HostPorts(),
                                 ingress_keep_client_addr=bool(getattr(args, "ingress_keep_client_addr", False)))
        self.manager: Any = None
        self.agent: Any = None
        self._swarm_lock = asyncio.Lock()
        self._role_switch: asyncio.Task[None] | None = None
        self._removal: asyncio.Task[None] | None = None
        self.hostname = socket.gethostname()

    # ---- status path: executor → agent → dispatcher

    def _report(self, task_id: str, status: dict[str, Any]) -> None:
        if self.agent is not None:
            self.agent.report(task_id, status)

    # ---- roles

    async def start_manager_role(self, force_new_cluster: bool = False, state: dict[str, Any] | None = None) -> None:
        """Start the manager role from ``state`` (default: ``state.json``'s). Raises what
        ``Manager.start`` raises (``OSError`` when the cluster port cannot be bound), after
        stopping what it started."""

        data = self.state.data if state is None else state
        mgr = Manager(
            data_dir=self.data_root / "manager",
            certs_dir=self.certs_dir,
            node_id=data["NodeID"],
            advertise_addr=data["AdvertiseAddr"],
            listen_addr=data.get("ListenAddr") or f"0.0.0.0:{self.args.port}",
            heartbeat_period=self.args.heartbeat_period,
            heartbeat_misses=self.args.heartbeat_misses,
            raft_tick=self.args.raft_tick,
            force_new_cluster=force_new_cluster,
        )
        try:
            await mgr.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await mgr.stop()
            raise
        self.manager = mgr

    async def start_worker_role(self) -> None:
        """Start the worker role (the agent, talking to the managers ``state.json`` records; a
        manager's agent also tries its own manager). Needs a node in a swarm."""
        managers = list(self.state.data["ManagerAddrs"])
        own = self.state.data.get("AdvertiseAddr")
        if self.state.data.get("Role") == "manager" and own and own not in managers:
            managers.append(own)  # a manager's agent can always try its own manager
        self.agent = Agent(
            node_id=self.state.data["NodeID"],
            managers=managers,
            certs_dir=self.certs_dir,
            executor=self.executor,
            description=node_description(self.hostname, self.engine_labels),
            advertise_addr=self.state.data.get("AdvertiseAddr", "").rsplit(":", 1)[0],
            on_node=self._on_node,
            on_managers=self._on_managers,
            on_removed=self._on_removed,
        )
        self.agent.start()

    def _on_removed(self, reason: str) -> None:
        """The agent was refused as removed from the swarm (its loop has ended): leave the swarm
        locally in the background (:func:`shoal.daemon.swarmflow.removed_from_swarm`)."""
        if self._removal is None or self._removal.done():
            self._removal = asyncio.create_task(self._leave_removed(self.agent, reason), name="removed-from-swarm")

    async def _leave_removed(self, agent: Any, reason: str) -> None:
        async with self._swarm_lock:
            if self.agent is not agent:
                return  # a leave, join or stop came first
            try:
                await swarmflow.removed_from_swarm(self, reason)
            except Exception:
                log.exception("leaving the swarm after this node's removal failed")

    def _on_managers(self, managers: list[str]) -> None:
        """Remember the managers the agent learned, for the next start."""
        if self.state.in_swarm and managers and managers != self.state.data.get("ManagerAddrs"):
            self.state.save({**self.state.data, "ManagerAddrs": list(managers)})

    def _on_node(self, node: dict[str, Any]) -> None:
        """Follow ``node promote``/``demote``: when the spec's role differs from this node's,
        switch roles in the background (one switch at a time)."""
        want = (node.get("Spec") or {}).get("Role")
        if want not in ("manager", "worker") or want == self.state.data.get("Role"):
            return
        if self._role_switch is not None and not self._role_switch.done():
            return
        self._role_switch = asyncio.create_task(self._switch_role(node), name="role-switch")

    async def _switch_role(self, node: dict[str, Any]) -> None:
        """Promotion: renew the certificate as a manager (with the CA key), start the manager role
        and join Raft. Demotion: once the leader took this node out of Raft (its ManagerStatus is
        gone), stop the manager role, renew the certificate as a worker, drop the manager data."""

        want = (node.get("Spec") or {}).get("Role")
        async with self._swarm_lock:
            if not self.state.in_swarm or want == self.state.data.get("Role") or self.agent is None:
                return
            managers = list(self.agent.managers)
            try:
                if want == "manager":
                    for _ in range(10):  # the manager asked may not have applied the promotion yet
                        role = await renew_certificate(self.state.data["NodeID"], managers, self.certs_dir)
                        if role == "manager":
                            break
                        await asyncio.sleep(0.5)
                    else:
                        return
                    # state.json says manager only once the manager serves and is a Raft member:
                    # a promotion that fails (the cluster port in use) leaves a worker that
                    # restarts as one, and the next node update tries again
                    data = {**self.state.data, "Role": "manager"}
                    try:
                        await self.start_manager_role(state=data)
                        await self.manager.join_raft(managers)
                    except BaseException:
                        if self.manager is not None:
                            with contextlib.suppress(Exception):
                                await self.manager.stop()
                            self.manager = None
                        raise
                    self.state.save(data)
                    own = self.state.data.get("AdvertiseAddr")
                    # (the agent may have been stopped while this promotion awaited)
                    if own and self.agent is not None and own not in self.agent.managers:
                        self.agent.managers.append(own)
                    log.info("promoted: this node is now a manager")
                else:
                    if node.get("ManagerStatus"):
                        return  # still a Raft member: the leader removes it first
                    if self.manager is not None:
                        await self.manager.stop()
                        self.manager = None
                    role = await renew_certificate(self.state.data["NodeID"], managers, self.certs_dir)
                    self.state.save({**self.state.data, "Role": role})
                    shutil.rmtree(self.data_root / "manager", ignore_errors=True)
                    log.info("demoted: this node is now a %s", role)
            except (JoinError, RuntimeError, OSError) as e:
                log.warning("role change to %s failed (retried on the next update): %s", want, e)

    async def stop_roles(self, leaving: bool = False) -> None:
        """Stop the worker role, then the manager role.

        ``leaving`` (``swarm leave``): the agent tells the dispatcher so; every task is shut down
        and removed, every DNS record and VIP state dropped, and this returns only once that is
        done (:meth:`worker.executor.Executor.wait_drained`, bounded by the tasks' longest stop
        grace period + 15 s), the routing mesh and host-mode ports are removed, and any overlay
        namespace still there is removed (:meth:`~worker.executor.Executor.drop_overlays`) — so a
        ``swarm init`` right after finds the VXLAN VNIs free."""
        if self.agent is not None:
            await self.agent.stop(leaving=leaving)
            self.agent = None
        if leaving:
            await self.executor.set_assignments({}, [], networks={})
            await self.executor.wait_drained()
            await self.executor.net.wait_idle()
            await self.executor.net.close()
            await self.executor.drop_overlays()
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None

    async def start(self) -> None:
        """Recover containers, then come back in the role ``state.json`` records."""
        await self.executor.recover()
        if self.state.in_swarm:
            if self.state.data["Role"] == "manager":
                await self.start_manager_role()
            await self.start_worker_role()

    async def stop(self) -> None:
        """Stop the roles and the task controllers; containers keep running (their shims hold them).
        A leave after this node's removal that is under way is finished first."""
        if self._removal is not None and not self._removal.done():
            with contextlib.suppress(Exception):
                await self._removal
        await self.stop_roles()
        await self.executor.close()

    # ---- swarm init / join / leave (shoal.daemon.swarmflow)

    async def swarm_init(self, body: dict[str, Any]) -> str:
        """``POST /swarm/init``: see :func:`shoal.daemon.swarmflow.swarm_init`. Returns the node ID;
        raises ``ValueError`` (400), :class:`shoal.daemon.errors.SwarmStateError` (503)."""
        return await swarmflow.swarm_init(self, body)

    async def swarm_join(self, body: dict[str, Any]) -> None:
        """``POST /swarm/join``: see :func:`shoal.daemon.swarmflow.swarm_join`. Raises
        ``ValueError`` (400), :class:`shoal.daemon.errors.SwarmStateError` (503)."""
        await swarmflow.swarm_join(self, body)

    async def swarm_leave(self, force: bool) -> None:
        """``POST /swarm/leave``: see :func:`shoal.daemon.swarmflow.swarm_leave`. Raises
        :class:`shoal.daemon.errors.SwarmStateError` (503)."""
        await swarmflow.swarm_leave(self, force)

    # ---- /_ping, /version, /info (shoal.daemon.sysinfo)

    def swarm_header(self) -> str:
        """The ``Swarm`` header of ``/_ping``: ``inactive``, ``active/manager`` or ``active/worker``."""
        if not self.state.in_swarm:
            return "inactive"
        return "active/manager" if self.state.data.get("Role") == "manager" else "active/worker"

    def version(self) -> dict[str, Any]:
        """The ``GET /version`` body."""
        return sysinfo.version()

    def info(self) -> dict[str, Any]:
        """The ``GET /info`` body."""
        return sysinfo.info(
            hostname=self.hostname, state=self.state, manager=self.manager,
            containers=self.runtime.list(), image_count=len(self.images.list()),
            data_root=self.data_root, insecure_registries=list(self.args.insecure_registry or []),
            default_runtime=self.args.runtime, engine_labels=self.engine_labels)
