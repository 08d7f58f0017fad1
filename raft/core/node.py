"""The Raft state machine of one node, with no I/O, no clock and no threads.

Shape (after etcd-io/raft's RawNode, written our way):

- the driver calls :meth:`RawNode.tick` every tick (the only clock), :meth:`RawNode.step`
  for every message received, and :meth:`RawNode.propose` / :meth:`RawNode.read_index` / … for
  client requests;
- whenever :meth:`RawNode.has_ready` is true it takes a :class:`Ready` with
  :meth:`RawNode.ready` and handles it **in this order**: (1) persist ``snapshot``, ``entries``
  and ``hard_state`` (fsync when ``must_sync``); (2) send ``messages``; (3) install
  ``snapshot`` into the state machine and apply ``committed_entries``; serve ``read_states``
  once applied reaches their index; (4) call :meth:`RawNode.advance` with the same Ready.

The leader counts its own log in the commit quorum only after the driver reported it durable
(thesis §10.2.1), so an entry is committed only once a majority has it on disk.

Covered: everything in Figure 2 of the Raft paper (Ongaro & Ousterhout 2014) — elections
(§5.2), replication and the consistency check (§5.3), the election restriction and the
current-term commit rule (§5.4); from Ongaro's thesis (2014): pre-vote (§9.6), check-quorum and
leader stickiness (§6.2, §4.2.3), leadership transfer (§3.10), single-server membership changes
effective on append (§4.1, with the 2015 fix: a leader changes membership only after committing
an entry of its term), log compaction and chunked InstallSnapshot (§5.1–5.3), ReadIndex (§6.4),
and pipelined, batched AppendEntries with a bounded in-flight window per follower (§10.2.1).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from raft.core.log import LogError, RaftLog
from raft.core.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgProp,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgSnap,
    MsgSnapResp,
    MsgTimeoutNow,
    MsgTransferLeader,
    MsgVote,
    MsgVoteResp,
    ReadState,
    Snapshot,
    SnapshotMeta,
)
from raft.core.quorum import VoteResult, committed_index, has_quorum, vote_result
from raft.core.tracker import Inflights, Progress, ProgressState

__all__ = ["Config", "ConfigError", "ProposalDropped", "RawNode", "Ready", "Role", "SoftState", "Storage"]


class Role(enum.Enum):
    """Server states of Figure 4, plus PRE_CANDIDATE (thesis §9.6)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ConfigError(ValueError):
    """A :class:`Config` value is out of range; the message names it and the allowed range."""


class ProposalDropped(Exception):
    """A proposal, conf change, read or transfer cannot be taken now (no leader, leadership
    transfer in progress, a membership change pending, …); the message says why. Retry later,
    possibly on another node."""


@dataclass(frozen=True, slots=True)
class Config:
    """Tuning of one node. Ticks are driver ticks (the issue: 100 ms heartbeat, election timeout
    1–2 s → heartbeat_tick 1, election_tick 10 at a 100 ms tick).

    ``election_tick``: election timeout in ticks; each timeout is drawn from
    [election_tick, 2*election_tick) (§5.2). ``heartbeat_tick``: leader heartbeat period.
    ``pre_vote`` (§9.6), ``check_quorum`` (§6.2): see the module docstring.
    ``max_inflight``: unacknowledged MsgApps per follower in REPLICATE. ``max_size_per_msg``:
    bytes of entries per MsgApp and bytes per snapshot chunk. ``max_committed_size_per_ready``:
    bytes of committed entries per Ready (0 = no limit). ``batch_append``: the leader does not
    send a MsgApp per proposal or per commit advance; it notes that followers need one and sends
    one MsgApp per follower (all new entries, the newest commit) when the driver calls
    :meth:`RawNode.flush` or takes the next :meth:`RawNode.ready` — the batching that keeps the
    message count per Ready, not per entry (etcd batches proposals the same way in its node
    loop). Only sends are delayed, so it changes no safety argument.
    """

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256
    max_size_per_msg: int = 65535
    max_committed_size_per_ready: int = 0
    batch_append: bool = False

    def validate(self) -> None:
        """Raise ConfigError for an ID or tick/limit value out of range."""
        if self.id <= 0:
            raise ConfigError(f"node id must be a positive int, got {self.id}")
        if self.heartbeat_tick < 1:
            raise ConfigError(f"heartbeat_tick must be >= 1, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(f"election_tick ({self.election_tick}) must be greater than "
                              f"heartbeat_tick ({self.heartbeat_tick}); 10x is usual")
        if self.max_inflight < 1:
            raise ConfigError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.max_size_per_msg < 1:
            raise ConfigError(f"max_size_per_msg must be >= 1, got {self.max_size_per_msg}")


