"""The container side of ``shoal-oci run``: namespaces, cgroup, mounts, pivot_root, credentials, exec.

Follows the OCI runtime specification 1.0 (config.md, config-linux.md, runtime.md) and, for
the details the spec leaves open, what runc does (documented in its libcontainer/SPEC.md):
default /dev nodes bound from the host, /dev/{fd,stdin,stdout,stderr,ptmx} symlinks,
``pivot_root(".", ".")`` then a lazy unmount of the old root, masked paths covered by
/dev/null or a read-only tmpfs. Implemented: namespaces (new, or joining a network/pid namespace by
path), cgroups v1/v2 resources (memory, cpu, pids, devices: v1 files or a v2 eBPF program), mounts, sysctl, rlimits,
oomScoreAdj, capabilities (bounding/effective/permitted/inheritable/ambient), no_new_privs, user and
groups, hostname. Not implemented: seccomp, user namespaces, terminals, hooks, AppArmor/SELinux,
``linux.devices`` (extra device nodes).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from agent_runtime.oci import libc
from agent_runtime.oci.cgroups import Cgroup, is_v2, v1_hierarchies
from agent_runtime.oci.inroot import SymlinkRefused, open_in_root

_MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    # option: (clear?, flag)
    "ro": (False, libc.MS_RDONLY), "rw": (True, libc.MS_RDONLY),
    "nosuid": (False, libc.MS_NOSUID), "suid": (True, libc.MS_NOSUID),
    "nodev": (False, libc.MS_NODEV), "dev": (True, libc.MS_NODEV),
    "noexec": (False, libc.MS_NOEXEC), "exec": (True, libc.MS_NOEXEC),
    "sync": (False, libc.MS_SYNCHRONOUS), "async": (True, libc.MS_SYNCHRONOUS),
    "dirsync": (False, libc.MS_DIRSYNC), "remount": (False, libc.MS_REMOUNT),
    "mand": (False, libc.MS_MANDLOCK), "nomand": (True, libc.MS_MANDLOCK),
    "atime": (True, libc.MS_NOATIME), "noatime": (False, libc.MS_NOATIME),
    "diratime": (True, libc.MS_NODIRATIME), "nodiratime": (False, libc.MS_NODIRATIME),
    "bind": (False, libc.MS_BIND), "rbind": (False, libc.MS_BIND | libc.MS_REC),
    "relatime": (False, libc.MS_RELATIME), "norelatime": (True, libc.MS_RELATIME),
    "strictatime": (False, libc.MS_STRICTATIME), "nostrictatime": (True, libc.MS_STRICTATIME),
    "defaults": (False, 0),
}
_PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}
_DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_RLIMITS = {  # getrlimit(2) resource numbers on Linux
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}


class RuntimeError_(Exception):
    """A bundle that cannot be run (bad config.json, missing rootfs …); the message says what to fix."""


def load_config(bundle: str) -> dict[str, Any]:
    """Read and minimally validate ``<bundle>/config.json``; raises RuntimeError_ with the reason."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            cfg: dict[str, Any] = json.load(f)
    except FileNotFoundError as e:
        raise RuntimeError_(f"no config.json in bundle {bundle!r}") from e
    except ValueError as e:
        raise RuntimeError_(f"{path}: invalid JSON: {e}") from e
    proc = cfg.get("process")
    if not isinstance(proc, dict) or not proc.get("args"):
        raise RuntimeError_(f"{path}: process.args must be a non-empty list")
    root = (cfg.get("root") or {}).get("path")
    if not root:
        raise RuntimeError_(f"{path}: root.path is required")
    rootfs = root if os.path.isabs(root) else os.path.join(bundle, root)
    if not os.path.isdir(rootfs):
        raise RuntimeError_(f"rootfs {rootfs!r} does not exist or is not a directory")
    cfg["root"]["path"] = os.path.realpath(rootfs)
    return cfg


def _parse_options(options: list[str]) -> tuple[int, int, str]:
    flags = 0
    prop = 0
    data: list[str] = []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            clear, bit = _MOUNT_FLAGS[opt]
            flags = flags & ~bit if clear else flags | bit
        elif opt in _PROPAGATION:
            prop |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


