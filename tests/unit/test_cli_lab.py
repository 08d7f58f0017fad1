"""Unit tests (no root) for the lab's pure parts: the busybox image build (deterministic, valid
OCI layout with what the demo needs) and the shoald command line the lab runs per host."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from deploy.images import build_busybox
from deploy.lab import lab

pytestmark = pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs Debian's busybox-static")


def _blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest  # content addressed
    return data


def test_image_is_deterministic_and_complete(tmp_path: Path) -> None:
    layout1, archive1, digest1 = build_busybox.build(tmp_path / "a")
    layout2, archive2, digest2 = build_busybox.build(tmp_path / "b")
    assert digest1 == digest2
    assert archive1.read_bytes() == archive2.read_bytes()

    assert json.loads((layout1 / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout1 / "index.json").read_text())
    desc = index["manifests"][0]
    assert desc["digest"] == digest1 and desc["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest = json.loads(_blob(layout1, digest1))
    config = json.loads(_blob(layout1, manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == ["sh"] and "Entrypoint" not in config["config"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])
    layer_gz = _blob(layout1, manifest["layers"][0]["digest"])
    raw = gzip.decompress(layer_gz)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == sorted(members)
        assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
        for applet in build_busybox.REQUIRED_APPLETS:
            assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
        cgi = members["www/cgi-bin/whoami"]
        assert cgi.mode & 0o111
        f = tar.extractfile(cgi)
        assert f is not None
        script = f.read().decode()
        assert script.startswith("#!/bin/sh\n") and "Content-Type: text/plain" in script and "hostname" in script
        assert "www/index.html" in members and members["tmp"].mode == 0o1777

    with tarfile.open(archive1) as tar:
        names = tar.getnames()
    assert "index.json" in names and "oci-layout" in names and f"blobs/sha256/{digest1[7:]}" in names


def test_build_refuses_a_missing_busybox(tmp_path: Path) -> None:
    with pytest.raises(build_busybox.BuildError, match="busybox-static"):
        build_busybox.build(tmp_path, busybox=tmp_path / "nope")


def test_shoald_argv_per_host() -> None:
    argv = lab.shoald_argv(2, "runc", 1.0)
    assert argv[:5] == ["nsenter", "--net=/run/netns/shoal-h2", "unshare", "--uts", "--"]
    inner = argv[-1]
    assert inner.startswith("hostname h2 && exec ")
    for flag in ("--data-root /var/lib/shoal-lab/h2", "--exec-root /run/shoal-lab/h2",
                 "--socket /run/shoal-lab/h2.sock", "--cgroup-parent shoal-lab/h2",
                 "--insecure-registry 10.99.0.2:5000", "--runtime runc", "--heartbeat-period 1.0"):
        assert flag in inner
    assert lab.host_ip(3) == "10.99.0.13"
