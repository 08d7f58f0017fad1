"""Atomic snapshot files for the Raft log (state-machine snapshot at an index).

A snapshot file ``snap-<term:016x>-<index:016x>.snap`` holds
``[crc32 u32 BE][msgpack {"index", "term", "data"}]``. Writing follows the usual atomic-file
recipe (write a temp file, fsync it, rename over, fsync the directory: POSIX rename(2) is atomic),
so a crash leaves either the old snapshot or the new one, never half of one. Only the newest
snapshot is kept (swarmkit's KeepOldSnapshots = 0). A failed save (a full disk) removes its temp
file and leaves the previous snapshot in place.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from raft.wal import recovery_advice
from shoal.base.util import private_dir, private_file

__all__ = ["Snapshot", "Snapshotter", "SnapshotCorruptError"]

_NAME_RE = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class SnapshotCorruptError(Exception):
    """The newest snapshot file fails its CRC or cannot be decoded. The message names the file
    and says how to recover (:func:`raft.wal.recovery_advice`)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine snapshot covering the log up to and including ``index`` (of ``term``)."""

    index: int
    term: int
    data: bytes


class Snapshotter:
    """Saves and loads snapshots in directory ``directory`` (created if missing)."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        private_dir(self.dir)
        for _index, _term, path in self._files():
            private_file(path)  # 0644 when written by an older Shoal

    def _files(self) -> list[tuple[int, int, Path]]:
        out = []
        for name in os.listdir(self.dir):
            m = _NAME_RE.match(name)
            if m:
                out.append((int(m.group(2), 16), int(m.group(1), 16), self.dir / name))
            elif name.endswith(".snap.tmp"):
                os.unlink(self.dir / name)
        out.sort()
        return out

    def save(self, snap: Snapshot) -> Path:
        """Write ``snap`` atomically and delete older snapshot files. Returns the file path.
        Raises ``OSError`` on I/O failure (the previous snapshot then stays in place)."""
        body = msgpack.packb({"index": snap.index, "term": snap.term, "data": snap.data}, use_bin_type=True)
        blob = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) + body
        name = f"snap-{snap.term:016x}-{snap.index:016x}.snap"
        tmp = self.dir / (name + ".tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, f"{exc.strerror or exc}: cannot write the Raft snapshot {tmp} "
                          f"({len(blob)} bytes) in {self.dir}; the previous snapshot and the log are "
                          "unchanged") from exc
        os.rename(tmp, self.dir / name)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for index, _term, path in self._files():
            if path.name != name and index <= snap.index:
                os.unlink(path)
        return self.dir / name

    def load(self) -> Snapshot | None:
        """Return the newest snapshot, or None if there is none. Raises
        :class:`SnapshotCorruptError` if it is damaged."""
        files = self._files()
        if not files:
            return None
        index, term, path = files[-1]
        blob = path.read_bytes()
        if len(blob) < 4 or struct.unpack(">I", blob[:4])[0] != zlib.crc32(blob[4:]) & 0xFFFFFFFF:
            raise SnapshotCorruptError(
                f"snapshot {path} ({len(blob)} bytes, index {index}, term {term}) fails its CRC check: "
                f"the file is damaged and the state before index {index} cannot be rebuilt from it. "
                f"{recovery_advice(self.dir.parent)}")
        try:
            d = msgpack.unpackb(blob[4:], raw=False)
            return Snapshot(int(d["index"]), int(d["term"]), bytes(d["data"]))
        except Exception as e:  # noqa: BLE001 - any decode failure means the same thing
            raise SnapshotCorruptError(f"snapshot {path} cannot be decoded ({e}). "
                                       f"{recovery_advice(self.dir.parent)}") from e
