"""A hand-driven cluster of :mod:`raft.core` nodes for scenario tests (the shape of
etcd-io/raft's interaction tests): messages wait in one FIFO queue until :meth:`Harness.deliver`
or :meth:`Harness.stabilize`; nothing happens by itself. Links can be cut, nodes isolated,
crashed and restarted from what they persisted. Each node's state machine is the list of data
of the normal entries it applied (``HNode.applied``); its snapshot is that list as JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from raft.core import (
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    Message,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    Storage,
)

__all__ = ["HNode", "Harness"]


@dataclass
class HNode:
    """One node of the harness: the core (None while crashed), what it persisted, what it
    applied, the read states it got."""

    id: int
    stored: Storage
    raw: RawNode | None = None
    applied: list[bytes] = field(default_factory=list)
    applied_index: int = 0
    read_states: list[ReadState] = field(default_factory=list)


class Harness:
    """See the module docstring. ``n`` initial voters 1..n; ``config`` fields override the
    defaults of :class:`raft.core.Config` (election_tick 10, heartbeat_tick 1)."""

    def __init__(self, n: int = 3, seed: int = 0, **config: object) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.nodes: dict[int, HNode] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.sent: list[Message] = []
        self.trace: list[str] = []
        boot = Storage.bootstrap(list(range(1, n + 1)))
        for i in range(1, n + 1):
            self.add_node(i, Storage(boot.hard_state, None, list(boot.entries)))

    # ------------------------------------------------------------------ nodes

    def cfg(self, nid: int) -> Config:
        """The Config of node ``nid``."""
        return Config(id=nid, **self.config)  # type: ignore[arg-type]

    def add_node(self, nid: int, storage: Storage | None = None) -> HNode:
        """Start node ``nid`` from ``storage`` (default: empty, as a node about to join)."""
        n = HNode(nid, storage or Storage())
        self.nodes[nid] = n
        self._boot(n)
        return n

    def _boot(self, n: HNode) -> None:
        st = n.stored
        n.raw = RawNode(self.cfg(n.id), Storage(st.hard_state, st.snapshot, list(st.entries)),
                        random.Random(self.rng.getrandbits(32)))
        raw_list = json.loads(st.snapshot.data) if st.snapshot and st.snapshot.data else []
        n.applied = [str(x).encode() for x in raw_list]
        n.applied_index = st.snapshot.index if st.snapshot else 0

    def raw(self, nid: int) -> RawNode:
        """The core of node ``nid``; raises KeyError if it is crashed or unknown."""
        r = self.nodes[nid].raw
        if r is None:
            raise KeyError(f"node {nid} is crashed")
        return r

    def crash(self, nid: int) -> None:
        """Stop node ``nid``; what it persisted stays, its queued messages are dropped."""
        self.nodes[nid].raw = None
        self.queue = [m for m in self.queue if m.to != nid]

    def restart(self, nid: int) -> None:
        """Start node ``nid`` again from what it persisted."""
        self._boot(self.nodes[nid])

    def leader(self) -> int:
        """ID of the live leader with the highest term (0 if none)."""
        best, term = 0, -1
        for n in self.nodes.values():
            if n.raw is not None and n.raw.role is Role.LEADER and n.raw.term > term:
                best, term = n.id, n.raw.term
        return best

    # ------------------------------------------------------------------ network

    def isolate(self, nid: int) -> None:
        """Cut every link to and from ``nid``."""
        for o in self.nodes:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def heal(self) -> None:
        """Restore every link."""
        self.cut = set()

    def process(self) -> None:
        """Handle the Ready of every node until none has one: persist, queue messages, apply,
        record read states, advance."""
        while True:
            busy = False
            for n in self.nodes.values():
                if n.raw is None or not n.raw.has_ready():
                    continue
                busy = True
                rd = n.raw.ready()
                st = n.stored
                if rd.snapshot is not None:
                    st.snapshot = rd.snapshot
                    st.entries = []
                if rd.entries:
                    first = rd.entries[0].index
                    st.entries = [e for e in st.entries if e.index < first] + list(rd.entries)
                if rd.hard_state is not None:
                    st.hard_state = rd.hard_state
                self.queue.extend(rd.messages)
                self.sent.extend(rd.messages)
                if rd.snapshot is not None:
                    n.applied = [x.encode() for x in json.loads(rd.snapshot.data)] if rd.snapshot.data else []
                    n.applied_index = rd.snapshot.index
                for e in rd.committed_entries:
                    assert e.index == n.applied_index + 1, (n.id, e.index, n.applied_index)
                    n.applied_index = e.index
                    if e.type is EntryType.NORMAL and e.data:
                        n.applied.append(e.data)
                n.read_states.extend(rd.read_states)
                n.raw.advance(rd)
            if not busy:
                return

    def deliver(self, pred: Callable[[Message], bool] | None = None) -> int:
        """Deliver the queued messages (those matching ``pred``, default all) once, in order,
        dropping those on cut links or to crashed nodes; then process. Returns how many were
        delivered. Messages sent while delivering wait for the next call."""
        self.process()
        batch: list[Message] = []
        keep: list[Message] = []
        for m in self.queue:
            (batch if pred is None or pred(m) else keep).append(m)
        self.queue = keep
        count = 0
        for m in batch:
            n = self.nodes.get(m.to)
            if (m.frm, m.to) in self.cut or n is None or n.raw is None:
                continue
            self.trace.append(f"{m.frm}->{m.to} {type(m).__name__} term={m.term}")
            n.raw.step(m)
            count += 1
        self.process()
        return count

    def drop(self, pred: Callable[[Message], bool]) -> int:
        """Remove queued messages matching ``pred``; returns how many."""
        before = len(self.queue)
        self.queue = [m for m in self.queue if not pred(m)]
        return before - len(self.queue)

    def stabilize(self, max_rounds: int = 200) -> None:
        """Deliver until no message is queued. Raises RuntimeError if that takes more than
        ``max_rounds`` rounds."""
        self.process()
        for _ in range(max_rounds):
            if not self.queue:
                return
            self.deliver()
        raise RuntimeError(f"no quiescence after {max_rounds} rounds")

    def tick(self, nid: int | None = None, n: int = 1) -> None:
        """Tick node ``nid`` (default: every live node) ``n`` times, processing after each."""
        for _ in range(n):
            for node in self.nodes.values():
                if node.raw is not None and (nid is None or node.id == nid):
                    node.raw.tick()
            self.process()

    # ------------------------------------------------------------------ client side

    def campaign(self, nid: int) -> None:
        """Node ``nid`` starts an election; the cluster then stabilizes."""
        self.raw(nid).campaign()
        self.stabilize()

    def elect(self, nid: int) -> None:
        """Make ``nid`` leader (election, then stabilize). Raises AssertionError if it is not."""
        self.campaign(nid)
        assert self.raw(nid).role is Role.LEADER, self.raw(nid).status()

    def propose(self, nid: int, data: bytes) -> int | None:
        """Propose on node ``nid`` (no stabilize)."""
        r = self.raw(nid).propose(data)
        self.process()
        return r

    def conf_change(self, nid: int, kind: ConfChangeType, target: int) -> int | None:
        """Propose a membership change on ``nid`` (no stabilize)."""
        r = self.raw(nid).propose_conf_change(kind, target)
        self.process()
        return r

    def compact(self, nid: int, keep: int = 0) -> Snapshot:
        """Snapshot node ``nid`` at its applied index and compact its log."""
        n = self.nodes[nid]
        data = json.dumps([x.decode() for x in n.applied]).encode()
        snap = self.raw(nid).compact(n.applied_index, data, keep)
        n.stored = replace(n.stored, snapshot=snap,
                           entries=[e for e in n.stored.entries if e.index > snap.index - keep])
        return snap

    def log_of(self, nid: int) -> list[tuple[int, int]]:
        """(index, term) of node ``nid``'s in-memory log after its offset."""
        lg = self.raw(nid).log
        return [(i, lg.term(i) or 0) for i in range(lg.first_index(), lg.last_index() + 1)]

    @staticmethod
    def entries_data(entries: list[Entry]) -> list[bytes]:
        """The data of the normal, non-empty entries."""
        return [e.data for e in entries if e.type is EntryType.NORMAL and e.data]
