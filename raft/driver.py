"""The asyncio driver: runs a :class:`raft.core.RawNode` on real storage and a real network.

Follows the driver contract of ``raft/core/README.md`` (etcd-io/raft's RawNode loop):

1. a tick timer (default 100 ms; heartbeat every tick, election after 10–20 ticks, i.e. a
   randomised 1–2 s election timeout) calls ``node.tick()``;
2. every message from :class:`raft.transport.Transport` is stepped into the node;
3. for each :class:`raft.core.Ready`: persist the snapshot (atomically), the entries and the
   hard state to the WAL with ONE write + fsync for the whole Ready (group commit), in a worker
   thread; while that write runs, apply the Ready's committed entries in order (``apply``
   callback): they are on a majority's disks already, and on the leader on its own too (etcd's
   server applies in parallel with its WAL write the same way); then send the messages (on the
   leader, MsgApp/MsgHeartbeat go out before its own write, as thesis §10.2.1 allows: the core
   counts the leader's entries only once advanced); then install a snapshot (after its write)
   and serve confirmed reads; then ``node.advance``;
2b. batching: the core runs with ``batch_append`` — proposals and responses stepped during one
   event-loop turn are sent to each follower as one MsgApp at the end of the turn
   (``node.flush()`` from a ``call_soon``), not one per proposal; a commit advance with no new
   entries to carry it is sent :data:`COMMIT_FLUSH_DELAY` later (2 ms) unless new entries carry
   it first;
4. every ``snapshot_every`` applied entries, the state machine's bytes (``snapshot_source``
   callback) are saved as a snapshot and the log before ``index - keep`` is dropped.

On-disk layout in ``data_dir``: ``wal/`` (:class:`raft.wal.WAL`) and ``snap/``
(:class:`raft.snapshot.Snapshotter`). The WAL's entry data is ``[type u8] + data`` (type 0 =
normal, 1 = membership change) so that membership entries come back as such after a restart. A
snapshot file's data is msgpack ``{"conf": {"voters", "learners"}, "addrs": {id: "host:port"},
"sm": <state machine bytes>}``; the snapshot the core sends to followers carries
``{"addrs", "sm"}`` (the configuration travels in its metadata).

Peer addresses are replicated through the log: a normal entry whose data starts with
:data:`ADDR_MAGIC` followed by msgpack ``{"addrs": {id: "host:port"}}`` (the whole address
book) is consumed by the driver (never given to ``apply``), so every member, the new one too,
learns where every member lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from raft import wal as walmod
from raft.core import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    Storage,
)
from raft.core.messages import MsgApp, MsgHeartbeat
from raft.log import LogUnavailable
from raft.snapshot import Snapshot as DiskSnapshot
from raft.snapshot import Snapshotter
from raft.transport import PeerCheck, Transport, parse_addr
from shoal.base.util import private_dir

__all__ = ["ADDR_MAGIC", "AppliedEntry", "DriverConfig", "RaftDriver"]

log = logging.getLogger(__name__)

ADDR_MAGIC = b"\xffraft-addr\x00"
COMMIT_FLUSH_DELAY = 0.002
"""Seconds a commit advance with no new entries waits before it is sent on its own."""
INLINE_WRITE_MAX_SECS = 0.002
"""Small Readies are written on the event loop only while the WAL's average write+fsync is below this."""


@dataclass(frozen=True, slots=True)
class AppliedEntry:
    """A committed application entry handed to ``apply``: ``index``, ``term``, ``data``."""

    index: int
    term: int
    data: bytes


