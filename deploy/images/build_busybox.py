"""Build the lab's test image: a tiny OCI image made from Debian's busybox-static.

The image has one layer: ``/bin/busybox`` with a symlink per applet in ``/bin``, ``/etc/passwd``,
``/etc/group``, empty ``/etc/hosts`` ``/etc/resolv.conf`` ``/etc/hostname`` (mount targets),
``/tmp`` (1777), ``/www/index.html`` and ``/www/cgi-bin/whoami`` (a ``#!/bin/sh`` CGI script
that prints the container's hostname), so ``httpd -f -p 80 -h /www`` serves it.

The output follows the OCI image layout spec (image-spec v1.0 ``image-layout.md``): a
directory with ``oci-layout``, ``index.json`` and ``blobs/sha256/…``, and the same directory
as a tar ("OCI archive", what ``skopeo copy oci-archive:`` and ``docker load`` read). The
layer tar is deterministic: entries sorted, mtime 0, uid/gid 0, gzip with mtime 0, so two
builds from the same busybox binary give the same digests.

Usage: ``python -m deploy.images.build_busybox [--busybox /bin/busybox] [--out DIR]``;
prints the layout path, the archive path and the manifest digest.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "out" / "images"
DEFAULT_BUSYBOX = Path("/bin/busybox")
IMAGE_NAME = "busybox"

#: Applets the lab and tests rely on; the build fails if busybox lacks one of them.
REQUIRED_APPLETS = (
    "sh ls cat echo sleep httpd wget hostname ps ip nslookup env id true false kill".split()
)

MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"

INDEX_HTML = b"<html><body><h1>Shoal busybox test image</h1><p>Try /cgi-bin/whoami</p></body></html>\n"
WHOAMI_CGI = b'#!/bin/sh\necho "Content-Type: text/plain"\necho\nhostname\n'
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(Exception):
    """The image could not be built (busybox missing or lacking a required applet)."""


def list_applets(busybox: Path) -> list[str]:
    """Return the sorted applet names that ``busybox --list`` prints.

    Raises BuildError if the binary is missing or lacks one of REQUIRED_APPLETS.
    """
    if not busybox.is_file():
        raise BuildError(f"{busybox} not found: install Debian's busybox-static (apt-get install busybox-static)")
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
    applets = sorted({a.strip() for a in out.split() if a.strip() and "/" not in a and a != "busybox"})
    missing = [a for a in REQUIRED_APPLETS if a not in applets]
    if missing:
        raise BuildError(f"{busybox} lacks applets {missing}; use Debian's busybox-static")
    return applets


def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layer_tar(busybox: Path, applets: list[str]) -> bytes:
    """Return the uncompressed, deterministic layer tar (entries sorted by path)."""
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def add_dir(path: str, mode: int = 0o755) -> None:
        entries[path] = (_info(path, tarfile.DIRTYPE, mode), None)

    def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
        entries[path] = (_info(path, tarfile.REGTYPE, mode, len(data)), data)

    for d in ("bin", "dev", "etc", "proc", "root", "sys", "usr", "usr/bin", "usr/sbin", "sbin", "var",
              "www", "www/cgi-bin"):
        add_dir(d, 0o700 if d == "root" else 0o755)
    add_dir("tmp", 0o1777)
    add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        entries[f"bin/{applet}"] = (_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), None)
    add_file("etc/passwd", PASSWD)
    add_file("etc/group", GROUP)
    for empty in ("etc/hosts", "etc/resolv.conf", "etc/hostname"):
        add_file(empty, b"")
    add_file("www/index.html", INDEX_HTML)
    add_file("www/cgi-bin/whoami", WHOAMI_CGI, 0o755)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            info, data = entries[path]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def _put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(out_dir: Path = DEFAULT_OUT, busybox: Path = DEFAULT_BUSYBOX, tag: str = "latest") -> tuple[Path, Path, str]:
    """Build the image into ``out_dir/busybox-oci`` (layout) and ``out_dir/busybox-oci.tar`` (archive).

    Returns ``(layout_dir, archive_path, manifest_digest)``. An existing layout is replaced.
    Raises BuildError (see list_applets) and OSError on I/O failures.
    """
    applets = list_applets(busybox)
    raw = layer_tar(busybox, applets)
    gz = _gzip(raw)
    layout = out_dir / f"{IMAGE_NAME}-oci"
    tmp = out_dir / f".{IMAGE_NAME}-oci.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "oci-layout").write_bytes(_canon({"imageLayoutVersion": "1.0.0"}))
    layer_digest = _put_blob(tmp, gz)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "deploy/images/build_busybox.py (Debian busybox-static)"}],
    }
    config_bytes = _canon(config)
    config_digest = _put_blob(tmp, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": len(gz)}],
    }
    manifest_bytes = _canon(manifest)
    manifest_digest = _put_blob(tmp, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag,
                            "io.containerd.image.name": f"docker.io/library/{IMAGE_NAME}:{tag}"},
        }],
    }
    (tmp / "index.json").write_bytes(_canon(index))
    shutil.rmtree(layout, ignore_errors=True)
    os.replace(tmp, layout)

    archive = out_dir / f"{IMAGE_NAME}-oci.tar"
    tmp_archive = archive.with_suffix(".tar.tmp")
    with tarfile.open(tmp_archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in layout.rglob("*")):
            rel = path.relative_to(layout).as_posix()
            if path.is_dir():
                tar.addfile(_info(rel, tarfile.DIRTYPE, 0o755))
            else:
                data = path.read_bytes()
                tar.addfile(_info(rel, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    os.replace(tmp_archive, archive)
    return layout, archive, manifest_digest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build the image and print where it went. Exit 1 on BuildError."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--busybox", type=Path, default=DEFAULT_BUSYBOX, help="busybox binary (default /bin/busybox)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--tag", default="latest")
    args = p.parse_args(argv)
    try:
        layout, archive, digest = build(args.out, args.busybox, args.tag)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"layout:  {layout}\narchive: {archive}\ndigest:  {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
