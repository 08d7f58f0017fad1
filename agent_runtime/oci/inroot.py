"""Open and create paths inside a container's root filesystem without ever leaving it.

Before ``pivot_root`` the runtime works on the rootfs from the host's side, where a symlink in the
image (``/dev -> /etc``) would otherwise send ``mkdir``, ``open``, ``mount``, ``mknod`` or
``symlink`` to a host path. :func:`open_in_root` walks a path one component at a time from a
directory file descriptor of the rootfs, with ``O_PATH | O_NOFOLLOW`` opens, and interprets every
symlink it meets as the container would see it (an absolute target restarts at the rootfs, ``..``
never climbs above it): the same semantics as runc's use of filepath-securejoin
(``SecureJoin``/``MkdirAllHandle``) and the kernel's ``openat2(RESOLVE_IN_ROOT)``. The caller acts on
the returned descriptor (``/proc/self/fd/N`` as a mount target, ``dir_fd=`` for ``*at`` calls), so
nothing is looked up again by name afterwards. ``no_symlinks`` refuses any symlink on the way
(runc refuses to mount proc and sysfs anywhere but on an ordinary directory; we do so for every
kernel filesystem and everything under ``/dev``).

Errors are ``OSError`` (``ENOENT``, ``ENOTDIR``, ``ELOOP`` …) naming the path, or
:class:`SymlinkRefused`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

MAX_SYMLINKS = 40
"""Symlinks followed in one walk before ``ELOOP`` (Linux's own limit, path_resolution(7))."""

_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkRefused(OSError):
    """A path that must not pass through a symlink does: ``path`` (inside the root), the link met at
    ``link`` (inside the root) and its ``target`` text."""

    def __init__(self, path: str, link: str, target: str) -> None:
        super().__init__(errno.ELOOP, f"{path}: {link} is a symlink (to {target!r})")
        self.path, self.link, self.target = path, link, target


def _components(path: str) -> deque[str]:
    return deque(p for p in path.split("/") if p and p != ".")


def open_in_root(root_fd: int, path: str, *, create: str | None = None, no_symlinks: bool = False,
                 mode: int = 0o755) -> int:
    """Return an ``O_PATH`` file descriptor (close-on-exec; the caller closes it) for ``path``
    resolved inside the directory ``root_fd`` as if it were ``/``.

    ``create``: ``None`` (the path must exist), ``"dir"`` (missing directories, the last one
    included, are made with ``mode``) or ``"file"`` (missing parent directories are made, the last
    component as an empty regular file of mode 0o644). Objects are made with ``mkdirat``/``openat``
    relative to their parent's descriptor, never through a symlink. ``no_symlinks``: raise
    :class:`SymlinkRefused` at the first symlink instead of following it. Raises ``OSError``:
    ``ENOENT`` (missing and not created), ``ENOTDIR`` (a non-directory in the middle, or at the end
    with ``create="dir"``), ``EISDIR`` (a directory at the end with ``create="file"``), ``ELOOP``
    (more than :data:`MAX_SYMLINKS` links).
    """
    if create not in (None, "dir", "file"):
        raise ValueError(f"create must be None, 'dir' or 'file', not {create!r}")
    parts = _components(path)
    stack = [os.dup(root_fd)]  # descriptors of the directories walked so far; [0] is the root
    names: list[str] = []  # the same, as names inside the root (for messages)
    links = 0
    try:
        while parts:
            p = parts.popleft()
            if p == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            last = not parts
            try:
                fd = os.open(p, _OPEN_FLAGS, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise FileNotFoundError(errno.ENOENT, f"{path}: /{'/'.join(names + [p])} does not exist") from None
                try:
                    if last and create == "file":
                        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o644, dir_fd=stack[-1]))
                    else:
                        os.mkdir(p, mode, dir_fd=stack[-1])
                except FileExistsError:
                    pass  # made meanwhile (by another walk): look at what is there now
                parts.appendleft(p)
                continue
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                target = os.readlink(p, dir_fd=stack[-1])
                if no_symlinks:
                    raise SymlinkRefused(path, "/" + "/".join(names + [p]), target)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links")
                if target.startswith("/"):
                    for d in stack[1:]:
                        os.close(d)
                    del stack[1:]
                    names.clear()
                parts.extendleft(reversed(_components(target)))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, f"{path}: /{'/'.join(names + [p])} is not a directory")
            if last and create == "dir" and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, f"{path}: /{'/'.join(names + [p])} is not a directory")
            if last and create == "file" and stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, f"{path}: /{'/'.join(names + [p])} is a directory")
            stack.append(fd)
            names.append(p)
        return stack.pop()
    finally:
        for d in stack:
            os.close(d)


def read_in_root(root: str, path: str, limit: int) -> bytes | None:
    """Contents of the regular file ``path`` inside the directory ``root`` (resolved as by
    :func:`open_in_root`), at most ``limit`` bytes; None if it is missing or is not a regular file.

    Raises ``ValueError`` naming the file if it is larger than ``limit`` and ``OSError`` for other
    I/O errors. Used for the image's ``/etc/passwd`` and ``/etc/group``: a link to a host file, a
    FIFO or ``/dev/zero`` is never read.
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = open_in_root(root_fd, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} in the image is larger than {limit} bytes")
    return data
