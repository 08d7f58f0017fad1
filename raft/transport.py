"""Raft message transport: msgpack frames over TCP (optionally mutual TLS) between managers.

Peers are addressed by Raft node ID → ``"host:port"``. Frames are :mod:`shoal.rpc.wire` frames
(4-byte big-endian length + one msgpack map). A connection opens with
``{"t": "raft-hello", "from": <node id>, "ch", "addr": <its advertised host:port>}`` and then carries ``{"t": "raft", "m": <message dict>}``
frames, where the message dict is :func:`raft.core.message_to_dict`.

Design (after etcd's rafthttp, written our way):

- one outbound connection per peer per *channel*; two channels: ``"msg"`` for everything and
  ``"snap"`` for ``MsgSnap`` chunks, so a large snapshot never queues ahead of heartbeats;
- :meth:`Transport.send` never blocks: each channel has a bounded queue and a full queue drops
  the message (Raft retransmits: heartbeats, probes, snapshot chunks are resent);
- a broken connection is re-dialled with exponential backoff (50 ms doubling up to 2 s);
- inbound connections are one-way: every frame read is handed to ``on_message``; when a
  peer's ``"msg"`` connection ends by the peer's doing (EOF or reset: e.g. its process died),
  ``on_peer_lost(peer_id)`` is called (the driver uses it to notice a dead leader early);
- a frame for a connected peer with nothing queued and little unsent is written to the socket
  at once (no task switch: the leader's MsgApp is on the wire before its own fsync starts);
  otherwise it is queued, and frames queued while a connection was busy go out in one write;
- with TLS, an inbound connection must present a certificate of the cluster CA with
  OU ``swarm-manager`` (:func:`shoal.rpc.tlsutil.peer_identity`), and ``peer_check`` (if given)
  must accept the pair (certificate identity, Raft ID in the hello), else it is closed (the
  manager's check: the node is a current member and was not removed); when a peer is removed
  (:meth:`Transport.remove_peer`, on a configuration change) its inbound connections are closed
  too, so a member taken out of the configuration is heard no more;
- inbound frames are read within :data:`shoal.rpc.wire.RAFT_LIMITS` (64 MiB: a MsgApp carries at
  least one entry, as large as the largest store transaction; snapshots come in chunks of the
  driver's ``max_size_per_msg``, 1 MiB), and one at a time: a peer that sends faster than the
  Raft loop steps its messages is slowed by TCP;
- the transport may listen itself (:meth:`Transport.start`) or be handed connections accepted
  by another server whose first frame was the hello (:meth:`Transport.accept`: the manager's
  2377 server does this, so Raft shares the cluster port with the dispatcher and the CA).

Errors: a malformed frame or message closes that inbound connection (logged); nothing is raised
to the Raft loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from raft.core import Message, message_from_dict, message_to_dict
from raft.core.messages import MsgSnap
from shoal.rpc.tlsutil import peer_identity
from shoal.rpc.wire import RAFT_LIMITS, WireError, encode_frame, read_frame

__all__ = ["PeerCheck", "Transport", "parse_addr"]

PeerCheck = Callable[[tuple[str, str] | None, int], str | None]
"""``check(identity, raft_id) -> None | reason``: ``identity`` is ``(CN, role)`` of the peer's
certificate (None without TLS), ``raft_id`` the ID its hello claims; return a reason to refuse."""

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
"""Seconds a dial may take before it is abandoned and retried (after the backoff)."""
USER_TIMEOUT = 3.0
"""Seconds data may stay unacknowledged on a connection before the kernel drops it
(``TCP_USER_TIMEOUT``, tcp(7)). The leader sends heartbeats every 100 ms, so a link cut silently
(nftables drop, a dead host) is noticed within this; otherwise TCP's retransmission backoff keeps
the dead connection for minutes and the link comes back long after the network did."""

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
_CLOSED = b""  # queued by _Channel._watch: the connection is gone (a real frame is never empty)
DIRECT_WRITE_LIMIT = 256 * 1024
"""Bytes unsent on a connection above which frames go through the bounded queue again."""


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` allowed) into ``(host, port)``.

    Raises ValueError naming the address when it has no valid port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer address must be host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def _set_user_timeout(w: asyncio.StreamWriter, seconds: float) -> None:
    """Set ``TCP_USER_TIMEOUT`` on the connection's socket (best effort; Linux only)."""
    sock = w.get_extra_info("socket")
    opt = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or opt is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, opt, int(seconds * 1000))


