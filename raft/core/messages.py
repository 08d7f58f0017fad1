"""Data types of the Raft core: log entries, configurations, snapshots, hard state and messages.

Every message carries ``term``, ``frm`` (sender node ID) and ``to`` (receiver node ID); node IDs
are positive ints and 0 means "none". Each message type is its own frozen dataclass, named
after etcd-io/raft's message types (``MsgApp``, ``MsgVote``, …) and following the RPCs of
Figure 2 of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm", 2014) plus the extensions of Ongaro's thesis ("Consensus: Bridging Theory and
Practice", 2014): pre-vote (§9.6), leadership transfer (§3.10), chunked InstallSnapshot (§5.3),
ReadIndex (§6.4).

:func:`message_to_dict` / :func:`message_from_dict` convert a message to and from a plain dict
of ints, bools, bytes, lists and dicts, which msgpack encodes as it is.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MsgApp",
    "MsgAppResp",
    "MsgHeartbeat",
    "MsgHeartbeatResp",
    "MsgPreVote",
    "MsgPreVoteResp",
    "MsgProp",
    "MsgReadIndex",
    "MsgReadIndexResp",
    "MsgSnap",
    "MsgSnapResp",
    "MsgTimeoutNow",
    "MsgTransferLeader",
    "MsgVote",
    "MsgVoteResp",
    "ReadState",
    "Snapshot",
    "SnapshotMeta",
    "message_from_dict",
    "message_to_dict",
]


class EntryType(enum.IntEnum):
    """Kind of a log entry: application data, or a membership change (thesis §4.1)."""

    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: ``index`` (1-based), ``term`` (leader's term when created), ``data``
    (opaque bytes; empty for the no-op a new leader appends, thesis §6.4) and ``type``.
    A CONF_CHANGE entry's data is :meth:`ConfChange.encode`."""

    index: int
    term: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate encoded size in bytes (data plus a fixed header), for batching limits."""
        return len(self.data) + 24

    def to_wire(self) -> list[Any]:
        """``[index, term, type, data]``."""
        return [self.index, self.term, int(self.type), self.data]

    @staticmethod
    def from_wire(v: Any) -> Entry:
        """Inverse of :meth:`to_wire`; raises ValueError on a malformed value."""
        if not isinstance(v, list | tuple) or len(v) != 4:
            raise ValueError(f"entry must be [index, term, type, data], got {v!r}")
        index, term, typ, data = v
        if not isinstance(index, int) or not isinstance(term, int) or not isinstance(data, bytes):
            raise ValueError(f"entry fields have wrong types: {v!r}")
        return Entry(index, term, data, EntryType(typ))


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: the voting members and the non-voting learners (thesis §4.2.1)."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def nodes(self) -> frozenset[int]:
        """Voters and learners together."""
        return self.voters | self.learners

    def to_wire(self) -> dict[str, Any]:
        """``{"voters": [...], "learners": [...]}`` (sorted)."""
        return {"voters": sorted(self.voters), "learners": sorted(self.learners)}

    @staticmethod
    def from_wire(v: Any) -> ConfState:
        """Inverse of :meth:`to_wire`; raises ValueError on a malformed value."""
        if not isinstance(v, dict):
            raise ValueError(f"conf state must be a dict, got {v!r}")
        return ConfState(frozenset(int(x) for x in v.get("voters", [])),
                         frozenset(int(x) for x in v.get("learners", [])))


class ConfChangeType(enum.Enum):
    """Single-server membership changes (thesis §4.1), plus BOOTSTRAP for a new cluster's
    first entry."""

    ADD_VOTER = "add_voter"
    REMOVE_VOTER = "remove_voter"
    ADD_LEARNER = "add_learner"
    REMOVE_LEARNER = "remove_learner"
    BOOTSTRAP = "bootstrap"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change and the configuration it produces.

    The entry carries the whole resulting configuration (``result``), so any node can tell
    the configuration from the newest CONF_CHANGE entry in its log alone: a server always uses
    the latest configuration in its log, committed or not (thesis §4.1).
    """

    type: ConfChangeType
    node_id: int
    result: ConfState

    @staticmethod
    def make(type: ConfChangeType, node_id: int, current: ConfState) -> ConfChange:
        """Build the change ``type`` of ``node_id`` applied to ``current``.

        Raises ValueError when the change makes no sense (adding an existing voter, removing a
        node that is not there, removing the last voter, node ID not positive)."""
        if node_id <= 0:
            raise ValueError(f"node ID must be a positive int, got {node_id}")
        voters, learners = set(current.voters), set(current.learners)
        if type is ConfChangeType.ADD_VOTER:
            if node_id in voters:
                raise ValueError(f"node {node_id} is already a voter")
            learners.discard(node_id)
            voters.add(node_id)
        elif type is ConfChangeType.ADD_LEARNER:
            if node_id in voters:
                raise ValueError(f"node {node_id} is a voter; remove it first to make it a learner")
            if node_id in learners:
                raise ValueError(f"node {node_id} is already a learner")
            learners.add(node_id)
        elif type is ConfChangeType.REMOVE_VOTER:
            if node_id not in voters:
                raise ValueError(f"node {node_id} is not a voter (voters: {sorted(voters)})")
            if len(voters) == 1:
                raise ValueError("cannot remove the last voter")
            voters.discard(node_id)
        elif type is ConfChangeType.REMOVE_LEARNER:
            if node_id not in learners:
                raise ValueError(f"node {node_id} is not a learner (learners: {sorted(learners)})")
            learners.discard(node_id)
        else:
            raise ValueError("BOOTSTRAP is not a change; use Storage.bootstrap")
        return ConfChange(type, node_id, ConfState(frozenset(voters), frozenset(learners)))

    def encode(self) -> bytes:
        """JSON bytes ``{"type", "node", "voters", "learners"}`` (the CONF_CHANGE entry data)."""
        d: dict[str, Any] = {"type": self.type.value, "node": self.node_id}
        d.update(self.result.to_wire())
        return json.dumps(d, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Inverse of :meth:`encode`; raises ValueError for bytes that are not a conf change."""
        try:
            d = json.loads(data)
            return ConfChange(ConfChangeType(d["type"]), int(d["node"]), ConfState.from_wire(d))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a conf change entry: {data[:80]!r} ({e})") from e


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the log up to ``index`` (whose entry had ``term``) and the
    configuration as of that index (thesis §5.1)."""

    index: int
    term: int
    conf: ConfState

    def to_wire(self) -> dict[str, Any]:
        """``{"index", "term", "conf": {...}}``."""
        return {"index": self.index, "term": self.term, "conf": self.conf.to_wire()}

    @staticmethod
    def from_wire(v: Any) -> SnapshotMeta:
        """Inverse of :meth:`to_wire`; raises ValueError on a malformed value."""
        if not isinstance(v, dict):
            raise ValueError(f"snapshot meta must be a dict, got {v!r}")
        return SnapshotMeta(int(v["index"]), int(v["term"]), ConfState.from_wire(v["conf"]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine snapshot: ``meta`` and the application's opaque ``data``."""

    meta: SnapshotMeta
    data: bytes

    @property
    def index(self) -> int:
        """Last log index the snapshot covers."""
        return self.meta.index

    @property
    def term(self) -> int:
        """Term of the entry at :attr:`index`."""
        return self.meta.term


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be on stable storage before messages are sent (Figure 2, "Persistent
    state on all servers"): ``term`` (currentTerm), ``vote`` (votedFor, 0 = none), plus
    ``commit`` (so a restart re-applies exactly the committed entries)."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex (thesis §6.4): once the state machine has applied ``index``, a read
    for the request tagged ``context`` may be served."""

    index: int
    context: bytes


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of all messages: ``term`` of the sender (0 for MsgProp, a local/forwarded message),
    ``frm`` and ``to`` node IDs."""

    term: int = 0
    frm: int = 0
    to: int = 0

    type_name: ClassVar[str] = "Message"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgProp(Message):
    """Proposal forwarded from a follower to the leader (term 0): entries without index/term."""

    entries: tuple[Entry, ...] = ()
    type_name: ClassVar[str] = "MsgProp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgApp(Message):
    """AppendEntries RPC (Figure 2): entries after (``index``, ``log_term``) and the leader's
    ``commit``. Empty ``entries`` probes the follower's log or carries the commit index."""

    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    type_name: ClassVar[str] = "MsgApp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgAppResp(Message):
    """AppendEntries result. Success: ``index`` = last index now known to match the leader.
    Reject: ``index`` = the rejected prev index, ``reject_hint``/``log_term`` = the follower's
    guess of where the logs may match (thesis §5.4.2's conflict optimisation)."""

    index: int = 0
    reject: bool = False
    reject_hint: int = 0
    log_term: int = 0
    type_name: ClassVar[str] = "MsgAppResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgVote(Message):
    """RequestVote RPC (Figure 2): candidate's last log ``index`` and ``log_term``.
    ``transfer`` marks an election started by leadership transfer (§3.10), which bypasses the
    leader-stickiness check."""

    index: int = 0
    log_term: int = 0
    transfer: bool = False
    type_name: ClassVar[str] = "MsgVote"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgVoteResp(Message):
    """RequestVote result: ``reject`` False means the vote is granted."""

    reject: bool = False
    type_name: ClassVar[str] = "MsgVoteResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgPreVote(Message):
    """Pre-vote request (thesis §9.6): ``term`` is the term the sender would campaign in; the
    receiver's term does not change."""

    index: int = 0
    log_term: int = 0
    transfer: bool = False
    type_name: ClassVar[str] = "MsgPreVote"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgPreVoteResp(Message):
    """Pre-vote result: ``reject`` False means the receiver would vote."""

    reject: bool = False
    type_name: ClassVar[str] = "MsgPreVoteResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgHeartbeat(Message):
    """Leader heartbeat (an empty AppendEntries, §5.2) with ``commit`` capped at the follower's
    match index; ``context`` is the newest pending ReadIndex round (§6.4), 0 if none."""

    commit: int = 0
    context: int = 0
    type_name: ClassVar[str] = "MsgHeartbeat"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgHeartbeatResp(Message):
    """Heartbeat acknowledgement echoing ``context``."""

    context: int = 0
    type_name: ClassVar[str] = "MsgHeartbeatResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgSnap(Message):
    """One chunk of InstallSnapshot (Figure 13 / thesis §5.3): ``data`` at byte ``offset`` of
    the snapshot described by ``meta``; ``done`` on the last chunk."""

    meta: SnapshotMeta = field(default_factory=lambda: SnapshotMeta(0, 0, ConfState()))
    offset: int = 0
    data: bytes = b""
    done: bool = False
    type_name: ClassVar[str] = "MsgSnap"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgSnapResp(Message):
    """Chunk acknowledgement: the receiver expects byte ``offset`` next of the snapshot at
    ``index``; ``reject`` when a chunk arrived out of order (the leader resends from
    ``offset``). Installation is acknowledged by a MsgAppResp instead."""

    index: int = 0
    offset: int = 0
    reject: bool = False
    type_name: ClassVar[str] = "MsgSnapResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgReadIndex(Message):
    """ReadIndex request forwarded by a follower to the leader (thesis §6.4.1)."""

    context: bytes = b""
    type_name: ClassVar[str] = "MsgReadIndex"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgReadIndexResp(Message):
    """ReadIndex answer: the leader's confirmed commit ``index`` for request ``context``."""

    index: int = 0
    context: bytes = b""
    type_name: ClassVar[str] = "MsgReadIndexResp"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgTimeoutNow(Message):
    """Leadership transfer (thesis §3.10): "start an election now", bypassing pre-vote."""

    type_name: ClassVar[str] = "MsgTimeoutNow"


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgTransferLeader(Message):
    """Request to transfer leadership to ``transferee``, forwarded to the leader."""

    transferee: int = 0
    type_name: ClassVar[str] = "MsgTransferLeader"


_TYPES: dict[str, type[Message]] = {
    c.type_name: c
    for c in (MsgProp, MsgApp, MsgAppResp, MsgVote, MsgVoteResp, MsgPreVote, MsgPreVoteResp,
              MsgHeartbeat, MsgHeartbeatResp, MsgSnap, MsgSnapResp, MsgReadIndex,
              MsgReadIndexResp, MsgTimeoutNow, MsgTransferLeader)
}


def _field_names(cls: type[Message]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def message_to_dict(m: Message) -> dict[str, Any]:
    """Plain-dict form of ``m`` (msgpack-able): ``{"type": "MsgApp", "term", "from", "to", ...}``;
    entries become ``[index, term, type, data]`` lists and snapshot meta a dict."""
    d: dict[str, Any] = {"type": m.type_name}
    for name in _field_names(type(m)):
        v = getattr(m, name)
        if name == "entries":
            v = [e.to_wire() for e in v]
        elif isinstance(v, SnapshotMeta):
            v = v.to_wire()
        d["from" if name == "frm" else name] = v
    return d


def message_from_dict(d: dict[str, Any]) -> Message:
    """Inverse of :func:`message_to_dict`. Raises ValueError naming the problem for an unknown
    type, an unknown field or a malformed entry."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"message must be a dict with a 'type' key, got {d!r:.200}")
    cls = _TYPES.get(d["type"])
    if cls is None:
        raise ValueError(f"unknown message type {d['type']!r}; known: {sorted(_TYPES)}")
    names = _field_names(cls)
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k == "type":
            continue
        if k == "from":
            k = "frm"
        if k not in names:
            raise ValueError(f"{d['type']} has no field {k!r}")
        if k == "entries":
            v = tuple(Entry.from_wire(e) for e in v)
        elif k == "meta":
            v = SnapshotMeta.from_wire(v)
        kwargs[k] = v
    return cls(**kwargs)
