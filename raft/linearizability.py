"""A linearizability checker for histories of register operations.

Algorithm: Wing & Gong's search for a linearization ("Testing and verifying concurrent objects",
1993) with Lowe's just-in-time linearization and memoisation of (set of linearized operations,
model state) ("Testing for linearizability", 2017) — the algorithm of porcupine and, in spirit,
Jepsen's Knossos. Registers are independent objects, so the history is split per key and each
part is checked alone (P-compositionality, Herlihy & Wing 1990).

A history is a list of :class:`Operation`: who called, the call and return times (any totally
ordered numbers; an operation that never returned has ``ret=None`` and may take effect at any
point after its call, or never), the kind (``"r"`` read, ``"w"`` write, ``"cas"``
compare-and-set), the key, the written value, the CAS expected value and the result (the value
read, or the CAS outcome as a bool). Equal times count as concurrent. Keys start with the value
``None`` (absent) unless ``init`` says otherwise.

``check_history(ops)`` returns a :class:`CheckResult`; on failure its ``explanation`` names the
key, the longest prefix that could be linearized, the state it leaves and the operation that
could not be placed next.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckResult", "Operation", "check_history", "check_key"]

INF = math.inf


@dataclass(eq=False)
class Operation:
    """One client operation; see the module docstring. ``kind`` is ``"r"``, ``"w"`` or
    ``"cas"``. Raises nothing itself; :func:`check_history` validates."""

    client: int
    call: float
    ret: float | None
    kind: str
    key: Hashable
    value: Any = None
    expected: Any = None
    result: Any = None

    def __str__(self) -> str:
        end = "…" if self.ret is None else f"{self.ret:g}"
        if self.kind == "r":
            what = f"read {self.key} -> {self.result!r}" if self.ret is not None else f"read {self.key} -> ?"
        elif self.kind == "w":
            what = f"write {self.key} := {self.value!r}"
        else:
            res = "?" if self.ret is None else ("ok" if self.result else "failed")
            what = f"cas {self.key} {self.expected!r} -> {self.value!r} ({res})"
        return f"[client {self.client} {self.call:g}..{end}] {what}"


@dataclass
class CheckResult:
    """``ok``; when not ok: ``key`` and a human ``explanation``; ``linearization`` holds, for
    the failing key, the longest linearizable prefix found (for the report)."""

    ok: bool
    key: Hashable | None = None
    explanation: str = ""
    linearization: list[Operation] = field(default_factory=list)


def _step(state: Any, op: Operation) -> tuple[bool, Any]:
    """Sequential register model: is ``op`` legal in ``state``, and the state after it."""
    if op.kind == "r":
        return (op.ret is None or op.result == state), state
    if op.kind == "w":
        return True, op.value
    if op.ret is None:  # a CAS whose outcome nobody saw: it applies iff it matches
        return True, (op.value if state == op.expected else state)
    if op.result:
        return state == op.expected, op.value
    return state != op.expected, state


class _Ev:
    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Ev | None = None
        self.prev: _Ev | None = None
        self.next: _Ev | None = None


def _lift(e: _Ev) -> None:
    assert e.prev is not None and e.match is not None and e.match.prev is not None
    e.prev.next = e.next
    if e.next is not None:
        e.next.prev = e.prev
    m = e.match
    assert m.prev is not None
    m.prev.next = m.next
    if m.next is not None:
        m.next.prev = m.prev


def _unlift(e: _Ev) -> None:
    m = e.match
    assert m is not None and m.prev is not None and e.prev is not None
    m.prev.next = m
    if m.next is not None:
        m.next.prev = m
    e.prev.next = e
    if e.next is not None:
        e.next.prev = e


def _simplify(ops: list[Operation]) -> list[Operation]:
    """Drop reads that never returned (no effect). Move writes that never returned and whose
    value nobody observed to the end (they may always take effect last) when no CAS failed on
    this key — this keeps the search small without changing the verdict."""
    ops = [o for o in ops if not (o.kind == "r" and o.ret is None)]
    observed = {repr(o.result) for o in ops if o.kind == "r"}
    observed |= {repr(o.expected) for o in ops if o.kind == "cas"}
    if any(o.kind == "cas" and o.ret is not None and not o.result for o in ops):
        return ops
    end = max((o.ret if o.ret is not None else o.call for o in ops), default=0.0)
    out = []
    for o in ops:
        if o.kind == "w" and o.ret is None and repr(o.value) not in observed and o.call < end:
            o = Operation(o.client, end + 1, None, o.kind, o.key, o.value, o.expected, o.result)
        out.append(o)
    return out


def check_key(ops: list[Operation], init: Any = None) -> CheckResult:
    """Check the operations of one key (see the module docstring)."""
    ops = _simplify(ops)
    n = len(ops)
    if n == 0:
        return CheckResult(True)
    events: list[tuple[float, int, _Ev]] = []
    for i, o in enumerate(ops):
        c, r = _Ev(i, True), _Ev(i, False)
        c.match = r
        events.append((o.call, 0, c))
        events.append((INF if o.ret is None else o.ret, 1, r))
    events.sort(key=lambda t: (t[0], t[1], t[2].op))
    head = _Ev(-1, False)
    prev = head
    for _, _, ev in events:
        prev.next = ev
        ev.prev = prev
        prev = ev
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[_Ev, Any]] = []
    state: Any = init
    linearized = 0
    best: list[int] = []
    best_state: Any = init
    stuck: int | None = None
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.is_call:
            ok, new_state = _step(state, ops[entry.op])
            if ok:
                nl = linearized | (1 << entry.op)
                key = (nl, new_state)
                if key not in cache:
                    cache.add(key)
                    calls.append((entry, state))
                    state = new_state
                    linearized = nl
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(calls) > len(best) or (len(calls) == len(best) and stuck is None):
                best = [e.op for e, _ in calls]
                best_state = state
                stuck = entry.op
            if not calls:
                break
            top, state = calls.pop()
            linearized &= ~(1 << top.op)
            _unlift(top)
            entry = top.next
    else:
        return CheckResult(True)
    lin = [ops[i] for i in best]
    key_name = ops[0].key
    tail = "\n    ".join(str(o) for o in lin[-8:]) or "(nothing)"
    blocked = ops[stuck] if stuck is not None else None
    done = set(best)
    others = [o for i, o in enumerate(ops) if i not in done and i != stuck and blocked is not None
              and o.call <= (blocked.ret if blocked.ret is not None else INF)]
    expl = (f"key {key_name!r}: no linearization. The longest linearizable prefix has {len(lin)} of "
            f"{n} operations, ending with:\n    {tail}\n  leaving the value {best_state!r}; then "
            f"{blocked} must take effect before it returns but cannot")
    if others:
        expl += (f", whichever of the {len(others)} other operations called by then goes first: "
                 + "; ".join(str(o) for o in others[:3]) + ("; …" if len(others) > 3 else ""))
    expl += "."

    return CheckResult(False, key_name, expl, lin)


def check_history(ops: Iterable[Operation], init: Any = None) -> CheckResult:
    """Check a whole history, key by key. Raises ValueError for an operation with an unknown
    kind or a return before its call (fix the recorder)."""
    by_key: dict[Hashable, list[Operation]] = {}
    for o in ops:
        if o.kind not in ("r", "w", "cas"):
            raise ValueError(f"unknown operation kind {o.kind!r} (use 'r', 'w' or 'cas'): {o}")
        if o.ret is not None and o.ret < o.call:
            raise ValueError(f"operation returns before it is called: {o}")
        by_key.setdefault(o.key, []).append(o)
    for key in sorted(by_key, key=repr):
        res = check_key(by_key[key], init)
        if not res.ok:
            return res
    return CheckResult(True)
