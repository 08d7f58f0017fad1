"""Scenario tests of raft.core, each naming the section of the Raft paper (Ongaro & Ousterhout
2014, "§5.x") or of Ongaro's thesis (2014, "thesis §x") whose rule it checks."""

from __future__ import annotations

import json
import random

import msgpack
import pytest

from raft.core import (
    ConfChangeType,
    Config,
    ConfigError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LogError,
    ProposalDropped,
    RaftLog,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
    Storage,
    message_from_dict,
    message_to_dict,
)
from raft.core import messages as M
from raft.core.quorum import VoteResult, committed_index, vote_result
from raft.core.tracker import Inflights, Progress, ProgressState
from raft.sim.harness import Harness


def data_of(h: Harness, nid: int) -> list[bytes]:
    return h.nodes[nid].applied


# ---------------------------------------------------------------------------- §5.2 elections


def test_s5_2_a_campaign_wins_a_majority_and_becomes_leader_of_a_new_term() -> None:
    h = Harness(3)
    h.elect(1)
    assert h.raw(1).term == 2
    assert {h.raw(i).leader for i in (1, 2, 3)} == {1}
    assert [h.raw(i).role for i in (2, 3)] == [Role.FOLLOWER, Role.FOLLOWER]


def test_s5_2_election_timeout_is_randomised_in_election_tick_to_twice_it() -> None:
    seen = set()
    for seed in range(200):
        r = RawNode(Config(id=1, election_tick=10), Storage.bootstrap([1, 2, 3]), random.Random(seed))
        seen.add(r.randomized_election_timeout)
    assert seen == set(range(10, 20))


def test_s5_2_follower_starts_election_after_timeout_without_heartbeats() -> None:
    h = Harness(3, pre_vote=False)
    h.tick(1, 20)  # 2 * election_tick: certainly past the randomised timeout
    assert h.raw(1).role is Role.CANDIDATE and h.raw(1).term == 2
    h.stabilize()
    assert h.raw(1).role is Role.LEADER


def test_s5_2_leader_heartbeats_keep_followers_from_campaigning() -> None:
    h = Harness(3)
    h.elect(1)
    for _ in range(100):
        h.tick()
        h.stabilize()
    assert h.leader() == 1 and h.raw(1).term == 2


def test_s5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    h = Harness(3, pre_vote=False)
    h.raw(1).campaign()
    h.raw(2).campaign()
    h.process()
    # Node 3 gets both requests for term 2: it grants the first and rejects the second.
    h.deliver(lambda m: m.to == 3)
    resps = [m for m in h.queue if isinstance(m, M.MsgVoteResp) and m.frm == 3]
    assert sorted(m.reject for m in resps) == [False, True]
    h.stabilize()
    leaders = [i for i in (1, 2, 3) if h.raw(i).role is Role.LEADER]
    assert len(leaders) <= 1


def test_fig2_vote_is_in_the_hard_state_of_the_ready_that_carries_the_grant() -> None:
    r = RawNode(Config(id=2), Storage.bootstrap([1, 2, 3]), random.Random(0))
    r.advance(r.ready())
    r.step(M.MsgVote(term=2, frm=1, to=2, index=1, log_term=1))
    rd = r.ready()
    assert [type(m).__name__ for m in rd.messages] == ["MsgVoteResp"]
    assert rd.hard_state == HardState(2, 1, 1) and rd.must_sync
    r.advance(rd)
    restarted = RawNode(Config(id=2), Storage(HardState(2, 1, 1), None, Storage.bootstrap([1, 2, 3]).entries),
                        random.Random(0))
    restarted.step(M.MsgVote(term=2, frm=3, to=2, index=1, log_term=1))
    resp = [m for m in restarted.ready().messages if isinstance(m, M.MsgVoteResp)]
    assert resp and resp[0].reject  # already voted for 1 in term 2, also after a restart


