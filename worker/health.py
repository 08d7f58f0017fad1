"""Health checks of a task's container, as Docker runs them (MOBY: daemon/health.go; never copied).

Three pieces, the first two pure:

- :func:`merge`: the check a container runs, from the service's ``ContainerSpec.Healthcheck`` and
  the image's ``HEALTHCHECK`` (the image config's ``Healthcheck``): a field the spec leaves zero
  takes the image's; ``Test`` ``["NONE"]`` disables the check; the defaults are interval 30 s,
  timeout 30 s, retries 3, start period 0 and start interval 5 s.
- :class:`HealthState`: the state machine. ``starting`` until the first passing probe
  (``healthy``); a failing probe adds one to ``FailingStreak`` — except while still ``starting``
  and within the start period — and ``Retries`` failures in a row make it ``unhealthy``; a passing
  probe resets the streak. The last 5 results are kept (``Log``), each output cut to 4 KiB.
- :class:`HealthMonitor`: the loop that waits an interval (the start interval during the start
  period), runs the probe with the timeout and feeds the state machine. The probe itself is given
  (the executor runs it inside the container's namespaces, :mod:`agent_runtime.execin`).

Durations in the API are nanoseconds; here they are seconds (float).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("shoal.worker.health")

DEFAULT_INTERVAL_S = 30.0
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_START_PERIOD_S = 0.0
DEFAULT_START_INTERVAL_S = 5.0
MAX_LOG_ENTRIES = 5
"""Results kept in ``Health.Log`` (Docker's ``maxLogEntries``)."""
MAX_OUTPUT_BYTES = 4096
"""Bytes of a probe's output kept (Docker's ``maxOutputLen``)."""

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"

#: ``probe(argv, timeout_s) -> (exit code, output)``; raises TimeoutError when the timeout passed
#: (the probe is then killed) and any other exception when it could not be run at all.
ProbeFn = Callable[[list[str], float], Awaitable[tuple[int, str]]]


class HealthConfigError(ValueError):
    """A health check that cannot be run (an unknown ``Test`` form); the message says which."""


@dataclass(frozen=True)
class HealthConfig:
    """A check to run: ``test`` is Docker's ``["CMD", arg…]`` or ``["CMD-SHELL", command]``;
    durations in seconds (already defaulted); ``retries`` ≥ 1."""

    test: tuple[str, ...]
    interval: float = DEFAULT_INTERVAL_S
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    start_period: float = DEFAULT_START_PERIOD_S
    start_interval: float = DEFAULT_START_INTERVAL_S

    def argv(self) -> list[str]:
        """The command to run in the container: ``CMD-SHELL`` runs ``/bin/sh -c <command>``."""
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(self.test[1:])]
        return list(self.test[1:])


def _ns(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def merge(spec_hc: dict[str, Any] | None, image_hc: dict[str, Any] | None) -> HealthConfig | None:
    """The check the container runs, or None for none.

    ``spec_hc``: the service's ``ContainerSpec.Healthcheck`` (``{"Test", "Interval", "Timeout",
    "Retries", "StartPeriod", "StartInterval"}``, durations in ns; None: not set); ``image_hc``: the
    image config's ``Healthcheck`` (same shape). Fields left zero/empty in the spec take the image's
    (Docker's merge); then zero durations take the defaults and retries ≤ 0 become 3. ``Test``
    ``["NONE"]`` (or no test at all) means no check. Raises :class:`HealthConfigError` for a ``Test``
    whose first item is not ``CMD``/``CMD-SHELL``/``NONE`` or that has no command.
    """
    spec = dict(spec_hc or {})
    img = dict(image_hc or {})
    if spec_hc is None:
        spec = img
    else:
        for key in ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
            if not spec.get(key):
                spec[key] = img.get(key)
    test = [str(t) for t in spec.get("Test") or []]
    if not test or test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL"):
        raise HealthConfigError(f"unknown health check type {test[0]!r}: use CMD, CMD-SHELL or NONE")
    if len(test) < 2 or not any(test[1:]):
        raise HealthConfigError(f"health check {test[0]} has no command")

    def dur(key: str, default: float) -> float:
        n = _ns(spec.get(key))
        return n / 1e9 if n > 0 else default

    retries = _ns(spec.get("Retries"))
    return HealthConfig(test=tuple(test), interval=dur("Interval", DEFAULT_INTERVAL_S),
                        timeout=dur("Timeout", DEFAULT_TIMEOUT_S),
                        retries=retries if retries > 0 else DEFAULT_RETRIES,
                        start_period=dur("StartPeriod", DEFAULT_START_PERIOD_S),
                        start_interval=dur("StartInterval", DEFAULT_START_INTERVAL_S))


def rfc3339(t: float) -> str:
    """``t`` (seconds since the epoch) as RFC 3339 with nanosecond digits, UTC."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(round((t % 1) * 1e9)) % 10**9:09d}Z"


def truncate(output: bytes | str) -> str:
    """The first :data:`MAX_OUTPUT_BYTES` bytes of a probe's output, as text."""
    raw = output.encode(errors="replace") if isinstance(output, str) else output
    return raw[:MAX_OUTPUT_BYTES].decode(errors="replace")


class HealthState:
    """The health of one container (pure: times are given).

    ``started_at``: when the container started (seconds since the epoch). ``status`` is
    ``starting`` | ``healthy`` | ``unhealthy``; ``failing_streak`` counts failed probes in a row;
    ``log`` holds the last :data:`MAX_LOG_ENTRIES` results."""

    def __init__(self, config: HealthConfig, started_at: float) -> None:
        self.config = config
        self.started_at = started_at
        self.status = STARTING
        self.failing_streak = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=MAX_LOG_ENTRIES)

    def in_start_period(self, now: float) -> bool:
        """True while no probe passed yet and ``now`` is within the start period."""
        return self.status == STARTING and now - self.started_at < self.config.start_period

    def next_interval(self, now: float) -> float:
        """Seconds to wait before the next probe: the start interval during the start period."""
        return self.config.start_interval if self.in_start_period(now) else self.config.interval

    def record(self, start: float, end: float, exit_code: int, output: bytes | str) -> str:
        """Add one probe result (``exit_code`` 0 passes, anything else fails; -1 for a timeout or a
        probe that could not run); return the status after it."""
        self.log.append({"Start": rfc3339(start), "End": rfc3339(end), "ExitCode": exit_code,
                         "Output": truncate(output)})
        if exit_code == 0:
            self.failing_streak = 0
            self.status = HEALTHY
        elif not self.in_start_period(start):
            self.failing_streak += 1
            if self.failing_streak >= self.config.retries:
                self.status = UNHEALTHY
        return self.status

    def to_docker(self) -> dict[str, Any]:
        """Docker's ``Health`` object: ``{"Status", "FailingStreak", "Log": [{"Start", "End",
        "ExitCode", "Output"}]}``."""
        return {"Status": self.status, "FailingStreak": self.failing_streak, "Log": list(self.log)}


