"""Unit tests of worker.transitions (the task controller's pure decision) and of the controller's
forward-only report, without root.

Every (desired, observed) pair is checked against the rules of swarmkit's ``Do``: stop before
anything when asked to, never act on a terminal task except to remove it, never move backwards,
never go past a desired state before ``running``; and a simulated walk drives a task from ``new``
to ``running``, ``complete`` and removal one step at a time.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from shoal.base.taskstate import STATE_ORDER, TERMINAL_STATES
from worker import transitions as tr
from worker.controller import TaskController, container_id_for
from worker.transitions import Action, Observed, next_action

STATES = [*STATE_ORDER, "bogus"]
DESIRED = [*STATE_ORDER, "bogus", ""]
CONTAINERS = [None, tr.CREATED, tr.RUNNING_STATUS, tr.EXITED, "paused"]
START_PATH = {Action.ACCEPT, Action.MARK_PREPARING, Action.PREPARE, Action.MARK_STARTING, Action.START}


def _all_observed() -> list[Observed]:
    return [Observed(s, c, r, h) for s, c, r, h in itertools.product(STATES, CONTAINERS, (False, True),
                                                                      (False, True))]


def _desired(d: str) -> str:
    return tr.effective_desired(d or None)


def test_every_pair_gets_exactly_one_action_and_never_raises() -> None:
    n = 0
    for d, o in itertools.product(DESIRED, _all_observed()):
        assert isinstance(next_action(_desired(d), o), Action)
        n += 1
    assert n == len(DESIRED) * len(STATES) * len(CONTAINERS) * 4


@pytest.mark.parametrize("desired", ["shutdown", "remove", "orphaned"])
def test_a_stop_is_acted_on_first_in_every_state_before_terminal(desired: str) -> None:
    for o in _all_observed():
        a = next_action(desired, o)
        if o.state in TERMINAL_STATES:
            assert a is (Action.REMOVE if desired == "remove" else Action.WAIT), o
        else:
            assert a is Action.SHUTDOWN, o


def test_a_terminal_task_is_only_ever_removed() -> None:
    for d, o in itertools.product(DESIRED, _all_observed()):
        if o.state not in TERMINAL_STATES:
            continue
        a = next_action(_desired(d), o)
        assert a is (Action.REMOVE if _desired(d) == "remove" else Action.WAIT), (d, o)


def test_no_action_moves_a_task_backwards() -> None:
    for d, o in itertools.product(DESIRED, _all_observed()):
        a = next_action(_desired(d), o)
        if a in tr.TARGET:
            assert STATE_ORDER[tr.TARGET[a]] >= STATE_ORDER.get(o.state, 0), (d, o, a)
        if a is Action.SHUTDOWN:
            assert STATE_ORDER["shutdown"] > STATE_ORDER.get(o.state, 0), (d, o)


def test_remove_only_when_desired_remove_and_terminal() -> None:
    for d, o in itertools.product(DESIRED, _all_observed()):
        if next_action(_desired(d), o) is Action.REMOVE:
            assert _desired(d) == "remove" and o.state in TERMINAL_STATES


@pytest.mark.parametrize("desired", ["running", "complete", "bogus", ""])
@pytest.mark.parametrize(("state", "container", "health", "action"), [
    ("new", None, False, Action.ACCEPT),
    ("pending", None, False, Action.ACCEPT),
    ("assigned", None, False, Action.ACCEPT),
    ("assigned", tr.RUNNING_STATUS, False, Action.OBSERVE),  # a container from an earlier daemon run
    ("assigned", tr.CREATED, False, Action.OBSERVE),
    ("accepted", None, False, Action.MARK_PREPARING),
    ("preparing", None, False, Action.PREPARE),
    ("ready", None, False, Action.PREPARE),
    ("preparing", tr.CREATED, False, Action.MARK_STARTING),
    ("preparing", tr.RUNNING_STATUS, False, Action.OBSERVE),
    ("starting", None, False, Action.FAIL_MISSING),
    ("starting", tr.CREATED, False, Action.START),
    ("starting", tr.CREATED, True, Action.START),
    ("starting", tr.RUNNING_STATUS, False, Action.OBSERVE),
    ("starting", tr.RUNNING_STATUS, True, Action.WATCH),  # until the first passing probe
    ("running", None, False, Action.FAIL_MISSING),
    ("running", tr.RUNNING_STATUS, False, Action.WATCH),
    ("running", tr.EXITED, True, Action.WATCH),
    ("bogus", None, False, Action.ACCEPT),  # an unknown state counts as new
])
def test_the_start_path_for_a_task_that_should_run(desired: str, state: str, container: str | None, health: bool,
                                                   action: Action) -> None:
    assert next_action(_desired(desired), Observed(state, container, False, health)) is action


@pytest.mark.parametrize(("state", "container", "action"), [
    ("assigned", tr.RUNNING_STATUS, Action.OBSERVE),
    ("assigned", tr.EXITED, Action.OBSERVE),
    ("assigned", tr.CREATED, Action.WAIT),  # start nothing before the assignment says so
    ("starting", tr.CREATED, Action.WAIT),
    ("running", tr.RUNNING_STATUS, Action.WATCH),
    ("running", tr.EXITED, Action.OBSERVE),
    ("running", None, Action.OBSERVE),
    ("complete", tr.EXITED, Action.WAIT),
])
def test_a_recovered_container_is_observed_never_started(state: str, container: str | None,
                                                         action: Action) -> None:
    for d in ("running", "complete"):
        assert next_action(d, Observed(state, container, recovered=True)) is action


def test_a_desired_state_before_running_is_a_ceiling() -> None:
    for d, o in itertools.product(["new", "pending", "assigned", "accepted", "preparing", "ready", "starting"],
                                  _all_observed()):
        a = next_action(d, o)
        if a in tr.TARGET:
            assert STATE_ORDER[tr.TARGET[a]] <= STATE_ORDER[d], (d, o, a)
    assert next_action("ready", Observed("preparing", None)) is Action.PREPARE
    assert next_action("ready", Observed("preparing", tr.CREATED)) is Action.WAIT  # prepared, not started
    assert next_action("starting", Observed("preparing", tr.CREATED)) is Action.MARK_STARTING
    assert next_action("starting", Observed("starting", tr.CREATED)) is Action.WAIT


def _walk(desired: str, health: bool, exit_code: int = 0, steps: int = 20) -> list[tuple[Action, str]]:
    """Simulate the controller's effects on a pure model; return (action, state) per step until WAIT."""
    state, container, healthy = "new", None, False
    out: list[tuple[Action, str]] = []
    for _ in range(steps):
        a = next_action(desired, Observed(state, container, False, health))
        if a is Action.WAIT:
            return out
        if a in (Action.ACCEPT, Action.MARK_PREPARING, Action.MARK_STARTING):
            state = tr.TARGET[a]
        elif a is Action.PREPARE:
            container = tr.CREATED
        elif a is Action.START:
            container = tr.RUNNING_STATUS
            state = "running" if not health else state
        elif a is Action.WATCH:
            if health and not healthy:
                healthy, state = True, "running"
            else:
                container, state = tr.EXITED, "complete" if exit_code == 0 else "failed"
        elif a is Action.SHUTDOWN:
            container, state = tr.EXITED, "shutdown"
        elif a is Action.REMOVE:
            out.append((a, state))
            return out
        else:
            raise AssertionError(f"unexpected {a} in {state}")
        out.append((a, state))
    raise AssertionError(f"no end after {steps} steps: {out}")


