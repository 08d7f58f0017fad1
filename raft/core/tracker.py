"""The leader's view of each follower (Figure 2 "Volatile state on leaders": nextIndex,
matchIndex), extended with etcd-io/raft's flow-control states:

- PROBE: the leader does not know where the follower's log matches; it sends one MsgApp at a
  time (and again at the next heartbeat response) and walks ``next`` back on rejection (§5.3).
- REPLICATE: the logs match up to ``match``; the leader pipelines MsgApps optimistically
  (``next`` moves on at send time), at most ``max_inflight`` unacknowledged messages.
- SNAPSHOT: the entries the follower needs were compacted; the leader sends the snapshot in
  chunks (thesis §5.3) and sends no MsgApp until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    """Replication state of one follower, see the module docstring."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded window of MsgApps sent but not yet acknowledged, each remembered by the last
    index it carried (ascending). ``capacity`` is Config.max_inflight."""

    __slots__ = ("capacity", "_q")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_inflight must be >= 1, got {capacity}")
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        """Record a MsgApp whose last entry is ``last_index``. Raises RuntimeError when full
        (the caller must check :meth:`full` first)."""
        if len(self._q) >= self.capacity:
            raise RuntimeError("inflight window is full")
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is <= ``index`` (acknowledged)."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first_one(self) -> None:
        """Forget the oldest message (used on a heartbeat response so a lost MsgApp cannot stall
        the pipeline forever)."""
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        """True when no more MsgApp may be sent."""
        return len(self._q) >= self.capacity

    def count(self) -> int:
        """Number of unacknowledged messages."""
        return len(self._q)

    def reset(self) -> None:
        """Forget everything."""
        self._q.clear()


@dataclass(slots=True)
class Progress:
    """Replication progress of one peer as seen by the leader.

    ``match``: highest index known replicated on the peer; ``next``: next index to send;
    ``probe_sent``: in PROBE, a MsgApp is outstanding (pause until a response or heartbeat);
    ``pending_snapshot``: in SNAPSHOT, the index of the snapshot being sent;
    ``snap_offset``: byte offset of the next chunk to send; ``recent_active``: heard from the
    peer since the last check-quorum round; ``is_learner``: non-voting member.
    """

    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    snap_offset: int = 0
    recent_active: bool = False
    is_learner: bool = False

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snap_offset = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Go to PROBE. After a snapshot, resume right after it; otherwise after ``match``."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Go to REPLICATE (pipelining), sending from ``match + 1``."""
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Go to SNAPSHOT, sending the snapshot at ``snapshot_index`` from byte 0."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """A successful MsgAppResp for index ``n``: raise ``match`` (and ``next``). Returns True
        if ``match`` moved (False for a stale or duplicate response)."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def optimistic_update(self, n: int) -> None:
        """A MsgApp ending at ``n`` was sent in REPLICATE: the next one starts at ``n + 1``."""
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the MsgApp whose prev index was ``rejected``; ``match_hint`` is where
        the logs may match. Returns False for a stale rejection (ignored), True if ``next``
        moved back (§5.3: "decrement nextIndex and retry")."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """True when no MsgApp should be sent now (probe outstanding, window full, snapshot)."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
