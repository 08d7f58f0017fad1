"""Image store: pull from an OCI distribution registry, load archives, unpack layers for overlayfs.

Sources followed: the OCI distribution spec (``/v2/<name>/manifests/<ref>``, ``/v2/<name>/blobs/<digest>``,
error bodies ``{"errors": [{"code", "message"}]}``), the OCI image spec (index, manifest, config,
layer changesets with ``.wh.`` whiteouts and ``.wh..wh..opq`` opaque markers, ``oci-layout``
archives), Docker's image manifest v2 schema 2 and manifest list, the Docker token auth spec
(``WWW-Authenticate: Bearer realm=…,service=…,scope=…``), ``docker save``'s ``manifest.json``, and
the kernel's overlayfs.rst (a whiteout is a 0/0 character device; an opaque directory carries the
xattr ``trusted.overlay.opaque=y``).

Layout under ``root``: ``blobs/sha256/<hex>`` (content-addressed, verified), ``layers/<chainid hex>/``
(one unpacked layer each, used as an overlayfs lowerdir), ``images/<config hex>.json`` (metadata),
``repositories.json`` (normalised ref → image ID).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import jsonschema

from agent_runtime.layers import MAX_LAYER_SIZE, BoundedTarInfo
from agent_runtime.layers import ImageError as ImageError  # re-exported: every caller catches it from here
from agent_runtime.layers import unpack_layer as unpack_layer
from shoal.base import boundedjson
from shoal.base.util import private_dir

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([MT_OCI_INDEX, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_MANIFEST])
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)

_NAME_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")

MAX_MANIFEST_BYTES = 4 << 20
"""Largest manifest, index or ``manifest.json``/``index.json`` read (4 MiB, as moby's
``maxManifestBodySize``)."""
MAX_CONFIG_BYTES = 8 << 20
"""Largest image config blob accepted (8 MiB)."""
MAX_TOKEN_BYTES = 1 << 20
"""Largest reply of a registry's token realm read (1 MiB)."""
MAX_ERROR_BYTES = 64 << 10
"""Bytes of a registry's error body read to quote its message (64 KiB)."""
MAX_LAYERS = 128
"""Layers an image may have (overlayfs stacks at most about 500 lowerdirs; Docker builds stop at 127)."""
MAX_ARCHIVE_ENTRIES = 100_000
"""Entries an ``image load`` archive may hold."""

# JSON shapes of what archives and registries hand us (OCI image spec, docker save), checked
# before any field is used: a malformed document is an ImageError naming the field, never a
# TypeError deep in the code.
_DIGEST_S: dict[str, Any] = {"type": "string", "pattern": _DIGEST.pattern}
_STRINGS: dict[str, Any] = {"type": ["array", "null"], "items": {"type": "string"}}
_DESCRIPTOR: dict[str, Any] = {
    "type": "object", "required": ["digest"],
    "properties": {"digest": _DIGEST_S, "size": {"type": "integer", "minimum": 0},
                   "mediaType": {"type": "string"},
                   "annotations": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                   "platform": {"type": ["object", "null"]}},
}
INDEX_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["manifests"],
    "properties": {"manifests": {"type": "array", "maxItems": 1000, "items": _DESCRIPTOR}},
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["config"],
    "properties": {"config": _DESCRIPTOR,
                   "layers": {"type": "array", "maxItems": MAX_LAYERS,
                              "items": {**_DESCRIPTOR, "required": ["digest", "size"]}}},
}
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "created": {"type": ["string", "null"]}, "architecture": {"type": "string"}, "os": {"type": "string"},
        "rootfs": {"type": "object", "properties": {
            "diff_ids": {"type": "array", "maxItems": MAX_LAYERS, "items": _DIGEST_S}}},
        "config": {"type": ["object", "null"], "properties": {
            "Env": _STRINGS, "Cmd": _STRINGS, "Entrypoint": _STRINGS, "User": {"type": "string"},
            "WorkingDir": {"type": "string"}, "StopSignal": {"type": "string"},
            "Labels": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
            "ExposedPorts": {"type": ["object", "null"]}, "Volumes": {"type": ["object", "null"]}}},
    },
}
DOCKER_SAVE_SCHEMA: dict[str, Any] = {
    "type": "array", "maxItems": 1000,
    "items": {"type": "object", "required": ["Config"],
              "properties": {"Config": {"type": "string"}, "RepoTags": _STRINGS,
                             "Layers": {**_STRINGS, "maxItems": MAX_LAYERS}}},
}


