"""``shoald``: the Shoal daemon, one per host.

It serves the Docker Engine API (v1.41 shapes) on a unix socket, runs the worker role on every
node (agent + executor + container runtime + local bridge) and, on managers, the control plane
(``manager.Manager``). ``swarm init`` / ``swarm join`` / ``swarm leave`` move the node between
roles at run time; the node's local state (``state.json`` and ``certs/`` under the data root)
makes a restarted daemon come back in the same role, re-attached to its running containers.

Docs followed: Docker Engine API v1.41 (``/_ping``, ``/version``, ``/info``, ``/swarm/*``,
``/images/*``, ``/distribution/{name}/json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from manager.manager import Manager, initial_swarm_spec
from overlaynet.bridge import LocalBridge
from shoal import __version__
from shoal.base.util import now_rfc3339, private_dir, private_file
from shoal.daemon import listenaddr
from shoal.daemon.errors import SwarmStateError
from shoal.daemon.request import body_bool, body_str, body_str_list, json_type
from worker.agent import Agent
from worker.executor import Executor
from worker.join import JoinError, join, renew_certificate

log = logging.getLogger("shoald")


API_VERSION = "1.41"
MIN_API_VERSION = "1.24"

CONSISTENCY_HEADER = "X-Shoal-Consistency"
"""``X-Shoal-Consistency: local`` on a GET reads this manager's store as it is (no ReadIndex)."""


class LocalState:
    """The node's local swarm state, kept in ``<data-root>/state.json``.

    Fields: ``NodeID`` (str), ``Role`` (``manager`` | ``worker``), ``ManagerAddrs`` (list of
    ``ip:port``), ``AdvertiseAddr`` (str), ``ListenAddr`` (str). An empty state means the node is
    not in a swarm. Writes are atomic (temp file, fsync, rename).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            self.data = json.loads(path.read_text())

    @property
    def in_swarm(self) -> bool:
        return bool(self.data.get("NodeID"))

    def save(self, data: dict[str, Any]) -> None:
        self.data = data
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.data = {}
        self.path.unlink(missing_ok=True)


def secure_data_root(data_root: Path) -> None:
    """Make ``data_root`` and give it and what the daemon keeps directly under it the modes Docker
    gives its own (root only): the data root, ``certs/`` and ``manager/`` (and its ``raft/``) 0700,
    ``state.json`` and the certificates and keys 0600. Fixes a data root made by an older Shoal; the
    image store and the containers' directories fix their own (agent_runtime)."""
    private_dir(data_root)
    private_file(data_root / "state.json")
    for sub in ("certs", "manager", "manager/raft"):
        if (data_root / sub).is_dir():
            private_dir(data_root / sub)
    for name in ("ca.crt", "ca.key", "node.crt", "node.key"):
        private_file(data_root / "certs" / name)


