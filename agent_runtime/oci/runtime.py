"""The container side of ``shoal-oci run``: namespaces, cgroup, mounts, pivot_root, credentials, exec.

Follows the OCI runtime specification 1.0 (config.md, config-linux.md, runtime.md) and, for
the details the spec leaves open, what runc does (documented in its libcontainer/SPEC.md):
default /dev nodes bound from the host, /dev/{fd,stdin,stdout,stderr,ptmx} symlinks,
``pivot_root(".", ".")`` then a lazy unmount of the old root, masked paths covered by
/dev/null or a read-only tmpfs. Implemented: namespaces (new, or joining a network/pid namespace by
path), cgroups v1/v2 resources (memory, cpu, pids, v1 devices), mounts, sysctl, rlimits,
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
from agent_runtime.oci.cgroups import Cgroup

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


def secure_join(root: str, path: str) -> str:
    """Join ``path`` under ``root`` resolving symlinks as if ``root`` were ``/`` (no escape via ``..`` or links)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            if resolved:
                resolved.pop()
            continue
        cand = os.path.join(root, *resolved, p)
        if os.path.islink(cand):
            hops += 1
            if hops > 255:
                raise OSError(40, f"too many symlinks resolving {path!r} in {root!r}")
            target = os.readlink(cand)
            if target.startswith("/"):
                resolved = []
            parts = [t for t in target.split("/") if t and t != "."] + parts
            continue
        resolved.append(p)
    return os.path.join(root, *resolved)


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


def _mount_cgroup(target: str, flags: int, cgroup_rel: str) -> None:
    """Mount the container's view of /sys/fs/cgroup: cgroup2 on v2; on v1 a tmpfs holding a bind of the
    container's own cgroup directory of each hierarchy (as runc does without a cgroup namespace)."""
    from agent_runtime.oci.cgroups import is_v2, v1_hierarchies

    os.makedirs(target, exist_ok=True)
    ro = flags & libc.MS_RDONLY
    if is_v2():
        libc.mount("cgroup2", target, "cgroup2", flags)
        return
    libc.mount("tmpfs", target, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=755")
    for ctrl, mnt in v1_hierarchies().items():
        name = os.path.basename(mnt)
        src = os.path.join(mnt, cgroup_rel)
        if not os.path.isdir(src):
            continue
        dst = os.path.join(target, name)
        os.makedirs(dst, exist_ok=True)
        libc.mount(src, dst, None, libc.MS_BIND)
        libc.mount(None, dst, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & ~libc.MS_REC) | ro)
        del ctrl


def _mount_one(rootfs: str, m: dict[str, Any], cgroup_rel: str) -> None:
    dest = m["destination"]
    mtype = m.get("type") or ""
    source = m.get("source") or mtype
    flags, prop, data = _parse_options(list(m.get("options") or []))
    target = secure_join(rootfs, dest)
    if flags & libc.MS_BIND or mtype == "bind":
        flags |= libc.MS_BIND
        if not os.path.exists(source):
            raise RuntimeError_(f"bind mount source {source!r} for {dest!r} does not exist")
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        libc.mount(source, target, None, flags & (libc.MS_BIND | libc.MS_REC))
        extra = flags & ~(libc.MS_BIND | libc.MS_REC)
        if extra:
            libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & ~libc.MS_REC))
    elif mtype == "cgroup":
        _mount_cgroup(target, flags, cgroup_rel)
    else:
        os.makedirs(target, exist_ok=True)
        try:
            libc.mount(source, target, mtype, flags, data or None)
        except OSError:
            if mtype == "sysfs" and dest == "/sys":
                # Without a private network namespace sysfs cannot be mounted; bind it as runc does.
                libc.mount("/sys", target, None, libc.MS_BIND | libc.MS_REC)
                libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC)
            elif mtype == "mqueue":
                return
            else:
                raise
    if prop:
        libc.mount(None, target, None, prop)


def _setup_dev(rootfs: str) -> None:
    dev = os.path.join(rootfs, "dev")
    os.makedirs(dev, exist_ok=True)
    for name in _DEFAULT_DEVICES:
        host = "/dev/" + name
        target = os.path.join(dev, name)
        if not os.path.exists(host):
            continue
        if os.path.lexists(target) and stat.S_ISCHR(os.lstat(target).st_mode):
            continue
        if not os.path.exists(target):
            open(target, "a").close()
        libc.mount(host, target, None, libc.MS_BIND)
    links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}
    if os.path.exists("/proc/kcore"):
        links["core"] = "/proc/kcore"
    if os.path.isdir(os.path.join(dev, "pts")):
        links["ptmx"] = "pts/ptmx"
    for name, target in links.items():
        path = os.path.join(dev, name)
        if os.path.lexists(path):
            if name == "ptmx":
                continue
            continue
        os.symlink(target, path)


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


def _fail(msg: str, code: int = 1) -> NoReturn:
    try:
        os.write(2, f"shoal-oci: {msg}\n".encode())
    finally:
        os._exit(code)


def container_init(cfg: dict[str, Any], netns_path: str | None, unshare_flags: int,
                   exec_fifo: str | None = None) -> NoReturn:
    """Run in the forked child (PID 1 of the new pid namespace, already in its cgroup); never returns.

    Joins/creates the remaining namespaces, builds the root filesystem, drops privileges and
    execs ``process.args``. With ``exec_fifo`` (``create``), it blocks just before the exec until
    ``start`` opens that FIFO, as runc does. Exits 127 if the executable is missing, 126 if not
    executable, 1 for any other setup error (message on stderr).
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
            for m in cfg.get("mounts") or []:
                _mount_one(rootfs, m, str(linux.get("cgroupsPath") or "").strip("/"))
            _setup_dev(rootfs)
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
        _fail(str(e))
    except OSError as e:
        _fail(f"container init: {e}")
    except Exception as e:  # noqa: BLE001 - anything else must still end the child
        _fail(f"container init: {type(e).__name__}: {e}")
    os._exit(1)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
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
    ``on_ready`` is called once the container process exists and the state is written.
    Raises RuntimeError_ for a bad bundle.
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
        os.makedirs(state_dir)
    except FileExistsError as e:
        raise RuntimeError_(f"container {cid!r} already exists in {state_root}") from e
    cg = Cgroup(linux.get("cgroupsPath") or f"/shoal-oci/{cid}")
    fifo = os.path.join(state_dir, "exec.fifo") if exec_fifo else None
    if fifo:
        os.mkfifo(fifo, 0o622)
    go_r, go_w = os.pipe()
    pid = -1
    code: int | None = None
    try:
        cg.create()
        cg.apply(linux.get("resources") or {})
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
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                      signal.SIGUSR2, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            if os.read(go_r, 1) != b"1":
                os._exit(1)
            os.close(go_r)
            container_init(cfg, netns_path, flags & ~libc.CLONE_NEWPID, fifo)
        os.close(go_r)
        go_r = -1
        cg.add(pid)
        if pid_file:
            _atomic_write(pid_file, str(pid))
        _atomic_write(os.path.join(state_dir, "state.json"), json.dumps({
            "ociVersion": cfg.get("ociVersion", "1.0.2"), "id": cid, "pid": pid, "bundle": os.path.abspath(bundle),
            "cgroupsPath": cg.rel, "created": time.time(),
        }))

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
        for fd in (go_r, go_w):
            if fd >= 0:
                os.close(fd)
        try:
            cg.destroy()
        except OSError as e:
            print(f"shoal-oci: warning: {e}", file=sys.stderr)
        if keep_state and pid > 0:
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
