"""Paths inside a container's rootfs are resolved as the container sees them and never leave it
(agent_runtime.oci.inroot; no root needed): symlinks out of the root land inside it, creation never
goes through a link, strict paths refuse any link, and the image's /etc/passwd is read only when it
is a regular file of the rootfs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.bundle import BundleError, resolve_user
from agent_runtime.oci.inroot import SymlinkRefused, open_in_root, read_in_root


def snapshot(d: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Every entry under ``d`` with its mode, size and content (file bytes, link text)."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for p in sorted(d.rglob("*")) + [d]:
        st = p.lstat()
        body: bytes | str | None = None
        if p.is_symlink():
            body = os.readlink(p)
        elif p.is_file():
            body = p.read_bytes()
        out[str(p.relative_to(d))] = (st.st_mode, st.st_size, body)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(rootfs, an outside directory with a file, an O_PATH descriptor of rootfs)."""
    root, outside = tmp_path / "rootfs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("host file\n")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield root, outside, fd
    finally:
        os.close(fd)


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_absolute_and_relative_links_out_resolve_inside(world: tuple[Path, Path, int]) -> None:
    root, outside, rfd = world
    before = snapshot(outside)
    (root / "dev").symlink_to(outside)  # absolute, to the host's directory
    got = _where(open_in_root(rfd, "/dev/null", create="file"))
    assert got == f"{root}{outside}/null"  # the host path, taken inside the rootfs
    (root / "up").symlink_to("../../../../../../..")
    assert _where(open_in_root(rfd, "/up/up/etc", create="dir")) == f"{root}/etc"
    assert _where(open_in_root(rfd, "/../../..", create="dir")) == str(root)
    assert snapshot(outside) == before


def test_dangling_final_link_is_created_inside(world: tuple[Path, Path, int]) -> None:
    root, outside, rfd = world
    before = snapshot(outside)
    (root / "etc").mkdir()
    (root / "etc/hosts").symlink_to(outside / "hosts")
    assert _where(open_in_root(rfd, "etc/hosts", create="file")) == f"{root}{outside}/hosts"
    assert (root / f"{outside}/hosts".lstrip("/")).is_file()
    assert snapshot(outside) == before


def test_strict_walk_refuses_any_link_and_creates_nothing(world: tuple[Path, Path, int]) -> None:
    root, outside, rfd = world
    (root / "dev").symlink_to(outside)
    (root / "sys").mkdir()
    (root / "sys/fs").symlink_to("/sys")  # a link that stays inside the rootfs is refused too
    before = snapshot(outside), snapshot(root)
    with pytest.raises(SymlinkRefused) as e:
        open_in_root(rfd, "/dev/pts", create="dir", no_symlinks=True)
    assert (e.value.link, e.value.target) == ("/dev", str(outside))
    with pytest.raises(SymlinkRefused, match="/sys/fs is a symlink"):
        open_in_root(rfd, "/sys/fs/cgroup", create="dir", no_symlinks=True)
    assert (snapshot(outside), snapshot(root)) == before


def test_errors(world: tuple[Path, Path, int]) -> None:
    root, _, rfd = world
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(OSError, match="too many levels"):
        open_in_root(rfd, "/a/x", create="dir")
    (root / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        open_in_root(rfd, "/f/x", create="dir")
    with pytest.raises(NotADirectoryError):
        open_in_root(rfd, "/f", create="dir")
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        open_in_root(rfd, "/d", create="file")
    with pytest.raises(FileNotFoundError, match="/nope does not exist"):
        open_in_root(rfd, "/nope/x")
    assert not (root / "nope").exists()


def test_read_in_root(world: tuple[Path, Path, int]) -> None:
    root, outside, _ = world
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to(outside / "keep")
    assert read_in_root(str(root), "/etc/passwd", 100) is None  # the host file is never read
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("/dev/zero")
    assert read_in_root(str(root), "/etc/passwd", 100) is None
    (root / "etc/passwd").unlink()
    os.mkfifo(root / "etc/passwd")
    assert read_in_root(str(root), "/etc/passwd", 100) is None  # not opened, so no hang
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").write_text("x" * 101)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        read_in_root(str(root), "/etc/passwd", 100)
    (root / "etc/real").write_text("ok")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("/etc/../etc/real")
    assert read_in_root(str(root), "/etc/passwd", 100) == b"ok"


def test_image_passwd_linked_to_a_host_file_is_not_read(world: tuple[Path, Path, int]) -> None:
    root, outside, _ = world
    (outside / "passwd").write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to(outside / "passwd")
    with pytest.raises(BundleError, match="unable to find user hostonly"):
        resolve_user("hostonly", root)
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").write_text("bad:x:notanumber:0::/:/bin/sh\nweb:x:33:33::/:/bin/sh\n")
    assert resolve_user("web", root) == (33, 33, [])
    with pytest.raises(BundleError, match="unable to find user bad"):
        resolve_user("bad", root)
