"""The manager's event stream: store changes turned into Docker's event messages (``GET /events``,
``docker events``), Docker's filters, and a bounded ring buffer for ``since`` replay.

Every manager (leader or follower) applies the same committed changes, so each keeps its own
:class:`EventHub` fed by :meth:`manager.store.Store.listen` and serves ``/events`` without asking
the leader (moby does the same from each manager's store watch: daemon/events.go,
``generateClusterEvent``).

A message has Docker's shape (API 1.22+, moby api/types/events ``Message``)::

    {"Type": "service"|"node"|"network"|"task", "Action": "create"|"update"|"remove",
     "Actor": {"ID": str, "Attributes": {"name": str, ...}}, "scope": "swarm",
     "time": int seconds, "timeNano": int nanoseconds}

As Docker: ``service`` updates carry ``image.old/new``, ``replicas.old/new`` and
``updatestate.old/new`` when those change; ``node`` updates ``availability.old/new``,
``role.old/new``, ``state.old/new``, ``leader.old/new``, ``reachability.old/new``; ``network``
events the name. Beyond Docker (which reports containers, local to each engine, instead): ``task``
events, with ``name`` (``<service>.<slot>.<id>``), ``service.id``, ``service.name``, ``node.id``,
``slot``, ``state.old/new``, ``desiredstate.old/new`` and ``error``; a task's update is reported only
when its desired state or node changes, or it reaches a state of :data:`TASK_STATES_REPORTED` (its
other writes are progress or status details). A node's or
network's update that changes nothing but ``Version``/``UpdatedAt`` is not reported. The time of
a create or update is the object's ``CreatedAt``/``UpdatedAt`` (the Raft entry's time, the same on
every manager); of a remove, when this manager applied it.

Pure: no I/O; the hub's subscriptions are asyncio queues.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.base.util import parse_rfc3339

__all__ = ["EventHub", "EventFilter", "FilterError", "Subscription", "to_message", "parse_timestamp",
           "EVENT_BUFFER", "FILTER_KEYS", "EVENT_TYPES"]

Obj = dict[str, Any]
Message = dict[str, Any]

EVENT_BUFFER = 1024
"""Messages a hub keeps for ``since`` replay (Docker keeps 256, daemon/events/events.go)."""
SUBSCRIBER_QUEUE = 4096
"""Messages a subscriber may fall behind by; past it the oldest are dropped (Docker's publisher
drops a message a subscriber does not take within 100 ms)."""

TYPES: Mapping[str, str] = {"services": "service", "nodes": "node", "networks": "network", "tasks": "task"}
"""Store table → event ``Type``."""
ACTIONS: Mapping[str, str] = {"create": "create", "update": "update", "delete": "remove"}
"""Store action → event ``Action`` (swarm events use create, update, remove)."""

TASK_STATES_REPORTED = frozenset({"assigned", "running", "complete", "shutdown", "failed", "rejected", "remove",
                                  "orphaned"})
"""The states whose reaching makes a task ``update`` event (with its desired state or node unchanged):
placed, running, and the ends; the steps between (pending, accepted, preparing, starting) make none,
which keeps the events of 100,000 tasks cheap (as Docker reports a container's create, start and die)."""
EVENT_TYPES = ("builtin", "config", "container", "daemon", "image", "network", "node", "plugin", "secret",
               "service", "volume", "task")
"""The ``type`` filter's values: Docker's event types, plus Shoal's ``task``."""
FILTER_KEYS = ("config", "container", "daemon", "event", "image", "label", "network", "node", "plugin",
               "scope", "secret", "service", "type", "volume")
"""The keys of Docker's events filter (moby daemon/events/filter.go)."""


class FilterError(ValueError):
    """A filter or time that cannot be used; ``str(e)`` says which and what is accepted."""


def _lower(v: Any) -> str:
    return str(v).lower() if v is not None else ""


_second_cache: dict[str, int] = {}


def _nanos(ts: Any) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time, 0 when there is none. The store's own form
    (``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``, :func:`shoal.base.util.now_rfc3339`) is read exactly and
    fast (the seconds of the last few prefixes are cached); any other through ``parse_rfc3339``."""
    if not isinstance(ts, str) or not ts:
        return 0
    if len(ts) == 30 and ts[19] == "." and ts[29] == "Z" and ts[20:29].isdigit():
        head = ts[:19]
        sec = _second_cache.get(head)
        if sec is None:
            sec = int(parse_rfc3339(head + "Z"))
            if len(_second_cache) > 64:
                _second_cache.clear()
            _second_cache[head] = sec
        return sec * 1_000_000_000 + int(ts[20:29])
    return int(round(parse_rfc3339(ts) * 1e9))


def _event_nanos(action: str, obj: Obj, now: float) -> int:
    """Nanoseconds since the epoch: CreatedAt for a create, UpdatedAt for an update, ``now``
    (seconds) for a remove or when the object has no time."""
    if action == "create":
        t = _nanos(obj.get("CreatedAt") or obj.get("UpdatedAt"))
    elif action == "update":
        t = _nanos(obj.get("UpdatedAt"))
    else:
        t = 0
    return t or int(round(now * 1e9))


def _diff(attrs: dict[str, str], key: str, old: str, new: str) -> None:
    if old != new:
        attrs[f"{key}.old"] = old
        attrs[f"{key}.new"] = new


def _unchanged(obj: Obj, old: Obj) -> bool:
    """True when ``obj`` and ``old`` differ in ``Version``/``UpdatedAt`` only."""
    skip = ("Version", "UpdatedAt")
    return obj.keys() == old.keys() and all(obj[k] == old[k] for k in obj if k not in skip)


def _service_attrs(obj: Obj, old: Obj | None) -> dict[str, str]:
    spec = obj.get("Spec") or {}
    attrs = {"name": str(spec.get("Name", ""))}
    if old is None:
        return attrs
    ospec = old.get("Spec") or {}
    image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image")
    oimage = ((ospec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image")
    if image is not None and oimage is not None:
        _diff(attrs, "image", str(oimage), str(image))
    rep = ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas")
    orep = ((ospec.get("Mode") or {}).get("Replicated") or {}).get("Replicas")
    if rep is not None and orep is not None:
        _diff(attrs, "replicas", str(orep), str(rep))
    state = (obj.get("UpdateStatus") or {}).get("State")
    ostate = (old.get("UpdateStatus") or {}).get("State")
    if state:
        if not ostate:
            attrs["updatestate.new"] = _lower(state)
        else:
            _diff(attrs, "updatestate", _lower(ostate), _lower(state))
    return attrs


def _node_attrs(obj: Obj, old: Obj | None) -> dict[str, str]:
    spec = obj.get("Spec") or {}
    attrs = {"name": str(spec.get("Name") or (obj.get("Description") or {}).get("Hostname") or "")}
    if old is None:
        return attrs
    ospec = old.get("Spec") or {}
    _diff(attrs, "availability", _lower(ospec.get("Availability")), _lower(spec.get("Availability")))
    _diff(attrs, "role", _lower(ospec.get("Role")), _lower(spec.get("Role")))
    _diff(attrs, "state", _lower((old.get("Status") or {}).get("State")), _lower((obj.get("Status") or {}).get("State")))
    ms, oms = obj.get("ManagerStatus"), old.get("ManagerStatus")
    if isinstance(ms, dict) and isinstance(oms, dict):
        _diff(attrs, "leader", _lower(bool(oms.get("Leader"))), _lower(bool(ms.get("Leader"))))
        _diff(attrs, "reachability", _lower(oms.get("Reachability")), _lower(ms.get("Reachability")))
    return attrs


def _task_attrs(obj: Obj, old: Obj | None, service_names: Mapping[str, str]) -> dict[str, str] | None:
    """The attributes of a task event, None when an update changes nothing reported."""
    status = obj.get("Status") or {}
    if old is not None and obj.get("DesiredState") == old.get("DesiredState") and obj.get("NodeID") == old.get("NodeID"):
        st = status.get("State")
        if st == (old.get("Status") or {}).get("State") or st not in TASK_STATES_REPORTED:
            return None
    state = _lower(status.get("State"))
    desired = _lower(obj.get("DesiredState"))
    node = str(obj.get("NodeID") or "")
    sid = str(obj.get("ServiceID") or "")
    attrs = {"name": str(obj.get("Name") or ""), "service.id": sid, "service.name": service_names.get(sid, ""),
             "node.id": node, "slot": str(obj.get("Slot") or "")}
    if old is None:
        attrs["state.new"], attrs["desiredstate.new"] = state, desired
    else:
        _diff(attrs, "state", _lower((old.get("Status") or {}).get("State")), state)
        _diff(attrs, "desiredstate", _lower(old.get("DesiredState")), desired)
        onode = str(old.get("NodeID") or "")
        if onode != node:
            attrs["node.id.old"] = onode
    err = (obj.get("Status") or {}).get("Err")
    if err:
        attrs["error"] = str(err)
    return attrs


def to_message(action: str, table: str, obj: Obj, old: Obj | None, now: float,
               service_names: Mapping[str, str] | None = None) -> Message | None:
    """The Docker event message of one store change (``action``: create|update|delete; ``obj``:
    the object, for a delete the deleted one; ``old``: the previous one or None), or None when
    the change is not reported (a table without events, an update that changes nothing shown).
    ``now``: seconds since the epoch, the time of a remove; ``service_names``: service ID → name,
    for task events."""
    etype = TYPES.get(table)
    act = ACTIONS.get(action)
    if etype is None or act is None:
        return None
    prev = old if act == "update" else None
    attrs: dict[str, str] | None
    if etype == "service":
        attrs = _service_attrs(obj, prev)
    elif etype == "node":
        if prev is not None and _unchanged(obj, prev):
            return None
        attrs = _node_attrs(obj, prev)
    elif etype == "network":
        if prev is not None and _unchanged(obj, prev):
            return None
        attrs = {"name": str((obj.get("Spec") or {}).get("Name") or obj.get("Name") or "")}
    else:
        attrs = _task_attrs(obj, prev, service_names or {})
        if attrs is None:
            return None
    ns = _event_nanos(act, obj, now)
    return {"Type": etype, "Action": act, "Actor": {"ID": str(obj.get("ID", "")), "Attributes": attrs},
            "scope": "swarm", "time": ns // 1_000_000_000, "timeNano": ns}


def parse_timestamp(raw: str | None, name: str) -> float | None:
    """``since``/``until`` as Docker sends them (``SECONDS[.NANOSECONDS]``, what the docker CLI makes
    of ``10m``, ``0s`` or an RFC 3339 date); an RFC 3339 date is accepted too. None when empty.
    Raises :class:`FilterError` ``invalid value for 'since': …``."""
    if raw is None or raw == "":
        return None
    sec, dot, frac = raw.partition(".")
    digits = sec[1:] if sec.startswith("-") else sec
    if digits.isascii() and digits.isdigit() and len(digits) <= 19 and (
            not dot or (frac.isascii() and frac.isdigit() and len(frac) <= 20)):
        return int(sec) + (int(frac[:9].ljust(9, "0")) / 1e9 if frac else 0.0)
    t = parse_rfc3339(raw[:64])
    if t:
        return t
    shown = raw[:64] + ("…" if len(raw) > 64 else "")
    raise FilterError(f"invalid value for '{name}': invalid timestamp {shown!r}: use seconds since the "
                      "epoch (SECONDS[.NANOSECONDS]) or an RFC 3339 date")


def _fuzzy(values: list[str] | None, *sources: str) -> bool:
    """Docker's FuzzyMatch: no values → True; else a value equal to, or a prefix of, a source."""
    if not values:
        return True
    return any(s and (v == s or s.startswith(v)) for v in values for s in sources)


def _exact(values: list[str] | None, source: str) -> bool:
    return not values or source in values


def _strip_tag(image: str) -> str:
    """``repo/name:tag`` or ``name@digest`` → the name without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class EventFilter:
    """Docker's events filter (moby daemon/events/filter.go): every given key must match.
    ``fields``: key → values, as ``filters`` decodes."""

    fields: Mapping[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, fields: Mapping[str, list[str]]) -> EventFilter:
        """Check the keys, and the values of ``type`` and ``scope`` (which Docker ignores when
        unknown: then nothing would ever match). Raises :class:`FilterError`."""
        for key, values in fields.items():
            if key not in FILTER_KEYS:
                raise FilterError(f"invalid filter '{key[:64]}': events can be filtered by "
                                  f"{', '.join(FILTER_KEYS)}")
            if key == "type":
                bad = [v for v in values if v not in EVENT_TYPES]
                if bad:
                    raise FilterError(f"invalid filter 'type={bad[0][:64]}': the types are {', '.join(EVENT_TYPES)}")
            if key == "scope":
                bad = [v for v in values if v not in ("local", "swarm")]
                if bad:
                    raise FilterError(f"invalid filter 'scope={bad[0][:64]}': the scopes are local and swarm")
        return cls({k: list(v) for k, v in fields.items() if v})

    def include(self, msg: Message) -> bool:
        """Whether ``msg`` passes every filter."""
        f = self.fields
        if not f:
            return True
        actor = msg.get("Actor") or {}
        aid = str(actor.get("ID", ""))
        attrs: Mapping[str, str] = actor.get("Attributes") or {}
        name = attrs.get("name", "")
        if not (_exact(f.get("event"), str(msg.get("Action", ""))) and _exact(f.get("type"), str(msg.get("Type", "")))
                and _exact(f.get("scope"), str(msg.get("scope", "")))):
            return False
        for key in ("daemon", "container", "plugin", "volume", "network", "node", "service", "secret", "config"):
            if not _fuzzy(f.get(key), aid, name):
                return False
        images = f.get("image")
        if images:
            img = name if msg.get("Type") == "image" else attrs.get("image", "")
            if not any(c in images for c in (aid, img, _strip_tag(aid), _strip_tag(img))):
                return False
        for want in f.get("label") or []:
            k, eq, v = want.partition("=")
            if k not in attrs or (eq and attrs[k] != v):
                return False
        return True


class Subscription:
    """One ``/events`` client: ``buffered`` (the replay), then :meth:`get` for live messages.
    Falls behind by at most :data:`SUBSCRIBER_QUEUE` messages (older ones are dropped and counted
    in ``dropped``). :meth:`close` ends it."""

    def __init__(self, hub: EventHub, flt: EventFilter, buffered: list[Message]) -> None:
        self._hub = hub
        self.filter = flt
        self.buffered = buffered
        self._queue: deque[Message] = deque(maxlen=SUBSCRIBER_QUEUE)
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _put(self, msg: Message) -> None:
        if self.filter.include(msg):
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(msg)
            self._ready.set()

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next live message, or None after ``timeout`` seconds (or once closed)."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._queue.popleft()

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self.closed:
            self.closed = True
            self._hub._subs.discard(self)
            self._ready.set()


class EventHub:
    """Turns store changes into messages (:meth:`on_change`, a :meth:`manager.store.Store.listen`
    callback), keeps the last ``limit`` of them for replay and hands them to subscribers.
    ``clock``: seconds since the epoch (the time of a remove)."""

    def __init__(self, limit: int = EVENT_BUFFER, clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[Message] = deque(maxlen=limit)
        self._subs: set[Subscription] = set()
        self._service_names: dict[str, str] = {}
        self.clock = clock

    def on_change(self, event: Any) -> None:
        """A store change (``event.action``, ``.table``, ``.obj``, ``.old``; the objects are read,
        never kept or changed)."""
        table, obj = event.table, event.obj
        if table == "services":
            sid = str(obj.get("ID", ""))
            if event.action == "delete":
                self._service_names.pop(sid, None)
            else:
                self._service_names[sid] = str((obj.get("Spec") or {}).get("Name", ""))
        msg = to_message(event.action, table, obj, event.old, self.clock(), self._service_names)
        if msg is not None:
            self.publish(msg)

    def publish(self, msg: Message) -> None:
        """Keep ``msg`` for replay and give it to every subscriber whose filter takes it."""
        self._ring.append(msg)
        for s in list(self._subs):
            s._put(msg)

    def attach(self, store: Any) -> None:
        """Follow ``store`` (a :class:`manager.store.Store`): learn the names of the services it
        holds (for task events), then get its every committed change."""
        for s in store.view().list_shallow("services"):
            self._service_names[str(s.get("ID", ""))] = str((s.get("Spec") or {}).get("Name", ""))
        store.listen(self.on_change)

    def buffered(self, since: float | None, until: float | None, flt: EventFilter) -> list[Message]:
        """The kept messages with ``since <= time <= until`` that ``flt`` takes, oldest first;
        none when both are None (as Docker: replay only with ``since`` or ``until``)."""
        if since is None and until is None:
            return []
        lo = int(round(since * 1e9)) if since is not None else None
        hi = int(round(until * 1e9)) if until is not None else None
        return [m for m in self._ring
                if (lo is None or m["timeNano"] >= lo) and (hi is None or m["timeNano"] <= hi) and flt.include(m)]

    def subscribe(self, since: float | None, until: float | None, flt: EventFilter) -> Subscription:
        """A :class:`Subscription` with the replay of :meth:`buffered` and every later message
        ``flt`` takes (the replay and the live part neither overlap nor leave a gap)."""
        sub = Subscription(self, flt, self.buffered(since, until, flt))
        self._subs.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subs)
