"""Write an OCI runtime bundle's ``config.json`` (OCI runtime spec 1.0.2) for a container.

Defaults follow what Docker (moby's oci/defaults.go and daemon/oci_linux.go) puts in a
container's spec: its default capability set, mounts of /proc, /dev, /dev/pts, /dev/shm,
/dev/mqueue, /sys (ro), /sys/fs/cgroup (ro), masked and read-only /proc and /sys paths,
the default device cgroup rules, RLIMIT_NOFILE 1048576 and no_new_privs.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

from agent_runtime.oci.inroot import read_in_root
from agent_runtime.spec import ContainerSpec
from shoal.base.containerrules import CAPABILITY_NAMES, ULIMIT_NAMES, normalize_capability, sysctl_allowed

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
"""Docker's default capability set; as a CapEff mask it is 0x00000000a80425fb."""

DEFAULT_CAP_MASK = 0xA80425FB

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
]


class BundleError(ValueError):
    """The spec cannot be turned into a runnable bundle (no command, unknown user …)."""


_DB_LIMIT = 16 << 20
"""Largest /etc/passwd or /etc/group of an image that is read (bytes)."""


def _read_db(rootfs: Path, path: str, numeric: tuple[int, ...]) -> list[list[str]]:
    """Lines of the image's ``path`` (``/etc/passwd``, ``/etc/group``) split on ``:``, keeping only
    those whose fields at ``numeric`` are decimal numbers; the file is resolved inside ``rootfs``
    (agent_runtime.oci.inroot: a link to a host file or to /dev/zero is never read) and must be a
    regular file; missing → ``[]``. Raises BundleError when over 16 MiB."""
    try:
        data = read_in_root(str(rootfs), path, _DB_LIMIT)
    except ValueError as e:
        raise BundleError(str(e)) from None
    except OSError:
        return []
    if data is None:
        return []
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        ent = line.split(":")
        if line.startswith("#") or len(ent) <= max(numeric):
            continue
        if all(ent[i].isdecimal() and ent[i].isascii() for i in numeric):
            out.append(ent)
    return out


def resolve_user(user: str | None, rootfs: Path) -> tuple[int, int, list[int]]:
    """Resolve Docker's ``user[:group]`` (names or numbers) against ``rootfs``/etc/passwd and /etc/group.

    Returns ``(uid, gid, additional_gids)``. Raises BundleError (Docker's wording) when a name is unknown.
    """
    if not user:
        return 0, 0, []
    name, _, group = user.partition(":")
    passwd = _read_db(rootfs, "/etc/passwd", (2, 3))
    groups = _read_db(rootfs, "/etc/group", (2,))
    uid: int | None = None
    gid: int | None = None
    uname: str | None = None
    for ent in passwd:
        if len(ent) >= 4 and (ent[0] == name or (name.isdigit() and ent[2] == name)):
            uid, gid, uname = int(ent[2]), int(ent[3]), ent[0]
            break
    if uid is None:
        if not name.isdigit():
            raise BundleError(f"unable to find user {name}: no matching entries in passwd file")
        uid, gid = int(name), 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for ent in groups:
                if len(ent) >= 3 and ent[0] == group:
                    gid = int(ent[2])
                    break
            else:
                raise BundleError(f"unable to find group {group}: no matching entries in group file")
    extra: list[int] = []
    if uname and not group:
        for ent in groups:
            if len(ent) >= 4 and uname in ent[3].split(",") and int(ent[2]) != gid:
                extra.append(int(ent[2]))
    return uid, gid or 0, extra


