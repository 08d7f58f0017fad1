"""Unpacking one image layer (an OCI layer changeset tar) into a directory of its own, safely.

A layer comes from whoever built the image: every entry is hostile until proven otherwise. The
layer directory later serves as an overlayfs lowerdir, so OCI whiteouts become overlayfs ones
(kernel Documentation/filesystems/overlayfs.rst: a whiteout is a 0/0 character device; an opaque
directory carries the xattr ``trusted.overlay.opaque=y``).

Sources followed: the OCI image spec (layer changesets, ``.wh.`` whiteouts, ``.wh..wh..opq``
opaque markers, "whiteout files MUST only apply to resources in lower/parent layers", DiffIDs
are the digest of the *uncompressed* tar), and moby's pkg/archive (what a layer may contain:
devices, setuid files, absolute symlinks, 1777 directories are all legitimate and kept).

The rules, each enforced on the path of the entry itself, its hard-link target and every
whiteout (a secure join in the spirit of ``openat2(RESOLVE_IN_ROOT)``):

- a path is resolved component by component with ``lstat`` under the layer root; a symlink met
  on the way is followed only while it stays inside: an absolute target, or ``..`` climbing
  above the root, is ``ImageError("layer …: entry … resolves outside the layer")``;
- the last component is never followed: an existing entry there is replaced (unlinked, or
  removed as a real directory), files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW``, owners
  and modes are set on the open file descriptor (``fchown`` then ``fchmod``, so set-ID bits
  survive), symlinks get ``lchown``; a directory entry over a symlink that leads out is
  refused (tar would chmod and chown through it); owners are set only when run as root;
- a hard link's target must already exist inside the layer and is linked without following a
  symlink (``linkat`` without ``AT_SYMLINK_FOLLOW``); its mode is not touched;
- a whiteout ``.wh.<name>`` needs a real name (not empty, ``.`` or ``..``) and never removes
  anything: an entry of the same layer wins over it (the spec's rule);
- the uncompressed stream is hashed while it is read: the result must equal the config's
  ``diff_id``, else ``ImageError("diff_id mismatch: config sha256:A, content sha256:B")``;
- every read is bounded: uncompressed bytes and bytes written (``max_size``), entries
  (:data:`MAX_ENTRIES`), and tar metadata records (PAX and GNU long-name headers,
  :data:`MAX_HEADER_BYTES`).

Why not ``tarfile``'s extraction filters (PEP 706): the ``data`` filter refuses device nodes and
absolute symlinks and drops owners, the ``tar`` filter clears set-ID bits and group/other write
bits (``/tmp`` 1777, ``su``): real images need all of those, and neither filter checks a hard
link's target against symlinked parents. Their path rule is the one applied here, per component.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

MAX_LAYER_SIZE = 8 << 30
"""Default cap on a layer's uncompressed size, and on the bytes it may write (8 GiB)."""

MAX_ENTRIES = 2_000_000
"""Entries one layer may hold (a full distribution image holds about 100,000)."""

MAX_HEADER_BYTES = 1 << 20
"""Largest PAX or GNU long-name metadata record accepted in a layer tar (1 MiB)."""

MAX_SYMLINK_HOPS = 40
"""Symlinks followed while resolving one path, as Linux's MAXSYMLINKS (then ELOOP)."""

_CHUNK = 1 << 20
_OPAQUE = ".wh..wh..opq"
_WHITEOUT = ".wh."


class ImageError(Exception):
    """An image could not be pulled, loaded, unpacked or found; the message says why (including
    the registry's error). Raised here and by :mod:`agent_runtime.images`, which re-exports it."""


class _Outside(ImageError):
    """An entry resolves outside the layer (a subclass, so a caller can tell it apart)."""


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized metadata records before ``tarfile`` reads them whole
    into memory (it reads a PAX header or GNU long name in one piece, whatever its size)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> BoundedTarInfo:
        buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
        obj = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)
        obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
        if obj.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                        tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and obj.size > MAX_HEADER_BYTES:
            raise ImageError(f"a tar metadata record of {obj.size} bytes is over the {MAX_HEADER_BYTES}-byte limit")
        return obj._proc_member(tarfile_)  # type: ignore[attr-defined,no-any-return]


