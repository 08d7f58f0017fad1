"""Run a command inside a running container (what ``docker exec`` does; the health checks use it).

:func:`exec_in` starts a small helper process (this module's :func:`main`, run by this Python in
isolated mode) which

1. moves itself into the container's cgroup (its ``linux.cgroupsPath``, in every hierarchy: v2,
   v1 or hybrid), so the command counts against the container's limits;
2. joins the init's ipc, uts, net, pid, cgroup and mount namespaces (setns(2) with the
   ``/proc/<pid>/ns/*`` files, mount last) and takes its root (``/proc/<pid>/root``);
3. forks (the child is then in the container's pid namespace), and the child takes the
   container's process settings from its OCI ``config.json``: no_new_privs, the capability
   bounding set and the effective/permitted/inheritable sets, the user and groups, ``cwd`` and
   ``env``, then execs the command (found with the container's PATH);
4. waits for it and exits with its code (128 + N when killed by signal N).

util-linux's ``nsenter`` would do steps 1–2 but leaves the command with every capability of the
daemon (the probe of a hostile image could then load a kernel module): the container's own
privileges are what ``docker exec`` gives, so the helper drops to them before the exec.

Exit codes of the helper itself: 126 when it could not enter the container or exec the command,
127 when the command is not found (the message on stderr, as runc words it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from agent_runtime.oci import libc
from agent_runtime.oci.cgroups import Cgroup

NAMESPACES = ("ipc", "uts", "net", "pid", "cgroup", "mnt")
"""Joined in this order (mount last: after it the host's paths are gone)."""
DEFAULT_OUTPUT_LIMIT = 4096
"""Bytes of output :func:`exec_in` keeps by default (the rest is read and dropped)."""
_CODE_ROOT = str(Path(__file__).resolve().parents[1])
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def helper_argv(request: dict[str, Any]) -> list[str]:
    """The helper's command line for ``request`` (see :func:`main`)."""
    boot = f"import sys; sys.path.insert(0, {_CODE_ROOT!r}); from agent_runtime.execin import main; main()"
    return [sys.executable, "-I", "-S", "-c", boot, json.dumps(request)]


async def exec_in(pid: int, process: dict[str, Any], args: list[str], timeout: float,
                  output_limit: int = DEFAULT_OUTPUT_LIMIT, cgroups_path: str | None = None) -> tuple[int, bytes]:
    """Run ``args`` inside the container whose init is host PID ``pid``; return ``(exit code, output)``.

    ``process``: the ``process`` object of the container's OCI config (``env``, ``cwd``, ``user``,
    ``capabilities``, ``noNewPrivileges``); ``cgroups_path``: its ``linux.cgroupsPath`` (``/shoal/<id>``,
    joined in every hierarchy in use; None: none). ``output``: stdout and stderr together, the first
    ``output_limit`` bytes (the rest is read and dropped). ``timeout``: seconds; when it passes the
    command and the helper are killed (SIGKILL to the helper's process group) and TimeoutError is
    raised. Raises OSError when the helper cannot be started, ValueError for an empty ``args``.
    """
    if not args:
        raise ValueError("exec: no command given")
    request = {"pid": pid, "cgroupsPath": cgroups_path or "", "args": [str(a) for a in args], "env": list(process.get("env") or []),
               "cwd": process.get("cwd") or "/", "user": process.get("user") or {},
               "capabilities": process.get("capabilities") or {},
               "noNewPrivileges": bool(process.get("noNewPrivileges"))}
    proc = await asyncio.create_subprocess_exec(
        *helper_argv(request), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    kept = bytearray()

    async def drain() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            if len(kept) < output_limit:
                kept.extend(chunk[:output_limit - len(kept)])
        await proc.wait()

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        raise
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return (128 - code if code < 0 else code), bytes(kept)


def _die(msg: str, code: int = 126) -> NoReturn:
    os.write(2, f"exec: {msg}\n".encode())
    os._exit(code)


def _lookup(arg0: str, env: dict[str, str]) -> str:
    if "/" in arg0:
        return arg0
    for d in (env.get("PATH") or _DEFAULT_PATH).split(":"):
        cand = os.path.join(d or ".", arg0)
        with contextlib.suppress(OSError):
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    _die(f'"{arg0}": executable file not found in $PATH', 127)


def _child(req: dict[str, Any], last_cap: int) -> NoReturn:
    """In the container's pid namespace: drop to the container's privileges and exec."""
    caps = req.get("capabilities") or {}
    bounding = libc.cap_mask(caps.get("bounding") or [])
    if req.get("noNewPrivileges"):
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(last_cap + 1):
        if not bounding & (1 << cap):
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
    user = req.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if uid != 0:
        libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setgid(gid)
    os.setuid(uid)
    libc.capset(libc.cap_mask(caps.get("effective") or []), libc.cap_mask(caps.get("permitted") or []),
                libc.cap_mask(caps.get("inheritable") or []))
    env = dict(kv.partition("=")[::2] for kv in req.get("env") or [])
    try:
        os.chdir(req.get("cwd") or "/")
    except OSError as e:
        _die(f"chdir to {req.get('cwd')!r} failed: {e.strerror}")
    args = [str(a) for a in req["args"]]
    path = _lookup(args[0], env)
    try:
        os.execve(path, args, env)
    except FileNotFoundError:
        _die(f'"{args[0]}": stat {path}: no such file or directory', 127)
    except OSError as e:
        _die(f'"{args[0]}": {e.strerror}')


def main() -> NoReturn:
    """The helper: ``argv[1]`` is the JSON request ``{"pid", "cgroupsPath", "args", "env", "cwd", "user",
    "capabilities", "noNewPrivileges"}``; see the module docstring."""
    try:
        req = json.loads(sys.argv[1])
        pid = int(req["pid"])
        last_cap = libc.cap_last_cap()
        if req.get("cgroupsPath"):
            Cgroup(str(req["cgroupsPath"])).add(os.getpid())
        fds = [(ns, os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)) for ns in NAMESPACES]
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for ns, fd in fds:
            try:
                libc.setns(fd, 0)
            except OSError as e:
                _die(f"joining the container's {ns} namespace failed: {e}")
            os.close(fd)
        os.fchdir(root)
        os.chroot(".")
        os.close(root)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the helper must end with a message, whatever failed
        _die(f"entering the container failed: {e}")
    child = os.fork()
    if child == 0:
        try:
            _child(req, last_cap)
        except Exception as e:  # noqa: BLE001
            _die(f"{type(e).__name__}: {e}")
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
