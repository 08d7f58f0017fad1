"""Tests of overlaynet.dns.server.Resolver on loopback (no root): local answers over UDP and TCP,
forwarding to a fake upstream (FakeUpstream, a test double started here), truncation and the TCP
retry, failing upstreams, bounds and garbage."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from overlaynet.dns.records import DnsTable, NetworkRecords, ServiceRecord, TaskRecord
from overlaynet.dns.server import Endpoint, Resolver, read_resolv_conf
from tests.waiting import wait_until

BIG_NAME = "big.example.com."
BIG_IPS = [f"192.0.2.{i}" for i in range(1, 61)]  # 60 A records: ~1 KB, over 512 bytes


class FakeUpstream:
    """Test double of an upstream resolver: UDP and TCP on one loopback address and port.

    Answers ``host.example.com`` with 203.0.113.7 and ``big.example.com`` with 60 addresses,
    anything else NXDOMAIN. ``truncate_udp``: every UDP reply is an empty one with TC set (the
    client must retry over TCP); ``rcode``: answer every query with that rcode instead.
    ``seen`` lists ``(transport, message id, name)`` of each query received."""

    def __init__(self) -> None:
        self.truncate_udp = False
        self.rcode: dns.rcode.Rcode | None = None
        self.seen: list[tuple[str, int, str]] = []
        self.host = ""
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def reply(self, wire: bytes, transport: str) -> bytes:
        q = dns.message.from_wire(wire)
        name = q.question[0].name.to_text().lower()
        self.seen.append((transport, q.id, name))
        resp = dns.message.make_response(q)
        if self.rcode is not None:
            resp.set_rcode(self.rcode)
        elif transport == "udp" and self.truncate_udp:
            resp.flags |= dns.flags.TC
        elif name == "host.example.com.":
            resp.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", "203.0.113.7"))
        elif name == BIG_NAME:
            resp.answer.append(dns.rrset.from_text_list(q.question[0].name, 30, "IN", "A", BIG_IPS))
        else:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp.to_wire()

    async def start(self, host: str, port: int = 0) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        fake = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(fake.reply(data, "udp"), addr)  # type: ignore[attr-defined]

        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        self._udp = udp
        self.host, self.port = udp.get_extra_info("sockname")[:2]

        async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    out = self.reply(await reader.readexactly(n), "tcp")
                    writer.write(len(out).to_bytes(2, "big") + out)
                    await writer.drain()
            writer.close()

        self._tcp = await asyncio.start_server(tcp_client, host, self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


def net1() -> NetworkRecords:
    return NetworkRecords(
        "n1",
        services=(ServiceRecord("web", "10.0.1.2"), ServiceRecord("rr", None)),
        tasks=(TaskRecord("web", 1, "a" * 25, "10.0.1.3", hostname="web-1"),
               *(TaskRecord("rr", i, f"{i:025d}", f"10.0.1.{100 + i}") for i in range(1, 101))))


def net2() -> NetworkRecords:
    return NetworkRecords("n2", services=(ServiceRecord("web", "10.0.2.2"), ServiceRecord("api", "10.0.2.9")))


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start("127.0.0.3")
    yield fake
    await fake.stop()


@pytest.fixture
def table() -> DnsTable:
    t = DnsTable()
    t.replace_all([net1(), net2()])
    return t


def resolv_conf(tmp_path: Path, *servers: str, extra: str = "") -> Path:
    p = tmp_path / "resolv.conf"
    p.write_text("".join(f"nameserver {s}\n" for s in servers) + extra)
    return p


async def serve(resolver: Resolver, networks: object = frozenset({"n1"})) -> Endpoint:
    """Serve on one UDP and one TCP socket of 127.0.0.1 sharing a port, as 127.0.0.11 does."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(udp.getsockname())
        except OSError:  # that TCP port is taken: try another
            udp.close()
            tcp.close()
            continue
        return await resolver.serve_socket(udp, tcp, networks)  # type: ignore[arg-type]
    raise AssertionError("no port free for both UDP and TCP")


@pytest.fixture
async def resolver(table: DnsTable, upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Resolver]:
    r = Resolver(table, resolv_conf=resolv_conf(tmp_path, upstream.host), upstream_port=upstream.port,
                 upstream_timeout=0.5)
    yield r
    await r.close()