def parse_json(raw: bytes, schema: dict[str, Any], what: str) -> Any:
    """Decode ``raw`` as JSON (:func:`shoal.base.boundedjson.loads`: at most :data:`MAX_CONFIG_BYTES`,
    64 levels) and check it against ``schema``; returns the document.

    Raises ImageError naming ``what``, the field and the problem for invalid JSON (including
    nesting too deep) or a document of the wrong shape."""
    try:
        doc = boundedjson.loads(raw, what, max_bytes=MAX_CONFIG_BYTES)
    except boundedjson.InvalidJSON as e:
        raise ImageError(str(e)) from None
    return check_shape(doc, schema, what)


def check_shape(doc: Any, schema: dict[str, Any], what: str) -> Any:
    """``doc`` if it matches the JSON schema ``schema``, else ImageError naming ``what``, the
    field (a JSON pointer-like path) and the problem."""
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "the top level"
        raise ImageError(f"{what} is malformed at {where}: {err.message[:300]}")
    return doc


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body of ``resp``, refusing one over ``limit`` bytes (by Content-Length or as read)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise ImageError(f"{what} is {resp.content_length} bytes, over the {limit}-byte limit")
    buf = bytearray()
    while chunk := await resp.content.read(min(1 << 16, limit + 1 - len(buf))):
        buf += chunk
        if len(buf) > limit:
            raise ImageError(f"{what} is over the {limit}-byte limit")
    return bytes(buf)


