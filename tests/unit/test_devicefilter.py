"""The cgroup v2 device program built from OCI device rules (agent_runtime.oci.devicefilter; no root).

The program's bytes are decoded and run by a small evaluator written here (only the instructions the
builder may emit; forward jumps only), and its decisions are compared with the cgroup v1 devices
controller's semantics, modelled independently below from Documentation/admin-guide/cgroup-v1/
devices.rst and security/device_cgroup.c: the same rules mean the same on v1 and v2.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_runtime.bundle import _DEVICE_RULES
from agent_runtime.oci import cgroups
from agent_runtime.oci.devicefilter import (
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    DEV_BLOCK,
    DEV_CHAR,
    DeviceFilterError,
    Insn,
    encode,
    program,
)

B, C = DEV_BLOCK, DEV_CHAR
M, R, W = ACC_MKNOD, ACC_READ, ACC_WRITE
U32 = 0xFFFFFFFF


def run_program(code: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    """Decode ``code`` (struct bpf_insn, little-endian) and run it on a bpf_cgroup_dev_ctx."""
    assert len(code) % 8 == 0
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    reg = [0] * 11
    pc = 0
    for _ in range(len(insns)):  # forward jumps only: at most one pass
        op, regs, off, imm = insns[pc]
        dst, src = regs & 0xF, regs >> 4
        pc += 1
        if op == 0x61:  # ldxw dst, [src+off]; r1 is the context
            assert src == 1 and off in (0, 4, 8)
            reg[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == 0x54:
            reg[dst] = (reg[dst] & imm) & U32
        elif op == 0x74:
            reg[dst] = (reg[dst] & U32) >> imm
        elif op == 0xB4:
            reg[dst] = imm & U32
        elif op == 0xBC:
            reg[dst] = reg[src] & U32
        elif op in (0x15, 0x55, 0x5D):
            assert off >= 0, "backward jump"
            other = reg[src] if op == 0x5D else imm
            if (reg[dst] == other) == (op == 0x15):
                pc += off
        elif op == 0x95:
            assert reg[0] in (0, 1)
            return reg[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")
    raise AssertionError("the program did not exit")


def v1_model(rules: list[dict[str, Any]]) -> Any:
    """The v1 devices controller: a child of the root starts allowing all; 'a' resets the behaviour
    and clears the exceptions; a rule that differs from the behaviour adds its bits to the exception
    with the same type/major/minor, one that agrees removes them from that exception."""
    allow_all = True
    exc: dict[tuple[int, int, int], int] = {}  # (type, major, minor) → access bits; -1 = any
    for r in rules:
        t = r.get("type") or "a"
        bits = sum({"m": M, "r": R, "w": W}[ch] for ch in set(r.get("access") or "rwm"))
        if t == "a":
            allow_all, exc = bool(r.get("allow")), {}
            continue
        key = ({"b": B, "c": C}[t], r.get("major", -1) if r.get("major") is not None else -1,
               r.get("minor", -1) if r.get("minor") is not None else -1)
        if bool(r.get("allow")) != allow_all:
            exc[key] = exc.get(key, 0) | bits
        elif key in exc:
            exc[key] &= ~bits
            if not exc[key]:
                del exc[key]

    def allowed(t: int, major: int, minor: int, access: int) -> bool:
        for (et, emaj, emin), bits in exc.items():
            if et != t or emaj not in (-1, major) or emin not in (-1, minor):
                continue
            if allow_all and access & bits:  # match_exception_partial
                return False
            if not allow_all and not access & ~bits:  # match_exception
                return True
        return allow_all

    return allowed


def test_encoding_of_a_small_rule_set() -> None:
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
             {"allow": True, "type": "b", "access": "m"}]
    assert program(rules) == [
        Insn(0x61, dst=2, src=1, off=0), Insn(0x54, dst=2, imm=0xFFFF),  # r2 = type
        Insn(0x61, dst=3, src=1, off=0), Insn(0x74, dst=3, imm=16),  # r3 = access
        Insn(0x61, dst=4, src=1, off=4), Insn(0x61, dst=5, src=1, off=8),  # r4 = major, r5 = minor
        # c 1:3 rwm: type, major, minor tests jump over the 5-instruction block
        Insn(0x55, dst=2, off=4, imm=C), Insn(0x55, dst=4, off=3, imm=1), Insn(0x55, dst=5, off=2, imm=3),
        Insn(0xB4, dst=0, imm=1), Insn(0x95),
        # b *:* m: the requested bits must all be in "m"
        Insn(0x55, dst=2, off=5, imm=B), Insn(0xBC, dst=1, src=3), Insn(0x54, dst=1, imm=M),
        Insn(0x5D, dst=1, src=3, off=2), Insn(0xB4, dst=0, imm=1), Insn(0x95),
        Insn(0xB4, dst=0, imm=0), Insn(0x95),  # default: deny
    ]
    code = encode(program(rules))
    assert len(code) == 19 * 8
    assert code[:16] == bytes.fromhex("6112000000000000" "54020000ffff0000")  # ldxw r2, [r1+0]; and32 r2, 0xffff
    assert code[-16:] == bytes.fromhex("b400000000000000" "9500000000000000")


def test_docker_default_rules_decisions() -> None:
    code = encode(program(_DEVICE_RULES))
    decide = lambda *a: run_program(code, *a)  # noqa: E731
    assert decide(B, 8, 0, R) == 0  # /dev/sda: no read
    assert decide(B, 8, 0, R | W) == 0
    assert decide(B, 8, 0, M) == 1  # mknod is allowed (as Docker), the open is not
    assert decide(C, 1, 3, R | W) == 1  # /dev/null
    assert decide(C, 1, 9, R) == 1  # /dev/urandom
    assert decide(C, 136, 4, R | W) == 1  # /dev/pts/4
    assert decide(C, 10, 200, R | W) == 1  # /dev/net/tun
    assert decide(C, 5, 2, R | W) == 1  # /dev/ptmx
    assert decide(C, 1, 1, R) == 0  # /dev/mem
    assert decide(C, 4, 1, W) == 0  # /dev/tty1
    assert decide(C, 10, 229, R | W) == 0  # /dev/fuse
    assert decide(C, 1, 11, W) == 0  # /dev/kmsg
    allowed = v1_model(_DEVICE_RULES)
    for t, major, minor, access in itertools.product((B, C), (0, 1, 5, 8, 10, 136, 254), (0, 1, 3, 5, 9, 200),
                                                     range(1, 8)):
        assert run_program(code, t, major, minor, access) == allowed(t, major, minor, access), (t, major, minor, access)


def test_deny_list_mode_refuses_any_requested_bit() -> None:
    rules = [{"allow": True, "access": "rwm"}, {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}]
    code = encode(program(rules))
    assert run_program(code, C, 1, 3, R) == 1
    assert run_program(code, C, 1, 3, R | W) == 0  # an O_RDWR open asks for w too
    assert run_program(code, B, 8, 0, R | W) == 1


def test_rules_fold_as_on_v1() -> None:
    # A deny that matches no exception exactly does not punch a hole in a wildcard (as on v1).
    rules = [{"allow": False}, {"allow": True, "type": "c", "access": "rwm"},
             {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
    assert run_program(encode(program(rules)), C, 1, 3, R) == 1
    # An exact one removes the bits it names; a later "a" starts over.
    rules = [{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
             {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}]
    code = encode(program(rules))
    assert (run_program(code, C, 1, 3, R), run_program(code, C, 1, 3, W)) == (1, 0)
    code = encode(program(rules + [{"allow": True, "type": "a"}]))
    assert run_program(code, B, 8, 0, R | W | M) == 1


rule = st.fixed_dictionaries({
    "allow": st.booleans(), "type": st.sampled_from(["a", "b", "c", None]),
    "major": st.sampled_from([None, -1, 1, 8]), "minor": st.sampled_from([None, 0, 3]),
    "access": st.sampled_from(["", "m", "r", "w", "rw", "rm", "wm", "rwm"])})


@settings(max_examples=200, deadline=None)
@given(st.lists(rule, max_size=8))
def test_program_matches_the_v1_model(rules: list[dict[str, Any]]) -> None:
    code = encode(program(rules))
    allowed = v1_model(rules)
    for t, major, minor, access in itertools.product((B, C), (1, 8, 9), (0, 3, 4), range(1, 8)):
        assert run_program(code, t, major, minor, access) == allowed(t, major, minor, access)


@pytest.mark.parametrize("bad", [{"allow": True, "type": "x"}, {"allow": True, "type": "c", "access": "rwx"},
                                 {"allow": True, "type": "c", "major": "1"}, {"allow": True, "type": "b", "minor": 2**40}])
def test_malformed_rules_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(DeviceFilterError):
        program([bad])


def test_v2_cgroup_attaches_the_program_or_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On v2 the rules are never skipped: the program is attached to the container's directory, and a
    failure to attach is an error (the runtime then refuses the container)."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(tmp_path))
    calls: list[tuple[str, list[dict[str, Any]]]] = []
    monkeypatch.setattr(cgroups, "attach", lambda d, rules: calls.append((d, rules)))
    cg = cgroups.Cgroup("/shoal/abc")
    cg.create()
    cg.apply({"devices": _DEVICE_RULES, "pids": {"limit": 5}})
    assert calls == [(str(tmp_path / "shoal/abc"), _DEVICE_RULES)]

    def fail(d: str, rules: list[dict[str, Any]]) -> None:
        raise DeviceFilterError(1, "BPF_PROG_ATTACH of the device program failed: Operation not permitted")

    monkeypatch.setattr(cgroups, "attach", fail)
    with pytest.raises(DeviceFilterError, match="BPF_PROG_ATTACH"):
        cg.apply({"devices": _DEVICE_RULES})