_KERNEL_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue"})


def _strict(dest: str, mtype: str) -> bool:
    """True where the runtime will not follow a symlink of the image: its kernel filesystems and
    everything at or under /dev (runc refuses proc and sysfs on anything but an ordinary directory)."""
    d = os.path.normpath("/" + dest.lstrip("/"))
    return mtype in _KERNEL_FS or d == "/dev" or d.startswith("/dev/")


def _open_target(root_fd: int, dest: str, create: str | None, strict: bool) -> int:
    """O_PATH descriptor of ``dest`` inside the rootfs (see agent_runtime.oci.inroot); RuntimeError_
    when ``strict`` and the path passes through a symlink, or when it cannot be made."""
    try:
        return open_in_root(root_fd, dest, create=create, no_symlinks=strict)
    except SymlinkRefused as e:
        raise _refusal(e, dest) from None
    except OSError as e:
        raise RuntimeError_(f"rootfs: cannot prepare {dest}: {e.strerror or e}") from None


def check_rootfs_links(cfg: dict[str, Any]) -> None:
    """Refuse (RuntimeError_) a rootfs where a path the runtime prepares itself — a kernel filesystem's
    mount point, /dev and anything under it, the default /dev nodes — is or passes through a symlink.

    A host-side check made when the bundle is written, for every OCI runtime (runc 1.1 creates its
    /dev symlinks through such a link on the host), on the rootfs of ``cfg["root"]["path"]``;
    ``shoal-oci`` checks again as it prepares each path. Missing paths are fine (they are made).
    """
    rootfs = cfg["root"]["path"]
    dests = [str(m.get("destination")) for m in cfg.get("mounts") or []
             if _strict(str(m.get("destination") or "/"), m.get("type") or "")]
    dests += ["/dev"] + ["/dev/" + name for name in _DEFAULT_DEVICES]
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for dest in dests:
            try:
                os.close(open_in_root(root_fd, dest, no_symlinks=True))
            except SymlinkRefused as e:
                raise _refusal(e, dest) from None
            except (FileNotFoundError, NotADirectoryError):
                pass
    finally:
        os.close(root_fd)


def _refusal(e: SymlinkRefused, dest: str) -> RuntimeError_:
    where = e.link if os.path.normpath(e.link) == os.path.normpath(dest) else f"{e.link} (on the way to {dest})"
    return RuntimeError_(
        f"rootfs: {where} is a symlink to {e.target!r}; the runtime mounts kernel filesystems and /dev "
        "only on real directories of the image and does not follow its links there: make it a "
        "directory (or remove it) in the image")


def _mount_at(root_fd: int, dest: str, strict: bool, source: str | None, fstype: str | None, flags: int,
              data: str | None = None, create: str | None = None) -> None:
    """mount(2) onto ``dest`` inside the rootfs through ``/proc/self/fd/N`` of a descriptor opened by
    :func:`_open_target`, so the kernel never looks the destination up by name (runc's WithProcfd).
    A later call on the same ``dest`` (remount, propagation) opens it again and so reaches the new
    mount on top."""
    fd = _open_target(root_fd, dest, create, strict)
    try:
        libc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _mount_cgroup(root_fd: int, dest: str, flags: int, cgroup_rel: str) -> None:
    """Mount the container's view of /sys/fs/cgroup: cgroup2 on v2; on v1 a tmpfs holding a bind of the
    container's own cgroup directory of each hierarchy (as runc does without a cgroup namespace)."""
    ro = flags & libc.MS_RDONLY
    if is_v2():
        _mount_at(root_fd, dest, True, "cgroup2", "cgroup2", flags, create="dir")
        return
    _mount_at(root_fd, dest, True, "tmpfs", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=755",
              create="dir")
    for mnt in v1_hierarchies().values():
        src = os.path.join(mnt, cgroup_rel)
        if not os.path.isdir(src):
            continue
        dst = dest.rstrip("/") + "/" + os.path.basename(mnt)
        _mount_at(root_fd, dst, True, src, None, libc.MS_BIND, create="dir")
        _mount_at(root_fd, dst, True, None, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & ~libc.MS_REC) | ro)


