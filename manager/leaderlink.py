"""``LeaderLink``: a follower manager's connection to the Raft leader, for the requests that must
run on the leader (a node joining, a manager asking to be added to Raft or to leave it, the
logs of a service, an API write).

The leader's address comes from Raft (the replicated address book, through the manager's
``leader_addr``); the connection is 2377 mutual TLS with this manager's certificate, opened on
first use and again whenever the leader changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.store import Unavailable
from raft.replicated import parse_addr
from shoal.rpc import wire

__all__ = ["LeaderLink", "join_raft"]


class LeaderLink:
    """A 2377 connection from this manager to the current Raft leader, with this manager's
    certificate, for requests that must run on the leader.

    ``leader_addr()`` returns the leader's ``host:port`` or None (no leader known);
    ``certs_dir`` holds this node's ``node.crt``/``node.key``/``ca.crt``.
    """

    def __init__(self, certs_dir: Path, leader_addr: Callable[[], str | None],
                 no_leader: Callable[[], str]) -> None:
        self.certs_dir = certs_dir
        self.leader_addr = leader_addr
        self.no_leader = no_leader
        self._peer: wire.Peer | None = None
        self._addr: str | None = None
        self._lock = asyncio.Lock()

    async def request(self, type: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send request ``type`` to the leader and return its reply. Raises :class:`Unavailable`
        when no leader is known or it cannot be reached, :class:`shoal.rpc.wire.RemoteError` with
        the leader's error."""
        addr = self.leader_addr()
        if not addr:
            raise Unavailable(self.no_leader())
        async with self._lock:
            if self._peer is None or self._peer.closed or self._addr != addr:
                if self._peer is not None:
                    await self._peer.close("leader changed")
                host, port = parse_addr(addr)
                try:
                    self._peer = await wire.connect_node(host, port, self.certs_dir, timeout=5.0)
                except (OSError, wire.WireError) as e:
                    raise Unavailable(f"cannot reach the leader at {addr}: {e}") from e
                self._addr = addr
            peer = self._peer
        try:
            return await peer.request(type, body, timeout=timeout)
        except wire.RemoteError:
            raise
        except wire.WireError as e:
            raise Unavailable(f"the leader at {addr} did not answer: {e}") from e

    async def forward(self, is_leader: bool, type: str, body: dict[str, Any],
                      timeout: float = 60.0) -> dict[str, Any] | None:
        """For requests the 2377 server must run on the leader: None when ``is_leader`` (serve
        locally), else the leader's reply to the same request (errors as :meth:`request`)."""
        if is_leader:
            return None
        return await self.request(type, body, timeout=timeout)

    async def close(self) -> None:
        """Close the connection (if any)."""
        if self._peer is not None:
            await self._peer.close("manager stopping")
            self._peer = None


async def join_raft(managers: list[str], advertise_addr: str, certs_dir: Path, timeout: float = 60.0) -> None:
    """Ask the swarm (through any of ``managers``, ``host:port``) to add this manager (listening at
    ``advertise_addr``, with the certificate in ``certs_dir``) to the Raft configuration
    (``raft.join``, which the leader serves), and wait until this node has caught up. Raises ``RuntimeError``
    naming the managers tried and their errors."""
    errors = []
    for addr in managers:
        if addr == advertise_addr:
            continue
        try:
            host, port = parse_addr(addr)
            peer = await wire.connect_node(host, port, certs_dir, timeout=5.0)
        except (OSError, ValueError, wire.WireError) as e:
            errors.append(f"{addr}: {e}")
            continue
        try:
            await peer.request("raft.join", {"addr": advertise_addr}, timeout=timeout)
            return
        except wire.WireError as e:
            errors.append(f"{addr}: {e}")
        finally:
            await peer.close()
    raise RuntimeError("could not join the Raft cluster: " + "; ".join(errors or ["no manager to ask"]))
