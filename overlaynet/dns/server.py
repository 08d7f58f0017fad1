"""The node's embedded DNS resolver: one asyncio object serving every container (no namespace
work here).

The worker creates, for each container, a UDP socket and a TCP socket bound inside the
container's network namespace (Docker binds ``127.0.0.11:<random port>`` there and redirects
``:53`` to it with NAT rules; a socket keeps the namespace it was created in), then hands them to
:meth:`Resolver.serve_socket` with the IDs of the networks the container is attached to. One
:class:`Resolver` serves them all from one :class:`~overlaynet.dns.records.DnsTable`.

Per query (moby ``libnetwork/resolver.go`` is the model; the code is Shoal's):

- the wire is parsed with dnspython; a message that does not parse gets ``FORMERR`` (when at
  least its 12-byte header is there and it is not itself a response), else it is dropped; a
  UDP datagram over :data:`MAX_UDP_QUERY` bytes is dropped;
- :func:`~overlaynet.dns.answers.answer` decides from the table; a reply is sent at once (the
  UDP path never leaves ``datagram_received``);
- otherwise the query is forwarded to the upstream resolvers of the ``resolv.conf`` given
  (its ``nameserver`` lines, at most 3 as Docker keeps; re-read when the file changes, checked at
  most once a second): UDP first (from a *connected* socket, so an ICMP port/host unreachable
  fails the attempt at once instead of waiting), TCP when the UDP answer is truncated; an
  upstream that fails, times out, or answers SERVFAIL/REFUSED is followed by the next (Docker's
  order); when none answers, ``SERVFAIL``. The whole forward is bounded by ``upstream_timeout``
  (2 s, below the 5 s a glibc/musl client waits before giving up), each upstream getting an
  equal share of the time left, so the client always gets an answer — ``SERVFAIL`` at once when
  every upstream refuses or is unreachable, after ``upstream_timeout`` when they are silent —
  never silence. A fresh random message ID is used upstream (and the client's restored). At
  most ``max_forwards`` queries are forwarded at once; beyond that a query gets ``SERVFAIL`` at
  once (Docker drops it).
- replies over UDP fit the client's size (512 bytes, or its EDNS payload size); a larger one is
  cut and has TC set, so the client retries over TCP (RFC 1035 4.2.1, RFC 6891).
- TCP: 2-byte length-prefixed messages, several per connection, answered in order; a connection
  idle for ``tcp_idle_timeout`` seconds is closed. At most ``max_tcp_per_endpoint`` connections
  are open at once per container (endpoint) and ``max_tcp_connections`` on the node; a new
  connection beyond either is closed at once, so one container holding idle connections cannot
  starve the others (it only exhausts its own share).

Upstream queries leave from the daemon's own namespace (the host's), so a host-loopback
resolver such as 127.0.0.53 works (Docker dials non-loopback upstreams from inside the
container instead).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from overlaynet.dns.answers import DEFAULT_TTL, Forward, answer, error_response
from overlaynet.dns.records import DnsTable

__all__ = ["MAX_UDP_QUERY", "Endpoint", "Resolver", "ResolverStats", "read_resolv_conf"]

log = logging.getLogger("shoal.overlaynet.dns")

MAX_UDP_QUERY: Final = 4096
"""Bytes: a larger UDP datagram is dropped unread (a query fits 512 bytes in practice)."""

MAX_UPSTREAMS: Final = 3
"""Nameservers of resolv.conf used, in order (Docker's ``maxExtDNS``; glibc's ``MAXNS``)."""

_OWN_ADDRESS: Final = "127.0.0.11"
_RESOLV_CONF_RECHECK: Final = 1.0  # seconds between stat() calls of resolv.conf
_TCP_MAX: Final = 65535


@dataclass(slots=True)
class ResolverStats:
    """Counters since the resolver started: queries received (``udp``/``tcp``), answered from
    the table (``local``), forwarded (``forwarded``), answered SERVFAIL because no upstream
    answered or too many forwards were in flight (``servfail``), malformed (``formerr``:
    answered FORMERR; ``dropped``: too short or too large to answer), ``truncated`` replies."""

    udp: int = 0
    tcp: int = 0
    local: int = 0
    forwarded: int = 0
    servfail: int = 0
    formerr: int = 0
    dropped: int = 0
    truncated: int = 0


def read_resolv_conf(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(nameservers, search_domains)`` of a resolv.conf (resolv.conf(5)): the first
    :data:`MAX_UPSTREAMS` ``nameserver`` addresses (127.0.0.11, the embedded DNS itself, is
    skipped), and the domains of the last ``search`` or ``domain`` line. Raises ``OSError``
    if the file cannot be read."""
    servers: list[str] = []
    search: tuple[str, ...] = ()
    for raw in Path(path).read_text(errors="replace").splitlines():
        fields = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            addr = fields[1].split("%", 1)[0]  # a zone index is of no use here
            if addr != _OWN_ADDRESS and len(servers) < MAX_UPSTREAMS:
                servers.append(addr)
        elif fields[0] in ("search", "domain"):
            search = tuple(fields[1:])
    return tuple(servers), search