def test_s5_4_1_election_restriction_rejects_a_candidate_with_a_stale_log() -> None:
    h = Harness(3, pre_vote=False)
    h.elect(1)
    h.isolate(3)
    h.propose(1, b"x")
    h.stabilize()
    h.heal()
    h.raw(3).campaign()  # term 3, but its log lacks "x"
    h.stabilize()
    assert h.raw(3).role is not Role.LEADER
    assert h.leader() != 3


# ---------------------------------------------------------------------------- §5.3 replication


def test_s5_3_leader_replicates_and_every_node_applies_in_order() -> None:
    h = Harness(3)
    h.elect(1)
    for i in range(10):
        h.propose(1, b"v%d" % i)
    h.stabilize()
    h.tick(n=2)
    h.stabilize()
    for nid in (1, 2, 3):
        assert data_of(h, nid) == [b"v%d" % i for i in range(10)]


def test_s5_3_follower_rejects_append_whose_previous_entry_does_not_match() -> None:
    r = RawNode(Config(id=2), Storage.bootstrap([1, 2, 3]), random.Random(0))
    r.step(M.MsgApp(term=2, frm=1, to=2, index=5, log_term=2, entries=(), commit=1))
    rd = r.ready()
    resp = [m for m in rd.messages if isinstance(m, M.MsgAppResp)]
    assert resp and resp[0].reject and resp[0].reject_hint == 1


def test_fig2_append_rule_5_commit_only_up_to_the_last_new_entry() -> None:
    # The follower's entry 3 (term 2) is not the leader's (term 3); a MsgApp that carries only
    # entry 2 with leaderCommit 3 must commit min(leaderCommit, index of last new entry) = 2.
    boot = Storage.bootstrap([1, 2, 3])
    r = RawNode(Config(id=2), Storage(HardState(3, 0, 1), None, [*boot.entries, Entry(2, 2, b"a"),
                                                                  Entry(3, 2, b"stale")]), random.Random(0))
    r.step(M.MsgApp(term=3, frm=1, to=2, index=1, log_term=1, entries=(Entry(2, 2, b"a"),), commit=3))
    assert r.log.committed == 2
    assert [e.index for e in r.ready().committed_entries] == [1, 2]
    assert r.log.entry(3).data == b"stale"  # kept (not yet contradicted) but not committed


def test_s5_3_conflicting_uncommitted_entries_are_overwritten_by_the_leaders() -> None:
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.elect(1)
    h.isolate(1)
    h.propose(1, b"lost-1")
    h.propose(1, b"lost-2")  # only on node 1: never committed
    h.deliver()
    h.heal()
    h.isolate(1)
    h.elect(2)
    h.propose(2, b"kept")
    h.stabilize()
    h.heal()
    h.tick(2, 3)
    h.stabilize()
    assert h.log_of(1) == h.log_of(2)
    assert data_of(h, 1) == [b"kept"]
    assert b"lost-1" not in [e.data for e in h.nodes[1].stored.entries]


def test_s5_3_commit_index_reaches_followers_and_they_apply() -> None:
    h = Harness(5)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.tick(1, 1)
    h.stabilize()
    assert all(data_of(h, i) == [b"a"] for i in range(1, 6))


# ---------------------------------------------------------------------------- §5.4.2 commit rule


def test_s5_4_2_leader_does_not_commit_previous_term_entries_by_counting_replicas() -> None:
    # Everyone has entry 2 of term 2, uncommitted (Figure 8's situation). Node 1 becomes leader
    # of term 3: a majority holding entry 2 does not commit it, only entry 3 of term 3 does.
    boot = Storage.bootstrap([1, 2, 3])
    entries = [*boot.entries, Entry(2, 2, b"old")]
    h = Harness(3, pre_vote=False)
    for i in (1, 2, 3):
        h.nodes[i].stored = Storage(HardState(2, 0, 1), None, list(entries))
        h.restart(i)
    h.raw(1).campaign()
    h.deliver()  # votes out
    h.deliver()  # votes back: leader of term 3, appends its no-op (3, term 3)
    assert h.raw(1).role is Role.LEADER and h.raw(1).term == 3
    h.queue.clear()
    h.raw(1).step(M.MsgAppResp(term=3, frm=2, to=1, index=2))
    h.process()
    assert h.raw(1).log.committed == 1  # index 2 is on a majority but of term 2
    h.raw(1).step(M.MsgAppResp(term=3, frm=2, to=1, index=3))
    h.process()
    assert h.raw(1).log.committed == 3  # committing 3 commits 2 indirectly
    assert data_of(h, 1) == [b"old"]


