"""Host-mode published ports (issue 9): ``--publish mode=host,target=80,published=8080``.

A running task on this node whose ``task["Endpoint"]["Ports"]`` has entries with ``PublishMode``
``"host"`` and a ``PublishedPort`` gets them DNATed on the node's own addresses (table
``ip shoal-hostports``, :class:`overlaynet.lb.portmap.PortMap`: prerouting + output, no masquerade,
so the task sees the client's real address) to its container's local-bridge address and
``TargetPort``. The table follows the set of running tasks: an entry appears when the task runs and
goes when it stops. A published port is used at most once per node: when two local tasks claim it
(the manager should not let that happen), the task with the smaller ID keeps it and the other is
logged. ``PublishedPort`` 0 (none given) publishes nothing (contract9 §2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from overlaynet.lb.apply import run_nft
from overlaynet.lb.portmap import PortMap, normalize
from overlaynet.lb.rules import RulesError

__all__ = ["HOSTPORTS_TABLE", "HostPorts", "host_port_entries"]

log = logging.getLogger("shoal.worker.hostports")

HOSTPORTS_TABLE = "shoal-hostports"


def host_port_entries(running: Iterable[tuple[Mapping[str, Any], str]]) -> dict[tuple[str, int], tuple[str, int]]:
    """``{(proto, published): (container IP, target)}`` of ``running`` = ``[(task, its local-bridge
    IPv4 address without prefix)]``; tasks are taken in task ID order (the first claim of a port wins;
    the others are logged). Malformed ports are logged and left out."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    owner: dict[tuple[str, int], str] = {}
    for task, ip in sorted(running, key=lambda ti: str(ti[0].get("ID") or "")):
        tid = str(task.get("ID") or "")
        ports = ((task.get("Endpoint") or {}).get("Ports")) or []
        for p in ports:
            if not isinstance(p, Mapping) or p.get("PublishMode") != "host" or not p.get("PublishedPort"):
                continue
            proto = str(p.get("Protocol") or "tcp").lower()
            try:
                k = (proto, int(p["PublishedPort"]))
                v = (ip, int(p.get("TargetPort") or 0))
                normalize({k: v})
            except (RulesError, ValueError, TypeError) as e:
                log.warning("task %s: not publishing %r: %s", tid, dict(p), e)
                continue
            if k in out:
                if owner[k] != tid:
                    log.warning("task %s: host port %s/%d is already published by task %s on this node",
                                tid, k[0], k[1], owner[k])
                continue
            out[k], owner[k] = v, tid
    return out


class HostPorts:
    """The node's host-mode ports table. ``sync(running)`` makes it hold
    :func:`host_port_entries` of ``running`` (one ``nft -f`` when something changed; the table is
    made on the first sync that has ports; the first sync without ports deletes a leftover table);
    ``remove()`` deletes it. Synchronous: call in a thread."""

    def __init__(self, table: str = HOSTPORTS_TABLE, nft: Callable[..., None] = run_nft) -> None:
        self.map = PortMap(table, nft=nft)
        self._cleaned = False

    def sync(self, running: Iterable[tuple[Mapping[str, Any], str]]) -> str:
        """Apply; return the script sent (``""``: nothing changed). Raises ``NftError``."""
        entries = host_port_entries(running)
        if self.map.applied is None and not entries:
            if not self._cleaned:  # once: a crashed daemon's table
                self._cleaned = True
                self.map.remove()
            return ""
        self._cleaned = True
        return self.map.apply(entries)

    @property
    def touched(self) -> bool:
        """Whether :meth:`sync` ever ran a command (the table may exist)."""
        return self._cleaned or self.map.applied is not None

    def remove(self) -> None:
        """Delete the table (fine if it is not there)."""
        self.map.remove()
