"""Published ports of this node's own addresses, DNATed elsewhere: a private nftables table in the
host's network namespace (pure rendering + :class:`PortMap`, which applies deltas).

Used twice by the worker: the routing mesh (every ingress-mode published port → the ingress
sandbox's address, same port) and host-mode ports (a local task's published port → its container's
local-bridge address and target port). The table ``ip <table>``::

    map ports    { type inet_proto . inet_service : ipv4_addr . inet_service }   (proto . published → ip . port)
    set targets  { type ipv4_addr . inet_proto . inet_service }                  (what ports maps to)
    chain prerouting  (nat, -99):  fib daddr type local ip daddr != 127.0.0.0/8
                                   dnat ip to meta l4proto . th dport map @ports
    chain output      (nat, -99):  the same, for connections made on the node itself
    chain forward     (filter, 0): ct status dnat ip daddr . meta l4proto . th dport @targets accept

The nat chains run at -99, just after the load-balancer tables of :mod:`overlaynet.lb.rules`
(-100): a local-port service there (the mesh's "keep the client address" option) DNATs first, and a
DNATed packet no longer has a local destination, so this table leaves it alone.
``fib daddr type local`` (an address of this namespace) follows kube-proxy's nftables NodePorts;
loopback destinations are left alone (reaching them would need ``route_localnet``, the
CVE-2020-8558 hole kube-proxy closed). No masquerade: the client's source address is kept (what
host-mode ports promise; the mesh's sandbox does its own SNAT). The forward accept only matters to
a ruleset whose own forward chains accept what an earlier accept let through (nftables: a drop in
another base chain still drops).

A change is one ``nft -f`` transaction of element additions/deletions (a changed target is a delete
and an add); the first apply (and the one after a failure) replaces the table atomically.
Errors: :class:`overlaynet.lb.rules.RulesError` for bad input, :class:`overlaynet.lb.apply.NftError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from overlaynet.lb import rules
from overlaynet.lb.apply import run_nft

__all__ = ["PortMap", "PortMapping", "normalize", "render_delta", "render_full"]

PortMapping = Mapping[tuple[str, int], tuple[str, int]]
"""``{(proto, published port): (target IPv4, target port)}``; proto tcp, udp or sctp."""

_KEY: Final = "inet_proto . inet_service"
_VALUE: Final = "ipv4_addr . inet_service"
_TARGET: Final = "ipv4_addr . inet_proto . inet_service"


def normalize(entries: PortMapping) -> dict[tuple[str, int], tuple[str, int]]:
    """Validate ``entries`` (protocols lowercased, addresses canonical), sorted by protocol and port.
    Raises :class:`rules.RulesError` naming the bad entry."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for (proto, port), (ip, tport) in entries.items():
        k = rules.ServiceKey("192.0.2.1", proto, port)  # validates proto and port
        ep = rules.Endpoint(ip, tport)
        if ep.port is None:
            raise rules.RulesError(f"published port {proto}/{port}: the target needs a port")
        out[(k.proto, int(port))] = (ep.ip, ep.port)
    return dict(sorted(out.items()))


def _elem(k: tuple[str, int], v: tuple[str, int]) -> str:
    return f"{k[0]} . {k[1]} : {v[0]} . {v[1]}"


def _target(k: tuple[str, int], v: tuple[str, int]) -> str:
    return f"{v[0]} . {k[0]} . {v[1]}"


def render_full(entries: PortMapping, table: str) -> str:
    """The nft script replacing ``ip <table>`` with one holding ``entries`` (one transaction)."""
    t = rules.validate_table_name(table)
    ents = normalize(entries)
    lines = [f"add table ip {t}", f"delete table ip {t}", f"table ip {t} {{",
             "\tmap ports {", f"\t\ttype {_KEY} : {_VALUE}"]
    if ents:
        lines.append("\t\telements = { " + ", ".join(_elem(k, v) for k, v in ents.items()) + " }")
    lines += ["\t}", "\tset targets {", f"\t\ttype {_TARGET}"]
    targets = sorted({_target(k, v) for k, v in ents.items()})
    if targets:
        lines.append("\t\telements = { " + ", ".join(targets) + " }")
    lines.append("\t}")
    for hook in ("prerouting", "output"):
        lines += [f"\tchain {hook} {{", f"\t\ttype nat hook {hook} priority -99; policy accept;",
                  "\t\tfib daddr type local ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map @ports",
                  "\t}"]
    lines += ["\tchain forward {", "\t\ttype filter hook forward priority 0; policy accept;",
              "\t\tct status dnat ip daddr . meta l4proto . th dport @targets accept", "\t}", "}"]
    return "\n".join(lines) + "\n"


def render_delta(old: PortMapping, new: PortMapping, table: str) -> str:
    """The element changes turning ``ip <table>`` holding ``old`` into ``new``; ``""`` if none."""
    t = rules.validate_table_name(table)
    a, b = normalize(old), normalize(new)
    out: list[str] = []
    for k, v in a.items():
        if b.get(k) != v:
            out.append(f"delete element ip {t} ports {{ {k[0]} . {k[1]} }}")
    old_t = {_target(k, v) for k, v in a.items()}
    new_t = {_target(k, v) for k, v in b.items()}
    out += [f"delete element ip {t} targets {{ {x} }}" for x in sorted(old_t - new_t)]
    out += [f"add element ip {t} targets {{ {x} }}" for x in sorted(new_t - old_t)]
    for k, v in b.items():
        if a.get(k) != v:
            out.append(f"add element ip {t} ports {{ {_elem(k, v)} }}")
    return "\n".join(out) + "\n" if out else ""


class PortMap:
    """The table ``ip <table>`` in the network namespace ``netns`` (None: the caller's), holding
    the last mapping given to :meth:`apply`. ``nft``: the script runner (tests pass a fake; it gets
    ``netns`` as a keyword). Synchronous (one ``nft`` per change); not thread-safe."""

    def __init__(self, table: str, netns: str | Path | None = None,
                 nft: Callable[..., None] = run_nft) -> None:
        self.table = rules.validate_table_name(table)
        self.netns = netns
        self._nft = nft
        self._applied: dict[tuple[str, int], tuple[str, int]] | None = None

    @property
    def applied(self) -> dict[tuple[str, int], tuple[str, int]] | None:
        """What the table holds, or None before the first apply / after a failure or remove."""
        return None if self._applied is None else dict(self._applied)

    def apply(self, entries: PortMapping) -> str:
        """Make the table hold ``entries``; return the script sent (``""``: nothing changed).
        Raises :class:`rules.RulesError` (nothing sent) or ``NftError`` (next apply is full)."""
        new = normalize(entries)
        old = self._applied
        script = render_full(new, self.table) if old is None else render_delta(old, new, self.table)
        if script:
            self._applied = None
            self._nft(script, netns=self.netns)
        self._applied = new
        return script

    def remove(self) -> None:
        """Delete the table (fine if it is not there)."""
        self._applied = None
        self._nft(rules.render_delete_table(self.table), netns=self.netns)

