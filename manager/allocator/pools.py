"""Overlay subnets: the cluster's default address pools and user-given subnets (pure).

Follows Docker/swarmkit: with no ``--subnet`` a network gets the first free subnet of
``SubnetSize`` bits (default 24) from the ``DefaultAddrPool`` list (default ``["10.0.0.0/8"]``), in
pool order then address order, skipping every subnet that overlaps a subnet in use or a host
route (libnetwork ipamutils / swarmkit cnmallocator). A user subnet (``--subnet``, ``--gateway``,
``--ip-range``) is validated with the messages of swarmkit's controlapi ``validateIPAMConfiguration``
and refused when it overlaps another network or a host route, naming what it overlaps.

Only IPv4 is supported. Host routes with prefix length 0 (default routes) are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manager.allocator.errors import InvalidArgument, PoolExhausted, SubnetOverlap

__all__ = [
    "DEFAULT_ADDR_POOL", "DEFAULT_SUBNET_SIZE", "MAX_SUBNET_SIZE", "AddressPools", "SubnetRegistry",
    "SPECIAL_RANGES", "UserSubnet", "check_unicast", "parse_pools", "validate_ipam_config",
]

DEFAULT_ADDR_POOL: tuple[str, ...] = ("10.0.0.0/8",)
DEFAULT_SUBNET_SIZE = 24
MAX_SUBNET_SIZE = 29
"""Docker's limit for ``--default-addr-pool-mask-length`` (8 addresses: the smallest overlay)."""


@dataclass(frozen=True)
class AddressPools:
    """Validated default pools: ``networks`` in order, each cut into ``/subnet_size`` subnets."""

    networks: tuple[ipaddress.IPv4Network, ...]
    subnet_size: int

    @classmethod
    def from_cluster(cls, cluster: Mapping[str, Any]) -> AddressPools:
        """From the stored cluster object's ``DefaultAddrPool`` (list of CIDRs) and ``SubnetSize``."""
        return parse_pools(cluster.get("DefaultAddrPool"), cluster.get("SubnetSize"))

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks)


SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(cidr), what) for cidr, what in (
        ("0.0.0.0/8", "'this network' addresses"),
        ("127.0.0.0/8", "loopback addresses"),
        ("169.254.0.0/16", "link-local addresses (the routing mesh's link is 169.254.253.0/30)"),
        ("224.0.0.0/4", "multicast addresses"),
        ("240.0.0.0/4", "reserved addresses and the broadcast address"),
    ))
"""Ranges no overlay subnet or address pool may touch: a task address there cannot be routed
(RFC 6890's special-purpose IPv4 ranges that are not unicast)."""


def check_unicast(net: ipaddress.IPv4Network, what: str, context: str = "") -> None:
    """Raise :class:`InvalidArgument` when ``net`` overlaps one of :data:`SPECIAL_RANGES`; the
    message (after ``context``, e.g. "ipam configuration: ") names ``what`` ("subnet 127.0.0.0/24",
    "base pool 0.0.0.0/0") and the range."""
    for special, desc in SPECIAL_RANGES:
        if net.overlaps(special):
            raise InvalidArgument(f"{context}invalid {what}: it overlaps {special} ({desc}), which cannot carry "
                                  f"task addresses; use a private range such as 10.0.0.0/8, "
                                  f"172.16.0.0/12 or 192.168.0.0/16")


def parse_pools(pools: Sequence[str] | None, size: int | None) -> AddressPools:
    """Validate ``swarm init --default-addr-pool ... --default-addr-pool-mask-length N`` (or the API's
    ``DefaultAddrPool``/``SubnetSize``); empty/None mean the defaults (10.0.0.0/8, 24).

    Raises :class:`InvalidArgument` with moby's ``validateDefaultAddrPool`` messages: size above 29
    ("subnet size is out of range"), a malformed pool ("invalid base pool"), a size shorter than a
    pool's prefix ("Subnet size is too small for pool"); also for overlapping pools, IPv6 pools and
    pools touching non-unicast ranges (:func:`check_unicast`)."""
    if size is None or size == 0:
        size = DEFAULT_SUBNET_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or size > MAX_SUBNET_SIZE:
        raise InvalidArgument(f"subnet size is out of range: {size}")
    nets: list[ipaddress.IPv4Network] = []
    for raw in pools or DEFAULT_ADDR_POOL:
        text = str(raw).strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as e:
            raise InvalidArgument(f"invalid base pool {text}: invalid CIDR address: {text}") from e
        if not isinstance(net, ipaddress.IPv4Network):
            raise InvalidArgument(f"invalid base pool {text}: IPv6 address pools are not supported")
        if size < net.prefixlen:
            raise InvalidArgument(f"invalid CIDR: {text!r}. Subnet size is too small for pool: {size}")
        check_unicast(net, f"base pool {text}")
        for other in nets:
            if net.overlaps(other):
                raise InvalidArgument(f"invalid base pool {text}: overlaps with pool {other}")
        nets.append(net)
    return AddressPools(tuple(nets), size)


