"""The asyncio Raft driver on real WALs, snapshots and TCP on loopback: 3 in-process members.

Each member is a :class:`raft.replicated.ReplicatedLog` with a tiny state machine (the list of
applied values). Every wait has a deadline; every node is closed at the end, even on failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from raft.driver import DriverConfig
from raft.log import LogUnavailable
from raft.replicated import ReplicatedLog
from raft.snapshot import Snapshot
from raft.wal import WAL, Entry, HardState, WALCorruptError
from tests.ports import free_ports
from tests.waiting import wait_until as wait_for

pytestmark = pytest.mark.timeout(120)


class Member:
    """One node: the log plus the state machine (values applied, in order)."""

    def __init__(self, nid: int, peers: dict[int, str], root: Path, cfg: DriverConfig,
                 bootstrap: bool = True) -> None:
        self.nid, self.peers, self.root, self.cfg = nid, peers, root, cfg
        self.values: list[bytes] = []
        self.restored: list[int] = []
        self.log = ReplicatedLog(nid, peers, root / f"n{nid}", config=cfg, propose_timeout=5.0,
                                 bootstrap=bootstrap)
        snap = self.log.snapshot()
        if snap is not None:
            self.values = list(msgpack.unpackb(snap.data))
        start = snap.index + 1 if snap else 1
        self.values += [e.data for e in self.log.entries_from(start)]
        self.log.set_apply(self._apply)
        self.log.set_restore(self._restore)
        self.log.set_snapshot_source(lambda: msgpack.packb(self.values))
        self.closed = False

    def _apply(self, e: Entry) -> None:
        self.values.append(e.data)

    def _restore(self, s: Snapshot) -> None:
        self.restored.append(s.index)
        self.values = list(msgpack.unpackb(s.data))

    async def close(self) -> None:
        self.closed = True
        await self.log.close()


class Cluster:
    def __init__(self, root: Path, cfg: DriverConfig) -> None:
        ports = free_ports(3)
        self.peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        self.root, self.cfg = root, cfg
        self.members: dict[int, Member] = {}

    async def start(self, nid: int) -> Member:
        m = Member(nid, self.peers, self.root, self.cfg)
        await m.log.start()
        self.members[nid] = m
        return m

    def live(self) -> list[Member]:
        return [m for m in self.members.values() if not m.closed]

    async def leader(self, timeout: float = 5.0) -> Member:
        async def cond() -> Member | None:
            leaders = [m for m in self.live() if m.log.is_leader]
            return leaders[0] if len(leaders) == 1 else None
        m: Member = await wait_for(cond, timeout, "a single leader")
        return m

    async def close(self) -> None:
        for m in self.live():
            await m.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, DriverConfig(snapshot_every=0))
    try:
        for i in (1, 2, 3):
            await c.start(i)
        yield c
    finally:
        await c.close()


async def write(m: Member, n: int, prefix: str) -> list[bytes]:
    vals = [f"{prefix}-{i}".encode() for i in range(n)]
    for v in vals:
        await m.log.propose(v)
    return vals


async def converge(c: Cluster, expect: list[bytes], timeout: float = 5.0) -> None:
    await wait_for(lambda: all(m.values == expect for m in c.live()), timeout,
                   f"all live members to apply {len(expect)} values: "
                   + str({m.nid: len(m.values) for m in c.live()}))


async def test_elect_replicate_failover(cluster: Cluster) -> None:
    lead = await cluster.leader()
    vals = await write(lead, 20, "a")
    # Concurrent writers commit too (group commit), all in one order everywhere.
    idx = await asyncio.gather(*(lead.log.propose(f"c-{i}".encode()) for i in range(30)))
    assert len(set(idx)) == 30
    expect = lead.values
    assert expect[:20] == vals and len(expect) == 50
    await converge(cluster, expect)

    t0 = time.monotonic()
    await lead.close()
    new = await cluster.leader(timeout=4.0)
    elapsed = time.monotonic() - t0
    assert new.nid != lead.nid
    assert elapsed < 3.5, f"new leader after {elapsed:.2f} s"
    more = await write(new, 5, "b")
    await converge(cluster, expect + more)


async def test_follower_propose_names_leader(cluster: Cluster) -> None:
    lead = await cluster.leader()
    await write(lead, 1, "x")
    follower = next(m for m in cluster.live() if m is not lead)
    await wait_for(lambda: follower.log.leader_id == lead.nid, 3.0, "the follower to know the leader")
    with pytest.raises(LogUnavailable, match=f"not the leader; the leader is {lead.nid} at "
                                             f"{cluster.peers[lead.nid]}"):
        await follower.log.propose(b"nope")
    # A linearizable read works on the follower and covers the write.
    ri = await follower.log.read_index(timeout=3.0)
    assert ri >= 2 and follower.log.applied_index >= ri and follower.values == [b"x-0"]


async def test_no_quorum_fails_fast(cluster: Cluster) -> None:
    lead = await cluster.leader()
    await write(lead, 3, "q")
    for m in cluster.live():
        if m is not lead:
            await m.close()
    t0 = time.monotonic()
    with pytest.raises(LogUnavailable, match="no quorum: 1 of 3 managers reachable"):
        await lead.log.propose(b"lost?")
    assert time.monotonic() - t0 < 4.0


async def test_restart_catches_up_from_wal(cluster: Cluster) -> None:
    lead = await cluster.leader()
    first = await write(lead, 10, "w")
    await converge(cluster, first)
    victim = next(m for m in cluster.live() if m is not lead)
    await victim.close()
    second = await write(lead, 10, "v")
    back = await cluster.start(victim.nid)
    # The store's replay at open: what the WAL holds as committed.
    assert back.values[:10] == first
    await converge(cluster, first + second)
    assert back.restored == []
    # The store's own compaction (raft.log interface) at its applied index.
    idx = back.log.applied_index
    await back.log.compact(idx, msgpack.packb(back.values))
    snap = back.log.snapshot()
    assert snap is not None and snap.index == idx and msgpack.unpackb(snap.data) == first + second


async def test_restart_after_compaction_gets_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, DriverConfig(snapshot_every=20, keep=5))
    try:
        for i in (1, 2, 3):
            await c.start(i)
        lead = await c.leader()
        first = await write(lead, 5, "s")
        await converge(c, first)
        victim = next(m for m in c.live() if m is not lead)
        await victim.close()
        second = await write(lead, 60, "t")
        assert lead.log.snapshot() is not None and lead.log.snapshot().index > 20  # type: ignore[union-attr]
        # MsgApps built while the victim was down wait in the leader's send queue until a dial
        # fails; if the victim came back first they would still carry the entries it lacks
        # (valid Raft, but no snapshot). Wait until the queue was dropped by a failed dial.
        chans = lead.log.driver.transport._channels

        async def queue_dropped() -> bool:
            ch = chans.get((victim.nid, "msg"))
            return ch is None or ch.queue.empty()

        await wait_for(queue_dropped, 5.0, "the leader's queue to the stopped member to be dropped")
        back = await c.start(victim.nid)
        await converge(c, first + second, timeout=8.0)
        assert back.restored, "the restarted member should have installed the leader's snapshot"
        # And it survives another restart from its own snapshot + WAL.
        await back.close()
        third = await write(lead, 3, "u")
        again = await c.start(victim.nid)
        await converge(c, first + second + third, timeout=8.0)
        assert again.log.snapshot() is not None
    finally:
        await c.close()


async def test_add_voter_and_transfer(tmp_path: Path) -> None:
    c = Cluster(tmp_path, DriverConfig(snapshot_every=0))
    extra = None
    try:
        for i in (1, 2, 3):
            await c.start(i)
        lead = await c.leader()
        vals = await write(lead, 5, "m")
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        extra = Member(4, {4: addr}, tmp_path, c.cfg, bootstrap=False)
        await extra.log.start()
        await lead.log.add_voter(4, addr, timeout=10.0)
        assert 4 in lead.log.driver.voters
        more = await write(lead, 3, "n")
        await wait_for(lambda: extra is not None and extra.values == vals + more, 5.0, "node 4 to catch up")
        await lead.log.transfer_leadership(4, timeout=5.0)
        await wait_for(lambda: extra is not None and extra.log.is_leader, 3.0, "node 4 to lead")
        await extra.log.propose(b"from-4")
        await wait_for(lambda: all(m.values[-1:] == [b"from-4"] for m in c.live()), 5.0, "replication from 4")
        # Remove old member 1; the other three carry on without it.
        await extra.log.remove_voter(1, timeout=5.0)
        assert extra.log.driver.voters == frozenset({2, 3, 4})
        await c.members[1].close()
        await extra.log.propose(b"after-remove")
        await wait_for(lambda: all(m.values[-1:] == [b"after-remove"] for m in c.live())
                       and extra is not None and extra.values[-1:] == [b"after-remove"], 5.0, "writes after removal")
    finally:
        if extra is not None:
            await extra.close()
        await c.close()


async def test_mutual_tls_transport(tmp_path: Path) -> None:
    """Three members over mutual TLS with certificates from manager.ca; a worker's certificate
    is refused by the Raft listener."""
    from manager.ca import RootCA
    from shoal.rpc.tlsutil import client_context, server_context

    ca = RootCA.create(tmp_path / "ca")
    ctxs = {}
    for nid in (1, 2, 3, 9):
        d = tmp_path / f"certs{nid}"
        ca.issue_node_files(d, f"node{nid}", "worker" if nid == 9 else "manager", "cluster1")
        ctxs[nid] = (server_context(d / "node.crt", d / "node.key", d / "ca.crt"),
                     client_context(d / "node.crt", d / "node.key", d / "ca.crt"))
    ports = free_ports(3)
    peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    logs = [ReplicatedLog(i, peers, tmp_path / f"n{i}", server_ssl=ctxs[i][0], client_ssl=ctxs[i][1])
            for i in (1, 2, 3)]
    try:
        for rl in logs:
            await rl.start()
        got: dict[int, list[bytes]] = {1: [], 2: [], 3: []}
        for i, rl in enumerate(logs, 1):
            rl.set_apply(lambda e, i=i: got[i].append(e.data))  # type: ignore[misc]
        lead = await wait_for(lambda: next((rl for rl in logs if rl.is_leader), None), 5.0, "a TLS leader")
        await lead.propose(b"secure")
        await wait_for(lambda: all(v == [b"secure"] for v in got.values()), 5.0, "TLS replication")
        # A worker certificate may not speak Raft.
        r, w = await asyncio.open_connection("127.0.0.1", ports[0], ssl=ctxs[9][1],
                                             server_hostname="swarm-manager")
        assert await asyncio.wait_for(r.read(), 5.0) == b""
        w.close()
    finally:
        for rl in logs:
            await rl.close()


async def test_a_single_voter_log_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A write-ahead log written by the single-voter log of older Shoals (entries as the store
    wrote them, no entry type byte) is not opened as a replicated log: the error says what the
    directory is and what to do."""
    wal, _ = WAL.open(tmp_path / "old" / "wal")
    wal.append([Entry(1, 1, msgpack.packb({"ts": "t", "ops": []}))], HardState(term=1, vote=1, commit=1))
    wal.close()
    with pytest.raises(WALCorruptError, match="not written by the Raft driver.*Start a new swarm"):
        ReplicatedLog(1, {1: "127.0.0.1:1"}, tmp_path / "old", bootstrap=False)
