"""Hostile and malformed image archives through ImageStore.load and POST /images/load: layer
cache poisoning through a false diff_id, JSON documents of the wrong shape, symlinked or missing
entries, nesting — each an ImageError (HTTP 400 with its message), never a 500, and nothing of
the refused image is kept."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent_runtime.images import ImageError, ImageStore
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_save(path: Path, tag: str, layer: bytes, diff_id: str | None = None, cmd: str = "app",
                created: str | None = None) -> Path:
    """A ``docker save`` archive of one image with one layer; ``diff_id`` may lie about it."""
    config_doc: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {"Cmd": [cmd]},
                                  "rootfs": {"type": "layers", "diff_ids": [diff_id or _sha(layer)]}}
    if created is not None:
        config_doc["created"] = created
    config = json.dumps(config_doc).encode()
    cid = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": ["l/layer.tar"]}]).encode()
    path.write_bytes(_tar([(f"{cid}.json", config), ("l/layer.tar", layer), ("manifest.json", manifest)]))
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking owners needs root")
def test_false_diff_id_cannot_poison_the_layer_cache(tmp_path: Path) -> None:
    honest_layer = _tar([("app", b"honest code\n")])
    evil_layer = _tar([("app", b"evil code\n")])
    store = ImageStore(tmp_path / "store")
    # the attacker's image claims the honest layer's diff_id for its own files
    with pytest.raises(ImageError) as ei:
        store.load(docker_save(tmp_path / "evil.tar", "evil:1", evil_layer, diff_id=_sha(honest_layer)))
    assert str(ei.value) == f"diff_id mismatch: config {_sha(honest_layer)}, content {_sha(evil_layer)}"
    assert list((tmp_path / "store/layers").iterdir()) == []
    assert list((tmp_path / "store/tmp").iterdir()) == []
    assert store.get("evil:1") is None
    # the honest image loaded later runs its own files
    store.load(docker_save(tmp_path / "honest.tar", "honest:1", honest_layer))
    img = store.get("honest:1")
    assert img is not None and (img.layers[0] / "app").read_bytes() == b"honest code\n"


def _oci(index: Any, blobs: dict[str, bytes] | None = None, extra: list[tuple[str, bytes]] | None = None) -> bytes:
    entries = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
               ("index.json", index if isinstance(index, bytes) else json.dumps(index).encode())]
    entries += [(f"blobs/sha256/{d.split(':')[1]}", b) for d, b in (blobs or {}).items()]
    return _tar(entries + (extra or []))


def _manifest_blob(doc: Any) -> tuple[str, bytes]:
    raw = json.dumps(doc).encode()
    return _sha(raw), raw


def _symlinked_manifest_json() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, target in (("manifest.json", "a"), ("a", "manifest.json")):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.SYMTYPE
            ti.linkname = target
            tf.addfile(ti)
    return buf.getvalue()


no_config_digest, no_config = _manifest_blob({"schemaVersion": 2, "layers": []})
nested_digest, nested = _manifest_blob({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64,
                                                                      "size": 1}, "layers": "all of them"})

MALFORMED: dict[str, tuple[bytes, str]] = {
    "manifest.json is a string": (_tar([("manifest.json", b'"just a string"')]),
                                  "manifest.json is malformed at the top level"),
    "docker save entry without Config": (_tar([("manifest.json", b'[{"RepoTags": ["x:1"]}]')]),
                                         "'Config' is a required property"),
    "Config names a missing file": (_tar([("manifest.json", b'[{"Config": "nope.json"}]')]),
                                    "missing entry 'nope.json'"),
    "manifest.json is a symlink loop": (_symlinked_manifest_json(), "neither an OCI image archive"),
    "manifest.json nested 100000 deep": (_tar([("manifest.json", b"[" * 100_000 + b"]" * 100_000)]),
                                         "manifest.json: nesting too deep"),
    "index.json manifests is an object": (_oci({"manifests": {"a": 1}}), "index.json is malformed at manifests"),
    "index.json descriptor with a bad digest": (_oci({"manifests": [{"digest": "md5:00"}]}),
                                                "index.json is malformed at manifests/0/digest"),
    "OCI manifest without a config": (_oci({"manifests": [{"digest": no_config_digest}]},
                                           {no_config_digest: no_config}), "'config' is a required property"),
    "OCI manifest with layers not a list": (_oci({"manifests": [{"digest": nested_digest}]},
                                                 {nested_digest: nested}), "is malformed at layers"),
    "manifest blob that does not match its digest": (
        _oci({"manifests": [{"digest": "sha256:" + "1" * 64}]}, {"sha256:" + "1" * 64: b"{}"}),
        "does not match its digest"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_archives_are_image_errors(case: str, tmp_path: Path) -> None:
    data, words = MALFORMED[case]
    (tmp_path / "a.tar").write_bytes(data)
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        store.load(tmp_path / "a.tar")
    assert store.list() == []


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    args = parse_args(["--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
                       "--socket", str(tmp_path / "s.sock"), "--cgroup-parent", "shoal-unit-test"])
    async with TestClient(TestServer(build_app(Daemon(args)))) as c:
        yield c


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_image_load_of_a_malformed_archive_is_a_400(case: str, client: TestClient[Any, Any]) -> None:
    data, words = MALFORMED[case]
    r = await client.post("/v1.41/images/load", data=data, headers={"Content-Type": "application/x-tar"})
    assert r.status == 400, await r.text()
    assert r.headers["Content-Type"] == "application/json"
    assert words in (await r.json())["message"]
