"""raft.linearizability: known linearizable and non-linearizable register histories (Herlihy &
Wing 1990's definition; the stale read that Jepsen found in etcd 0.4 and Consul), and property
tests: histories produced by a real sequential register with random overlapping timing are
always accepted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft.linearizability import Operation, check_history


def W(c: int, call: float, ret: float | None, v: int, key: str = "x") -> Operation:
    return Operation(c, call, ret, "w", key, value=v)


def R(c: int, call: float, ret: float | None, result: int | None, key: str = "x") -> Operation:
    return Operation(c, call, ret, "r", key, result=result)


def CAS(c: int, call: float, ret: float | None, exp: int | None, v: int, ok: bool | None,
        key: str = "x") -> Operation:
    return Operation(c, call, ret, "cas", key, value=v, expected=exp, result=ok)


def test_sequential_history_is_linearizable() -> None:
    assert check_history([W(1, 0, 1, 1), R(2, 2, 3, 1), W(1, 4, 5, 2), R(2, 6, 7, 2)]).ok


def test_concurrent_read_may_see_old_or_new_value() -> None:
    assert check_history([W(1, 0, 10, 1), R(2, 1, 2, None), R(3, 3, 4, 1)]).ok
    assert check_history([W(1, 0, 10, 1), R(2, 1, 2, 1), R(3, 3, 4, None)]).ok is False


def test_classic_stale_read_is_rejected() -> None:
    # The write of 2 completed before the read began, yet the read returns 1 (an old leader
    # served it from its own state: Jepsen, etcd 0.4.1 / Consul, 2014).
    h = [W(1, 0, 1, 1), W(1, 2, 3, 2), R(2, 4, 5, 1)]
    res = check_history(h)
    assert not res.ok
    assert res.key == "x"
    assert "read x -> 1" in res.explanation and "longest linearizable prefix" in res.explanation


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not check_history([W(1, 0, 1, 1), R(2, 2, 3, 7)]).ok


def test_values_cannot_flip_back() -> None:
    # Two reads after both writes completed can not disagree.
    h = [W(1, 0, 5, 1), W(2, 0, 5, 2), R(3, 6, 7, 1), R(3, 8, 9, 2)]
    assert not check_history(h).ok
    assert check_history([W(1, 0, 5, 1), W(2, 0, 5, 2), R(3, 6, 7, 2), R(3, 8, 9, 2)]).ok


def test_pending_write_may_take_effect_or_not() -> None:
    base = [W(1, 0, 1, 1), W(2, 2, None, 2)]
    assert check_history([*base, R(3, 5, 6, 1)]).ok
    assert check_history([*base, R(3, 5, 6, 2)]).ok
    assert check_history([*base, R(3, 5, 6, 2), R(3, 7, 8, 2)]).ok
    assert not check_history([*base, R(3, 5, 6, 2), R(3, 7, 8, 1)]).ok  # once seen, it stays
    assert not check_history([*base, R(3, 0.5, 0.9, 2)]).ok  # not before it was called


def test_cas_semantics() -> None:
    assert check_history([W(1, 0, 1, 1), CAS(2, 2, 3, 1, 5, True), R(3, 4, 5, 5)]).ok
    assert not check_history([W(1, 0, 1, 1), CAS(2, 2, 3, 1, 5, False)]).ok
    assert not check_history([W(1, 0, 1, 1), CAS(2, 2, 3, 9, 5, True)]).ok
    # A CAS with unknown outcome applies iff it matched at its linearization point.
    assert check_history([W(1, 0, 1, 1), CAS(2, 2, None, 1, 5, None), R(3, 4, 5, 5)]).ok
    assert not check_history([W(1, 0, 1, 1), CAS(2, 2, None, 3, 5, None), R(3, 4, 5, 5)]).ok


def test_keys_are_checked_independently() -> None:
    h = [W(1, 0, 1, 1, "a"), W(1, 0, 1, 2, "b"), R(2, 2, 3, 1, "a"), R(2, 2, 3, 1, "b")]
    res = check_history(h)
    assert not res.ok and res.key == "b"


def test_equal_times_count_as_concurrent() -> None:
    assert check_history([W(1, 0, 2, 1), R(2, 2, 3, None)]).ok


def test_bad_records_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown operation kind"):
        check_history([Operation(1, 0, 1, "inc", "x")])
    with pytest.raises(ValueError, match="returns before it is called"):
        check_history([W(1, 5, 1, 1)])


def test_many_concurrent_clients_stay_fast() -> None:
    # 12 clients each writing then reading their own value, all overlapping: a big search space
    # that memoisation keeps small.
    h = []
    for c in range(12):
        h.append(W(c, c, 100 + c, c))
    for c in range(12):
        h.append(R(100 + c, 200, 201, 11))
    assert check_history(h).ok


# ------------------------------------------------------------------ property tests


@st.composite
def register_histories(draw: st.DrawFn) -> list[Operation]:
    """Run a real sequential register: each op takes effect at a distinct instant (its
    linearization point); its call is before and its return after, by random amounts, so ops
    overlap. Some ops never return (crashed clients)."""
    n = draw(st.integers(1, 18))
    keys = draw(st.sampled_from([["x"], ["x", "y"]]))
    state: dict[str, int | None] = {k: None for k in keys}
    ops = []
    for i in range(n):
        point = 10.0 * (i + 1)
        kind = draw(st.sampled_from(["r", "w", "w", "cas"]))
        key = draw(st.sampled_from(keys))
        before = draw(st.floats(0, 35))
        after = draw(st.floats(0, 35))
        lost = draw(st.integers(0, 9)) == 0
        call, ret = point - before, (None if lost else point + after)
        if kind == "r":
            ops.append(Operation(i, call, ret, "r", key, result=state[key]))
        elif kind == "w":
            state[key] = i
            ops.append(Operation(i, call, ret, "w", key, value=i))
        else:
            exp = draw(st.sampled_from([state[key], None, i - 1]))
            ok = state[key] == exp
            if ok:
                state[key] = i
            ops.append(Operation(i, call, ret, "cas", key, value=i, expected=exp,
                                 result=None if lost else ok))
    return ops


@settings(max_examples=300, deadline=None)
@given(register_histories())
def test_histories_of_a_real_register_are_always_linearizable(ops: list[Operation]) -> None:
    res = check_history(ops)
    assert res.ok, res.explanation


@settings(max_examples=200, deadline=None)
@given(register_histories(), st.data())
def test_corrupting_a_completed_read_after_quiescence_is_caught(ops: list[Operation], data: st.DataObject) -> None:
    # Append a read that starts after every op has finished (and every pending one is forced to
    # have finished too, by dropping pending writes/CASes) and returns a never-written value.
    done = [o for o in ops if o.ret is not None]
    end = max((o.ret for o in done if o.ret is not None), default=0.0)
    bad = Operation(999, end + 1, end + 2, "r", "x", result=-1)
    assert not check_history([*done, bad]).ok
