"""Service VIPs as nftables rules: the desired state as data and the nft scripts for it (pure, no I/O).

The shape follows kube-proxy's nftables proxier (kubernetes/kubernetes ``pkg/proxy/nftables``,
KEP-3866), learnt from, not copied:

- one private table ``ip <table>`` that nothing else touches (clean-up = delete the table);
- base chains ``nat-prerouting`` and ``nat-output`` (type nat, priority -100 = dstnat; nft 1.0.6
  accepts the name ``dstnat`` on prerouting only, so numbers are written) jump to ``services``,
  which does the one lookup ``ip daddr . meta l4proto . th dport vmap @service-ips``; each element
  is ``goto svc-<hash>`` for a service with endpoints;
- ``svc-<hash>`` picks an endpoint with ``numgen random mod N vmap { 0 : goto ep-<hash>, ... }``;
- ``ep-<hash>`` does ``meta l4proto <proto> dnat to <ip>:<port>``;
- a service without endpoints is in the map ``no-endpoint-services`` instead, looked up for new
  connections by ``endpoints-check`` from the filter chains on the input, forward and output hooks
  (priority -110 = dstnat - 10, so before any DNAT; reject is not valid on prerouting), whose verdict
  ``goto reject-chain`` answers TCP with a reset and anything else with ICMP port-unreachable:
  the client fails at once instead of hanging.

Whole-VIP services (Docker's VIPs: IPVS keyed by a firewall mark, so *any* port sent to the VIP
goes to the same port of the chosen task): a :class:`ServiceKey` with ``proto`` :data:`ANY_PROTO`
and ``port`` None (:meth:`ServiceKey.whole`) whose endpoints have ``port`` None. They live in a
second pair of maps keyed by the address alone, ``vip-ips`` (``ip daddr vmap @vip-ips``, looked up
by ``services`` after ``service-ips``, so a port-keyed service on the same address wins) and
``no-endpoint-vips``; their endpoint chains do ``dnat to <ip>`` (any protocol, the port kept).

Local-port services (:meth:`ServiceKey.local`, ``vip`` :data:`LOCAL`): a protocol and port on
*any* local address of the namespace (``fib daddr type local``, loopback excluded), kube-proxy's
NodePort shape; in the maps ``local-ports`` / ``no-endpoint-local-ports`` keyed by
``inet_proto . inet_service``, looked up by ``services`` last. The routing mesh uses them to send a
node's published port straight to a local task (keeping the client's address).

Names are stable: a service's chain is ``svc-`` + 16 base32 characters of the SHA-256 of
``vip/proto/port``; an endpoint's chain is ``ep-`` + 16 of the SHA-256 of the service key and
``ip:port``. So :func:`render_delta` touches only the services whose endpoint set changed, and an
endpoint present before and after keeps its chain (and its rule) as is.

IPv4 only (the overlay is IPv4). DNAT runs in whatever network namespace the table is loaded into;
no masquerade is done (hairpin traffic, a task reaching itself through its VIP, is not handled yet).

Errors: :class:`RulesError` (a ``ValueError``) for any invalid input, with the offending value.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ANY_PROTO",
    "MAX_ENDPOINTS_PER_SERVICE",
    "MAX_SERVICES",
    "PROTOCOLS",
    "Endpoint",
    "LBState",
    "RulesError",
    "ServiceKey",
    "endpoint_chain",
    "render_delete_table",
    "render_delta",
    "render_full",
    "service_chain",
    "validate_table_name",
]

PROTOCOLS: Final = ("tcp", "udp", "sctp")
ANY_PROTO: Final = "any"
LOCAL: Final = "local"
"""The ``vip`` of a local-port key (:meth:`ServiceKey.local`): any local address but loopback."""
"""The ``proto`` of a whole-VIP key (:meth:`ServiceKey.whole`): every protocol and port."""
MAX_ENDPOINTS_PER_SERVICE: Final = 4096
MAX_SERVICES: Final = 65536

SERVICE_IPS: Final = "service-ips"
NO_ENDPOINT_SERVICES: Final = "no-endpoint-services"
VIP_IPS: Final = "vip-ips"
NO_ENDPOINT_VIPS: Final = "no-endpoint-vips"
LOCAL_PORTS: Final = "local-ports"
NO_ENDPOINT_LOCAL_PORTS: Final = "no-endpoint-local-ports"
SERVICES_CHAIN: Final = "services"
ENDPOINTS_CHECK: Final = "endpoints-check"
REJECT_CHAIN: Final = "reject-chain"

_TABLE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_KEY_TYPE: Final = "ipv4_addr . inet_proto . inet_service"
_VIP_KEY_TYPE: Final = "ipv4_addr"
_LOCAL_KEY_TYPE: Final = "inet_proto . inet_service"
_LOCAL_MATCH: Final = "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport"


class RulesError(ValueError):
    """Invalid load-balancer input: a bad address, port, protocol, table name or too many entries."""


def _ipv4(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RulesError(f"{what} must be an IPv4 address string, not {value!r}")
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError as e:
        raise RulesError(f"{what} {value!r} is not an IPv4 address") from e
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == ipaddress.IPv4Address(
            "255.255.255.255"):
        raise RulesError(f"{what} {value!r} is not a unicast address (0.0.0.0, loopback, multicast, broadcast)")
    return str(addr)


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RulesError(f"{what} must be an integer 1-65535, not {value!r}")
    return value


def _proto(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in PROTOCOLS:
        raise RulesError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {value!r}")
    return value.lower()


@dataclass(frozen=True)
class ServiceKey:
    """One service port: ``vip`` (IPv4, canonical text), ``proto`` (tcp, udp or sctp), ``port`` (1-65535);
    or a whole VIP: ``proto`` :data:`ANY_PROTO` and ``port`` None (:meth:`whole`).

    Validated and normalised on construction (``"TCP"`` → ``"tcp"``); raises :class:`RulesError`."""

    vip: str
    proto: str
    port: int | None

    def __post_init__(self) -> None:
        if self.vip != LOCAL:
            object.__setattr__(self, "vip", _ipv4(self.vip, "VIP"))
        elif self.port is None:
            raise RulesError("a local-port key needs a protocol and a port")
        if self.proto == ANY_PROTO and self.port is None:
            return
        object.__setattr__(self, "proto", _proto(self.proto))
        object.__setattr__(self, "port", _port(self.port, "service port"))

    @classmethod
    def whole(cls, vip: str) -> ServiceKey:
        """The key of every protocol and port of ``vip`` (Docker's port-agnostic VIP)."""
        return cls(vip, ANY_PROTO, None)

    @classmethod
    def local(cls, proto: str, port: int) -> ServiceKey:
        """The key of ``proto``/``port`` on any local address (loopback excluded)."""
        return cls(LOCAL, proto, port)

    @property
    def is_local(self) -> bool:
        """True for a local-port key (:meth:`local`)."""
        return self.vip == LOCAL

    @property
    def is_whole(self) -> bool:
        """True for a whole-VIP key (:meth:`whole`)."""
        return self.port is None

    def _sort_key(self) -> tuple[int, str, int]:
        addr = -1 if self.is_local else int(ipaddress.IPv4Address(self.vip))
        return addr, self.proto, self.port or 0


@dataclass(frozen=True)
class Endpoint:
    """One backend: a task's ``ip`` (IPv4) and target ``port`` (1-65535), or ``port`` None (the
    endpoint of a whole-VIP key: the destination port is kept); raises :class:`RulesError`."""

    ip: str
    port: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", _ipv4(self.ip, "endpoint address"))
        if self.port is not None:
            object.__setattr__(self, "port", _port(self.port, "endpoint port"))

    def _sort_key(self) -> tuple[int, int]:
        return int(ipaddress.IPv4Address(self.ip)), self.port or 0


@dataclass(frozen=True)
class LBState:
    """The desired load-balancer state: service key → its endpoints (possibly none).

    Endpoints are kept de-duplicated and sorted (by address, then port) so that equal sets compare
    and render equal. Build it with :meth:`build` from plain tuples, or pass a mapping of
    :class:`ServiceKey` → iterable of :class:`Endpoint`. At most :data:`MAX_SERVICES` services and
    :data:`MAX_ENDPOINTS_PER_SERVICE` endpoints each; raises :class:`RulesError`.
    """

    services: Mapping[ServiceKey, tuple[Endpoint, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.services) > MAX_SERVICES:
            raise RulesError(f"too many services: {len(self.services)} (at most {MAX_SERVICES})")
        norm: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        for key, eps in self.services.items():
            if not isinstance(key, ServiceKey):
                raise RulesError(f"service key must be a ServiceKey, not {key!r}")
            uniq = set(eps)
            for ep in uniq:
                if not isinstance(ep, Endpoint):
                    raise RulesError(f"endpoint of {key} must be an Endpoint, not {ep!r}")
                if (ep.port is None) != key.is_whole:
                    raise RulesError(f"endpoint {ep.ip}:{ep.port} of {key}: a whole-VIP key takes endpoints "
                                     "with port None, a port key endpoints with a port")
            if len(uniq) > MAX_ENDPOINTS_PER_SERVICE:
                raise RulesError(
                    f"service {key} has {len(uniq)} endpoints (at most {MAX_ENDPOINTS_PER_SERVICE})")
            norm[key] = tuple(sorted(uniq, key=Endpoint._sort_key))
        object.__setattr__(self, "services", dict(sorted(norm.items(), key=lambda kv: kv[0]._sort_key())))

    @classmethod
    def build(cls, services: Mapping[tuple[str, str, int], Iterable[tuple[str, int]]]) -> LBState:
        """``{(vip, proto, port): [(ip, port), ...]}`` → a validated state (``(vip, "any", None)`` with
        ``(ip, None)`` endpoints for a whole VIP); raises :class:`RulesError`."""
        out: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        for k, eps in services.items():
            if not isinstance(k, tuple) or len(k) != 3:
                raise RulesError(f"service key must be (vip, proto, port), not {k!r}")
            key = ServiceKey(*k)
            if key in out:
                raise RulesError(f"service {key} given twice")
            endpoints: list[Endpoint] = []
            for ep in eps:
                if not isinstance(ep, tuple) or len(ep) != 2:
                    raise RulesError(f"endpoint must be (ip, port), not {ep!r}")
                endpoints.append(Endpoint(*ep))
            out[key] = tuple(endpoints)
        return cls(out)


def validate_table_name(name: str) -> str:
    """Return ``name`` if it is a valid private table name (a letter, then up to 31 letters, digits,
    ``_`` or ``-``); raise :class:`RulesError` otherwise."""
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name):
        raise RulesError(f"bad nftables table name {name!r}: a letter, then up to 31 of [A-Za-z0-9_-]")
    return name


def _digest(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode().lower()[:16]


def service_chain(key: ServiceKey) -> str:
    """The stable chain name of a service: ``svc-`` + 16 base32 characters (20 in all)."""
    return "svc-" + _digest(f"{key.vip}/{key.proto}/{key.port}")


def endpoint_chain(key: ServiceKey, ep: Endpoint) -> str:
    """The stable chain name of one endpoint of one service: ``ep-`` + 16 base32 characters."""
    return "ep-" + _digest(f"{key.vip}/{key.proto}/{key.port}>{ep.ip}:{ep.port}")


def _elem(key: ServiceKey) -> str:
    if key.is_local:
        return f"{key.proto} . {key.port}"
    return key.vip if key.is_whole else f"{key.vip} . {key.proto} . {key.port}"


def _maps(key: ServiceKey) -> tuple[str, str]:
    """``(map with endpoints, map without)`` the key's element lives in."""
    if key.is_local:
        return LOCAL_PORTS, NO_ENDPOINT_LOCAL_PORTS
    return (VIP_IPS, NO_ENDPOINT_VIPS) if key.is_whole else (SERVICE_IPS, NO_ENDPOINT_SERVICES)


def _svc_rule(key: ServiceKey, eps: tuple[Endpoint, ...]) -> str:
    arms = ", ".join(f"{i} : goto {endpoint_chain(key, ep)}" for i, ep in enumerate(eps))
    return f"numgen random mod {len(eps)} vmap {{ {arms} }}"


def _ep_rule(key: ServiceKey, ep: Endpoint) -> str:
    if key.is_whole:
        return f"dnat to {ep.ip}"
    return f"meta l4proto {key.proto} dnat to {ep.ip}:{ep.port}"


def render_full(state: LBState, table_name: str) -> str:
    """A complete nft script (for ``nft -f``) that replaces the table ``ip <table_name>`` with one
    holding ``state``, atomically: ``add table`` + ``delete table`` (so it works whether or not the
    table exists) and then the whole table, all in one transaction. Raises :class:`RulesError`."""
    t = validate_table_name(table_name)
    lines = [f"add table ip {t}", f"delete table ip {t}", f"table ip {t} {{"]
    with_eps = [(k, e) for k, e in state.services.items() if e]
    without = [k for k, e in state.services.items() if not e]
    for name, typ, keys, verdict in (
            (SERVICE_IPS, _KEY_TYPE, [k for k, _ in with_eps if _maps(k)[0] == SERVICE_IPS], None),
            (NO_ENDPOINT_SERVICES, _KEY_TYPE, [k for k in without if _maps(k)[0] == SERVICE_IPS],
             f"goto {REJECT_CHAIN}"),
            (VIP_IPS, _VIP_KEY_TYPE, [k for k, _ in with_eps if k.is_whole], None),
            (NO_ENDPOINT_VIPS, _VIP_KEY_TYPE, [k for k in without if k.is_whole], f"goto {REJECT_CHAIN}"),
            (LOCAL_PORTS, _LOCAL_KEY_TYPE, [k for k, _ in with_eps if k.is_local], None),
            (NO_ENDPOINT_LOCAL_PORTS, _LOCAL_KEY_TYPE, [k for k in without if k.is_local], f"goto {REJECT_CHAIN}")):
        lines += [f"\tmap {name} {{", f"\t\ttype {typ} : verdict"]
        if keys:
            elems = ", ".join(f"{_elem(k)} : {verdict or 'goto ' + service_chain(k)}" for k in keys)
            lines.append(f"\t\telements = {{ {elems} }}")
        lines.append("\t}")
    lines += [
        f"\tchain {REJECT_CHAIN} {{", "\t\tmeta l4proto tcp reject with tcp reset", "\t\treject", "\t}",
        f"\tchain {ENDPOINTS_CHECK} {{",
        f"\t\tip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
        f"\t\tip daddr vmap @{NO_ENDPOINT_VIPS}",
        f"\t\t{_LOCAL_MATCH} vmap @{NO_ENDPOINT_LOCAL_PORTS}", "\t}",
    ]
    for hook in ("input", "forward", "output"):
        lines += [f"\tchain filter-{hook} {{",
                  f"\t\ttype filter hook {hook} priority -110; policy accept;",
                  f"\t\tct state new jump {ENDPOINTS_CHECK}", "\t}"]
    lines += [f"\tchain {SERVICES_CHAIN} {{", f"\t\tip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
              f"\t\tip daddr vmap @{VIP_IPS}", f"\t\t{_LOCAL_MATCH} vmap @{LOCAL_PORTS}", "\t}"]
    for hook in ("prerouting", "output"):
        lines += [f"\tchain nat-{hook} {{", f"\t\ttype nat hook {hook} priority -100; policy accept;",
                  f"\t\tjump {SERVICES_CHAIN}", "\t}"]
    for key, eps in with_eps:
        lines += [f"\tchain {service_chain(key)} {{", f"\t\t{_svc_rule(key, eps)}", "\t}"]
        for ep in eps:
            lines += [f"\tchain {endpoint_chain(key, ep)} {{", f"\t\t{_ep_rule(key, ep)}", "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delta(old: LBState, new: LBState, table_name: str) -> str:
    """The nft commands turning the table holding ``old`` (as applied) into ``new``; ``""`` when
    nothing changed. Only services whose endpoint set differs appear; meant for one ``nft -f``
    transaction (all or nothing). Per changed service, in this order: endpoint chains that are new
    are added with their rule; the service chain is added or flushed and gets its new ``numgen``
    rule; map elements are added/deleted (``service-ips`` / ``no-endpoint-services``); then chains
    no longer referenced are flushed and deleted. Raises :class:`RulesError` for a bad table name.
    """
    t = validate_table_name(table_name)
    adds: list[str] = []
    removes: list[str] = []
    for key in sorted(old.services.keys() | new.services.keys(), key=ServiceKey._sort_key):
        before = old.services.get(key)
        after = new.services.get(key)
        if before == after:
            continue
        b = before or ()
        a = after or ()
        svc = service_chain(key)
        elem = _elem(key)
        with_map, without_map = _maps(key)
        # endpoint chains that appear
        for ep in a:
            if ep not in b:
                ch = endpoint_chain(key, ep)
                adds += [f"add chain ip {t} {ch}", f"add rule ip {t} {ch} {_ep_rule(key, ep)}"]
        # the service chain and the map elements
        if a:
            if b:
                adds.append(f"flush chain ip {t} {svc}")
            else:
                adds.append(f"add chain ip {t} {svc}")
            adds.append(f"add rule ip {t} {svc} {_svc_rule(key, a)}")
            if not b:
                adds.append(f"add element ip {t} {with_map} {{ {elem} : goto {svc} }}")
        elif after is not None:  # present, no endpoints: reject
            if before is None or b:
                adds.append(f"add element ip {t} {without_map} {{ {elem} : goto {REJECT_CHAIN} }}")
        if before is not None and not b and (after is None or a):
            removes.append(f"delete element ip {t} {without_map} {{ {elem} }}")
        if b and not a:
            removes += [f"delete element ip {t} {with_map} {{ {elem} }}",
                        f"flush chain ip {t} {svc}", f"delete chain ip {t} {svc}"]
        # endpoint chains that go (no longer referenced once the service chain was rewritten)
        for ep in b:
            if ep not in a:
                ch = endpoint_chain(key, ep)
                removes += [f"flush chain ip {t} {ch}", f"delete chain ip {t} {ch}"]
    if not adds and not removes:
        return ""
    return "\n".join(adds + removes) + "\n"


def render_delete_table(table_name: str) -> str:
    """A script removing the table ``ip <table_name>`` whether or not it exists (add, then delete)."""
    t = validate_table_name(table_name)
    return f"add table ip {t}\ndelete table ip {t}\n"