def _win(h: Harness, nid: int) -> None:
    """Election of ``nid`` delivering only the vote traffic (nothing else moves)."""
    for _ in range(3):
        if h.raw(nid).role is Role.LEADER:
            return
        h.raw(nid).campaign()
        h.process()
        h.deliver(lambda m: isinstance(m, M.MsgVote))
        h.deliver(lambda m: isinstance(m, M.MsgVoteResp))
    assert h.raw(nid).role is Role.LEADER


def test_s5_4_2_figure_8_an_old_term_entry_on_a_majority_is_not_committed_and_may_be_replaced() -> None:
    # Indexes are one more than in the paper's figure: index 1 is the bootstrap configuration.
    h = Harness(5, pre_vote=False, check_quorum=False, max_size_per_msg=30, max_inflight=1)
    h.elect(1)
    h.tick(1, 1)
    h.stabilize()
    # (a) S1 leads term 2 and replicates index 3 to S2 only.
    for i in (3, 4, 5):
        h.isolate(i)
    h.cut -= {(1, 2), (2, 1)}
    h.propose(1, b"a")
    h.stabilize()
    assert h.log_of(2)[-1] == (3, 2) and h.raw(1).log.committed == 2
    # (b) S1 crashes; S5 wins term 3 (votes of S3, S4) and appends index 3 of term 3 locally.
    h.heal()
    h.crash(1)
    _win(h, 5)
    assert h.raw(5).term == 3 and h.log_of(5)[-1] == (3, 3)
    h.queue.clear()
    h.crash(5)
    # (c) S1 restarts, wins term 4, and gets index 3 (term 2) onto S3: a majority holds it...
    h.restart(1)
    _win(h, 1)
    assert h.raw(1).term == 4
    # S2 holds index 3 too; it tells S1 so (what it answers to an empty probe at index 3).
    h.raw(1).step(M.MsgAppResp(term=4, frm=2, to=1, index=3))
    for _ in range(10):
        h.drop(lambda m: m.to not in (1, 3) or (isinstance(m, M.MsgApp) and h.raw(3).log.last_index() >= 3
                                                and any(e.index == 4 for e in m.entries)))
        h.deliver()
    assert h.log_of(3)[-1] == (3, 2)
    assert h.raw(1).log.committed == 2  # ...but it is of term 2, so S1 does not commit it.
    # (d) S1 crashes; S5 can win term 5 (its last term 3 beats 2) and replaces index 3 — safe,
    # because it was never committed.
    h.crash(1)
    h.queue.clear()
    h.restart(5)
    _win(h, 5)
    h.stabilize()
    h.tick(5, 1)
    h.stabilize()
    assert all(h.log_of(i)[2] == (3, 3) for i in (2, 3, 4, 5))
    assert all(b"a" not in h.nodes[i].applied for i in (2, 3, 4, 5))


def test_thesis_10_2_1_leader_counts_itself_only_after_its_log_is_durable() -> None:
    r = RawNode(Config(id=1), Storage.bootstrap([1]), random.Random(0))
    r.campaign()
    rd = r.ready()
    assert r.role is Role.LEADER and [e.index for e in rd.entries] == [2]
    assert all(e.index < 2 for e in rd.committed_entries)
    assert r.log.committed == 1  # the no-op is not committed before advance
    r.advance(rd)
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == [2]


# ---------------------------------------------------------------------------- thesis §9.6, §6.2


