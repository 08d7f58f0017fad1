"""Health checks without root: the merge of the spec's and the image's check, the state machine
(injected clock), the monitor, the executor's use of them (test doubles of the runtime), the
spec's validation and the CLI flags."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from manager.specs.common import SpecError
from manager.specs.health import validate_healthcheck
from manager.store import Store
from shoal.cli.commands import build_parser, build_service_spec
from shoal.cli.health_flags import update_health
from tests.unit.test_executor_states import NODE, Env, StateTestDouble, make_task
from tests.unit.test_orchestrator_cli import DOCKER, docker, sock  # noqa: F401 - sock is a fixture
from tests.waiting import wait_until as until
from worker import health
from worker.executor import container_id_for

MS = 1_000_000
S = 1_000_000_000


# ------------------------------------------------------------------------------------ merge


def test_merge_spec_fields_override_the_image_and_defaults_fill_the_rest() -> None:
    image = {"Test": ["CMD", "img-check"], "Interval": 10 * S, "Timeout": 2 * S, "Retries": 7}
    cfg = health.merge({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5 * S}, image)
    assert cfg is not None
    assert cfg.test == ("CMD-SHELL", "curl -f localhost") and cfg.argv() == ["/bin/sh", "-c", "curl -f localhost"]
    assert (cfg.interval, cfg.timeout, cfg.retries) == (5.0, 2.0, 7)  # timeout, retries: the image's
    assert (cfg.start_period, cfg.start_interval) == (0.0, 5.0)  # defaults
    only_image = health.merge(None, image)
    assert only_image is not None and only_image.argv() == ["img-check"] and only_image.interval == 10.0
    # a spec without a Test keeps the image's command
    timing = health.merge({"Interval": 1 * S}, image)
    assert timing is not None and timing.argv() == ["img-check"] and timing.interval == 1.0
    defaults = health.merge({"Test": ["CMD", "true"]}, None)
    assert defaults == health.HealthConfig(test=("CMD", "true"), interval=30.0, timeout=30.0, retries=3,
                                           start_period=0.0, start_interval=5.0)


def test_merge_none_disables_and_nothing_means_no_check() -> None:
    assert health.merge({"Test": ["NONE"]}, {"Test": ["CMD", "x"]}) is None
    assert health.merge(None, None) is None
    assert health.merge({}, None) is None
    assert health.merge(None, {"Test": ["NONE"]}) is None


@pytest.mark.parametrize("test", [["BOGUS", "x"], ["CMD"], ["CMD-SHELL", ""]])
def test_merge_refuses_bad_tests(test: list[str]) -> None:
    with pytest.raises(health.HealthConfigError):
        health.merge({"Test": test}, None)


def test_task_config_reads_the_image_config() -> None:
    cfg = health.task_config({"Image": "x"}, {"Healthcheck": {"Test": ["CMD-SHELL", "exit 0"]}})
    assert cfg is not None and cfg.argv() == ["/bin/sh", "-c", "exit 0"]
    assert health.task_config({"Image": "x"}, object()) is None


# ---------------------------------------------------------------------------- state machine


def test_state_machine_start_period_streak_and_recovery() -> None:
    cfg = health.HealthConfig(test=("CMD", "x"), interval=10.0, retries=2, start_period=30.0, start_interval=1.0)
    st = health.HealthState(cfg, started_at=1000.0)
    assert st.status == health.STARTING and st.next_interval(1000.0) == 1.0
    # failures within the start period do not count
    for t in (1001.0, 1002.0, 1010.0):
        assert st.record(t, t + 0.1, 1, "no") == health.STARTING
    assert st.failing_streak == 0
    # after it they do: 2 in a row make it unhealthy
    assert st.next_interval(1031.0) == 10.0
    assert st.record(1031.0, 1031.5, 1, "no") == health.STARTING and st.failing_streak == 1
    assert st.record(1041.0, 1041.5, 2, "no") == health.UNHEALTHY and st.failing_streak == 2
    # a passing probe resets the streak
    assert st.record(1051.0, 1051.5, 0, "ok") == health.HEALTHY and st.failing_streak == 0
    doc = st.to_docker()
    assert doc["Status"] == "healthy" and doc["FailingStreak"] == 0
    assert len(doc["Log"]) == health.MAX_LOG_ENTRIES  # the last 5 of 6
    assert doc["Log"][-1]["ExitCode"] == 0 and doc["Log"][-1]["Output"] == "ok"
    assert doc["Log"][-1]["Start"].startswith("1970-01-01T00:17:31.") and doc["Log"][-1]["End"].endswith("Z")


def test_state_machine_healthy_then_failures_and_output_cut() -> None:
    cfg = health.HealthConfig(test=("CMD", "x"), retries=3)
    st = health.HealthState(cfg, started_at=0.0)
    st.record(1, 2, 0, "")
    assert st.status == health.HEALTHY
    st.record(3, 4, 1, "x" * 10000)
    st.record(5, 6, 1, b"\xff" * 5000)
    assert st.status == health.HEALTHY and st.failing_streak == 2
    assert len(st.log[-2]["Output"]) == health.MAX_OUTPUT_BYTES
    st.record(7, 8, -1, "timeout")
    assert st.status == health.UNHEALTHY


async def test_monitor_with_injected_clock() -> None:
    now = [100.0]
    slept: list[float] = []
    results = iter([(1, "starting up"), (0, "fine"), (1, "bad"), (1, "bad"), (1, "bad")])
    argvs: list[list[str]] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def probe(argv: list[str], timeout: float) -> tuple[int, str]:
        argvs.append(argv)
        assert timeout == 2.0
        return next(results)

    changes: list[str] = []
    cfg = health.HealthConfig(test=("CMD-SHELL", "check"), interval=10.0, timeout=2.0, retries=3,
                              start_period=5.0, start_interval=1.0)
    mon = health.HealthMonitor(cfg, probe, started_at=100.0, on_change=lambda s: changes.append(s.status),
                               clock=lambda: now[0], sleep=sleep)
    await asyncio.wait_for(mon.run(), 5.0)  # ends by itself once unhealthy
    assert changes == ["healthy", "unhealthy"]
    assert slept == [1.0, 1.0, 10.0, 10.0, 10.0]  # the start interval until healthy
    assert argvs[0] == ["/bin/sh", "-c", "check"]
    assert mon.state.failing_streak == 3


async def test_monitor_timeout_and_probe_errors_count_as_failures() -> None:
    async def timing_out(argv: list[str], timeout: float) -> tuple[int, str]:
        raise TimeoutError

    cfg = health.HealthConfig(test=("CMD", "x"), timeout=1.5, retries=1)
    mon = health.HealthMonitor(cfg, timing_out, started_at=0.0, clock=lambda: 0.0)
    assert await mon.probe_once() == health.UNHEALTHY
    assert mon.state.log[-1]["ExitCode"] == -1
    assert mon.state.log[-1]["Output"] == "Health check exceeded timeout (1.5s)"

    async def broken(argv: list[str], timeout: float) -> tuple[int, str]:
        raise RuntimeError("container abc is not running")

    mon = health.HealthMonitor(cfg, broken, started_at=0.0, clock=lambda: 0.0)
    assert await mon.probe_once() == health.UNHEALTHY
    assert mon.state.log[-1]["Output"] == "container abc is not running"


# -------------------------------------------------------------------- executor (test doubles)


class ExecEnv(Env):
    """The executor's test doubles, with ``runtime.exec`` answering ``self.answer`` (exit code)."""

    def __init__(self, image_hc: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.answer = 1
        self.execs: list[tuple[str, list[str]]] = []

        async def exec_(cid: str, argv: list[str], timeout: float, limit: int) -> tuple[int, bytes]:
            self.execs.append((cid, argv))
            return self.answer, f"exit {self.answer}".encode()

        self.runtime.exec = exec_  # type: ignore[attr-defined]
        if image_hc is not None:
            plain_get = self.images.get
            self.images.get = lambda ref: (  # type: ignore[method-assign]
                SimpleNamespace(config={"Healthcheck": image_hc}) if plain_get(ref) is not None else None)


FAST = {"Interval": 20 * MS, "Timeout": 1 * S, "Retries": 2}


async def test_executor_reports_starting_until_the_first_passing_probe() -> None:
    e = ExecEnv()
    hc = {"Test": ["CMD-SHELL", "check"], **FAST, "StartPeriod": 60 * S, "StartInterval": 20 * MS}
    await e.ex.set_assignments(NODE, [make_task("t1", Healthcheck=hc)])
    await until(lambda: len(e.execs) >= 3)
    # failing probes within the start period: still starting
    assert e.states("t1") == ["accepted", "preparing", "starting"]
    e.answer = 0
    await until(lambda: e.states("t1")[-1:] == ["running"])
    cs = e.last("t1")["ContainerStatus"]
    assert cs["PID"] > 0 and cs["Health"]["Status"] == "healthy"
    assert cs["Health"]["Log"][-1]["ExitCode"] == 0
    assert e.execs[0] == (container_id_for("t1"), ["/bin/sh", "-c", "check"])
    await e.ex.close()


async def test_executor_unhealthy_container_is_stopped_and_the_task_fails() -> None:
    e = ExecEnv(image_hc={"Test": ["CMD", "img-check"], **FAST})  # the image's HEALTHCHECK
    await e.ex.set_assignments(NODE, [make_task("t1", StopSignal="SIGQUIT")])
    e.answer = 0
    await until(lambda: e.states("t1")[-1:] == ["running"])
    assert e.execs[0][1] == ["img-check"]
    e.answer = 1
    await until(lambda: e.states("t1")[-1:] == ["failed"])
    last = e.last("t1")
    assert last["Err"] == "task: non-zero exit (143): dockerexec: unhealthy container"
    assert last["ContainerStatus"]["ExitCode"] == 143
    assert last["ContainerStatus"]["Health"]["Status"] == "unhealthy"
    assert last["ContainerStatus"]["Health"]["FailingStreak"] == 2
    assert e.runtime.stops[0][0] == container_id_for("t1") and e.runtime.stops[0][2] == "SIGQUIT"
    await until(lambda: container_id_for("t1") in e.bridge.detached)
    n = len(e.execs)
    await asyncio.sleep(0.1)
    assert len(e.execs) == n  # no probes after the stop
    await e.ex.close()


async def test_executor_no_healthcheck_disables_the_image_check() -> None:
    e = ExecEnv(image_hc={"Test": ["CMD", "img-check"], **FAST})
    await e.ex.set_assignments(NODE, [make_task("t1", Healthcheck={"Test": ["NONE"]})])
    await until(lambda: e.states("t1")[-1:] == ["running"])
    await asyncio.sleep(0.1)
    assert e.execs == [] and "Health" not in e.last("t1")["ContainerStatus"]
    await e.ex.close()


async def test_executor_bad_image_healthcheck_rejects_the_task() -> None:
    e = ExecEnv(image_hc={"Test": ["WHAT", "x"]})
    await e.ex.set_assignments(NODE, [make_task("t1")])
    await until(lambda: e.states("t1")[-1:] == ["rejected"])
    assert "unknown health check type 'WHAT'" in e.last("t1")["Err"]
    await e.ex.close()


async def test_executor_checks_a_container_found_at_start_again() -> None:
    e = ExecEnv()
    cid = container_id_for("t1")
    e.runtime.containers[cid] = StateTestDouble(cid, "running", pid=777, labels={"com.docker.swarm.task.id": "t1"})
    e.runtime._fut(cid)
    await e.ex.recover()
    await until(lambda: e.states("t1")[-1:] == ["running"])
    assert e.execs == []  # the spec (and so the check) is not known before the assignment
    t1 = make_task("t1", Healthcheck={"Test": ["CMD", "probe"], **FAST})
    t1["Status"]["State"] = "running"
    await e.ex.set_assignments(NODE, [t1])
    await until(lambda: e.states("t1")[-1:] == ["failed"])
    assert e.execs[0] == (cid, ["probe"])
    assert e.last("t1")["Err"] == "task: non-zero exit (143): dockerexec: unhealthy container"
    await e.ex.close()


# ------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize("hc, message", [
    ({"Interval": 999_999}, "Interval in Healthcheck cannot be less than 1ms"),
    ({"Timeout": -5}, "Timeout in Healthcheck cannot be less than 1ms"),
    ({"StartPeriod": 10}, "StartPeriod in Healthcheck cannot be less than 1ms"),
    ({"StartInterval": 500 * 1000}, "StartInterval in Healthcheck cannot be less than 1ms"),
    ({"Interval": 400 * 24 * 3600 * S}, "more than a year"),
    ({"Retries": -1}, "Retries in Healthcheck cannot be negative"),
    ({"Retries": "3"}, "cannot unmarshal string"),
    ({"Interval": 1.5}, "cannot unmarshal number"),
    ({"Test": "curl localhost"}, "must be a list of strings"),
    ({"Test": ["CMD"]}, "CMD needs a command"),
    ({"Test": ["CMD-SHELL", " "]}, "CMD-SHELL needs a command"),
    ({"Test": ["CMD-SHELL", "a", "b"]}, "takes one command string"),
    ({"Test": ["NONE", "x"]}, "takes no command"),
    ({"Test": ["SHELL", "x"]}, "unknown health check type 'SHELL'"),
    ("yes", "ContainerSpec.Healthcheck"),
])
def test_spec_validation_refuses(hc: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_healthcheck({"Healthcheck": hc})


@pytest.mark.parametrize("hc", [
    None, {}, {"Test": []}, {"Test": ["NONE"]}, {"Test": ["CMD", "curl", "-f", "x"]},
    {"Test": ["CMD-SHELL", "exit 0"], "Interval": 0, "Timeout": 1 * MS, "Retries": 0, "StartPeriod": 60 * S,
     "StartInterval": 5 * S},
])
def test_spec_validation_accepts(hc: Any) -> None:
    validate_healthcheck({"Healthcheck": hc})


# -------------------------------------------------------------------------------- CLI flags


def _create(*flags: str) -> dict[str, Any]:
    a = build_parser().parse_args(["service", "create", *flags, "busybox"])
    cs: dict[str, Any] = build_service_spec(a)["TaskTemplate"]["ContainerSpec"]
    return cs


def _update_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["service", "update", *flags, "web"])


