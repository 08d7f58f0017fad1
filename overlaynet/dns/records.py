"""The embedded DNS's table of names: what each overlay network answers (pure, no I/O).

The worker fills a :class:`DnsTable` from its assignments, one :class:`NetworkRecords` per
network ID, and :func:`overlaynet.dns.answers.answer` reads it for every query. The records are
plain data; :meth:`DnsTable.replace` compiles one network's records into a lookup index (a dict
keyed by lowercased name) and swaps it in with a single assignment, so a reader sees either the
old or the new records of that network, never a mix, and a lookup costs one dict access per
network the client is attached to.

Names a network answers (Docker's embedded DNS, moby ``libnetwork`` ``resolver.go`` /
``network.go`` svcRecords, followed):

- ``<service>`` and each service alias → the service's VIP; with ``vip=None`` (endpoint mode
  ``dnsrr``) the IPs of its serving tasks instead;
- ``tasks.<service>`` and ``tasks.<alias>`` → the IPs of the service's serving tasks;
- ``<service>.<slot>.<task id>`` (Docker's container name; for a global service the slot is
  the node ID) → that task's IP;
- a task's container hostname and its aliases → its IP (several tasks sharing a hostname all
  answer it).

When two kinds of name collide in one network, a service name or alias wins over
``tasks.<x>``, which wins over a task name, which wins over a hostname or task alias.

Reverse (PTR) names, as libnetwork's ``ipMap`` (``network.go`` ``ResolveIP``): a task's IP →
``<service>.<slot>.<task id>.<network name>`` (its container name on that network; the first
task listed wins when two share an IP). Service VIPs have no reverse name (libnetwork adds
them with ``ipMapUpdate=false``): their PTR queries go upstream.

Only IPv4 addresses: the overlay is IPv4. A name in the table with no address (a service with
no serving task) is still *known*: it is answered empty, never forwarded (moby#35118: internal
names sent to slow upstream resolvers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.rdata
import dns.rdataclass
import dns.rdatatype

__all__ = ["DnsTable", "NetworkRecords", "ServiceRecord", "TaskRecord", "normalize_name"]


def normalize_name(name: str) -> str:
    """A name as the table keys it: lowercased, without the trailing dot (``"Web."`` →
    ``"web"``). DNS names compare case-insensitively (RFC 4343)."""
    return name.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A service attached to the network.

    ``name``: the service name; ``aliases``: its network aliases on this network;
    ``vip``: its virtual IP on this network (dotted IPv4), or ``None`` for endpoint mode
    ``dnsrr`` (then ``<service>`` answers the task IPs, as ``tasks.<service>`` does).
    The tasks of the service are the :class:`TaskRecord` entries naming it.
    """

    name: str
    vip: str | None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A running task attached to the network (a stopped or removed task is simply left out).

    ``service``: its service's name; ``slot``: its slot number (replicated) or node ID
    (global), as in Docker's container name ``<service>.<slot>.<task id>``; ``task_id``: the
    full task ID; ``ip``: its address on this network (dotted IPv4); ``hostname``: the
    container's hostname, if any; ``aliases``: further names of the container on this network.
    ``serving=False`` (unhealthy, or shutting down: Docker's "ServiceDisabled") takes the task
    out of ``<service>`` (dnsrr) and ``tasks.<service>`` first, while its own names still answer.
    """

    service: str
    slot: int | str
    task_id: str
    ip: str
    hostname: str | None = None
    aliases: tuple[str, ...] = ()
    serving: bool = True


@dataclass(frozen=True, slots=True)
class NetworkRecords:
    """Everything one network answers: its services and its running tasks (on every node).
    ``name``: the network's name (the last label of its PTR answers; ``""``: the network ID)."""

    network_id: str
    services: tuple[ServiceRecord, ...] = ()
    tasks: tuple[TaskRecord, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class _Compiled:
    records: NetworkRecords
    index: Mapping[str, tuple[dns.rdata.Rdata, ...]] = field(default_factory=dict)
    reverse: Mapping[str, str] = field(default_factory=dict)  # IPv4 → PTR target, without final dot


def _rdata(ip: str) -> dns.rdata.Rdata:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError as e:
        raise ValueError(f"not an IPv4 address: {ip!r}") from e
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, ip)


def _compile(records: NetworkRecords) -> _Compiled:
    """Build the name → A rdatas index of one network (see the module docstring for the names
    and their precedence). Raises ``ValueError`` on an address that is not IPv4."""
    rdata_of: dict[str, dns.rdata.Rdata] = {}

    def rd(ip: str) -> dns.rdata.Rdata:
        r = rdata_of.get(ip)
        if r is None:
            r = rdata_of[ip] = _rdata(ip)
        return r

    hostnames: dict[str, list[dns.rdata.Rdata]] = {}
    task_names: dict[str, tuple[dns.rdata.Rdata, ...]] = {}
    serving_ips: dict[str, list[dns.rdata.Rdata]] = {}
    reverse: dict[str, str] = {}
    net_name = records.name.rstrip(".") or records.network_id
    for t in records.tasks:
        r = rd(t.ip)
        task_names[normalize_name(f"{t.service}.{t.slot}.{t.task_id}")] = (r,)
        reverse.setdefault(r.to_text(), f"{t.service}.{t.slot}.{t.task_id}.{net_name}")
        for h in ((t.hostname,) if t.hostname else ()) + t.aliases:
            lst = hostnames.setdefault(normalize_name(h), [])
            if r not in lst:
                lst.append(r)
        if t.serving:
            lst = serving_ips.setdefault(normalize_name(t.service), [])
            if r not in lst:
                lst.append(r)

    index: dict[str, tuple[dns.rdata.Rdata, ...]] = {n: tuple(ips) for n, ips in hostnames.items()}
    index.update(task_names)
    service_names: dict[str, tuple[dns.rdata.Rdata, ...]] = {}
    tasks_names: dict[str, tuple[dns.rdata.Rdata, ...]] = {}
    for s in records.services:
        tips = tuple(serving_ips.get(normalize_name(s.name), ()))
        ips = (rd(s.vip),) if s.vip is not None else tips
        for n in (s.name, *s.aliases):
            key = normalize_name(n)
            service_names[key] = ips
            tasks_names["tasks." + key] = tips
    # tasks.<service> also for tasks whose service record is absent (defensive: same answer)
    for svc, lst in serving_ips.items():
        tasks_names.setdefault("tasks." + svc, tuple(lst))
    index.update(tasks_names)
    index.update(service_names)
    return _Compiled(records, index, reverse)


class DnsTable:
    """The node's DNS records, per network ID.

    Writers (the worker) call :meth:`replace`, :meth:`remove` or :meth:`replace_all`; each
    compiles first, then swaps references, so it is atomic for readers in the event loop and
    under the GIL. Readers call :meth:`lookup`.
    """

    __slots__ = ("_nets",)

    def __init__(self) -> None:
        self._nets: dict[str, _Compiled] = {}

    def replace(self, records: NetworkRecords) -> None:
        """Replace every record of ``records.network_id`` with ``records`` in one step.
        Raises ``ValueError`` (table unchanged) if an address is not IPv4."""
        compiled = _compile(records)
        self._nets[records.network_id] = compiled

    def replace_all(self, networks: Iterable[NetworkRecords]) -> None:
        """Replace the whole table (a full resync): networks not given are dropped.
        Raises ``ValueError`` (table unchanged) if an address is not IPv4."""
        new = {r.network_id: _compile(r) for r in networks}
        self._nets = new

    def remove(self, network_id: str) -> None:
        """Forget a network (no error if unknown)."""
        self._nets.pop(network_id, None)

    def records(self, network_id: str) -> NetworkRecords | None:
        """The records last given for ``network_id``, or ``None``."""
        c = self._nets.get(network_id)
        return c.records if c is not None else None

    def network_ids(self) -> frozenset[str]:
        """The networks the table holds."""
        return frozenset(self._nets)

    def reverse(self, ip: str, networks: Iterable[str]) -> str | None:
        """The PTR target (without the final dot) of ``ip`` (dotted IPv4) on the first of
        ``networks`` that has a task with that address: ``<service>.<slot>.<task id>.<network
        name>``; ``None`` when none has (a VIP, or an address of another network)."""
        nets = self._nets
        for nid in networks:
            c = nets.get(nid)
            if c is not None:
                found = c.reverse.get(ip)
                if found is not None:
                    return found
        return None

    def lookup(self, name: str, networks: Iterable[str]) -> tuple[dns.rdata.Rdata, ...] | None:
        """The A rdatas of ``name`` (already normalized, see :func:`normalize_name`) on the
        first of ``networks`` that knows it (iterated in the order given), or ``None`` when
        none of them does. An empty tuple means *known, without address*."""
        nets = self._nets
        for nid in networks:
            c = nets.get(nid)
            if c is not None:
                found = c.index.get(name)
                if found is not None:
                    return found
        return None
