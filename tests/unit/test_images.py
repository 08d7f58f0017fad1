"""Image store without root: reference normalisation, chain IDs, archive loading (OCI and docker save),
digest verification, and (as root) whiteout conversion to overlayfs whiteouts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agent_runtime.images import ImageError, ImageStore, chain_ids, normalize_ref, parse_ref, unpack_layer
from tests.integration.conftest import busybox_layer, make_busybox_oci_archive


@pytest.mark.parametrize("ref,want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io/library/busybox:x"),
    ("someone/app", "docker.io/someone/app:latest"),
    ("10.99.0.2:5000/busybox:latest", "10.99.0.2:5000/busybox:latest"),
    ("10.99.0.2:5000/busybox", "10.99.0.2:5000/busybox:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("quay.io/a/b/c:v1", "quay.io/a/b/c:v1"),
    ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
])
def test_normalize_ref(ref: str, want: str) -> None:
    assert normalize_ref(ref) == want


@pytest.mark.parametrize("bad", ["", "  ", "Busybox", "busybox:", "busybox@sha256:xyz", "a//b", "busybox:bad tag"])
def test_bad_refs(bad: str) -> None:
    with pytest.raises(ImageError, match="invalid reference format"):
        parse_ref(bad)


def test_bad_repository_name_message_names_the_ref() -> None:
    with pytest.raises(ImageError) as ei:
        parse_ref("example.com/Bad_Name:1")
    assert "(in 'example.com/Bad_Name:1')" in str(ei.value) and "{ref" not in str(ei.value)


def test_chain_ids() -> None:
    d = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    c = chain_ids(d)
    assert c[0] == d[0]
    assert c[1] == "sha256:" + hashlib.sha256(f"{d[0]} {d[1]}".encode()).hexdigest()


def test_load_oci_archive(tmp_path: Path) -> None:
    archive = make_busybox_oci_archive(tmp_path / "a.tar", ref="example.com/team/bb:v1")
    store = ImageStore(tmp_path / "store")
    assert store.load(archive) == ["example.com/team/bb:v1"]
    img = store.get("example.com/team/bb:v1")
    assert img is not None and img.config["Cmd"] == ["sh"]
    assert os.path.islink(img.layers[0] / "bin/sh") and (img.layers[0] / "bin/busybox").exists()
    assert store.get(img.id) is not None and store.get(img.id[7:19]) is not None
    assert [i.id for i in store.list()] == [img.id]
    # Loading again is idempotent; removing the tag forgets the image.
    assert store.load(archive) == ["example.com/team/bb:v1"]
    store.remove("example.com/team/bb:v1")
    assert store.get("example.com/team/bb:v1") is None and store.list() == []
    with pytest.raises(ImageError, match="No such image"):
        store.remove("example.com/team/bb:v1")


def test_load_multi_arch_oci_archive_picks_amd64(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    single = store.load(make_busybox_oci_archive(tmp_path / "s.tar", ref="x.io/s:1"))
    multi = store.load(make_busybox_oci_archive(tmp_path / "m.tar", ref="x.io/m:1", multi_arch=True))
    a, b = store.get(single[0]), store.get(multi[0])
    assert a is not None and b is not None and a.id == b.id


def _docker_save_tar(path: Path, tags: list[str]) -> None:
    layer = busybox_layer()
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["httpd"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{cid}.json", "RepoTags": tags, "Layers": ["abc/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in ((f"{cid}.json", config), ("abc/layer.tar", layer), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_load_docker_save(tmp_path: Path) -> None:
    _docker_save_tar(tmp_path / "d.tar", ["busybox:web", "10.99.0.2:5000/busybox:latest"])
    store = ImageStore(tmp_path / "store")
    refs = store.load(tmp_path / "d.tar")
    assert refs == ["docker.io/library/busybox:web", "10.99.0.2:5000/busybox:latest"]
    img = store.get("busybox:web")
    assert img is not None and img.config == {"Cmd": ["httpd"]}
    assert sorted(img.repo_tags) == sorted(refs)


def test_load_rejects_bad_archives(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageError, match="cannot read image archive"):
        store.load(tmp_path / "junk.tar")
    with tarfile.open(tmp_path / "empty.tar", "w") as tf:
        ti = tarfile.TarInfo("hello.txt")
        tf.addfile(ti, io.BytesIO(b""))
    with pytest.raises(ImageError, match="neither an OCI image archive"):
        store.load(tmp_path / "empty.tar")


def test_blob_digest_is_verified(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="digest mismatch"):
        store._store_blob_stream(io.BytesIO(b"hello"), "sha256:" + "0" * 64)
    assert list((tmp_path / "store/blobs/sha256").iterdir()) == []


def _layer_with_whiteouts(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, typ in (("etc", tarfile.DIRTYPE), ("etc/.wh.passwd", tarfile.REGTYPE),
                          ("var", tarfile.DIRTYPE), ("var/.wh..wh..opq", tarfile.REGTYPE),
                          ("var/new", tarfile.REGTYPE), ("../evil", tarfile.REGTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type = typ
            tf.addfile(ti, io.BytesIO(b""))


@pytest.mark.root
def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod, trusted.* xattrs)")
    blob = tmp_path / "layer.tgz"
    _layer_with_whiteouts(blob)
    dest = Path("/var/tmp") / f"shoal-wh-{os.getpid()}"
    try:
        with pytest.raises(ImageError, match="resolves outside the layer"):
            unpack_layer(blob, dest)
    finally:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
    # Without the escaping entry it unpacks, with 0/0 char devices and the opaque xattr.
    with tarfile.open(blob) as src, tarfile.open(tmp_path / "ok.tar", "w") as out:
        for m in src.getmembers():
            if m.name != "../evil":
                out.addfile(m, src.extractfile(m) if m.isfile() else None)
    try:
        unpack_layer(tmp_path / "ok.tar", dest)
        st = os.lstat(dest / "etc/passwd")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
        assert os.getxattr(dest / "var", "trusted.overlay.opaque") == b"y"
        assert (dest / "var/new").exists() and not (dest / "var/.wh..wh..opq").exists()
    finally:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)


def test_repo_tags_list_every_ref_of_the_image_id(tmp_path: Path) -> None:
    """`shoal image load` of busybox on a node that already has it under a registry ref: the image
    lists both refs (what GET /images/json shows as RepoTags)."""
    store = ImageStore(tmp_path / "store")
    assert store.load(make_busybox_oci_archive(tmp_path / "a.tar", ref="10.99.0.2:5000/busybox:latest")) == [
        "10.99.0.2:5000/busybox:latest"]
    assert store.load(make_busybox_oci_archive(tmp_path / "b.tar", ref="docker.io/library/busybox:latest")) == [
        "docker.io/library/busybox:latest"]
    want = ["10.99.0.2:5000/busybox:latest", "docker.io/library/busybox:latest"]
    images = store.list()
    assert len(images) == 1 and sorted(images[0].repo_tags) == want
    for ref in (*want, "busybox", images[0].id):
        img = store.get(ref)
        assert img is not None and sorted(img.repo_tags) == want, ref
    assert sorted(images[0].familiar_repo_tags) == ["10.99.0.2:5000/busybox:latest", "busybox:latest"]
    digests = images[0].repo_digests
    assert len(digests) == 2 and digests[0].startswith("10.99.0.2:5000/busybox@sha256:"), digests
    assert digests[1].startswith("busybox@sha256:"), digests
    store.remove("busybox")
    img = store.get(images[0].id)
    assert img is not None and img.repo_tags == ["10.99.0.2:5000/busybox:latest"]