@dataclass
class Reference:
    """A parsed image reference: ``domain`` (registry host[:port]), ``path`` (repository), ``tag`` or ``digest``."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        if self.digest:
            return f"{self.domain}/{self.path}@{self.digest}"
        return f"{self.domain}/{self.path}:{self.tag}"


def parse_ref(ref: str) -> Reference:
    """Parse and normalise ``ref`` as Docker does (``busybox`` → ``docker.io/library/busybox:latest``).

    Raises ImageError for an invalid reference (empty, uppercase repository, bad tag/digest).
    """
    s = ref.strip()
    if not s:
        raise ImageError("invalid reference format: empty image name")
    digest = None
    if "@" in s:
        s, digest = s.split("@", 1)
        if not _DIGEST.match(digest):
            raise ImageError(f"invalid reference format: bad digest {digest!r} in {ref!r}")
    tag = None
    slash = s.rfind("/")
    colon = s.rfind(":")
    if colon > slash:
        s, tag = s[:colon], s[colon + 1:]
        if not _TAG.match(tag):
            raise ImageError(f"invalid reference format: bad tag {tag!r} in {ref!r}")
    first, sep, rest = s.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", s
    if domain in ("index.docker.io", "registry-1.docker.io"):
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    for comp in path.split("/"):
        if not _NAME_COMPONENT.match(comp):
            raise ImageError(f"invalid reference format: repository name {path!r} must be lowercase "
                             f"letters, digits and separators (in {ref!r})")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def normalize_ref(ref: str) -> str:
    """Return the normalised string form of ``ref`` (see ``parse_ref``)."""
    return str(parse_ref(ref))


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI image spec ChainIDs: ``chain[0] = diff[0]``, ``chain[n] = sha256(chain[n-1] + " " + diff[n])``."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


@dataclass
class Image:
    """A stored image: ``ref`` (normalised), ``id`` (config digest ``sha256:…``), ``config`` (the OCI
    image config's ``config`` object: Env, Entrypoint, Cmd, WorkingDir, User …), ``layers``
    (unpacked layer directories, lowest first), ``size`` (bytes of layer blobs).

    ``repo_tags``: every normalised ref (``docker.io/library/busybox:latest``) that points at this
    image ID, in the order they were tagged (loads and pulls of the same image under different
    names all show). ``familiar_repo_tags``: the same as Docker prints them in ``RepoTags``
    (``busybox:latest``, ``10.99.0.2:5000/busybox:latest``). ``repo_digests``: ``name@sha256:…``
    of the manifests (top-level, as fetched or as named by an archive's index) this image was
    pulled or loaded from, as Docker's ``RepoDigests`` (familiar names). ``created``: the config's
    RFC 3339 creation time, if any. ``diff_ids``: the config's layer digests (uncompressed, lowest
    first); ``architecture``, ``os_name``: the config's platform."""

    ref: str
    id: str
    config: dict[str, Any]
    layers: list[Path]
    size: int
    repo_tags: list[str] = field(default_factory=list)
    created: str | None = None
    repo_digests: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    architecture: str = "amd64"
    os_name: str = "linux"

    @property
    def familiar_repo_tags(self) -> list[str]:
        """``repo_tags`` in Docker's familiar form (``docker.io/library/`` dropped)."""
        return [familiar_ref(t) for t in self.repo_tags]


def familiar_ref(ref: str) -> str:
    """Docker's familiar form of a normalised ref (reference.FamiliarString): ``docker.io/library/x``
    → ``x``, ``docker.io/u/x`` → ``u/x``; other registries unchanged."""
    if ref.startswith("docker.io/"):
        ref = ref[len("docker.io/"):]
        if ref.startswith("library/") and "/" not in ref[len("library/"):].split("@")[0].split(":")[0]:
            ref = ref[len("library/"):]
    return ref


def _hexof(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[a-f0-9]{64}", hexd):
        raise ImageError(f"unsupported or malformed digest {digest!r} (only sha256 is supported)")
    return hexd


class _Registry:
    """One registry host: HTTP(S) base URL, bearer tokens, error decoding.

    ``insecure_host(host)`` says whether a host may be reached over plain HTTP (the store's
    insecure registries and loopback): the registry itself and its token realm follow the same
    rule, so a registry reached over HTTPS cannot send the client to an HTTP realm."""

    def __init__(self, session: aiohttp.ClientSession, domain: str,
                 insecure_host: Callable[[str], bool]) -> None:
        self.session = session
        self.domain = domain
        self.insecure_host = insecure_host
        host = "registry-1.docker.io" if domain == "docker.io" else domain
        self.base = f"{'http' if insecure_host(domain) else 'https'}://{host}"
        self.tokens: dict[str, str] = {}

    async def _token(self, header: str, repo: str) -> str | None:
        m = re.match(r"\s*Bearer\s+(.*)", header, re.I)
        if not m:
            return None
        params = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        realm = params.pop("realm", None)
        if not realm:
            return None
        url = urllib.parse.urlsplit(realm)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ImageError(f"registry {self.domain}: token realm {realm!r} is not an http(s) URL")
        if url.scheme == "http" and not self.insecure_host(url.netloc):
            raise ImageError(f"registry {self.domain}: token realm {realm} is plain HTTP; only registries "
                             "listed with --insecure-registry (or loopback) may use HTTP")
        params.setdefault("scope", f"repository:{repo}:pull")
        async with self.session.get(realm, params=params) as r:
            if r.status != 200:
                raise ImageError(f"registry {self.domain}: token request to {realm} failed: HTTP {r.status}")
            raw = await _read_bounded(r, MAX_TOKEN_BYTES, f"registry {self.domain}: token reply from {realm}")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ImageError(f"registry {self.domain}: token reply from {realm} is not JSON") from None
        tok = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        return str(tok) if isinstance(tok, str) and tok else None

    async def get(self, repo: str, path: str, accept: str | None = None) -> aiohttp.ClientResponse:
        """GET ``/v2/<repo>/<path>``; returns the open 200 response or raises ImageError with the registry's error."""
        url = f"{self.base}/v2/{repo}/{path}"
        for _attempt in range(2):
            headers = {}
            if accept:
                headers["Accept"] = accept
            if repo in self.tokens:
                headers["Authorization"] = f"Bearer {self.tokens[repo]}"
            try:
                r = await self.session.get(url, headers=headers)
            except aiohttp.ClientConnectorError as e:
                raise ImageError(f"cannot connect to registry {self.domain} ({self.base}): {e.os_error}") from e
            except (TimeoutError, aiohttp.ClientError) as e:
                raise ImageError(f"error talking to registry {self.domain} ({self.base}): {e!r}") from e
            if r.status == 200:
                return r
            try:
                if r.status == 401 and repo not in self.tokens:
                    tok = await self._token(r.headers.get("WWW-Authenticate", ""), repo)
                    if tok:
                        self.tokens[repo] = tok
                        continue
                raise ImageError(await self._error(r, repo, path))
            finally:
                r.release()
        raise ImageError(f"registry {self.domain}: unauthorized for {repo}")

    async def _error(self, r: aiohttp.ClientResponse, repo: str, path: str) -> str:
        text = (await r.content.read(MAX_ERROR_BYTES)).decode("utf-8", errors="replace")
        msgs: list[str] = []
        try:
            for e in json.loads(text).get("errors") or []:
                code = str(e.get("code", "")).lower().replace("_", " ")
                msg = str(e.get("message", ""))
                msgs.append(f"{code}: {msg}" if code and code != msg else msg)
        except (ValueError, AttributeError, RecursionError, TypeError):
            pass
        what = f"{self.domain}/{repo} {path.split('/')[0][:-1]} {path.split('/', 1)[1]}"
        detail = "; ".join(msgs) if msgs else (text.strip()[:200] or r.reason or "")
        return f"registry {self.domain} answered HTTP {r.status} for {what}: {detail}"


class ImageStore:
    """The node's images under ``root``. Registries in ``insecure_registries`` (``host:port``) and
    loopback hosts are reached over HTTP, all others over HTTPS.

    Safe for concurrent pulls: pulls of the same ref share one download, blobs and layers are
    fetched/unpacked once even across different images. ``max_layer_size``: bytes a layer may
    hold uncompressed (and a layer blob may be); a larger one is refused.
    """

    def __init__(self, root: Path, insecure_registries: list[str] | None = None,
                 max_layer_size: int = MAX_LAYER_SIZE) -> None:
        self.root = Path(root)
        self.insecure = set(insecure_registries or [])
        self.max_layer_size = max_layer_size
        # 0700 all the way down to the layers, fixed on existing stores too: an image's setuid
        # binaries and device nodes are reachable by root only (Docker keeps image/ and overlay2/ 0700/0710)
        for d in ("", "blobs", "blobs/sha256", "layers", "images", "tmp"):
            private_dir(self.root / d)
        self._pulls: dict[str, asyncio.Future[Image]] = {}
        self._blob_futs: dict[str, asyncio.Future[Path]] = {}
        self._layer_locks: dict[str, threading.Lock] = {}
        self._meta_lock = threading.Lock()
        self._dl_sems: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    # ---- metadata -------------------------------------------------------------------------------

    def _repos(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads((self.root / "repositories.json").read_text())
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def _write_json(self, path: Path, obj: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)

    def _image_from_meta(self, ref: str, image_id: str) -> Image | None:
        try:
            meta = json.loads((self.root / "images" / f"{_hexof(image_id)}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        tags = [r for r, i in self._repos().items() if i == image_id]
        return Image(ref=ref, id=image_id, config=meta.get("config") or {},
                     layers=[self.root / "layers" / _hexof(c) for c in meta["chain_ids"]],
                     size=int(meta.get("size", 0)), repo_tags=tags, created=meta.get("created"),
                     repo_digests=list(meta.get("repo_digests") or []),
                     diff_ids=list(meta.get("diff_ids") or []),
                     architecture=str(meta.get("architecture") or "amd64"), os_name=str(meta.get("os") or "linux"))

    def get(self, ref: str) -> Image | None:
        """The image stored under ``ref`` (normalised) or with ID ``sha256:…`` (or a 12+ hex prefix); None if absent."""
        repos = self._repos()
        try:
            norm = normalize_ref(ref)
        except ImageError:
            norm = ref
        if norm in repos:
            return self._image_from_meta(norm, repos[norm])
        want = ref.removeprefix("sha256:")
        if len(want) >= 12 and re.fullmatch(r"[a-f0-9]+", want):
            for p in (self.root / "images").glob(f"{want}*.json"):
                image_id = "sha256:" + p.stem
                tags = [r for r, i in repos.items() if i == image_id]
                return self._image_from_meta(tags[0] if tags else image_id, image_id)
        return None

    def list(self) -> list[Image]:
        """All stored images (one entry per image ID, ``ref`` = its first tag)."""
        out: list[Image] = []
        by_id: dict[str, list[str]] = {}
        for r, i in sorted(self._repos().items()):
            by_id.setdefault(i, []).append(r)
        for p in sorted((self.root / "images").glob("*.json")):
            image_id = "sha256:" + p.stem
            refs = by_id.get(image_id, [])
            img = self._image_from_meta(refs[0] if refs else image_id, image_id)
            if img:
                out.append(img)
        return out

    def remove(self, ref: str) -> None:
        """Untag ``ref``; when no tag is left, forget the image's metadata (layers stay for running containers).

        Raises ImageError if there is no such image.
        """
        img = self.get(ref)
        if img is None:
            raise ImageError(f"No such image: {ref}")
        with self._meta_lock:
            repos = self._repos()
            for r in [r for r, i in repos.items() if r == img.ref or (i == img.id and ref.startswith("sha256:"))]:
                del repos[r]
            self._write_json(self.root / "repositories.json", repos)
            if img.id not in repos.values():
                try:
                    (self.root / "images" / f"{_hexof(img.id)}.json").unlink()
                except FileNotFoundError:
                    pass

    def _register(self, refs: builtins.list[str], config_raw: bytes, layer_blobs: builtins.list[str],
                  size: int, manifest_digest: str | None = None) -> Image:
        """Record an image whose blobs are stored: unpack its layers and tag it with ``refs``
        (adding ``<familiar name>@<manifest_digest>`` to its repo digests when given)."""
        config_id = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        if len(config_raw) > MAX_CONFIG_BYTES:
            raise ImageError(f"image config {config_id} is {len(config_raw)} bytes, over the "
                             f"{MAX_CONFIG_BYTES}-byte limit")
        cfg = parse_json(config_raw, CONFIG_SCHEMA, f"image config {config_id}")
        diff_ids = list((cfg.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layer_blobs):
            raise ImageError(f"image config {config_id} lists {len(diff_ids)} diff_ids but the manifest has "
                             f"{len(layer_blobs)} layers")
        chains = chain_ids(diff_ids)
        for chain, diff_id, blob in zip(chains, diff_ids, layer_blobs, strict=True):
            self._ensure_layer(chain, diff_id, self.root / "blobs/sha256" / _hexof(blob))
        meta = {"id": config_id, "config": cfg.get("config") or {}, "chain_ids": chains, "diff_ids": diff_ids,
                "size": size, "created": cfg.get("created"), "architecture": cfg.get("architecture"),
                "os": cfg.get("os")}
        with self._meta_lock:
            try:
                old = json.loads((self.root / "images" / f"{_hexof(config_id)}.json").read_text())
                digests = list(old.get("repo_digests") or [])
            except (FileNotFoundError, ValueError):
                digests = []
            if manifest_digest:
                for r in refs:
                    ref = parse_ref(r)
                    rd = f"{familiar_ref(f'{ref.domain}/{ref.path}')}@{manifest_digest}"
                    if rd not in digests:
                        digests.append(rd)
            meta["repo_digests"] = digests
            self._write_json(self.root / "images" / f"{_hexof(config_id)}.json", meta)
            repos = self._repos()
            for r in refs:
                repos[r] = config_id
            self._write_json(self.root / "repositories.json", repos)
        img = self._image_from_meta(refs[0] if refs else config_id, config_id)
        assert img is not None
        return img

    def _ensure_layer(self, chain: str, diff_id: str, blob: Path) -> Path:
        """``layers/<chain>``: the layer unpacked from ``blob``, whose uncompressed content must
        hash to ``diff_id`` (so no image can plant files under another image's chain ID).
        Raises ImageError (nothing is kept under ``layers/`` then)."""
        dest = self.root / "layers" / _hexof(chain)
        with self._meta_lock:
            lock = self._layer_locks.setdefault(chain, threading.Lock())
        with lock:
            if dest.is_dir():
                return dest
            tmp = Path(tempfile.mkdtemp(prefix=f"layer-{_hexof(chain)[:12]}-", dir=self.root / "tmp"))
            try:
                unpack_layer(blob, tmp, diff_id=diff_id, max_size=self.max_layer_size,
                             label=f"sha256:{blob.name[:12]}")
                os.chmod(tmp, 0o755)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return dest

    def _store_blob_stream(self, src: IO[bytes], digest: str) -> Path:
        hexd = _hexof(digest)
        dest = self.root / "blobs/sha256" / hexd
        if dest.exists():
            return dest
        h = hashlib.sha256()
        fd, tmpname = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != hexd:
                raise ImageError(f"digest mismatch for blob {digest}: content hashes to sha256:{h.hexdigest()}")
            os.replace(tmpname, dest)
        finally:
            if os.path.exists(tmpname):
                os.unlink(tmpname)
        return dest

    # ---- load -----------------------------------------------------------------------------------

    def load(self, archive: Path, label: str | None = None) -> builtins.list[str]:
        """Load an OCI image-layout archive or a ``docker save`` tar; returns the refs it tagged.

        Refs come from ``RepoTags`` (docker save) or the ``io.containerd.image.name`` /
        ``org.opencontainers.image.ref.name`` annotations (OCI); an unnamed image is returned by ID.
        Only regular files of the archive are read, each within its limit (JSON documents
        :data:`MAX_MANIFEST_BYTES`, configs :data:`MAX_CONFIG_BYTES`, layers the store's
        ``max_layer_size``), and every JSON document is checked against its schema first.
        ``label`` names the archive in messages (default: its file name).
        Raises ImageError for an unreadable, malformed or inconsistent archive.
        """
        what = label or f"image archive {Path(archive).name}"
        try:
            tf = tarfile.open(archive, "r:*", tarinfo=BoundedTarInfo)
        except (OSError, tarfile.TarError, ImageError) as e:
            raise ImageError(f"cannot read {label or f'image archive {archive}'}: {e}") from e
        try:
            with tf:
                return self._load(tf, what, Path(archive).name.split(".")[0].lower() or "image")
        except (OSError, tarfile.TarError, EOFError) as e:
            raise ImageError(f"{what}: cannot read it: {e}") from e

    def _load(self, tf: tarfile.TarFile, what: str, stem: str) -> builtins.list[str]:
        members: dict[str, tarfile.TarInfo] = {}
        while (m := tf.next()) is not None:
            if len(tf.members) > MAX_ARCHIVE_ENTRIES:  # type: ignore[attr-defined]
                raise ImageError(f"{what}: more than {MAX_ARCHIVE_ENTRIES} entries")
            if m.isreg():
                members["/".join(p for p in m.name.split("/") if p not in ("", "."))] = m

        def member(name: str, limit: int) -> tarfile.TarInfo:
            m = members.get("/".join(p for p in name.split("/") if p not in ("", ".")))
            if m is None:
                raise ImageError(f"{what}: missing entry {name!r} (or it is not a regular file)")
            if m.size > limit:
                raise ImageError(f"{what}: entry {name!r} is {m.size} bytes, over the {limit}-byte limit")
            return m

        def read(name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
            f = tf.extractfile(member(name, limit))
            assert f is not None  # a regular file
            return f.read(limit + 1)

        def store(name: str, digest: str | None) -> str:
            m = member(name, self.max_layer_size)
            if digest is None:
                h = hashlib.sha256()
                f = tf.extractfile(m)
                assert f is not None
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                digest = "sha256:" + h.hexdigest()
            f = tf.extractfile(m)
            assert f is not None
            self._store_blob_stream(f, digest)
            return digest

        loaded: builtins.list[str] = []
        if "manifest.json" in members:
            entries = parse_json(read("manifest.json"), DOCKER_SAVE_SCHEMA, f"{what}: manifest.json")
            for ent in entries:
                config_raw = read(ent["Config"], MAX_CONFIG_BYTES)
                layers = ent.get("Layers") or []
                blobs = [store(layer, None) for layer in layers]
                size = sum(member(layer, self.max_layer_size).size for layer in layers)
                refs = [normalize_ref(t) for t in ent.get("RepoTags") or []]
                img = self._register(refs, config_raw, blobs, size)
                loaded.extend(refs or [img.id])
            return loaded
        if "index.json" in members:
            index = parse_json(read("index.json"), INDEX_SCHEMA, f"{what}: index.json")
            for desc in index["manifests"]:
                ann = desc.get("annotations") or {}
                name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
                refs = []
                if name:
                    refs = [normalize_ref(name if ("/" in name or ":" in name or "@" in name) else f"{stem}:{name}")]
                manifest = self._manifest(lambda d: read(f"blobs/sha256/{_hexof(d)}"), desc["digest"], what)
                cdig = manifest["config"]["digest"]
                config_raw = read(f"blobs/sha256/{_hexof(cdig)}", MAX_CONFIG_BYTES)
                if "sha256:" + hashlib.sha256(config_raw).hexdigest() != cdig:
                    raise ImageError(f"{what}: config digest mismatch for {cdig}")
                blobs = [store(f"blobs/sha256/{_hexof(lay['digest'])}", lay["digest"])
                         for lay in manifest.get("layers") or []]
                size = sum(int(lay["size"]) for lay in manifest.get("layers") or [])
                img = self._register(refs, config_raw, blobs, size, manifest_digest=desc["digest"])
                loaded.extend(refs or [img.id])
            return loaded
        raise ImageError(f"{what} is neither an OCI image archive (index.json) nor a docker save tar "
                         "(manifest.json)")

    @staticmethod
    def _manifest(read: Callable[[str], bytes], digest: str, what: str) -> dict[str, Any]:
        """The image manifest named by ``digest``, through nested indexes (choosing
        linux/amd64), read with ``read(digest) -> bytes`` from an archive; checked against
        :data:`MANIFEST_SCHEMA`. Raises ImageError."""
        for _depth in range(4):
            raw = read(digest)
            if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
                raise ImageError(f"{what}: blob {digest} does not match its digest")
            doc = parse_json(raw, {"type": "object"}, f"{what}: manifest {digest}")
            if doc.get("mediaType") in _INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
                index = parse_json(raw, INDEX_SCHEMA, f"{what}: index {digest}")
                digest = _pick_platform(index["manifests"], what)["digest"]
                continue
            manifest: dict[str, Any] = parse_json(raw, MANIFEST_SCHEMA, f"{what}: manifest {digest}")
            return manifest
        raise ImageError(f"{what}: image indexes nested more than 4 deep")

    # ---- pull -----------------------------------------------------------------------------------

    def _is_insecure(self, domain: str) -> bool:
        host = domain.rsplit(":", 1)[0] if not domain.startswith("[") else domain
        return domain in self.insecure or host in self.insecure or host == "localhost" or host.startswith("127.")

    async def pull(self, ref: str) -> Image:
        """Pull ``ref`` from its registry (linux/amd64 from an index) and return the stored Image.

        Concurrent pulls of the same ref share one download. Raises ImageError with the registry's
        message (e.g. ``manifest unknown``) or naming the registry when it cannot be reached.
        """
        r = parse_ref(ref)
        key = str(r)
        fut = self._pulls.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._pull(r))
            self._pulls[key] = fut
            fut.add_done_callback(lambda _f: self._pulls.pop(key, None))
        return await asyncio.shield(fut)

    async def _pull(self, r: Reference) -> Image:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            reg = _Registry(session, r.domain, self._is_insecure)
            manifest, top_digest = await self._fetch_manifest(reg, r.path, r.digest or r.tag or "latest")
            for _depth in range(4):
                if not _is_index(manifest):
                    break
                index = check_shape(manifest, INDEX_SCHEMA, f"{r}: image index")
                chosen = _pick_platform(index["manifests"], str(r))
                manifest, _mdig = await self._fetch_manifest(reg, r.path, chosen["digest"])
            else:
                raise ImageError(f"{r}: image indexes nested more than 4 deep")
            if manifest.get("schemaVersion") == 1 or "config" not in manifest:
                raise ImageError(f"{r}: unsupported manifest (schema 1 or no config); push it as schema 2 / OCI")
            manifest = check_shape(manifest, MANIFEST_SCHEMA, f"{r}: manifest")
            config = manifest["config"]
            layers = manifest.get("layers") or []
            config_path, *_ = await asyncio.gather(
                self._fetch_blob(reg, r.path, config["digest"], config.get("size"), MAX_CONFIG_BYTES),
                *(self._fetch_blob(reg, r.path, lay["digest"], lay["size"], self.max_layer_size) for lay in layers),
            )
            config_raw = config_path.read_bytes()
            size = sum(int(lay["size"]) for lay in layers)
            blobs = [lay["digest"] for lay in layers]
            return await asyncio.to_thread(self._register, [str(r)], config_raw, blobs, size, top_digest)

    async def resolve(self, ref: str) -> dict[str, Any]:
        """Resolve ``ref`` at its registry without pulling it, as ``GET /distribution/{name}/json``
        answers (Docker Engine API ``DistributionInspect``): ``{"Descriptor": {"mediaType",
        "digest", "size"}, "Platforms": [{"architecture", "os", ...}]}``. The docker CLI uses it to
        pin a service's image to a digest. Raises ImageError as :meth:`pull` does.
        """
        r = parse_ref(ref)
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=10, sock_read=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            reg = _Registry(session, r.domain, self._is_insecure)
            reference = r.digest or r.tag or "latest"
            m, digest, raw_size, media_type = await self._fetch_manifest_raw(reg, r.path, reference)
            media_type = m.get("mediaType") or media_type
            platforms: list[dict[str, Any]] = []
            if _is_index(m):
                index = check_shape(m, INDEX_SCHEMA, f"{r}: image index")
                platforms = [dict(d["platform"]) for d in index["manifests"] if isinstance(d.get("platform"), dict)]
            else:
                manifest = check_shape(m, MANIFEST_SCHEMA, f"{r}: manifest")
                cfg_path = await self._fetch_blob(reg, r.path, manifest["config"]["digest"],
                                                  manifest["config"].get("size"), MAX_CONFIG_BYTES)
                cfg = parse_json(cfg_path.read_bytes(), CONFIG_SCHEMA, f"{r}: image config")
                platforms = [{k: cfg[k] for k in ("architecture", "os", "variant") if cfg.get(k)}]
        return {"Descriptor": {"mediaType": media_type, "size": raw_size, "digest": digest},
                "Platforms": platforms}

    async def _fetch_manifest_raw(self, reg: _Registry, repo: str,
                                  reference: str) -> tuple[dict[str, Any], str, int, str]:
        """GET a manifest or index (at most :data:`MAX_MANIFEST_BYTES`): ``(document, digest,
        size, content type)``; a reference by digest must match it. Raises ImageError."""
        resp = await reg.get(repo, f"manifests/{reference}", ACCEPT)
        try:
            raw = await _read_bounded(resp, MAX_MANIFEST_BYTES, f"registry {reg.domain}: manifest {reference} of {repo}")
            content_type = resp.content_type
        finally:
            resp.release()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"registry {reg.domain}: manifest {reference} of {repo} hashes to {digest}")
        m = parse_json(raw, {"type": "object"}, f"registry {reg.domain}: manifest {reference} of {repo}")
        return m, digest, len(raw), content_type

    async def _fetch_manifest(self, reg: _Registry, repo: str, reference: str) -> tuple[dict[str, Any], str]:
        m, digest, _size, content_type = await self._fetch_manifest_raw(reg, repo, reference)
        if "mediaType" not in m and content_type:
            m["mediaType"] = content_type
        return m, digest

    async def _fetch_blob(self, reg: _Registry, repo: str, digest: str, size: int | None, limit: int) -> Path:
        """The blob ``digest`` in the store, downloaded if missing: exactly ``size`` bytes when
        the descriptor gives one, at most ``limit``. Raises ImageError."""
        hexd = _hexof(digest)
        if size is not None and size > limit:
            raise ImageError(f"registry {reg.domain}: blob {digest} of {repo} is {size} bytes, over the "
                             f"{limit}-byte limit")
        dest = self.root / "blobs/sha256" / hexd
        if dest.exists():
            return dest
        fut = self._blob_futs.get(digest)
        if fut is None:
            fut = asyncio.ensure_future(self._download_blob(reg, repo, digest, dest, size, limit))
            self._blob_futs[digest] = fut
            fut.add_done_callback(lambda _f: self._blob_futs.pop(digest, None))
        return await asyncio.shield(fut)

    async def _download_blob(self, reg: _Registry, repo: str, digest: str, dest: Path,
                             size: int | None, limit: int) -> Path:
        loop = asyncio.get_running_loop()
        sem = self._dl_sems.get(loop)
        if sem is None:
            for old in [lp for lp in self._dl_sems if lp.is_closed()]:
                del self._dl_sems[old]
            sem = self._dl_sems[loop] = asyncio.Semaphore(4)  # at most 4 blob downloads at once
        want = limit if size is None else size
        async with sem:
            resp = await reg.get(repo, f"blobs/{digest}")
            h = hashlib.sha256()
            got = 0
            fd, tmpname = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
            try:
                with os.fdopen(fd, "wb") as out:
                    try:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            got += len(chunk)
                            if got > want:
                                raise ImageError(f"registry {reg.domain}: blob {digest} of {repo} is longer than "
                                                 f"{'its descriptor says' if size is not None else 'the limit'} "
                                                 f"({want} bytes)")
                            h.update(chunk)
                            out.write(chunk)
                    except aiohttp.ClientError as e:
                        raise ImageError(f"registry {reg.domain}: download of {digest} failed: {e!r}") from e
                    finally:
                        resp.release()
                if size is not None and got != size:
                    raise ImageError(f"registry {reg.domain}: blob {digest} of {repo} is {got} bytes, its "
                                     f"descriptor says {size}")
                if "sha256:" + h.hexdigest() != digest:
                    raise ImageError(f"registry {reg.domain}: blob {digest} of {repo} failed verification "
                                     f"(content hashes to sha256:{h.hexdigest()})")
                os.replace(tmpname, dest)
            finally:
                if os.path.exists(tmpname):
                    os.unlink(tmpname)
        return dest


def _is_index(doc: dict[str, Any]) -> bool:
    """Whether a manifest document is an image index / manifest list rather than a manifest."""
    return doc.get("mediaType") in _INDEX_TYPES or ("manifests" in doc and "layers" not in doc)


def _pick_platform(manifests: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """Choose the linux/amd64 entry of an index (a descriptor without a platform is taken if alone)."""
    for m in manifests:
        p = m.get("platform") or {}
        if p.get("os") == "linux" and p.get("architecture") == "amd64":
            return m
    no_platform = [m for m in manifests if not m.get("platform")]
    if len(no_platform) == 1:
        return no_platform[0]
    plats = ", ".join(f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
                      for m in manifests)
    raise ImageError(f"{what}: no linux/amd64 image in the manifest list (has: {plats or 'nothing'})")