@dataclass(slots=True)
class Storage:
    """What the driver persisted, to start or restart a node from: the last ``hard_state``,
    the newest ``snapshot`` and the ``entries`` after it."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    @staticmethod
    def bootstrap(voters: Iterable[int], learners: Iterable[int] = ()) -> Storage:
        """Storage of a member of a brand-new cluster: entry 1 (term 1) is a BOOTSTRAP
        configuration entry naming ``voters`` and ``learners``; it is committed. Every initial
        member must start from the same bootstrap. A node joining later starts from an empty
        ``Storage()`` and learns the configuration from the leader. Raises ValueError for an
        empty voter set or non-positive IDs."""
        vs, ls = frozenset(voters), frozenset(learners)
        if not vs:
            raise ValueError("a cluster needs at least one voter")
        if any(i <= 0 for i in vs | ls):
            raise ValueError(f"node IDs must be positive ints, got {sorted(vs | ls)}")
        cc = ConfChange(ConfChangeType.BOOTSTRAP, 0, ConfState(vs, ls - vs))
        return Storage(HardState(1, 0, 1), None, [Entry(1, 1, cc.encode(), EntryType.CONF_CHANGE)])


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: the known ``leader`` (0 = none) and this node's ``role``."""

    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """A batch of work for the driver (see the module docstring for the order).

    ``soft_state``/``hard_state``: set only when changed. ``entries``: to append to stable
    storage (they may overwrite stored entries from ``entries[0].index`` on). ``snapshot``: to
    persist and install. ``messages``: to send after persisting. ``committed_entries``: to
    apply. ``read_states``: confirmed ReadIndex requests. ``must_sync``: fsync needed (term,
    vote or entries changed).
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    committed_entries: list[Entry]
    messages: list[Message]
    read_states: list[ReadState]
    must_sync: bool


@dataclass(slots=True)
class _ReadRequest:
    seq: int
    index: int
    context: bytes
    requester: int
    acks: set[int]


@dataclass(slots=True)
class _SnapBuffer:
    term: int
    leader: int
    meta: SnapshotMeta
    data: bytearray


class RawNode:
    """One Raft node; see the module docstring. ``rng`` draws the randomised election timeouts
    (the only randomness). Restart = construct again from the persisted :class:`Storage`; the
    application must then rebuild its state from ``storage.snapshot`` (committed entries after
    it come back in the first Ready).

    Raises ConfigError for a bad config and ``raft.core.log.LogError`` for inconsistent storage.
    """

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = rng
        hs = storage.hard_state
        self.log = RaftLog(storage.snapshot, storage.entries, hs.commit)
        self.term = hs.term
        self.vote = hs.vote
        self.lead = 0
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = 0
        self._reads: list[_ReadRequest] = []
        self._reads_waiting_commit: list[tuple[bytes, int]] = []
        self._read_seq = 0
        self._snap_buf: _SnapBuffer | None = None
        self._prev_hs = hs
        self._prev_ss: SoftState | None = None
        self._ready_out: Ready | None = None
        self._bcast_pending = False  # batch_append: followers need the new entries
        self._commit_pending = False  # batch_append: followers need the new commit index
        self._reset_randomized_timeout()

    # ================================================================== public API

    @property
    def leader(self) -> int:
        """ID of the leader this node knows of (0 = none)."""
        return self.lead

    @property
    def conf(self) -> ConfState:
        """Configuration in force at this node (the newest in its log)."""
        return self.log.conf()

    def promotable(self) -> bool:
        """True when this node is a voter in its own configuration and so may campaign."""
        return self.id in self.log.conf().voters

    def tick(self) -> None:
        """Advance the logical clock by one tick: followers/candidates start an election after a
        randomised election timeout without hearing from a leader (§5.2); a leader sends
        heartbeats every ``heartbeat_tick`` and, with check-quorum, steps down if it has not
        heard from a majority within an election timeout (thesis §6.2)."""
        self.election_elapsed += 1
        if self.role is Role.LEADER:
            self.heartbeat_elapsed += 1
            if self.election_elapsed >= self.cfg.election_tick:
                self.election_elapsed = 0
                if self.cfg.check_quorum:
                    self._check_quorum()
                    if self.role is not Role.LEADER:
                        return
                if self.lead_transferee:
                    self.lead_transferee = 0  # §3.10: abort a transfer that took too long
            if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
                self.heartbeat_elapsed = 0
                self._bcast_heartbeat()
        elif self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            # A node that may not campaign (learner, or not yet told its configuration) lets
            # election_elapsed grow, so its leader lease expires and it can vote (§4.2.3).
            self.election_elapsed = 0
            self._campaign(pre_vote=self.cfg.pre_vote, transfer=False)

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured). Raises ProposalDropped if this
        node is not a voter or already the leader."""
        if self.role is Role.LEADER:
            raise ProposalDropped(f"node {self.id} is already the leader of term {self.term}")
        if not self.promotable():
            raise ProposalDropped(f"node {self.id} is not a voter in its configuration")
        self._campaign(pre_vote=self.cfg.pre_vote, transfer=False)

    def propose(self, data: bytes) -> int | None:
        """Propose ``data`` for the log. On the leader returns the index it got (committed only
        if it shows up in committed_entries with this term); on a follower the proposal is
        forwarded to the leader and None is returned. Raises ProposalDropped when there is no
        leader or a leadership transfer is in progress."""
        return self._propose(Entry(0, 0, data, EntryType.NORMAL))

    def propose_conf_change(self, change: ConfChangeType, node_id: int) -> int | None:
        """Propose a single-server membership change (thesis §4.1): add/remove a voter or a
        learner. It takes effect on each node as soon as the entry is in its log. Only one may be
        pending at a time, and only after the leader committed an entry of its term; otherwise
        ProposalDropped. ValueError for a change that makes no sense in the current
        configuration. Returns the index like :meth:`propose`."""
        cc = ConfChange.make(change, node_id, self.log.conf())
        return self._propose(Entry(0, 0, cc.encode(), EntryType.CONF_CHANGE))

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point (thesis §6.4). When confirmed, a ReadState(index,
        context) appears in a Ready (on this node, also when it is a follower); the read may be
        served once the state machine applied ``index``. Requests may be lost (leader change,
        message loss): the caller retries after a timeout. Raises ProposalDropped without a
        known leader."""
        if self.role is Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.lead:
            self._send(MsgReadIndex, self.lead, context=context)
        else:
            raise ProposalDropped(f"node {self.id} knows no leader to confirm a read")

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter ``to`` (thesis §3.10): the leader stops accepting proposals,
        brings ``to`` up to date, then sends it TimeoutNow. Aborted after an election timeout.
        Raises ProposalDropped without a known leader, ValueError (on the leader) if ``to`` is
        not a voter."""
        if self.role is Role.LEADER:
            if to not in self.log.conf().voters:
                raise ValueError(f"cannot transfer leadership to node {to}: not a voter "
                                 f"(voters: {sorted(self.log.conf().voters)})")
            self._leader_transfer(to)
        elif self.lead:
            self._send(MsgTransferLeader, self.lead, transferee=to)
        else:
            raise ProposalDropped(f"node {self.id} knows no leader to transfer leadership from")

    def compact(self, index: int, data: bytes, keep: int = 0) -> Snapshot:
        """The application saved a snapshot ``data`` of its state at applied ``index``: keep it
        as the log's snapshot (sent to followers that fall behind) and drop the entries up to
        ``index - keep`` (thesis chapter 5). The driver persists the snapshot itself (atomically)
        before calling this and may then drop the same entries from its log. Raises LogError if
        ``index`` is not applied and persisted, or not after the current snapshot."""
        return self.log.compact(index, data, keep)

    @property
    def commit_pending(self) -> bool:
        """With ``batch_append``: a commit advance that followers were not sent yet."""
        return self._commit_pending and self.role is Role.LEADER

    def flush(self, commit: bool = True) -> None:
        """With ``batch_append``: send the MsgApps that proposals and commit advances since the
        last flush deferred — one per follower that its flow control allows, carrying every new
        entry and the newest commit index. ``commit=False``: a commit advance with no new entries
        to ride on stays pending (see :attr:`commit_pending`; the driver sends it a moment later
        with ``flush()``, and heartbeats carry the commit index too). :meth:`ready` does
        ``flush(commit=False)``; a driver calls this once per batch of inputs (e.g. per
        event-loop turn) to send sooner. No-op otherwise."""
        bcast, pend_commit = self._bcast_pending, self._commit_pending
        if not bcast and not (commit and pend_commit):
            return
        self._bcast_pending = self._commit_pending = False
        if self.role is not Role.LEADER:
            return
        for i in sorted(self.prs):
            if i != self.id:
                self._send_append(i, send_if_empty=pend_commit)

    def leader_lost(self, peer: int) -> bool:
        """The driver saw clear evidence that ``peer`` stopped: its connection to us was closed
        or reset by its end (a crashed process's kernel closes its sockets). If ``peer`` is our
        leader, this follower forgets it and gives up its leader lease, so it grants pre-votes and
        votes at once (thesis §4.2.3, §9.6); the driver may then :meth:`campaign` early, after a
        short random delay, instead of waiting for the election timeout. Returns True if it acted
        (so the caller may campaign), False otherwise (not our leader, not a follower, or pre-vote
        or check-quorum off).

        Why it is safe: Raft's safety never depends on when elections start (§5.2, §5.4), and
        reads here are ReadIndex rounds, not leases (§6.4), so dropping the lease affects only
        availability. Why an early campaign does not disrupt a leader that is in fact alive (only
        the connection broke): it starts with a pre-vote (§9.6), which the leader and every
        follower still in its lease ignore, so no term is bumped; the leader's next heartbeat
        makes this node a follower again. Without pre-vote and check-quorum there is no such
        guard, so this does nothing. A network partition or a machine that dies silently resets
        no connection: those still wait for the election timeout, as etcd does in all cases."""
        if (self.role is not Role.FOLLOWER or self.lead != peer or peer == 0 or peer == self.id
                or not (self.cfg.pre_vote and self.cfg.check_quorum)):
            return False
        self.lead = 0  # no leader known: not in a lease (see step), the election timer runs on
        return True

    def step(self, m: Message) -> None:
        """Handle a message from the network. Messages with a stale term are ignored (or answered
        so the sender learns the newer term); a newer term makes this node a follower first
        (§5.1), except pre-votes and votes while a leader is known alive (§4.2.3, §9.6)."""
        if m.term == 0:
            pass
        elif m.term > self.term:
            if isinstance(m, MsgVote | MsgPreVote):
                in_lease = (self.cfg.check_quorum and self.lead != 0
                            and self.election_elapsed < self.cfg.election_tick)
                if not m.transfer and in_lease:
                    return
            if isinstance(m, MsgPreVote) or (isinstance(m, MsgPreVoteResp) and not m.reject):
                pass
            elif isinstance(m, MsgApp | MsgHeartbeat | MsgSnap):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and isinstance(m, MsgHeartbeat | MsgApp):
                self._send(MsgAppResp, m.frm)  # tells a stale leader about the newer term
            elif isinstance(m, MsgPreVote):
                self._send(MsgPreVoteResp, m.frm, reject=True)
            return

        if isinstance(m, MsgVote | MsgPreVote):
            self._handle_vote_request(m)
            return
        if self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def has_ready(self) -> bool:
        """True when :meth:`ready` has work for the driver."""
        if self._ready_out is not None:
            return False
        if self._bcast_pending and self.role is Role.LEADER:
            return True
        if self._soft_state() != self._prev_ss or self._hard_state() != self._prev_hs:
            return True
        return bool(self.msgs or self.read_states or self.log.unstable_snapshot is not None
                    or self.log.stable < self.log.last_index() or self.log.has_next_committed())

    def ready(self) -> Ready:
        """Take the next batch of work (see the module docstring). Raises RuntimeError if the
        previous Ready was not advanced yet."""
        if self._ready_out is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        self.flush(commit=False)
        ss = self._soft_state()
        hs = self._hard_state()
        committed = self.log.next_committed(self.cfg.max_committed_size_per_ready)
        if committed:
            self.log.applying = committed[-1].index
        entries = self.log.unstable_entries()
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs if hs != self._prev_hs else None,
            entries=entries,
            snapshot=self.log.unstable_snapshot,
            committed_entries=committed,
            messages=self.msgs,
            read_states=self.read_states,
            must_sync=bool(entries) or hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote,
        )
        self._prev_ss = ss
        self.msgs = []
        self.read_states = []
        self._ready_out = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver handled ``rd`` (persisted, sent, applied). Raises RuntimeError for a Ready
        that is not the outstanding one."""
        if rd is not self._ready_out:
            raise RuntimeError("advance() with a Ready that is not the one ready() returned last")
        self._ready_out = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
            self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        if self.role is Role.LEADER:
            me = self.prs.get(self.id)
            if me is not None and me.maybe_update(self.log.stable) and self._maybe_commit():
                self._bcast_append_soon(commit=True)

    def status(self) -> dict[str, Any]:
        """A summary for logs and tests: id, term, vote, role, leader, commit, applied, last
        index, snapshot index, voters, learners, and (on a leader) per-peer progress."""
        c = self.log.conf()
        return {
            "id": self.id, "term": self.term, "vote": self.vote, "role": self.role.value,
            "leader": self.lead, "commit": self.log.committed, "applied": self.log.applied,
            "last_index": self.log.last_index(), "snapshot_index": self.log.snapshot_index,
            "voters": sorted(c.voters), "learners": sorted(c.learners),
            "progress": {i: {"match": p.match, "next": p.next, "state": p.state.value}
                         for i, p in sorted(self.prs.items())} if self.role is Role.LEADER else {},
        }

    # ================================================================== state changes

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _reset_randomized_timeout(self) -> None:
        et = self.cfg.election_tick
        self.randomized_election_timeout = self.rng.randrange(et, 2 * et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.lead_transferee = 0
        self._bcast_pending = self._commit_pending = False
        self._reads = []
        self._reads_waiting_commit = []
        self.prs = {}

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # §9.6: a pre-candidate does not change its term or vote.
        self.votes = {}
        self.lead = 0
        self.election_elapsed = 0
        self._reset_randomized_timeout()
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._sync_progress()
        me = self.prs[self.id]
        me.match = self.log.stable
        me.become_replicate()
        # §5.4.2 / §6.4: a new leader appends a no-op entry of its term so it can commit.
        self._append(Entry(0, 0, b"", EntryType.NORMAL))

    def _sync_progress(self) -> None:
        """Make ``prs`` match the configuration in force (leader only)."""
        conf = self.log.conf()
        last = self.log.last_index()
        for nid in conf.nodes() | {self.id}:
            pr = self.prs.get(nid)
            if pr is None:
                pr = Progress(match=0, next=last + 1, inflights=Inflights(self.cfg.max_inflight))
                self.prs[nid] = pr
            pr.is_learner = nid in conf.learners
        for nid in list(self.prs):
            if nid not in conf.nodes() and nid != self.id:
                del self.prs[nid]
                if self.lead_transferee == nid:
                    self.lead_transferee = 0

    # ================================================================== elections

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        voters = self.log.conf().voters
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes = {self.id: True}
        if vote_result(voters, self.votes) is VoteResult.WON:
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        cls: type[MsgVote] | type[MsgPreVote] = MsgPreVote if pre_vote else MsgVote
        for v in sorted(voters):
            if v != self.id:
                self.msgs.append(cls(term=term, frm=self.id, to=v, index=self.log.last_index(),
                                     log_term=self.log.last_term(), transfer=transfer))

    def _handle_vote_request(self, m: MsgVote | MsgPreVote) -> None:
        """RequestVote receiver (Figure 2): grant if we have not voted for another candidate in
        this term (or, for a pre-vote, the candidate's term is newer) and the candidate's log is
        at least as up-to-date as ours (§5.4.1)."""
        pre = isinstance(m, MsgPreVote)
        can_vote = (self.vote == m.frm or (self.vote == 0 and self.lead == 0)
                    or (pre and m.term > self.term))
        resp: type[MsgVoteResp] | type[MsgPreVoteResp] = MsgPreVoteResp if pre else MsgVoteResp
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self.msgs.append(resp(term=m.term, frm=self.id, to=m.frm, reject=False))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.msgs.append(resp(term=self.term, frm=self.id, to=m.frm, reject=True))

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, MsgProp):
            return  # no leader to take it; the proposer times out
        if isinstance(m, MsgApp | MsgHeartbeat | MsgSnap):
            self._become_follower(m.term, m.frm)  # §5.2: a leader of our term exists
            self._step_follower(m)
            return
        pre = self.role is Role.PRE_CANDIDATE
        if (pre and isinstance(m, MsgPreVoteResp)) or (not pre and isinstance(m, MsgVoteResp)):
            assert isinstance(m, MsgPreVoteResp | MsgVoteResp)
            self.votes.setdefault(m.frm, not m.reject)
            res = vote_result(self.log.conf().voters, self.votes)
            if res is VoteResult.WON:
                if pre:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif res is VoteResult.LOST:
                self._become_follower(self.term, 0)

    # ================================================================== follower

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, MsgProp):
            if self.lead == 0:
                return
            self.msgs.append(MsgProp(term=0, frm=self.id, to=self.lead, entries=m.entries))
        elif isinstance(m, MsgApp):
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif isinstance(m, MsgHeartbeat):
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(MsgHeartbeatResp, m.frm, context=m.context)
        elif isinstance(m, MsgSnap):
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot_chunk(m)
        elif isinstance(m, MsgTransferLeader):
            if self.lead:
                self._send(MsgTransferLeader, self.lead, transferee=m.transferee)
        elif isinstance(m, MsgTimeoutNow):
            if self.promotable():
                self._campaign(pre_vote=False, transfer=True)  # §3.10: skip pre-vote and lease
        elif isinstance(m, MsgReadIndex):
            if self.lead:
                self.msgs.append(MsgReadIndex(term=self.term, frm=m.frm, to=self.lead, context=m.context))
        elif isinstance(m, MsgReadIndexResp):
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: MsgApp) -> None:
        """AppendEntries receiver (Figure 2, rules 1–5)."""
        if m.index < self.log.committed:
            self._send(MsgAppResp, m.frm, index=self.log.committed)
            return
        try:
            last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        except LogError as e:  # would overwrite a committed entry: a leader bug, never ignore
            raise AssertionError(f"node {self.id}: {e}") from e
        if last_new is not None:
            self._send(MsgAppResp, m.frm, index=last_new)
            return
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(MsgAppResp, m.frm, index=m.index, reject=True, reject_hint=hint,
                   log_term=self.log.term(hint) or 0)

    def _handle_snapshot_chunk(self, m: MsgSnap) -> None:
        """InstallSnapshot receiver (thesis Figure 5.3): collect chunks in order; on the last one,
        replace the log unless it already holds the snapshot's last entry."""
        meta = m.meta
        if meta.index <= self.log.committed:
            self._snap_buf = None
            self._send(MsgAppResp, m.frm, index=self.log.committed)
            return
        buf = self._snap_buf
        same = buf is not None and buf.meta == meta and buf.term == m.term and buf.leader == m.frm
        if m.offset == 0 and not (same and buf is not None and len(buf.data) > 0):
            buf = self._snap_buf = _SnapBuffer(m.term, m.frm, meta, bytearray())
            same = True
        if not same or buf is None or m.offset != len(buf.data):
            expect = len(buf.data) if same and buf is not None else 0
            self._send(MsgSnapResp, m.frm, index=meta.index, offset=expect, reject=True)
            return
        buf.data += m.data
        if not m.done:
            self._send(MsgSnapResp, m.frm, index=meta.index, offset=len(buf.data))
            return
        self._snap_buf = None
        snap = Snapshot(meta, bytes(buf.data))
        if self.log.match_term(meta.index, meta.term):
            # We already have the snapshot's last entry: keep the log, just commit (rule 6).
            self.log.commit_to(meta.index)
        else:
            self.log.restore(snap)
        self._send(MsgAppResp, m.frm, index=self.log.last_index())

    # ================================================================== leader

    def _propose(self, e: Entry) -> int | None:
        if self.role is Role.LEADER:
            return self._leader_propose(e)
        if self.role is Role.FOLLOWER and self.lead:
            self.msgs.append(MsgProp(term=0, frm=self.id, to=self.lead, entries=(e,)))
            return None
        raise ProposalDropped(f"node {self.id} knows no leader (role {self.role.value}, term {self.term})")

    def _leader_propose(self, e: Entry) -> int:
        if self.id not in self.prs:
            raise ProposalDropped(f"leader {self.id} was removed from the configuration")
        if self.lead_transferee:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if e.type is EntryType.CONF_CHANGE:
            if self.log.last_conf_index() > self.log.committed:
                raise ProposalDropped("a membership change is still pending; one at a time (§4.1)")
            if self.log.term(self.log.committed) != self.term:
                raise ProposalDropped("the new leader has not committed an entry of its term yet")
            try:  # recompute against our configuration (a follower's view may be stale)
                old = ConfChange.decode(e.data)
                cc = ConfChange.make(old.type, old.node_id, self.log.conf())
            except ValueError as err:
                raise ProposalDropped(f"membership change refused: {err}") from err
            e = Entry(0, 0, cc.encode(), EntryType.CONF_CHANGE)
        idx = self._append(e)
        self._bcast_append_soon(commit=False)
        return idx

    def _append(self, e: Entry) -> int:
        idx = self.log.last_index() + 1
        self.log.truncate_and_append([Entry(idx, self.term, e.data, e.type)])
        if e.type is EntryType.CONF_CHANGE:
            self._sync_progress()  # §4.1: in force as soon as it is in the log
        return idx

    def _maybe_commit(self) -> bool:
        """Figure 2 (leaders, last rule): commit the largest N replicated on a majority whose
        entry is of the current term (§5.4.2). Side effects of a commit: pending reads that
        waited for the first commit of the term proceed; a leader that committed its own
        removal steps down (thesis §4.2.2)."""
        conf = self.log.conf()
        mci = committed_index(conf.voters, {i: p.match for i, p in self.prs.items()})
        if mci <= self.log.committed or self.log.term(mci) != self.term:
            return False
        self.log.commit_to(mci)
        if self._reads_waiting_commit:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx, req in waiting:
                self._leader_read_index(ctx, req)
        if self.id not in conf.voters and self.log.committed >= self.log.last_conf_index():
            self._become_follower(self.term, 0)
        return True

    def _check_quorum(self) -> None:
        active = {i for i, p in self.prs.items() if p.recent_active or i == self.id}
        if not has_quorum(self.log.conf().voters, active):
            self._become_follower(self.term, 0)
            return
        for i, p in self.prs.items():
            if i != self.id:
                p.recent_active = False

    def _send(self, cls: type[Message], to: int, **kw: Any) -> None:
        self.msgs.append(cls(term=self.term, frm=self.id, to=to, **kw))

    def _bcast_append_soon(self, commit: bool) -> None:
        """Broadcast new entries (``commit``: or at least the new commit index) now, or at the
        next :meth:`flush` with ``batch_append``."""
        if not self.cfg.batch_append:
            self._bcast_append()
        elif commit:
            self._commit_pending = True
        else:
            self._bcast_pending = True

    def _bcast_append(self) -> None:
        for i in sorted(self.prs):
            if i != self.id:
                self._send_append(i)

    def _bcast_heartbeat(self) -> None:
        ctx = self._reads[-1].seq if self._reads else 0
        for i in sorted(self.prs):
            if i != self.id:
                pr = self.prs[i]
                self._send(MsgHeartbeat, i, commit=min(pr.match, self.log.committed), context=ctx)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send ``to`` the next MsgApp (or snapshot chunk) its progress allows. Returns True if a
        message was sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None or pr.next < self.log.first_index():
            if not pr.recent_active or self.log.snapshot is None:
                return False
            pr.become_snapshot(self.log.snapshot.index)
            self._send_snapshot_chunk(to, pr)
            return True
        ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        if not ents and not send_if_empty:
            return False
        self._send(MsgApp, to, index=prev, log_term=prev_term, entries=tuple(ents),
                   commit=self.log.committed)
        if pr.state is ProgressState.REPLICATE:
            if ents:
                pr.optimistic_update(ents[-1].index)
                pr.inflights.add(ents[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snap = self.log.snapshot
        assert snap is not None
        if pr.pending_snapshot != snap.index:
            pr.pending_snapshot = snap.index
            pr.snap_offset = 0
        off = pr.snap_offset
        chunk = snap.data[off:off + self.cfg.max_size_per_msg]
        self._send(MsgSnap, to, meta=snap.meta, offset=off, data=chunk,
                   done=off + len(chunk) >= len(snap.data))

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, MsgProp):
            for e in m.entries:
                try:
                    self._leader_propose(e)
                except ProposalDropped:
                    pass  # the follower's client times out and retries
            return
        if isinstance(m, MsgReadIndex):
            self._leader_read_index(m.context, m.frm)
            return
        if isinstance(m, MsgTransferLeader):
            self._leader_transfer(m.transferee)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if isinstance(m, MsgAppResp):
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif isinstance(m, MsgHeartbeatResp):
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.state is ProgressState.SNAPSHOT:
                if self.log.snapshot is not None:
                    self._send_snapshot_chunk(m.frm, pr)  # retransmit a lost chunk
            elif pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._ack_reads(m.context, m.frm)
        elif isinstance(m, MsgSnapResp):
            pr.recent_active = True
            if pr.state is not ProgressState.SNAPSHOT or self.log.snapshot is None:
                return
            # One chunk in flight: ``snap_offset`` is its offset. Send the next chunk only when
            # the follower reports another offset than the one in flight, so duplicated or
            # rejected chunks cannot multiply into a storm; a lost chunk is resent on the next
            # heartbeat response.
            if m.index != self.log.snapshot.index:
                if pr.pending_snapshot == self.log.snapshot.index:
                    return  # about an older snapshot: we are already sending the new one
                pr.snap_offset = 0
                self._send_snapshot_chunk(m.frm, pr)
            elif m.offset != pr.snap_offset and (m.reject or m.offset > pr.snap_offset):
                pr.snap_offset = m.offset
                if pr.snap_offset < len(self.log.snapshot.data):
                    self._send_snapshot_chunk(m.frm, pr)

    def _handle_append_resp(self, m: MsgAppResp, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            if self.role is not Role.LEADER:
                return
            self._bcast_append_soon(commit=True)
        elif old_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(MsgTimeoutNow, m.frm)

    def _leader_transfer(self, to: int) -> None:
        pr = self.prs.get(to)
        if to == self.id or pr is None or pr.is_learner:
            return
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if pr.match == self.log.last_index():
            self._send(MsgTimeoutNow, to)
        else:
            self._send_append(to)

    def _leader_read_index(self, context: bytes, requester: int) -> None:
        """ReadIndex (thesis §6.4): record the commit index, confirm leadership with a round of
        heartbeats, answer once a majority acknowledged. A leader first commits an entry of its
        own term (step 1), so reads wait for that."""
        if self.log.term(self.log.committed) != self.term:
            self._reads_waiting_commit.append((context, requester))
            return
        voters = self.log.conf().voters
        if voters == {self.id}:
            self._answer_read(self.log.committed, context, requester)
            return
        self._read_seq += 1
        self._reads.append(_ReadRequest(self._read_seq, self.log.committed, context, requester, {self.id}))
        self._bcast_heartbeat()

    def _ack_reads(self, seq: int, frm: int) -> None:
        for r in self._reads:
            if r.seq <= seq:
                r.acks.add(frm)
        voters = self.log.conf().voters
        while self._reads and has_quorum(voters, self._reads[0].acks):
            r = self._reads.pop(0)
            self._answer_read(r.index, r.context, r.requester)

    def _answer_read(self, index: int, context: bytes, requester: int) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(MsgReadIndexResp, requester, index=index, context=context)
