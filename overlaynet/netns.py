"""Named network namespaces kept as bind-mounted files, without /run/netns.

``ip netns add NAME`` keeps a network namespace alive by bind-mounting
``/proc/<pid>/ns/net`` onto ``/run/netns/NAME`` (iproute2 ``ip/ipnetns.c``;
ip-netns(8)).  Several ``shoald`` run on one machine in the lab, each with its
own exec root, so Shoal puts these files under ``<exec_root>/netns/`` instead.

Python 3.11 has no ``os.unshare``/``os.setns``; these helpers call libc through
ctypes.  A network namespace belongs to a *thread* (unshare(2), setns(2)), so
every namespace switch here happens in a fresh, short-lived thread and the
caller's thread never changes namespace.  Threads started by such a thread, and
processes it forks, inherit its network namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _oserror(what: str, path: str | Path | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", str(path) if path is not None else None)


def run_in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a new OS thread, wait for it and return its result (or raise its exception).

    The thread is thrown away afterwards, so ``fn`` may change the thread's
    network namespace freely.
    """
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=body, name="shoal-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def setns_current_thread(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd`` (setns(2), CLONE_NEWNET).

    Raises OSError.  Only call this in a thread you own (see :func:`run_in_thread`).
    """
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _oserror("setns(CLONE_NEWNET)")


def run_in_netns(path: str | Path, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a new thread that has joined the network namespace file ``path``.

    Raises FileNotFoundError when ``path`` does not exist and OSError when it is
    not a network namespace.
    """
    def body() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns_current_thread(fd)
        finally:
            os.close(fd)
        return fn()

    return run_in_thread(body)


def create(path: str | Path) -> None:
    """Create a new, empty network namespace and keep it alive as a bind mount on ``path``.

    The parent directory is created if needed.  Raises FileExistsError when
    ``path`` is already a mount point (a namespace is already kept there) and
    OSError from unshare(2)/mount(2) otherwise; on failure nothing is left behind.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_mountpoint(p):
        raise FileExistsError(errno.EEXIST, "a network namespace is already mounted here", str(p))
    fd = os.open(p, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def body() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _oserror("unshare(CLONE_NEWNET)", p)
        # /proc/thread-self is this thread, which now owns the new namespace.
        if _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(p), None, MS_BIND, None) != 0:
            raise _oserror("bind mount of the new network namespace", p)

    try:
        run_in_thread(body)
    except BaseException:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        raise


def remove(path: str | Path) -> None:
    """Unmount (lazily, MNT_DETACH) and delete the namespace file ``path``; a missing file is fine.

    The namespace itself disappears once no process and no other mount holds it.
    """
    p = Path(path)
    for _ in range(16):  # stacked mounts, if someone mounted twice
        if _libc.umount2(os.fsencode(p), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                break
            raise _oserror("umount", p)
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def is_mountpoint(path: str | Path) -> bool:
    """Return True when ``path`` is a mount point in this mount namespace (per /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (proc(5)).
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


@contextmanager
def iproute() -> Iterator[IPRoute]:
    """An IPRoute socket in the calling thread's network namespace, driven by a plain selector loop.

    pyroute2 0.9 makes its own event loop with ``asyncio.new_event_loop()``; when shoald has
    installed uvloop's policy that is a uvloop loop, which cannot open AF_NETLINK sockets
    ("cannot open a UDP handle, invalid family 16"), so pass a stdlib loop explicitly.
    """
    loop = asyncio.SelectorEventLoop()
    try:
        with IPRoute(use_event_loop=loop) as ipr:
            yield ipr
    finally:
        loop.close()