def _formerr_from_header(data: bytes) -> bytes | None:
    """A bare FORMERR reply echoing the ID and opcode of an unparsable query, or ``None`` when
    there is no header to echo or the message claims to be a response (never answer those)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags_hi = 0x80 | (data[2] & 0x79)  # QR, the query's opcode and RD
    return data[0:2] + bytes((flags_hi, 0x80 | int(dns.rcode.FORMERR))) + bytes(8)


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns >= 0:
        return max(512, min(query.payload, _TCP_MAX))
    return 512


class Endpoint:
    """The resolver as one container sees it: its UDP and TCP sockets and its networks.
    Made by :meth:`Resolver.serve_socket`; :meth:`close` stops it and closes the sockets."""

    def __init__(self, resolver: Resolver, networks: Iterable[str]) -> None:
        self._resolver = resolver
        self.networks: tuple[str, ...] = ()
        self.set_networks(networks)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.tcp_connections = 0  # open TCP connections of this container
        self.closed = False

    def set_networks(self, networks: Iterable[str]) -> None:
        """Change the networks the container is attached to (network IDs; a set is tried in
        sorted order, a sequence in its order); applies to the next query."""
        if isinstance(networks, set | frozenset):
            self.networks = tuple(sorted(networks))
        else:
            self.networks = tuple(networks)

    @property
    def udp_address(self) -> tuple[str, int]:
        """``(host, port)`` the UDP socket is bound to."""
        assert self._udp is not None
        addr = self._udp.get_extra_info("sockname")
        return str(addr[0]), int(addr[1])

    @property
    def tcp_address(self) -> tuple[str, int]:
        """``(host, port)`` the TCP socket listens on."""
        assert self._tcp is not None
        addr = self._tcp.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    def _spawn(self, coro: Coroutine[Any, Any, None], on_done: Callable[[object], None]) -> None:
        # on_done runs even when the task is cancelled before it starts
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(on_done)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop serving: close both sockets, cancel forwards in flight, drop TCP clients."""
        if self.closed:
            return
        self.closed = True
        self._resolver._endpoints.discard(self)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for w in list(self._tcp_writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # selector's and uvloop's

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        ep = self.endpoint
        r = ep._resolver
        r.stats.udp += 1
        if len(data) > MAX_UDP_QUERY:
            r.stats.dropped += 1
            return
        out = r._decide(data, ep.networks, False)
        if out is None:
            return
        transport = self.transport
        assert transport is not None
        if isinstance(out, bytes):
            transport.sendto(out, addr)
        else:
            ep._spawn(self._forward_and_reply(out, addr), r._release_forward)

    async def _forward_and_reply(self, query: dns.message.Message, addr: tuple[str | object, ...]) -> None:
        r = self.endpoint._resolver
        resp = await r._forward(query)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(r._render(resp, _udp_limit(query)), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: UDP socket error: %s", exc)


class Resolver:
    """The embedded DNS of a node (see the module docstring).

    ``table``: the records it answers from (shared with the worker, which updates it);
    ``resolv_conf``: the host's resolv.conf (upstream resolvers and search domains);
    ``upstream_port``: the port of the upstreams (53; tests use another);
    ``upstream_timeout``: seconds a forwarded query may take in all (every upstream, UDP and
    TCP), then ``SERVFAIL``; keep it below the clients' 5 s;
    ``max_forwards``: queries forwarded at once (node-wide);
    ``max_tcp_connections``: open TCP connections, node-wide; ``max_tcp_per_endpoint``: per
    container; ``tcp_idle_timeout``: seconds before an idle TCP connection is closed;
    ``search_domains``: overrides those of resolv.conf when not ``None``;
    ``ttl``: seconds, the TTL of local answers.
    """

    def __init__(self, table: DnsTable, *, resolv_conf: str | Path = "/etc/resolv.conf",
                 upstream_port: int = 53, upstream_timeout: float = 2.0, max_forwards: int = 256,
                 max_tcp_connections: int = 256, max_tcp_per_endpoint: int = 16,
                 tcp_idle_timeout: float = 10.0,
                 search_domains: Sequence[str] | None = None, ttl: int = DEFAULT_TTL) -> None:
        self.table = table
        self.resolv_conf = Path(resolv_conf)
        self.upstream_port = upstream_port
        self.upstream_timeout = upstream_timeout
        self.max_forwards = max_forwards
        self.max_tcp_connections = max_tcp_connections
        self.max_tcp_per_endpoint = max_tcp_per_endpoint
        self.tcp_idle_timeout = tcp_idle_timeout
        self.ttl = ttl
        self.stats = ResolverStats()
        self._search_override = tuple(search_domains) if search_domains is not None else None
        self._upstreams: tuple[str, ...] = ()
        self._search: tuple[str, ...] = self._search_override or ()
        self._conf_sig: tuple[int, int, int] | None = None
        self._conf_checked = -1e9
        self._forwards = 0
        self._tcp_conns = 0
        self._endpoints: set[Endpoint] = set()
        self._check_resolv_conf(force=True)

    # -- configuration -------------------------------------------------------------------

    @property
    def upstreams(self) -> tuple[str, ...]:
        """The upstream resolvers' addresses now in use (from resolv.conf)."""
        self._check_resolv_conf()
        return self._upstreams

    @property
    def search_domains(self) -> tuple[str, ...]:
        """The search domains stripped from names before giving up on the table."""
        self._check_resolv_conf()
        return self._search

    def _check_resolv_conf(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._conf_checked < _RESOLV_CONF_RECHECK:
            return
        self._conf_checked = now
        try:
            st = os.stat(self.resolv_conf)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            if sig == self._conf_sig:
                return
            servers, search = read_resolv_conf(self.resolv_conf)
        except OSError as e:
            if self._conf_sig is not None or force:
                log.warning("dns: cannot read %s (%s): no upstream resolvers", self.resolv_conf, e)
            self._conf_sig = None
            self._upstreams = ()
            return
        self._conf_sig = sig
        self._upstreams = servers
        if self._search_override is None:
            self._search = search

    # -- serving -------------------------------------------------------------------------

    async def serve_socket(self, udp_sock: socket.socket, tcp_sock: socket.socket,
                           networks: Iterable[str]) -> Endpoint:
        """Serve DNS on ``udp_sock`` (a bound ``SOCK_DGRAM``) and ``tcp_sock`` (a bound
        ``SOCK_STREAM``; it is put in listening state) for a client attached to ``networks``
        (network IDs). The resolver owns both sockets from now on; the returned
        :class:`Endpoint` closes them. Raises ``OSError`` if a socket cannot be used."""
        loop = asyncio.get_running_loop()
        ep = Endpoint(self, networks)
        try:
            udp_transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(ep), sock=udp_sock)
            ep._udp = udp_transport
            ep._tcp = await asyncio.start_server(
                lambda rd, wr: self._tcp_client(ep, rd, wr), sock=tcp_sock, limit=_TCP_MAX + 2)
        except BaseException:
            await ep.close()
            udp_sock.close()
            tcp_sock.close()
            raise
        self._endpoints.add(ep)
        return ep

    async def close(self) -> None:
        """Close every endpoint."""
        for ep in list(self._endpoints):
            await ep.close()

    # -- one query -----------------------------------------------------------------------

    def _decide(self, data: bytes, networks: tuple[str, ...], tcp: bool) -> bytes | dns.message.Message | None:
        """Bytes to send back now, a parsed query to forward, or ``None`` (send nothing)."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # any parse error: dnspython raises many kinds
            reply = _formerr_from_header(data)
            if reply is None:
                self.stats.dropped += 1
            else:
                self.stats.formerr += 1
            return reply
        if query.flags & dns.flags.QR:
            self.stats.dropped += 1
            return None
        limit = _TCP_MAX if tcp else _udp_limit(query)
        try:
            decision = answer(query, networks, self.table, search_domains=self.search_domains, ttl=self.ttl)
        except Exception:  # a bug must cost one query, not the resolver
            log.exception("dns: answering %s failed", query.question[:1])
            return self._render(error_response(query, dns.rcode.SERVFAIL), limit)
        if isinstance(decision, Forward):
            if self._forwards >= self.max_forwards:
                self.stats.servfail += 1
                return self._render(error_response(query, dns.rcode.SERVFAIL), limit)
            self._forwards += 1  # reserved here, released by the caller once the forward is over
            return query
        self.stats.local += 1
        if decision.rcode() == dns.rcode.FORMERR:
            self.stats.formerr += 1
        return self._render(decision, limit)

    def _release_forward(self, _: object = None) -> None:
        self._forwards -= 1

    def _render(self, resp: dns.message.Message, limit: int) -> bytes:
        wire = resp.to_wire(max_size=limit, prefer_truncation=True)
        if wire[2] & 0x02:
            self.stats.truncated += 1
        return wire

    async def _forward(self, query: dns.message.Message) -> dns.message.Message:
        """The upstreams' reply to ``query`` (its ID restored), or SERVFAIL: at once when every
        upstream refuses or is unreachable, at the latest after ``upstream_timeout`` seconds."""
        self.stats.forwarded += 1
        client_id = query.id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream_timeout
        upstreams = self.upstreams
        try:
            for i, host in enumerate(upstreams):
                left = deadline - loop.time()
                if left <= 0:
                    break
                query.id = secrets.randbits(16)
                try:
                    resp = await self._ask(query, host, left / (len(upstreams) - i), deadline)
                except Exception as e:  # timeouts, refused connections, garbage replies
                    log.debug("dns: upstream %s failed for %s: %r", host, query.question[:1], e)
                    continue
                if resp.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                    continue
                resp.id = client_id
                return resp
        finally:
            query.id = client_id
        self.stats.servfail += 1
        return error_response(query, dns.rcode.SERVFAIL)

    async def _ask(self, query: dns.message.Message, host: str, timeout: float,
                   deadline: float) -> dns.message.Message:
        """One upstream: UDP within ``timeout`` seconds from a connected socket (an ICMP error
        raises ``ConnectionRefusedError``/``OSError`` at once), then TCP if truncated, until
        ``deadline`` (the loop's clock). Raises what the query raises."""
        af = socket.AF_INET6 if ":" in host else socket.AF_INET
        backend: Any = dns.asyncbackend.get_default_backend()  # dnspython leaves make_socket untyped
        sock = await backend.make_socket(af, socket.SOCK_DGRAM, 0, None, (host, self.upstream_port))
        async with sock:
            resp = await dns.asyncquery.udp(query, host, timeout=timeout, port=self.upstream_port,
                                            ignore_unexpected=True, sock=sock)
        if resp.flags & dns.flags.TC:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("no time left for the TCP retry of a truncated answer")
            resp = await dns.asyncquery.tcp(query, host, timeout=left, port=self.upstream_port)
        return resp

    # -- TCP -----------------------------------------------------------------------------

    async def _tcp_client(self, ep: Endpoint, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if (self._tcp_conns >= self.max_tcp_connections or ep.tcp_connections >= self.max_tcp_per_endpoint
                or ep.closed):
            self.stats.dropped += 1
            writer.close()
            return
        self._tcp_conns += 1
        ep.tcp_connections += 1
        ep._tcp_writers.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                    data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")),
                                                  self.tcp_idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                self.stats.tcp += 1
                out = self._decide(data, ep.networks, True)
                if out is None:
                    continue
                if not isinstance(out, bytes):
                    try:
                        out = self._render(await self._forward(out), _TCP_MAX)
                    finally:
                        self._release_forward()
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_conns -= 1
            ep.tcp_connections -= 1
            ep._tcp_writers.discard(writer)
            writer.close()

    def __repr__(self) -> str:
        return f"Resolver(endpoints={len(self._endpoints)}, upstreams={self._upstreams})"