def capabilities(cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """The container's capability set from Docker's default set, ``cap_add`` and ``cap_drop`` (names as
    :func:`agent_runtime.spec.normalize_capability` takes them), as moby's oci/caps TweakCapabilities:
    ``ALL`` in ``cap_add`` → every capability the kernel knows minus ``cap_drop``; ``ALL`` in
    ``cap_drop`` → exactly ``cap_add``; otherwise defaults minus drops plus adds. Raises BundleError
    for an unknown name."""
    try:
        add = [normalize_capability(c) for c in cap_add]
        drop = [normalize_capability(c) for c in cap_drop]
    except ValueError as e:
        raise BundleError(str(e)) from None
    known = list(CAPABILITY_NAMES[: _cap_last_cap() + 1])
    if "ALL" in add:
        caps = [c for c in known if c not in drop]
    elif "ALL" in drop:
        caps = [c for c in add if c != "ALL"]
    else:
        caps = [c for c in DEFAULT_CAPS if c not in drop] + add
    out: list[str] = []
    for c in caps:
        if c not in out:
            out.append(c)
    return out


def _cap_last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text().strip())
    except (OSError, ValueError):
        return len(CAPABILITY_NAMES) - 1


def rlimits(ulimits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OCI ``process.rlimits``: Docker's default RLIMIT_NOFILE (:func:`nofile_limit`) overridden or
    extended by ``ulimits`` (``[{"name": "nofile", "soft": int, "hard": int}]``, names of
    :data:`agent_runtime.spec.ULIMIT_NAMES`; -1 means unlimited). Raises BundleError for an unknown name,
    a negative value other than -1, or soft > hard (setrlimit(2) would refuse it)."""
    by_type: dict[str, dict[str, Any]] = {
        "RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "hard": nofile_limit(), "soft": nofile_limit()}}
    unlimited = 2**64 - 1  # RLIM_INFINITY as the OCI spec's uint64
    for u in ulimits:
        name = str(u.get("name", "")).lower()
        if name not in ULIMIT_NAMES:
            raise BundleError(f"invalid ulimit type: {name!r} (use one of {', '.join(ULIMIT_NAMES)})")
        vals = []
        for k in ("soft", "hard"):
            v = int(u.get(k, 0))
            if v < -1:
                raise BundleError(f"invalid ulimit {name}: {k} limit {v} must not be negative (-1 is unlimited)")
            vals.append(unlimited if v == -1 else v)
        soft, hard = vals
        if soft > hard:
            raise BundleError(f"ulimit {name}: soft limit {soft} is greater than hard limit {hard}")
        t = "RLIMIT_" + name.upper()
        by_type[t] = {"type": t, "hard": hard, "soft": soft}
    return list(by_type.values())


def additional_gids(groups: list[str], rootfs: Path, base: list[int]) -> list[int]:
    """``base`` (the user's memberships) plus ``groups`` (Docker's GroupAdd: names looked up in
    ``rootfs``/etc/group, or numbers), without duplicates. Raises BundleError for an unknown name."""
    out = list(base)
    db = _read_db(rootfs, "/etc/group", (2,)) if groups else []
    for g in groups:
        g = str(g)
        if g.isdigit():
            gid = int(g)
        else:
            for ent in db:
                if len(ent) >= 3 and ent[0] == g:
                    gid = int(ent[2])
                    break
            else:
                raise BundleError(f"unable to find group {g}: no matching entries in group file")
        if gid not in out:
            out.append(gid)
    return out


def resolv_conf_text(dns: list[str], search: list[str], options: list[str], host_text: str) -> str:
    """resolv.conf content as Docker writes it from DNSConfig (moby libnetwork/resolvconf): start from
    the host's ``host_text`` without loopback nameservers, then ``dns`` replaces the nameserver lines,
    ``search`` the search lines (``["."]`` means no search line), ``options`` the options lines."""
    keep: list[str] = []
    for line in host_text.splitlines():
        parts = line.split()
        key = parts[0] if parts else ""
        if key == "nameserver" and (dns or len(parts) < 2 or parts[1].startswith("127.") or parts[1] == "::1"):
            continue
        if key in ("search", "domain") and search:
            continue
        if key == "options" and options:
            continue
        keep.append(line)
    keep = [ln for ln in keep if ln.strip()]
    keep += [f"nameserver {d}" for d in dns]
    if search and search != ["."]:
        keep.append("search " + " ".join(search))
    if options:
        keep.append("options " + " ".join(options))
    return "\n".join(keep) + ("\n" if keep else "")


def nofile_limit() -> int:
    """Docker's RLIMIT_NOFILE for containers (1048576), capped at the kernel's fs.nr_open, and at our own
    hard limit when we lack CAP_SYS_RESOURCE (then the limit cannot be raised; setrlimit(2))."""
    limit = 1048576
    try:
        limit = min(limit, int(Path("/proc/sys/fs/nr_open").read_text().strip()))
        status = Path("/proc/self/status").read_text()
        cap_eff = int(status.split("CapEff:")[1].split()[0], 16)
        if not cap_eff & (1 << 24):  # CAP_SYS_RESOURCE
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
    except (OSError, ValueError, IndexError):
        pass
    return limit


def merge_env(image_env: list[str] | None, spec_env: list[str], hostname: str) -> list[str]:
    """Image Env, then the spec's (overriding by key), plus PATH and HOSTNAME defaults as Docker sets them."""
    out: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for kv in list(image_env or []) + list(spec_env):
        k, sep, v = kv.partition("=")
        if not k:
            raise BundleError(f"invalid environment entry {kv!r}: expected KEY=VALUE")
        out[k] = v if sep else os.environ.get(k, "")
    out.setdefault("HOME", "/root")
    return [f"{k}={v}" for k, v in out.items()]


_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def user_mounts(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OCI mount entries for a ContainerSpec's ``mounts`` (see :class:`ContainerSpec`), as Docker
    builds them (MOBY: daemon/oci_linux.go ``withMounts``, volume/mounts/linux_parser.go):
    bind → ``rbind`` (``bind`` if not ``recursive``) + propagation (default ``rprivate``) + ``ro``
    when read-only; tmpfs → ``noexec,nosuid,nodev``, ``rprivate``, ``size=<bytes>``,
    ``mode=<octal>`` and ``ro`` when read-only. Raises BundleError for a malformed entry; the
    bind source must exist (the runtime refuses it otherwise)."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        mtype, target = m.get("type"), m.get("target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise BundleError(f"invalid mount target, must be an absolute path: {target}")
        ro = ["ro"] if m.get("read_only") else []
        if mtype == "bind":
            source = m.get("source")
            if not isinstance(source, str) or not source.startswith("/"):
                raise BundleError(f"invalid bind mount source, must be an absolute path: {source}")
            if not os.path.exists(source):
                raise BundleError(f'invalid mount config for type "bind": bind source path does not exist: {source}')
            prop = m.get("propagation") or "rprivate"
            if prop not in _PROPAGATIONS:
                raise BundleError(f"invalid propagation mode {prop!r} for {target}")
            opts = ["rbind" if m.get("recursive", True) else "bind", prop] + ro
            out.append({"destination": target, "type": "bind", "source": source, "options": opts})
        elif mtype == "tmpfs":
            opts = ["noexec", "nosuid", "nodev", "rprivate"] + ro
            if m.get("size_bytes"):
                opts.append(f"size={int(m['size_bytes'])}")
            if m.get("mode"):
                opts.append(f"mode={int(m['mode']):o}")
            out.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        else:
            raise BundleError(f"mount type {mtype!r} for {target} is not supported: use bind or tmpfs")
    return out


def build_config(spec: ContainerSpec, image_config: dict[str, Any], rootfs: Path, container_dir: Path,
                 cgroup_parent: str) -> dict[str, Any]:
    """Return the OCI runtime config (a dict for config.json) for ``spec`` over an image's ``config``.

    ``rootfs`` is the mounted root filesystem (used to resolve the user and ``groups``); ``container_dir``
    holds the ``hosts``, ``resolv.conf`` (see :func:`resolv_conf_text`) and ``hostname`` files that are
    bind-mounted. Applies ``cap_add``/``cap_drop``
    (process.capabilities), ``ulimits`` (process.rlimits), ``groups`` (process.user.additionalGids),
    ``oom_score_adj`` (process.oomScoreAdj) and ``sysctls`` (linux.sysctl). Raises BundleError.
    """
    hostname = spec.hostname or spec.id[:12]
    entry = list(spec.command) if spec.command is not None else list(image_config.get("Entrypoint") or [])
    if spec.args is not None:
        cmd = list(spec.args)
    elif spec.command is not None:
        cmd = []
    else:
        cmd = list(image_config.get("Cmd") or [])
    args = entry + cmd
    if not args:
        raise BundleError("no command specified: the image has no Entrypoint/Cmd and the spec gives none")
    uid, gid, extra = resolve_user(spec.user or image_config.get("User"), rootfs)
    extra = additional_gids(list(spec.groups), rootfs, extra)
    caps = capabilities(list(spec.cap_add), list(spec.cap_drop))
    for key in spec.sysctls:
        if not sysctl_allowed(key):
            raise BundleError(f"sysctl {key!r} is not allowed: only namespaced ones (net.*, kernel.msg*, "
                              "kernel.sem, kernel.shm*, fs.mqueue.*) can be set in a container")
    if spec.oom_score_adj is not None and not -1000 <= int(spec.oom_score_adj) <= 1000:
        raise BundleError(f"invalid oom score adjust {spec.oom_score_adj}: must be between -1000 and 1000")
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    namespaces.append({"type": "network", "path": spec.netns} if spec.netns else {"type": "network"})
    resources: dict[str, Any] = {"devices": _DEVICE_RULES}
    if spec.memory_bytes:
        if spec.memory_bytes < 6 * 1024 * 1024:
            raise BundleError(f"memory limit {spec.memory_bytes} bytes is too small: the minimum is 6 MiB")
        resources["memory"] = {"limit": spec.memory_bytes, "swap": spec.memory_bytes}
    if spec.nano_cpus:
        period = 100000
        resources["cpu"] = {"quota": max(1000, spec.nano_cpus * period // 1_000_000_000), "period": period}
    if spec.pids_limit:
        resources["pids"] = {"limit": spec.pids_limit}
    nosd = ["nosuid", "noexec", "nodev"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosd},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": nosd + ["ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"] + nosd},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": nosd},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": nosd + ["mode=1777", "size=67108864"]},
    ]
    # with a read-only rootfs Docker makes these read-only too (MOBY: container/container_unix.go
    # NetworkMounts: writable = !ReadonlyRootfs) unless a user mount replaces them
    user = user_mounts(spec.mounts)
    replaced = {m["destination"] for m in user}
    for name in ("resolv.conf", "hostname", "hosts"):
        if f"/etc/{name}" in replaced:
            continue
        mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": str(container_dir / name),
                       "options": ["rbind", "rprivate"] + (["ro"] if spec.read_only else [])})
    # user mounts go last so they may cover the defaults (e.g. a tmpfs on /dev/shm), as Docker
    mounts = [m for m in mounts if m["destination"] not in replaced] + user
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})},
            "args": args,
            "env": merge_env(image_config.get("Env"), spec.env, hostname),
            "cwd": spec.cwd or image_config.get("WorkingDir") or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits(list(spec.ulimits)),
            "noNewPrivileges": True,
            **({"oomScoreAdj": int(spec.oom_score_adj)} if spec.oom_score_adj is not None else {}),
        },
        "root": {"path": str(rootfs), "readonly": bool(spec.read_only)},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": f"/{cgroup_parent.strip('/')}/{spec.id}" if cgroup_parent.strip("/") else f"/{spec.id}",
            "namespaces": namespaces,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            **({"sysctl": {k: str(v) for k, v in spec.sysctls.items()}} if spec.sysctls else {}),
        },
    }


def write_config(bundle_dir: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` atomically to ``bundle_dir/config.json`` and return its path."""
    path = bundle_dir / "config.json"
    tmp = bundle_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path