def test_thesis_9_6_prevote_keeps_a_partitioned_node_from_raising_its_term() -> None:
    h = Harness(3, pre_vote=True)
    h.elect(1)
    h.isolate(3)
    for _ in range(60):
        h.tick()
        h.stabilize()
    assert h.raw(3).term == 2 and h.raw(3).role is Role.PRE_CANDIDATE
    h.heal()
    for _ in range(5):
        h.tick()
        h.stabilize()
    assert h.leader() == 1 and h.raw(1).term == 2  # rejoining did not disrupt the leader


def test_thesis_9_6_without_prevote_a_rejoining_node_disrupts_the_leader() -> None:
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.elect(1)
    h.isolate(3)
    h.tick(3, 40)
    h.stabilize()
    assert h.raw(3).term > 2
    h.heal()
    for _ in range(25):
        h.tick(3)
        h.stabilize()
    assert h.raw(1).term > 2  # the leader was deposed by the higher term


def test_thesis_6_2_check_quorum_leader_steps_down_without_a_majority() -> None:
    h = Harness(3, check_quorum=True)
    h.elect(1)
    h.isolate(1)
    h.tick(1, 25)
    assert h.raw(1).role is Role.FOLLOWER
    with pytest.raises(ProposalDropped):
        h.raw(1).propose(b"x")


def test_thesis_4_2_3_followers_with_a_live_leader_ignore_vote_requests() -> None:
    h = Harness(3, check_quorum=True, pre_vote=False)
    h.elect(1)
    h.raw(3).step(M.MsgVote(term=5, frm=2, to=3, index=100, log_term=100))
    h.process()
    assert h.raw(3).term == 2 and h.raw(3).vote == 1
    assert not [m for m in h.queue if isinstance(m, M.MsgVoteResp)]


def test_thesis_4_2_3_lease_of_a_node_that_cannot_campaign_still_expires() -> None:
    # A freshly added voter that has not received its log yet is not promotable; its leader
    # lease must still run out, or a new leader that needs its vote could never be elected.
    r = RawNode(Config(id=9), Storage(), random.Random(0))
    r.step(M.MsgHeartbeat(term=5, frm=3, to=9, commit=0))
    r.advance(r.ready())
    for _ in range(25):
        r.tick()
    r.step(M.MsgVote(term=6, frm=3, to=9, index=10, log_term=5))
    resp = [m for m in r.ready().messages if isinstance(m, M.MsgVoteResp)]
    assert resp and not resp[0].reject


# ---------------------------------------------------------------------------- thesis §3.10


def test_thesis_3_10_leadership_transfer_hands_over_to_an_up_to_date_voter() -> None:
    h = Harness(3)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.raw(1).transfer_leadership(3)
    h.process()
    with pytest.raises(ProposalDropped, match="transfer"):
        h.raw(1).propose(b"during")
    h.stabilize()
    assert h.leader() == 3 and h.raw(3).term == 3
    assert any(isinstance(m, M.MsgTimeoutNow) for m in h.sent)


def test_thesis_3_10_transfer_to_a_lagging_voter_catches_it_up_first() -> None:
    h = Harness(3)
    h.elect(1)
    h.isolate(3)
    for i in range(5):
        h.propose(1, b"%d" % i)
    h.stabilize()
    h.heal()
    h.raw(1).transfer_leadership(3)
    h.stabilize()
    assert h.leader() == 3
    assert h.raw(3).log.last_index() >= 7


def test_thesis_3_10_transfer_to_a_non_voter_is_refused() -> None:
    h = Harness(3)
    h.elect(1)
    with pytest.raises(ValueError, match="not a voter"):
        h.raw(1).transfer_leadership(7)


def test_thesis_3_10_transfer_is_aborted_after_an_election_timeout() -> None:
    h = Harness(3)
    h.elect(1)
    h.isolate(3)
    h.raw(1).transfer_leadership(3)
    h.tick(1, 10)
    assert h.raw(1).lead_transferee == 0
    assert h.propose(1, b"after") is not None