class _HashingReader:
    """A read-only stream over ``src`` that hashes (sha256) and counts what passes through;
    raises ImageError once more than ``limit`` bytes were read."""

    def __init__(self, src: IO[bytes], limit: int, label: str) -> None:
        self.src = src
        self.limit = limit
        self.label = label
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n if n is not None and n >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise ImageError(f"layer {self.label}: uncompressed size is over the {self.limit}-byte limit")
        self.hash.update(data)
        return data

    def drain(self) -> None:
        """Read (and hash) what is left after the tar's end-of-archive blocks."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _decompressed(f: IO[bytes], label: str) -> IO[bytes]:
    """``f`` decompressed by its magic bytes: gzip, bzip2, xz, or plain tar. zstd is refused."""
    magic = f.read(6)
    f.seek(0)
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        raise ImageError(f"layer {label}: zstd-compressed layers are not supported")
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, "rb")
    return f


@dataclass
class _Unpacker:
    """The state of one unpack: the real path of the (private, empty) layer root, a label for
    messages, the byte budget for file data, and directory times to set at the end."""

    root: str
    label: str
    budget: int
    owners: bool = field(default_factory=lambda: os.geteuid() == 0)
    dir_times: list[tuple[str, int]] = field(default_factory=list)

    def outside(self, name: str) -> _Outside:
        return _Outside(f"layer {self.label}: entry {name!r} resolves outside the layer")

    # -- resolution ----------------------------------------------------------------------

    def resolve_dir(self, parts: list[str], entry: str, create: bool) -> str:
        """The real path of directory ``parts`` under the root, following in-layer symlinks;
        missing directories are made (mode 0755, root) when ``create``. Raises ImageError if a
        symlink leads outside, a component is not a directory, or links loop."""
        cur = self.root
        todo = [p for p in parts if p not in ("", ".")]
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur == self.root:
                    raise self.outside(entry)
                cur = os.path.dirname(cur)
                continue
            nxt = os.path.join(cur, comp)
            try:
                st = os.lstat(nxt)
            except FileNotFoundError:
                if not create:
                    raise ImageError(f"layer {self.label}: entry {entry!r}: {comp!r} does not exist in the "
                                     "layer") from None
                os.mkdir(nxt, 0o755)
                cur = nxt
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(f"layer {self.label}: entry {entry!r}: too many levels of symbolic links")
                target = os.readlink(nxt)
                if target.startswith("/"):
                    raise self.outside(entry)
                todo[:0] = target.split("/")
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(f"layer {self.label}: entry {entry!r}: {comp!r} is not a directory")
            cur = nxt
        return cur

    def place(self, name: str, create: bool = True) -> str:
        """The path where entry ``name`` (normalised, relative) lands: its parent resolved
        safely, its last component as written (never followed)."""
        parent, _, base = name.rpartition("/")
        return os.path.join(self.resolve_dir(parent.split("/") if parent else [], name, create), base)

    @staticmethod
    def clear(path: str, keep_dir: bool = False) -> None:
        """Remove what is at ``path`` without following it (a real directory recursively,
        anything else with unlink); with ``keep_dir`` a real directory stays."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(path)
        else:
            os.unlink(path)

    # -- entries -------------------------------------------------------------------------

    def whiteout(self, name: str, entry: str) -> None:
        parent, _, base = name.rpartition("/")
        if base == _OPAQUE:
            d = self.resolve_dir(parent.split("/") if parent else [], entry, create=True)
            os.setxattr(d, "trusted.overlay.opaque", b"y", follow_symlinks=False)
            return
        hidden = base[len(_WHITEOUT):]
        if hidden.startswith(_WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): ignored, as moby does
        if hidden in ("", ".", ".."):
            raise ImageError(f"layer {self.label}: entry {entry!r} resolves outside the layer (a whiteout "
                             f"of {hidden!r} names no file of its directory)")
        path = self.place(f"{parent}/{hidden}" if parent else hidden)
        if os.path.lexists(path):
            return  # an entry of this same layer wins over its whiteout (OCI image spec)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def regular(self, m: tarfile.TarInfo, path: str, data: IO[bytes] | None) -> None:
        self.clear(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while data is not None and (chunk := data.read(_CHUNK)):
                self.budget -= len(chunk)
                if self.budget < 0:
                    raise ImageError(f"layer {self.label}: the files it holds are over the layer size limit")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            self.attrs_fd(fd, m)
        finally:
            os.close(fd)

    def directory(self, m: tarfile.TarInfo, path: str, name: str, entry: str) -> None:
        if os.path.islink(path):
            # a directory entry over a symlink of this layer: refused if the link leads out
            # (tar would chmod/chown through it), else the link is replaced, as moby does
            try:
                self.resolve_dir(name.split("/"), entry, create=False)
            except _Outside:
                raise
            except ImageError:
                pass  # a dangling or looping link of the layer: replaced below
        self.clear(path, keep_dir=True)
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.attrs_fd(fd, m, times=False)
        finally:
            os.close(fd)
        self.dir_times.append((path, int(m.mtime)))

    def symlink(self, m: tarfile.TarInfo, path: str) -> None:
        self.clear(path)
        os.symlink(m.linkname, path)
        if self.owners:
            os.lchown(path, m.uid, m.gid)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def hardlink(self, m: tarfile.TarInfo, path: str, entry: str) -> None:
        target_name = safe_name(m.linkname, self.label)
        if not target_name:
            raise ImageError(f"layer {self.label}: entry {entry!r} is a hard link to the layer root")
        try:
            src = self.place(target_name, create=False)
        except _Outside:
            raise self.outside(entry) from None
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise ImageError(f"layer {self.label}: entry {entry!r} links to {m.linkname!r}, which the layer "
                             "does not hold") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"layer {self.label}: entry {entry!r} is a hard link to a directory")
        if src == path:
            return
        self.clear(path)
        os.link(src, path, follow_symlinks=False)

    def special(self, m: tarfile.TarInfo, path: str) -> None:
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        self.clear(path)
        os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0)
        if self.owners:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(m.mode))  # just made by mknod: a node, never a symlink
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def attrs_fd(self, fd: int, m: tarfile.TarInfo, times: bool = True) -> None:
        """Owner (as root only, as tarfile does), then mode (after fchown, which clears set-ID
        bits), then times, on an open file descriptor: nothing here follows a path."""
        if self.owners:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, stat.S_IMODE(m.mode))
        if times:
            os.utime(fd, (m.mtime, m.mtime))


