"""Published ports (pure): the cluster-wide ingress port space, one per protocol.

Follows swarmkit's ``portallocator``: ports published in ``ingress`` mode (the default) are
cluster-wide, so one (protocol, published port) belongs to at most one service; TCP, UDP and SCTP
are separate spaces. A port with no published port (0) gets one from the dynamic range
30000–32767; an explicit port anywhere in 1–65535 is taken as given or refused with
:class:`PortConflict` naming the service holding it. Ports in ``host`` mode are bound on each
task's own node and are not allocated here (they are copied to ``Endpoint.Ports`` as given).

Port config shape (Docker's ``PortConfig``): ``{"Name", "Protocol": "tcp"|"udp"|"sctp",
"TargetPort", "PublishedPort", "PublishMode": "ingress"|"host"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manager.allocator.errors import InvalidArgument, PortConflict, PortsExhausted

__all__ = ["CLUSTER_PORT", "DEFAULT_DATA_PATH_PORT", "DYNAMIC_MAX", "DYNAMIC_MIN", "PROTOCOLS", "PortAllocator",
           "normalize_port"]

DEFAULT_DATA_PATH_PORT = 4789
"""The VXLAN data path's UDP port unless ``swarm init --data-path-port`` says otherwise (Docker's)."""
CLUSTER_PORT = 2377
"""The managers' TCP port (Raft, dispatcher, CA) unless a manager listens elsewhere."""
DYNAMIC_MIN = 30000
DYNAMIC_MAX = 32767
PROTOCOLS = ("tcp", "udp", "sctp")

PortKey = tuple[str, int]  # (protocol, published port)