async def udp_ask(ep: Endpoint, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    host, port = ep.udp_address
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype, **kw), host, port=port,  # type: ignore[arg-type]
                                    timeout=3)


async def tcp_ask(ep: Endpoint, name: str, rdtype: str = "A") -> dns.message.Message:
    host, port = ep.tcp_address
    return await dns.asyncquery.tcp(dns.message.make_query(name, rdtype), host, port=port, timeout=3)


def ips(reply: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in reply.answer for rd in rrset}


async def test_local_names_over_udp_and_tcp(resolver: Resolver, upstream: FakeUpstream) -> None:
    ep = await serve(resolver)
    for ask in (udp_ask, tcp_ask):
        assert ips(await ask(ep, "web")) == {"10.0.1.2"}
        assert ips(await ask(ep, "tasks.web")) == {"10.0.1.3"}
        assert ips(await ask(ep, f"web.1.{'a' * 25}")) == {"10.0.1.3"}
        assert ips(await ask(ep, "WEB-1.")) == {"10.0.1.3"}
        reply = await ask(ep, "web", "AAAA")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    assert upstream.seen == []  # nothing of ours went upstream
    assert resolver.stats.local == 10 and resolver.stats.udp == 5 and resolver.stats.tcp == 5


async def test_scoping_follows_the_endpoints_networks(resolver: Resolver, upstream: FakeUpstream) -> None:
    ep1 = await serve(resolver, {"n1"})
    ep2 = await serve(resolver, {"n2"})
    assert ips(await udp_ask(ep1, "web")) == {"10.0.1.2"}
    assert ips(await udp_ask(ep2, "web")) == {"10.0.2.2"}
    reply = await udp_ask(ep1, "api")  # on n2 only: forwarded, and the upstream does not know it
    assert reply.rcode() == dns.rcode.NXDOMAIN and upstream.seen[-1][2] == "api."
    ep1.set_networks({"n1", "n2"})
    assert ips(await udp_ask(ep1, "api")) == {"10.0.2.9"}


async def test_table_changes_apply_to_the_next_query(resolver: Resolver, table: DnsTable) -> None:
    ep = await serve(resolver)
    table.replace(NetworkRecords("n1", services=(ServiceRecord("web", "10.0.1.2"),), tasks=(
        TaskRecord("web", 2, "e" * 25, "10.0.1.8"),)))
    assert ips(await udp_ask(ep, "tasks.web")) == {"10.0.1.8"}
    table.remove("n1")
    assert (await udp_ask(ep, "tasks.web")).rcode() == dns.rcode.NXDOMAIN  # forwarded now


async def test_other_names_are_forwarded_over_udp_with_the_clients_id(resolver: Resolver,
                                                                      upstream: FakeUpstream) -> None:
    ep = await serve(resolver)
    q = dns.message.make_query("host.example.com", "A")
    host, port = ep.udp_address
    reply = await dns.asyncquery.udp(q, host, port=port, timeout=3)
    assert ips(reply) == {"203.0.113.7"} and reply.id == q.id
    assert upstream.seen == [("udp", upstream.seen[0][1], "host.example.com.")]
    reply = await tcp_ask(ep, "host.example.com", "A")
    assert ips(reply) == {"203.0.113.7"}
    assert resolver.stats.forwarded == 2 and resolver._forwards == 0


async def test_truncated_upstream_reply_is_retried_over_tcp(resolver: Resolver, upstream: FakeUpstream) -> None:
    upstream.truncate_udp = True
    ep = await serve(resolver)
    # the client's EDNS payload (4096) holds the whole answer: it gets it over UDP
    reply = await udp_ask(ep, BIG_NAME, use_edns=0, payload=4096)
    assert not reply.flags & dns.flags.TC and ips(reply) == set(BIG_IPS)
    assert [s[0] for s in upstream.seen] == ["udp", "tcp"]
    # over TCP from the client: the same
    reply = await tcp_ask(ep, BIG_NAME)
    assert ips(reply) == set(BIG_IPS)


