"""The rolling update, rollback and restart policy flags of ``shoal service create|update``
(shoal/cli/update_flags.py) map to the ServiceSpec as the docker CLI's do; bad values are
refused by the CLI (exit 2) and, sent through the API anyway, by the spec validation
(manager/specs/policies.py, a 400); ``UpdateWatch`` ends an update's wait as the docker CLI's
progress does; and no message of the daemon tells a docker CLI user to run a ``shoal`` command."""

from __future__ import annotations

import argparse
import ast
import copy
import pathlib
from typing import Any

import pytest

from manager.specs import SpecError, validate_service_spec
from manager.specs.policies import MAX_PARALLELISM, MAX_POLICY_DURATION, MAX_RESTART_ATTEMPTS
from shoal.cli import commands as cli
from shoal.cli.update_flags import UpdateWatch

S = 1_000_000_000
ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse(line: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(line.split())


BASE: dict[str, Any] = {
    "Name": "web", "Labels": {"team": "a"}, "Mode": {"Replicated": {"Replicas": 3}},
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Env": ["A=1", "B=2"]},
                     "Resources": {"Limits": {}, "Reservations": {}},
                     "RestartPolicy": {"Condition": "on-failure", "Delay": 1 * S, "MaxAttempts": 3, "Window": 0}},
    "UpdateConfig": {"Parallelism": 2, "Delay": 1 * S, "FailureAction": "pause", "Monitor": 5 * S,
                     "MaxFailureRatio": 0, "Order": "stop-first"},
}


def updated(flags: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return cli.update_service_spec(None, copy.deepcopy(spec or BASE), parse(f"service update {flags} web"))  # type: ignore[arg-type]


# -- create ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "key", "field", "value"), [
    ("--update-parallelism 2", "UpdateConfig", "Parallelism", 2),
    ("--update-parallelism 0", "UpdateConfig", "Parallelism", 0),
    ("--update-delay 2s", "UpdateConfig", "Delay", 2 * S),
    ("--update-failure-action rollback", "UpdateConfig", "FailureAction", "rollback"),
    ("--update-failure-action continue", "UpdateConfig", "FailureAction", "continue"),
    ("--update-monitor 1m30s", "UpdateConfig", "Monitor", 90 * S),
    ("--update-max-failure-ratio 0.25", "UpdateConfig", "MaxFailureRatio", 0.25),
    ("--update-order start-first", "UpdateConfig", "Order", "start-first"),
    ("--rollback-parallelism 0", "RollbackConfig", "Parallelism", 0),
    ("--rollback-delay 250ms", "RollbackConfig", "Delay", S // 4),
    ("--rollback-failure-action continue", "RollbackConfig", "FailureAction", "continue"),
    ("--rollback-monitor 3s", "RollbackConfig", "Monitor", 3 * S),
    ("--rollback-max-failure-ratio 1", "RollbackConfig", "MaxFailureRatio", 1.0),
    ("--rollback-order start-first", "RollbackConfig", "Order", "start-first"),
])
def test_create_policy_flag_writes_the_whole_config_with_swarms_defaults(flag: str, key: str, field: str,
                                                                         value: Any) -> None:
    spec = cli.build_service_spec(parse(f"service create --name web {flag} busybox"))
    want = {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": 5 * S, "MaxFailureRatio": 0,
            "Order": "stop-first"}
    want[field] = value
    assert spec[key] == want
    other = "RollbackConfig" if key == "UpdateConfig" else "UpdateConfig"
    assert other not in spec
    assert validate_service_spec(spec)[key] == want


def test_create_without_policy_flags_leaves_them_to_the_defaults() -> None:
    spec = cli.build_service_spec(parse("service create --name web busybox"))
    assert "UpdateConfig" not in spec and "RollbackConfig" not in spec and "RestartPolicy" not in spec["TaskTemplate"]


@pytest.mark.parametrize(("flag", "field", "value"), [
    ("--restart-condition none", "Condition", "none"),
    ("--restart-delay 10s", "Delay", 10 * S),
    ("--restart-max-attempts 4", "MaxAttempts", 4),
    ("--restart-window 1m", "Window", 60 * S),
])
def test_create_restart_flags(flag: str, field: str, value: Any) -> None:
    rp = cli.build_service_spec(parse(f"service create {flag} busybox"))["TaskTemplate"]["RestartPolicy"]
    want = {"Condition": "any", "Delay": 5 * S, "MaxAttempts": 0, "Window": 0}
    want[field] = value
    assert rp == want


# -- update ---------------------------------------------------------------------------------------