@dataclass(slots=True)
class DriverConfig:
    """Timing and compaction settings.

    ``tick`` seconds per logical tick (default 0.1); ``heartbeat_tick`` and ``election_tick``
    in ticks (defaults 1 and 10: heartbeat 100 ms, election timeout randomised in
    [10, 20) ticks = 1–2 s); ``snapshot_every`` applied entries between snapshots (Swarm: 10,000)
    and ``keep`` entries kept after one for slow followers (Swarm: 500); 0 disables automatic
    snapshots. ``max_size_per_msg`` bytes per MsgApp / snapshot chunk. ``leader_loss_campaign``:
    when the leader's connection to this follower is closed or reset by the leader's end (its
    process died), drop the leader lease and campaign (pre-vote first) after a random 0.5–5
    ticks (50–500 ms at the default tick; a continuous delay, so two followers rarely collide)
    rather than a full election timeout (:meth:`raft.core.RawNode.leader_lost` explains why that
    is safe); silent failures (partitions, a dead machine) still wait for the election timeout.
    False: a closed connection means nothing (election timeout only, as etcd). ``inline_write_entries``: a Ready with at most this many
    entries (and no snapshot) is written and fsynced on the event loop itself while recent
    fsyncs took under 2 ms: handing a small write to a worker thread and back costs more
    (about 0.1 ms here) than the fsync it overlaps; bigger Readies, or a slow disk, go to the
    thread so the loop keeps serving the network. 0 = always the thread.
    """

    tick: float = 0.1
    heartbeat_tick: int = 1
    election_tick: int = 10
    snapshot_every: int = 10_000
    keep: int = 500
    max_size_per_msg: int = 1 << 20
    max_inflight: int = 256
    leader_loss_campaign: bool = True
    inline_write_entries: int = 2

    @property
    def election_timeout(self) -> float:
        """The base election timeout in seconds (``election_tick * tick``)."""
        return self.election_tick * self.tick


def _encode_entry(e: Entry) -> walmod.Entry:
    return walmod.Entry(e.index, e.term, bytes([int(e.type)]) + e.data)


def _decode_entry(e: walmod.Entry) -> Entry:
    if not e.data:
        raise walmod.WALCorruptError(f"WAL entry {e.index} has no type byte")
    try:
        kind = EntryType(e.data[0])
    except ValueError:
        raise walmod.WALCorruptError(
            f"WAL entry {e.index} has an unknown entry type byte {e.data[0]:#04x}: this log was not "
            "written by the Raft driver (a single-manager log from an older Shoal?); it cannot be "
            "opened as a replicated log. Start a new swarm, or move the directory aside and rejoin "
            "as a manager") from None
    return Entry(e.index, e.term, e.data[1:], kind)


