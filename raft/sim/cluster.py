"""A deterministic simulation of a Raft cluster built from :mod:`raft.core` (FoundationDB-style:
one thread, simulated network, disk and time, one seeded PRNG, so a failing seed replays
exactly).

What it simulates:

- a network that loses, duplicates, delays (hence reorders) messages, partitions the nodes into
  groups and cuts single links in one direction;
- a disk per node on which a Ready's writes are durable only after the fsync step: a crash in
  the middle of handling a Ready keeps a random prefix of the unsynced writes (none, some or
  all), as a torn WAL tail would; messages of that Ready are never sent;
- crashes and restarts (the node restarts from its durable snapshot, entries and hard state,
  and rebuilds its state machine from the snapshot);
- clients writing, compare-and-setting and reading (ReadIndex, §6.4) registers on any node,
  with proposals deduplicated by client operation ID (thesis §6.3);
- membership changes (add voter / add learner / promote / remove, including the leader),
  leadership transfers, snapshots with log compaction (and chunked InstallSnapshot).

After every step it checks (raising :class:`SafetyViolation`): election safety (one leader per
term), log matching (an index and term identify the entry and its predecessor's term), leader
completeness (a new leader of term T holds every entry known committed in a term < T), state
machine safety (every node applies the same entry at an index, and reaches the same state).
At the end it heals everything, waits for convergence (a liveness check), reads every register
and checks the client history with :mod:`raft.linearizability` — every acknowledged write must
be there.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

from raft.core import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    Storage,
    message_from_dict,
    message_to_dict,
)
from raft.core.messages import MsgVoteResp
from raft.linearizability import Operation, check_history

__all__ = ["SafetyViolation", "SimParams", "Simulation", "run"]


class SafetyViolation(AssertionError):
    """A Raft safety property (or liveness after healing) failed; the message says which, and
    the simulation's ``replay`` command reproduces it."""


@dataclass
class SimParams:
    """Knobs of one run. :meth:`from_seed` draws the fault rates and Raft options from the seed
    so that ``seed``, ``nodes`` and ``steps`` alone identify a run."""

    seed: int
    nodes: int = 3
    steps: int = 3000
    loss: float = 0.05
    dup: float = 0.03
    max_delay: int = 3
    partition_rate: float = 0.004
    heal_rate: float = 0.02
    link_cut_rate: float = 0.002
    crash_rate: float = 0.003
    torn_crash_rate: float = 0.001
    restart_rate: float = 0.03
    client_rate: float = 0.3
    clients: int = 4
    keys: int = 3
    conf_rate: float = 0.002
    transfer_rate: float = 0.002
    snapshot_interval: int = 40
    snapshot_keep: int = 5
    op_timeout: int = 80
    settle_steps: int = 1000
    pre_vote: bool = True
    check_quorum: bool = True
    election_tick: int = 10
    heartbeat_tick: int = 2
    max_inflight: int = 4
    max_size_per_msg: int = 300
    wire_roundtrip: float = 0.1
    long_delay: float = 0.0
    slow_ticks: float = 0.0
    campaign_rate: float = 0.0

    @staticmethod
    def from_seed(seed: int, nodes: int = 3, steps: int = 3000) -> SimParams:
        """Parameters for ``seed``: Raft options and fault rates vary with the seed."""
        r = random.Random(f"params-{seed}")
        return SimParams(
            seed=seed, nodes=nodes, steps=steps,
            loss=r.choice([0.0, 0.02, 0.1, 0.25]),
            dup=r.choice([0.0, 0.05, 0.15]),
            max_delay=r.choice([1, 3, 8]),
            partition_rate=r.choice([0.0, 0.003, 0.01]),
            link_cut_rate=r.choice([0.0, 0.002, 0.005]),
            crash_rate=r.choice([0.0, 0.002, 0.006]),
            torn_crash_rate=r.choice([0.0, 0.0005, 0.002]),
            conf_rate=r.choice([0.0, 0.002, 0.005]),
            transfer_rate=r.choice([0.0, 0.002, 0.005]),
            snapshot_interval=r.choice([20, 40, 1000]),
            snapshot_keep=r.choice([0, 5]),
            pre_vote=r.random() < 0.75,
            check_quorum=r.random() < 0.75,
            max_inflight=r.choice([1, 4, 64]),
            max_size_per_msg=r.choice([60, 300, 4096]),
            restart_rate=r.choice([0.03, 0.3]),
            long_delay=r.choice([0.0, 0.0, 0.01]),
            slow_ticks=r.choice([0.0, 0.0, 0.3]),
            campaign_rate=r.choice([0.0, 0.0, 0.003]),
        )


