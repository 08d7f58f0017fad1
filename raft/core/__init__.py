"""The deterministic Raft core: no I/O, no clock, no asyncio; randomness only from an injected
``random.Random``. See :mod:`raft.core.node` for the driver contract (tick/step/ready/advance).

Modules: :mod:`~raft.core.messages` (entries, configurations, snapshots, messages),
:mod:`~raft.core.quorum` (majority arithmetic), :mod:`~raft.core.tracker` (per-follower
progress and flow control), :mod:`~raft.core.log` (the log view), :mod:`~raft.core.node`
(the state machine).
"""

from raft.core.log import CompactedError, LogError, RaftLog
from raft.core.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Snapshot,
    SnapshotMeta,
    message_from_dict,
    message_to_dict,
)
from raft.core.node import Config, ConfigError, ProposalDropped, RawNode, Ready, Role, SoftState, Storage

__all__ = [
    "CompactedError", "Config", "ConfigError", "ConfChange", "ConfChangeType", "ConfState", "Entry",
    "EntryType", "HardState", "LogError", "Message", "ProposalDropped", "RaftLog", "RawNode", "ReadState",
    "Ready", "Role", "Snapshot", "SnapshotMeta", "SoftState", "Storage", "message_from_dict",
    "message_to_dict",
]
