"""The message codec for port 2377: length-prefixed msgpack frames and a request/reply peer.

Frame format (docs/contracts.md, "The 2377 protocol"): a 4-byte big-endian unsigned length,
then that many bytes holding one msgpack map. Frames larger than :data:`MAX_FRAME` are refused.

On top of frames, :class:`Peer` multiplexes requests, replies and one-way pushes over one
connection, in both directions:

- request  ``{"t": type, "id": n, "b": body}``  (``n`` > 0, unique per sender)
- reply    ``{"t": "reply", "id": n, "b": body}``
- error    ``{"t": "error", "id": n, "msg": str}``
- push     ``{"t": type, "b": body}``  (no ``id``; no reply is sent)

Incoming requests are handled concurrently (one task each), so a handler may itself make a
request on the same peer. Incoming pushes are handled one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from shoal import tlsutil
from shoal.util import wait_timeout

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame body accepted or sent, in bytes (64 MiB)."""

DEFAULT_TIMEOUT = 10.0
"""Default seconds :meth:`Peer.request` waits for a reply."""

_LEN = struct.Struct(">I")


class WireError(Exception):
    """A transport-level failure on a 2377 connection: closed, malformed frame, timeout."""


class RemoteError(WireError):
    """The remote side answered a request with ``{"t": "error", "msg": ...}``.

    ``msg`` holds the remote's message verbatim (e.g. ``"invalid join token"``).
    """

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


