"""The node's local state under the data root: ``state.json`` (:class:`LocalState`) and the modes
of what the daemon keeps directly under the data root (:func:`secure_data_root`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from shoal.base.util import private_dir, private_file

__all__ = ["LocalState", "secure_data_root"]


class LocalState:
    """The node's local swarm state, kept in ``<data-root>/state.json``.

    Fields: ``NodeID`` (str), ``Role`` (``manager`` | ``worker``), ``ManagerAddrs`` (list of
    ``ip:port``), ``AdvertiseAddr`` (str), ``ListenAddr`` (str). An empty state means the node is
    not in a swarm. Writes are atomic (temp file, fsync, rename). Reading a ``state.json`` that is
    not JSON raises ``json.JSONDecodeError`` (a ``ValueError``); one that cannot be read, ``OSError``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            self.data = json.loads(path.read_text())

    @property
    def in_swarm(self) -> bool:
        return bool(self.data.get("NodeID"))

    def save(self, data: dict[str, Any]) -> None:
        """Replace the state with ``data`` (in memory and on disk). Raises ``OSError``."""
        self.data = data
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Forget the swarm: empty state, ``state.json`` removed."""
        self.data = {}
        self.path.unlink(missing_ok=True)


def secure_data_root(data_root: Path) -> None:
    """Make ``data_root`` and give it and what the daemon keeps directly under it the modes Docker
    gives its own (root only): the data root, ``certs/`` and ``manager/`` (and its ``raft/``) 0700,
    ``state.json`` and the certificates and keys 0600. Fixes a data root made by an older Shoal; the
    image store and the containers' directories fix their own (agent_runtime)."""
    private_dir(data_root)
    private_file(data_root / "state.json")
    for sub in ("certs", "manager", "manager/raft"):
        if (data_root / sub).is_dir():
            private_dir(data_root / sub)
    for name in ("ca.crt", "ca.key", "node.crt", "node.key"):
        private_file(data_root / "certs" / name)
