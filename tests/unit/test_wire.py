"""Unit tests for shoal.rpc.wire: frames, request/reply, pushes, errors, timeouts, close."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.rpc import wire
from shoal.rpc.wire import Peer, RemoteError, WireError
from tests.memory import PeakRss
from tests.waiting import wait_until


async def _pair(
    server_handler: wire.Handler | None, client_handler: wire.Handler | None = None
) -> tuple[Peer, list[Peer], asyncio.Server]:
    server_peers: list[Peer] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        p = Peer(r, w, server_handler, name="server-side")
        server_peers.append(p)
        p.start()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = await wire.connect("127.0.0.1", port, None, client_handler, timeout=5)
    return client, server_peers, srv


@contextlib.asynccontextmanager
async def pair(
    server_handler: wire.Handler | None, client_handler: wire.Handler | None = None
) -> AsyncIterator[tuple[Peer, list[Peer]]]:
    client, sp, srv = await _pair(server_handler, client_handler)
    try:
        yield client, sp
    finally:
        await client.close()
        for p in sp:
            await p.close()
        srv.close()
        await srv.wait_closed()


async def echo(peer: Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
    if t == "echo":
        return {"got": body}
    if t == "fail":
        raise RemoteError("nope: " + str(body.get("why")))
    if t == "valueerror":
        raise ValueError("bad value")
    if t == "crash":
        raise ZeroDivisionError("boom")
    if t == "slow":
        await asyncio.sleep(body["s"])
        return {"slept": body["s"]}
    if t == "callback":
        # a handler may make a request back on the same connection
        r = await peer.request("echo", {"x": 1}, timeout=5)
        return {"inner": r}
    raise RemoteError(f"unknown {t}")


def test_encode_frame_layout() -> None:
    data = wire.encode_frame({"t": "x", "b": {"k": 1}})
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert msgpack.unpackb(data[4:]) == {"t": "x", "b": {"k": 1}}


def test_encode_frame_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_FRAME", 100)
    with pytest.raises(WireError, match="exceeds"):
        wire.encode_frame({"b": "x" * 200})


async def test_read_frame_rejects_oversize_and_garbage() -> None:
    r = asyncio.StreamReader()
    r.feed_data(struct.pack(">I", wire.MAX_FRAME + 1))
    with pytest.raises(WireError, match="frame over default limit: 67108865 bytes"):
        await wire.read_frame(r)
    r = asyncio.StreamReader()
    body = msgpack.packb([1, 2])
    r.feed_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(WireError, match="expected a map"):
        await wire.read_frame(r)
    r = asyncio.StreamReader()
    r.feed_data(b"\x00\x00")
    r.feed_eof()
    with pytest.raises(WireError, match="closed"):
        await wire.read_frame(r)


async def test_request_reply_roundtrip() -> None:
    async with pair(echo) as (client, _):
        body = {"s": "héllo", "n": 2**40, "l": [1, 2.5, None, True], "b": b"\x00\xff", "m": {"a": {}}}
        assert await client.request("echo", body) == {"got": body}


async def test_many_concurrent_requests() -> None:
    async with pair(echo) as (client, _):
        results = await asyncio.gather(*(client.request("echo", {"i": i}) for i in range(200)))
        assert [r["got"]["i"] for r in results] == list(range(200))


async def test_big_frame_roundtrip() -> None:
    async with pair(echo) as (client, _):
        blob = b"\xab" * (8 * 1024 * 1024)
        r = await client.request("echo", {"blob": blob}, timeout=30)
        assert r["got"]["blob"] == blob


async def test_errors_come_back_as_remote_error() -> None:
    async with pair(echo) as (client, _):
        with pytest.raises(RemoteError) as ei:
            await client.request("fail", {"why": "because"})
        assert ei.value.msg == "nope: because"
        with pytest.raises(RemoteError, match="bad value"):
            await client.request("valueerror", {})
        with pytest.raises(RemoteError, match="internal error: boom"):
            await client.request("crash", {})
        # the connection survives handler errors
        assert await client.request("echo", {"ok": 1}) == {"got": {"ok": 1}}


async def test_request_timeout() -> None:
    async with pair(echo) as (client, _):
        with pytest.raises(WireError, match="within 0.2 s"):
            await client.request("slow", {"s": 2}, timeout=0.2)
        assert await client.request("echo", {}) == {"got": {}}


async def test_pushes_in_order_both_directions() -> None:
    got: list[int] = []
    done = asyncio.Event()

    async def on_client(peer: Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if t == "echo":
            return {"from": "client", "got": body}
        got.append(body["i"])
        if body["i"] == 99:
            done.set()
        return None

    async with pair(echo, on_client) as (client, sp):
        server_peer = sp[0]
        for i in range(100):
            await server_peer.send("tick", {"i": i})
        await asyncio.wait_for(done.wait(), 5)
        assert got == list(range(100))
        # server can also make requests to the client
        assert await server_peer.request("echo", {"q": 1}) == {"from": "client", "got": {"q": 1}}
        # nested request from inside a handler
        assert await client.request("callback", {}) == {"inner": {"from": "client", "got": {"x": 1}}}


async def test_close_fails_pending_and_further_requests() -> None:
    async with pair(echo) as (client, sp):
        pending = asyncio.create_task(client.request("slow", {"s": 5}, timeout=10))
        await asyncio.sleep(0.05)
        await sp[0].close()
        with pytest.raises(WireError, match="closed"):
            await asyncio.wait_for(pending, 5)
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.closed
        with pytest.raises(WireError, match="closed"):
            await client.request("echo", {})
        with pytest.raises(WireError):
            await client.send("x", {})


async def test_connect_refused_is_clear() -> None:
    # find a port with nothing listening
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(WireError, match=rf"could not connect to 127.0.0.1:{port}: connection refused"):
        await wire.connect("127.0.0.1", port, None, timeout=2)


async def test_no_handler_answers_error() -> None:
    async with pair(None) as (client, _):
        with pytest.raises(RemoteError, match="unknown request type 'x'"):
            await client.request("x", {})


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=50) | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _values, max_size=6))
def test_frame_roundtrip_property(body: dict[str, Any]) -> None:
    """Any msgpack-able map survives encode_frame → read_frame unchanged."""
    data = wire.encode_frame(body)

    async def decode() -> dict[str, Any]:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await wire.read_frame(r)

    assert asyncio.run(decode()) == body


# -- bounds on what a peer can make us hold (issue 7) ------------------------------------------


def _frame_with_body(body: bytes) -> bytes:
    """A frame ``{"t": "x", "b": <body>}`` where ``body`` is raw msgpack bytes."""
    data = b"\x82\xa1t\xa1x\xa1b" + body
    return struct.pack(">I", len(data)) + data


MILLION_MAPS = b"\xdd" + struct.pack(">I", 1_000_000) + b"\x80" * 1_000_000
"""msgpack: an array32 of a million empty maps (~1 MB; ~70 MB of Python dicts if decoded)."""


async def test_a_million_empty_maps_is_a_wire_error_with_bounded_memory() -> None:
    frame = _frame_with_body(MILLION_MAPS)
    assert len(frame) < wire.WORKER_LIMITS.frame  # under every byte limit of an authenticated peer
    for limits in (wire.DEFAULT_LIMITS, wire.RAFT_LIMITS, wire.MANAGER_LIMITS, wire.WORKER_LIMITS):
        r = asyncio.StreamReader()
        r.feed_data(frame)
        with PeakRss() as mem, pytest.raises(WireError, match=f"frame over {limits.name} limit: 1000000 "
                                                             "exceeds max_array_len"):
            await wire.read_frame(r, limits)
        assert mem.growth < 50 * 1024 * 1024


async def test_nested_maps_are_counted_for_untrusted_peers() -> None:
    # 16 arrays of 65536 empty maps: each array is under the per-array limit, the whole is not
    inner = b"\xdc" + struct.pack(">H", 65535) + b"\x80" * 65535
    body = b"\xdc" + struct.pack(">H", 16) + inner * 16
    frame = _frame_with_body(body)
    r = asyncio.StreamReader()
    r.feed_data(frame)
    with PeakRss() as mem, pytest.raises(WireError, match="frame over worker limit: more than 262144 maps and arrays"):
        await wire.read_frame(r, wire.WORKER_LIMITS)
    assert mem.growth < 50 * 1024 * 1024


async def test_pre_authentication_limits() -> None:
    r = asyncio.StreamReader()
    r.feed_data(struct.pack(">I", 64 * 1024 + 1))
    with pytest.raises(WireError, match=r"frame over pre-authentication limit: 65537 bytes, at most 65536"):
        await wire.read_frame(r, wire.PREAUTH_LIMITS)
    for body, what in ((msgpack.packb("x" * 20000), "max_str_len"), (msgpack.packb(b"x" * 20000), "max_bin_len"),
                       (msgpack.packb(list(range(2000))), "max_array_len"),
                       (msgpack.packb(msgpack.ExtType(1, b"x")), "max_ext_len")):
        r = asyncio.StreamReader()
        r.feed_data(_frame_with_body(body))
        with pytest.raises(WireError, match=f"frame over pre-authentication limit: .*{what}"):
            await wire.read_frame(r, wire.PREAUTH_LIMITS)
    # what ca.join carries fits
    r = asyncio.StreamReader()
    r.feed_data(wire.encode_frame({"t": "ca.join", "id": 1, "b": {"token": "SWMTKN-1-" + "a" * 76,
                                                                  "csr": "c" * 800, "hostname": "h",
                                                                  "description": {"Engine": {"Plugins": []}}}}))
    assert (await wire.read_frame(r, wire.PREAUTH_LIMITS))["t"] == "ca.join"


@contextlib.asynccontextmanager
async def raw_server(**peer_kw: Any) -> AsyncIterator[tuple[int, list[Peer], dict[str, Any]]]:
    """A plain TCP server whose connections are Peers with ``peer_kw``; the handler blocks
    requests of type ``block`` and pushes until ``state["release"]`` is set, and echoes
    ``echo`` requests (``{"n": bytes}`` → that many bytes back)."""
    peers: list[Peer] = []
    state: dict[str, Any] = {"release": asyncio.Event(), "served": 0, "max_inflight": 0}

    async def handler(peer: Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
        state["max_inflight"] = max(state["max_inflight"], peer.inflight)
        if t == "echo":
            return {"blob": b"x" * int(body.get("n", 0))}
        await state["release"].wait()
        state["served"] += 1
        return {}

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        p = Peer(r, w, handler, name="server-side", **peer_kw)
        peers.append(p)
        p.start()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], peers, state
    finally:
        for p in peers:
            await p.close()
        srv.close()
        await srv.wait_closed()


async def test_request_flood_is_back_pressured_not_buffered() -> None:
    async with raw_server(max_inflight=8) as (port, peers, state):
        client = await wire.connect("127.0.0.1", port, None, timeout=5)
        try:
            calls = [asyncio.create_task(client.request("block", {"pad": b"p" * 1000}, timeout=30))
                     for _ in range(500)]
            await wait_until(lambda: peers and peers[0].inflight == 8, 5, "8 requests in flight")
            await asyncio.sleep(0.2)  # the other 492 stay in TCP buffers (the server stopped reading)
            assert peers[0].inflight == 8 and state["served"] == 0
            state["release"].set()
            await asyncio.wait_for(asyncio.gather(*calls), 20)
            assert state["served"] == 500 and state["max_inflight"] <= 8
        finally:
            await client.close()


async def test_a_peer_that_does_not_read_is_disconnected() -> None:
    async with raw_server(max_inflight=4, write_timeout=0.5) as (port, peers, _):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            # ask for 256 KiB replies again and again, and never read one
            for i in range(1, 400):
                w.write(wire.encode_frame({"t": "echo", "id": i, "b": {"n": 256 * 1024}}))
            await wait_until(lambda: peers and peers[0].closed, 15, "the server to drop the connection")
            assert peers[0].close_reason.startswith("the peer read nothing for 0.5 s"), peers[0].close_reason
            assert peers[0].inflight <= 4
        finally:
            w.close()


async def test_a_push_flood_is_disconnected() -> None:
    async with raw_server(max_pushes=16) as (port, peers, _):
        client = await wire.connect("127.0.0.1", port, None, timeout=5)
        try:
            for i in range(100):
                with contextlib.suppress(WireError):
                    await client.send("block", {"i": i})
            await wait_until(lambda: peers and peers[0].closed, 5, "the server to drop the connection")
            assert peers[0].close_reason == ("16 pushes waiting to be handled: the peer sends them faster "
                                             "than they are handled")
            assert peers[0].pushes_waiting <= 17
        finally:
            await client.close()


async def test_idle_timeout_closes_a_silent_peer() -> None:
    async with raw_server(idle_timeout=0.3) as (port, peers, _):
        client = await wire.connect("127.0.0.1", port, None, timeout=5)
        try:
            assert (await client.request("echo", {"n": 1}))["blob"] == b"x"
            await asyncio.wait_for(client.wait_closed(), 5)
            assert peers[0].close_reason == "no frame within 0.3 s"
        finally:
            await client.close()


async def test_refused_answers_then_closes_and_frames_without_type_close() -> None:
    async def h(peer: Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
        raise wire.Refused("go away")

    async with pair(h) as (client, sp):
        with pytest.raises(RemoteError, match="go away"):
            await client.request("x", {})
        await asyncio.wait_for(client.wait_closed(), 5)
        assert sp[0].close_reason == "go away"
    async with pair(echo) as (client, sp):
        await client._write({"id": 5, "b": {}})
        await asyncio.wait_for(client.wait_closed(), 5)
        assert sp[0].close_reason == "malformed frame: no type"


async def test_a_reply_too_large_is_answered_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with raw_server() as (port, _, _):
        client = await wire.connect("127.0.0.1", port, None, timeout=5)
        try:
            monkeypatch.setattr(wire, "MAX_FRAME", 1000)
            with pytest.raises(RemoteError, match="the reply to 'echo' could not be sent: frame of .* exceeds"):
                await client.request("echo", {"n": 2000}, timeout=5)
        finally:
            await client.close()


def test_log_lines_are_cut_to_fit_a_worker_frame() -> None:
    line = {"task_id": "t" * 25, "stream": "stdout", "time": "2026-01-01T00:00:00.000000000Z"}
    for text in ("é" * 1000, "x" * 1000, "日本" * 500):
        lines = [dict(line, log=f"{i} {text}") for i in range(20_000)]  # 20-60 MB encoded
        kept = wire.fit_log_lines(lines)
        assert kept and kept[-1] is lines[-1] and kept == lines[len(lines) - len(kept):]  # the newest
        assert len(wire.encode_frame({"t": "reply", "id": 1, "b": {"lines": kept}})) < wire.WORKER_LIMITS.frame
    short = [dict(line, log="hi")] * 300_000
    assert len(wire.fit_log_lines(short, max_bytes=10**9)) == wire.LOGS_REPLY_LINES
