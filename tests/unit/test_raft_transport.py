"""The Raft transport's inbound side against peers that are no longer members: two transports
on loopback (plain TCP; the manager's TLS and certificate checks are in the integration tests)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator

from raft.core import Message
from raft.core.messages import MsgHeartbeat
from raft.transport import Transport
from shoal.rpc import wire
from tests.memory import PeakRss
from tests.waiting import wait_until


@contextlib.asynccontextmanager
async def two(members: set[int]) -> AsyncIterator[tuple[Transport, Transport, list[Message]]]:
    """Transport 1 listening (accepting raft ID ``frm`` only while ``frm in members``) and
    transport 2 that sends to it; yields both and the messages 1 received."""
    got: list[Message] = []

    def check(ident: tuple[str, str] | None, rid: int) -> str | None:
        return None if rid in members else f"{rid} is not a member"

    t1 = Transport(1, {1: "127.0.0.1:1"}, got.append, peer_check=check)
    await t1.start("127.0.0.1", 0)
    t2 = Transport(2, {2: "127.0.0.1:1", 1: f"127.0.0.1:{t1.port}"}, lambda m: None)
    try:
        yield t1, t2, got
    finally:
        await t2.close()
        await t1.close()


async def test_a_removed_member_is_heard_no_more() -> None:
    members = {2}
    async with two(members) as (t1, t2, got):
        t1.add_peer(2, "127.0.0.1:1")  # 2 is a member: its connection is accepted
        t2.send(MsgHeartbeat(term=1, frm=2, to=1))
        await wait_until(lambda: len(got) == 1, 5, "the heartbeat of member 2")
        # a configuration change takes 2 out: its open connection is closed and it may not reconnect
        members.clear()
        t1.remove_peer(2)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # 2 keeps sending (and redialling) for half a second
            t2.send(MsgHeartbeat(term=2, frm=2, to=1))
            await asyncio.sleep(0.02)
        assert len(got) == 1, got


async def test_raft_frames_are_read_within_the_raft_limits() -> None:
    async with two({2}) as (t1, _, got):
        r, w = await asyncio.open_connection("127.0.0.1", t1.port)
        try:
            w.write(wire.encode_frame({"t": "raft-hello", "from": 2, "ch": "msg", "addr": "127.0.0.1:1"}))
            # a MsgApp whose entries are a million empty maps (~1 MB; ~70 MB once decoded)
            body = (b"\x82\xa1t\xa4raft\xa1m\x84\xa4type\xa6MsgApp\xa3frm\x02\xa2to\x01\xa7entries\xdd"
                    + struct.pack(">I", 1_000_000) + b"\x80" * 1_000_000)
            with PeakRss() as mem:
                w.write(struct.pack(">I", len(body)) + body)
                async with asyncio.timeout(5):
                    assert await r.read() == b""  # closed
            assert got == []
            assert mem.growth < 50 * 1024 * 1024
        finally:
            w.close()