def _mount_one(root_fd: int, m: dict[str, Any], cgroup_rel: str) -> None:
    dest = m.get("destination")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise RuntimeError_(f"mount destination {dest!r} must be an absolute path")
    mtype = m.get("type") or ""
    source = m.get("source") or mtype
    flags, prop, data = _parse_options(list(m.get("options") or []))
    strict = _strict(dest, mtype)
    if flags & libc.MS_BIND or mtype == "bind":
        flags |= libc.MS_BIND
        if not os.path.exists(source):
            raise RuntimeError_(f"bind mount source {source!r} for {dest!r} does not exist")
        create = "dir" if os.path.isdir(source) else "file"
        _mount_at(root_fd, dest, strict, source, None, flags & (libc.MS_BIND | libc.MS_REC), create=create)
        extra = flags & ~(libc.MS_BIND | libc.MS_REC)
        if extra:
            _mount_at(root_fd, dest, strict, None, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & ~libc.MS_REC))
    elif mtype == "cgroup":
        _mount_cgroup(root_fd, dest, flags, cgroup_rel)
    else:
        try:
            _mount_at(root_fd, dest, strict, source, mtype, flags, data or None, create="dir")
        except OSError:
            if mtype == "sysfs" and os.path.normpath(dest) == "/sys":
                # Without a private network namespace sysfs cannot be mounted; bind it as runc does.
                _mount_at(root_fd, dest, strict, "/sys", None, libc.MS_BIND | libc.MS_REC)
                _mount_at(root_fd, dest, strict, None, None,
                          libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC)
            elif mtype == "mqueue":
                return
            else:
                raise
    if prop:
        _mount_at(root_fd, dest, strict, None, None, prop)


def _setup_dev(root_fd: int) -> None:
    """runc's default /dev: the host's null, zero, full, random, urandom and tty bound onto files of the
    container's /dev, and the fd/stdin/stdout/stderr/core/ptmx symlinks. Every path is opened inside
    the rootfs and none may pass through a symlink (RuntimeError_ otherwise)."""
    dev = _open_target(root_fd, "/dev", "dir", True)
    try:
        for name in _DEFAULT_DEVICES:
            host = "/dev/" + name
            if not os.path.exists(host):
                continue
            fd = _open_target(root_fd, host, "file", True)
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    continue
                libc.mount(host, f"/proc/self/fd/{fd}", None, libc.MS_BIND)
            finally:
                os.close(fd)
        links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                 "stderr": "/proc/self/fd/2"}
        if os.path.exists("/proc/kcore"):
            links["core"] = "/proc/kcore"
        try:
            if stat.S_ISDIR(os.stat("pts", dir_fd=dev, follow_symlinks=False).st_mode):
                links["ptmx"] = "pts/ptmx"
        except FileNotFoundError:
            pass
        for name, target in links.items():
            try:
                os.symlink(target, name, dir_fd=dev)  # symlinkat(2) never follows ``name``
            except FileExistsError:
                pass
    finally:
        os.close(dev)


def _pivot(rootfs: str) -> None:
    os.chdir(rootfs)
    libc.pivot_root(".", ".")
    # The old root is now stacked under "."; make it private and detach it.
    libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def _mask(paths: list[str]) -> None:
    for p in paths:
        if not os.path.lexists(p):
            continue
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                libc.mount("tmpfs", p, "tmpfs", libc.MS_RDONLY)
            else:
                libc.mount("/dev/null", p, None, libc.MS_BIND)
        except OSError:
            pass


def _kept_flags(path: str) -> int:
    """Mount flags of ``path``'s mount that a bind remount must repeat (else the kernel clears them)."""
    f = os.statvfs(path).f_flag
    out = f & (libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_NOATIME | libc.MS_NODIRATIME)
    if f & 4096:  # ST_RELATIME
        out |= libc.MS_RELATIME
    return out


def _readonly(paths: list[str]) -> None:
    for p in paths:
        if not os.path.exists(p):
            continue
        libc.mount(p, p, None, libc.MS_BIND | libc.MS_REC)
        libc.mount(None, p, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC | _kept_flags(p))


