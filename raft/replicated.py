"""``ReplicatedLog``: the :class:`raft.log.Log` interface on top of :class:`RaftDriver`, and the
facade the manager uses of Raft.

This module is the only one of ``raft/`` the manager imports (``raft.driver``, ``raft.transport``
and ``raft.core`` stay behind it; the few names of theirs the manager needs, :class:`DriverConfig`
and :func:`parse_addr`, are re-exported here). The store proposes through the
:class:`raft.log.Log` part (docs/contracts.md, ``raft.log``): ``snapshot()``,
``entries_from(index)``, ``set_apply(fn)``, ``submit(data)``, ``await propose(data)``,
``await compact(index, data)``, ``await close()``, errors as :class:`raft.log.LogUnavailable`
(also importable from here). Differences a caller must know:

- ``await start()`` must be called (on the event loop) after ``set_apply``/``set_restore``;
- ``set_restore(fn(snapshot))``: a snapshot sent by the leader replaces the state machine
  (a follower that fell behind the leader's log);
- writes only succeed on the leader: elsewhere LogUnavailable("not the leader; the leader is
  <id> at <addr>"); without a quorum LogUnavailable("no quorum: N of M managers reachable");
- ``await read_index()`` for linearizable reads (thesis §6.4), ``leader_id``, ``term``,
  ``is_leader``; membership with ``add_voter``, ``remove_voter``, ``transfer_leadership``.

The membership facade (what ``manager/membership.py`` and ``manager/manager.py`` use; their
Protocol ``manager.membership.RaftMembers`` lists it): ``id``, ``election_timeout``,
``voters()``, ``members()``, ``addr(id)``, ``reachable(within)``, ``leader_id``, ``is_leader``,
``has_quorum()``, ``no_quorum_message()``, ``not_leader_message()``, ``await wait_changed(t)``,
``await add_voter(id, addr)``, ``await remove_voter(id)``, ``await transfer_leadership(to)``,
``await read_index()``. A single voter (``peers`` = this node only) campaigns as it starts and
is the leader before the first proposal: the unit tests build their store on it.

Entries given to ``apply`` are :class:`raft.wal.Entry` ``(index, term, data)``; indexes are
increasing but not contiguous (Raft's no-op and membership entries are not application entries).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from raft.core import ConfChangeType, LogError, ProposalDropped, Role
from raft.driver import ADDR_MAGIC, AppliedEntry, DriverConfig, RaftDriver
from raft.log import LogUnavailable
from raft.snapshot import Snapshot, Snapshotter
from raft.transport import PeerCheck, parse_addr
from raft.wal import Entry, HardState

__all__ = ["ReplicatedLog", "LogUnavailable", "DriverConfig", "parse_addr"]

ApplyFn = Callable[[Entry], None]


class ReplicatedLog:
    """A Raft-replicated log of node ``node_id`` with data in ``directory``.

    ``peers``: ``{id: "host:port"}`` including this node's own address (where it listens).
    ``bootstrap``: an empty directory starts a new cluster of ``peers`` (False: join and wait
    to be added with :meth:`add_voter` on the leader). ``propose_timeout``: seconds a write may
    wait for its commit before LogUnavailable("no quorum: …"). ``config``: timing and
    compaction (:class:`raft.driver.DriverConfig`). TLS contexts as :class:`RaftDriver`.
    Raises WALCorruptError / SnapshotCorruptError when the disk is damaged.
    """

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        directory: Path | str,
        *,
        bootstrap: bool = True,
        config: DriverConfig | None = None,
        propose_timeout: float = 5.0,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        peer_check: PeerCheck | None = None,
    ) -> None:
        self.propose_timeout = propose_timeout
        self._apply: ApplyFn | None = None
        self._restore: Callable[[Snapshot], None] | None = None
        self.driver = RaftDriver(node_id, peers, directory, apply=self._on_apply, restore=self._on_restore,
                                 config=config, bootstrap=bootstrap, server_ssl=server_ssl,
                                 client_ssl=client_ssl, peer_check=peer_check)
        # Entries committed on disk at open: the store replays them with entries_from(); the
        # driver hands them to _on_apply again after start, so they are skipped there.
        self._replayed_to = self.driver.restart_commit
        self._ctx = itertools.count(1)
        self._nonce = os.urandom(4)

    # -- the raft.log.Log interface (what the store uses) -----------------------------------

    def snapshot(self) -> Snapshot | None:
        """The newest state-machine snapshot (index, term, data), or None."""
        return self.driver.sm_snapshot

    def entries_from(self, index: int) -> list[Entry]:
        """Committed application entries with index >= ``index`` held in the log (after the
        snapshot); at open, those committed on disk."""
        log = self.driver.node.log
        hi = min(log.committed, max(self._replayed_to, self.driver.applied))
        out = []
        for e in log.slice(max(index, log.offset + 1), hi + 1):
            if e.type.value == 0 and e.data and not e.data.startswith(ADDR_MAGIC):
                out.append(Entry(e.index, e.term, e.data))
        return out

    def set_apply(self, fn: ApplyFn) -> None:
        """``fn(entry)`` for every application entry committed from now on, in index order."""
        self._apply = fn

    def set_restore(self, fn: Callable[[Snapshot], None]) -> None:
        """``fn(snapshot)`` when a snapshot from the leader replaces the state machine."""
        self._restore = fn

    def set_snapshot_source(self, fn: Callable[[], bytes]) -> None:
        """``fn() -> bytes``: the state machine at the applied index, for automatic snapshots
        every ``config.snapshot_every`` entries."""
        self.driver.snapshot_source = fn

    async def start(self, listen: bool = True) -> None:
        """Start the Raft loop; listen on this node's address unless ``listen`` is False (then
        another server hands Raft connections to :meth:`accept`). Raises OSError."""
        await self.driver.start(listen=listen)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     hello: dict[str, Any]) -> None:
        """Serve an inbound Raft connection whose ``raft-hello`` frame was already read (see
        :meth:`raft.transport.Transport.accept`)."""
        await self.driver.transport.accept(reader, writer, hello)

    @staticmethod
    def force_new_cluster(directory: Path | str, node_id: int, addr: str,
                          rebuild: Callable[[Snapshot | None, list[Entry]], bytes]) -> int:
        """Rewrite the log in ``directory`` so that this node is the only voter (``swarm init
        --force-new-cluster``; etcd's ``--force-new-cluster`` does the same): every entry in
        the log counts as committed (as etcd does: the lost majority cannot be asked), the
        state machine at the last index (``rebuild(snapshot, entries_after_it)`` → bytes) is
        saved as a snapshot whose configuration is ``{voters: [node_id]}`` and address book
        ``{node_id: addr}``, and the WAL restarts empty after it. Returns the snapshot index.
        Run it with the node stopped. Raises WALCorruptError / SnapshotCorruptError for damage.
        """
        d = RaftDriver(node_id, {node_id: addr}, directory, bootstrap=False)
        try:
            log = d.node.log
            last, last_term = log.last_index(), log.last_term()
            entries = [Entry(e.index, e.term, e.data) for e in log.slice(log.offset + 1, last + 1)
                       if e.type.value == 0 and e.data and not e.data.startswith(ADDR_MAGIC)]
            sm = rebuild(d.sm_snapshot, entries)
            term = max(d.node.term, last_term)
            body = msgpack.packb({"conf": {"voters": [node_id], "learners": []},
                                  "addrs": {str(node_id): addr}, "sm": sm}, use_bin_type=True)
            Snapshotter(Path(directory) / "snap").save(Snapshot(last, last_term, body))
            d._wal.append([], HardState(term, 0, last))
            d._replace_wal(last)
        finally:
            d._wal.close()
        return last

    def submit(self, data: bytes) -> tuple[int, asyncio.Future[None]]:
        """Propose ``data`` without waiting. Returns ``(index, future)``; the future resolves
        once the entry is committed and applied here. Raises LogUnavailable (not the leader,
        no quorum, no leader yet, closed)."""
        d = self.driver
        if d.node.role is Role.LEADER and not d.has_quorum():
            raise LogUnavailable(d.no_quorum_message())
        try:
            index, fut = d.propose(data)
        except ProposalDropped as e:
            raise LogUnavailable(f"{d.not_leader_message()} ({e})") from e
        out: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[int]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.cancel()
            elif f.exception() is not None:
                out.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                out.set_result(None)

        fut.add_done_callback(done)
        return index, out

    async def propose(self, data: bytes) -> int:
        """Append ``data`` and return its index once committed and applied here. If no leader is
        known yet (an election), waits for one up to ``propose_timeout``. Raises LogUnavailable:
        not the leader (naming it), no quorum, or no commit within ``propose_timeout``."""
        deadline = time.monotonic() + self.propose_timeout
        while True:
            try:
                index, fut = self.submit(data)
                break
            except LogUnavailable:
                d = self.driver
                if d.node.leader or not d.has_quorum() or time.monotonic() >= deadline:
                    raise
                await d.wait_changed(min(0.05, max(0.0, deadline - time.monotonic())))
        # Wait in slices so that losing the quorum fails the write fast (within ~1.5 election
        # timeouts of the last message from the majority) rather than at the deadline.
        while not fut.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise LogUnavailable(f"{self.driver.no_quorum_message()} (entry {index} not committed "
                                     f"within {self.propose_timeout:g} s; outcome unknown)")
            if not self.driver.has_quorum():
                raise LogUnavailable(f"{self.driver.no_quorum_message()} (entry {index} not committed; "
                                     "outcome unknown)")
            await asyncio.wait((fut,), timeout=min(0.1, left))
        fut.result()
        return index

    async def compact(self, index: int, data: bytes) -> None:
        """Save ``data`` as the state-machine snapshot at applied ``index`` and drop the log
        before ``index - keep``. Waits (up to ``propose_timeout``) until the driver applied
        ``index`` (after a restart the store replays ahead of it); LogUnavailable otherwise."""
        deadline = time.monotonic() + self.propose_timeout
        while self.driver.applied < index:
            if time.monotonic() >= deadline:
                raise LogUnavailable(f"cannot snapshot at {index}: only {self.driver.applied} is applied")
            await self.driver.wait_changed(0.05)
        try:
            await self.driver.compact(index, data)
        except LogError as e:
            raise LogUnavailable(f"cannot snapshot at {index}: {e}") from e

    async def close(self) -> None:
        """Stop the node (pending proposals fail with LogUnavailable). Idempotent."""
        await self.driver.close()

    # -- Raft extras ------------------------------------------------------------------------

    @property
    def leader_id(self) -> int:
        """ID of the leader this node knows (0 = none)."""
        return self.driver.node.leader

    @property
    def term(self) -> int:
        """The current Raft term."""
        return self.driver.node.term

    @property
    def is_leader(self) -> bool:
        """True on the leader."""
        return self.driver.node.role is Role.LEADER

    @property
    def applied_index(self) -> int:
        """Highest index applied here."""
        return self.driver.applied

    # -- the membership facade (manager/membership.py) --------------------------------------

    @property
    def id(self) -> int:
        """This node's Raft ID."""
        return self.driver.id

    @property
    def election_timeout(self) -> float:
        """The base election timeout in seconds (``election_tick * tick``); the leader's
        check-quorum window (etcd's CheckQuorum: a leader that heard from no majority within it
        steps down)."""
        return self.driver.cfg.election_timeout

    def voters(self) -> frozenset[int]:
        """Raft IDs of the voters of the configuration in force here (etcd's
        ``ConfState.Voters``; a learner being caught up by :meth:`add_voter` is not one yet)."""
        return self.driver.voters

    def members(self) -> frozenset[int]:
        """Raft IDs of every member of the configuration in force here: voters and learners.
        Empty on a node that has not received a configuration yet (a joiner before the leader
        added it)."""
        return self.driver.node.conf.nodes()

    def addr(self, node_id: int) -> str | None:
        """``host:port`` of member ``node_id`` from the replicated address book, or None."""
        return self.driver.addrs.get(node_id)

    def reachable(self, within: float | None = None) -> set[int]:
        """Raft IDs of the members this node heard from in the last ``within`` seconds (default
        1.5 election timeouts), this node included. On the leader every voter answers its
        heartbeats, so this is the cluster's view (swarmkit's ``Reachability``); a follower
        hears from the leader only."""
        d = self.driver
        return d.transport.reachable(d.cfg.election_timeout * 1.5 if within is None else within) | {d.id}

    def has_quorum(self) -> bool:
        """True when a majority of the voters (this node included) was heard from within 1.5
        election timeouts."""
        return self.driver.has_quorum()

    def no_quorum_message(self) -> str:
        """``"no quorum: N of M managers reachable"``: the text of the LogUnavailable a write
        gets without a quorum."""
        return self.driver.no_quorum_message()

    def not_leader_message(self) -> str:
        """Why this node cannot take a write: ``"not the leader; the leader is <id> at <addr>"``,
        the no-quorum text, or ``"no leader elected yet (an election is in progress); retry"``."""
        return self.driver.not_leader_message()

    async def wait_changed(self, timeout: float) -> None:
        """Wait until the leader, role, configuration or applied index change, or ``timeout``
        seconds pass (whichever first; no error either way)."""
        await self.driver.wait_changed(timeout)

    async def read_index(self, timeout: float | None = None) -> int:
        """Linearizable read point (thesis §6.4): returns an index such that, once it is applied
        here (it is, on return), reading the local state machine is linearizable. Works on
        followers too (asks the leader). Raises LogUnavailable on timeout (default
        ``propose_timeout``) or without a leader."""
        timeout = self.propose_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            ctx = self._nonce + next(self._ctx).to_bytes(8, "big")
            try:
                fut = self.driver.read_index(ctx)
            except ProposalDropped:
                if not self.driver.has_quorum() or time.monotonic() >= deadline:
                    raise LogUnavailable(self.driver.not_leader_message()) from None
                await self.driver.wait_changed(0.05)
                continue
            try:
                # short slices: a ReadIndex sent to a leader that just died is re-sent (to the
                # new leader) soon after the election rather than after a long wait
                return await asyncio.wait_for(fut, min(0.25, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                self.driver.forget_read(ctx)
                if time.monotonic() >= deadline:
                    raise LogUnavailable(f"read index not confirmed within {timeout:g} s: "
                                         f"{self.driver.no_quorum_message()}") from None

    async def add_voter(self, node_id: int, addr: str, timeout: float = 30.0) -> None:
        """On the leader: add ``node_id`` listening at ``addr`` — replicate its address, add it as
        a learner, wait until it caught up with the commit index, then make it a voter (thesis
        §4.2.1; etcd's learner promotion, which swarmkit does not have: a new member never counts
        toward the quorum before it holds the log). Raises LogUnavailable (not the leader, no
        quorum, timeout), ValueError (bad address, already a voter)."""
        parse_addr(addr)
        if node_id in self.driver.voters:
            raise ValueError(f"node {node_id} is already a voter")
        deadline = time.monotonic() + timeout
        book = {str(k): v for k, v in self.driver.addrs.items()}
        book[str(node_id)] = addr
        body = msgpack.packb({"addrs": book}, use_bin_type=True)
        await self.propose_internal(ADDR_MAGIC + body, deadline)
        if node_id not in self.driver.node.conf.learners:
            await self._conf_change(ConfChangeType.ADD_LEARNER, node_id, deadline)
        while True:
            pr = self.driver.node.status()["progress"].get(node_id)
            if pr is not None and pr["match"] >= self.driver.node.log.committed:
                break
            if time.monotonic() >= deadline:
                raise LogUnavailable(f"node {node_id} at {addr} did not catch up within {timeout:g} s")
            await self.driver.wait_changed(0.1)
        await self._conf_change(ConfChangeType.ADD_VOTER, node_id, deadline)

    async def remove_voter(self, node_id: int, timeout: float = 10.0) -> None:
        """On the leader: remove voter ``node_id`` (thesis §4.1; one member per configuration
        change, as etcd and swarmkit). The quorum check before it (swarmkit's
        ``CanRemoveMember``) is the caller's: ``manager.membership``. Raises LogUnavailable,
        ValueError (not a voter / last voter)."""
        await self._conf_change(ConfChangeType.REMOVE_VOTER, node_id, time.monotonic() + timeout)

    async def transfer_leadership(self, to: int, timeout: float = 5.0) -> None:
        """Make voter ``to`` the leader (thesis §3.10) and wait until it is. Raises
        LogUnavailable on timeout or without a leader, ValueError if ``to`` is not a voter."""
        deadline = time.monotonic() + timeout
        try:
            self.driver.transfer_leadership(to)
        except ProposalDropped as e:
            raise LogUnavailable(str(e)) from e
        while self.driver.node.leader != to:
            if time.monotonic() >= deadline:
                raise LogUnavailable(f"leadership did not move to {to} within {timeout:g} s")
            await self.driver.wait_changed(0.05)

    async def propose_internal(self, data: bytes, deadline: float) -> int:
        """Propose driver-internal ``data`` and wait for it (used for the address book)."""
        try:
            _, fut = self.driver.propose(data)
        except ProposalDropped as e:
            raise LogUnavailable(f"{self.driver.not_leader_message()} ({e})") from e
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise LogUnavailable(self.driver.no_quorum_message()) from None

    async def _conf_change(self, kind: ConfChangeType, node_id: int, deadline: float) -> None:
        while True:
            try:
                _, fut = self.driver.propose_conf_change(kind, node_id)
                break
            except ProposalDropped as e:  # another change pending / no commit in this term yet
                if time.monotonic() >= deadline:
                    raise LogUnavailable(f"membership change not accepted: {e}") from e
                await self.driver.wait_changed(0.05)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise LogUnavailable(self.driver.no_quorum_message()) from None

    # -- callbacks from the driver ----------------------------------------------------------

    def _on_apply(self, e: AppliedEntry) -> None:
        if e.index <= self._replayed_to:
            return
        if self._apply is not None:
            self._apply(Entry(e.index, e.term, e.data))

    def _on_restore(self, index: int, term: int, sm: bytes) -> None:
        self._replayed_to = min(self._replayed_to, index)
        if self._restore is not None:
            self._restore(Snapshot(index, term, sm))

