"""The OCI device allow-list (``linux.resources.devices``) as a cgroup v2 eBPF program.

cgroup v2 has no ``devices.allow``/``devices.deny`` files: a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program
attached to the cgroup decides every mknod, read and write of a device node (return 1 to allow, 0
for EPERM). As runc does (libcontainer/cgroups/devices: devicefilter.go, and its v1 emulator), the
rules are first folded with the cgroup v1 semantics of Documentation/admin-guide/cgroup-v1/
devices.rst — an ``a`` rule resets to allow-all or deny-all and clears the exceptions, other rules
add or remove access bits of an exact ``type major:minor`` exception — so a rule list means the same
on v1 and v2. The program then tests each exception and returns its action, else the default.
It reads ``struct bpf_cgroup_dev_ctx`` (include/uapi/linux/bpf.h): ``access_type`` =
``(BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*``, ``major``, ``minor``.

Matching follows the kernel's v1 code (security/device_cgroup.c): in allow-list mode an access is
allowed when one exception holds every requested bit (``match_exception``); in deny-list mode it is
refused when an exception holds any requested bit (``match_exception_partial``).

:func:`program` is pure (rules → instructions), :func:`encode` gives the bytes bpf(2) loads, and
:func:`attach` loads the program and attaches it to a cgroup directory (``BPF_PROG_ATTACH`` with
``BPF_F_ALLOW_MULTI``, so a sub-cgroup cannot replace it). Instruction encoding: the kernel's
Documentation/bpf/standardization/instruction-set.rst.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import Any

from agent_runtime.oci import libc

# struct bpf_cgroup_dev_ctx values
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# opcodes (class | op | source)
LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
ALU32_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
ALU32_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
ALU32_MOV_K = 0xB4  # BPF_ALU | BPF_MOV | BPF_K
ALU32_MOV_X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X
JMP_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JMP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
JMP_JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
JMP_EXIT = 0x95  # BPF_JMP | BPF_EXIT

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2


class DeviceFilterError(OSError):
    """The device rules could not be turned into a program, loaded or attached; the message says which
    step failed and why (the container must not start without them)."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One eBPF instruction: ``code``, ``dst``/``src`` registers, jump offset ``off``, immediate ``imm``."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0


@dataclass(frozen=True, slots=True)
class DeviceException:
    """A device exception after folding: ``type`` (DEV_BLOCK/DEV_CHAR), ``major``/``minor`` (None = any),
    ``access`` (ACC_* bits)."""

    type: int
    major: int | None
    minor: int | None
    access: int


def _num(v: Any, what: str) -> int | None:
    if v is None or v == -1:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
        raise DeviceFilterError(errno.EINVAL, f"device rule {what} {v!r} is not a device number")
    return v


def fold(rules: list[dict[str, Any]]) -> tuple[bool, list[DeviceException]]:
    """Fold OCI device rules (``{"allow", "type", "major", "minor", "access"}``) with cgroup v1
    semantics, starting from allow-all as a new v1 cgroup under the root does. Returns
    ``(default_allow, exceptions)``; every exception has the action ``not default_allow``.
    Raises DeviceFilterError for a malformed rule."""
    default_allow = True
    exc: list[DeviceException] = []
    for r in rules:
        typ = r.get("type") or "a"
        access = 0
        for ch in r.get("access") or "rwm":
            if ch not in _ACCESS:
                raise DeviceFilterError(errno.EINVAL, f"device rule access {r.get('access')!r}: use letters of 'rwm'")
            access |= _ACCESS[ch]
        if typ == "a":
            default_allow = bool(r.get("allow"))
            exc = []
            continue
        if typ not in _TYPES:
            raise DeviceFilterError(errno.EINVAL, f"device rule type {typ!r}: use 'a', 'b' or 'c'")
        key = (_TYPES[typ], _num(r.get("major"), "major"), _num(r.get("minor"), "minor"))
        same = [i for i, e in enumerate(exc) if (e.type, e.major, e.minor) == key]
        if bool(r.get("allow")) != default_allow:  # an exception: add its bits (dev_exception_add)
            if same:
                e = exc[same[0]]
                exc[same[0]] = DeviceException(e.type, e.major, e.minor, e.access | access)
            else:
                exc.append(DeviceException(*key, access))
        elif same:  # back to the default for these bits (dev_exception_rm): exact matches only
            e = exc[same[0]]
            if e.access & ~access:
                exc[same[0]] = DeviceException(e.type, e.major, e.minor, e.access & ~access)
            else:
                del exc[same[0]]
    return default_allow, exc