def lookup_path(arg0: str, env: dict[str, str]) -> str:
    """Resolve ``arg0`` against PATH in ``env`` (inside the container), as Go's exec.LookPath does.

    Raises FileNotFoundError with runc's wording when nothing executable is found.
    """
    if "/" in arg0:
        return arg0
    for d in (env.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        cand = os.path.join(d or ".", arg0)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return cand
    raise FileNotFoundError(f'exec: "{arg0}": executable file not found in $PATH')


def _caps(process: dict[str, Any]) -> tuple[int, int, int, int, int]:
    c = process.get("capabilities") or {}
    return (libc.cap_mask(c.get("bounding") or []), libc.cap_mask(c.get("effective") or []),
            libc.cap_mask(c.get("permitted") or []), libc.cap_mask(c.get("inheritable") or []),
            libc.cap_mask(c.get("ambient") or []))


def _rlim(v: Any) -> int:
    """An OCI rlimit value (uint64) as setrlimit takes it: 2**64-1 (and anything ≥ 2**63) is RLIM_INFINITY."""
    n = int(v)
    return resource.RLIM_INFINITY if n >= 2**63 or n < 0 else n


def _fail(msg: str, code: int = 1, sync_fd: int = -1) -> NoReturn:
    """End the container's init with ``code``: the message goes to the parent through ``sync_fd``
    while the rootfs is being prepared (the start then fails with it), to stderr afterwards."""
    try:
        if sync_fd >= 0:
            os.write(sync_fd, msg.encode())
        else:
            os.write(2, f"shoal-oci: {msg}\n".encode())
    finally:
        os._exit(code)


def container_init(cfg: dict[str, Any], netns_path: str | None, unshare_flags: int,
                   exec_fifo: str | None = None, sync_fd: int = -1) -> NoReturn:
    """Run in the forked child (PID 1 of the new pid namespace, already in its cgroup); never returns.

    Joins/creates the remaining namespaces, builds the root filesystem, drops privileges and
    execs ``process.args``. With ``exec_fifo`` (``create``), it blocks just before the exec until
    ``start`` opens that FIFO, as runc does. Once the namespaces, mounts, ``pivot_root``, sysctls,
    masked paths and hostname are in place it writes one NUL byte to ``sync_fd`` and closes it; an
    error before that is written there instead (the parent refuses the start with it) and the init
    exits 1. Later it exits 127 if the executable is missing, 126 if not executable, 1 for any other
    error (message on stderr).
    """
    try:
        fifo_fd = os.open(exec_fifo, os.O_PATH | os.O_CLOEXEC) if exec_fifo else -1
        process = cfg["process"]
        linux = cfg.get("linux") or {}
        rootfs = cfg["root"]["path"]
        if netns_path:
            fd = os.open(netns_path, os.O_RDONLY)
            libc.setns(fd, libc.CLONE_NEWNET)
            os.close(fd)
        libc.unshare(unshare_flags)
        if unshare_flags & libc.CLONE_NEWNS:
            prop = _PROPAGATION.get(linux.get("rootfsPropagation") or "rprivate", libc.MS_PRIVATE | libc.MS_REC)
            libc.mount(None, "/", None, prop | libc.MS_REC)
            libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)
            # Opened after the bind so that lookups from it see the mounts made below.
            root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for m in cfg.get("mounts") or []:
                    _mount_one(root_fd, m, str(linux.get("cgroupsPath") or "").strip("/"))
                _setup_dev(root_fd)
            finally:
                os.close(root_fd)
            _pivot(rootfs)
            for key, value in (linux.get("sysctl") or {}).items():
                if "/" in key or ".." in key or not key.strip("."):
                    raise RuntimeError_(f"invalid sysctl name {key!r}: use dotted names like net.ipv4.ip_forward")
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(str(value))
            _readonly(list(linux.get("readonlyPaths") or []))
            _mask(list(linux.get("maskedPaths") or []))
            if (cfg.get("root") or {}).get("readonly"):
                libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC)
        else:
            os.chroot(rootfs)
            os.chdir("/")
        if cfg.get("hostname") and unshare_flags & libc.CLONE_NEWUTS:
            libc.sethostname(cfg["hostname"])
        if sync_fd >= 0:
            os.write(sync_fd, b"\0")
            os.close(sync_fd)
            sync_fd = -1
        for rl in process.get("rlimits") or []:
            kind = _RLIMITS.get(rl["type"])
            if kind is None:
                _fail(f"unknown rlimit {rl['type']!r}")
            resource.setrlimit(kind, (_rlim(rl["soft"]), _rlim(rl["hard"])))
        if process.get("oomScoreAdj") is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(int(process["oomScoreAdj"])))
        if process.get("noNewPrivileges"):
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        bounding, eff, perm, inh, amb = _caps(process)
        last = libc.cap_last_cap()
        for cap in range(last + 1):
            if not bounding & (1 << cap):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
        user = process.get("user") or {}
        uid = int(user.get("uid", 0))
        gid = int(user.get("gid", 0))
        if uid != 0:
            libc.prctl(libc.PR_SET_KEEPCAPS, 1)
        os.setgroups([int(g) for g in user.get("additionalGids") or []])
        os.setgid(gid)
        os.setuid(uid)
        libc.capset(eff, perm, inh)
        for cap in range(last + 1):
            if amb & (1 << cap):
                try:
                    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, cap)
                except OSError:
                    pass  # not in inheritable/permitted: runc also only warns here
        env: dict[str, str] = {}
        for kv in process.get("env") or []:
            k, _, v = kv.partition("=")
            env[k] = v
        cwd = process.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError as e:
            _fail(f"chdir to cwd ({cwd!r}) set in config.json failed: {e.strerror}", 1)
        args = [str(a) for a in process["args"]]
        try:
            path = lookup_path(args[0], env)
        except FileNotFoundError as e:
            _fail(str(e.args[0]), 127)
        if fifo_fd >= 0:
            w = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)  # blocks until `start`
            os.write(w, b"0")
            os.close(w)
            os.close(fifo_fd)
        try:
            os.execve(path, args, env)
        except FileNotFoundError:
            _fail(f'exec: "{args[0]}": stat {path}: no such file or directory', 127)
        except PermissionError:
            _fail(f'exec: "{args[0]}": permission denied', 126)
        except OSError as e:
            _fail(f'exec: "{args[0]}": {e.strerror}', 126)
    except RuntimeError_ as e:
        _fail(str(e), sync_fd=sync_fd)
    except OSError as e:
        _fail(f"container init: {e}", sync_fd=sync_fd)
    except Exception as e:  # noqa: BLE001 - anything else must still end the child
        _fail(f"container init: {type(e).__name__}: {e}", sync_fd=sync_fd)
    os._exit(1)