async def test_answers_over_512_bytes_are_truncated_for_udp_clients(resolver: Resolver) -> None:
    ep = await serve(resolver)
    for name in ("rr", "tasks.rr", BIG_NAME):  # local (100 tasks) and forwarded
        reply = await udp_ask(ep, name)
        assert reply.flags & dns.flags.TC and reply.answer == [], name
        host, port = ep.udp_address
        reply, used_tcp = await dns.asyncquery.udp_with_fallback(
            dns.message.make_query(name, "A"), host, port=port, timeout=3)
        assert used_tcp and len(ips(reply)) in (100, 60), name
        tcp = await tcp_ask(ep, name)
        assert not tcp.flags & dns.flags.TC and len(ips(tcp)) in (100, 60)
    assert resolver.stats.truncated >= 6


async def test_upstream_down_or_silent_gives_servfail(table: DnsTable, tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.4", 0))
    port = silent.getsockname()[1]
    try:
        # 127.0.0.5:port: nothing listens (refused); 127.0.0.4:port: never answers (times out)
        r = Resolver(table, resolv_conf=resolv_conf(tmp_path, "127.0.0.5", "127.0.0.4"), upstream_port=port,
                     upstream_timeout=0.3)
        ep = await serve(r)
        t0 = time.monotonic()
        reply = await udp_ask(ep, "host.example.com")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < 2.5
        reply = await tcp_ask(ep, "host.example.com")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert ips(await udp_ask(ep, "web")) == {"10.0.1.2"}  # local names do not suffer
        assert r.stats.servfail == 2
        await r.close()
    finally:
        silent.close()


async def test_next_upstream_after_a_failure_or_servfail(table: DnsTable, upstream: FakeUpstream,
                                                         tmp_path: Path) -> None:
    bad = FakeUpstream()
    bad.rcode = dns.rcode.SERVFAIL
    await bad.start("127.0.0.6", upstream.port)
    try:
        # 127.0.0.5 has nothing on the port (refused); bad answers SERVFAIL; the third answers
        conf = resolv_conf(tmp_path, "127.0.0.5", bad.host, upstream.host)
        r = Resolver(table, resolv_conf=conf, upstream_port=upstream.port, upstream_timeout=0.5)
        ep = await serve(r)
        reply = await udp_ask(ep, "host.example.com")
        assert ips(reply) == {"203.0.113.7"}
        assert [s[0] for s in bad.seen] == ["udp"] and len(upstream.seen) == 1
        await r.close()
    finally:
        await bad.stop()


async def test_no_resolv_conf_gives_servfail(table: DnsTable, tmp_path: Path) -> None:
    r = Resolver(table, resolv_conf=tmp_path / "missing")
    assert r.upstreams == ()
    ep = await serve(r)
    assert (await udp_ask(ep, "host.example.com")).rcode() == dns.rcode.SERVFAIL
    assert ips(await udp_ask(ep, "web")) == {"10.0.1.2"}
    await r.close()


async def test_resolv_conf_changes_are_picked_up(table: DnsTable, upstream: FakeUpstream, tmp_path: Path) -> None:
    conf = resolv_conf(tmp_path, "127.0.0.5")
    r = Resolver(table, resolv_conf=conf, upstream_port=upstream.port, upstream_timeout=0.2)
    ep = await serve(r)
    assert (await udp_ask(ep, "host.example.com")).rcode() == dns.rcode.SERVFAIL
    conf.write_text(f"# moved\nnameserver {upstream.host}\nsearch corp.example\n")

    async def answered() -> bool:
        return ips(await udp_ask(ep, "host.example.com")) == {"203.0.113.7"}

    await wait_until(answered, timeout=5, what="the new upstream to be used", interval=0.2)
    assert r.search_domains == ("corp.example",)
    assert ips(await udp_ask(ep, "web.corp.example")) == {"10.0.1.2"}
    await r.close()


async def test_forwards_are_bounded(table: DnsTable, upstream: FakeUpstream, tmp_path: Path) -> None:
    r = Resolver(table, resolv_conf=resolv_conf(tmp_path, upstream.host), upstream_port=upstream.port,
                 max_forwards=0)
    ep = await serve(r)
    assert (await udp_ask(ep, "host.example.com")).rcode() == dns.rcode.SERVFAIL
    assert upstream.seen == []
    await r.close()


async def test_a_burst_beyond_max_forwards_gets_servfail_at_once(table: DnsTable, tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.4", 0))
    r = Resolver(table, resolv_conf=resolv_conf(tmp_path, "127.0.0.4"), upstream_port=silent.getsockname()[1],
                 upstream_timeout=0.5, max_forwards=2)
    ep = await serve(r)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(ep.udp_address)
    try:
        for i in range(5):
            sock.send(dns.message.make_query(f"h{i}.example.com", "A").to_wire())
        t0 = time.monotonic()
        codes = [dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)).rcode()
                 for _ in range(3)]
        assert codes == [dns.rcode.SERVFAIL] * 3 and time.monotonic() - t0 < 0.4  # not waiting upstream
        assert r._forwards == 2
        await wait_until(lambda: r._forwards == 0, what="the 2 forwards to time out")
        assert r.stats.servfail == 5
    finally:
        sock.close()
        silent.close()
        await r.close()


