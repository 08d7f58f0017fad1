"""The message codec for port 2377: length-prefixed msgpack frames and a request/reply peer.

Frame format (docs/contracts.md, "The 2377 protocol"): a 4-byte big-endian unsigned length,
then that many bytes holding one msgpack map. Nothing larger than :data:`MAX_FRAME` is sent;
what a reader accepts is bounded by a :class:`Limits` chosen for who the peer is (a peer
without a certificate gets :data:`PREAUTH_LIMITS`, 64 KiB): the frame's length, and what
msgpack may build from it (the length of one string, binary, array and map, and for untrusted
peers the number of maps and arrays in the whole frame), so a small frame cannot make the
reader build gigabytes of objects.

On top of frames, :class:`Peer` multiplexes requests, replies and one-way pushes over one
connection, in both directions:

- request  ``{"t": type, "id": n, "b": body}``  (``n`` > 0, unique per sender)
- reply    ``{"t": "reply", "id": n, "b": body}``
- error    ``{"t": "error", "id": n, "msg": str}``
- push     ``{"t": type, "b": body}``  (no ``id``; no reply is sent)

Incoming requests are handled concurrently (one task each), so a handler may itself make a
request on the same peer; at most ``max_inflight`` of them (and about two frames' worth of
bytes) at a time: beyond that the peer stops reading, so a peer that floods requests is slowed
by TCP, not buffered. Incoming pushes are handled one at a time, in arrival order; a peer that
has more than ``max_pushes`` of them waiting is disconnected. A write that the remote does not
read for ``write_timeout`` seconds closes the connection.
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
from dataclasses import dataclass
from typing import Any

import msgpack

from shoal.base.util import wait_timeout
from shoal.rpc import tlsutil

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

MAX_FRAME = 64 * MiB
"""Largest frame body sent, in bytes (64 MiB), and the largest any reader accepts."""

DEFAULT_TIMEOUT = 10.0
"""Default seconds :meth:`Peer.request` waits for a reply."""

MAX_INFLIGHT = 64
"""Default number of requests from one peer served at the same time (:class:`Peer`)."""

MAX_PUSHES = 256
"""Default number of pushes from one peer waiting to be handled before it is disconnected."""

WRITE_TIMEOUT = 30.0
"""Default seconds a write may wait for the remote to read anything before the connection is
closed (:class:`Peer`)."""

CLOSE_LINGER = 2.0
"""Seconds a closed connection may keep unsent data before its socket is aborted."""

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


class Refused(RemoteError):
    """Raised by a handler: answer the request with this error, then close the connection
    (e.g. "node X was removed from the swarm"). For a push, the connection is closed."""


@dataclass(frozen=True)
class Limits:
    """What a reader accepts in one frame from a peer.

    ``name`` names the limit in errors ("frame over pre-authentication limit …"); ``frame``:
    bytes of the body; ``str_len`` / ``bin_len``: bytes of one string / binary; ``array_len`` /
    ``map_len``: items of one array / map (msgpack's ``max_*_len``; ext types are refused);
    ``containers``: maps and arrays in the whole frame, None for no count (each empty map costs
    ~64 bytes of Python memory for one byte of frame, so untrusted peers get a count).
    """

    name: str
    frame: int
    str_len: int
    bin_len: int
    array_len: int
    map_len: int
    containers: int | None = None


PREAUTH_LIMITS = Limits("pre-authentication", 64 * KiB, 16 * KiB, 16 * KiB, 1024, 1024, 4096)
"""A peer without a node certificate: ``ca.root`` / ``ca.join`` (a CSR and a NodeDescription)."""

WORKER_LIMITS = Limits("worker", 4 * MiB, 4 * MiB, 4 * MiB, 128 * KiB, 128 * KiB, 256 * KiB)
"""A manager reading a worker: ``session.*`` requests, ``logs.read`` replies (which the worker
cuts to :data:`LOGS_REPLY_BYTES`)."""

MANAGER_LIMITS = Limits("manager", 16 * MiB, 16 * MiB, 16 * MiB, 512 * KiB, 512 * KiB)
"""A manager reading another current manager's requests and replies over a :class:`Peer`
(``control.call`` with a control API call's arguments, ``logs.collect`` replies, forwarded ``ca.join``)."""

RAFT_LIMITS = Limits("Raft", MAX_FRAME, MAX_FRAME, MAX_FRAME, 512 * KiB, 512 * KiB)
"""Raft messages between current members: an entry is as large as the largest store
transaction (MsgApp carries at least one entry); snapshots travel in 1 MiB chunks."""

DEFAULT_LIMITS = Limits("default", MAX_FRAME, MAX_FRAME, MAX_FRAME, 512 * KiB, 512 * KiB)
"""A node reading the manager it verified against the cluster CA (assignments: the node's whole
task set) — and what :func:`read_frame` and :class:`Peer` use unless told otherwise."""

LOGS_REPLY_BYTES = 3 * MiB
"""About how many bytes of log lines one ``logs.read`` reply may carry (the newest lines are
kept), so it fits :data:`WORKER_LIMITS`."""

LOGS_REPLY_LINES = 100_000
"""Most log lines in one ``logs.read`` / ``logs.collect`` reply (the newest are kept)."""


def fit_log_lines(lines: list[dict[str, Any]], max_bytes: int = LOGS_REPLY_BYTES,
                  max_lines: int = LOGS_REPLY_LINES) -> list[dict[str, Any]]:
    """The newest of ``lines`` (a ``logs.read`` reply's ``lines``, oldest first) that fit in
    about ``max_bytes`` encoded and ``max_lines`` lines, oldest first."""
    total = 0
    keep = 0
    for ln in reversed(lines):
        # msgpack keys and headers ~48 bytes; UTF-8 takes up to 4 bytes a character
        size = 48 + sum(len(v) if isinstance(v, bytes) or v.isascii() else 4 * len(v)
                        for v in ln.values() if isinstance(v, str | bytes))
        if keep >= max_lines or total + size > max_bytes:
            break
        total += size
        keep += 1
    return lines[len(lines) - keep:] if keep < len(lines) else lines


Handler = Callable[["Peer", str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""``async def handler(peer, type, body) -> dict | None``: answers a request (the dict is the
reply body; None means ``{}``) or consumes a push (the return value is ignored). Raising
:class:`RemoteError` or ``ValueError``/``PermissionError``/``LookupError`` sends its message
back as the error (:class:`Refused` also closes the connection); any other exception is
logged and sent as ``"internal error: ..."``."""


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


class _TooMany(Exception):
    pass


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Decode one frame body (without its length prefix) into its msgpack map within ``limits``.

    Raises :class:`WireError` ("frame over <name> limit: …" when a limit is passed, "malformed
    frame: …" otherwise, e.g. for a body that is not a map).
    """
    hooks: dict[str, Callable[[Any], Any]] = {}
    if limits.containers is not None:
        left = limits.containers

        def count(obj: Any) -> Any:
            nonlocal left
            left -= 1
            if left < 0:
                raise _TooMany
            return obj

        hooks = {"object_hook": count, "list_hook": count}
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False, max_str_len=limits.str_len,
                              max_bin_len=limits.bin_len, max_array_len=limits.array_len,
                              max_map_len=limits.map_len, max_ext_len=0, **hooks)
    except _TooMany:
        raise WireError(f"frame over {limits.name} limit: more than {limits.containers} maps and "
                        "arrays") from None
    except Exception as e:  # msgpack raises several unrelated types
        if "exceeds max_" in str(e):
            raise WireError(f"frame over {limits.name} limit: {e}") from None
        raise WireError(f"malformed frame: {e}") from None
    if not isinstance(msg, dict):
        raise WireError(f"malformed frame: expected a map, got {type(msg).__name__}")
    return msg


async def _read_sized(reader: asyncio.StreamReader, limits: Limits) -> tuple[dict[str, Any], int]:
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        raise WireError("connection closed") from e
    (n,) = _LEN.unpack(head)
    if n > limits.frame:
        raise WireError(f"frame over {limits.name} limit: {n} bytes, at most {limits.frame}")
    try:
        data = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise WireError("connection closed in the middle of a frame") from e
    return decode_frame(data, limits), n


async def read_frame(reader: asyncio.StreamReader, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Read one frame from ``reader`` and return its msgpack map, within ``limits``.

    Raises :class:`WireError` on EOF ("connection closed"), a length over ``limits.frame``
    ("frame over <name> limit: N bytes, at most L"), a body over the decode limits, or a body
    that is not a msgpack map (see :func:`decode_frame`). The body is read only after its
    length was checked.
    """
    msg, _ = await _read_sized(reader, limits)
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


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection of ``writer`` at once (unsent data is discarded; no error)."""
    with contextlib.suppress(Exception):
        writer.transport.abort()


class Peer:
    """One end of a 2377 connection: requests with replies, pushes, and a handler for incoming ones.

    Create it over an open stream pair, then call :meth:`start` to run the read loop.
    ``handler`` (see :data:`Handler`) serves incoming requests, and pushes unless
    ``push_handler`` is given; without one, requests are answered with an error and pushes are
    dropped. ``info`` is a free dict for the owner (the server stores the peer's identity there).

    Bounds (see the module doc): ``limits`` for every frame read; ``max_inflight`` requests
    served at once; ``max_pushes`` pushes waiting; ``write_timeout`` seconds without progress
    on a write (None: no limit); ``idle_timeout`` seconds the peer may stay silent while none
    of its requests is being served, the first frame included (None: no limit; the 2377 server
    sets it for peers without a certificate).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler | None = None,
        name: str = "",
        *,
        limits: Limits = DEFAULT_LIMITS,
        max_inflight: int = MAX_INFLIGHT,
        max_pushes: int = MAX_PUSHES,
        write_timeout: float | None = WRITE_TIMEOUT,
        idle_timeout: float | None = None,
        push_handler: Handler | None = None,
    ) -> None:
        if max_inflight < 1 or max_pushes < 1:
            raise ValueError("max_inflight and max_pushes must be at least 1")
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.push_handler = push_handler
        self.name = name or str(writer.get_extra_info("peername"))
        self.info: dict[str, Any] = {}
        self.limits = limits
        self.max_inflight = max_inflight
        self.max_pushes = max_pushes
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self._inflight_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
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

    @property
    def inflight(self) -> int:
        """Requests from the remote being served now."""
        return len(self._tasks)

    @property
    def pushes_waiting(self) -> int:
        """Pushes from the remote waiting to be handled."""
        return self._pushes.qsize()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, first_frame: dict[str, Any] | None = None) -> None:
        """Start the read loop (and the push worker). Call once. ``first_frame``: a frame the
        owner already read from the stream (to route the connection); it is handled first."""
        if self._reader_task is not None:
            raise RuntimeError("Peer.start() called twice")
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"wire-read {self.name}")
        self._push_task = asyncio.create_task(self._push_loop(), name=f"wire-push {self.name}")
        if first_frame is not None:
            try:
                self._dispatch(first_frame, 0)
            except WireError as e:
                self._shutdown(str(e))

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
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_LINGER)

    def _shutdown(self, reason: str, hard: bool = False) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        self._room.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WireError(f"connection to {self.name} closed: {reason}"))
        self._pending.clear()
        self._pushes.put_nowait(None)
        if hard:
            abort(self.writer)
            return
        with contextlib.suppress(Exception):
            self.writer.close()
        # a remote that does not read would keep the socket (and its unsent data) for ever
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(CLOSE_LINGER, abort, self.writer)

    # -- outgoing ---------------------------------------------------------------------------

    async def _write(self, msg: dict[str, Any]) -> None:
        await self._write_data(encode_frame(msg))

    async def _write_data(self, data: bytes) -> None:
        if self.closed:
            raise WireError(f"connection to {self.name} is closed ({self.close_reason})")
        async with self._write_lock:
            if self.closed:
                raise WireError(f"connection to {self.name} is closed ({self.close_reason})")
            try:
                self.writer.write(data)
                await self._drain()
            except (ConnectionError, RuntimeError, OSError) as e:
                self._shutdown(f"write failed: {e}")
                raise WireError(f"connection to {self.name} lost while writing: {e}") from e

    async def _drain(self) -> None:
        """Wait until the write buffer drains; if the remote reads nothing for
        ``write_timeout`` seconds, abort the connection and raise :class:`WireError`."""
        transport = self.writer.transport
        while True:
            before = transport.get_write_buffer_size()
            try:
                await wait_timeout(self.writer.drain(), self.write_timeout)
                return
            except TimeoutError:
                left = transport.get_write_buffer_size()
                if left < before:
                    continue  # slow, but reading
                reason = (f"the peer read nothing for {self.write_timeout:g} s "
                          f"({left} bytes unsent): closing the connection")
                self._shutdown(reason, hard=True)
                raise WireError(f"connection to {self.name}: {reason}") from None

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
        budget = 2 * self.limits.frame
        try:
            while True:
                # back-pressure: stop reading while too many requests are being served
                while len(self._tasks) >= self.max_inflight or self._inflight_bytes >= budget:
                    self._room.clear()
                    await self._room.wait()
                    if self.closed:
                        return
                try:
                    msg, n = await wait_timeout(_read_sized(self.reader, self.limits), self.idle_timeout)
                except TimeoutError:
                    raise WireError(f"no frame within {self.idle_timeout:g} s") from None
                self._dispatch(msg, n)
        except WireError as e:
            reason = str(e)
        except (ConnectionError, OSError, ssl.SSLError) as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = "closed locally"
            raise
        finally:
            self._shutdown(reason)

    def _dispatch(self, msg: dict[str, Any], size: int) -> None:
        """Route one frame. Raises :class:`WireError` for a protocol violation (the connection
        is then closed): a frame without a type, too many pushes waiting."""
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
            raise WireError("malformed frame: no type")
        body = msg.get("b")
        if not isinstance(body, dict):
            body = {}
        if isinstance(rid, int):
            task = asyncio.create_task(self._serve(t, rid, body), name=f"wire-serve {t}")
            self._tasks.add(task)
            self._inflight_bytes += size
            task.add_done_callback(lambda tk, n=size: self._served(tk, n))  # type: ignore[misc]
        else:
            if self._pushes.qsize() >= self.max_pushes:
                raise WireError(f"{self.max_pushes} pushes waiting to be handled: the peer sends "
                                "them faster than they are handled")
            self._pushes.put_nowait((t, body))

    def _served(self, task: asyncio.Task[Any], size: int) -> None:
        self._tasks.discard(task)
        self._inflight_bytes -= size
        self._room.set()

    async def _serve(self, type: str, rid: int, body: dict[str, Any]) -> None:
        refused: str | None = None
        try:
            if self.handler is None:
                raise RemoteError(f"unknown request type {type!r}")
            result = await self.handler(self, type, body)
            reply: dict[str, Any] = {"t": "reply", "id": rid, "b": result or {}}
        except asyncio.CancelledError:
            raise
        except Refused as e:
            reply = {"t": "error", "id": rid, "msg": e.msg}
            refused = e.msg
        except RemoteError as e:
            reply = {"t": "error", "id": rid, "msg": e.msg}
        except (ValueError, PermissionError, LookupError) as e:
            reply = {"t": "error", "id": rid, "msg": str(e)}
        except Exception as e:
            log.exception("%s: handler for %r failed", self.name, type)
            reply = {"t": "error", "id": rid, "msg": f"internal error: {e}"}
        try:
            data = encode_frame(reply)
        except WireError as e:  # e.g. a reply over MAX_FRAME: say so rather than never answer
            log.warning("%s: reply to %r not sent: %s", self.name, type, e)
            data = encode_frame({"t": "error", "id": rid, "msg": f"the reply to {type!r} could not be sent: {e}"})
        with contextlib.suppress(WireError):
            await self._write_data(data)
        if refused is not None:
            await self.close(refused)

    async def _push_loop(self) -> None:
        while True:
            item = await self._pushes.get()
            if item is None:
                return
            t, body = item
            handler = self.push_handler or self.handler
            if handler is None:
                continue
            try:
                await handler(self, t, body)
            except asyncio.CancelledError:
                raise
            except Refused as e:
                self._shutdown(e.msg)
                return
            except (RemoteError, ValueError, PermissionError, LookupError) as e:
                log.info("%s: push %r refused: %s", self.name, t, e)
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
    ``certs_dir`` (:func:`shoal.rpc.tlsutil.node_client_context`), the manager verified against the
    cluster CA under its name :data:`shoal.rpc.tlsutil.MANAGER_SERVER_NAME`. Raises as :func:`connect`."""
    return await connect(host, port, tlsutil.node_client_context(certs_dir), handler, timeout=timeout,
                         server_hostname=tlsutil.MANAGER_SERVER_NAME)
