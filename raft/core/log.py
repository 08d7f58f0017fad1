"""The Raft log as one node sees it: a snapshot (everything up to ``snapshot_index``),
the entries after it (a prefix of them stable = persisted by the driver, the rest unstable),
the commit index and the applied index — and the configuration the log implies (thesis §4.1:
the newest configuration entry in the log is in force, committed or not).

No I/O: the driver persists what :meth:`RaftLog.unstable_entries` and
:attr:`RaftLog.unstable_snapshot` return and then calls :meth:`stable_to` /
:meth:`stable_snap_to`. On restart the driver rebuilds the log from what it persisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.core.messages import ConfChange, ConfState, Entry, EntryType, Snapshot, SnapshotMeta

__all__ = ["CompactedError", "LogError", "RaftLog"]


class LogError(Exception):
    """An operation that would break a Raft invariant (e.g. truncating a committed entry)."""


class CompactedError(LogError):
    """The requested entries were compacted into a snapshot."""


class RaftLog:
    """See the module docstring. ``snapshot`` may be None only when no entry was ever
    compacted. The entries in memory start after ``offset`` (whose term is ``offset_term``);
    ``offset`` <= ``snapshot_index``: after :meth:`compact` with ``keep`` > 0 some entries the
    snapshot covers stay for slow followers. ``conf0`` is the configuration before the first
    entry when there is no snapshot (normally empty: a new cluster's first entry is a
    BOOTSTRAP configuration entry). Stored entries at or below the snapshot's index are
    ignored on load. Raises LogError for non-contiguous entries or a commit index beyond them."""

    def __init__(self, snapshot: Snapshot | None, entries: Sequence[Entry], commit: int,
                 conf0: ConfState = ConfState()) -> None:
        self.snapshot = snapshot
        self.offset = snapshot.index if snapshot else 0
        self.offset_term = snapshot.term if snapshot else 0
        self._base_conf = snapshot.meta.conf if snapshot else conf0
        self._entries: list[Entry] = []
        self._confs: list[tuple[int, ConfState]] = []
        es = [e for e in entries if e.index > self.offset]
        for i, e in enumerate(es):
            if e.index != self.offset + 1 + i:
                raise LogError(f"stored entries are not contiguous after index {self.offset}: "
                               f"entry {i} has index {e.index}")
        self._append_raw(es)
        self.stable = self.last_index()
        self.unstable_snapshot: Snapshot | None = None
        if commit > self.last_index():
            raise LogError(f"stored commit index {commit} is beyond the last stored entry "
                           f"{self.last_index()}: the log lost entries it had committed")
        self.committed = max(commit, self.offset)
        self.applied = self.offset
        self.applying = self.offset

    # ------------------------------------------------------------------ queries

    @property
    def snapshot_index(self) -> int:
        """Index of the newest snapshot (0 without one)."""
        return self.snapshot.index if self.snapshot else 0

    def first_index(self) -> int:
        """Index of the first entry still in the log (offset + 1)."""
        return self.offset + 1

    def last_index(self) -> int:
        """Index of the last entry (or the offset when there are none)."""
        return self.offset + len(self._entries)

    def last_term(self) -> int:
        """Term of the last entry (or of the offset)."""
        return self._entries[-1].term if self._entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted (below the offset) or beyond the
        end. Index 0 has term 0."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self._entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        """True when the log has an entry at ``index`` with ``term`` (§5.3 consistency check)."""
        t = self.term(index)
        return t is not None and t == term

    def entry(self, index: int) -> Entry:
        """The entry at ``index``. Raises CompactedError/LogError when out of range."""
        if index <= self.offset:
            raise CompactedError(f"entry {index} is compacted (log starts after {self.offset})")
        if index > self.last_index():
            raise LogError(f"entry {index} is beyond the last index {self.last_index()}")
        return self._entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries with ``lo <= index < hi``, cut after ``max_bytes`` (0 = no limit; at least one
        entry is returned if any). Raises CompactedError if ``lo`` is compacted."""
        if lo <= self.offset:
            raise CompactedError(f"entry {lo} is compacted (log starts after {self.offset})")
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        es = self._entries[lo - self.offset - 1:hi - self.offset - 1]
        if max_bytes > 0:
            total = 0
            for i, e in enumerate(es):
                total += e.size()
                if total > max_bytes and i > 0:
                    return es[:i]
        return es

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1 election restriction: is a log ending at (``last_index``, ``last_term``) at
        least as up-to-date as ours?"""
        return last_term > self.last_term() or (last_term == self.last_term()
                                                and last_index >= self.last_index())

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first of ``entries`` that is new or conflicts with ours (same index,
        other term); 0 if all are already present."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term`` (or the offset): where a
        leader whose log has ``term`` at ``index`` might match ours (fast log backtracking)."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return min(index, self.offset)

    def conf_at(self, index: int) -> ConfState:
        """Configuration in force once the log is cut after ``index``."""
        for i, c in reversed(self._confs):
            if i <= index:
                return c
        return self._base_conf

    def conf(self) -> ConfState:
        """Configuration in force now (the newest configuration entry, thesis §4.1)."""
        return self._confs[-1][1] if self._confs else self._base_conf

    def last_conf_index(self) -> int:
        """Index of the newest configuration entry still in the log, else the offset."""
        return self._confs[-1][0] if self._confs else self.offset

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet persisted (to hand to the driver in a Ready)."""
        return self._entries[self.stable - self.offset:]

    def has_next_committed(self) -> bool:
        """True when committed entries wait to be handed to the application."""
        return self.committed > self.applying and self.unstable_snapshot is None

    def next_committed(self, max_bytes: int = 0) -> list[Entry]:
        """Committed entries not yet handed to the application (from ``applying + 1``)."""
        if not self.has_next_committed():
            return []
        return self.slice(self.applying + 1, self.committed + 1, max_bytes)

    # ------------------------------------------------------------------ mutations

    def _append_raw(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            self._entries.append(e)
            if e.type is EntryType.CONF_CHANGE:
                try:
                    self._confs.append((e.index, ConfChange.decode(e.data).result))
                except ValueError:
                    pass  # a malformed configuration entry changes nothing

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` (contiguous), first deleting our entries from ``entries[0].index``
        on (§5.3 "If an existing entry conflicts with a new one, delete the existing entry and all
        that follow it"). Raises LogError when that would delete a committed entry or leave a
        gap."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogError(f"refusing to overwrite committed entry {first} (committed {self.committed})")
        if first > self.last_index() + 1:
            raise LogError(f"gap: appending at {first} after last index {self.last_index()}")
        del self._entries[first - self.offset - 1:]
        while self._confs and self._confs[-1][0] >= first:
            self._confs.pop()
        self.stable = min(self.stable, first - 1)
        self._append_raw(entries)

    def maybe_append(self, index: int, log_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """Receiver side of AppendEntries (Figure 2, rules 2–5): if our log matches at
        (``index``, ``log_term``), append the new part of ``entries``, commit up to
        min(``commit``, last new index) and return that last new index; else None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            self.truncate_and_append(entries[ci - index - 1:])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> bool:
        """Raise the commit index to ``index`` (never lowers it). Returns True if it moved."""
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``index`` (the last one of ``term``). Ignored if
        the log changed since (the entry at ``index`` now has another term)."""
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def stable_snap_to(self, index: int) -> None:
        """The driver persisted the snapshot at ``index``."""
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None

    def applied_to(self, index: int) -> None:
        """The application applied everything up to ``index``."""
        if index > self.applied:
            self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (InstallSnapshot receiver, Figure 13 rule 7:
        "Discard the entire log"). It becomes the unstable snapshot until persisted; the driver
        must then drop every stored entry."""
        self.snapshot = snapshot
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        self._base_conf = snapshot.meta.conf
        self._entries = []
        self._confs = []
        self.stable = snapshot.index
        self.committed = snapshot.index
        self.applying = snapshot.index
        self.unstable_snapshot = snapshot

    def compact(self, index: int, data: bytes, keep: int = 0) -> Snapshot:
        """Make a snapshot of the application state ``data`` at ``index`` and drop the entries up
        to ``index - keep`` (thesis chapter 5; ``keep`` entries stay for slow followers, Swarm's
        LogEntriesForSlowFollowers). ``index`` must be applied, persisted and after the current
        snapshot; raises LogError otherwise."""
        if index <= self.snapshot_index:
            raise LogError(f"snapshot index {index} is not after the current snapshot {self.snapshot_index}")
        if index > self.applied:
            raise LogError(f"cannot snapshot at {index}: only {self.applied} is applied")
        if index > self.stable:
            raise LogError(f"cannot snapshot at {index}: only {self.stable} is persisted")
        if keep < 0:
            raise LogError(f"keep must be >= 0, got {keep}")
        term = self.term(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, self.conf_at(index)), data)
        cut = max(index - keep, self.offset)
        cut_term = self.term(cut)
        assert cut_term is not None
        self._base_conf = self.conf_at(cut)
        del self._entries[:cut - self.offset]
        self._confs = [(i, c) for i, c in self._confs if i > cut]
        self.offset = cut
        self.offset_term = cut_term
        self.snapshot = snap
        return snap