async def test_garbage_gets_formerr_or_nothing_and_the_server_goes_on(resolver: Resolver) -> None:
    ep = await serve(resolver)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(ep.udp_address)
    try:
        header_only = bytes.fromhex("beef 0100 0001 0000 0000 0000")  # claims a question, has none
        for junk in (b"", b"\x00", b"\xff" * 11, bytes.fromhex("dead 8180 0000 0000 0000 0000"),
                     b"\x00" * 5000, header_only):
            sock.send(junk)
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)
        assert reply[:2] == b"\xbe\xef"  # only the parsable header got an answer: FORMERR
        assert reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR
        q = dns.message.make_query("web", "A")
        sock.send(q.to_wire())
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)
        assert dns.message.from_wire(reply).id == q.id  # nothing else came back before it
    finally:
        sock.close()
    # TCP: a short frame, then a connection cut in the middle of a frame
    reader, writer = await asyncio.open_connection(*ep.tcp_address)
    writer.write(b"\x00\x03abc" + b"\x00\x64" + b"x" * 10)
    await writer.drain()
    writer.close()
    assert ips(await tcp_ask(ep, "web")) == {"10.0.1.2"}
    assert ips(await udp_ask(ep, "web")) == {"10.0.1.2"}
    assert resolver.stats.formerr == 1 and resolver.stats.dropped >= 4


async def test_tcp_connections_are_bounded(table: DnsTable, tmp_path: Path) -> None:
    r = Resolver(table, resolv_conf=tmp_path / "missing", max_tcp_connections=1)
    ep = await serve(r)
    r1, w1 = await asyncio.open_connection(*ep.tcp_address)
    q = dns.message.make_query("web", "A").to_wire()
    w1.write(len(q).to_bytes(2, "big") + q)
    n = int.from_bytes(await r1.readexactly(2), "big")
    assert ips(dns.message.from_wire(await r1.readexactly(n))) == {"10.0.1.2"}
    r2, w2 = await asyncio.open_connection(*ep.tcp_address)
    assert await asyncio.wait_for(r2.read(2), 3) == b""  # closed at once
    w1.close()
    w2.close()
    await r.close()


async def test_close_stops_serving_and_cancels_forwards(table: DnsTable, tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.4", 0))
    try:
        r = Resolver(table, resolv_conf=resolv_conf(tmp_path, "127.0.0.4"),
                     upstream_port=silent.getsockname()[1], upstream_timeout=5)
        ep = await serve(r)
        host, port = ep.udp_address
        tcp_addr = ep.tcp_address
        pending = asyncio.ensure_future(udp_ask(ep, "host.example.com"))
        await wait_until(lambda: r.stats.forwarded == 1, what="the forward to start")
        await ep.close()
        await ep.close()  # twice is fine
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*tcp_addr)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        assert r._forwards == 0
    finally:
        silent.close()


