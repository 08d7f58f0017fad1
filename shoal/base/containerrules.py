"""Container rules that the manager's spec validation and the node's runtime both apply:
capability names, ulimit names, which sysctls a container may set, extra-host syntax.

Kept here, in the package both sides share, so the manager never imports the runtime (the
manager must not touch the kernel) and the two sides cannot disagree.
"""

from __future__ import annotations

import ipaddress

CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
"""Linux capabilities in bit order (capabilities(7), linux/capability.h up to 5.9)."""

ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")
"""Ulimit names Docker accepts (go-units ulimit.go); ``nofile`` is RLIMIT_NOFILE and so on."""


def normalize_capability(name: str) -> str:
    """``net_admin``/``NET_ADMIN``/``CAP_NET_ADMIN`` → ``CAP_NET_ADMIN``; ``all`` → ``ALL`` (as Docker's
    caps.NormalizeLegacyCapabilities). Raises ValueError naming the unknown capability."""
    up = name.strip().upper()
    if up == "ALL":
        return "ALL"
    key = up if up.startswith("CAP_") else "CAP_" + up
    if key not in CAPABILITY_NAMES:
        raise ValueError(f"unknown capability: {name!r} (use names from capabilities(7) such as NET_ADMIN, or ALL)")
    return key


def sysctl_allowed(key: str) -> bool:
    """Whether ``key`` is a namespaced sysctl Docker lets a container set (moby's opts/ValidateSysctl):
    ``net.*`` (the network namespace) and the IPC ones ``kernel.msgmax|msgmnb|msgmni|sem|shmall|shmmax|
    shmmni|shm_rmid_forced`` and ``fs.mqueue.*``."""
    ipc = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
           "kernel.shmmni", "kernel.shm_rmid_forced"}
    return key in ipc or key.startswith("net.") or key.startswith("fs.mqueue.")


def parse_extra_host(line: str) -> list[tuple[str, str]]:
    """One ContainerSpec.Hosts entry → ``[(hostname, ip), …]``. Accepts the hosts(5) form swarmkit uses,
    ``"IP host [alias…]"``, and the ``docker run --add-host`` form ``"host:IP"``. Raises ValueError."""
    parts = line.split()
    if len(parts) >= 2:
        ip, names = parts[0], parts[1:]
    elif len(parts) == 1 and ":" in parts[0]:
        name, _, ip = parts[0].partition(":")
        names = [name]
    else:
        raise ValueError(f"invalid extra host {line!r}: use \"IP hostname [alias…]\" or \"hostname:IP\"")
    try:
        ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise ValueError(f"invalid extra host {line!r}: {ip!r} is not an IP address") from None
    if not all(names):
        raise ValueError(f"invalid extra host {line!r}: empty hostname")
    return [(n, ip.strip("[]")) for n in names]
