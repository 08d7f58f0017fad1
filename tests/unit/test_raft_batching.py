"""Batched replication (``Config.batch_append``) and early elections when the leader's connection
is closed by its end (``RawNode.leader_lost``), in the core and on real processes' sockets.

Core tests drive :class:`raft.core.RawNode` by hand (no I/O). The driver tests run 3
:class:`raft.replicated.ReplicatedLog` members on loopback with default timing (tick 100 ms,
election timeout 1–2 s); every node is closed at the end, even on failure.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raft.core import Config, RawNode, Role, Storage
from raft.core.messages import MsgApp, MsgAppResp, MsgPreVote
from raft.driver import DriverConfig
from raft.replicated import ReplicatedLog
from tests.ports import free_ports
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def leader_of_three(**kw: object) -> RawNode:
    """Node 1 of {1, 2, 3}, made leader (votes granted by hand), its no-op persisted."""
    from raft.core.messages import MsgPreVoteResp, MsgVoteResp

    r = RawNode(Config(id=1, **kw), Storage.bootstrap([1, 2, 3]), random.Random(0))  # type: ignore[arg-type]
    r.campaign()
    r.step(MsgPreVoteResp(term=r.term + 1, frm=2, to=1, reject=False))
    r.step(MsgVoteResp(term=r.term, frm=2, to=1, reject=False))
    assert r.role is Role.LEADER
    while r.has_ready():
        rd = r.ready()
        r.advance(rd)
    # followers acknowledge the no-op: both in REPLICATE
    for f in (2, 3):
        r.step(MsgAppResp(term=r.term, frm=f, to=1, index=r.log.last_index()))
    while r.has_ready():
        r.advance(r.ready())
    r.msgs.clear()
    return r


def appends(r: RawNode, to: int) -> list[MsgApp]:
    return [m for m in r.msgs if isinstance(m, MsgApp) and m.to == to]


def test_batch_append_sends_one_msgapp_per_follower_for_many_proposals() -> None:
    r = leader_of_three(batch_append=True)
    first = r.log.last_index() + 1
    for i in range(10):
        r.propose(b"v%d" % i)
    assert appends(r, 2) == [] and appends(r, 3) == []
    assert r.has_ready()
    r.flush()
    for f in (2, 3):
        (m,) = appends(r, f)
        assert [e.index for e in m.entries] == list(range(first, first + 10))
        assert m.index == first - 1


def test_without_batch_append_each_proposal_is_sent_at_once() -> None:
    r = leader_of_three()
    for i in range(3):
        r.propose(b"v%d" % i)
    assert len(appends(r, 2)) == 3 and len(appends(r, 3)) == 3


def test_batch_append_commit_advance_waits_for_flush_or_new_entries() -> None:
    r = leader_of_three(batch_append=True)
    idx = r.propose(b"x")
    assert idx is not None
    rd = r.ready()  # flushes the MsgApps and persists the entry
    assert {m.to for m in rd.messages if isinstance(m, MsgApp)} == {2, 3}
    r.advance(rd)
    r.step(MsgAppResp(term=r.term, frm=2, to=1, index=idx))
    assert r.log.committed == idx
    assert appends(r, 3) == [] and r.commit_pending  # the commit index waits for a flush
    rd = r.ready()
    assert [e.index for e in rd.committed_entries][-1] == idx
    assert not [m for m in rd.messages if isinstance(m, MsgApp)]  # ready() leaves it pending
    r.advance(rd)
    r.flush()
    sent = [m for m in r.msgs if isinstance(m, MsgApp)]
    assert {m.to for m in sent} == {2, 3} and all(m.commit == idx for m in sent)
    assert not r.commit_pending


def test_batch_append_new_entries_carry_a_pending_commit() -> None:
    r = leader_of_three(batch_append=True)
    idx = r.propose(b"x")
    assert idx is not None
    r.advance(r.ready())
    r.step(MsgAppResp(term=r.term, frm=2, to=1, index=idx))
    assert r.commit_pending
    r.msgs.clear()
    r.propose(b"y")
    r.flush(commit=False)
    sent = [m for m in r.msgs if isinstance(m, MsgApp)]
    assert {m.to for m in sent} == {2, 3} and all(m.commit == idx for m in sent)
    assert not r.commit_pending


def follower(**kw: object) -> RawNode:
    """Node 2 of {1, 2, 3}, follower of leader 1 in term 2."""
    r = RawNode(Config(id=2, **kw), Storage.bootstrap([1, 2, 3]), random.Random(1))  # type: ignore[arg-type]
    r.step(MsgApp(term=2, frm=1, to=2, index=1, log_term=1, entries=(), commit=1))
    assert r.leader == 1 and r.role is Role.FOLLOWER
    while r.has_ready():
        r.advance(r.ready())
    return r


def test_leader_lost_then_campaign_starts_with_a_prevote() -> None:
    r = follower()
    assert r.leader_lost(1)
    assert r.leader == 0
    r.campaign()
    assert r.role is Role.PRE_CANDIDATE and r.term == 2  # a pre-vote: the term is not bumped
    assert {m.to for m in r.msgs if isinstance(m, MsgPreVote)} == {1, 3}


def test_leader_lost_ignores_non_leaders_and_needs_prevote_and_check_quorum() -> None:
    r = follower()
    assert not r.leader_lost(3)  # not our leader
    assert r.leader == 1
    r = follower(pre_vote=False)
    assert not r.leader_lost(1)
    r = follower(check_quorum=False)
    assert not r.leader_lost(1)


def test_leader_lost_drops_the_lease_so_prevotes_are_answered() -> None:
    r = follower()
    pv = MsgPreVote(term=3, frm=3, to=2, index=r.log.last_index(), log_term=r.log.last_term())
    r.step(pv)
    assert r.msgs == []  # in the leader's lease: ignored (thesis §4.2.3)
    assert r.leader_lost(1)
    r.step(pv)
    assert [type(m).__name__ for m in r.msgs] == ["MsgPreVoteResp"] and not r.msgs[0].reject  # type: ignore[attr-defined]


def test_a_live_leaders_heartbeat_ends_the_early_campaign_without_a_new_term() -> None:
    from raft.core.messages import MsgHeartbeat

    r = follower()
    r.leader_lost(1)
    r.campaign()
    assert r.role is Role.PRE_CANDIDATE and r.term == 2
    r.step(MsgHeartbeat(term=2, frm=1, to=2, commit=1))
    assert (r.role, r.leader, r.term) == (Role.FOLLOWER, 1, 2)


# ----------------------------------------------------------------------------- real sockets

@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[dict[int, ReplicatedLog]]:
    peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(3))}
    logs = {i: ReplicatedLog(i, peers, tmp_path / f"n{i}", config=DriverConfig(snapshot_every=0))
            for i in peers}
    try:
        for lg in logs.values():
            await lg.start()
        yield logs
    finally:
        for lg in logs.values():
            await lg.close()


async def test_many_concurrent_proposals_commit_in_order_everywhere(three: dict[int, ReplicatedLog]) -> None:
    applied: dict[int, list[bytes]] = {i: [] for i in three}
    for i, lg in three.items():
        lg.set_apply(lambda e, i=i: applied[i].append(e.data))  # type: ignore[misc]
    await wait_until(lambda: sum(lg.is_leader for lg in three.values()) == 1, 10, "a leader")
    lead = next(lg for lg in three.values() if lg.is_leader)
    vals = [b"v%d" % k for k in range(300)]
    idx = await asyncio.gather(*(lead.propose(v) for v in vals))
    assert sorted(idx) == list(idx)  # indexes follow proposal order
    await wait_until(lambda: all(len(a) == len(vals) for a in applied.values()), 10, "all applied")
    assert all(a == vals for a in applied.values())
    assert lead.driver.fsyncs < len(vals)  # group commit: fewer writes than entries


async def test_closed_leader_connection_elects_a_new_leader_before_the_election_timeout(
        three: dict[int, ReplicatedLog]) -> None:
    await wait_until(lambda: sum(lg.is_leader for lg in three.values()) == 1, 10, "a leader")
    lead_id = next(i for i, lg in three.items() if lg.is_leader)
    await three[lead_id].propose(b"before")
    t0 = time.monotonic()
    await three[lead_id].close()  # its sockets close, as a killed process's would
    rest = [lg for i, lg in three.items() if i != lead_id]
    await wait_until(lambda: any(lg.is_leader for lg in rest), 5, "a new leader")
    took = time.monotonic() - t0
    # The minimum election timeout is 1 s; the survivors campaign 0.05–0.5 s after the close.
    assert took < 1.0, f"new leader after {took:.2f} s"
    new = next(lg for lg in rest if lg.is_leader)
    await new.propose(b"after")
