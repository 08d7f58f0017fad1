"""The container description the runtime works from (``ContainerSpec``) and its observed state.

Shapes follow docs/contracts.md (agent_runtime section); field meanings follow Docker's
ContainerSpec in the Engine API (``Command`` replaces the image's Entrypoint, ``Args`` its Cmd).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ContainerSpec:
    """What to run. ``id`` is the 64-hex container ID; ``image`` a reference already pulled or loaded.

    ``memory_bytes`` is bytes, ``nano_cpus`` is 1e-9 CPUs (Docker's NanoCPUs), ``pids_limit`` a count;
    None means no limit. ``netns`` is the path of a network namespace to join (None = a new, empty one).
    ``hosts`` are extra ``(hostname, ip)`` lines for /etc/hosts; ``dns`` nameserver IPs for resolv.conf
    (empty = the host's). ``ip`` (optional) is the container's own address, written to /etc/hosts.
    ``read_only`` makes the root filesystem read-only (Docker's ``--read-only``: only the rootfs; /dev,
    /dev/shm, /proc … and the mounts below keep their own modes). ``mounts`` are extra mounts, each a
    dict (see :func:`agent_runtime.bundle.user_mounts`):
    ``{"type": "bind", "source": abs host path, "target": abs path, "read_only": bool,
    "propagation": "rprivate"|"private"|"rshared"|"shared"|"rslave"|"slave"|None, "recursive": bool}``
    or ``{"type": "tmpfs", "target": abs path, "read_only": bool, "size_bytes": int|None,
    "mode": int|None (permission bits)}``.

    Security and limits (Docker's ContainerSpec fields of the same meaning; see
    :func:`agent_runtime.bundle.build_config`): ``cap_add``/``cap_drop`` capability names (``NET_ADMIN`` or
    ``CAP_NET_ADMIN``, or ``ALL``) applied to Docker's default set; ``ulimits`` as
    ``[{"name": "nofile", "soft": int, "hard": int}]`` (setrlimit(2) resources without ``RLIMIT_``);
    ``sysctls`` namespaced kernel parameters (``{"net.ipv4.ip_forward": "1"}``); ``groups``
    supplementary groups (names from the image's /etc/group, or numbers); ``dns_search``/``dns_options``
    resolv.conf ``search``/``options`` (with ``dns`` they replace the host's resolv.conf);
    ``oom_score_adj`` the process's /proc/self/oom_score_adj (-1000..1000, None = inherit).

    ``log_opts`` are the container's json-file log options (Docker's ``--log-opt``:
    ``{"max-size": "10m", "max-file": "3"}``, see :mod:`shoal.base.logopts`); a key left out takes the
    runtime's default. A container.json written before this field existed loads with ``{}``.
    """

    id: str
    image: str
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    user: str | None = None
    hostname: str | None = None
    netns: str | None = None
    hosts: list[tuple[str, str]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    ip: str | None = None
    read_only: bool = False
    mounts: list[dict[str, Any]] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    ulimits: list[dict[str, Any]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    oom_score_adj: int | None = None
    log_opts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerSpec:
        """Inverse of ``to_dict``; unknown keys are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["hosts"] = [tuple(h) for h in known.get("hosts") or []]
        return cls(**known)


@dataclass
class ContainerState:
    """Observed state: ``status`` is ``created`` | ``running`` | ``exited``; ``pid`` is the host PID of the
    container's init (0 when not running); ``exit_code`` is set once exited (128+N when killed by
    signal N); times are RFC 3339 strings or None; ``error`` explains a failure to start."""

    id: str
    status: str
    pid: int = 0
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
