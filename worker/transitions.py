"""The task controller's decision, pure: what one step does for a task, from its desired and observed state.

Follows swarmkit's ``agent/exec/controller.go`` ``Do``: given the task's ``DesiredState`` and what
the worker last observed, pick at most ONE operation that moves the task one state forward, or
say there is nothing to do until something changes. :mod:`worker.controller` performs the chosen
:class:`Action` (the runtime and network calls) and reports the new state; this module does no
I/O and imports nothing of the node (mypy-strict, tested without root).

The states (``shoal.base.taskstate``; SWARM-FACTS 1.1) and the steps that move them::

    new|pending|assigned --ACCEPT--> accepted --MARK_PREPARING--> preparing
    preparing|ready (no container) --PREPARE--> (bridge, pull, create; state unchanged)
    preparing|ready (container created) --MARK_STARTING--> starting
    starting (container created) --START--> running (or starting until healthy with a check)
    starting (health check) | running --WATCH--> complete | failed (exit, unhealthy) | running (healthy)
    any state before complete, desired >= shutdown --SHUTDOWN--> shutdown
    a terminal state, desired remove --REMOVE--> (container and network removed; controller done)

Errors before ``starting`` end in ``rejected``, at or after it in ``failed`` (:func:`fail_state`).
States never move backwards (:func:`is_forward`). A desired state before ``running`` (swarmkit's
``ready``) is a ceiling: the task goes no further than it (prepared, not started), as ``Do``'s
"desired state is less than the current state: do not proceed".

A task found at start (``recovered``: its container exists but no assignment was seen yet) is only
observed: its real state is reported and watched, nothing is started.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shoal.base.taskstate import RUNNING, SHUTDOWN, STATE_ORDER, TERMINAL_STATES, state_order

__all__ = ["Action", "Observed", "next_action", "fail_state", "is_forward", "stopping", "effective_desired",
           "TARGET", "CREATED", "RUNNING_STATUS", "EXITED"]

CREATED = "created"
"""The runtime's status of a container made but not started."""
RUNNING_STATUS = "running"
"""The runtime's status of a running container."""
EXITED = "exited"
"""The runtime's status of a container that has exited."""


class Action(enum.Enum):
    """One step of a task controller (each reports at most one new state)."""

    ACCEPT = "accept"  # report "accepted"
    OBSERVE = "observe"  # report the state the existing container is really in (running, exited, ...)
    MARK_PREPARING = "mark_preparing"  # report "preparing"
    PREPARE = "prepare"  # bridge, image pull, overlays, DNS, create the container (no report)
    MARK_STARTING = "mark_starting"  # report "starting"
    START = "start"  # start the container: "running" (without a health check), or failed
    WATCH = "watch"  # wait for exit, a health change or a task change: complete/failed/running
    FAIL_MISSING = "fail_missing"  # the container is gone: failed/rejected
    SHUTDOWN = "shutdown"  # stop the container (StopSignal, then SIGKILL): report "shutdown"
    REMOVE = "remove"  # remove the container and its network; the controller is done
    WAIT = "wait"  # nothing to do until the task, the container or its health changes


TARGET: dict[Action, str] = {
    Action.ACCEPT: "accepted", Action.MARK_PREPARING: "preparing", Action.PREPARE: "ready",
    Action.MARK_STARTING: "starting", Action.START: "running",
}
"""The furthest state an action of the start path moves the task to (for the desired-state ceiling;
``PREPARE`` leaves the reported state at ``preparing`` but brings the task to swarmkit's ``ready``)."""


@dataclass(frozen=True)
class Observed:
    """What the controller knows of its task.

    ``state``: the last state reported (or the manager's, before any report); ``container``: the
    runtime's status of the task's container (``created``, ``running``, ``exited``, another, or
    None when there is none); ``recovered``: the controller was made at start for a container
    found before the task was assigned; ``health_check``: the container has a health check.
    """

    state: str
    container: str | None = None
    recovered: bool = False
    health_check: bool = False


def effective_desired(desired: str | None, vanished: bool = False) -> str:
    """The desired state the controller acts on: ``remove`` for a task gone from the assignment
    set, else ``desired`` (``running`` when unset)."""
    if vanished:
        return "remove"
    return desired or "running"


def stopping(desired: str) -> bool:
    """Whether ``desired`` asks the task to stop (``shutdown``, ``remove`` or past them)."""
    return state_order(desired, 0) >= SHUTDOWN


def fail_state(state: str) -> str:
    """The state an error in ``state`` ends in: ``rejected`` before ``starting``, else ``failed``."""
    return "rejected" if state_order(state, 0) < STATE_ORDER["starting"] else "failed"


def is_forward(current: str, new: str) -> bool:
    """Whether reporting ``new`` after ``current`` moves the task forward (an unknown current state
    counts as ``new``; an unknown new state never moves forward)."""
    return state_order(new) > state_order(current, 0)


def next_action(desired: str, observed: Observed) -> Action:
    """The one step to take for a task whose desired state is ``desired`` (see the module docstring).

    ``desired``: the effective desired state (:func:`effective_desired`); an unknown value counts as
    ``running``. Never raises.
    """
    s = observed.state
    if stopping(desired):
        if s not in TERMINAL_STATES:
            return Action.SHUTDOWN
        return Action.REMOVE if desired == "remove" else Action.WAIT
    if s in TERMINAL_STATES:
        return Action.WAIT
    if observed.recovered:
        return _recovered(observed)
    action = _start_path(observed)
    ceiling = STATE_ORDER.get(desired)
    target = TARGET.get(action)
    if ceiling is not None and ceiling < RUNNING and target is not None and STATE_ORDER[target] > ceiling:
        return Action.WAIT  # swarmkit: do not proceed past a desired state before running
    return action


def _recovered(observed: Observed) -> Action:
    """A container found at start, before the task's assignment: observe it, start nothing."""
    if observed.container == CREATED:
        return Action.WAIT
    if observed.state == "running" and observed.container == RUNNING_STATUS:
        return Action.WATCH
    return Action.OBSERVE


def _start_path(observed: Observed) -> Action:
    s, c = observed.state, observed.container
    if state_order(s, 0) < STATE_ORDER["accepted"]:
        return Action.ACCEPT if c is None else Action.OBSERVE  # a container from an earlier daemon run
    if s == "accepted":
        return Action.MARK_PREPARING
    if s in ("preparing", "ready"):
        if c is None:
            return Action.PREPARE
        return Action.MARK_STARTING if c == CREATED else Action.OBSERVE
    if s == "starting":
        if c is None:
            return Action.FAIL_MISSING
        if c == CREATED:
            return Action.START
        return Action.WATCH if observed.health_check else Action.OBSERVE
    if s == "running":
        return Action.FAIL_MISSING if c is None else Action.WATCH
    return Action.WAIT  # not reached: every state before complete is handled above
