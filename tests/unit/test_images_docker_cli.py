"""The real docker CLI's `load`, `image ls` and `image inspect` against shoald's image routes:
images whose config carries ``created`` as an RFC 3339 string (every image on Docker Hub, and
Shoal's own busybox image) list and inspect (issue 7: they answered "invalid literal for
int()"), and an image without one shows Go's zero time as Docker does. Skipped without a
`docker` binary on PATH."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args
from tests.unit.test_images_archives import _tar, docker_save
from tests.unit.test_orchestrator_cli import DOCKER, docker

pytestmark = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")


@pytest.fixture
async def daemon_sock() -> AsyncIterator[tuple[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="shoal-img-cli-"))
    args = parse_args(["--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                       "--socket", str(base / "api.sock"), "--cgroup-parent", "shoal-unit-test"])
    runner = web.AppRunner(build_app(Daemon(args)))
    await runner.setup()
    await web.UnixSite(runner, str(base / "api.sock")).start()
    try:
        yield f"unix://{base / 'api.sock'}", base
    finally:
        await runner.cleanup()
        shutil.rmtree(base, ignore_errors=True)


async def test_docker_image_ls_and_inspect_with_rfc3339_created(daemon_sock: tuple[str, Path]) -> None:
    host, base = daemon_sock
    layer = _tar([("hello.txt", b"hi\n")])
    created = "2024-05-01T12:34:56.123456789Z"
    for name, when in (("stamped:1", created), ("unstamped:1", None)):
        rc, out, err = await docker(host, base, "load", "-i",
                                    str(docker_save(base / f"{name[:-2]}.tar", name, layer, cmd=name, created=when)))
        assert rc == 0 and f"Loaded image: docker.io/library/{name}" in out, (out, err)

    rc, out, err = await docker(host, base, "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.CreatedAt}}")
    assert rc == 0, (out, err)
    lines = sorted(out.splitlines())
    assert lines[0].startswith("stamped:1 2024-05-01 12:34:56 +0000"), lines
    assert lines[1].startswith("unstamped:1 1970-01-01"), lines

    rc, out, err = await docker(host, base, "image", "inspect", "stamped:1", "unstamped:1")
    assert rc == 0, (out, err)
    stamped, unstamped = json.loads(out)
    assert stamped["Created"] == created and unstamped["Created"] == "0001-01-01T00:00:00Z"
    assert stamped["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    rc, out, err = await docker(host, base, "image", "inspect", "-f", "{{.Created}} {{.Os}}/{{.Architecture}}",
                                "stamped:1")
    assert (rc, out.strip()) == (0, f"{created} linux/amd64"), err
