"""Pulling from a real OCI registry (Debian's docker-registry on 127.0.0.1:<free port>), then running it.

The image is pushed with skopeo in three shapes: an OCI manifest, a Docker schema 2 manifest, and a
multi-platform OCI index (the puller must pick linux/amd64). Bad cases: an unknown repository, an
unknown tag, and a registry address with nothing listening.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.containers import ContainerSpec, Runtime
from agent_runtime.images import ImageError, ImageStore
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from tests.integration.conftest import make_busybox_oci_archive, require_root
from tests.ports import free_port
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running docker-registry on 127.0.0.1:<port> holding busybox:latest (OCI), busybox:v2s2 and
    busybox:multi (an index with arm64 + amd64). Yields ``127.0.0.1:<port>``; stopped and deleted after."""
    require_root()
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    (d / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {d / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(d / "registry.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=log)
    addr = f"127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, f"docker-registry exited: {(d / 'registry.log').read_text()}"
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=1).read()
            return True

        wait_until_sync(up, 20, "docker-registry to come up", interval=0.05, retry=(OSError,),
                        detail=lambda: (d / "registry.log").read_text())
        single = make_busybox_oci_archive(d / "single.tar")
        multi = make_busybox_oci_archive(d / "multi.tar", multi_arch=True)
        for src, tag, extra in ((single, "latest", []), (single, "v2s2", ["--format", "v2s2"]),
                                (multi, "multi", ["--multi-arch", "all"])):
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", *extra, f"oci-archive:{src}",
                            f"docker://{addr}/busybox:{tag}"], check=True, capture_output=True, timeout=60)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


async def test_pull_all_manifest_shapes(registry: str, scratch_dir: Path) -> None:
    store = ImageStore(scratch_dir / "images", insecure_registries=[registry])
    ids = set()
    for tag in ("latest", "v2s2", "multi"):
        img = await store.pull(f"{registry}/busybox:{tag}")
        assert img.ref == f"{registry}/busybox:{tag}"
        assert img.config["Cmd"] == ["sh"]
        assert (img.layers[0] / "bin/busybox").stat().st_size > 100_000
        assert (img.layers[0] / "www/cgi-bin/whoami").stat().st_mode & 0o111
        ids.add(img.id)
    assert len(ids) == 1  # the multi-arch pull chose the amd64 config, the same as the single image
    assert {i.ref for i in store.list()} == {f"{registry}/busybox:latest"} or len(store.list()) == 1
    blobs = list((scratch_dir / "images/blobs/sha256").iterdir())
    import hashlib

    for b in blobs:
        assert hashlib.sha256(b.read_bytes()).hexdigest() == b.name


async def test_concurrent_pulls_share_one_download(registry: str, scratch_dir: Path) -> None:
    store = ImageStore(scratch_dir / "images", insecure_registries=[registry])
    calls: list[str] = []
    original = store._download_blob

    async def counting(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(a[2])
        return await original(*a, **kw)

    store._download_blob = counting  # type: ignore[method-assign]
    imgs = await asyncio.gather(*(store.pull(f"{registry}/busybox") for _ in range(20)))
    assert len({i.id for i in imgs}) == 1
    assert len(calls) == len(set(calls)) == 2  # one config + one layer, each fetched once


async def test_pull_errors(registry: str, scratch_dir: Path) -> None:
    store = ImageStore(scratch_dir / "images", insecure_registries=[registry])
    with pytest.raises(ImageError) as e:
        await store.pull(f"{registry}/no-such-repo:latest")
    assert "unknown" in str(e.value) and registry in str(e.value)
    with pytest.raises(ImageError) as e:
        await store.pull(f"{registry}/busybox:no-such-tag")
    assert "manifest unknown" in str(e.value)
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ImageError) as e:
        await store.pull(f"{dead}/busybox:latest")
    assert dead in str(e.value) and "cannot connect to registry" in str(e.value)
    assert time.monotonic() - t0 < 15
    with pytest.raises(ImageError, match="invalid reference format"):
        await store.pull("UPPER/case")
    assert store.list() == []


async def test_run_pulled_image(registry: str, scratch_dir: Path) -> None:
    store = ImageStore(scratch_dir / "images", insecure_registries=[registry])
    parent = f"shoal-pull-{os.getpid()}"
    rt = Runtime(scratch_dir / "containers", scratch_dir / "exec", store, parent, "shoal")
    cid = new_container_id()
    try:
        # create pulls the image when it is not stored yet.
        await rt.create(ContainerSpec(id=cid, image=f"{registry}/busybox:latest",
                                      command=["/www/cgi-bin/whoami"]))
        await rt.start(cid)
        assert await asyncio.wait_for(rt.wait(cid), 30) == 0
        assert [r["log"] for r in rt.read_logs(cid)][-1] == cid[:12] + "\n"
    finally:
        for st in rt.list():
            await rt.remove(st.id)
        Cgroup("/" + parent).destroy()


async def test_resolve_without_pulling_then_pull_by_digest(registry: str, scratch_dir: Path) -> None:
    """GET /distribution/{name}/json's answer: the digest the docker CLI pins a service to."""
    store = ImageStore(scratch_dir / "images", insecure_registries=[registry])
    single = await store.resolve(f"{registry}/busybox:latest")
    assert single["Descriptor"]["digest"].startswith("sha256:")
    assert single["Platforms"] == [{"architecture": "amd64", "os": "linux"}]
    multi = await store.resolve(f"{registry}/busybox:multi")
    assert {p["architecture"] for p in multi["Platforms"]} == {"amd64", "arm64"}
    assert "index" in multi["Descriptor"]["mediaType"] or "list" in multi["Descriptor"]["mediaType"]
    assert store.list() == []  # resolving pulls nothing
    pinned = f"{registry}/busybox:latest@{single['Descriptor']['digest']}"
    img = await store.pull(pinned)
    assert img.config["Cmd"] == ["sh"]
    with pytest.raises(ImageError, match="manifest unknown"):
        await store.resolve(f"{registry}/busybox:no-such-tag")