class RaftDriver:
    """One Raft member: the core, its WAL and snapshots in ``data_dir``, and the transport.

    ``node_id``: this member's positive ID. ``peers``: ``{id: "host:port"}`` of the members
    known at start (this node's own entry is its advertised address). ``bootstrap``: when the
    data directory is empty, start a brand-new cluster whose voters are ``peers``' keys (every
    initial member must be given the same set); False = join an existing cluster (wait to be
    added by the leader). ``apply(AppliedEntry)`` is called once per committed application
    entry, in index order; ``restore(index, term, sm_bytes)`` when a snapshot from the leader
    replaces the state; ``snapshot_source() -> bytes`` gives the state machine's bytes at the
    applied index (for automatic snapshots). ``server_ssl``/``client_ssl`` are the TLS contexts
    (None = plain TCP); ``peer_check`` vets inbound connections (:data:`raft.transport.PeerCheck`).

    Opening reads the disk synchronously and raises :class:`raft.wal.WALCorruptError` /
    :class:`raft.snapshot.SnapshotCorruptError` for damage. Call :meth:`start` on the loop.
    """

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        data_dir: Path | str,
        *,
        apply: Callable[[AppliedEntry], None] | None = None,
        restore: Callable[[int, int, bytes], None] | None = None,
        snapshot_source: Callable[[], bytes] | None = None,
        config: DriverConfig | None = None,
        bootstrap: bool = True,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
        peer_check: PeerCheck | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node ID must be a positive int, got {node_id}")
        self.id = node_id
        self.cfg = config or DriverConfig()
        self.dir = Path(data_dir)
        private_dir(self.dir)
        self.apply_fn = apply
        self.restore_fn = restore
        self.snapshot_source = snapshot_source
        self.addrs: dict[int, str] = dict(peers)
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl

        self._recover_wal_dir()
        self._snapshotter = Snapshotter(self.dir / "snap")
        disk_snap = self._snapshotter.load()
        self._wal, rec = walmod.WAL.open(self.dir / "wal")
        core_snap: Snapshot | None = None
        if disk_snap is not None:
            d = msgpack.unpackb(disk_snap.data, raw=False, strict_map_key=False)
            conf = ConfState.from_wire(d["conf"])
            self.addrs.update({int(k): str(v) for k, v in d.get("addrs", {}).items()})
            self.sm_snapshot: DiskSnapshot | None = DiskSnapshot(disk_snap.index, disk_snap.term, d["sm"])
            core_snap = Snapshot(SnapshotMeta(disk_snap.index, disk_snap.term, conf),
                                 self._wrap_sm(d["sm"]))
        else:
            self.sm_snapshot = None
        snap_index = disk_snap.index if disk_snap else 0
        entries = [_decode_entry(e) for e in rec.entries if e.index > snap_index]
        if entries and entries[0].index != snap_index + 1:
            raise walmod.WALCorruptError(
                f"WAL in {self.dir} starts at index {entries[0].index} but the snapshot ends at "
                f"{snap_index}: entries are missing")
        hs = rec.hard_state
        fresh = disk_snap is None and not rec.entries and hs == walmod.HardState()
        if fresh and bootstrap:
            storage = Storage.bootstrap(sorted(peers))
            self._wal.append([_encode_entry(e) for e in storage.entries],
                             walmod.HardState(storage.hard_state.term, storage.hard_state.vote,
                                              storage.hard_state.commit))
        else:
            last = entries[-1].index if entries else snap_index
            commit = min(max(hs.commit, snap_index), last)
            storage = Storage(HardState(hs.term, hs.vote, commit), core_snap, entries)
        self.restart_commit = storage.hard_state.commit
        for e in storage.entries:  # addresses replicated through the log
            if e.type is EntryType.NORMAL and e.data.startswith(ADDR_MAGIC) and e.index <= self.restart_commit:
                self._learn_addr(e.data)
        self.node = RawNode(
            Config(id=node_id, election_tick=self.cfg.election_tick, heartbeat_tick=self.cfg.heartbeat_tick,
                   max_size_per_msg=self.cfg.max_size_per_msg, max_inflight=self.cfg.max_inflight,
                   batch_append=True),
            storage, rng or random.Random())
        self.snap_index = snap_index
        self.applied = snap_index
        self.leader = 0
        self.role = Role.FOLLOWER
        self.transport = Transport(node_id, self.addrs, self._on_message, server_ssl, client_ssl,
                                   peer_check=peer_check, on_peer_lost=self._on_peer_lost)
        self._wake = asyncio.Event()
        self._flush_due = False
        self._commit_timer: asyncio.TimerHandle | None = None
        self._tick_due = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[int, tuple[int, asyncio.Future[int]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_states: list[tuple[int, bytes]] = []
        self._applied_cond = asyncio.Condition()
        self._changed = asyncio.Event()  # set on leader/role/config/applied changes
        self._advanced = asyncio.Event()  # set after every node.advance (and on close/failure)
        self._closed = False
        self._failed: BaseException | None = None
        self.fsyncs = 0
        self._write_secs = 0.0  # moving average of a WAL write+fsync, seconds

    # ------------------------------------------------------------------ lifecycle

    def _recover_wal_dir(self) -> None:
        """Finish or roll back a WAL replacement interrupted by a crash (see _replace_wal)."""
        wal, new, old = self.dir / "wal", self.dir / "wal.new", self.dir / "wal.old"
        if not wal.exists() and new.exists():
            os.rename(new, wal)
        for d in (new, old):
            if d.exists():
                shutil.rmtree(d)

    async def start(self, host: str | None = None, port: int | None = None, listen: bool = True) -> None:
        """Listen for peers (default: this node's address in ``peers``; port 0 = any) and run the
        loop. ``listen=False``: another server hands inbound connections to
        ``self.transport.accept``. A sole voter campaigns at once (no election timeout to wait).
        Raises OSError if the port is taken."""
        if not listen:
            pass
        elif host is None or port is None:
            own = self.addrs.get(self.id)
            if own is None:
                raise ValueError(f"no address for node {self.id}: pass host and port")
            h, p = parse_addr(own)
            host = h if host is None else host
            port = p if port is None else port
        if listen:
            assert host is not None and port is not None
            await self.transport.start(host, port)
        loop = asyncio.get_running_loop()
        if self.node.conf.voters == frozenset({self.id}) and self.node.role is not Role.LEADER:
            self.node.campaign()
            self._wake.set()
        self._timer = loop.call_later(self.cfg.tick, self._on_tick)
        self._task = loop.create_task(self._run(), name=f"raft-driver {self.id}")

    async def close(self) -> None:
        """Stop the loop, the timer and the transport, fail pending proposals/reads, close the
        WAL. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._advanced.set()
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.transport.close()
        self._fail_all(LogUnavailable("the Raft log is closed"))
        await asyncio.to_thread(self._wal.close)

    # ------------------------------------------------------------------ inputs

    def _on_tick(self) -> None:
        if self._closed:
            return
        self._tick_due += 1
        self._wake.set()
        self._timer = asyncio.get_running_loop().call_later(self.cfg.tick, self._on_tick)

    def _on_message(self, m: Message) -> None:
        if self._closed:
            return
        self.node.step(m)
        self._flush_soon()
        self._wake.set()

    def _on_peer_lost(self, peer: int) -> None:
        """The transport saw ``peer`` close or reset its connection to us (see
        :meth:`raft.core.RawNode.leader_lost`)."""
        if self._closed or not self.cfg.leader_loss_campaign or not self.node.leader_lost(peer):
            return
        self._wake.set()
        if self.node.promotable():
            delay = random.uniform(0.5, 5.0) * self.cfg.tick
            log.info("raft %d: leader %d closed its connection; campaigning in %.0f ms unless a leader "
                     "shows up", self.id, peer, delay * 1e3)
            asyncio.get_running_loop().call_later(delay, self._early_campaign)

    def _early_campaign(self) -> None:
        if self._closed or self.node.role is not Role.FOLLOWER or self.node.leader:
            return  # a leader (the old one after all, or a new one) was heard from meanwhile
        try:
            self.node.campaign()
        except ProposalDropped:
            return
        self._wake.set()

    def _flush_soon(self) -> None:
        """Send the MsgApps that this event-loop turn's proposals and responses call for at the
        end of the turn, one per follower (the core's ``batch_append``)."""
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self._closed or self.node.role is not Role.LEADER:
            return
        self.node.flush(commit=False)
        self._send_leader_msgs()
        if self.node.commit_pending and self._commit_timer is None:
            # A commit advance alone waits a moment for new entries to carry it (a busy leader
            # sends them within the moment), so it does not cost a message round of its own.
            self._commit_timer = asyncio.get_running_loop().call_later(COMMIT_FLUSH_DELAY, self._flush_commit)

    def _flush_commit(self) -> None:
        self._commit_timer = None
        if self._closed or self.node.role is not Role.LEADER:
            return
        self.node.flush()
        self._send_leader_msgs()

    def _send_leader_msgs(self) -> None:
        """On the leader, send MsgApp/MsgHeartbeat right away rather than after the Ready being
        persisted now (thesis §10.2.1: replication runs in parallel with the leader's write; the
        core counts the leader's own entries only once advanced). Keeps followers busy while the
        leader fsyncs: the pipelining that group commit needs."""
        if self.node.role is not Role.LEADER or not self.node.msgs:
            return
        keep = []
        for m in self.node.msgs:
            if isinstance(m, MsgApp | MsgHeartbeat) and m.to != self.id:
                self.transport.send(m)
            else:
                keep.append(m)
        self.node.msgs = keep

    def propose(self, data: bytes) -> tuple[int, asyncio.Future[int]]:
        """Propose ``data`` on the leader; return ``(index, future)``; the future resolves to the
        index once the entry is committed and applied here, or fails with LogUnavailable if the
        entry was lost to a leader change. Raises ProposalDropped (no leader / transfer in
        progress), LogUnavailable (not the leader, closed, storage failed)."""
        self._check_usable()
        if self.node.role is not Role.LEADER:
            raise LogUnavailable(self.not_leader_message())
        idx = self.node.propose(data)
        assert idx is not None
        self._flush_soon()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[idx] = (self.node.term, fut)
        self._wake.set()
        return idx, fut

    def propose_conf_change(self, change: Any, node_id: int) -> tuple[int, asyncio.Future[int]]:
        """Like :meth:`propose` for a :class:`raft.core.ConfChangeType` change of ``node_id``.
        Raises ValueError for a change that makes no sense, ProposalDropped when one is pending."""
        self._check_usable()
        if self.node.role is not Role.LEADER:
            raise LogUnavailable(self.not_leader_message())
        idx = self.node.propose_conf_change(change, node_id)
        assert idx is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[idx] = (self.node.term, fut)
        self._wake.set()
        return idx, fut

    def read_index(self, ctx: bytes) -> asyncio.Future[int]:
        """Ask for a linearizable read point (thesis §6.4); the future resolves to the read index
        once this node applied it. Raises ProposalDropped without a known leader."""
        self._check_usable()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            self.node.read_index(ctx)
        except ProposalDropped:
            del self._reads[ctx]
            raise
        self._wake.set()
        return fut

    def transfer_leadership(self, to: int) -> None:
        """Start a leadership transfer to voter ``to`` (thesis §3.10). Raises ProposalDropped /
        ValueError as :meth:`raft.core.RawNode.transfer_leadership`."""
        self._check_usable()
        self.node.transfer_leadership(to)
        self._wake.set()

    def forget_read(self, ctx: bytes) -> None:
        """Drop a read request that timed out."""
        self._reads.pop(ctx, None)

    def _check_usable(self) -> None:
        if self._closed:
            raise LogUnavailable("the Raft log is closed")
        if self._failed is not None:
            raise LogUnavailable(f"the Raft log failed earlier: {self._failed}")

    # ------------------------------------------------------------------ status

    @property
    def voters(self) -> frozenset[int]:
        """Voters of the configuration in force here."""
        return self.node.conf.voters

    def reachable_voters(self, within: float | None = None) -> int:
        """How many voters (this node included) were heard from within ``within`` seconds
        (default 1.5 election timeouts)."""
        heard = self.transport.reachable(self.cfg.election_timeout * 1.5 if within is None else within)
        return sum(1 for v in self.voters if v == self.id or v in heard)

    def no_quorum_message(self, within: float | None = None) -> str:
        """``"no quorum: N of M managers reachable"`` (heard from within ``within`` seconds)."""
        return f"no quorum: {self.reachable_voters(within)} of {len(self.voters)} managers reachable"

    def has_quorum(self) -> bool:
        """True when a majority of the voters was heard from recently."""
        return self.reachable_voters() * 2 > len(self.voters)

    def not_leader_message(self) -> str:
        """The LogUnavailable text for a write on a non-leader."""
        lead = self.node.leader
        if lead and lead != self.id:
            return f"not the leader; the leader is {lead} at {self.addrs.get(lead, '?')}"
        if not self.has_quorum():
            return self.no_quorum_message()
        return "no leader elected yet (an election is in progress); retry"

    async def wait_changed(self, timeout: float) -> None:
        """Wait until leader/role/configuration/applied index change or ``timeout`` s pass."""
        self._changed.clear()
        # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives
        # in the same loop turn as the event (the caller's task then never stops).
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            waiter.cancel()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._tick_due:
                    self._tick_due -= 1
                    self.node.tick()
                while self.node.has_ready():
                    await self._handle_ready(self.node.ready())
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # storage failure: the node must stop participating
            log.exception("raft node %d stopped", self.id)
            self._failed = e
            self._advanced.set()
            self._fail_all(LogUnavailable(f"the Raft log failed: {e}"))
            self.transport.peers.clear()

    def _persist_timed(self, rd: Ready) -> None:
        t0 = time.perf_counter()
        self._persist(rd)
        self._write_secs = 0.8 * self._write_secs + 0.2 * (time.perf_counter() - t0)

    def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._save_snapshot(rd.snapshot)
            self._replace_wal(rd.snapshot.index)
        hs = rd.hard_state
        whs = walmod.HardState(hs.term, hs.vote, hs.commit) if hs is not None else None
        if rd.entries or whs is not None:
            self._wal.append([_encode_entry(e) for e in rd.entries], whs, sync=rd.must_sync or bool(rd.entries))
            self.fsyncs += 1

    def _save_snapshot(self, s: Snapshot) -> None:
        d = msgpack.unpackb(s.data, raw=False, strict_map_key=False)
        body = msgpack.packb({"conf": s.meta.conf.to_wire(), "addrs": d.get("addrs", {}), "sm": d["sm"]},
                             use_bin_type=True)
        self._snapshotter.save(DiskSnapshot(s.index, s.term, body))

    def _replace_wal(self, snap_index: int) -> None:
        """A snapshot from the leader replaces the whole log: start an empty WAL (carrying the
        hard state) and swap it in with renames, so a crash leaves the old or the new one."""
        new, cur, old = self.dir / "wal.new", self.dir / "wal", self.dir / "wal.old"
        if new.exists():
            shutil.rmtree(new)
        hs = self._wal.hard_state
        w, _ = walmod.WAL.open(new)
        w.append([], walmod.HardState(hs.term, hs.vote, max(hs.commit, snap_index)))
        self._wal.close()
        os.rename(cur, old)
        os.rename(new, cur)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        w.close()
        shutil.rmtree(old)
        self._wal, _ = walmod.WAL.open(cur)

    def _wrap_sm(self, sm: bytes) -> bytes:
        out: bytes = msgpack.packb({"addrs": {str(k): v for k, v in self.addrs.items()}, "sm": sm},
                                   use_bin_type=True)
        return out

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            if rd.soft_state.leader != self.leader or rd.soft_state.role is not self.role:
                log.info("raft %d: role %s, leader %d, term %d", self.id, rd.soft_state.role.value,
                         rd.soft_state.leader, self.node.term)
            if self.role is Role.LEADER and rd.soft_state.role is not Role.LEADER:
                # Stepped down (check-quorum, a newer term, a transfer): entries proposed here
                # may still commit under the next leader or be lost; their proposers must not
                # wait for ever.
                # Check-quorum steps down when fewer than a majority were heard from within one
                # election timeout: count over the same window to name the cause.
                within = self.cfg.election_timeout
                lost = self.reachable_voters(within) * 2 <= len(self.voters)
                why = f"{self.no_quorum_message(within)}: leadership lost" if lost else "leadership lost"
                self._fail_waiters(LogUnavailable(f"{why} before the entry committed; its outcome is unknown"))
            self.leader, self.role = rd.soft_state.leader, rd.soft_state.role
            self._changed.set()
        early: list[Message] = []
        late = rd.messages
        if self.role is Role.LEADER:
            # Thesis §10.2.1: the leader may replicate in parallel with its own disk write; the
            # core counts the leader's own entries in the commit quorum only after advance().
            early = [m for m in rd.messages if isinstance(m, MsgApp | MsgHeartbeat)]
            late = [m for m in rd.messages if not isinstance(m, MsgApp | MsgHeartbeat)]
            for m in early:
                self.transport.send(m)
        applied = False
        if rd.snapshot is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._persist, rd)
        elif (rd.entries or rd.must_sync) and len(rd.entries) <= self.cfg.inline_write_entries \
                and self._write_secs < INLINE_WRITE_MAX_SECS:
            self._persist_timed(rd)
        elif rd.entries or rd.must_sync:
            # Apply the committed entries while the write runs: they are durable on a majority
            # (on the leader on its own disk too), so neither order can lose them.
            write = asyncio.get_running_loop().run_in_executor(None, self._persist_timed, rd)
            try:
                for e in rd.committed_entries:
                    self._apply(e)
            finally:
                await write
            applied = True
        elif rd.hard_state is not None:
            self._persist(rd)  # only the commit index moved: a small write, no fsync
        for m in late:
            if m.to == self.id:
                continue
            self.transport.send(m)
        if rd.snapshot is not None:
            self._install(rd.snapshot)
        if not applied:
            for e in rd.committed_entries:
                self._apply(e)
        self._read_states.extend((r.index, r.context) for r in rd.read_states)
        self._serve_reads()
        self.node.advance(rd)
        self._advanced.set()
        if self.role is Role.LEADER:
            self._flush_soon()  # advancing may have committed (the leader's own write counted)
        if rd.committed_entries or rd.snapshot is not None:
            self._changed.set()
        # Not before re-applying what was committed on disk at open: a state machine that replayed
        # it at open (ReplicatedLog's store) is ahead of self.applied until then.
        if (self.cfg.snapshot_every and self.snapshot_source is not None
                and self.applied >= self.restart_commit
                and self.applied - self.snap_index >= self.cfg.snapshot_every):
            await self.compact(self.applied, self.snapshot_source())

    def _install(self, s: Snapshot) -> None:
        d = msgpack.unpackb(s.data, raw=False, strict_map_key=False)
        self.addrs.update({int(k): str(v) for k, v in d.get("addrs", {}).items()})
        for i, a in self.addrs.items():
            if i in s.meta.conf.nodes():
                self.transport.add_peer(i, a)
        self.sm_snapshot = DiskSnapshot(s.index, s.term, d["sm"])
        self.snap_index = s.index
        self.applied = s.index
        for idx in [i for i in self._waiters if i <= s.index]:
            _, fut = self._waiters.pop(idx)
            if not fut.done():
                fut.set_exception(LogUnavailable("outcome unknown: a snapshot from the leader replaced the log"))
        if self.restore_fn is not None:
            self.restore_fn(s.index, s.term, d["sm"])

    def _apply(self, e: Entry) -> None:
        if e.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            for nid in cc.result.nodes():
                if nid in self.addrs:
                    self.transport.add_peer(nid, self.addrs[nid])
            for nid in list(self.transport.peers):
                if nid not in cc.result.nodes():
                    self.transport.remove_peer(nid)
        elif e.data.startswith(ADDR_MAGIC):
            self._learn_addr(e.data)
        elif e.data and self.apply_fn is not None:
            try:
                self.apply_fn(AppliedEntry(e.index, e.term, e.data))
            except Exception:  # the state machine must not break the log
                log.exception("raft %d: apply of entry %d failed", self.id, e.index)
        self.applied = e.index
        w = self._waiters.pop(e.index, None)
        if w is not None and not w[1].done():
            if w[0] == e.term:
                w[1].set_result(e.index)
            else:
                w[1].set_exception(LogUnavailable(
                    f"entry {e.index} was lost: leadership changed before it committed; retry"))

    def _learn_addr(self, data: bytes) -> None:
        d = msgpack.unpackb(data[len(ADDR_MAGIC):], raw=False, strict_map_key=False)
        for k, v in d.get("addrs", {}).items():
            nid, addr = int(k), str(v)
            if nid == self.id:
                continue
            self.addrs[nid] = addr
            if hasattr(self, "transport"):
                self.transport.add_peer(nid, addr)

    def _serve_reads(self) -> None:
        keep = []
        for index, ctx in self._read_states:
            if index <= self.applied:
                fut = self._reads.pop(ctx, None)
                if fut is not None and not fut.done():
                    fut.set_result(index)
            else:
                keep.append((index, ctx))
        self._read_states = keep

    async def compact(self, index: int, sm: bytes) -> None:
        """Save ``sm`` (the state machine at applied ``index``) as a snapshot, then drop the log
        before ``index - keep`` (memory and WAL segments). Raises LogError if ``index`` is not
        applied and persisted; a no-op if it is not after the current snapshot."""
        if index <= self.snap_index:
            return
        # Entries are applied while their Ready is still being written; the core counts them
        # applied (and persisted) once that Ready is advanced: wait for it.
        while (self.node.log.applied < index <= self.applied and not self._closed
               and self._failed is None):
            self._advanced.clear()
            await self._advanced.wait()
        snap = self.node.compact(index, self._wrap_sm(sm), keep=self.cfg.keep)
        await asyncio.to_thread(self._save_snapshot, snap)
        await asyncio.to_thread(self._wal.release_to, max(0, index - self.cfg.keep))
        self.sm_snapshot = DiskSnapshot(index, snap.term, sm)
        self.snap_index = index

    def _fail_waiters(self, err: LogUnavailable) -> None:
        """Fail every proposal waiting for its commit with ``err``."""
        for _, fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiters.clear()

    def _fail_all(self, err: LogUnavailable) -> None:
        self._fail_waiters(err)
        for fut in self._reads.values():
            if not fut.done():
                fut.set_exception(err)
        self._reads.clear()