def _atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run(bundle: str, cid: str, pid_file: str | None, state_root: str, *, exec_fifo: bool = False,
        keep_state: bool = False, on_ready: Callable[[], None] | None = None) -> int:
    """``shoal-oci run``: start the bundle's process in the foreground and return its exit code.

    Exit code is the container's (128+signal when killed). stdio is inherited. Signals
    TERM/INT/HUP/QUIT/USR1/USR2 sent to us are forwarded to the container's init.
    The cgroup and the state directory ``<state_root>/<id>`` are removed before returning, unless
    ``keep_state`` (``create``: the state then says ``stopped`` with the exit code until ``delete``).
    ``exec_fifo`` makes the container wait before its exec until ``start`` (``<state>/exec.fifo``);
    ``on_ready`` is called once the container's root filesystem is ready (its init waits for the
    exec) and the pid file and state are written. Raises RuntimeError_ for a bad bundle and for a
    rootfs the init refused to prepare (nothing is left then: no process, cgroup or state).
    """
    cfg = load_config(bundle)
    if cfg["process"].get("terminal"):
        raise RuntimeError_("process.terminal=true is not supported by shoal-oci (no console socket); "
                            "set it to false and read the container's stdio")
    linux = cfg.get("linux") or {}
    flags = 0
    netns_path = None
    pidns_path = None
    for ns in linux.get("namespaces") or []:
        t = ns.get("type")
        if t not in libc.NAMESPACE_FLAGS:
            raise RuntimeError_(f"unknown namespace type {t!r}")
        if t == "user":
            raise RuntimeError_("user namespaces are not supported by shoal-oci")
        if ns.get("path"):
            if t == "network":
                netns_path = ns["path"]
            elif t == "pid":
                pidns_path = ns["path"]
            else:
                raise RuntimeError_(f"joining an existing {t} namespace is not supported")
            if not os.path.exists(ns["path"]):
                raise RuntimeError_(f"{t} namespace path {ns['path']!r} does not exist")
        else:
            flags |= libc.NAMESPACE_FLAGS[t]
    state_dir = os.path.join(state_root, cid)
    try:
        os.makedirs(state_root, mode=0o700, exist_ok=True)
        os.mkdir(state_dir, 0o700)
    except FileExistsError as e:
        raise RuntimeError_(f"container {cid!r} already exists in {state_root}") from e
    cg = Cgroup(linux.get("cgroupsPath") or f"/shoal-oci/{cid}")
    fifo = os.path.join(state_dir, "exec.fifo") if exec_fifo else None
    if fifo:
        os.mkfifo(fifo, 0o622)
    go_r, go_w = os.pipe()
    sync_r, sync_w = os.pipe()  # both close-on-exec: the init's end closes at its exec at the latest
    pid = -1
    code: int | None = None
    started = False
    try:
        try:
            cg.create()
            cg.apply(linux.get("resources") or {})
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise RuntimeError_(f"cgroup {cg.rel}: {e.strerror or e}{where}; the container is not started") from None
        if pidns_path:
            fd = os.open(pidns_path, os.O_RDONLY)
            libc.setns(fd, libc.CLONE_NEWPID)
            os.close(fd)
        elif flags & libc.CLONE_NEWPID:
            libc.unshare(libc.CLONE_NEWPID)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(sync_r)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                      signal.SIGUSR2, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            if os.read(go_r, 1) != b"1":
                os._exit(1)
            os.close(go_r)
            container_init(cfg, netns_path, flags & ~libc.CLONE_NEWPID, fifo, sync_w)
        os.close(go_r)
        go_r = -1
        os.close(sync_w)
        sync_w = -1
        cg.add(pid)

        def forward(signum: int, _frame: Any) -> None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(s, forward)
        os.write(go_w, b"1")
        os.close(go_w)
        go_w = -1
        # The init prepares the rootfs, then sends one NUL byte, or an error message and exits.
        report = b""
        while chunk := os.read(sync_r, 65536):
            report += chunk
        if report != b"\0":
            _, status = os.waitpid(pid, 0)
            pid = -1
            raise RuntimeError_(report.decode(errors="replace") or
                                f"container init exited (status {os.waitstatus_to_exitcode(status)}) "
                                "before its root filesystem was ready")
        if pid_file:
            _atomic_write(pid_file, str(pid))
        _atomic_write(os.path.join(state_dir, "state.json"), json.dumps({
            "ociVersion": cfg.get("ociVersion", "1.0.2"), "id": cid, "pid": pid, "bundle": os.path.abspath(bundle),
            "cgroupsPath": cg.rel, "created": time.time(),
        }))
        started = True
        if on_ready is not None:
            on_ready()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        return code
    except BaseException:
        if pid > 0:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        raise
    finally:
        for fd in (go_r, go_w, sync_r, sync_w):
            if fd >= 0:
                os.close(fd)
        try:
            cg.destroy()
        except OSError as e:
            print(f"shoal-oci: warning: {e}", file=sys.stderr)
        if keep_state and started:
            try:
                with open(os.path.join(state_dir, "state.json")) as f:
                    st = json.load(f)
                st.update(stopped=True, exitCode=code)
                _atomic_write(os.path.join(state_dir, "state.json"), json.dumps(st))
            except (OSError, ValueError):
                pass
        else:
            for name in ("state.json", "exec.fifo"):
                try:
                    os.unlink(os.path.join(state_dir, name))
                except OSError:
                    pass
            try:
                os.rmdir(state_dir)
            except OSError:
                pass
