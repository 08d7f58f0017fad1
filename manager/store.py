"""The manager's state machine: in-memory tables of Swarm objects, changed only through the log.

Follows swarmkit's store model (SK: manager/state/store/memory.go): reads are consistent
views, writes run in a transaction function, the transaction's changes become one Raft log
entry, and objects get ``Version.Index`` = the index of the entry that last wrote them.

Objects are plain dicts in the Docker Engine API's JSON shape; every object has a string
``ID``. Tables: ``nodes``, ``services``, ``tasks``, ``cluster``, ``networks`` (swarm overlay
networks, docs/contracts.md "The stored Network"). ``services`` and ``networks`` have unique
names (``Spec.Name``, case-insensitively).

Log entry payload (msgpack): ``{"ts": rfc3339, "ops": [[action, table, obj | id], ...]}``
with ``action`` in ``create|update|delete`` (``delete`` carries the ID). The timestamp travels
in the entry so that replay (and, later, every Raft follower) computes identical state.

Concurrency: ``update(fn)`` runs ``fn`` synchronously, so no other transaction interleaves with
it. ``fn`` sees the committed state plus the changes of transactions already proposed but not
yet committed (a pending overlay), so concurrent ``update`` calls can share one fsync (group
commit in :mod:`raft.log`) and still see each other's writes in proposal order. ``view()``
shows committed state only.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from raft.log import Entry, Log, LogUnavailable, Snapshot
from shoal.base.util import now_rfc3339

__all__ = ["Store", "ReadTx", "WriteTx", "Watch", "Event", "StoreError", "Conflict", "NotFound", "Unavailable", "TABLES",
           "MAX_TRANSACTION_BYTES"]

log = logging.getLogger(__name__)

TABLES = ("nodes", "services", "tasks", "cluster", "networks")
DEFAULT_SNAPSHOT_INTERVAL = 10000  # entries between state-machine snapshots (swarmkit's SnapshotInterval)
MAX_TRANSACTION_BYTES = 1_572_864
"""The size (bytes of the msgpack log entry) a loop that writes many objects keeps each
transaction under: swarmkit's ``MaxTransactionBytes`` (1.5 MiB, SK: manager/state/store/
memory.go), so a Raft entry is cheap to replicate and to apply. The orchestrator batches to it;
:meth:`Store.update` does not refuse larger transactions (the dispatcher's status batches and a
service spec near the API's 4 MiB body limit can be larger)."""

NAMED_TABLES = frozenset({"services", "networks"})

SHARED_TASK_FIELDS = ("Spec", "SpecVersion", "Endpoint")
"""Fields of a task that tasks of the same service version hold equal: stored once (Store._share)."""

INDEXES: dict[str, tuple[str, ...]] = {"tasks": ("ServiceID", "NodeID")}
"""The fields indexed per table (:meth:`ReadTx.list_by`): a loop reads the tasks of one service or
one node without a scan of every task (swarmkit's memdb indexes ``ByServiceID``/``ByNodeID``)."""
"""The tables whose objects have a unique ``Spec.Name`` (swarmkit indexes services' and networks'
names)."""

T = TypeVar("T")
Obj = dict[str, Any]


class StoreError(Exception):
    """Base class of store errors; ``str(e)`` is a message fit for an API client."""


class Conflict(StoreError):
    """A name is taken by another object, an ID already exists, or the object's
    ``Version.Index`` is not the current one (update out of sequence)."""


class NotFound(StoreError):
    """The object to update or delete does not exist."""


class Unavailable(StoreError):
    """The log cannot commit (disk failure, closed, or with Raft: no leader / no quorum)."""


def _copy(obj: Any) -> Any:
    """Deep copy of a JSON-like value (dict/list/str/int/float/bool/None/bytes)."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False)


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown store table {table!r}; tables are {', '.join(TABLES)}")


def _name_of(table: str, obj: Obj) -> str | None:
    """The unique name of ``obj`` (services and networks: ``Spec.Name``) or None for tables
    without one."""
    if table in NAMED_TABLES:
        spec = obj.get("Spec") or {}
        name = spec.get("Name")
        return name if isinstance(name, str) and name else None
    return None


def _name_key(table: str, obj: Obj) -> str | None:
    """The name as the uniqueness index compares it: lowercased, as swarmkit's store indexes
    names (SK: manager/state/store/memory.go, ``nameIndexer`` lowercases), so ``web`` and
    ``WEB`` conflict."""
    name = _name_of(table, obj)
    return name.lower() if name is not None else None


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change: ``action`` is ``create|update|delete``; ``obj`` is the new object
    (for delete: the deleted one); ``old`` is the previous object or None. Each watcher gets its
    own copies."""

    action: str
    table: str
    obj: Obj
    old: Obj | None


class Watch:
    """An async iterator of :class:`Event` from the store, in commit order. ``close()`` ends it."""

    def __init__(self, store: Store, tables: frozenset[str] | None, copy: bool = True) -> None:
        self._store = store
        self.tables = tables
        self.copy = copy
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.closed = False

    def _put(self, ev: Event) -> None:
        if not self.closed and (self.tables is None or ev.table in self.tables):
            self._queue.put_nowait(Event(ev.action, ev.table, _copy(ev.obj), _copy(ev.old)) if self.copy else ev)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        ev = await self._queue.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    def drain(self) -> list[Event]:
        """Return the events already queued, without waiting."""
        out = []
        while not self._queue.empty():
            ev = self._queue.get_nowait()
            if ev is None:
                self._queue.put_nowait(None)
                break
            out.append(ev)
        return out

    def close(self) -> None:
        """Stop this watch; the iterator ends after the events already queued. Idempotent."""
        if not self.closed:
            self.closed = True
            self._store._watches.discard(self)
            self._queue.put_nowait(None)


class ReadTx:
    """A read view of the committed state. Objects returned are deep copies."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _raw(self, table: str, id: str) -> Obj | None:
        return self._store._tables[table].get(id)

    def _raw_items(self, table: str) -> Iterable[Obj]:
        return self._store._tables[table].values()

    def get(self, table: str, id: str) -> Obj | None:
        """The object ``id`` of ``table``, or None."""
        _check_table(table)
        obj = self._raw(table, id)
        return _copy(obj) if obj is not None else None

    def list(self, table: str) -> list[Obj]:
        """Every object of ``table`` (no particular order)."""
        _check_table(table)
        return [_copy(o) for o in self._raw_items(table)]

    def list_shallow(self, table: str) -> builtins.list[Obj]:
        """Every object of ``table`` as a new top-level dict whose values are shared with the
        store: no deep copy, for a loop that reads a whole table on every pass (the orchestrator).
        The caller may set or delete keys of these dicts but must never change a value inside
        them (a nested dict or list): that would change the store behind the log's back."""
        _check_table(table)
        return [dict(o) for o in self._raw_items(table)]

    def _index_ids(self, table: str, field: str, value: str) -> Iterable[str]:
        return self._store._index[table][field].get(value, ())

    def list_by(self, table: str, field: str, value: str) -> builtins.list[Obj]:
        """The objects of ``table`` whose ``field`` is ``value`` (an indexed field, :data:`INDEXES`:
        ``tasks`` by ``ServiceID`` or ``NodeID``), as :meth:`list_shallow` gives them (new
        top-level dicts; never change a value inside them). O(objects found). Raises
        ``KeyError`` for a field that is not indexed."""
        _check_table(table)
        if field not in INDEXES.get(table, ()):
            raise KeyError(f"{table}.{field} is not indexed")
        out = []
        for id in self._index_ids(table, field, value):
            o = self._raw(table, id)
            if o is not None and o.get(field) == value:
                out.append(dict(o))
        return out

    def get_shallow(self, table: str, id: str) -> Obj | None:
        """The object ``id`` of ``table`` as a new top-level dict whose values are shared with the
        store (the contract of :meth:`list_shallow`: set or delete its keys, never change a value
        inside it), or None."""
        _check_table(table)
        obj = self._raw(table, id)
        return dict(obj) if obj is not None else None

    def find(self, table: str, pred: Callable[[Obj], bool]) -> builtins.list[Obj]:
        """The objects of ``table`` for which ``pred(obj)`` is true. ``pred`` sees the stored
        object and must not modify it."""
        _check_table(table)
        return [_copy(o) for o in self._raw_items(table) if pred(o)]

    def find_by_name(self, table: str, name: str) -> Obj | None:
        """A service or network (:data:`NAMED_TABLES`) by ``Spec.Name``, or None. Names
        match case-insensitively (as swarmkit's name index); an exact match wins."""
        folded = None
        for o in self._raw_items(table):
            n = _name_of(table, o)
            if n == name:
                found: Obj = _copy(o)
                return found
            if folded is None and n is not None and n.lower() == name.lower():
                folded = o
        return _copy(folded) if folded is not None else None


class WriteTx(ReadTx):
    """A transaction: the reads of :class:`ReadTx` (seeing the pending overlay and this
    transaction's own writes) plus ``create``, ``update`` and ``delete``."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._writes: dict[tuple[str, str], tuple[str, Obj | None]] = {}

    def _raw(self, table: str, id: str) -> Obj | None:
        key = (table, id)
        if key in self._writes:
            return self._writes[key][1]
        if key in self._store._pending:
            return self._store._pending[key][1]
        return self._store._tables[table].get(id)

    def _raw_items(self, table: str) -> Iterable[Obj]:
        pending = [i for (t, i) in self._store._pending if t == table]
        written = [i for (t, i) in self._writes if t == table]
        if not pending and not written:  # nothing overlays the committed table: read it as it is
            yield from self._store._tables[table].values()
            return
        ids = set(self._store._tables[table])
        ids.update(pending)
        ids.update(written)
        for i in ids:
            o = self._raw(table, i)
            if o is not None:
                yield o

    def _index_ids(self, table: str, field: str, value: str) -> Iterable[str]:
        # the committed index, plus what the pending overlay and this transaction wrote (its
        # objects are checked against the field by the caller, so a moved one drops out)
        ids = set(self._store._index[table][field].get(value, ()))
        ids.update(i for (t, i) in self._store._pending if t == table)
        ids.update(i for (t, i) in self._writes if t == table)
        return ids

    def _check_name(self, table: str, obj: Obj) -> None:
        name = _name_key(table, obj)
        if name is None:
            return
        for other in self._raw_items(table):
            if other["ID"] != obj["ID"] and _name_key(table, other) == name:
                raise Conflict("rpc error: code = AlreadyExists desc = name conflicts with an existing object")

    def create(self, table: str, obj: Obj, shallow: bool = False) -> None:
        """Add ``obj`` (must have a string ``ID``). Raises :class:`Conflict` if the ID exists or
        (services, networks) ``Spec.Name`` is taken. ``shallow``: keep a copy of ``obj``'s top
        level only, not a deep copy — for a loop whose objects come from :meth:`ReadTx.list_shallow`
        (or are new) and which, as they do, never changes a value inside one (see :meth:`update`)."""
        _check_table(table)
        id = obj.get("ID")
        if not isinstance(id, str) or not id:
            raise ValueError(f"store create in {table}: object needs a non-empty string ID")
        if self._raw(table, id) is not None:
            raise Conflict(f"rpc error: code = AlreadyExists desc = {table[:-1]} {id} already exists")
        self._check_name(table, obj)
        key = (table, id)
        prior = self._writes.get(key)
        self._writes[key] = ("update" if prior and prior[0] == "delete" else "create", dict(obj) if shallow else _copy(obj))

    def update(self, table: str, obj: Obj, shallow: bool = False) -> None:
        """Replace the object with ``obj["ID"]``. If ``obj`` carries ``Version.Index``, it must be
        the current one, else :class:`Conflict` ("update out of sequence"). Raises
        :class:`NotFound` if there is no such object, :class:`Conflict` for a taken name.

        ``shallow``: keep a copy of ``obj``'s top level only (its values shared with the caller
        and, for an object from :meth:`ReadTx.get_shallow`, with the store). Only for callers that
        set top-level keys and never change a value inside an object, before or after (the
        contract of :meth:`ReadTx.list_shallow`): the deep copy of every task written was most of
        the cost of the hot loops (status updates, placements, the orchestrator's passes). The
        committed object is always a fresh decode of the log entry, never shared."""
        _check_table(table)
        id = obj.get("ID")
        cur = self._raw(table, id) if isinstance(id, str) else None
        if cur is None or not isinstance(id, str):
            raise NotFound(f"{table[:-1]} {id} not found")
        want = (obj.get("Version") or {}).get("Index")
        have = (cur.get("Version") or {}).get("Index")
        if want is not None and have is not None and want != have:
            # Docker's exact wording (swarmkit ErrSequenceConflict); HTTP 500 in Docker's API
            raise Conflict("rpc error: code = Unknown desc = update out of sequence")
        self._check_name(table, obj)
        key = (table, id)
        prior = self._writes.get(key)
        new = dict(obj) if shallow else _copy(obj)
        if cur.get("CreatedAt") and not new.get("CreatedAt"):
            new["CreatedAt"] = cur["CreatedAt"]
        self._writes[key] = ("create" if prior and prior[0] == "create" else "update", new)

    def delete(self, table: str, id: str) -> None:
        """Delete object ``id``. Raises :class:`NotFound` if it does not exist."""
        _check_table(table)
        if self._raw(table, id) is None:
            raise NotFound(f"{table[:-1]} {id} not found")
        key = (table, id)
        prior = self._writes.get(key)
        if prior and prior[0] == "create":
            del self._writes[key]
        else:
            self._writes[key] = ("delete", None)

    @property
    def changed(self) -> bool:
        """Whether this transaction wrote anything."""
        return bool(self._writes)


class Store:
    """The state machine over ``log`` (a :class:`raft.log.Log`: in managers and in the unit tests
    a :class:`raft.replicated.ReplicatedLog`).

    The constructor loads the log's snapshot and replays its committed entries, so restarting
    on the same directory gives the same state. ``snapshot_interval``: entries between
    state-machine snapshots (then the log is compacted); 0 = never (the Raft driver takes them
    itself, from :meth:`snapshot_bytes`).
    """

    def __init__(self, log: Log, snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL) -> None:
        self._log = log
        self.snapshot_interval = snapshot_interval
        self._tables: dict[str, dict[str, Obj]] = {t: {} for t in TABLES}
        self._index: dict[str, dict[str, dict[str, set[str]]]] = {t: {f: {} for f in fs} for t, fs in INDEXES.items()}
        self._shared: dict[str, Obj] = {}
        """Service ID → the parts of its tasks shared between them (:meth:`_share`)."""
        self._pending: dict[tuple[str, str], tuple[int, Obj | None]] = {}
        self._watches: set[Watch] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self.applied_index = 0
        self._snap_index = 0
        self._compacting: asyncio.Task[None] | None = None
        snap = log.snapshot()
        if snap is not None:
            self._load(snap.index, snap.data)
        for e in log.entries_from(self.applied_index + 1):
            self._apply_entry(e, notify=False)
        log.set_apply(self._on_commit)

    def _load(self, index: int, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        for t in TABLES:
            self._tables[t] = dict(state["tables"].get(t, {}))
        self._index = {t: {f: {} for f in fs} for t, fs in INDEXES.items()}
        for t in INDEXES:
            for obj in self._tables[t].values():
                self._index_add(t, obj)
        self._shared = {}
        for obj in self._tables["tasks"].values():
            self._share(obj)
        self.applied_index = self._snap_index = index

    def _share(self, task: Obj) -> None:
        """Make ``task``'s ``Spec``, ``SpecVersion`` and ``Endpoint`` the very objects the last
        task of its service held when they are equal (every task of a service version carries a
        copy of the same spec: ~2.9 KB of a ~5.5 KB task in memory). Safe because nothing
        changes a stored object in place (the store replaces objects; readers get copies or
        promise not to change them); snapshots and copies are by value, so nothing else sees it."""
        sid = task.get("ServiceID")
        if not isinstance(sid, str):
            return
        shared = self._shared.get(sid)
        if shared is None:
            shared = self._shared[sid] = {}
        for key in SHARED_TASK_FIELDS:
            v = task.get(key)
            if v is None:
                continue
            have = shared.get(key)
            if have is not None and have == v:
                task[key] = have
            else:
                shared[key] = v

    def _index_add(self, table: str, obj: Obj) -> None:
        for field, idx in self._index[table].items():
            v = obj.get(field)
            if isinstance(v, str) and v:
                idx.setdefault(v, set()).add(obj["ID"])

    def _index_remove(self, table: str, obj: Obj) -> None:
        for field, idx in self._index[table].items():
            v = obj.get(field)
            if isinstance(v, str) and v:
                ids = idx.get(v)
                if ids is not None:
                    ids.discard(obj["ID"])
                    if not ids:
                        del idx[v]

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole state with ``snap`` (a snapshot the Raft leader sent to a follower
        that fell behind its log; ``snap.data`` is :meth:`snapshot_bytes` of the leader). Watches
        get no events for it; pending proposals are forgotten (they fail in the log)."""
        self._tables = {t: {} for t in TABLES}
        self._pending.clear()
        self._load(snap.index, snap.data)

    @staticmethod
    def rebuild(snap: Snapshot | None, entries: Iterable[Entry]) -> bytes:
        """The :meth:`snapshot_bytes` of the state that ``snap`` (or nothing) plus ``entries``
        give, without a log (``swarm init --force-new-cluster`` rewrites the log with it)."""
        ents = list(entries)

        class _Frozen:
            def __init__(self) -> None:
                self.snap = snap

            def snapshot(self) -> Snapshot | None:
                return self.snap

            def entries_from(self, index: int) -> list[Entry]:
                return [e for e in ents if e.index >= index]

            def set_apply(self, fn: Any) -> None:
                pass

        st = Store(_Frozen(), snapshot_interval=0)  # type: ignore[arg-type]
        return st.snapshot_bytes()

    # -- reading ----------------------------------------------------------------------------

    def view(self) -> ReadTx:
        """A read view of the committed state."""
        return ReadTx(self)

    def watch(self, tables: Iterable[str] | None = None, copy: bool = True) -> Watch:
        """Start a :class:`Watch` of committed changes (of ``tables`` only, if given).

        ``copy=False``: the events carry the store's own objects, not copies (a loop that only
        reads them, or only needs to know that something changed: two deep copies per event and
        watcher were most of a 10,000-task placement's cost). Such a watcher must never change
        anything in an event's objects (the contract of :meth:`ReadTx.list_shallow`); the store
        itself replaces an object on every change and never changes one in place."""
        w = Watch(self, frozenset(tables) if tables is not None else None, copy)
        self._watches.add(w)
        return w

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` synchronously for every committed change, after the watches are fed.
        The event's objects are the store's own, not copies: ``fn`` must not change or keep them
        (the manager's event hub, :mod:`manager.events`, reads a few fields)."""
        self._listeners.append(fn)

    # -- writing ----------------------------------------------------------------------------

    async def update(self, fn: Callable[[WriteTx], T]) -> T:
        """Run ``fn(tx)`` and commit its changes as one log entry; return ``fn``'s result once
        committed. If ``fn`` raises, nothing is written. Raises :class:`Conflict`,
        :class:`NotFound` (from ``fn``'s tx calls) and :class:`Unavailable` (log failure)."""
        tx = WriteTx(self)
        result = fn(tx)
        if not tx._writes:
            return result
        ts = now_rfc3339()
        ops: list[list[Any]] = []
        for (table, id), (action, obj) in tx._writes.items():
            if action == "delete":
                ops.append(["delete", table, id])
            else:
                assert obj is not None
                obj["UpdatedAt"] = ts
                if action == "create" and not obj.get("CreatedAt"):
                    obj["CreatedAt"] = ts
                ops.append([action, table, obj])
        data = msgpack.packb({"ts": ts, "ops": ops}, use_bin_type=True)
        try:
            index, fut = self._log.submit(data)
        except LogUnavailable as e:
            raise Unavailable(str(e)) from e
        for (table, id), (_action, obj) in tx._writes.items():
            if obj is not None:
                obj["Version"] = {"Index": index}
            self._pending[(table, id)] = (index, obj)
        # if our caller is cancelled, the log's verdict is still consumed (no "never retrieved")
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.shield(fut)
        except LogUnavailable as e:
            self._pending = {k: v for k, v in self._pending.items() if v[0] < index}
            raise Unavailable(str(e)) from e
        return result

    # -- applying ---------------------------------------------------------------------------

    def _on_commit(self, entry: Entry) -> None:
        self._apply_entry(entry, notify=True)
        if self.snapshot_interval and entry.index - self._snap_index >= self.snapshot_interval and (
            self._compacting is None or self._compacting.done()
        ):
            self._snap_index = entry.index
            data = self.snapshot_bytes()
            self._compacting = asyncio.get_running_loop().create_task(self._compact(entry.index, data))

    async def _compact(self, index: int, data: bytes) -> None:
        try:
            await self._log.compact(index, data)
        except Exception:
            log.exception("snapshot at index %d failed; the log keeps its entries", index)

    def snapshot_bytes(self) -> bytes:
        """The committed state serialised (msgpack ``{"index", "tables"}``)."""
        data: bytes = msgpack.packb({"index": self.applied_index, "tables": self._tables}, use_bin_type=True)
        return data

    def _apply_entry(self, entry: Entry, notify: bool) -> None:
        if entry.index <= self.applied_index:
            return
        payload = msgpack.unpackb(entry.data, raw=False, strict_map_key=False)
        events: list[Event] = []
        for action, table, body in payload["ops"]:
            tbl = self._tables[table]
            if action == "delete":
                id = body
                old = tbl.pop(id, None)
                if table == "services":
                    self._shared.pop(id, None)
                if old is not None:
                    if table in self._index:
                        self._index_remove(table, old)
                    events.append(Event("delete", table, old, old))
            else:
                obj = body
                id = obj["ID"]
                obj["Version"] = {"Index": entry.index}
                old = tbl.get(id)
                if table == "tasks":
                    self._share(obj)
                tbl[id] = obj
                if table in self._index:
                    if old is not None:
                        self._index_remove(table, old)
                    self._index_add(table, obj)
                events.append(Event("create" if old is None else "update", table, obj, old))
            key = (table, id)
            p = self._pending.get(key)
            if p is not None and p[0] <= entry.index:
                del self._pending[key]
        self.applied_index = entry.index
        if notify:
            for ev in events:
                for w in list(self._watches):
                    w._put(ev)
                for fn in self._listeners:
                    try:
                        fn(ev)
                    except Exception:
                        log.exception("store listener failed on %s %s", ev.action, ev.table)

    async def close(self) -> None:
        """Close every watch, wait for a running snapshot, and close the log."""
        for w in list(self._watches):
            w.close()
        if self._compacting is not None:
            await asyncio.gather(self._compacting, return_exceptions=True)
        await self._log.close()