def test_read_resolv_conf(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    p.write_text("# comment\ndomain a.example\nnameserver 127.0.0.11\nnameserver 10.0.0.1 # x\n"
                 "nameserver fe80::1%eth0\noptions ndots:2\nsearch b.example c.example\n"
                 "nameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert read_resolv_conf(p) == (("10.0.0.1", "fe80::1", "10.0.0.2"), ("b.example", "c.example"))
    with pytest.raises(OSError):
        read_resolv_conf(tmp_path / "missing")


async def test_one_container_holding_tcp_connections_does_not_starve_another(table: DnsTable, tmp_path: Path) -> None:
    """The TCP limit is per container (endpoint), beside the node-wide one: a container opening
    many idle connections to 127.0.0.11:53 uses up only its own share."""
    r = Resolver(table, resolv_conf=tmp_path / "missing", max_tcp_per_endpoint=4, max_tcp_connections=6)
    hog, other, third = await serve(r), await serve(r), await serve(r)
    held = [await asyncio.open_connection(*hog.tcp_address) for _ in range(30)]
    await wait_until(lambda: hog.tcp_connections == 4, what="the hog's share to be used")
    # the 26 beyond its share were closed at once
    closed = [await asyncio.wait_for(rd.read(2), 3) for rd, _ in held[4:]]
    assert closed == [b""] * 26 and r._tcp_conns == 4
    assert ips(await tcp_ask(other, "web")) == {"10.0.1.2"}  # the others are served
    more = [await asyncio.open_connection(*other.tcp_address) for _ in range(2)]
    await wait_until(lambda: other.tcp_connections == 2)
    # the node-wide cap still holds: 4 + 2 = 6 open, a third container's new connection is closed
    rd3, wr3 = await asyncio.open_connection(*third.tcp_address)
    assert await asyncio.wait_for(rd3.read(2), 3) == b""
    for _, w in held[:4] + more:
        w.close()
    await wait_until(lambda: r._tcp_conns == 0, what="the connections to be released")
    assert ips(await tcp_ask(third, "web")) == {"10.0.1.2"}
    for _, w in held[4:]:
        w.close()
    wr3.close()
    await r.close()


async def test_an_unreachable_upstream_gives_servfail_at_once(table: DnsTable, tmp_path: Path) -> None:
    """ICMP port unreachable (nothing listens) fails the attempt at once: every upstream refusing
    is a SERVFAIL in milliseconds, not after the timeout (the client's 5 s in the lab before)."""
    r = Resolver(table, resolv_conf=resolv_conf(tmp_path, "127.0.0.5", "127.0.0.7", "127.0.0.8"),
                 upstream_port=5399, upstream_timeout=2.0)
    ep = await serve(r)
    for ask in (udp_ask, tcp_ask):
        t0 = time.monotonic()
        reply = await ask(ep, "host.example.com")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < 0.5
    # names the client's networks do not have, under tasks. or not, follow Docker's rule (forwarded),
    # so they too get their SERVFAIL at once
    for name in ("tasks.api", "tasks.nothere", "api", "nothere"):
        t0 = time.monotonic()
        assert (await udp_ask(ep, name)).rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < 0.5
    assert r.stats.forwarded == 6
    await r.close()


async def test_silent_upstreams_share_one_timeout(table: DnsTable, tmp_path: Path) -> None:
    """Three silent upstreams: SERVFAIL after ``upstream_timeout`` in all (not 3 × it, which was
    past the client's 5 s with the 2 s default: the client saw silence)."""
    silent: list[socket.socket] = []
    for _ in range(20):  # one port free on three loopback addresses
        for s in silent:
            s.close()
        silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        silent[0].bind(("127.0.0.20", 0))
        port = silent[0].getsockname()[1]
        try:
            silent[1].bind(("127.0.0.21", port))
            silent[2].bind(("127.0.0.22", port))
            break
        except OSError:
            continue
    try:
        r = Resolver(table, resolv_conf=resolv_conf(tmp_path, "127.0.0.20", "127.0.0.21", "127.0.0.22"),
                     upstream_port=port, upstream_timeout=0.6)
        ep = await serve(r)
        t0 = time.monotonic()
        assert (await udp_ask(ep, "host.example.com")).rcode() == dns.rcode.SERVFAIL
        assert 0.5 <= time.monotonic() - t0 < 1.2
        assert r.stats.servfail == 1
        await r.close()
    finally:
        for s in silent:
            s.close()


def test_the_default_forward_timeout_is_below_the_clients_5_s(table: DnsTable, tmp_path: Path) -> None:
    r = Resolver(table, resolv_conf=tmp_path / "missing")
    assert r.upstream_timeout <= 2.0 and r.max_tcp_per_endpoint <= 32