class HealthMonitor:
    """Runs ``config``'s probe until cancelled; ``on_change(state)`` (sync) is called after every
    change of ``state.status``. ``clock`` gives seconds since the epoch; ``sleep`` waits seconds
    (both injectable for tests)."""

    def __init__(self, config: HealthConfig, probe: ProbeFn, started_at: float | None = None,
                 on_change: Callable[[HealthState], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.state = HealthState(config, clock() if started_at is None else started_at)
        self.probe = probe
        self.on_change = on_change
        self.clock = clock
        self.sleep = sleep
        self.changed = asyncio.Event()
        """Set at each status change (the waiter clears it)."""

    async def probe_once(self) -> str:
        """Run the probe once and record its result; return the status after it."""
        cfg = self.state.config
        start = self.clock()
        try:
            code, output = await self.probe(cfg.argv(), cfg.timeout)
        except TimeoutError:
            code, output = -1, f"Health check exceeded timeout ({cfg.timeout:g}s)"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the probe could not run (no such container, exec failed …)
            code, output = -1, str(e) or type(e).__name__
        before = self.state.status
        after = self.state.record(start, self.clock(), code, output)
        if after != before:
            log.info("health: %s -> %s (exit %d)", before, after, code)
            self.changed.set()
            if self.on_change is not None:
                self.on_change(self.state)
        return after

    async def run(self) -> None:
        """Probe forever (until cancelled); stops by itself once ``unhealthy``."""
        while self.state.status != UNHEALTHY:
            await self.sleep(self.state.next_interval(self.clock()))
            await self.probe_once()


def task_config(container_spec: dict[str, Any], image_config: Any) -> HealthConfig | None:
    """The check of a task's container: :func:`merge` of ``container_spec["Healthcheck"]`` and the
    image config's ``Healthcheck`` (``image_config``: the image's ``config`` object, or anything
    else for none). Raises :class:`HealthConfigError` (see :func:`merge`)."""
    spec_hc = container_spec.get("Healthcheck")
    image_hc = image_config.get("Healthcheck") if isinstance(image_config, dict) else None
    return merge(spec_hc if isinstance(spec_hc, dict) else None, image_hc if isinstance(image_hc, dict) else None)


class ContainerHealth:
    """The health monitor of one running container, probing through ``runtime.exec(cid, argv,
    timeout, output_limit) -> (exit code, bytes)`` (:meth:`agent_runtime.containers.Runtime.exec`).

    :meth:`start` once the container runs, :meth:`stop` when it stops (the state is kept, for the
    task's ``ContainerStatus.Health``); ``changed`` is set at each status change."""

    def __init__(self, config: HealthConfig, runtime: Any, cid: str,
                 on_change: Callable[[HealthState], None] | None = None) -> None:
        self.runtime = runtime
        self.cid = cid
        self.monitor = HealthMonitor(config, self._probe, on_change=on_change)
        self._task: asyncio.Task[None] | None = None

    @property
    def status(self) -> str:
        """``starting`` | ``healthy`` | ``unhealthy``."""
        return self.monitor.state.status

    @property
    def changed(self) -> asyncio.Event:
        return self.monitor.changed

    def to_docker(self) -> dict[str, Any]:
        """Docker's ``Health`` object (:meth:`HealthState.to_docker`)."""
        return self.monitor.state.to_docker()

    async def _probe(self, argv: list[str], timeout: float) -> tuple[int, str]:
        code, out = await self.runtime.exec(self.cid, argv, timeout, MAX_OUTPUT_BYTES)
        return int(code), truncate(out)

    def start(self) -> None:
        """Start probing (idempotent); the clock of the start period starts now."""
        if self._task is None:
            self.monitor.state.started_at = self.monitor.clock()
            self._task = asyncio.get_running_loop().create_task(self.monitor.run(), name=f"health-{self.cid[:12]}")

    def stop(self) -> None:
        """Stop probing (idempotent; a probe in flight is killed)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
