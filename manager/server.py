"""The manager's TLS server on port 2377: CA calls for joining nodes and dispatcher sessions.

Protocol: docs/contracts.md, "The 2377 protocol". TLS with ``CERT_OPTIONAL``: a peer without a
client certificate may only call ``ca.root`` and ``ca.join``; every other call needs a node
certificate issued by this cluster's CA (its CN is the node ID, its OU the role;
:func:`shoal.tlsutil.peer_identity`). Extra request types (e.g. Raft between managers) can be
added with :meth:`ManagerServer.register`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from manager.ca import RootCA, parse_token, token_matches_ca, token_role
from manager.dispatcher import Dispatcher
from manager.store import Store, WriteTx
from shoal import tlsutil, wire
from shoal.util import new_id, now_rfc3339

log = logging.getLogger(__name__)

DEFAULT_PORT = 2377

NodeHook = Callable[[WriteTx, dict[str, Any]], None]
"""``hook(tx, node)``: called inside the join transaction after the new Node is created (e.g. to
allocate its ``ShoalBridge`` subnet and ``tx.update`` the node). Raising aborts the join."""

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]
"""``async def h(reader, writer, first_frame)``: takes over a whole connection whose first frame has
type ``first_frame["t"]`` (Raft's ``raft-hello``); returns when the connection is done."""

AuthedHandler = Callable[[wire.Peer, str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""``async def h(peer, node_id, role, body) -> dict | None`` for a registered request type."""


def make_node(
    node_id: str,
    role: str,
    description: dict[str, Any] | None,
    addr: str,
    manager_addr: str | None = None,
) -> dict[str, Any]:
    """Return a new Node object (Docker Engine API shape) for a node that just joined.

    ``role``: ``worker`` | ``manager``; ``description``: NodeDescription (``Hostname``,
    ``Platform{Architecture, OS}``, ``Resources{NanoCPUs, MemoryBytes}``, ``Engine{EngineVersion}``);
    ``addr``: the node's IP (``Status.Addr``); ``manager_addr``: ``ip:port`` of its 2377 listener,
    for managers (``ManagerStatus.Addr``). ``Status.State`` starts as ``unknown`` until the node
    opens a dispatcher session.
    """
    node: dict[str, Any] = {
        "ID": node_id,
        "CreatedAt": now_rfc3339(),
        "Spec": {"Labels": {}, "Role": role, "Availability": "active"},
        "Description": description or {},
        "Status": {"State": "unknown", "Message": "", "Addr": addr},
    }
    if role == "manager":
        node["ManagerStatus"] = {
            "Leader": False,
            "Reachability": "unknown",
            "Addr": manager_addr or f"{addr}:{DEFAULT_PORT}",
        }
    return node


class ManagerServer:
    """The asyncio TLS server on 2377.

    ``store``, ``ca`` (must hold its key to serve ``ca.join``), ``dispatcher``; ``ssl_context``
    from :func:`shoal.tlsutil.server_context` with the manager's own node certificate;
    ``advertise_addr``: this manager's ``ip:port`` (returned to joiners when the store lists no
    manager); ``node_hook``: see :data:`NodeHook`; ``handshake_timeout``: seconds a client has
    to finish the TLS handshake.
    """

    def __init__(
        self,
        store: Store,
        ca: RootCA,
        dispatcher: Dispatcher,
        ssl_context: ssl.SSLContext,
        advertise_addr: str = "",
        node_hook: NodeHook | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.ca = ca
        self.dispatcher = dispatcher
        self.ssl_context = ssl_context
        self.advertise_addr = advertise_addr
        self.node_hook = node_hook
        self.handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._peers: set[wire.Peer] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._extra: dict[str, tuple[AuthedHandler, str | None]] = {}
        self._streams: dict[str, StreamHandler] = {}
        self.forward: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None
        """``await forward(type, body)``: None when this manager should serve a leader-only
        request itself, else the leader's reply (set by the Manager; ``ca.join`` uses it)."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`). Raises ``OSError`` if it cannot bind."""
        self._server = await asyncio.start_server(
            self._on_connection, host, port, ssl=self.ssl_context, ssl_handshake_timeout=self.handshake_timeout
        )

    @property
    def port(self) -> int:
        """The TCP port listened on (0 before :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for p in list(self._peers):
            await p.close("manager stopping")
        for t in list(self._watchers):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def register(self, type: str, handler: AuthedHandler, role: str | None = None) -> None:
        """Serve request ``type`` with ``handler`` for peers with a node certificate (of ``role`` only, if given)."""
        self._extra[type] = (handler, role)

    def register_stream(self, first_type: str, handler: StreamHandler) -> None:
        """Hand every connection whose first frame has type ``first_type`` to ``handler`` (which
        checks the peer's certificate itself); used for Raft messages between managers."""
        self._streams[first_type] = handler

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(wire.read_frame(reader), self.handshake_timeout)
        except (wire.WireError, OSError, ssl.SSLError, TimeoutError) as e:
            log.debug("2377 connection closed before its first frame: %s", e)
            writer.close()
            return
        stream = self._streams.get(str(first.get("t")))
        if stream is not None:
            task = asyncio.current_task()
            if task is not None:
                self._watchers.add(task)
            try:
                await stream(reader, writer, first)
            finally:
                if task is not None:
                    self._watchers.discard(task)
            return
        peer = wire.Peer(reader, writer, self.handle)
        peer.info["identity"] = tlsutil.peer_identity(peer.ssl_object)
        self._peers.add(peer)
        peer.start(first)

        async def watch_close() -> None:
            try:
                await peer.wait_closed()
            finally:
                self._peers.discard(peer)
                self.dispatcher.connection_lost(peer)

        t = asyncio.create_task(watch_close(), name=f"2377-conn {peer.name}")
        self._watchers.add(t)
        t.add_done_callback(self._watchers.discard)

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, peer: wire.Peer, type: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Route one request from ``peer`` (see the module doc). Errors reach the peer as ``{"t": "error"}``."""
        if type == "ca.root":
            return {"cert": self.ca.cert_pem}
        if type == "ca.join":
            return await self.join(peer, body)
        ident = peer.info.get("identity")
        if ident is None:
            raise PermissionError(
                f"{type}: this call needs a node certificate issued by this swarm's CA; join the swarm first"
            )
        node_id, role = ident
        if type.startswith("session."):
            return await self.dispatcher.handle(peer, node_id, type, body)
        if type == "ca.renew":
            return await self.renew(node_id, body)
        if type in self._extra:
            handler, need = self._extra[type]
            if need is not None and role != need:
                raise PermissionError(f"{type}: only {need} nodes may call this (this node is a {role})")
            return await handler(peer, node_id, role, body)
        raise LookupError(f"unknown request type {type!r}")

    async def renew(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``ca.renew`` ``{"csr": pem}`` from an authenticated node: a new certificate for
        the role the store gives the node now (after ``node promote``/``demote``), as swarmkit's
        certificate renewal does. Returns ``{"cert", "ca", "role", "ca_key" (managers only)}``.
        Raises ``LookupError`` for a node that is no longer in the swarm."""
        csr = body.get("csr")
        if not isinstance(csr, str):
            raise ValueError("ca.renew: csr (PEM) is required")
        node = self.store.view().get("nodes", node_id)
        if node is None:
            raise LookupError(f"node {node_id} is not part of this swarm (it was removed); join again")
        role = (node.get("Spec") or {}).get("Role") or "worker"
        cert = self.ca.issue(csr, node_id, role, self._cluster()["ID"])
        out: dict[str, Any] = {"cert": cert, "ca": self.ca.cert_pem, "role": role}
        if role == "manager":
            out["ca_key"] = self.ca.key_pem()
        return out

    def _cluster(self) -> dict[str, Any]:
        clusters = self.store.view().list("cluster")
        if not clusters:
            raise LookupError("this manager has no swarm cluster yet")
        return clusters[0]

    async def join(self, peer: wire.Peer, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``ca.join``: check the token against the cluster's ``JoinTokens``, create the Node
        and return ``{"node_id", "role", "cert", "ca", "managers"}``.

        ``body``: ``{"token", "csr": pem, "hostname", "addr": advertised IP or "",
        "description": NodeDescription (optional), "cannot_manage": reason (optional: the node
        cannot serve as a manager, e.g. its listen address is in use)}``. A wrong, revoked or
        malformed token raises ``PermissionError("invalid join token…")`` and writes nothing; so
        does a manager token with ``cannot_manage`` (``PermissionError`` quoting the reason).
        """
        if self.forward is not None:
            fwd_body = dict(body)
            if not fwd_body.get("addr"):
                pa = peer.peer_address
                fwd_body["addr"] = pa[0] if pa else ""
            fwd = await self.forward("ca.join", fwd_body)
            if fwd is not None:
                return fwd
        token = body.get("token")
        csr = body.get("csr")
        hostname = body.get("hostname")
        if not isinstance(token, str) or not isinstance(csr, str):
            raise ValueError("ca.join: token and csr (PEM) are required strings")
        try:
            parse_token(token)
        except ValueError as e:
            raise PermissionError(str(e)) from e
        cluster = self._cluster()
        if not token_matches_ca(token, self.ca.cert_pem):
            raise PermissionError("invalid join token: it was made for another swarm's CA")
        role = token_role(token, cluster.get("JoinTokens") or {})
        if role is None:
            raise PermissionError("invalid join token")
        cannot_manage = body.get("cannot_manage")
        if role == "manager" and cannot_manage:
            raise PermissionError(f"this node cannot join as a manager: {str(cannot_manage)[:500]}")
        cluster_id = cluster["ID"]
        node_id = new_id()
        cert_pem = self.ca.issue(csr, node_id, role, cluster_id)  # ValueError for a bad CSR
        description = body.get("description")
        description = dict(description) if isinstance(description, dict) else {}
        if isinstance(hostname, str) and hostname:
            description["Hostname"] = hostname
        addr = body.get("addr")
        if not isinstance(addr, str) or not addr:
            pa = peer.peer_address
            addr = pa[0] if pa else ""
        addr = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr  # ip:port → ip
        node = make_node(node_id, role, description, addr)

        def fn(tx: WriteTx) -> None:
            cur = tx.get("cluster", cluster_id)
            # re-check inside the transaction: the token may have been rotated meanwhile
            if cur is None or token_role(token, cur.get("JoinTokens") or {}) != role:
                raise PermissionError("invalid join token")
            tx.create("nodes", node)
            if self.node_hook is not None:
                self.node_hook(tx, node)

        await self.store.update(fn)
        log.info("node %s (%s, %s) joined as %s", node_id, description.get("Hostname", "?"), addr, role)
        managers = self.dispatcher.manager_addrs() or ([self.advertise_addr] if self.advertise_addr else [])
        out: dict[str, Any] = {"node_id": node_id, "role": role, "cert": cert_pem, "ca": self.ca.cert_pem,
                               "managers": managers}
        if role == "manager":
            out["ca_key"] = self.ca.key_pem()  # every manager can sign, as in Swarm
        return out