def test_cli_create_flags() -> None:
    cs = _create("--health-cmd", "curl -f localhost", "--health-interval", "5s", "--health-timeout", "2s",
                 "--health-retries", "4", "--health-start-period", "1m", "--health-start-interval", "500ms")
    assert cs["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5 * S, "Timeout": 2 * S,
                                 "StartPeriod": 60 * S, "StartInterval": 500 * MS, "Retries": 4}
    assert "Healthcheck" not in _create()
    assert _create("--no-healthcheck")["Healthcheck"] == {"Test": ["NONE"]}
    # timing only: no Test, so the image's command runs with these timings
    assert _create("--health-interval", "1s")["Healthcheck"]["Test"] == []


@pytest.mark.parametrize("flags, message", [
    (("--no-healthcheck", "--health-cmd", "x"), "conflicts with --health-"),
    (("--health-interval", "soon"), "--health-interval"),
])
def test_cli_create_refuses(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(Exception, match=message):
        _create(*flags)


def test_cli_update_flags() -> None:
    cs: dict[str, Any] = {"Image": "busybox", "Healthcheck": {"Test": ["CMD-SHELL", "old"], "Interval": 5 * S,
                                                              "Retries": 2}}
    update_health(cs, _update_args("--health-retries", "9"))
    assert cs["Healthcheck"] == {"Test": ["CMD-SHELL", "old"], "Interval": 5 * S, "Retries": 9}
    update_health(cs, _update_args("--no-healthcheck"))
    assert cs["Healthcheck"] == {"Test": ["NONE"]}
    update_health(cs, _update_args("--health-interval", "3s"))  # ends the NONE: the image's command
    assert cs["Healthcheck"] == {"Test": [], "Interval": 3 * S}
    update_health(cs, _update_args("--health-cmd", "new"))
    assert cs["Healthcheck"]["Test"] == ["CMD-SHELL", "new"]
    before = dict(cs["Healthcheck"])
    update_health(cs, _update_args())
    assert cs["Healthcheck"] == before
    with pytest.raises(ValueError, match="conflicts"):
        update_health(cs, _update_args("--no-healthcheck", "--health-retries", "1"))


# ---------------------------------------------------------------------------- the docker CLI


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")
async def test_docker_cli_health_flags_reach_the_spec(sock: tuple[str, Store, Path]) -> None:  # noqa: F811
    host, store, base = sock
    rc, out, err = await docker(host, base, "service", "create", "--detach", "--no-resolve-image", "--name", "hc",
                                "--health-cmd", "wget -q -O- localhost", "--health-interval", "2s",
                                "--health-retries", "4", "--health-start-period", "10s", "busybox", "sleep", "100")
    assert rc == 0, (out, err)
    svc = store.view().find_by_name("services", "hc")
    assert svc is not None
    hc = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]
    assert hc["Test"] == ["CMD-SHELL", "wget -q -O- localhost"]
    assert (hc["Interval"], hc["Retries"], hc["StartPeriod"]) == (2 * S, 4, 10 * S)
    rc, out, err = await docker(host, base, "service", "create", "--detach", "--no-resolve-image", "--name", "hc2",
                                "--health-retries", "-1", "busybox", "sleep", "100")
    assert rc != 0 and "Retries in Healthcheck cannot be negative" in err, (out, err)