class _Channel:
    """One outbound connection to one peer with its bounded queue and dialler task."""

    def __init__(self, owner: Transport, peer_id: int, kind: str, maxsize: int) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.kind = kind
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.writer: asyncio.StreamWriter | None = None  # set while connected (hello sent)
        self.task = asyncio.create_task(self._run(), name=f"raft-send {peer_id}/{kind}")

    def put(self, frame: bytes) -> None:
        w = self.writer
        if (w is not None and self.queue.empty() and not w.is_closing()
                and w.transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT):
            # Order is kept: the queue is empty, and the sender task writes a frame in the same
            # step that takes it off the queue.
            w.write(frame)
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            addr = self.owner.peers.get(self.peer_id)
            if addr is None or self.owner._closed:
                return
            writer: asyncio.StreamWriter | None = None
            watch: asyncio.Task[None] | None = None
            try:
                host, port = parse_addr(addr)
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(
                        host, port, ssl=self.owner.client_ssl,
                        server_hostname=self.owner.server_hostname if self.owner.client_ssl else None),
                    timeout=CONNECT_TIMEOUT)
                writer = w
                _set_user_timeout(w, USER_TIMEOUT)
                if self.owner._closed:  # closed while dialling (wait_for may have lost the cancel)
                    w.close()
                    return
                w.write(encode_frame({"t": "raft-hello", "from": self.owner.node_id, "ch": self.kind,
                                          "addr": self.owner.advertise}))
                await w.drain()
                backoff = BACKOFF_MIN
                self.writer = w
                watch = asyncio.create_task(self._watch(r))
                while True:
                    frame = await self.queue.get()
                    if frame is _CLOSED:
                        raise ConnectionResetError("the peer closed the connection")
                    if self.queue.empty():
                        w.write(frame)
                    else:  # batch what is already queued into one write and one drain
                        batch = [frame]
                        while not self.queue.empty():
                            batch.append(self.queue.get_nowait())
                        w.write(b"".join(batch))
                    await w.drain()
            except asyncio.CancelledError:
                self.writer = None
                if watch is not None:
                    watch.cancel()
                if writer is not None:
                    writer.close()
                raise
            except (OSError, ValueError, WireError, TimeoutError, ssl.SSLError, RuntimeError) as e:
                # RuntimeError: uvloop's write on a transport it already closed
                log.debug("raft link %d→%d (%s) to %s failed: %s", self.owner.node_id, self.peer_id,
                          self.kind, addr, e)
            self.writer = None
            if watch is not None:
                watch.cancel()
            if writer is not None:
                writer.close()
                # asyncio.wait, not wait_for: on Python 3.11 wait_for loses a cancellation that
                # arrives as the inner future completes (Transport.close would then wait for ever).
                closing = asyncio.ensure_future(writer.wait_closed())
                await asyncio.wait((closing,), timeout=1.0)
                if not closing.done():
                    closing.cancel()
                elif not closing.cancelled() and closing.exception() is not None:
                    log.debug("raft link %d→%d: close: %s", self.owner.node_id, self.peer_id,
                              closing.exception())
            # Messages queued while disconnected are stale; Raft will resend what matters.
            while not self.queue.empty():
                self.queue.get_nowait()
                self.dropped += 1
            if self.owner._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Notice at once when the peer closes or resets our outbound connection (it never
        writes on it, so a read returns only then): otherwise the next frame, e.g. the one vote
        reply of an election, would be lost on the dead connection before we redial."""
        with contextlib.suppress(Exception):
            await reader.read(1)
        self.writer = None
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(_CLOSED)


class Transport:
    """Sends and receives Raft messages for node ``node_id``.

    ``peers``: ``{node_id: "host:port"}`` of the other members (this node may be included; it
    is ignored). ``on_message(msg)`` is called on the event loop for every message received.
    ``server_ssl``/``client_ssl``: TLS contexts for the listener and the dialler (None = plain
    TCP, for tests on loopback); ``server_hostname`` is the name checked in the peer's
    certificate (managers' certificates carry the SAN ``swarm-manager``).
    ``queue_size``: frames buffered per peer and channel before dropping. ``peer_check``: see
    :data:`PeerCheck` (e.g. the certificate's node ID must map to the claimed Raft ID).
    ``on_peer_lost(peer_id)``: called on the loop when a peer's inbound ``"msg"`` connection is
    closed or reset by the peer (not by us, not for a malformed frame).
    """

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        on_message: Callable[[Message], None],
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        server_hostname: str = "swarm-manager",
        queue_size: int = 4096,
        peer_check: PeerCheck | None = None,
        on_peer_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.on_peer_lost = on_peer_lost
        self.peer_check = peer_check
        self.advertise = peers.get(node_id, "")
        self.peers: dict[int, str] = {i: a for i, a in peers.items() if i != node_id}
        for a in self.peers.values():
            parse_addr(a)
        self.on_message = on_message
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.server_hostname = server_hostname
        self.queue_size = queue_size
        self.last_heard: dict[int, float] = {}
        self._channels: dict[tuple[int, str], _Channel] = {}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Task[None]] = set()
        self._inbound_from: dict[int, set[asyncio.Task[None]]] = {}
        self._closed = False
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`). Raises OSError."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.server_ssl)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def add_peer(self, node_id: int, addr: str) -> None:
        """Add or re-address peer ``node_id`` (ValueError for a bad address)."""
        if node_id == self.node_id:
            return
        parse_addr(addr)
        if self.peers.get(node_id) != addr:
            self.peers[node_id] = addr
            for kind in ("msg", "snap"):
                ch = self._channels.pop((node_id, kind), None)
                if ch is not None:
                    ch.task.cancel()

    def remove_peer(self, node_id: int) -> None:
        """Forget peer ``node_id`` and close its connections, outbound and inbound."""
        self.peers.pop(node_id, None)
        for kind in ("msg", "snap"):
            ch = self._channels.pop((node_id, kind), None)
            if ch is not None:
                ch.task.cancel()
        inbound = self._inbound_from.pop(node_id, set())
        if inbound:
            log.info("raft: closing %d inbound connection(s) of %d: no longer a member", len(inbound), node_id)
        for t in inbound:
            t.cancel()

    def send(self, m: Message) -> None:
        """Queue ``m`` for ``m.to``; never blocks. Dropped if the peer is unknown or its queue is full."""
        if self._closed or m.to not in self.peers:
            return
        kind = "snap" if isinstance(m, MsgSnap) else "msg"
        ch = self._channels.get((m.to, kind))
        if ch is None or ch.task.done():
            ch = _Channel(self, m.to, kind, self.queue_size)
            self._channels[(m.to, kind)] = ch
        try:
            frame = encode_frame({"t": "raft", "m": message_to_dict(m)})
        except WireError as e:
            log.error("cannot encode raft message %s to %d: %s", type(m).__name__, m.to, e)
            return
        ch.put(frame)

    def dropped(self) -> int:
        """Total messages dropped on full or disconnected queues (a metric)."""
        return sum(c.dropped for c in self._channels.values())

    def reachable(self, within: float) -> set[int]:
        """Peers heard from in the last ``within`` seconds (monotonic clock)."""
        now = time.monotonic()
        return {i for i, t in self.last_heard.items() if now - t <= within and i in self.peers}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        ident = peer_identity(obj) if isinstance(obj, ssl.SSLObject) else None
        if self.server_ssl is not None and (ident is None or ident[1] != "manager"):
            log.info("raft connection refused: peer certificate %s is not a manager's", ident)
            writer.close()
            return
        try:
            hello = await asyncio.wait_for(read_frame(reader, RAFT_LIMITS), 10.0)
        except (WireError, OSError, ssl.SSLError, TimeoutError) as e:
            log.debug("raft inbound connection closed before its hello: %s", e)
            writer.close()
            return
        await self.accept(reader, writer, hello)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     hello: dict[str, Any]) -> None:
        """Serve one inbound connection whose first frame ``hello`` was already read (by this
        transport's listener or by another server sharing the port). Returns when the
        connection closes; never raises (a refused or malformed connection is logged and closed)."""
        task = asyncio.current_task()
        assert task is not None
        self._inbound.add(task)
        frm: int | None = None
        try:
            if self._closed:
                raise WireError("transport closed")
            ident: tuple[str, str] | None = None
            obj = writer.get_extra_info("ssl_object")
            if isinstance(obj, ssl.SSLObject):
                ident = peer_identity(obj)
            if self.server_ssl is not None or ident is not None:
                if ident is None or ident[1] != "manager":
                    raise WireError(f"raft connection refused: peer certificate {ident} is not a manager's")
            if hello.get("t") != "raft-hello" or not isinstance(hello.get("from"), int):
                raise WireError(f"expected a raft-hello frame, got {str(hello)[:80]}")
            frm, addr = hello["from"], hello.get("addr")
            if self.peer_check is not None:
                reason = self.peer_check(ident, frm)
                if reason is not None:
                    raise WireError(f"raft connection from {frm} refused: {reason}")
            self._inbound_from.setdefault(frm, set()).add(task)
            if frm not in self.peers and isinstance(addr, str) and addr:
                # A member we have not heard of (e.g. the leader, for a node that just joined):
                # learn where to answer it.
                with contextlib.suppress(ValueError):
                    self.add_peer(frm, addr)
            while True:
                f = await read_frame(reader, RAFT_LIMITS)
                if f.get("t") != "raft" or not isinstance(f.get("m"), dict):
                    raise WireError(f"expected a raft frame, got type {f.get('t')!r}")
                m = message_from_dict(f["m"])
                if m.frm != frm:
                    raise WireError(f"raft message from {m.frm} on the connection of {frm}")
                self.last_heard[m.frm] = time.monotonic()
                try:
                    self.on_message(m)
                except Exception:  # the Raft loop must not die of one message
                    log.exception("raft: handling %s from %d failed", type(m).__name__, m.frm)
        except (WireError, ValueError, KeyError, TypeError, OSError, ssl.SSLError) as e:
            if not self._closed:
                log.info("raft inbound connection closed: %s", e)
                by_peer = reader.at_eof() or isinstance(e, ConnectionResetError)
                if (by_peer and frm is not None and hello.get("ch", "msg") == "msg"
                        and self.on_peer_lost is not None):
                    try:
                        self.on_peer_lost(frm)
                    except Exception:
                        log.exception("raft: on_peer_lost(%d) failed", frm)
        except asyncio.CancelledError:
            pass
        finally:
            self._inbound.discard(task)
            if frm is not None:
                mine = self._inbound_from.get(frm)
                if mine is not None:
                    mine.discard(task)
                    if not mine:
                        del self._inbound_from[frm]
            writer.close()

    async def close(self) -> None:
        """Stop listening, close every connection and stop the dialler tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[Any]] = [c.task for c in self._channels.values()] + list(self._inbound)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._channels.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
