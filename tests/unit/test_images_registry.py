"""Registry client details against a small in-process registry (aiohttp): Bearer token auth as in
Docker's token spec, a Docker manifest list with several platforms, digest verification of blobs,
and the registry's error body in ImageError. No root needed (the layer has no special files)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent_runtime.images import ImageError, ImageStore, _Registry


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"hello from the layer\n"
        ti = tarfile.TarInfo("hello.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class FakeRegistry:
    """Serves one repository ``team/app`` with tag ``v1`` (a Docker manifest list: arm64, amd64)."""

    def __init__(self, corrupt_layer: bool = False) -> None:
        raw = _layer()
        self.layer = gzip.compress(raw)
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["app"]},
                                  "rootfs": {"type": "layers", "diff_ids": [_digest(raw)]}}).encode()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(self.config),
                       "digest": _digest(self.config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(self.layer),
                        "digest": _digest(self.layer)}]}).encode()
        self.listing = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 10,
                 "digest": "sha256:" + "e" * 64, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": len(self.manifest),
                 "digest": _digest(self.manifest), "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
        self.blobs = {_digest(self.config): self.config,
                      _digest(self.layer): (b"tampered" + self.layer[len(b"tampered"):]) if corrupt_layer else self.layer}
        self.token_requests: list[dict[str, str]] = []
        self.base = ""
        self.extra_manifests: dict[str, bytes] = {}  # tag -> body, served as is
        self.token_body = b'{"token": "tok123"}'


    def _authorized(self, req: web.Request) -> bool:
        return req.headers.get("Authorization") == "Bearer tok123"

    def _challenge(self) -> web.Response:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{self.base}/token",service="fake-registry",'
                                         'scope="repository:team/app:pull"'})

    async def h_token(self, req: web.Request) -> web.Response:
        self.token_requests.append(dict(req.query))
        return web.Response(body=self.token_body, content_type="application/json")

    async def h_manifest(self, req: web.Request) -> web.Response:
        if not self._authorized(req):
            return self._challenge()
        ref = req.match_info["ref"]
        if req.match_info["repo"] != "team/app":
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN",
                                                  "message": "repository name not known to registry"}]}, status=404)
        if ref in self.extra_manifests:
            return web.Response(body=self.extra_manifests[ref],
                                content_type="application/vnd.docker.distribution.manifest.v2+json")
        if ref == "v1":
            return web.Response(body=self.listing,
                                content_type="application/vnd.docker.distribution.manifest.list.v2+json")
        if ref == _digest(self.manifest):
            return web.Response(body=self.manifest,
                                content_type="application/vnd.docker.distribution.manifest.v2+json")
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                 status=404)

    async def h_blob(self, req: web.Request) -> web.Response:
        if not self._authorized(req):
            return self._challenge()
        data = self.blobs.get(req.match_info["digest"])
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404)
        return web.Response(body=data)


async def _serve(reg: FakeRegistry) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/token", reg.h_token)
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", reg.h_manifest)
    app.router.add_get("/v2/{repo:.+}/blobs/{digest}", reg.h_blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reg.base = f"http://127.0.0.1:{port}"
    return runner, f"127.0.0.1:{port}"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRegistry, str]]:
    reg = FakeRegistry()
    runner, addr = await _serve(reg)
    try:
        yield reg, addr
    finally:
        await runner.cleanup()


async def test_token_auth_and_manifest_list(fake: tuple[FakeRegistry, str], tmp_path: Path) -> None:
    reg, addr = fake
    store = ImageStore(tmp_path / "store")
    img = await store.pull(f"{addr}/team/app:v1")
    assert img.id == _digest(reg.config) and img.config == {"Cmd": ["app"]}
    assert img.repo_tags == [f"{addr}/team/app:v1"]
    assert len(img.repo_digests) == 1 and img.repo_digests[0].startswith(f"{addr}/team/app@sha256:")
    assert (img.layers[0] / "hello.txt").read_text() == "hello from the layer\n"
    assert reg.token_requests and reg.token_requests[0]["scope"] == "repository:team/app:pull"
    assert reg.token_requests[0]["service"] == "fake-registry"


async def test_registry_errors(fake: tuple[FakeRegistry, str], tmp_path: Path) -> None:
    _, addr = fake
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="name unknown: repository name not known to registry"):
        await store.pull(f"{addr}/other/app:v1")
    with pytest.raises(ImageError, match="manifest unknown"):
        await store.pull(f"{addr}/team/app:v2")


async def test_corrupt_blob_is_rejected(tmp_path: Path) -> None:
    reg = FakeRegistry(corrupt_layer=True)
    runner, addr = await _serve(reg)
    try:
        store = ImageStore(tmp_path / "store")
        with pytest.raises(ImageError, match="failed verification"):
            await store.pull(f"{addr}/team/app:v1")
        assert not any((tmp_path / "store/blobs/sha256").glob(_digest(reg.layer)[7:]))
        assert store.list() == []
    finally:
        await runner.cleanup()


async def test_registry_input_is_bounded(fake: tuple[FakeRegistry, str], tmp_path: Path) -> None:
    """Manifests over 4 MiB, token replies over 1 MiB, blobs longer or shorter than their
    descriptor, and layers over the store's size cap are refused (issue 7)."""
    reg, addr = fake
    store = ImageStore(tmp_path / "store")
    reg.extra_manifests["huge"] = b'{"schemaVersion": 2, "pad": "' + b"x" * (5 << 20) + b'"}'
    with pytest.raises(ImageError, match="over the 4194304-byte limit"):
        await store.pull(f"{addr}/team/app:huge")

    layer = reg.blobs[_digest(reg.layer)]
    for served, words in ((layer + b"trailing junk", "longer than its descriptor says"),
                          (layer[:-5], "its descriptor says")):
        reg.blobs[_digest(reg.layer)] = served
        with pytest.raises(ImageError, match=words):
            await store.pull(f"{addr}/team/app:v1")
        assert list((tmp_path / "store/blobs/sha256").glob(_digest(reg.layer)[7:])) == []
    reg.blobs[_digest(reg.layer)] = layer

    small = ImageStore(tmp_path / "small", max_layer_size=16)
    with pytest.raises(ImageError, match="over the 16-byte limit"):
        await small.pull(f"{addr}/team/app:v1")

    reg.token_body = b'{"token": "' + b"t" * (2 << 20) + b'"}'
    with pytest.raises(ImageError, match="token reply .* over the 1048576-byte limit"):
        await ImageStore(tmp_path / "fresh").pull(f"{addr}/team/app:v1")


@pytest.mark.parametrize("realm,words", [
    ("http://auth.example.com/token", "is plain HTTP"),
    ("file:///etc/shadow", "is not an http(s) URL"),
    ("gopher://auth.example.com/x", "is not an http(s) URL"),
])
async def test_token_realm_follows_the_registry_scheme_rules(realm: str, words: str) -> None:
    """A registry reached over HTTPS cannot send the client to a plain-HTTP (or other) realm; no
    request is made to it."""
    async with aiohttp.ClientSession() as session:
        reg = _Registry(session, "registry.example.com", lambda host: False)
        assert reg.base == "https://registry.example.com"
        with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            await reg._token(f'Bearer realm="{realm}",service="x"', "team/app")