def _port_number(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InvalidArgument(f"invalid {what} {value!r}: must be a port number in 0-65535")
    return value


def normalize_port(p: Mapping[str, Any]) -> dict[str, Any]:
    """A ``PortConfig`` with defaults filled (``Protocol`` tcp, ``PublishMode`` ingress,
    ``PublishedPort`` 0). Raises :class:`InvalidArgument` for an unknown protocol or mode, or a
    target/published port outside 0-65535 (a target port of 0 is refused too)."""
    proto = str(p.get("Protocol") or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {p.get('Protocol')!r}: use tcp, udp or sctp")
    mode = str(p.get("PublishMode") or "ingress").lower()
    if mode not in ("ingress", "host"):
        raise InvalidArgument(f"invalid publish mode {p.get('PublishMode')!r}: use ingress or host")
    target = _port_number(p.get("TargetPort"), "target port")
    if target == 0:
        raise InvalidArgument("invalid target port 0: a published port needs a target port")
    out: dict[str, Any] = {"Protocol": proto, "TargetPort": target,
                           "PublishedPort": _port_number(p.get("PublishedPort"), "published port"),
                           "PublishMode": mode}
    if p.get("Name"):
        out = {"Name": str(p["Name"]), **out}
    return out


@dataclass(frozen=True)
class _Holder:
    service_id: str
    service_name: str


class PortAllocator:
    """Ingress ports in use: (protocol, published port) -> the service holding it."""

    def __init__(self, reserved: Mapping[PortKey, str] | None = None) -> None:
        self._held: dict[PortKey, _Holder] = {}
        self._cursor: dict[str, int] = {p: DYNAMIC_MIN - 1 for p in PROTOCOLS}
        self.reserved: dict[PortKey, str] = dict(reserved or {})
        """(protocol, port) -> what uses it on the nodes (the cluster port, the VXLAN port): never
        published, in either mode, since a published port is DNATed before the node sees it."""

    def check_reserved(self, ports: Iterable[Mapping[str, Any]]) -> None:
        """Raise :class:`InvalidArgument` when a normalized port (ingress or host mode) publishes
        a reserved port, naming it and what uses it."""
        for n in ports:
            key = (n["Protocol"], n["PublishedPort"])
            if n["PublishedPort"] and key in self.reserved:
                raise InvalidArgument(f"published port {key[1]}/{key[0]} is reserved: it is {self.reserved[key]}; "
                                      f"publish another port")

    def holder(self, protocol: str, port: int) -> tuple[str, str] | None:
        """``(service_id, service_name)`` holding ``port``/``protocol`` in ingress mode, or None."""
        h = self._held.get((protocol, port))
        return (h.service_id, h.service_name) if h else None

    def ports_of(self, service_id: str) -> set[PortKey]:
        """The (protocol, port) pairs ``service_id`` holds."""
        return {k for k, h in self._held.items() if h.service_id == service_id}

    def reserve(self, service_id: str, service_name: str, ports: Iterable[Mapping[str, Any]]) -> None:
        """Record a service's stored ``Endpoint.Ports`` (rebuild): every ingress port with a
        published port. Ports held by another service stay with their first holder (a corrupt
        store is not made worse); malformed entries are skipped."""
        for p in ports:
            try:
                n = normalize_port(p)
            except InvalidArgument:
                continue
            if n["PublishMode"] == "ingress" and n["PublishedPort"]:
                self._held.setdefault((n["Protocol"], n["PublishedPort"]), _Holder(service_id, service_name))

    def release(self, service_id: str) -> None:
        """Free every port ``service_id`` holds."""
        for k in self.ports_of(service_id):
            del self._held[k]

    def _free_for(self, key: PortKey, service_id: str, taken: set[PortKey]) -> bool:
        h = self._held.get(key)
        return key not in taken and key not in self.reserved and (h is None or h.service_id == service_id)

    def allocate(self, service_id: str, service_name: str, spec_ports: Sequence[Mapping[str, Any]],
                 current: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """The ``Endpoint.Ports`` for a service whose ``EndpointSpec.Ports`` is ``spec_ports``;
        ``current`` is its ``Endpoint.Ports`` so far (an update keeps its dynamic ports when the
        port's name, protocol, target port and mode are unchanged, as swarmkit does).

        All or nothing: the service then holds exactly the ingress ports returned (ports it held
        before and no longer publishes are freed). Raises :class:`InvalidArgument` (bad port, the
        same published port twice — "duplicate published ports provided", a reserved port in any
        mode), :class:`PortConflict`
        (held by another service), :class:`PortsExhausted` (no dynamic port left)."""
        ports = [normalize_port(p) for p in spec_ports]
        self.check_reserved(ports)
        taken: set[PortKey] = set()
        for n in ports:
            if n["PublishMode"] == "ingress" and n["PublishedPort"]:
                key = (n["Protocol"], n["PublishedPort"])
                if key in taken:
                    raise InvalidArgument(f"EndpointSpec: duplicate published ports provided "
                                          f"({n['PublishedPort']}/{n['Protocol']})")
                h = self._held.get(key)
                if h is not None and h.service_id != service_id:
                    raise PortConflict(n["PublishedPort"], n["Protocol"], h.service_id, h.service_name)
                taken.add(key)
        # dynamic ports this service already has, by what they publish
        reusable: dict[tuple[str, str, int], list[int]] = {}
        for c in current:
            try:
                cn = normalize_port(c)
            except InvalidArgument:
                continue
            if cn["PublishMode"] == "ingress" and DYNAMIC_MIN <= cn["PublishedPort"] <= DYNAMIC_MAX:
                reusable.setdefault((cn.get("Name", ""), cn["Protocol"], cn["TargetPort"]), []).append(
                    cn["PublishedPort"])
        cursor = dict(self._cursor)
        for n in ports:
            if n["PublishMode"] != "ingress" or n["PublishedPort"]:
                continue
            proto = n["Protocol"]
            got = None
            for old in reusable.get((n.get("Name", ""), proto, n["TargetPort"]), []):
                if self._free_for((proto, old), service_id, taken):
                    got = old
                    break
            if got is None:
                span = DYNAMIC_MAX - DYNAMIC_MIN + 1
                for step in range(span):
                    cand = DYNAMIC_MIN + (cursor[proto] - DYNAMIC_MIN + 1 + step) % span
                    if self._free_for((proto, cand), service_id, taken) and \
                            self._held.get((proto, cand)) is None:
                        got = cursor[proto] = cand
                        break
            if got is None:
                raise PortsExhausted(f"no free {proto} port left in the dynamic range "
                                     f"{DYNAMIC_MIN}-{DYNAMIC_MAX} for service '{service_name}'")
            n["PublishedPort"] = got
            taken.add((proto, got))
        # commit
        self.release(service_id)
        for key in taken:
            self._held[key] = _Holder(service_id, service_name)
        self._cursor = cursor
        return ports