@pytest.mark.parametrize("health", [False, True])
def test_a_walk_from_new_to_complete_moves_one_state_forward_at_a_time(health: bool) -> None:
    walk = _walk("running", health)
    states = ["new"] + [s for _, s in walk]
    orders = [STATE_ORDER[s] for s in states]
    assert orders == sorted(orders)
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == \
        ["new", "accepted", "preparing", "starting", "running", "complete"]
    assert walk[-1] == (Action.WATCH, "complete")
    assert _walk("running", health, exit_code=3)[-1] == (Action.WATCH, "failed")


def test_shutdown_then_remove() -> None:
    assert next_action("shutdown", Observed("running", tr.RUNNING_STATUS)) is Action.SHUTDOWN
    assert next_action("shutdown", Observed("shutdown", tr.EXITED)) is Action.WAIT
    assert next_action("remove", Observed("shutdown", tr.EXITED)) is Action.REMOVE
    assert next_action("remove", Observed("new", None)) is Action.SHUTDOWN  # never started: still "shutdown"
    assert tr.effective_desired("running", vanished=True) == "remove"
    assert tr.effective_desired(None) == "running"


def test_fail_state_and_forward() -> None:
    assert [tr.fail_state(s) for s in ("new", "assigned", "preparing", "ready")] == ["rejected"] * 4
    assert [tr.fail_state(s) for s in ("starting", "running")] == ["failed"] * 2
    assert tr.is_forward("running", "complete") and tr.is_forward("bogus", "accepted")
    assert not tr.is_forward("running", "starting") and not tr.is_forward("failed", "shutdown")
    assert not tr.is_forward("running", "running") and not tr.is_forward("new", "bogus")


class _ExRecorder:
    """The executor's side of ``report``: records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def _send(self, tid: str, status: dict[str, Any]) -> None:
        self.sent.append((tid, status))


async def test_the_controller_refuses_to_report_a_backward_move() -> None:
    ex = _ExRecorder()
    ctl = TaskController(ex, {"ID": "t1", "DesiredState": "running", "Status": {"State": "assigned"}})  # type: ignore[arg-type]
    assert ctl.cid == container_id_for("t1")
    assert ctl.next_action() is Action.ACCEPT
    await ctl.report("accepted")
    await ctl.report("running")
    await ctl.report("starting")  # backwards: refused
    await ctl.report("running")  # the same state: once only
    assert [s["State"] for _, s in ex.sent] == ["accepted", "running"]
    assert ctl.state == "running"
    ctl.vanish()
    assert ctl.desired() == "remove" and ctl.next_action() is Action.SHUTDOWN