# ---------------------------------------------------------------------------- thesis §4.1


def test_thesis_4_1_add_a_voter_config_takes_effect_when_appended() -> None:
    h = Harness(3)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.add_node(4)
    idx = h.conf_change(1, ConfChangeType.ADD_VOTER, 4)
    assert idx is not None
    assert h.raw(1).conf.voters == {1, 2, 3, 4}  # before commit: in force once in the log
    assert h.raw(1).log.committed < idx
    h.stabilize()
    h.tick(1, 2)
    h.stabilize()
    assert h.raw(4).conf.voters == {1, 2, 3, 4}
    assert data_of(h, 4) == [b"a"]


def test_thesis_4_1_only_one_membership_change_at_a_time() -> None:
    h = Harness(3)
    h.elect(1)
    h.isolate(2)
    h.isolate(3)
    h.conf_change(1, ConfChangeType.ADD_LEARNER, 4)
    with pytest.raises(ProposalDropped, match="one at a time"):
        h.conf_change(1, ConfChangeType.ADD_LEARNER, 5)


def test_thesis_4_1_new_leader_changes_membership_only_after_committing_in_its_term() -> None:
    h = Harness(3, pre_vote=False)
    h.raw(1).campaign()
    h.deliver()
    h.deliver()  # leader, but its no-op is not acknowledged yet
    assert h.raw(1).role is Role.LEADER
    with pytest.raises(ProposalDropped, match="committed an entry of its term"):
        h.conf_change(1, ConfChangeType.ADD_LEARNER, 4)


def test_thesis_4_2_2_removed_leader_steps_down_once_the_change_commits() -> None:
    h = Harness(3)
    h.elect(1)
    h.conf_change(1, ConfChangeType.REMOVE_VOTER, 1)
    assert h.raw(1).role is Role.LEADER  # still manages the cluster until committed
    h.stabilize()
    assert h.raw(1).role is Role.FOLLOWER
    assert not h.raw(1).promotable()
    for _ in range(40):
        h.tick()
        h.stabilize()
    new = h.leader()
    assert new in (2, 3) and h.raw(new).conf.voters == {2, 3}


def test_thesis_4_2_1_learner_replicates_but_does_not_vote_or_count() -> None:
    h = Harness(3)
    h.elect(1)
    h.add_node(4)
    h.conf_change(1, ConfChangeType.ADD_LEARNER, 4)
    h.stabilize()
    h.propose(1, b"x")
    h.stabilize()
    h.tick(1, 2)
    h.stabilize()
    assert data_of(h, 4) == [b"x"]
    assert not h.raw(4).promotable()
    with pytest.raises(ValueError, match="already a learner"):
        h.raw(1).propose_conf_change(ConfChangeType.ADD_LEARNER, 4)


# ---------------------------------------------------------------------------- thesis ch. 5


def test_thesis_5_lagging_follower_gets_the_snapshot_in_chunks() -> None:
    h = Harness(3, max_size_per_msg=64)
    h.elect(1)
    h.isolate(3)
    for i in range(30):
        h.propose(1, b"value-%02d" % i)
        h.stabilize()
    h.tick(1, 2)
    h.stabilize()
    snap = h.compact(1)
    assert h.raw(1).log.first_index() == snap.index + 1
    h.heal()
    h.sent.clear()
    for _ in range(30):
        h.tick()
        h.stabilize()
    chunks = [m for m in h.sent if isinstance(m, M.MsgSnap) and m.to == 3]
    assert len({m.offset for m in chunks}) > 3 and any(m.done for m in chunks)
    assert h.raw(3).log.snapshot_index == snap.index
    assert data_of(h, 3) == data_of(h, 1) == [b"value-%02d" % i for i in range(30)]


def test_thesis_5_compaction_keeps_entries_for_slow_followers() -> None:
    h = Harness(3)
    h.elect(1)
    for i in range(10):
        h.propose(1, b"%d" % i)
    h.stabilize()
    snap = h.compact(1, keep=4)
    assert h.raw(1).log.first_index() == snap.index - 4 + 1
    with pytest.raises(LogError):
        h.compact(1)  # not after the current snapshot