@dataclass(frozen=True)
class UserSubnet:
    """A validated user IPAM config: ``subnet``, ``gateway`` (defaults to the first host address),
    ``ip_range`` (None = the whole subnet)."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    ip_range: ipaddress.IPv4Network | None


def _cidr(text: str, what: str) -> ipaddress.IPv4Network:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as e:
        raise InvalidArgument(f"ipam configuration: invalid {what} {text}") from e
    if "/" not in text:
        raise InvalidArgument(f"ipam configuration: invalid {what} {text}")
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise InvalidArgument(f"ipam configuration: invalid {what} {text}: IPv6 overlay networks are "
                              f"not supported by shoal")
    return iface.network


def validate_ipam_config(subnet: str, gateway: str = "", ip_range: str = "") -> UserSubnet:
    """Check ``--subnet`` (a CIDR; host bits are masked off), ``--gateway`` (an address inside the
    subnet; default: the first host address) and ``--ip-range`` (a CIDR inside the subnet); the
    subnet must not touch a non-unicast range (:func:`check_unicast`).

    Raises :class:`InvalidArgument` ("ipam configuration: invalid subnet X", "... subnet X does not
    contain gateway G", "... subnet X does not contain range R", "... subnet X is too small") —
    swarmkit controlapi's messages; /31 and /32 are refused (no room for a gateway and a task)."""
    net = _cidr(str(subnet), "subnet")
    check_unicast(net, f"subnet {subnet}", "ipam configuration: ")
    if net.prefixlen > 30:
        raise InvalidArgument(f"ipam configuration: subnet {subnet} is too small: an overlay subnet needs "
                              f"at least /30 (a gateway and one address)")
    rng: ipaddress.IPv4Network | None = None
    if ip_range:
        rng = _cidr(str(ip_range), "range")
        if not rng.subnet_of(net):
            raise InvalidArgument(f"ipam configuration: subnet {subnet} does not contain range {ip_range}")
    if gateway:
        try:
            gw = ipaddress.ip_address(str(gateway))
        except ValueError as e:
            raise InvalidArgument(f"ipam configuration: invalid gateway {gateway}") from e
        if not isinstance(gw, ipaddress.IPv4Address) or gw not in net:
            raise InvalidArgument(f"ipam configuration: subnet {subnet} does not contain gateway {gateway}")
        if gw in (net.network_address, net.broadcast_address):
            raise InvalidArgument(f"ipam configuration: gateway {gateway} is the network or broadcast "
                                  f"address of subnet {subnet}")
    else:
        gw = net.network_address + 1
    return UserSubnet(net, gw, rng)


class SubnetRegistry:
    """The subnets in use (network ID -> subnet, with the network's name for messages) and the
    host routes that no overlay subnet may overlap; hands out default-pool subnets."""

    def __init__(self, pools: AddressPools, host_routes: Iterable[str] = ()) -> None:
        self.pools = pools
        self._used: dict[str, tuple[ipaddress.IPv4Network, str]] = {}
        self._routes: list[ipaddress.IPv4Network] = []
        for r in host_routes:
            try:
                net = ipaddress.ip_network(str(r).strip(), strict=False)
            except ValueError as e:
                raise InvalidArgument(f"invalid host route {r!r}: {e}") from e
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                self._routes.append(net)

    def _overlap(self, net: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Network, str] | None:
        """What ``net`` overlaps (the used subnet or route, and its description), or None."""
        for nid, (used, name) in self._used.items():
            if used.overlaps(net):
                return used, f'network "{name or nid}" ({used})'
        for r in self._routes:
            if r.overlaps(net):
                return r, f"host route {r}"
        return None

    def check_free(self, net: ipaddress.IPv4Network) -> None:
        """Raise :class:`SubnetOverlap` naming the network or host route ``net`` overlaps."""
        hit = self._overlap(net)
        if hit is not None:
            raise SubnetOverlap(str(net), hit[1])

    def next_free(self) -> ipaddress.IPv4Network:
        """The first ``/subnet_size`` of the pools (pool order, then lowest address) that overlaps
        no used subnet and no host route. Raises :class:`PoolExhausted`. Does not reserve it."""
        size = self.pools.subnet_size
        block = 1 << (32 - size)
        for pool in self.pools.networks:
            addr = int(pool.network_address)
            end = int(pool.broadcast_address)
            while addr + block - 1 <= end:
                cand = ipaddress.IPv4Network((addr, size))
                hit = self._overlap(cand)
                if hit is None:
                    return cand
                # jump past what it overlaps, to the next aligned candidate
                after = int(hit[0].broadcast_address) + 1
                addr = max(addr + block, (after + block - 1) // block * block)
        raise PoolExhausted(str(self.pools), size)

    def reserve(self, network_id: str, net: ipaddress.IPv4Network, name: str = "") -> None:
        """Record that ``network_id`` holds ``net`` (no overlap check: rebuilding trusts the store)."""
        self._used[network_id] = (net, name)

    def release(self, network_id: str) -> None:
        """Forget ``network_id``'s subnet; unknown IDs do nothing."""
        self._used.pop(network_id, None)

    def subnet_of(self, network_id: str) -> ipaddress.IPv4Network | None:
        """The subnet ``network_id`` holds, or None."""
        got = self._used.get(network_id)
        return got[0] if got else None