Handler = Callable[["Peer", str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""``async def handler(peer, type, body) -> dict | None``: answers a request (the dict is the
reply body; None means ``{}``) or consumes a push (the return value is ignored). Raising
:class:`RemoteError` or ``ValueError``/``PermissionError``/``LookupError`` sends its message
back as the error; any other exception is logged and sent as ``"internal error: ..."``."""


def encode_frame(msg: dict[str, Any]) -> bytes:
    """Return ``msg`` (a dict of msgpack-able values) as one frame (length prefix + msgpack).

    Raises :class:`WireError` if the encoded body exceeds :data:`MAX_FRAME` or is not encodable.
    """
    try:
        body: bytes = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"cannot encode frame: {e}") from e
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one frame from ``reader`` and return its msgpack map.

    Raises :class:`WireError` on EOF ("connection closed"), a length over :data:`MAX_FRAME`,
    or a body that is not a msgpack map.
    """
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        raise WireError("connection closed") from e
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise WireError(f"peer sent a frame of {n} bytes, over the {MAX_FRAME}-byte limit")
    try:
        data = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise WireError("connection closed in the middle of a frame") from e
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise WireError(f"malformed frame: {e}") from e
    if not isinstance(msg, dict):
        raise WireError(f"malformed frame: expected a map, got {type(msg).__name__}")
    return msg


async def write_frame(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    """Write ``msg`` as one frame to ``writer`` and wait for the buffer to drain.

    Raises :class:`WireError` if it cannot be encoded or the connection is gone.
    """
    data = encode_frame(msg)
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, RuntimeError, OSError) as e:
        raise WireError(f"connection lost while writing: {e}") from e


class Peer:
    """One end of a 2377 connection: requests with replies, pushes, and a handler for incoming ones.

    Create it over an open stream pair, then call :meth:`start` to run the read loop.
    ``handler`` (see :data:`Handler`) serves incoming requests and pushes; without one,
    requests are answered with an error and pushes are dropped.
    ``info`` is a free dict for the owner (the server stores the peer's identity there).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler | None = None,
        name: str = "",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.name = name or str(writer.get_extra_info("peername"))
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._write_lock = asyncio.Lock()
        self._pushes: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.close_reason: str = ""

    # -- properties -------------------------------------------------------------------------

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS object of the connection (None on a plain TCP connection)."""
        obj = self.writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The remote (ip, port) of the connection, or None if unknown."""
        pn = self.writer.get_extra_info("peername")
        if isinstance(pn, tuple) and len(pn) >= 2:
            return (str(pn[0]), int(pn[1]))
        return None

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._closed.is_set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, first_frame: dict[str, Any] | None = None) -> None:
        """Start the read loop (and the push worker). Call once. ``first_frame``: a frame the
        owner already read from the stream (to route the connection); it is handled first."""
        if self._reader_task is not None:
            raise RuntimeError("Peer.start() called twice")
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"wire-read {self.name}")
        self._push_task = asyncio.create_task(self._push_loop(), name=f"wire-push {self.name}")
        if first_frame is not None:
            self._dispatch(first_frame)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._closed.wait()

    async def close(self, reason: str = "closed locally") -> None:
        """Close the connection: fail pending requests with :class:`WireError`, stop tasks, close the socket.

        Safe to call more than once and from within a handler.
        """
        self._shutdown(reason)
        cur = asyncio.current_task()
        tasks = [t for t in (self._reader_task, self._push_task, *self._tasks) if t is not None and t is not cur]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WireError(f"connection to {self.name} closed: {reason}"))
        self._pending.clear()
        self._pushes.put_nowait(None)
        with contextlib.suppress(Exception):
            self.writer.close()

    # -- outgoing ---------------------------------------------------------------------------

    async def _write(self, msg: dict[str, Any]) -> None:
        if self.closed:
            raise WireError(f"connection to {self.name} is closed ({self.close_reason})")
        data = encode_frame(msg)
        async with self._write_lock:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, RuntimeError, OSError) as e:
                self._shutdown(f"write failed: {e}")
                raise WireError(f"connection to {self.name} lost while writing: {e}") from e

    async def request(self, type: str, body: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Send request ``type`` with ``body`` and return the reply body.

        Raises :class:`RemoteError` if the remote answers with an error, :class:`WireError` if the
        connection closes or no reply comes within ``timeout`` seconds.
        """
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._write({"t": type, "id": rid, "b": body})
            try:
                return await wait_timeout(fut, timeout)
            except TimeoutError as e:
                raise WireError(f"no reply to {type!r} from {self.name} within {timeout:g} s") from e
        finally:
            self._pending.pop(rid, None)

    async def send(self, type: str, body: dict[str, Any]) -> None:
        """Send a one-way push ``type`` with ``body`` (no reply). Raises :class:`WireError` if closed."""
        await self._write({"t": type, "b": body})

    # -- incoming ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "connection closed by peer"
        try:
            while True:
                msg = await read_frame(self.reader)
                self._dispatch(msg)
        except WireError as e:
            reason = str(e)
        except (ConnectionError, OSError, ssl.SSLError) as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = "closed locally"
            raise
        finally:
            self._shutdown(reason)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        rid = msg.get("id")
        if t in ("reply", "error"):
            fut = self._pending.get(rid) if isinstance(rid, int) else None
            if fut is None or fut.done():
                log.debug("%s: late or unknown %s for id %r", self.name, t, rid)
                return
            if t == "reply":
                b = msg.get("b")
                fut.set_result(b if isinstance(b, dict) else {})
            else:
                fut.set_exception(RemoteError(str(msg.get("msg", "unknown error"))))
            return
        if not isinstance(t, str):
            log.warning("%s: frame without a type: %r", self.name, msg)
            return
        body = msg.get("b")
        if not isinstance(body, dict):
            body = {}
        if isinstance(rid, int):
            task = asyncio.create_task(self._serve(t, rid, body), name=f"wire-serve {t}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._pushes.put_nowait((t, body))

    async def _serve(self, type: str, rid: int, body: dict[str, Any]) -> None:
        try:
            if self.handler is None:
                raise RemoteError(f"unknown request type {type!r}")
            result = await self.handler(self, type, body)
            reply: dict[str, Any] = {"t": "reply", "id": rid, "b": result or {}}
        except asyncio.CancelledError:
            raise
        except RemoteError as e:
            reply = {"t": "error", "id": rid, "msg": e.msg}
        except (ValueError, PermissionError, LookupError) as e:
            reply = {"t": "error", "id": rid, "msg": str(e)}
        except Exception as e:
            log.exception("%s: handler for %r failed", self.name, type)
            reply = {"t": "error", "id": rid, "msg": f"internal error: {e}"}
        with contextlib.suppress(WireError):
            await self._write(reply)

    async def _push_loop(self) -> None:
        while True:
            item = await self._pushes.get()
            if item is None:
                return
            t, body = item
            if self.handler is None:
                continue
            try:
                await self.handler(self, t, body)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler for push %r failed", self.name, t)


async def connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    handler: Handler | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    server_hostname: str | None = None,
) -> Peer:
    """Open a connection to ``host:port`` (TLS when ``ssl_context`` is given), start and return a :class:`Peer`.

    ``server_hostname`` is the name checked against the server certificate (the manager's
    certificates name ``swarm-manager``); ignored without TLS.
    Raises :class:`WireError` with the OS's reason ("could not connect to H:P: connection
    refused") or on timeout, and ``ssl.SSLError`` subclasses are wrapped as well.
    """
    where = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=ssl_context,
                server_hostname=(server_hostname or host) if ssl_context is not None else None,
                ssl_handshake_timeout=timeout if ssl_context is not None else None,
            ),
            timeout,
        )
    except TimeoutError as e:
        raise WireError(f"could not connect to {where}: timed out after {timeout:g} s") from e
    except ssl.SSLError as e:
        raise WireError(f"TLS handshake with {where} failed: {e.reason or e}") from e
    except OSError as e:
        reason = (os.strerror(e.errno) if e.errno else (e.strerror or str(e))).lower()
        raise WireError(f"could not connect to {where}: {reason}") from e
    peer = Peer(reader, writer, handler, name=where)
    peer.start()
    return peer


async def connect_node(
    host: str,
    port: int,
    certs_dir: tlsutil.PathLike,
    handler: Handler | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Peer:
    """:func:`connect` to a manager's 2377 as this node: mutual TLS with the node certificate in
    ``certs_dir`` (:func:`shoal.tlsutil.node_client_context`), the manager verified against the
    cluster CA under its name :data:`shoal.tlsutil.MANAGER_SERVER_NAME`. Raises as :func:`connect`."""
    return await connect(host, port, tlsutil.node_client_context(certs_dir), handler, timeout=timeout,
                         server_hostname=tlsutil.MANAGER_SERVER_NAME)
