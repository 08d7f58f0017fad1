"""A hostile rootfs cannot make the runtime touch the host (root, one host; issue 7).

The image's /dev (or /proc, or /etc/hosts) is a symlink to a scratch directory outside the rootfs.
shoal-oci refuses to prepare /dev or /proc through such a link and creates nothing outside the rootfs;
/etc/hosts is resolved inside the rootfs as the container sees it (as Docker does). The directory
outside is compared entry by entry, bytes included, before and after. An image whose layer carries
the link is refused at create, for runc too (runc 1.1.5 would create its /dev/fd, /dev/stdin …
symlinks in the host directory the link names).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.containers import ContainerError, ContainerSpec, Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from tests.integration.conftest import TEST_REF, busybox_layer, require_root, scratch_runtime

pytestmark = pytest.mark.root

HOSTILE_REF = "shoal.test/dev-link:latest"


def snapshot(d: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every entry under ``d`` (``d`` included): mode, owner, size, and the bytes of files or the
    text of links."""
    out: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for p in [d, *sorted(d.rglob("*"))]:
        st = p.lstat()
        body: bytes | str | None = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(d))] = (st.st_mode, st.st_uid, st.st_size, body)
    return out


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@pytest.fixture
async def runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    async with scratch_runtime(scratch_dir, busybox_archive, "shoal-test-hostile") as rt:
        yield rt


@pytest.fixture
def outside(scratch_dir: Path) -> Path:
    """A host directory outside every rootfs, with a file in it."""
    d = scratch_dir / "outside"
    d.mkdir()
    (d / "keep").write_text("host data\n")
    os.chmod(d, 0o755)
    return d


async def _created_with_link(rt: Runtime, name: str, target: Path, command: list[str]) -> str:
    """Create a busybox container, then turn ``/<name>`` of its rootfs into a symlink to ``target``
    (what an image layer can do; here after create, so that only shoal-oci's own checks are met)."""
    cid = new_container_id()
    await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=command))
    path = rt.root / cid / "rootfs" / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target)
    return cid


@pytest.mark.parametrize("name", ["dev", "proc"])
async def test_kernel_fs_path_linked_out_is_refused(runtime: Runtime, outside: Path, name: str) -> None:
    before = snapshot(outside)
    cid = await _created_with_link(runtime, name, outside, ["ls", "-l", f"/{name}/"])
    st = await runtime.start(cid)
    assert st.status == "exited" and st.exit_code not in (None, 0), st
    assert f"rootfs: /{name} is a symlink to '{outside}'" in (st.error or ""), st.error
    assert snapshot(outside) == before
    assert _mounts_under(outside) == []
    assert await runtime.wait(cid) == st.exit_code
    assert not Cgroup(f"/{runtime.cgroup_parent}/{cid}").exists()


async def test_etc_hosts_linked_out_resolves_inside_the_rootfs(runtime: Runtime, outside: Path) -> None:
    before = snapshot(outside)
    cid = await _created_with_link(runtime, "etc/hosts", outside / "keep",
                                   ["sh", "-c", f"cat /etc/hosts; echo ---; cat {outside}/keep"])
    st = await runtime.start(cid)
    assert await asyncio.wait_for(runtime.wait(cid), 30) == 0, runtime.read_logs(cid)
    out = "".join(r["log"] for r in runtime.read_logs(cid) if r["stream"] == "stdout")
    hosts, keep = out.split("---\n")
    assert "127.0.0.1\tlocalhost" in hosts  # our hosts file, bound where the link leads inside the rootfs
    assert keep == hosts
    assert snapshot(outside) == before
    del st


def _archive_with_layer(path: Path, layer: bytes, ref: str) -> Path:
    """An OCI image-layout archive of one uncompressed layer named ``ref``."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = gzip.compress(layer, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cd, ld = (hashlib.sha256(b).hexdigest() for b in (config, gz))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cd}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{ld}",
                    "size": len(gz)}]}).encode()
    md = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{md}", "size": len(manifest),
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "latest"}}]}).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index),
                           (f"blobs/sha256/{cd}", config), (f"blobs/sha256/{ld}", gz),
                           (f"blobs/sha256/{md}", manifest)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.mark.parametrize("oci_runtime", ["shoal", "runc"])
async def test_image_with_dev_link_is_refused_at_create(scratch_dir: Path, outside: Path, oci_runtime: str) -> None:
    require_root()
    if oci_runtime == "runc" and not shutil.which("runc"):
        pytest.skip("runc is not installed")
    src = tarfile.open(fileobj=io.BytesIO(busybox_layer()))
    buf = io.BytesIO()
    with src, tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in src.getmembers():
            if m.name != "dev":
                tf.addfile(m, src.extractfile(m) if m.isfile() else None)
        link = tarfile.TarInfo("dev")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(link)
    images = ImageStore(scratch_dir / "images")
    assert images.load(_archive_with_layer(scratch_dir / "hostile.tar", buf.getvalue(), HOSTILE_REF)) == [HOSTILE_REF]
    parent = f"shoal-test-hl-{os.getpid()}-{os.urandom(3).hex()}"
    rt = Runtime(scratch_dir / "containers", scratch_dir / "exec", images, parent, oci_runtime)
    before = snapshot(outside)
    cid = new_container_id()
    try:
        with pytest.raises(ContainerError, match=f"rootfs: /dev is a symlink to '{outside}'"):
            await rt.create(ContainerSpec(id=cid, image=HOSTILE_REF, command=["true"]))
        assert not (rt.root / cid).exists()  # nothing is left of the refused container
        assert snapshot(outside) == before
        assert _mounts_under(scratch_dir) == []
    finally:
        for st in rt.list():
            await rt.remove(st.id)
        Cgroup("/" + parent).destroy()