def test_update_policy_flags_change_only_what_they_name() -> None:
    spec = updated("--update-delay 3s --update-order start-first")
    assert spec["UpdateConfig"] == {**BASE["UpdateConfig"], "Delay": 3 * S, "Order": "start-first"}
    assert "RollbackConfig" not in spec
    spec = updated("--rollback-parallelism 3")
    assert spec["RollbackConfig"] == {"Parallelism": 3, "Delay": 0, "FailureAction": "pause", "Monitor": 5 * S,
                                      "MaxFailureRatio": 0, "Order": "stop-first"}
    assert spec["UpdateConfig"] == BASE["UpdateConfig"]


def test_update_restart_flags_keep_the_rest_of_the_policy() -> None:
    rp = updated("--restart-condition any --restart-window 30s")["TaskTemplate"]["RestartPolicy"]
    assert rp == {"Condition": "any", "Delay": 1 * S, "MaxAttempts": 3, "Window": 30 * S}
    rp = updated("--restart-delay 0 --restart-max-attempts 0")["TaskTemplate"]["RestartPolicy"]
    assert rp == {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 0, "Window": 0}


def test_update_env_add_and_rm(monkeypatch: pytest.MonkeyPatch) -> None:
    env = updated("--env-add B=3 --env-add C=4 --env-rm A")["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["B=3", "C=4"]
    monkeypatch.setenv("FROM_SHELL", "x")
    env = updated("--env-add FROM_SHELL --env-rm B=2")["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["A=1", "FROM_SHELL=x"]


def test_update_label_add_and_rm() -> None:
    assert updated("--label-add tier=web --label-add flag --label-rm team")["Labels"] == {"tier": "web", "flag": ""}
    assert updated("--label-rm nosuch")["Labels"] == {"team": "a"}


def test_update_limits_and_reservations() -> None:
    res = updated("--limit-cpu 0.5 --limit-memory 64M --limit-pids 100 --reserve-cpu 0.25 --reserve-memory 32M")[
        "TaskTemplate"]["Resources"]
    assert res == {"Limits": {"NanoCPUs": S // 2, "MemoryBytes": 64 << 20, "Pids": 100},
                   "Reservations": {"NanoCPUs": S // 4, "MemoryBytes": 32 << 20}}


def test_update_image_force_and_constraints() -> None:
    spec = updated("--image busybox:1.36 --force --constraint-add node.role==worker")
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:1.36"
    assert spec["TaskTemplate"]["ForceUpdate"] == 1
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==worker"]
    spec = updated("--constraint-rm node.role==worker", spec)
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == []


def test_update_rollback_flag_and_rollback_command_parse() -> None:
    a = parse("service update --rollback -d web")
    assert a.rollback and a.detach and a.func is cli.cmd_service_update
    a = parse("service rollback web")
    assert a.service == "web" and a.func is cli.cmd_service_rollback and not a.detach


def test_update_rollback_refuses_other_flags() -> None:
    with pytest.raises(cli.UsageError, match="^other flags may not be combined with --rollback$"):
        cli.cmd_service_update(None, parse("service update --rollback --image busybox:2 web"), None)  # type: ignore[arg-type]


# -- bad values: the CLI refuses them (exit 2, argparse) ------------------------------------------

@pytest.mark.parametrize("flags", [
    "--update-parallelism -1", "--update-parallelism two", "--update-delay -2s", "--update-delay 2x",
    "--update-failure-action stop", "--update-monitor -1s", "--update-max-failure-ratio 1.5",
    "--update-max-failure-ratio -0.1", "--update-max-failure-ratio lots", "--update-order random",
    "--rollback-failure-action rollback", "--rollback-delay soon", "--rollback-parallelism -3",
    "--restart-condition sometimes", "--restart-window -1m", "--restart-max-attempts -1", "--restart-delay 5x",
    "--limit-pids -1",
])
def test_bad_update_flags_are_refused_by_the_cli(flags: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(f"service update {flags} web")
    assert e.value.code == 2
    assert flags.split()[0] in capsys.readouterr().err


@pytest.mark.parametrize("flags", ["--update-delay -2s", "--restart-window 1x", "--rollback-max-failure-ratio 2"])
def test_bad_create_flags_are_refused_by_the_cli(flags: str) -> None:
    with pytest.raises(SystemExit) as e:
        parse(f"service create {flags} busybox")
    assert e.value.code == 2


# -- bad values sent through the API: 400s from the spec validation -------------------------------

def _spec(**over: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for path, v in over.items():
        obj = spec
        *parents, last = path.split("__")
        for p in parents:
            obj = obj.setdefault(p, {})
        obj[last] = v
    return spec


@pytest.mark.parametrize(("field", "value", "words"), [
    ("UpdateConfig__Delay", -1, "cannot be negative"),
    ("UpdateConfig__Delay", MAX_POLICY_DURATION + 1, "UpdateConfig.Delay of 24h is over the limit of 24h"),
    ("UpdateConfig__Monitor", 100 * 3600 * S, "UpdateConfig.Monitor of 100h is over the limit of 24h"),
    ("UpdateConfig__Monitor", -5, "cannot be negative"),
    ("UpdateConfig__Parallelism", MAX_PARALLELISM + 1, "UpdateConfig.Parallelism 100001 is over the limit"),
    ("UpdateConfig__Parallelism", -1, "Parallelism"),
    ("UpdateConfig__MaxFailureRatio", 1.5, "between 0 and 1"),
    ("UpdateConfig__MaxFailureRatio", -0.5, "between 0 and 1"),
    ("UpdateConfig__MaxFailureRatio", "half", "MaxFailureRatio"),
    ("UpdateConfig__FailureAction", "explode", "FailureAction"),
    ("UpdateConfig__Order", "random", "Order"),
    ("RollbackConfig__FailureAction", "rollback", "RollbackConfig.FailureAction"),
    ("RollbackConfig__Delay", 2 * MAX_POLICY_DURATION, "RollbackConfig.Delay of 48h is over the limit of 24h"),
    ("RollbackConfig__Parallelism", 10**9, "RollbackConfig.Parallelism 1000000000 is over the limit"),
    ("TaskTemplate__RestartPolicy__Condition", "sometimes", "RestartCondition"),
    ("TaskTemplate__RestartPolicy__Delay", -1, "cannot be negative"),
    ("TaskTemplate__RestartPolicy__Delay", 25 * 3600 * S, "RestartPolicy.Delay of 25h is over the limit of 24h"),
    ("TaskTemplate__RestartPolicy__Window", 10**15 * S, "RestartPolicy.Window of"),
    ("TaskTemplate__RestartPolicy__MaxAttempts", MAX_RESTART_ATTEMPTS + 1, "RestartPolicy.MaxAttempts 1001 is over"),
    ("TaskTemplate__RestartPolicy__MaxAttempts", -2, "MaxAttempts"),
])
def test_absurd_or_malformed_policies_are_400s(field: str, value: Any, words: str) -> None:
    with pytest.raises(SpecError) as e:
        validate_service_spec(_spec(**{field: value}))
    assert words in str(e.value)


def test_policies_at_their_limits_are_fine() -> None:
    spec = _spec(UpdateConfig__Delay=MAX_POLICY_DURATION, UpdateConfig__Parallelism=MAX_PARALLELISM,
                 UpdateConfig__MaxFailureRatio=1, RollbackConfig__Monitor=MAX_POLICY_DURATION,
                 TaskTemplate__RestartPolicy__MaxAttempts=MAX_RESTART_ATTEMPTS,
                 TaskTemplate__RestartPolicy__Window=MAX_POLICY_DURATION)
    assert validate_service_spec(spec)["UpdateConfig"]["Delay"] == MAX_POLICY_DURATION


# -- waiting on an update ------------------------------------------------------------------------

def _svc(state: str, msg: str = "") -> dict[str, Any]:
    return {"UpdateStatus": {"State": state, "Message": msg}}


def test_update_watch_fails_a_paused_update_with_the_reason() -> None:
    w = UpdateWatch()
    assert w.check({}) is None and w.check(_svc("updating", "update in progress")) is None
    assert w.check(_svc("paused", "update paused due to failure or early termination of task x")) == \
        "service update paused: update paused due to failure or early termination of task x"


def test_update_watch_on_an_automatic_rollback() -> None:
    w = UpdateWatch()
    assert w.check(_svc("updating")) is None and w.final() is None
    assert w.check(_svc("rollback_started", "update rolled back due to failure or early termination of task t1")) \
        is None
    assert w.check(_svc("rollback_completed", "rollback completed")) is None
    # followed to its end; then the wait fails with the reason the rollback started
    assert w.final() == "service rolled back: update rolled back due to failure or early termination of task t1"
    w = UpdateWatch()
    assert w.check(_svc("rollback_completed", "rollback completed")) is None
    assert w.final() == "service rolled back: rollback completed"


def test_update_watch_on_a_rollback_asked_for() -> None:
    w = UpdateWatch(rollback=True)
    assert w.check(_svc("rollback_started", "manually requested rollback")) is None
    assert w.check(_svc("rollback_completed", "rollback completed")) is None and w.final() is None
    assert w.check(_svc("rollback_paused", "rollback paused due to failure")) == \
        "service rollback paused: rollback paused due to failure"


# -- messages ---------------------------------------------------------------------------------------

def _string_constants(path: pathlib.Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_daemon_message_tells_a_docker_cli_user_to_run_shoal() -> None:
    bad = []
    for top in ("manager", "shoal/daemon", "shoal/rpc", "raft", "worker"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, text in _string_constants(path):
                if "`shoal " in text or "'shoal " in text or '"shoal ' in text or text.startswith("shoal "):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {text[:80]}")
    assert bad == []