def _digest(prev: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(prev, digest_size=8)
    h.update(f"{e.index}/{e.term}/{int(e.type)}/".encode())
    h.update(e.data)
    return h.digest()


class KV:
    """The simulated state machine: registers ``key -> int | None``, a set of applied client
    operation IDs (duplicates are ignored, thesis §6.3), the applied index and a running digest
    of everything applied (to compare states across nodes)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.seen: set[str] = set()
        self.index = 0
        self.digest = b"\0" * 8

    def apply(self, e: Entry) -> tuple[str, Any] | None:
        """Apply ``e``; returns (op ID, result) for a client operation applied now, else None."""
        self.index = e.index
        self.digest = _digest(self.digest, e)
        if e.type is not EntryType.NORMAL or not e.data:
            return None
        op = json.loads(e.data)
        if op["id"] in self.seen:
            return None
        self.seen.add(op["id"])
        k = op["k"]
        if op["op"] == "w":
            self.data[k] = op["v"]
            return op["id"], None
        ok = self.data.get(k) == op["e"]
        if ok:
            self.data[k] = op["v"]
        return op["id"], ok

    def snapshot(self) -> bytes:
        """Serialise the whole state (deterministic JSON)."""
        return json.dumps({"data": self.data, "seen": sorted(self.seen), "index": self.index,
                           "digest": self.digest.hex()}, sort_keys=True).encode()

    @staticmethod
    def restore(data: bytes) -> KV:
        """Inverse of :meth:`snapshot`."""
        kv = KV()
        if data:
            d = json.loads(data)
            kv.data = d["data"]
            kv.seen = set(d["seen"])
            kv.index = d["index"]
            kv.digest = bytes.fromhex(d["digest"])
        return kv


class Disk:
    """A node's stable storage. Writes are queued until :meth:`fsync`; :meth:`crash` keeps only a
    prefix of the queue (like a torn WAL tail)."""

    def __init__(self, storage: Storage) -> None:
        self.hs = storage.hard_state
        self.snapshot: Snapshot | None = storage.snapshot
        self.entries: list[Entry] = list(storage.entries)
        self.pending: list[tuple[str, Any]] = []

    def write(self, rd: Ready) -> None:
        """Queue the Ready's writes: snapshot (install), entries, hard state — in WAL order."""
        if rd.snapshot is not None:
            self.pending.append(("install", rd.snapshot))
        if rd.entries:
            self.pending.append(("entries", rd.entries))
        if rd.hard_state is not None:
            self.pending.append(("hs", rd.hard_state))

    def _apply(self, kind: str, v: Any) -> None:
        if kind == "install":
            self.snapshot = v
            self.entries = []
        elif kind == "entries":
            first = v[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(v)
        else:
            self.hs = v

    def fsync(self) -> None:
        """Make every queued write durable."""
        for kind, v in self.pending:
            self._apply(kind, v)
        self.pending = []

    def crash(self, keep: int) -> None:
        """Lose all but the first ``keep`` queued writes."""
        for kind, v in self.pending[:keep]:
            self._apply(kind, v)
        self.pending = []

    def save_snapshot(self, snap: Snapshot, keep: int) -> None:
        """Atomically store an application snapshot and drop entries up to index - keep."""
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.index - keep]

    def storage(self) -> Storage:
        """What a restart reads back."""
        return Storage(self.hs, self.snapshot, list(self.entries))


@dataclass
class SimNode:
    """One simulated server: its Raft core (None while crashed), disk and state machine."""

    id: int
    disk: Disk
    raw: RawNode | None = None
    kv: KV = field(default_factory=KV)
    decommissioned: bool = False
    commit_seen: int = 0
    pending_reads: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _ClientOp:
    op: Operation
    node: int
    started: int
    read_index: int | None = None


class Simulation:
    """One seeded run; :meth:`run` raises SafetyViolation on the first failed check."""

    def __init__(self, params: SimParams) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.now = 0
        self.clock = 0
        self.net: list[tuple[int, int, Message]] = []
        self.net_seq = 0
        self.group: dict[int, int] = {}
        self.cut_links: set[tuple[int, int]] = set()
        self.nodes: dict[int, SimNode] = {}
        self.next_id = params.nodes + 1
        boot = Storage.bootstrap(list(range(1, params.nodes + 1)))
        for i in range(1, params.nodes + 1):
            n = SimNode(i, Disk(boot))
            self._start(n)
            self.nodes[i] = n
        # safety bookkeeping
        self.leaders: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}
        self.log_facts: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.committed: dict[int, tuple[int, bytes, int]] = {}  # index -> (term, data, commit term)
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.digests: dict[int, bytes] = {}
        # clients
        self.history: list[Operation] = []
        self.client_ops: dict[str, _ClientOp] = {}
        self.busy_clients: dict[int, str] = {}
        self.op_counter = 0
        self.stats: dict[str, int] = {"elections": 0, "crashes": 0, "torn_crashes": 0, "restarts": 0, "conf_changes": 0,
                                      "snapshots": 0, "snap_installs": 0, "transfers": 0, "acked": 0,
                                      "messages": 0}

    @property
    def replay(self) -> str:
        """The command that replays this run exactly."""
        return f"python -m raft.sim --seed {self.p.seed} --nodes {self.p.nodes} --steps {self.p.steps}"

    def fail(self, what: str) -> SafetyViolation:
        """A SafetyViolation naming the seed, step and replay command."""
        return SafetyViolation(f"seed {self.p.seed}, step {self.now}: {what}\n  replay: {self.replay}")

    # ------------------------------------------------------------------ nodes

    def _config(self, nid: int) -> Config:
        p = self.p
        return Config(id=nid, election_tick=p.election_tick, heartbeat_tick=p.heartbeat_tick,
                      pre_vote=p.pre_vote, check_quorum=p.check_quorum, max_inflight=p.max_inflight,
                      max_size_per_msg=p.max_size_per_msg)

    def _start(self, n: SimNode) -> None:
        st = n.disk.storage()
        n.raw = RawNode(self._config(n.id), st, random.Random(self.rng.getrandbits(64)))
        n.kv = KV.restore(st.snapshot.data) if st.snapshot else KV()
        n.commit_seen = n.raw.log.committed
        n.pending_reads = []

    def _crash(self, n: SimNode) -> None:
        assert n.raw is not None
        self.stats["crashes"] += 1
        if n.raw.has_ready():  # crash in the middle of handling a Ready
            rd = n.raw.ready()
            n.disk.write(rd)
            n.disk.crash(self.rng.randint(0, len(n.disk.pending)))
        self._down(n)

    def _down(self, n: SimNode) -> None:
        n.raw = None
        for opid, c in list(self.client_ops.items()):
            if c.node == n.id:
                self._abandon(opid)

    def _alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self._alive():
            assert n.raw is not None
            if n.raw.role is Role.LEADER and (best is None or n.raw.term > (best.raw.term if best.raw else 0)):
                best = n
        return best

    # ------------------------------------------------------------------ network

    def _cut(self, a: int, b: int) -> bool:
        return self.group.get(a, 0) != self.group.get(b, 0) or (a, b) in self.cut_links

    def _send(self, m: Message, reliable: bool = False) -> None:
        self.stats["messages"] += 1
        if self._cut(m.frm, m.to):
            return
        if not reliable and self.rng.random() < self.p.loss:
            return
        if self.rng.random() < self.p.wire_roundtrip:
            m2 = message_from_dict(message_to_dict(m))
            if m2 != m:
                raise self.fail(f"message does not survive to_dict/from_dict: {m!r}")
        copies = 2 if (not reliable and self.rng.random() < self.p.dup) else 1
        for _ in range(copies):
            self.net_seq += 1
            delay = self.rng.randint(1, self.p.max_delay)
            if self.p.long_delay and self.rng.random() < self.p.long_delay:
                delay += self.rng.randint(10, 60)  # a very stale message arrives much later
            heapq.heappush(self.net, (self.now + delay, self.net_seq, m))

    def _deliver(self) -> None:
        if len(self.net) > 200 * len(self.nodes) + 1000:
            raise self.fail(f"message storm: {len(self.net)} messages in flight")
        due: list[Message] = []
        while self.net and self.net[0][0] <= self.now:
            due.append(heapq.heappop(self.net)[2])
        self.rng.shuffle(due)
        for m in due:
            n = self.nodes.get(m.to)
            if n is None or n.raw is None or self._cut(m.frm, m.to):
                continue
            n.raw.step(m)

    # ------------------------------------------------------------------ Ready handling + checks

    def _handle_ready(self, n: SimNode) -> None:
        raw = n.raw
        assert raw is not None
        rd = raw.ready()
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self._check_new_leader(n)
        for e in rd.entries:
            prev = raw.log.term(e.index - 1)
            if prev is None:
                raise self.fail(f"node {n.id} appends entry {e.index} without its predecessor")
            fact = (e.data, prev)
            old = self.log_facts.setdefault((e.index, e.term), fact)
            if old != fact:
                raise self.fail(f"log matching: entry ({e.index}, term {e.term}) differs between logs "
                                f"(data/prev term {old[0][:40]!r}/{old[1]} vs {fact[0][:40]!r}/{fact[1]})")
        n.disk.write(rd)
        if self.p.torn_crash_rate and self.rng.random() < self.p.torn_crash_rate:
            # Crash between writing and fsync: a random prefix of the writes survives, nothing
            # of this Ready was sent or applied.
            self.stats["torn_crashes"] += 1
            n.disk.crash(self.rng.randint(0, len(n.disk.pending)))
            self._down(n)
            return
        n.disk.fsync()
        if rd.hard_state is not None:
            self._record_commits(n, rd.hard_state)
        for m in rd.messages:
            if isinstance(m, MsgVoteResp) and not m.reject:
                voted = self.votes.setdefault((m.frm, m.term), m.to)
                if voted != m.to:
                    raise self.fail(f"node {m.frm} voted for both {voted} and {m.to} in term {m.term}")
            self._send(m)
        if rd.snapshot is not None:
            self.stats["snap_installs"] += 1
            n.kv = KV.restore(rd.snapshot.data)
            want = self.digests.get(rd.snapshot.index)
            if n.kv.index != rd.snapshot.index or (want is not None and want != n.kv.digest):
                raise self.fail(f"node {n.id} installed a snapshot at {rd.snapshot.index} whose state "
                                f"differs from the applied history")
        for e in rd.committed_entries:
            self._apply(n, e)
        for rs in rd.read_states:
            opid = rs.context.decode()
            c = self.client_ops.get(opid)
            if c is not None and c.node == n.id and c.read_index is None:
                c.read_index = rs.index
                n.pending_reads.append((rs.index, opid))
        self._serve_reads(n)
        raw.advance(rd)
        if (n.kv.index - raw.log.snapshot_index >= self.p.snapshot_interval
                and n.kv.index <= raw.log.stable and n.kv.index == raw.log.applied):
            snap = raw.compact(n.kv.index, n.kv.snapshot(), self.p.snapshot_keep)
            n.disk.save_snapshot(snap, self.p.snapshot_keep)
            self.stats["snapshots"] += 1

    def _check_new_leader(self, n: SimNode) -> None:
        raw = n.raw
        assert raw is not None
        self.stats["elections"] += 1
        other = self.leaders.setdefault(raw.term, n.id)
        if other != n.id:
            raise self.fail(f"election safety: nodes {other} and {n.id} are both leaders of term {raw.term}")
        for i, (t, _data, cterm) in self.committed.items():
            if cterm < raw.term and i > raw.log.offset and raw.log.term(i) != t:
                raise self.fail(f"leader completeness: leader {n.id} of term {raw.term} lacks entry {i} "
                                f"(term {t}) committed in term {cterm}")

    def _record_commits(self, n: SimNode, hs: HardState) -> None:
        raw = n.raw
        assert raw is not None
        lo = max(n.commit_seen, raw.log.offset)
        for i in range(lo + 1, min(hs.commit, raw.log.last_index()) + 1):
            e = raw.log.entry(i)
            old = self.committed.get(i)
            if old is None:
                self.committed[i] = (e.term, e.data, hs.term)
            elif (old[0], old[1]) != (e.term, e.data):
                raise self.fail(f"state machine safety: node {n.id} committed entry {i} term {e.term} "
                                f"but term {old[0]} was committed there before")
            elif hs.term < old[2]:
                self.committed[i] = (old[0], old[1], hs.term)
        n.commit_seen = max(n.commit_seen, hs.commit)

    def _apply(self, n: SimNode, e: Entry) -> None:
        if e.index != n.kv.index + 1:
            raise self.fail(f"node {n.id} applies entry {e.index} after {n.kv.index}")
        old = self.applied.setdefault(e.index, (e.term, e.data))
        if old != (e.term, e.data):
            raise self.fail(f"state machine safety: node {n.id} applies entry {e.index} (term {e.term}) "
                            f"but another node applied term {old[0]} there")
        res = n.kv.apply(e)
        want = self.digests.setdefault(e.index, n.kv.digest)
        if want != n.kv.digest:
            raise self.fail(f"node {n.id} reached another state at index {e.index}")
        if e.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            if cc.type in (ConfChangeType.REMOVE_VOTER, ConfChangeType.REMOVE_LEARNER):
                gone = self.nodes.get(cc.node_id)
                if gone is not None and cc.node_id not in cc.result.nodes():
                    gone.decommissioned = True
        if res is not None:
            opid, result = res
            c = self.client_ops.get(opid)
            if c is not None and c.node == n.id:
                self._complete(opid, result)

    def _serve_reads(self, n: SimNode) -> None:
        keep = []
        for idx, opid in n.pending_reads:
            c = self.client_ops.get(opid)
            if c is None:
                continue
            if n.kv.index >= idx:
                self._complete(opid, n.kv.data.get(str(c.op.key)))
            else:
                keep.append((idx, opid))
        n.pending_reads = keep

    # ------------------------------------------------------------------ clients

    def _tick_clock(self) -> int:
        self.clock += 1
        return self.clock

    def _issue(self, client: int, node: SimNode, kind: str, key: str) -> None:
        assert node.raw is not None
        self.op_counter += 1
        opid = f"c{client}-{self.op_counter}"
        value = self.op_counter
        expected = None
        if kind == "cas":
            expected = self.rng.choice([None, *range(max(1, self.op_counter - 6), self.op_counter)])
        op = Operation(client=client, call=self._tick_clock(), ret=None, kind=kind, key=key,
                       value=None if kind == "r" else value, expected=expected, result=None)
        try:
            if kind == "r":
                node.raw.read_index(opid.encode())
            else:
                body: dict[str, Any] = {"id": opid, "k": key, "op": "w" if kind == "w" else "cas", "v": value}
                if kind == "cas":
                    body["e"] = expected
                node.raw.propose(json.dumps(body, sort_keys=True).encode())
        except ProposalDropped:
            return  # refused before taking effect: not part of the history
        self.history.append(op)
        self.client_ops[opid] = _ClientOp(op, node.id, self.now)
        self.busy_clients[client] = opid

    def _complete(self, opid: str, result: Any) -> None:
        c = self.client_ops.pop(opid)
        c.op.ret = self._tick_clock()
        c.op.result = result
        self.stats["acked"] += 1
        self.busy_clients.pop(c.op.client, None)

    def _abandon(self, opid: str) -> None:
        c = self.client_ops.pop(opid)
        self.busy_clients.pop(c.op.client, None)
        if c.op.kind == "r":  # a read that never returned has no effect
            self.history = [o for o in self.history if o is not c.op]

    def _clients(self) -> None:
        for opid, c in list(self.client_ops.items()):
            if self.now - c.started > self.p.op_timeout:
                self._abandon(opid)
        if self.rng.random() >= self.p.client_rate:
            return
        idle = [c for c in range(self.p.clients) if c not in self.busy_clients]
        alive = [n for n in self._alive() if not n.decommissioned]
        if not idle or not alive:
            return
        client = self.rng.choice(idle)
        leader = self._leader()
        node = leader if leader is not None and self.rng.random() < 0.6 else self.rng.choice(alive)
        r = self.rng.random()
        kind = "w" if r < 0.45 else "r" if r < 0.9 else "cas"
        self._issue(client, node, kind, f"k{self.rng.randrange(self.p.keys)}")

    # ------------------------------------------------------------------ faults

    def _faults(self) -> None:
        p, rng = self.p, self.rng
        ids = sorted(self.nodes)
        if rng.random() < p.partition_rate:
            self.group = {i: rng.randrange(2) for i in ids}
        if self.group and rng.random() < p.heal_rate:
            self.group = {}
        if rng.random() < p.link_cut_rate:
            a, b = rng.sample(ids, 2)
            self.cut_links.add((a, b))
        if self.cut_links and rng.random() < p.heal_rate:
            self.cut_links.discard(sorted(self.cut_links)[rng.randrange(len(self.cut_links))])
        if rng.random() < p.crash_rate:
            alive = [n for n in self._alive() if not n.decommissioned]
            if alive:
                self._crash(rng.choice(alive))
        for n in self.nodes.values():
            if n.raw is None and not n.decommissioned and rng.random() < p.restart_rate:
                self.stats["restarts"] += 1
                self._start(n)
        for n in self.nodes.values():
            if n.decommissioned and n.raw is not None:
                self._crash(n)
        if p.campaign_rate and rng.random() < p.campaign_rate:
            cands = [n for n in self._alive() if n.raw is not None and n.raw.role is not Role.LEADER
                     and n.raw.promotable()]
            if cands:
                rng.choice(cands).raw.campaign()  # type: ignore[union-attr]
        leader = self._leader()
        if leader is not None and leader.raw is not None:
            if rng.random() < p.conf_rate:
                self._conf_change(leader)
            if rng.random() < p.transfer_rate:
                voters = sorted(leader.raw.conf.voters - {leader.id})
                if voters:
                    self.stats["transfers"] += 1
                    leader.raw.transfer_leadership(rng.choice(voters))

    def _conf_change(self, leader: SimNode) -> None:
        raw = leader.raw
        assert raw is not None
        conf = raw.conf
        rng = self.rng
        lo = max(2, self.p.nodes - 1)
        try:
            if conf.learners and rng.random() < 0.5:
                kind = ConfChangeType.ADD_VOTER if rng.random() < 0.8 else ConfChangeType.REMOVE_LEARNER
                raw.propose_conf_change(kind, rng.choice(sorted(conf.learners)))
            elif len(conf.voters) > lo and rng.random() < 0.5:
                raw.propose_conf_change(ConfChangeType.REMOVE_VOTER, rng.choice(sorted(conf.voters)))
            elif len(conf.voters) <= self.p.nodes:
                nid = self.next_id
                kind = ConfChangeType.ADD_LEARNER if rng.random() < 0.5 else ConfChangeType.ADD_VOTER
                raw.propose_conf_change(kind, nid)
                self.next_id += 1
                n = SimNode(nid, Disk(Storage()))
                self._start(n)
                self.nodes[nid] = n
            else:
                return
            self.stats["conf_changes"] += 1
        except ProposalDropped:
            pass

    # ------------------------------------------------------------------ main loop

    def _process(self) -> None:
        for _ in range(1000):
            busy = False
            for n in list(self.nodes.values()):
                if n.raw is not None and n.raw.has_ready():
                    busy = True
                    self._handle_ready(n)
            if not busy:
                return
        raise self.fail("Ready loop does not settle (a node produces work forever)")

    def step(self, faults: bool = True) -> None:
        """One time unit: faults, client requests, message delivery, a tick on every live node,
        then every Ready handled (and checked)."""
        self.now += 1
        if faults:
            self._faults()
            self._clients()
        self._deliver()
        self._process()
        for n in self._alive():
            assert n.raw is not None
            if faults and self.p.slow_ticks and n.id % 2 == 0 and self.rng.random() < self.p.slow_ticks:
                continue  # this node's clock runs slower (skew)
            n.raw.tick()
        self._process()

    def _converged(self) -> bool:
        leader = self._leader()
        if leader is None or leader.raw is None:
            return False
        members = leader.raw.conf.nodes()
        target = leader.raw.log.last_index()
        if leader.raw.log.committed != target:
            return False
        for nid in members:
            n = self.nodes.get(nid)
            if n is None or n.raw is None or n.kv.index != target:
                return False
        return True

    def settle(self) -> SimNode:
        """Heal the network, restart crashed members, stop faults and wait until every member
        applied the leader's whole log; then read every key on the leader. Raises
        SafetyViolation if that does not happen within ``settle_steps``."""
        self.group = {}
        self.cut_links = set()
        self.p.loss = 0.0
        self.p.dup = 0.0
        self.p.max_delay = min(self.p.max_delay, 2)
        self.p.torn_crash_rate = 0.0
        self.p.long_delay = 0.0
        for n in self.nodes.values():
            if n.raw is None and not n.decommissioned:
                self._start(n)
        for opid in list(self.client_ops):
            self._abandon(opid)
        # Liveness: converge, or at least keep making progress (a far-behind follower with a
        # small window catches up slowly); settle_steps without any node applying more fails.
        deadline = self.now + self.p.settle_steps
        cap = self.now + 20 * self.p.settle_steps
        progress = -1
        while not self._converged():
            total = sum(n.kv.index for n in self.nodes.values() if n.raw is not None)
            if total > progress:
                progress = total
                deadline = self.now + self.p.settle_steps
            if self.now > min(deadline, cap):
                status = {n.id: n.raw.status() if n.raw else "down" for n in self.nodes.values()
                          if not n.decommissioned}
                raise self.fail(f"no progress for {self.p.settle_steps} steps after healing: {status}")
            self.step(faults=False)
        # Read every key through ReadIndex on the current leader; a read lost to a leadership
        # change (e.g. a transfer still in flight) is abandoned and asked again.
        deadline = self.now + self.p.settle_steps
        todo = list(range(self.p.keys))
        while todo:
            k = todo[0]
            leader = self._leader()
            if leader is not None and not self.client_ops:
                n_before = len(self.history)
                self._issue(1000 + k, leader, "r", f"k{k}")
                issued = len(self.history) > n_before
                for _ in range(4 * self.p.election_tick):
                    if not self.client_ops:
                        break
                    self.step(faults=False)
                if issued and not self.client_ops:
                    todo.pop(0)
                for opid in list(self.client_ops):
                    self._abandon(opid)
            if self.now > deadline:
                raise self.fail("final reads did not complete after healing")
            self.step(faults=False)
        while not self._converged():
            if self.now > cap:
                raise self.fail("the cluster lost its leader after healing and did not recover")
            self.step(faults=False)
        leader = self._leader()
        assert leader is not None and leader.raw is not None
        # Committed entries are never lost: the final leader holds every one (or its snapshot
        # covers it), and all members reached the same state.
        lg = leader.raw.log
        for i, (t, _data, _ct) in self.committed.items():
            if i > lg.offset and lg.term(i) != t:
                raise self.fail(f"committed entry {i} (term {t}) is missing from the final leader {leader.id}")
            if i > lg.last_index():
                raise self.fail(f"committed entry {i} is beyond the final leader's log ({lg.last_index()})")
        digests = {self.nodes[i].kv.digest for i in leader.raw.conf.nodes() if i in self.nodes}
        if len(digests) != 1:
            raise self.fail("members did not converge to the same state")
        return leader

    def run(self) -> dict[str, Any]:
        """Run ``steps`` steps with faults, settle, check the history. Returns statistics;
        raises SafetyViolation on the first violation."""
        for _ in range(self.p.steps):
            self.step()
        self.settle()
        res = check_history(self.history)
        if not res.ok:
            raise self.fail(f"client history is not linearizable: {res.explanation}")
        return {**self.stats, "ops": len(self.history), "steps": self.now,
                "commit": max(self.committed, default=0)}


def run(seed: int, nodes: int = 3, steps: int = 3000) -> dict[str, Any]:
    """Run the simulation for ``seed`` (parameters from :meth:`SimParams.from_seed`)."""
    return Simulation(SimParams.from_seed(seed, nodes, steps)).run()
