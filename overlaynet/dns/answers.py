"""Deciding one DNS query from the table (pure, no I/O): a reply, or "forward it upstream".

:func:`answer` is what the embedded DNS does with each query (Docker's embedded DNS, moby
``libnetwork/resolver.go``, followed where it is sound):

- a name the client's networks know (see :mod:`overlaynet.dns.records`), asked for ``A`` (or
  ``ANY``) → ``NOERROR`` with its A records (TTL :data:`DEFAULT_TTL`; the order is shuffled
  when the message is rendered, as Docker shuffles);
- the same name asked for ``AAAA`` or any other type → ``NOERROR`` with no answer, *not*
  forwarded (Docker does so for AAAA and MX; forwarding AAAA of internal names to unreachable
  upstreams made every lookup slow, moby#35118);
- a name known only on networks the client is not attached to, or not known at all →
  :data:`FORWARD` (the host's resolvers decide: Docker's scoping, ``sandbox.go``);
- ``PTR`` of ``d.c.b.a.in-addr.arpa`` where ``a.b.c.d`` is a task's IP on one of the client's
  networks → ``NOERROR`` with one PTR record, ``<service>.<slot>.<task id>.<network name>.`` (the
  task's container name on that network, as libnetwork's ``ResolveIP`` answers:
  ``network.go``, ``resolver.go`` ``handlePTRQuery``); any other PTR — a service VIP (libnetwork
  keeps no reverse entry for VIPs), an address the client's networks do not have, an IPv6 or
  malformed reverse name — → :data:`FORWARD`, as Docker does (PTR of a name that is not a
  reverse name is decided as the other types: empty for a known name, else forwarded);
- several questions, or none → ``FORMERR``; an opcode other than QUERY → ``NOTIMP``;
  a class other than IN → :data:`FORWARD`.

Names are matched case-insensitively, with or without the trailing dot, and with or without
one of the client's search domains appended (``web.corp.example`` is ``web`` when
``corp.example`` is a search domain: a resolver with ``ndots`` > 0 tries that form first).

Docker answers with TTL 600; Shoal answers 1 s, so that a client that caches by TTL still
follows the promise that a stopped task leaves (and a new one enters) the answers within 1 s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from overlaynet.dns.records import DnsTable, normalize_name

__all__ = ["DEFAULT_TTL", "FORWARD", "Decision", "Forward", "answer", "error_response", "lookup_name",
           "ptr_address"]

DEFAULT_TTL: Final = 1
"""Seconds, the TTL of every answer (Docker: 600)."""

OUR_UDP_PAYLOAD: Final = 4096
"""Bytes, the EDNS UDP payload size the resolver advertises in its replies."""


class Forward:
    """The decision "not ours: forward to the upstream resolvers" (use :data:`FORWARD`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = Forward()

Decision = dns.message.Message | Forward
"""What :func:`answer` returns: a reply to send, or :data:`FORWARD`."""


def error_response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """A reply to ``query`` with ``rcode`` and no records (RA set, as Docker does)."""
    resp = dns.message.make_response(query, recursion_available=True, our_payload=OUR_UDP_PAYLOAD)
    resp.set_rcode(rcode)
    return resp


def _ordered(networks: Iterable[str]) -> Iterable[str]:
    # A set has no order of its own: sort it so that the same query always gets the same
    # network's answer. A sequence (e.g. the attach order) is used as given.
    if isinstance(networks, set | frozenset):
        return sorted(networks)
    return networks


def lookup_name(name: str, networks_of_client: Iterable[str], table: DnsTable,
                search_domains: Sequence[str] = ()) -> tuple[dns.rdata.Rdata, ...] | None:
    """The A rdatas of ``name`` (any case, with or without trailing dot or one of
    ``search_domains``) on the client's networks; ``()`` for a known name without address;
    ``None`` when unknown there."""
    key = normalize_name(name)
    nets = _ordered(networks_of_client)
    found = table.lookup(key, nets)
    if found is None:
        for d in search_domains:
            suffix = "." + normalize_name(d)
            if len(suffix) > 1 and key.endswith(suffix) and len(key) > len(suffix):
                found = table.lookup(key[: -len(suffix)], nets)
                if found is not None:
                    break
    return found


_IN_ADDR_ARPA: Final = ".in-addr.arpa"


def ptr_address(name: str) -> str | None:
    """The dotted IPv4 address of a reverse name ``d.c.b.a.in-addr.arpa`` (any case, trailing
    dot or not) → ``"a.b.c.d"``; ``None`` for any other name (not four decimal octets without
    leading zeros, IPv6's ``ip6.arpa``, a partial reverse zone)."""
    key = normalize_name(name)
    if not key.endswith(_IN_ADDR_ARPA):
        return None
    labels = key[: -len(_IN_ADDR_ARPA)].split(".")
    if len(labels) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(labels))))
    except ValueError:
        return None


def _answer_ptr(query: dns.message.Message, ip: str, networks_of_client: Iterable[str], table: DnsTable,
                ttl: int) -> Decision:
    q = query.question[0]
    target = table.reverse(ip, _ordered(networks_of_client))
    if target is None:
        return FORWARD
    try:
        ptr = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, dns.name.from_text(target).to_text())
    except Exception:  # a name dnspython refuses (a label over 63 bytes): leave it to the upstreams
        return FORWARD
    resp = dns.message.make_response(query, recursion_available=True, our_payload=OUR_UDP_PAYLOAD)
    resp.answer.append(dns.rrset.from_rdata_list(q.name, ttl, [ptr]))
    return resp


def answer(query: dns.message.Message, networks_of_client: Iterable[str], table: DnsTable, *,
           search_domains: Sequence[str] = (), ttl: int = DEFAULT_TTL) -> Decision:
    """Decide ``query`` for a client attached to ``networks_of_client`` (network IDs; a set is
    tried in sorted order, a sequence in its order — the first network that knows the name
    answers). Returns the reply message (its ID and question copied from the query) or
    :data:`FORWARD`. ``ttl`` in seconds. Never raises for a parsed query."""
    if query.opcode() != dns.opcode.QUERY:
        return error_response(query, dns.rcode.NOTIMP)
    if len(query.question) != 1:
        return error_response(query, dns.rcode.FORMERR)
    q = query.question[0]
    if q.rdclass != dns.rdataclass.IN:
        return FORWARD
    if q.rdtype == dns.rdatatype.PTR:
        ip = ptr_address(q.name.to_text())
        if ip is not None:
            return _answer_ptr(query, ip, networks_of_client, table, ttl)
    found = lookup_name(q.name.to_text(omit_final_dot=True), networks_of_client, table, search_domains)
    if found is None:
        return FORWARD
    resp = dns.message.make_response(query, recursion_available=True, our_payload=OUR_UDP_PAYLOAD)
    if found and q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        resp.answer.append(dns.rrset.from_rdata_list(q.name, ttl, found))
    return resp

