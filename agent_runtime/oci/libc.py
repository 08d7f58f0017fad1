"""Thin ctypes bindings to the Linux system calls the OCI runtime needs.

Python 3.11 has no ``os.unshare``/``os.setns``; these wrappers call glibc directly and raise
``OSError`` (with errno and a message naming the call and its arguments) on failure.
Constants and semantics follow the Linux man pages: unshare(2), setns(2), mount(2), umount(2),
pivot_root(2), sethostname(2), prctl(2), capset(2), capabilities(7), bpf(2).
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL("libc.so.6", use_errno=True)

# clone(2) namespace flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "cgroup": CLONE_NEWCGROUP,
    "user": CLONE_NEWUSER,
}

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_PIVOT_ROOT = 155  # x86_64
SYS_CAPSET = 126  # x86_64
SYS_BPF = 321  # x86_64
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces given by CLONE_NEW* ``flags``."""
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace referred to by the open file descriptor ``fd``."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd={fd}, 0x{nstype:x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2). ``flags`` are MS_* bits; ``data`` is the filesystem-specific option string."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount({source!r}, {target!r}, {fstype!r}, 0x{flags:x}, {data!r})")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2): unmount ``target`` (``MNT_DETACH`` for a lazy unmount)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount2({target!r}, {flags})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) through syscall(2) (glibc has no wrapper)."""
    ret = _libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), _b(new_root), _b(put_old))
    _check(ret, f"pivot_root({new_root!r}, {put_old!r})")


def bpf(cmd: int, attr: int, size: int) -> int:
    """bpf(2) through syscall(2): ``cmd`` (``BPF_PROG_LOAD`` …) with the ``union bpf_attr`` at address
    ``attr`` of ``size`` bytes; returns the call's result (a new fd, close-on-exec, for loads)."""
    ret = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), ctypes.c_void_p(attr), ctypes.c_uint(size))
    return _check(ret, f"bpf(cmd={cmd})")


def sethostname(name: str) -> None:
    """sethostname(2) in the calling process's UTS namespace."""
    b = name.encode()
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments; returns the call's result."""
    return _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option}, {arg2})",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for the calling thread with 64-bit capability masks (version 3 header)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    ret = _libc.syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(hdr), ctypes.byref(data))
    _check(ret, "capset")


def cap_last_cap() -> int:
    """Highest capability number the running kernel knows (/proc/sys/kernel/cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except OSError:
        return 40


def cap_mask(names: list[str]) -> int:
    """Return the bit mask of capability ``names`` (``CAP_*``); raises ValueError for an unknown name."""
    mask = 0
    for n in names:
        key = n.upper() if n.upper().startswith("CAP_") else "CAP_" + n.upper()
        if key not in CAPABILITIES:
            raise ValueError(f"unknown capability {n!r}")
        mask |= 1 << CAPABILITIES[key]
    return mask