def node_description(hostname: str | None = None) -> dict[str, Any]:
    """This host's ``Node.Description`` (Docker API shape): hostname, platform, resources, engine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "Hostname": hostname or socket.gethostname(),
        "Platform": {"Architecture": platform.machine(), "OS": "linux"},
        "Resources": {"NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000, "MemoryBytes": mem},
        "Engine": {"EngineVersion": f"shoal-{__version__}", "Plugins": [
            {"Type": "Network", "Name": "bridge"}, {"Type": "Volume", "Name": "local"}]},
    }


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
        self.executor = Executor(self.runtime, self.images, self.bridge, self._report)
        self.manager: Any = None
        self.agent: Any = None
        self._swarm_lock = asyncio.Lock()
        self._role_switch: asyncio.Task[None] | None = None
        self.hostname = socket.gethostname()

    # ---- status path: executor → agent → dispatcher

    def _report(self, task_id: str, status: dict[str, Any]) -> None:
        if self.agent is not None:
            self.agent.report(task_id, status)

    # ---- roles

    async def _start_manager(self, force_new_cluster: bool = False, state: dict[str, Any] | None = None) -> None:
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

    async def _start_agent(self) -> None:

        managers = list(self.state.data["ManagerAddrs"])
        own = self.state.data.get("AdvertiseAddr")
        if self.state.data.get("Role") == "manager" and own and own not in managers:
            managers.append(own)  # a manager's agent can always try its own manager
        self.agent = Agent(
            node_id=self.state.data["NodeID"],
            managers=managers,
            certs_dir=self.certs_dir,
            executor=self.executor,
            description=node_description(self.hostname),
            advertise_addr=self.state.data.get("AdvertiseAddr", "").rsplit(":", 1)[0],
            on_node=self._on_node,
            on_managers=self._on_managers,
        )
        self.agent.start()

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
                        await self._start_manager(state=data)
                        await self.manager.join_raft(managers)
                    except BaseException:
                        if self.manager is not None:
                            with contextlib.suppress(Exception):
                                await self.manager.stop()
                            self.manager = None
                        raise
                    self.state.save(data)
                    own = self.state.data.get("AdvertiseAddr")
                    if own and own not in self.agent.managers:
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

    async def _stop_roles(self, leaving: bool = False) -> None:
        if self.agent is not None:
            await self.agent.stop(leaving=leaving)
            self.agent = None
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None

    async def start(self) -> None:
        """Recover containers, then come back in the role ``state.json`` records."""
        await self.executor.recover()
        if self.state.in_swarm:
            if self.state.data["Role"] == "manager":
                await self._start_manager()
            await self._start_agent()

    async def stop(self) -> None:
        """Stop the roles and the task controllers; containers keep running (their shims hold them)."""
        await self._stop_roles()
        await self.executor.close()

    # ---- swarm init / join / leave

    def _discard_swarm_files(self) -> None:
        """Remove ``certs/`` and ``manager/`` of a swarm this node is not in (what an init or
        join that failed, or was interrupted before ``state.json`` was written, left behind)."""
        for d in (self.certs_dir, self.data_root / "manager"):
            if d.exists():
                log.warning("removing %s: left by a swarm init/join that did not finish", d)
                shutil.rmtree(d, ignore_errors=True)

    async def _addresses(self, body: dict[str, Any]) -> tuple[str, str, list[listenaddr.Interface]]:
        """``(listen "ip:port", advertise "ip:port" or "", interfaces)`` for an init/join
        request, by Docker's rules (:mod:`shoal.daemon.listenaddr`); the advertised address is left
        empty when the request gives none and the listen address is ``0.0.0.0`` (the caller
        picks). Raises :class:`shoal.daemon.listenaddr.AddrError` (a ``ValueError``: HTTP 400)."""
        ifaces = await listenaddr.local_interfaces()
        lhost, lport = listenaddr.resolve_listen_addr(body_str(body, "ListenAddr"), self.args.port, ifaces)
        adv = body_str(body, "AdvertiseAddr")
        if not adv and lhost == "0.0.0.0":
            return f"{lhost}:{lport}", "", ifaces
        ahost, aport = listenaddr.resolve_advertise_addr(adv, lhost, lport, ifaces)
        return f"{lhost}:{lport}", f"{ahost}:{aport}", ifaces

    async def swarm_init(self, body: dict[str, Any]) -> str:
        """``POST /swarm/init``: become the first manager of a new cluster. Returns the node ID.

        ``state.json`` is written only once the manager serves: if anything fails before (a bad
        address, the cluster port in use, a bad spec), ``certs/`` and ``manager/`` are removed
        again and the node is still not in a swarm. Raises ``ValueError`` (HTTP 400) for bad
        input and a busy listen address, :class:`SwarmStateError` (503) in a swarm already."""

        force = body_bool(body, "ForceNewCluster")
        if self.state.in_swarm and force and self.state.data.get("Role") == "manager":
            # recover from a permanent loss of quorum: keep the state, become the only member
            if self.agent is not None:
                await self.agent.stop()
                self.agent = None
            if self.manager is not None:
                await self.manager.stop()
                self.manager = None
            await self._start_manager(force_new_cluster=True)
            await self._start_agent()
            return str(self.state.data["NodeID"])
        if self.state.in_swarm:
            raise SwarmStateError(
                "This node is already part of a swarm. Use \"docker swarm leave\" to leave this "
                "swarm and join another one.")
        if force:
            raise ValueError("--force-new-cluster recovers a swarm this node is a manager of; this "
                             "node is not part of a swarm (use `swarm init` without it)")
        spec = body.get("Spec")
        if spec is not None and not isinstance(spec, dict):
            raise ValueError(f"json: cannot unmarshal {json_type(spec)} into Go struct field InitRequest.Spec "
                             "of type swarm.Spec")
        initial_swarm_spec(spec or {})  # a bad spec is refused before anything is bound or written
        listen, advertise, ifaces = await self._addresses(body)
        if not advertise:
            ip = listenaddr.system_addr(ifaces, exclude=[self.bridge.name])
            advertise = f"{ip}:{listen.rsplit(':', 1)[1]}"
        lhost, lport = listenaddr.split_host_port(listen, self.args.port, "--listen-addr")
        listenaddr.check_listen_free(lhost, lport)
        self._discard_swarm_files()
        try:
            node_id = await Manager.init_cluster(
                data_dir=self.data_root / "manager", certs_dir=self.certs_dir,
                advertise_addr=advertise, description=node_description(self.hostname),
                spec=spec or {}, heartbeat_period=self.args.heartbeat_period,
            )
            data = {"NodeID": node_id, "Role": "manager", "ManagerAddrs": [advertise],
                    "AdvertiseAddr": advertise, "ListenAddr": listen}
            await self._start_manager(state=data)
            self.state.save(data)
        except BaseException as e:
            if self.manager is not None:
                with contextlib.suppress(Exception):
                    await self.manager.stop()
                self.manager = None
            self.state.clear()
            self._discard_swarm_files()
            if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise ValueError(listenaddr.listen_error(lhost, lport, e)) from e
            raise
        await self._start_agent()
        return node_id

    async def swarm_join(self, body: dict[str, Any]) -> None:
        """``POST /swarm/join``: join with a token; a manager token makes this node a manager.

        ``state.json`` is written only once this node is in: for a manager, once its manager
        serves and is a Raft member. When the listen address is busy the join says so to the
        manager, which refuses a manager token then (a worker does not listen). Raises
        ``ValueError`` (400) for bad input, :class:`SwarmStateError` (503) when the join fails."""

        if self.state.in_swarm:
            raise SwarmStateError(
                "This node is already part of a swarm. Use \"docker swarm leave\" to leave this "
                "swarm and join another one.")
        remotes = body_str_list(body, "RemoteAddrs", "JoinRequest")
        token = body_str(body, "JoinToken")
        if not remotes:
            raise ValueError("at least 1 RemoteAddr is required to join")
        if not token:
            raise ValueError("a join token is required to join a swarm (--token)")
        remote = remotes[0] if ":" in remotes[0] else f"{remotes[0]}:2377"
        listen, advertise, _ = await self._addresses(body)
        lhost, lport = listenaddr.split_host_port(listen, self.args.port, "--listen-addr")
        if not advertise:
            # as Docker lets the manager see the joining node's address: the source address of
            # this host's route to the manager
            src = _route_source_addr(remote.rsplit(":", 1)[0])
            advertise = f"{src}:{lport}" if src else ""
        busy: str | None = None
        try:
            listenaddr.check_listen_free(lhost, lport)
        except listenaddr.AddrError as e:
            busy = str(e)
        self._discard_swarm_files()
        try:
            node_id, role, managers = await join(
                remote, token, self.hostname, advertise.rsplit(":", 1)[0], self.certs_dir,
                description=node_description(self.hostname), cannot_manage=busy or "")
        except JoinError as e:
            self._discard_swarm_files()
            if busy and busy in str(e):
                raise ValueError(f"{busy} (the join token is a manager token: a manager serves the cluster "
                                 "port there)") from e
            raise SwarmStateError(str(e)) from e
        data = {"NodeID": node_id, "Role": role, "ManagerAddrs": managers or [remote],
                "AdvertiseAddr": advertise, "ListenAddr": listen}
        if role == "manager":
            try:
                await self._start_manager(state=data)
                await self.manager.join_raft(list(dict.fromkeys([remote, *(managers or [])])))
            except (OSError, RuntimeError) as e:
                await self._stop_roles()
                self._discard_swarm_files()
                if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    raise ValueError(listenaddr.listen_error(lhost, lport, e)) from e
                raise SwarmStateError(f"joined as a manager but could not become a Raft member: {e}") from e
        self.state.save(data)
        await self._start_agent()

    async def swarm_leave(self, force: bool) -> None:
        """``POST /swarm/leave``: stop the roles, stop this node's tasks, forget the swarm."""
        if not self.state.in_swarm:
            raise SwarmStateError("This node is not part of a swarm")
        if self.state.data.get("Role") == "manager" and not force:
            msg = ("You are attempting to leave the swarm on a node that is participating as a "
                   "manager. ")
            voters = self.manager.log.driver.voters if self.manager is not None else frozenset()
            if len(voters) <= 1:
                msg += "Removing the last manager erases all current state of the swarm. "
            else:
                reachable = self.manager.log.driver.reachable_voters()
                msg += (f"Removing this node leaves {reachable - 1} managers out of {len(voters) - 1}. "
                        "Without a Raft quorum your swarm will be inaccessible. The only way to restore "
                        "a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. "
                        "Demote it first (`shoal node demote`) to leave cleanly. ")
            raise SwarmStateError(msg + "Use `--force` to ignore this message.")
        if self.manager is not None:
            try:
                await self.manager.leave_raft()
            except Exception as e:  # forced: leave anyway
                log.warning("could not leave the Raft cluster cleanly: %s", e)
        await self._stop_roles(leaving=True)
        await self.executor.set_assignments({}, [])
        self.state.clear()
        shutil.rmtree(self.certs_dir, ignore_errors=True)
        shutil.rmtree(self.data_root / "manager", ignore_errors=True)

    # ---- /_ping, /version, /info

    def swarm_header(self) -> str:
        if not self.state.in_swarm:
            return "inactive"
        return "active/manager" if self.state.data.get("Role") == "manager" else "active/worker"

    def version(self) -> dict[str, Any]:
        ver = f"shoal-{__version__}"
        return {
            "Platform": {"Name": "Shoal"},
            "Components": [{"Name": "Engine", "Version": ver,
                            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                        "Os": "linux", "Arch": _go_arch()}}],
            "Version": ver, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "", "GoVersion": f"python{platform.python_version()}", "Os": "linux",
            "Arch": _go_arch(), "KernelVersion": platform.release(), "BuildTime": "",
        }

    def info(self) -> dict[str, Any]:
        desc = node_description(self.hostname)
        containers = self.runtime.list()
        running = sum(1 for c in containers if c.status == "running")
        swarm: dict[str, Any] = {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                                 "ControlAvailable": False, "Error": "", "RemoteManagers": None}
        if self.state.in_swarm:
            d = self.state.data
            swarm.update({
                "NodeID": d["NodeID"], "NodeAddr": d.get("AdvertiseAddr", "").rsplit(":", 1)[0],
                "LocalNodeState": "active",
                "ControlAvailable": self.manager is not None,
                "RemoteManagers": [{"NodeID": "", "Addr": a} for a in d.get("ManagerAddrs", [])],
            })
            if self.manager is not None:
                swarm.update(self.manager.swarm_info())
        return {
            "ID": self.state.data.get("NodeID", ""), "Containers": len(containers),
            "ContainersRunning": running, "ContainersPaused": 0,
            "ContainersStopped": len(containers) - running, "Images": len(self.images.list()),
            "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge"], "Authorization": None,
                        "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
            "CPUShares": True, "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True,
            "Debug": False, "NFd": len(os.listdir("/proc/self/fd")),
            "NGoroutines": len(asyncio.all_tasks()), "SystemTime": now_rfc3339(),
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs",
            "CgroupVersion": "2" if _cgroup_v2_only() else "1",
            "KernelVersion": platform.release(), "OperatingSystem": _os_name(), "OSVersion": "",
            "OSType": "linux", "Architecture": platform.machine(),
            "NCPU": os.cpu_count() or 1, "MemTotal": desc["Resources"]["MemoryBytes"],
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"],
                               "IndexConfigs": {r: {"Name": r, "Mirrors": [], "Secure": False,
                                                    "Official": False}
                                                for r in (self.args.insecure_registry or [])},
                               "Mirrors": []},
            "DockerRootDir": str(self.data_root), "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": self.hostname, "Labels": [], "ExperimentalBuild": False,
            "ServerVersion": f"shoal-{__version__}",
            "Runtimes": {"shoal": {"path": "shoal-oci"}, "runc": {"path": "runc"}},
            "DefaultRuntime": self.args.runtime, "Swarm": swarm, "LiveRestoreEnabled": True,
            "Isolation": "", "InitBinary": "", "SecurityOptions": ["name=no-new-privileges"],
            "Warnings": None,
        }


def _go_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


def _cgroup_v2_only() -> bool:
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()


def _route_source_addr(dest: str) -> str | None:
    """The source address the kernel would use to reach ``dest`` (a UDP connect, no packet sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((dest, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None