def safe_name(name: str, label: str) -> str:
    """``name`` as a normalised relative path (leading ``/`` and ``.`` components dropped).

    Raises ImageError for a ``..`` component or a NUL byte (the entry would leave the layer or
    is not a path)."""
    if "\x00" in name:
        raise ImageError(f"layer {label}: entry {name!r} has a NUL byte in its name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ImageError(f"layer {label}: entry {name!r} resolves outside the layer")
    return "/".join(parts)


def unpack_layer(blob: Path, dest: Path, diff_id: str | None = None, max_size: int = MAX_LAYER_SIZE,
                 label: str | None = None) -> str:
    """Unpack the layer tar ``blob`` (plain, gzip, bzip2 or xz) into the empty directory ``dest``.

    ``dest`` must be private to the caller (nobody else writes there while it runs). Owners,
    modes (set-ID bits included), devices, symlinks and hard links are kept (run as root); OCI
    whiteouts become overlayfs whiteouts. ``diff_id`` (``sha256:…``), when given, must equal the
    digest of the uncompressed tar. ``label`` names the layer in messages (default: the blob's
    file name). Returns the uncompressed digest.

    Raises ImageError for an entry that resolves outside the layer, a corrupt or truncated
    archive, a diff_id mismatch, or a layer over ``max_size`` bytes (uncompressed, or written);
    ``dest`` may then hold a partial layer: the caller removes it.
    """
    label = label or blob.name
    dest.mkdir(parents=True, exist_ok=True)
    u = _Unpacker(root=os.path.realpath(dest), label=label, budget=max_size)
    try:
        with open(blob, "rb") as raw:
            reader = _HashingReader(_decompressed(raw, label), max_size, label)
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=BoundedTarInfo) as tf:  # type: ignore[call-overload]
                entries = 0
                while (m := tf.next()) is not None:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        raise ImageError(f"layer {label}: more than {MAX_ENTRIES} entries")
                    tf.members.clear()  # stream mode keeps every header otherwise
                    _unpack_entry(u, tf, m)
            reader.drain()
    except ImageError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError, zlib.error, lzma.LZMAError) as e:
        raise ImageError(f"layer {label}: cannot unpack: {e}") from e
    for path, mtime in reversed(u.dir_times):
        if os.path.isdir(path) and not os.path.islink(path):
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    if diff_id is not None and reader.digest != diff_id:
        raise ImageError(f"diff_id mismatch: config {diff_id}, content {reader.digest}")
    return reader.digest


def _unpack_entry(u: _Unpacker, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    name = safe_name(m.name, u.label)
    if not name:
        return  # the layer root itself: its directory is ours
    base = name.rpartition("/")[2]
    if base.startswith(_WHITEOUT):
        u.whiteout(name, m.name)
        return
    if m.islnk():
        u.hardlink(m, u.place(name), m.name)
        return
    path = u.place(name)
    if m.isreg():
        u.regular(m, path, tf.extractfile(m))
    elif m.isdir():
        u.directory(m, path, name, m.name)
    elif m.issym():
        u.symlink(m, path)
    elif m.ischr() or m.isblk() or m.isfifo():
        u.special(m, path)
    else:
        raise ImageError(f"layer {u.label}: entry {m.name!r} has tar type {m.type!r}, which a layer may not hold")


__all__ = ["BoundedTarInfo", "MAX_ENTRIES", "MAX_HEADER_BYTES", "MAX_LAYER_SIZE", "ImageError", "safe_name", "unpack_layer"]
