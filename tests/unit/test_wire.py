"""Unit tests for shoal.wire: frames, request/reply, pushes, errors, timeouts, close."""

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

from shoal import wire
from shoal.wire import Peer, RemoteError, WireError


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
