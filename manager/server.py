"""The manager's TLS server on port 2377: CA calls for joining nodes and dispatcher sessions.

Protocol: docs/contracts.md, "The 2377 protocol". TLS with ``CERT_OPTIONAL``: a peer without a
client certificate may only call ``ca.root`` and ``ca.join``; every other call needs a node
certificate issued by this cluster's CA (its CN is the node ID, its OU the role;
:func:`shoal.rpc.tlsutil.peer_identity`). Extra request types (e.g. Raft between managers) can be
added with :meth:`ManagerServer.register`; one registered for a role is served only when the
certificate's OU *and* the node's current ``Spec.Role`` in the store say that role, so a node
demoted or removed loses its rights at once, not when its certificate expires.

Every peer is treated as hostile until proven otherwise:

- without a certificate (:data:`shoal.rpc.wire.PREAUTH_LIMITS`): frames of at most 64 KiB, the
  first within ``first_frame_timeout`` seconds and each next one within as long of the previous
  reply, one request at a time, at most ``max_preauth`` such connections at once (more are
  closed at once); anything but ``ca.root``/``ca.join`` is answered with an error and the
  connection closed; what gets such a peer closed is logged on one line (no traceback), and
  at most once per :data:`LOG_EVERY` seconds;
- with a certificate: the limits of its current role (:data:`shoal.rpc.wire.WORKER_LIMITS`,
  :data:`shoal.rpc.wire.MANAGER_LIMITS`), at most ``max_per_node`` connections per node; a node
  ``node rm`` put in the cluster's ``BlacklistedCertificates`` is refused ("node X was removed
  from the swarm") and disconnected; the manager serves no pushes (a push closes the
  connection).

The TLS handshake itself is bounded by ``handshake_timeout`` (asyncio aborts a connection that
has not finished it); connections are counted once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from manager.ca import RootCA, is_blacklisted, parse_token, token_matches_ca, token_role
from manager.dispatcher import Dispatcher
from manager.store import Store, WriteTx
from shoal.base.util import new_id, now_rfc3339, wait_timeout
from shoal.rpc import tlsutil, wire

log = logging.getLogger(__name__)

DEFAULT_PORT = 2377

FIRST_FRAME_TIMEOUT = 5.0
"""Seconds a new connection has to send its first frame (and a peer without a certificate to
send each next one once its previous request was answered)."""

MAX_PREAUTH = 64
"""Connections without a node certificate open at once; more are closed at once."""

MAX_PER_NODE = 32
"""Connections with the same node certificate open at once; more are closed at once."""

LOG_EVERY = 10.0
"""Seconds between two log lines about refused connections (the rest are counted)."""

ANON_CALLS = ("ca.root", "ca.join")
"""What a peer without a node certificate may call."""

NodeHook = Callable[[WriteTx, dict[str, Any]], None]
"""``hook(tx, node)``: called inside the join transaction after the new Node is created (e.g. to
allocate its ``ShoalBridge`` subnet and ``tx.update`` the node). Raising aborts the join."""

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]
"""``async def h(reader, writer, first_frame)``: takes over a whole connection whose first frame has
type ``first_frame["t"]`` (Raft's ``raft-hello``); returns when the connection is done."""

AuthedHandler = Callable[[wire.Peer, str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""``async def h(peer, node_id, role, body) -> dict | None`` for a registered request type."""

RoleLookup = Callable[[str], Awaitable[str | None]]
"""``await current_role(node_id)``: the node's ``Spec.Role`` now (``manager`` | ``worker``), None
when the node is not in the swarm."""


class _Throttled:
    """One log line at info at most every ``every`` seconds; the lines held back meanwhile are
    counted and reported with the next one."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY) -> None:
        self.log = logger
        self.every = every
        self._last = -float("inf")
        self._held = 0

    def info(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return
        if self._held:
            msg += " (and %d similar since the last such line)"
            args = (*args, self._held)
        self._last, self._held = now, 0
        self.log.info(msg, *args)


def _role(node: dict[str, Any] | None) -> str | None:
    if node is None:
        return None
    return str((node.get("Spec") or {}).get("Role") or "worker")


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
    from :func:`shoal.rpc.tlsutil.server_context` with the manager's own node certificate;
    ``advertise_addr``: this manager's ``ip:port`` (returned to joiners when the store lists no
    manager); ``node_hook``: see :data:`NodeHook`; ``handshake_timeout``: seconds a client has
    to finish the TLS handshake; ``first_frame_timeout``, ``max_preauth``, ``max_per_node``: see
    the module doc (:data:`FIRST_FRAME_TIMEOUT`, :data:`MAX_PREAUTH`, :data:`MAX_PER_NODE`);
    ``write_timeout``: seconds a peer may read nothing of what it is sent before it is
    disconnected (:data:`shoal.rpc.wire.WRITE_TIMEOUT`).
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
        first_frame_timeout: float = FIRST_FRAME_TIMEOUT,
        max_preauth: int = MAX_PREAUTH,
        max_per_node: int = MAX_PER_NODE,
        write_timeout: float | None = wire.WRITE_TIMEOUT,
    ) -> None:
        self.store = store
        self.ca = ca
        self.dispatcher = dispatcher
        self.ssl_context = ssl_context
        self.advertise_addr = advertise_addr
        self.node_hook = node_hook
        self.handshake_timeout = handshake_timeout
        self.first_frame_timeout = first_frame_timeout
        self.max_preauth = max_preauth
        self.max_per_node = max_per_node
        self.write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        self._peers: set[wire.Peer] = set()
        self._conns: set[asyncio.Task[Any]] = set()
        self._preauth = 0
        self._per_node: dict[str, int] = {}
        self._extra: dict[str, tuple[AuthedHandler, str | None]] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._refusals = _Throttled(log)
        self.forward: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None
        """``await forward(type, body)``: None when this manager should serve a leader-only
        request itself, else the leader's reply (set by the Manager; ``ca.join`` uses it)."""
        self.current_role: RoleLookup = self.store_role
        """How a registered call's role is checked (the Manager adds a read barrier on a
        follower, whose store may lag); see :data:`RoleLookup`."""

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

    @property
    def peers(self) -> tuple[wire.Peer, ...]:
        """The request connections open now (Raft streams excluded)."""
        return tuple(self._peers)

    @property
    def preauth_connections(self) -> int:
        """Connections without a node certificate open now."""
        return self._preauth

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for p in list(self._peers):
            await p.close("manager stopping")
        for t in list(self._conns):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def register(self, type: str, handler: AuthedHandler, role: str | None = None) -> None:
        """Serve request ``type`` with ``handler`` for peers with a node certificate (of ``role``
        only, if given: both the certificate and the node's current ``Spec.Role`` must say it)."""
        self._extra[type] = (handler, role)

    def register_stream(self, first_type: str, handler: StreamHandler) -> None:
        """Hand every connection whose first frame has type ``first_type`` to ``handler`` (which
        checks the peer's certificate itself); used for Raft messages between managers."""
        self._streams[first_type] = handler

    # -- who the peer is ----------------------------------------------------------------------

    async def store_role(self, node_id: str) -> str | None:
        """The node's ``Spec.Role`` in this manager's store now; None if it is not in the swarm."""
        return _role(self.store.view().get("nodes", node_id))

    def removed(self, node_id: str) -> bool:
        """Whether ``node rm`` put ``node_id`` in the cluster's ``BlacklistedCertificates`` (and
        its entry has not expired)."""
        clusters = self.store.view().list("cluster")
        return bool(clusters) and is_blacklisted(clusters[0], node_id)

    def _limits(self, ident: tuple[str, str] | None) -> wire.Limits:
        """Frame limits for a peer: by its certificate, and a manager's only while the store
        still says it is one."""
        if ident is None:
            return wire.PREAUTH_LIMITS
        if ident[1] == "manager" and _role(self.store.view().get("nodes", ident[0])) == "manager":
            return wire.MANAGER_LIMITS
        return wire.WORKER_LIMITS

    # -- connections --------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        obj = writer.get_extra_info("ssl_object")
        ident = tlsutil.peer_identity(obj if isinstance(obj, ssl.SSLObject) else None)
        pn = writer.get_extra_info("peername")
        where = f"{pn[0]}:{pn[1]}" if isinstance(pn, tuple) and len(pn) >= 2 else "?"
        counted: str | None = None
        try:
            if ident is None:
                if self._preauth >= self.max_preauth:
                    self._refusals.info("2377: closed a connection from %s at once: %d connections without "
                                        "a node certificate are open already", where, self._preauth)
                    wire.abort(writer)
                    return
                self._preauth += 1
                counted = ""
            else:
                node_id = ident[0]
                if self._per_node.get(node_id, 0) >= self.max_per_node:
                    self._refusals.info("2377: closed a connection of node %s from %s at once: it has %d open",
                                        node_id, where, self._per_node[node_id])
                    wire.abort(writer)
                    return
                self._per_node[node_id] = self._per_node.get(node_id, 0) + 1
                counted = node_id
                if self.removed(node_id):
                    await self._refuse_removed(reader, writer, node_id, where)
                    return
            await self._serve_connection(reader, writer, ident, where)
        except asyncio.CancelledError:
            wire.abort(writer)
        except Exception:  # never let one connection's failure reach the event loop's handler
            log.exception("2377: connection from %s failed", where)
            wire.abort(writer)
        finally:
            if counted == "":
                self._preauth -= 1
            elif counted:
                left = self._per_node.get(counted, 1) - 1
                if left > 0:
                    self._per_node[counted] = left
                else:
                    self._per_node.pop(counted, None)
            if task is not None:
                self._conns.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                ident: tuple[str, str] | None, where: str) -> None:
        limits = self._limits(ident)
        who = f"{where} (no certificate)" if ident is None else f"node {ident[0]} at {where}"
        try:
            first = await wait_timeout(wire.read_frame(reader, limits), self.first_frame_timeout)
        except (wire.WireError, OSError, ssl.SSLError, TimeoutError) as e:
            why = f"no frame within {self.first_frame_timeout:g} s" if isinstance(e, TimeoutError) else str(e)
            if ident is None:
                self._refusals.info("2377: closed the connection from %s: %s", who, why)
            else:
                log.debug("2377: closed the connection from %s before its first frame: %s", who, why)
            wire.abort(writer)
            return
        stream = self._streams.get(str(first.get("t")))
        if stream is not None:
            await stream(reader, writer, first)
            return
        peer = wire.Peer(reader, writer, self.handle, name=who, limits=limits, push_handler=self._push,
                         max_inflight=1 if ident is None else wire.MAX_INFLIGHT, write_timeout=self.write_timeout,
                         idle_timeout=self.first_frame_timeout if ident is None else None)
        peer.info["identity"] = ident
        self._peers.add(peer)
        peer.start(first)
        try:
            await peer.wait_closed()
        finally:
            self._peers.discard(peer)
            self.dispatcher.connection_lost(peer)
        if peer.close_reason.startswith("unexpected push") or (
                ident is None and peer.close_reason not in ("connection closed by peer", "manager stopping")):
            self._refusals.info("2377: closed the connection from %s: %s", who, peer.close_reason)
        else:
            log.debug("2377: connection of %s closed: %s", who, peer.close_reason)
        await peer.close(peer.close_reason)

    async def _refuse_removed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              node_id: str, where: str) -> None:
        """A connection with the certificate of a removed node: answer its first request with
        the error, then close."""
        msg = f"node {node_id} was removed from the swarm"
        self._refusals.info("2377: refused a connection from %s: %s", where, msg)
        with contextlib.suppress(Exception):
            first = await wait_timeout(wire.read_frame(reader, wire.PREAUTH_LIMITS), self.first_frame_timeout)
            rid = first.get("id")
            if isinstance(rid, int) and first.get("t") not in ("reply", "error"):
                writer.write(wire.encode_frame({"t": "error", "id": rid, "msg": msg}))
                await wait_timeout(writer.drain(), self.first_frame_timeout)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), wire.CLOSE_LINGER)
        wire.abort(writer)

    async def _push(self, peer: wire.Peer, type: str, body: dict[str, Any]) -> None:
        """Pushes to the manager: it serves none (agents and managers only send requests); the
        connection is closed (and its end logged with this reason)."""
        raise wire.Refused(f"unexpected push {type[:64]!r}: the manager takes requests only")

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, peer: wire.Peer, type: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Route one request from ``peer`` (see the module doc). Errors reach the peer as
        ``{"t": "error"}``; a peer without a certificate that asks for anything but
        :data:`ANON_CALLS`, and a removed node, are answered and then disconnected."""
        ident = peer.info.get("identity")
        if ident is None:
            if type == "ca.root":
                return {"cert": self.ca.cert_pem}
            if type == "ca.join":
                return await self.join(peer, body)
            raise wire.Refused(
                f"{type[:64]}: this call needs a node certificate issued by this swarm's CA; join the swarm first"
            )
        node_id, cert_role = ident
        if self.removed(node_id):
            msg = f"node {node_id} was removed from the swarm"
            self._refusals.info("2377: closed the connection from %s: %s", peer.name, msg)
            raise wire.Refused(msg)
        if type == "ca.root":
            return {"cert": self.ca.cert_pem}
        if type == "ca.join":
            return await self.join(peer, body)
        if type.startswith("session."):
            return await self.dispatcher.handle(peer, node_id, type, body)
        if type == "ca.renew":
            return await self.renew(node_id, body)
        if type in self._extra:
            handler, need = self._extra[type]
            if need is not None:
                if cert_role != need:
                    raise PermissionError(f"{type}: only {need} nodes may call this (this node is a {cert_role})")
                role = await self.current_role(node_id)
                if role != need:
                    now = "is not part of this swarm" if role is None else f"is a {role} now"
                    raise PermissionError(f"{type}: only {need} nodes may call this (node {node_id} {now}; "
                                          f"its certificate still says {cert_role})")
            return await handler(peer, node_id, cert_role, body)
        raise LookupError(f"unknown request type {type[:64]!r}")

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
