"""ContainerSpec security/limit fields: accepted when Shoal applies them, a clear 400 otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from manager.specs import SpecError, validate_service_spec


def _cs(**kw: Any) -> dict[str, Any]:
    return {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", **kw}}}


def test_supported_fields_are_accepted() -> None:
    validate_service_spec(_cs(
        CapabilityAdd=["NET_ADMIN", "CAP_SYS_TIME", "all"], CapabilityDrop=["chown", "ALL"],
        Ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 2048}, {"Name": "nproc", "Soft": -1, "Hard": -1}],
        Sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000000", "fs.mqueue.msg_max": "20"},
        Groups=["audio", "1234"],
        DNSConfig={"Nameservers": ["10.0.0.53", "fd00::53"], "Search": ["example.org"], "Options": ["ndots:2"]},
        Hosts=["10.0.0.9 db db.local", "cache:10.0.0.10", "v6:fd00::1"],
        OomScoreAdj=-500, Init=False, TTY=False, OpenStdin=False, Isolation="default",
        Privileges={"CredentialSpec": None, "SELinuxContext": None, "NoNewPrivileges": False,
                    "Seccomp": {"Mode": "default"}, "AppArmor": {"Mode": "default"}},
    ))
    for driver in ({"Name": "json-file"}, {"Name": ""}, {"Name": "json-file", "Options": {"max-size": "1m"}},
                   {"Name": "json-file", "Options": {"max-size": "64k", "max-file": "2"}}):
        s = _cs()
        s["TaskTemplate"]["LogDriver"] = driver
        validate_service_spec(s)


@pytest.mark.parametrize("fields, message", [
    ({"CapabilityAdd": ["NET_ADMINN"]}, "ContainerSpec.CapabilityAdd: unknown capability: 'NET_ADMINN'"),
    ({"CapabilityDrop": "CHOWN"}, "CapabilityDrop of type \\[\\]string"),
    ({"Ulimits": [{"Name": "files", "Soft": 1, "Hard": 1}]}, "invalid ulimit type: 'files'"),
    ({"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 5}]}, "soft limit 10 must be less than or equal"),
    ({"Ulimits": [{"Name": "nofile", "Soft": -5, "Hard": 5}]}, "must not be negative"),
    ({"Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 1}, {"Name": "NOFILE", "Soft": 1, "Hard": 1}]},
     "duplicate ulimit"),
    ({"Sysctls": {"kernel.hostname": "x"}}, "sysctl 'kernel.hostname' is not allowed in a container"),
    ({"Sysctls": {"vm.swappiness": "10"}}, "only namespaced sysctls"),
    ({"Groups": [5]}, "Groups of type \\[\\]string"),
    ({"DNSConfig": {"Nameservers": ["dns.example"]}}, "must be an IP address"),
    ({"Hosts": ["db"]}, "ContainerSpec.Hosts: invalid extra host 'db'"),
    ({"Hosts": ["db:notanip"]}, "is not an IP address"),
    ({"OomScoreAdj": 1001}, "between -1000 and 1000"),
    ({"Init": True}, "ContainerSpec.Init \\(--init\\) is not supported"),
    ({"TTY": True}, "ContainerSpec.TTY is not supported"),
    ({"OpenStdin": True}, "ContainerSpec.OpenStdin is not supported"),
    ({"Privileges": {"CredentialSpec": {"File": "x.json"}}}, "Privileges.CredentialSpec is not supported"),
    ({"Privileges": {"SELinuxContext": {"User": "u"}}}, "Privileges.SELinuxContext is not supported"),
    ({"Privileges": {"Seccomp": {"Mode": "unconfined"}}}, "Privileges.Seccomp profiles are not supported"),
    ({"Privileges": {"AppArmor": {"Mode": "disabled"}}}, "Privileges.AppArmor profiles are not supported"),
    ({"Isolation": "hyperv"}, "invalid Isolation 'hyperv'"),
    ({"Args": ["ok", "a\x00b"]}, "ContainerSpec.Args\\[1\\] contains a NUL byte"),
    ({"Env": ["A=\x00"]}, "ContainerSpec.Env\\[0\\] contains a NUL byte"),
    ({"Command": ["/bin/sh\x00"]}, "ContainerSpec.Command\\[0\\] contains a NUL byte"),
    ({"Dir": "/tmp\x00x"}, "ContainerSpec.Dir .* contains a control character"),
    ({"User": "ro\x00ot"}, "ContainerSpec.User .* contains a control character"),
    ({"User": "root\n2026-12-05 07:00:00,000 forged log line"}, "ContainerSpec.User .* contains a control"),
    ({"Hostname": "h\x00"}, "ContainerSpec.Hostname .* contains a control character"),
])
def test_unsupported_or_bad_values_are_400(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_service_spec(_cs(**fields))


@pytest.mark.parametrize("driver, message", [
    ({"Name": "syslog"}, "log driver 'syslog' is not supported by shoal: the only log driver is 'json-file'"),
    ({"Name": "json-file", "Options": {"compress": "true"}}, "unknown log opt 'compress' for the json-file"),
    ({"Name": "json-file", "Options": {"max-size": "1q"}}, "invalid size '1q'"),
    ({"Name": "json-file", "Options": {"max-size": "0"}}, "max-size must be a positive number"),
    ({"Name": "json-file", "Options": {"max-file": "0"}}, "max-file cannot be less than 1"),
    ({"Name": "json-file", "Options": {"max-file": 3}}, "log opt max-file must be a string"),
    ({"Name": "json-file", "Options": ["max-size=1m"]}, "cannot unmarshal|must be a map"),
])
def test_log_driver_other_than_json_file_or_bad_options_are_400(driver: dict[str, Any], message: str) -> None:
    s = _cs()
    s["TaskTemplate"]["LogDriver"] = driver
    with pytest.raises(SpecError, match=message):
        validate_service_spec(s)