def program(rules: list[dict[str, Any]]) -> list[Insn]:
    """The ``BPF_PROG_TYPE_CGROUP_DEVICE`` program enforcing ``rules`` (see :func:`fold`).

    Registers: r2 = device type, r3 = requested access bits, r4 = major, r5 = minor, r1 scratch.
    One block per exception, each jumping to the next block on a mismatch; then the default.
    """
    default_allow, exceptions = fold(rules)
    action = 0 if default_allow else 1
    out = [
        Insn(LDX_MEM_W, dst=2, src=1, off=0), Insn(ALU32_AND_K, dst=2, imm=0xFFFF),
        Insn(LDX_MEM_W, dst=3, src=1, off=0), Insn(ALU32_RSH_K, dst=3, imm=16),
        Insn(LDX_MEM_W, dst=4, src=1, off=4), Insn(LDX_MEM_W, dst=5, src=1, off=8),
    ]
    for e in exceptions:
        # each test is (code, dst, src, imm); the jump offsets are set once the block length is known
        tests: list[tuple[int, int, int, int]] = [(JMP_JNE_K, 2, 0, e.type)]
        block: list[Insn] = []
        if default_allow:  # a deny exception: refuse when any requested bit is in it
            if e.access != ACC_ALL:
                block += [Insn(ALU32_MOV_X, dst=1, src=3), Insn(ALU32_AND_K, dst=1, imm=e.access)]
                tests.append((JMP_JEQ_K, 1, 0, 0))
        elif e.access != ACC_ALL:  # an allow exception: allow when it holds every requested bit
            block += [Insn(ALU32_MOV_X, dst=1, src=3), Insn(ALU32_AND_K, dst=1, imm=e.access)]
            tests.append((JMP_JNE_X, 1, 3, 0))
        if e.major is not None:
            tests.append((JMP_JNE_K, 4, 0, e.major))
        if e.minor is not None:
            tests.append((JMP_JNE_K, 5, 0, e.minor))
        # layout: type test, [mov, and, access test], [major test], [minor test], mov r0, exit
        seq: list[Insn | tuple[int, int, int, int]] = [tests[0], *block, *tests[1:]]
        n = len(seq) + 2
        for i, item in enumerate(seq):
            if isinstance(item, Insn):
                out.append(item)
            else:
                code, dst, src, imm = item
                out.append(Insn(code, dst=dst, src=src, off=n - i - 1, imm=imm))
        out += [Insn(ALU32_MOV_K, dst=0, imm=action), Insn(JMP_EXIT)]
    out += [Insn(ALU32_MOV_K, dst=0, imm=1 if default_allow else 0), Insn(JMP_EXIT)]
    return out


def encode(insns: list[Insn]) -> bytes:
    """The instructions as struct bpf_insn (8 bytes each, little-endian: code, dst|src<<4, off, imm)."""
    return b"".join(struct.pack("<BBhi", i.code, (i.src << 4) | i.dst, i.off, i.imm) for i in insns)


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttach(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


def _prog_load(code: bytes, count: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
    buf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"Apache")
    attr = _ProgLoad(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=count, insns=ctypes.addressof(buf),
                     license=ctypes.addressof(lic), prog_name=b"shoal_devices", expected_attach_type=BPF_CGROUP_DEVICE)
    if log is not None:
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    return libc.bpf(BPF_PROG_LOAD, ctypes.addressof(attr), ctypes.sizeof(attr))


def load(insns: list[Insn]) -> int:
    """Load the program with bpf(2) ``BPF_PROG_LOAD`` (license "Apache"); return its fd (close-on-exec).
    Raises DeviceFilterError with the kernel's reason and, when the verifier rejects the program,
    the end of its log."""
    code = encode(insns)
    try:
        return _prog_load(code, len(insns), None)
    except OSError as e:
        first = e
    log = ctypes.create_string_buffer(65536)
    if first.errno == errno.EINVAL:  # ask again with the verifier's log to say why
        try:
            return _prog_load(code, len(insns), log)
        except OSError as e:
            first = e
    tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
    why = f" (verifier: {' / '.join(tail)})" if tail else ""
    err = first.errno or errno.EINVAL
    raise DeviceFilterError(err, f"BPF_PROG_LOAD of the device program failed: {os.strerror(err)}{why}")


def attach(cgroup_dir: str, rules: list[dict[str, Any]]) -> None:
    """Build, load and attach the program for ``rules`` to the cgroup v2 directory ``cgroup_dir``
    (``BPF_CGROUP_DEVICE``, ``BPF_F_ALLOW_MULTI``); the kernel keeps it while the cgroup lives.
    Raises DeviceFilterError naming the step and the cgroup (no CAP_BPF/CAP_SYS_ADMIN, no
    CONFIG_CGROUP_BPF, not a cgroup2 directory …)."""
    prog_fd = load(program(rules))
    try:
        try:
            dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceFilterError(e.errno or errno.EIO, f"cannot open the cgroup {cgroup_dir}: {e.strerror}") from None
        try:
            attr = _ProgAttach(target_fd=dir_fd, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_DEVICE,
                               attach_flags=BPF_F_ALLOW_MULTI)
            libc.bpf(BPF_PROG_ATTACH, ctypes.addressof(attr), ctypes.sizeof(attr))
        except OSError as e:
            raise DeviceFilterError(e.errno or errno.EIO, f"BPF_PROG_ATTACH of the device program to {cgroup_dir} "
                                    f"failed: {os.strerror(e.errno or errno.EIO)}") from None
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)