def test_restart_from_persisted_state_catches_up() -> None:
    h = Harness(3)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.crash(3)
    h.propose(1, b"b")
    h.stabilize()
    h.restart(3)
    assert h.raw(3).term == 2
    for _ in range(3):
        h.tick()
        h.stabilize()
    assert data_of(h, 3) == [b"a", b"b"]


# ---------------------------------------------------------------------------- thesis §6.4


def test_thesis_6_4_read_index_on_leader_needs_a_heartbeat_quorum() -> None:
    h = Harness(3)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.raw(1).read_index(b"r1")
    h.process()
    assert h.nodes[1].read_states == []  # not before the heartbeat round
    h.stabilize()
    rs = h.nodes[1].read_states
    assert [r.context for r in rs] == [b"r1"] and rs[0].index == h.raw(1).log.committed


def test_thesis_6_4_partitioned_leader_cannot_confirm_a_read() -> None:
    h = Harness(3, check_quorum=False)
    h.elect(1)
    h.isolate(1)
    h.raw(1).read_index(b"stale?")
    for _ in range(5):
        h.tick(1)
        h.stabilize()
    assert h.nodes[1].read_states == []


def test_thesis_6_4_read_index_through_a_follower() -> None:
    h = Harness(3)
    h.elect(1)
    h.propose(1, b"a")
    h.stabilize()
    h.raw(2).read_index(b"f")
    h.stabilize()
    rs = h.nodes[2].read_states
    assert [r.context for r in rs] == [b"f"] and rs[0].index >= 3


def test_thesis_6_4_new_leader_answers_reads_only_after_committing_in_its_term() -> None:
    h = Harness(3, pre_vote=False)
    h.raw(1).campaign()
    h.deliver()
    h.deliver()
    h.raw(1).read_index(b"early")
    h.process()
    assert h.nodes[1].read_states == []
    h.stabilize()
    assert [r.context for r in h.nodes[1].read_states] == [b"early"]


# ---------------------------------------------------------------------------- flow control


def test_pipelining_respects_max_inflight_and_max_size_per_msg() -> None:
    h = Harness(3, max_inflight=2, max_size_per_msg=100)
    h.elect(1)
    h.queue.clear()
    for i in range(20):
        h.raw(1).propose(b"x" * 40 + b"%02d" % i)
    h.process()
    apps = [m for m in h.queue if isinstance(m, M.MsgApp) and m.to == 2]
    assert 1 <= len(apps) <= 2
    assert all(sum(e.size() for e in m.entries) <= 100 or len(m.entries) == 1 for m in apps)
    h.stabilize()
    h.tick(1, 2)
    h.stabilize()
    assert len(data_of(h, 2)) == 20


def test_inflights_window() -> None:
    w = Inflights(3)
    for i in (5, 7, 9):
        w.add(i)
    assert w.full()
    with pytest.raises(RuntimeError):
        w.add(11)
    w.free_le(7)
    assert w.count() == 1
    w.free_first_one()
    assert w.count() == 0


def test_progress_probe_and_replicate_transitions() -> None:
    p = Progress(match=0, next=10, inflights=Inflights(4))
    assert p.maybe_decr_to(9, 4) and p.next == 5
    assert not p.maybe_decr_to(9, 4)  # stale rejection
    assert p.maybe_update(6) and p.match == 6
    p.become_replicate()
    assert p.state is ProgressState.REPLICATE and p.next == 7
    assert not p.maybe_decr_to(5, 0)  # at or below match: stale


# ---------------------------------------------------------------------------- small parts


def test_quorum_math() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert vote_result({1, 2, 3}, {1: True, 2: True}) is VoteResult.WON
    assert vote_result({1, 2, 3}, {1: True, 2: False}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: False, 3: False}) is VoteResult.LOST


