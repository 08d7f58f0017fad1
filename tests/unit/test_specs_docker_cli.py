"""The real docker CLI's `service create` against the swarm routes (shoal.daemon.http): its empty defaults keep working,
ReadOnly and Mounts are stored, and the fields shoal would ignore are refused with a 400 whose
message the CLI prints. Skipped when no `docker` binary is on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.store import Store
from tests.unit.test_orchestrator_cli import DOCKER, docker, sock  # noqa: F401 - sock is a fixture

pytestmark = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")


async def test_docker_cli_create_defaults_mounts_and_refusals(sock: tuple[str, Store, Path]) -> None:  # noqa: F811
    host, store, base = sock
    create = ("service", "create", "--detach", "--no-resolve-image")
    rc, out, err = await docker(host, base, *create, "--name", "plain", "busybox", "sleep", "100")
    assert rc == 0, (out, err)

    rc, out, err = await docker(host, base, *create, "--name", "mnt", "--read-only", "--no-healthcheck",
                                "--mount", "type=bind,src=/tmp,dst=/data,readonly,bind-propagation=rslave",
                                "--mount", "type=tmpfs,dst=/scratch,tmpfs-size=1m,tmpfs-mode=1770",
                                "busybox", "sleep", "100")
    assert rc == 0, (out, err)
    svc = store.view().find_by_name("services", "mnt")
    assert svc is not None
    cs = svc["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cs["ReadOnly"] is True
    bind, tmpfs = cs["Mounts"]
    assert (bind["Type"], bind["Source"], bind["Target"], bind["ReadOnly"]) == ("bind", "/tmp", "/data", True)
    assert bind["BindOptions"]["Propagation"] == "rslave"
    assert tmpfs["Type"] == "tmpfs" and tmpfs["TmpfsOptions"] == {"SizeBytes": 1 << 20, "Mode": 0o1770}

    refused = [
        (["--publish", "mode=host,target=80"], "needs a published port"),
        (["--mount", "type=volume,src=v,dst=/d"], "mount type 'volume'"),
        (["--health-cmd", "true", "--health-interval", "1us"], "Interval in Healthcheck cannot be less than 1ms"),
        (["--mount", "type=bind,src=relative,dst=/d"], "absolute"),
    ]
    for i, (flags, message) in enumerate(refused):
        rc, out, err = await docker(host, base, *create, "--name", f"bad{i}", *flags, "busybox", "sleep", "100")
        assert rc != 0 and message in err, (flags, out, err)
        assert store.view().find_by_name("services", f"bad{i}") is None
