"""What the daemon tells about itself and its host: the ``GET /version`` and ``GET /info`` bodies
(Docker Engine API v1.41 shapes), the node's ``Node.Description`` and the host facts they are made
of (Go's name for the architecture, the OS's pretty name, the cgroup version)."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_runtime.spec import ContainerState
from shoal import __version__
from shoal.base.util import now_rfc3339
from shoal.daemon.state import LocalState

__all__ = ["API_VERSION", "MIN_API_VERSION", "cgroup_v2_only", "go_arch", "info", "node_description",
           "os_name", "version"]

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"


def node_description(hostname: str | None = None, engine_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """This host's ``Node.Description`` (Docker API shape): hostname, platform, resources, engine
    (with ``Labels``, the daemon's ``--label`` values: ``engine.labels.<key>`` in constraints)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "Hostname": hostname or socket.gethostname(),
        "Platform": {"Architecture": platform.machine(), "OS": "linux"},
        "Resources": {"NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000, "MemoryBytes": mem},
        "Engine": {"EngineVersion": f"shoal-{__version__}", "Labels": dict(engine_labels or {}), "Plugins": [
            {"Type": "Network", "Name": "bridge"}, {"Type": "Volume", "Name": "local"}]},
    }


def version() -> dict[str, Any]:
    """The ``GET /version`` body (``types.Version``)."""
    ver = f"shoal-{__version__}"
    return {
        "Platform": {"Name": "Shoal"},
        "Components": [{"Name": "Engine", "Version": ver,
                        "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                    "Os": "linux", "Arch": go_arch()}}],
        "Version": ver, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "", "GoVersion": f"python{platform.python_version()}", "Os": "linux",
        "Arch": go_arch(), "KernelVersion": platform.release(), "BuildTime": "",
    }


def info(*, hostname: str, state: LocalState, manager: Any, containers: Sequence[ContainerState],
         image_count: int, data_root: Path, insecure_registries: Sequence[str],
         default_runtime: str, engine_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``GET /info`` body (``types.Info``) of a node: ``state`` is its local swarm state,
    ``manager`` its running ``manager.Manager`` (``swarm_info()`` fills the cluster part of
    ``Swarm``) or None on a worker or outside a swarm, ``containers`` the runtime's containers,
    ``engine_labels`` the daemon's ``--label`` values (``Labels``: ``["key=value", …]``)."""
    desc = node_description(hostname)
    running = sum(1 for c in containers if c.status == "running")
    swarm: dict[str, Any] = {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                             "ControlAvailable": False, "Error": "", "RemoteManagers": None}
    if state.in_swarm:
        d = state.data
        swarm.update({
            "NodeID": d["NodeID"], "NodeAddr": d.get("AdvertiseAddr", "").rsplit(":", 1)[0],
            "LocalNodeState": "active",
            "ControlAvailable": manager is not None,
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in d.get("ManagerAddrs", [])],
        })
        if manager is not None:
            swarm.update(manager.swarm_info())
    return {
        "ID": state.data.get("NodeID", ""), "Containers": len(containers),
        "ContainersRunning": running, "ContainersPaused": 0,
        "ContainersStopped": len(containers) - running, "Images": image_count,
        "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge"], "Authorization": None,
                    "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "CPUShares": True, "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True,
        "Debug": False, "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": len(asyncio.all_tasks()), "SystemTime": now_rfc3339(),
        "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if cgroup_v2_only() else "1",
        "KernelVersion": platform.release(), "OperatingSystem": os_name(), "OSVersion": "",
        "OSType": "linux", "Architecture": platform.machine(),
        "NCPU": os.cpu_count() or 1, "MemTotal": desc["Resources"]["MemoryBytes"],
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"],
                           "IndexConfigs": {r: {"Name": r, "Mirrors": [], "Secure": False,
                                                "Official": False}
                                            for r in insecure_registries},
                           "Mirrors": []},
        "DockerRootDir": str(data_root), "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Name": hostname, "Labels": [f"{k}={v}" for k, v in (engine_labels or {}).items()], "ExperimentalBuild": False,
        "ServerVersion": f"shoal-{__version__}",
        "Runtimes": {"shoal": {"path": "shoal-oci"}, "runc": {"path": "runc"}},
        "DefaultRuntime": default_runtime, "Swarm": swarm, "LiveRestoreEnabled": True,
        "Isolation": "", "InitBinary": "", "SecurityOptions": ["name=no-new-privileges"],
        "Warnings": None,
    }


def go_arch() -> str:
    """The machine's architecture as Go names it (``amd64``, ``arm64``; others as the kernel does)."""
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def os_name() -> str:
    """``PRETTY_NAME`` of ``/etc/os-release``; ``Linux`` without one."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


def cgroup_v2_only() -> bool:
    """True on a host with the unified cgroup hierarchy only (cgroup v2)."""
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()