def test_log_find_conflict_by_term_and_truncation_guard() -> None:
    lg = RaftLog(None, [Entry(1, 1), Entry(2, 1), Entry(3, 2), Entry(4, 3)], 2)
    assert lg.find_conflict_by_term(4, 2) == 3
    assert lg.find_conflict_by_term(4, 1) == 2
    with pytest.raises(LogError, match="committed"):
        lg.truncate_and_append([Entry(2, 5)])
    with pytest.raises(LogError, match="beyond"):
        RaftLog(None, [Entry(1, 1)], 3)


@pytest.mark.parametrize("m", [
    M.MsgApp(term=3, frm=1, to=2, log_term=2, index=7, entries=(Entry(8, 3, b"x"),
             Entry(9, 3, b"{}", EntryType.CONF_CHANGE)), commit=6),
    M.MsgAppResp(term=3, frm=2, to=1, index=7, reject=True, reject_hint=5, log_term=2),
    M.MsgVote(term=4, frm=1, to=2, index=9, log_term=3, transfer=True),
    M.MsgVoteResp(term=4, frm=2, to=1, reject=True),
    M.MsgPreVote(term=5, frm=1, to=2, index=9, log_term=3),
    M.MsgPreVoteResp(term=5, frm=2, to=1),
    M.MsgHeartbeat(term=3, frm=1, to=2, commit=4, context=7),
    M.MsgHeartbeatResp(term=3, frm=2, to=1, context=7),
    M.MsgSnap(term=3, frm=1, to=2, meta=SnapshotMeta(10, 2, ConfState(frozenset({1, 2}), frozenset({3}))),
              offset=64, data=b"abc", done=True),
    M.MsgSnapResp(term=3, frm=2, to=1, index=10, offset=67),
    M.MsgReadIndex(term=3, frm=2, to=1, context=b"ctx"),
    M.MsgReadIndexResp(term=3, frm=1, to=2, index=12, context=b"ctx"),
    M.MsgTimeoutNow(term=3, frm=1, to=2),
    M.MsgTransferLeader(term=3, frm=2, to=1, transferee=3),
    M.MsgProp(frm=2, to=1, entries=(Entry(0, 0, b"p"),)),
])
def test_messages_round_trip_through_msgpack(m: M.Message) -> None:
    wire = msgpack.packb(message_to_dict(m), use_bin_type=True)
    assert message_from_dict(msgpack.unpackb(wire, raw=False)) == m


def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown message type"):
        message_from_dict({"type": "MsgNope"})
    with pytest.raises(ValueError, match="no field"):
        message_from_dict({"type": "MsgApp", "bogus": 1})
    with pytest.raises(ConfigError, match="election_tick"):
        RawNode(Config(id=1, election_tick=1, heartbeat_tick=1), Storage(), random.Random(0))
    with pytest.raises(ConfigError, match="positive"):
        Config(id=0).validate()
    with pytest.raises(ValueError, match="last voter"):
        RawNode(Config(id=1), Storage.bootstrap([1]), random.Random(0)).propose_conf_change(
            ConfChangeType.REMOVE_VOTER, 1)
    with pytest.raises(ValueError, match="at least one voter"):
        Storage.bootstrap([])
    r = RawNode(Config(id=1), Storage.bootstrap([1, 2, 3]), random.Random(0))
    with pytest.raises(ProposalDropped, match="no leader"):
        r.propose(b"x")
    rd = r.ready()
    with pytest.raises(RuntimeError, match="advance"):
        r.ready()
    r.advance(rd)


def test_snapshot_meta_carries_configuration() -> None:
    h = Harness(3)
    h.elect(1)
    h.add_node(4)
    h.conf_change(1, ConfChangeType.ADD_LEARNER, 4)
    h.stabilize()
    h.tick(1, 2)
    h.stabilize()
    snap = h.compact(1)
    assert snap.meta.conf == ConfState(frozenset({1, 2, 3}), frozenset({4}))
    assert isinstance(snap, Snapshot) and json.loads(snap.data) == []
