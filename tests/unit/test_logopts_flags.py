"""Where log options come in: ``shoald --log-opt`` (the node's default) and ``shoal service create
--log-driver/--log-opt`` (the service's), both checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli import commands as cli
from shoal.daemon.daemon import Daemon
from shoal.daemon.main import parse_args


def test_daemon_log_opts_become_the_runtime_defaults(tmp_path: Path) -> None:
    args = parse_args(["--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
                       "--log-opt", "max-size=64k", "--log-opt", "max-file=2"])
    assert args.log_opts == {"max-size": "64k", "max-file": "2"}
    assert Daemon(args).runtime.log_opts == {"max-size": "64k", "max-file": "2"}
    assert parse_args([]).log_opts == {}


@pytest.mark.parametrize(("flag", "message"), [
    ("max-size", "--log-opt: invalid log opt 'max-size': use KEY=VALUE"),
    ("max-size=lots", "--log-opt: invalid size 'lots'"),
    ("max-file=0", "max-file cannot be less than 1"),
    ("mode=non-blocking", "unknown log opt 'mode' for the json-file log driver"),
])
def test_bad_daemon_log_opts_stop_shoald_with_the_reason(flag: str, message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--log-opt", flag])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_service_create_sends_the_log_driver_as_docker_does() -> None:
    a = cli.build_parser().parse_args("service create --log-driver json-file --log-opt max-size=1m "
                                      "--log-opt max-file=4 busybox".split())
    assert cli.build_service_spec(a)["TaskTemplate"]["LogDriver"] == {
        "Name": "json-file", "Options": {"max-size": "1m", "max-file": "4"}}
    a = cli.build_parser().parse_args("service create --log-opt max-size=64k busybox".split())
    assert cli.build_service_spec(a)["TaskTemplate"]["LogDriver"] == {"Name": "json-file",
                                                                      "Options": {"max-size": "64k"}}
    a = cli.build_parser().parse_args("service create busybox".split())
    assert "LogDriver" not in cli.build_service_spec(a)["TaskTemplate"]
    for bad, message in [("--log-driver syslog", "log driver 'syslog' is not supported"),
                         ("--log-opt max-size=big", "invalid size 'big'"),
                         ("--log-opt compress=true", "unknown log opt 'compress'")]:
        a = cli.build_parser().parse_args(["service", "create", *bad.split(), "busybox"])
        with pytest.raises(cli.UsageError, match=message):
            cli.build_service_spec(a)
