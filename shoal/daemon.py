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
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from manager.api import ApiError, read_body, read_json
from shoal import __version__, listenaddr
from shoal.boundedjson import MAX_JSON_BYTES
from shoal.logopts import LogOptError, parse_flags
from shoal.util import is_rfc3339, now_rfc3339, parse_rfc3339, parse_size, private_dir, private_file
from shoal.wire import WireError

log = logging.getLogger("shoald")

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
NOT_IN_SWARM = (
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" "
    "to connect this node to swarm and try again."
)
WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)


def api_error(status: int, message: str) -> web.Response:
    """An API error as Docker returns it: HTTP ``status`` with JSON ``{"message": message}``."""
    # exactly "application/json": the docker CLI decodes error bodies only with that content type
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        content_type="application/json")


def _strip_version(path: str) -> str:
    """``/v1.41/info`` → ``/info``; other paths unchanged."""
    if path.startswith("/v") and "/" in path[1:]:
        head, rest = path[1:].split("/", 1)
        if head[1:].replace(".", "").isdigit():
            return "/" + rest
    return path


SWARM_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks")
LOCAL_SWARM_PATHS = ("/swarm/init", "/swarm/join", "/swarm/leave")


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
        from agent_runtime.containers import Runtime
        from agent_runtime.images import ImageStore
        from overlaynet.bridge import LocalBridge
        from worker.executor import Executor

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
        from manager.manager import Manager

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
            api_executor=self.execute_api,
        )
        try:
            await mgr.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await mgr.stop()
            raise
        self.manager = mgr

    async def execute_api(self, method: str, path: str, headers: dict[str, str],
                          body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Run an API request against this daemon's own socket (for requests a follower manager
        forwarded to this one, the leader). Returns ``(status, headers, body)``."""
        import aiohttp

        hdrs = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        hdrs[FORWARDED_MARK] = "1"
        conn = aiohttp.UnixConnector(path=str(self.args.socket))
        async with aiohttp.ClientSession(connector=conn) as session, session.request(
                method, f"http://shoal{path}", headers=hdrs, data=body or None,
                timeout=aiohttp.ClientTimeout(total=110)) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "location")}
            return resp.status, out, data

    async def _start_agent(self) -> None:
        from worker.agent import Agent

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
        from worker.join import JoinError, renew_certificate

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
        request, by Docker's rules (:mod:`shoal.listenaddr`); the advertised address is left
        empty when the request gives none and the listen address is ``0.0.0.0`` (the caller
        picks). Raises :class:`shoal.listenaddr.AddrError` (a ``ValueError``: HTTP 400)."""
        ifaces = await listenaddr.local_interfaces()
        lhost, lport = listenaddr.resolve_listen_addr(_body_str(body, "ListenAddr"), self.args.port, ifaces)
        adv = _body_str(body, "AdvertiseAddr")
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
        from manager.manager import Manager, initial_swarm_spec

        force = _body_bool(body, "ForceNewCluster")
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
            raise ValueError(f"json: cannot unmarshal {_json_type(spec)} into Go struct field InitRequest.Spec "
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
        from worker.join import JoinError, join

        if self.state.in_swarm:
            raise SwarmStateError(
                "This node is already part of a swarm. Use \"docker swarm leave\" to leave this "
                "swarm and join another one.")
        remotes = _body_str_list(body, "RemoteAddrs", "JoinRequest")
        token = _body_str(body, "JoinToken")
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


class SwarmStateError(Exception):
    """The node's swarm state does not allow the call (Docker answers these with 503)."""


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


# ---------------------------------------------------------------------------- the HTTP API


def build_app(daemon: Daemon) -> web.Application:
    """The Docker Engine API application: local routes plus the manager's swarm routes."""
    from manager.api import add_routes

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        path = _strip_version(request.path)
        if path.startswith(SWARM_PREFIXES) and not path.startswith(LOCAL_SWARM_PATHS):
            if not daemon.state.in_swarm:
                return api_error(503, NOT_IN_SWARM)
            if daemon.manager is None:
                return api_error(503, WORKER_NOT_MANAGER)
            routed = await _route_to_leader(daemon, request, path)
            if routed is not None:
                return routed
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return api_error(e.status, e.reason if e.status != 404 else "page not found")
            raise
        except ApiError as e:
            return api_error(e.status, e.message)
        except SwarmStateError as e:
            return api_error(503, str(e))
        except ValueError as e:
            return api_error(400, str(e))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            # a bug, not bad input: the traceback goes to the log, the client gets Docker's shape
            log.exception("%s %s failed", request.method, request.path)
            return api_error(500, f"internal error serving {request.method} {path}: {type(e).__name__}: {e}")
        resp.headers.setdefault("Api-Version", API_VERSION)
        resp.headers.setdefault("Server", f"Shoal/{__version__} (linux)")
        return resp

    # JSON bodies are read through manager.api.read_body (MAX_JSON_BYTES); this is the backstop
    # for any other read. `images/load` streams request.content, which this does not limit.
    app = web.Application(middlewares=[middleware], client_max_size=MAX_JSON_BYTES)
    routes = web.RouteTableDef()

    def both(method: str, path: str) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            app.router.add_route(method, path, fn)
            app.router.add_route(method, r"/v{version:[0-9.]+}" + path, fn)
            return fn
        return deco

    def ping_headers() -> dict[str, str]:
        return {"Api-Version": API_VERSION, "Docker-Experimental": "false", "OSType": "linux",
                "Swarm": daemon.swarm_header(), "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache"}

    @both("GET", "/_ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="OK", headers=ping_headers())

    @both("HEAD", "/_ping")
    async def ping_head(request: web.Request) -> web.Response:
        return web.Response(headers=ping_headers())

    @both("GET", "/version")
    async def version(request: web.Request) -> web.Response:
        return web.json_response(daemon.version())

    @both("GET", "/info")
    async def info(request: web.Request) -> web.Response:
        return web.json_response(daemon.info())

    @both("POST", "/swarm/init")
    async def swarm_init(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with daemon._swarm_lock:
            node_id = await daemon.swarm_init(body)
        return web.json_response(node_id)

    @both("POST", "/swarm/join")
    async def swarm_join(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with daemon._swarm_lock:
            await daemon.swarm_join(body)
        return web.Response(status=200)

    @both("POST", "/swarm/leave")
    async def swarm_leave(request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true", "True")
        async with daemon._swarm_lock:
            await daemon.swarm_leave(force)
        return web.Response(status=200)

    # ---- images

    @both("GET", "/images/json")
    async def images_json(request: web.Request) -> web.Response:
        by_id: dict[str, dict[str, Any]] = {}
        for img in daemon.images.list():
            cur = by_id.setdefault(img.id, image_summary(img))
            for tag in image_summary(img)["RepoTags"]:
                if tag not in cur["RepoTags"]:
                    cur["RepoTags"].append(tag)
        return web.json_response(list(by_id.values()))

    def image_summary(img: Any) -> dict[str, Any]:
        """``ImageSummary`` of the Engine API: ``Created`` in seconds since the epoch (the config
        holds it as RFC 3339, as every image on Docker Hub does)."""
        tags = list(img.familiar_repo_tags or [img.ref])
        return {"Id": img.id, "RepoTags": tags, "RepoDigests": list(img.repo_digests), "ParentId": "",
                "Created": int(parse_rfc3339(img.created)), "Size": img.size, "SharedSize": -1,
                "VirtualSize": img.size, "Labels": (img.config or {}).get("Labels") or {}, "Containers": -1}

    @both("GET", "/images/{name:.*}/json")
    async def image_inspect(request: web.Request) -> web.Response:
        """``ImageInspect``: ``Created`` is the config's RFC 3339 time as stored (Go's zero time
        when the image has none, as Docker prints it), ``RootFS.Layers`` the diff_ids."""
        name = request.match_info["name"]
        try:
            img = daemon.images.get(name)
        except Exception:  # an unparsable reference is simply not an image we have
            img = None
        if img is None:
            return api_error(404, f"No such image: {name}")
        out = image_summary(img)
        created = img.created if is_rfc3339(img.created) else "0001-01-01T00:00:00Z"
        return web.json_response({
            "Id": out["Id"], "RepoTags": out["RepoTags"], "RepoDigests": out["RepoDigests"], "Parent": "",
            "Comment": "", "Created": created, "Container": "",
            "DockerVersion": "", "Author": "", "Config": img.config, "Architecture": img.architecture,
            "Os": img.os_name, "Size": img.size, "VirtualSize": img.size,
            "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": ":".join(str(p) for p in img.layers)}},
            "RootFS": {"Type": "layers", "Layers": list(img.diff_ids)},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}})

    @both("GET", "/networks")
    async def networks(request: web.Request) -> web.Response:
        return web.json_response([_BRIDGE_NETWORK])

    @both("GET", "/networks/{id}")
    async def network_inspect(request: web.Request) -> web.Response:
        name = request.match_info["id"]
        if name in (_BRIDGE_NETWORK["Name"], _BRIDGE_NETWORK["Id"]):
            return web.json_response(_BRIDGE_NETWORK)
        return api_error(404, f"network {name} not found")

    @both("POST", "/networks/create")
    async def network_create(request: web.Request) -> web.Response:
        return api_error(501, "creating networks is not supported yet: each node has one local bridge "
                              "network (overlay networks come with the overlay work)")

    @both("POST", "/images/load")
    async def images_load(request: web.Request) -> web.StreamResponse:
        from agent_runtime.images import ImageError

        cap = int(daemon.args.max_image_archive_size)
        too_big = (f"the image archive is larger than this daemon accepts ({cap} bytes; shoald "
                   "--max-image-archive-size)")
        if request.content_length is not None and request.content_length > cap:
            return api_error(413, too_big)
        fd, tmp = tempfile.mkstemp(dir=daemon.data_root, prefix=".load-", suffix=".tar")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > cap:
                        return api_error(413, too_big)
                    f.write(chunk)
            try:
                refs = await asyncio.to_thread(daemon.images.load, Path(tmp), "the uploaded image archive")
            except ImageError as e:
                return api_error(400, str(e))
        finally:
            os.unlink(tmp)
        text = "".join(json.dumps({"stream": f"Loaded image: {r}\n"}) + "\n" for r in refs)
        # exactly "application/json" (no charset): the docker CLI renders the stream only then
        return web.Response(body=text.encode(), content_type="application/json")

    @both("POST", "/images/create")
    async def images_create(request: web.Request) -> web.StreamResponse:
        from agent_runtime.images import ImageError

        ref = request.query.get("fromImage", "")
        tag = request.query.get("tag", "")
        if not ref:
            return api_error(400, "fromImage is required (the image to pull)")
        if tag and not tag.startswith("sha256:"):
            ref = f"{ref}:{tag}"
        elif tag:
            ref = f"{ref}@{tag}"
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write((json.dumps({"status": f"Pulling from {ref}"}) + "\n").encode())
        try:
            img = await daemon.images.pull(ref)
            msg = {"status": f"Digest: {img.id}"}
            await resp.write((json.dumps(msg) + "\n").encode())
            await resp.write((json.dumps({"status": f"Status: Downloaded image for {img.ref}"})
                              + "\n").encode())
        except ImageError as e:
            await resp.write((json.dumps({"errorDetail": {"message": str(e)}, "error": str(e)})
                              + "\n").encode())
        await resp.write_eof()
        return resp

    @both("GET", "/distribution/{name:.*}/json")
    async def distribution(request: web.Request) -> web.Response:
        from agent_runtime.images import ImageError

        name = request.match_info["name"]
        resolve = getattr(daemon.images, "resolve", None)
        if resolve is None:
            return api_error(501, "digest resolution is not supported by this daemon")
        try:
            return web.json_response(await resolve(name))
        except ImageError as e:
            return api_error(404, str(e))

    app.add_routes(routes)
    add_routes(app, _ManagerProxy(daemon))
    return app


_BRIDGE_NETWORK: dict[str, Any] = {
    "Name": "bridge", "Id": "shoal-bridge", "Created": "", "Scope": "local", "Driver": "bridge",
    "EnableIPv6": False, "Internal": False, "Attachable": False, "Ingress": False,
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.200.0.0/16"}]},
    "Options": {}, "Labels": {}, "Containers": {},
}
"""The one network each node has for now: its local bridge (a /24 of 10.200.0.0/16 per node)."""


FORWARDED_HEADERS = ("content-type", "x-registry-auth")
FORWARDED_MARK = "X-Shoal-Forwarded"
"""Set on an API request a follower forwarded to the leader: it is never forwarded again."""
CONSISTENCY_HEADER = "X-Shoal-Consistency"
"""``X-Shoal-Consistency: local`` on a GET reads this manager's store as it is (no ReadIndex)."""


def _leader_only(method: str, path: str) -> bool:
    """Requests that must run on the Raft leader: every write. (Logs are served by any manager:
    a follower's ``Manager.read_logs`` asks the leader for the lines, so ``--follow`` streams.)"""
    return method not in ("GET", "HEAD")


async def _route_to_leader(daemon: Daemon, request: web.Request, path: str) -> web.StreamResponse | None:
    """On a follower, forward a leader-only request to the leader and return its response; on
    any manager, make a GET linearizable with a ReadIndex barrier (unless the caller asked for a
    local read). None = serve the request here. Errors become 503 with Docker's JSON body."""
    from manager.store import Unavailable

    mgr = daemon.manager
    try:
        if _leader_only(request.method, path):
            if mgr.is_leader:
                return None
            if request.headers.get(FORWARDED_MARK):
                return api_error(503, "rpc error: code = Unavailable desc = leadership moved while the "
                                      "request was forwarded; retry")
            body = await read_body(request)
            status, headers, data = await mgr.forward_api(
                request.method, str(request.rel_url), dict(request.headers), body)
            resp = web.Response(body=data, status=status)
            ctype = headers.get("Content-Type") or headers.get("content-type")
            if ctype:
                resp.headers["Content-Type"] = ctype
            return resp
        if request.headers.get(CONSISTENCY_HEADER, "").lower() != "local":
            await mgr.read_barrier()
    except Unavailable as e:
        return api_error(503, f"rpc error: code = Unavailable desc = {e}")
    except WireError as e:
        return api_error(503, f"rpc error: code = Unavailable desc = forwarding to the leader failed: {e}")
    except ApiError as e:
        return api_error(e.status, e.message)
    return None


class _ManagerProxy:
    """Forwards attribute access to the daemon's current ``Manager`` (the role can start later)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        mgr = self._daemon.manager
        if mgr is None:
            raise SwarmStateError(NOT_IN_SWARM)
        return getattr(mgr, name)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body through the bounded decoder (an empty body is ``{}``).
    Raises :class:`manager.api.ApiError` (400/413) or ``ValueError`` (400)."""
    body = await read_json(request, allow_empty=True)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object, got {_json_type(body)}")
    return body


def _json_type(v: Any) -> str:
    """The JSON type name of a decoded value, as Go's decoder names it in errors."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(v), type(v).__name__)


def _body_str(body: dict[str, Any], key: str, struct: str = "InitRequest") -> str:
    """``body[key]`` as a string ("" when missing or null); ``ValueError`` for another type."""
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"json: cannot unmarshal {_json_type(v)} into Go struct field {struct}.{key} of type string")
    return v


def _body_bool(body: dict[str, Any], key: str, struct: str = "InitRequest") -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ValueError(f"json: cannot unmarshal {_json_type(v)} into Go struct field {struct}.{key} of type bool")
    return v


def _body_str_list(body: dict[str, Any], key: str, struct: str) -> list[str]:
    v = body.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"json: cannot unmarshal {_json_type(v)} into Go struct field {struct}.{key} of type []string")
    return v


# ---------------------------------------------------------------------------- entry point


def _byte_size(text: str) -> int:
    """``--max-layer-size``, ``--max-image-archive-size``: a positive size in binary units (``8g``, ``512m``)."""
    try:
        size = parse_size(text, binary=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: it must be more than 0 bytes")
    return size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shoald", description="The Shoal daemon (one per host).")
    p.add_argument("--data-root", default="/var/lib/shoal", help="persistent state (default %(default)s)")
    p.add_argument("--exec-root", default="/run/shoal", help="run-time state (default %(default)s)")
    p.add_argument("--socket", default="/run/shoal/shoal.sock", help="Docker API unix socket")
    p.add_argument("--runtime", choices=["shoal", "runc"], default="shoal", help="OCI runtime")
    p.add_argument("--cgroup-parent", default="shoal", help="cgroup under which containers live")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                   help="registry reached over plain HTTP (repeatable)")
    p.add_argument("--max-layer-size", type=_byte_size, default="8g", metavar="SIZE",
                   help="largest image layer accepted, uncompressed (e.g. 8g, 512m; default 8g)")
    p.add_argument("--heartbeat-period", type=float, default=5.0,
                   help="dispatcher heartbeat period in seconds (node down after 3 missed)")
    p.add_argument("--heartbeat-misses", type=int, default=3,
                   help="heartbeats a node may miss before it is marked down (default %(default)s)")
    p.add_argument("--port", type=int, default=2377, help="cluster port (Raft, dispatcher, CA)")
    p.add_argument("--max-image-archive-size", type=_byte_size, default="16g", metavar="SIZE",
                   help="largest archive `image load` accepts, streamed to disk (bytes, or with a k/m/g/t "
                        "suffix; default 16g)")
    p.add_argument("--raft-tick", type=float, default=0.1,
                   help="seconds per Raft tick (default %(default)s: heartbeat every tick, election "
                        "after ElectionTick=10-20 ticks, i.e. 1-2 s; Swarm ticks every 1 s)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="default json-file option of containers: max-size=10m (rotate a container's log "
                        "when it would pass this size), max-file=3 (files kept); repeatable, a service's "
                        "--log-opt overrides it (default max-size 10 MiB, max-file 3)")
    args = p.parse_args(argv)
    try:
        args.log_opts = parse_flags(args.log_opt)
    except LogOptError as e:
        p.error(f"--log-opt: {e}")
    return args


async def serve(args: argparse.Namespace) -> None:
    """Run the daemon until SIGTERM/SIGINT; containers keep running after it stops."""
    daemon = Daemon(args)
    await daemon.start()
    app = build_app(daemon)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock_path = Path(args.socket)
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    sock_path.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(sock_path))
    await site.start()
    os.chmod(sock_path, 0o660)
    log.info("shoald %s serving the Docker API on %s", __version__, sock_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (containers keep running)")
    await runner.cleanup()
    await daemon.stop()
    sock_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """``shoald`` entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
