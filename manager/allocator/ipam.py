"""Addresses of one overlay network (pure): task IPs, service VIPs, node load-balancer IPs.

Follows libnetwork's default IPAM: the network (first) and broadcast (last) addresses are never
handed out, the gateway is reserved, ``--ip-range`` limits where addresses are taken from (the
gateway may lie outside it), and allocation is serial — the next free address after the last one
handed out, wrapping — so a released address is not reused at once. Addresses are written
``"a.b.c.d/len"`` (len = the subnet's prefix length), as in swarmkit's ``NetworkAttachment.Addresses``
and ``Endpoint.VirtualIPs[].Addr``.

Each address remembers its holder (an opaque string such as ``"task:<id>"``), so an object can
keep only an address it really holds and a stale object cannot free someone else's address.
"""

from __future__ import annotations

import ipaddress

from manager.allocator.errors import AddressesExhausted, InvalidArgument

__all__ = ["AddressSpace"]


class AddressSpace:
    """The address bitmap of network ``network_id`` (``name`` used in messages).

    ``subnet``: the network's CIDR; ``gateway``: reserved address inside it; ``ip_range``: the
    CIDR addresses are allocated from (None = the whole subnet)."""

    def __init__(self, network_id: str, name: str, subnet: ipaddress.IPv4Network,
                 gateway: ipaddress.IPv4Address, ip_range: ipaddress.IPv4Network | None = None) -> None:
        self.network_id, self.name = network_id, name
        self.subnet, self.gateway, self.ip_range = subnet, gateway, ip_range
        base = int(subnet.network_address)
        rng = ip_range or subnet
        # offsets (from the subnet's network address) that may be handed out: [first, last]
        self._first = max(int(rng.network_address) - base, 1)
        self._last = min(int(rng.broadcast_address) - base, subnet.num_addresses - 2)
        self._gw = int(gateway) - base
        self._used: dict[int, str] = {}  # offset -> holder
        self._cursor = self._first - 1

    @property
    def capacity(self) -> int:
        """How many addresses can be handed out in all (range minus network, broadcast, gateway)."""
        n = max(self._last - self._first + 1, 0)
        return n - (1 if self._first <= self._gw <= self._last else 0)

    @property
    def in_use(self) -> int:
        """How many addresses are allocated (the gateway not counted)."""
        return len(self._used)

    def _fmt(self, off: int) -> str:
        return f"{self.subnet.network_address + off}/{self.subnet.prefixlen}"

    def allocate(self, holder: str = "") -> str:
        """Take the next free address for ``holder``; return ``"a.b.c.d/len"``.
        Raises :class:`AddressesExhausted` ("network NAME is out of addresses ...") when none is left."""
        span = self._last - self._first + 1
        # among len(used) + 2 consecutive offsets at least one is neither used nor the gateway
        for step in range(max(min(span, len(self._used) + 2), 0)):
            off = self._first + (self._cursor - self._first + 1 + step) % span
            if off != self._gw and off not in self._used:
                self._used[off] = holder
                self._cursor = off
                return self._fmt(off)
        raise AddressesExhausted(self.name or self.network_id, str(self.subnet))

    def _offset(self, address: str) -> int:
        text = str(address)
        try:
            ip = ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
        except ValueError as e:
            raise InvalidArgument(f"invalid address {address!r}") from e
        if not isinstance(ip, ipaddress.IPv4Address) or ip not in self.subnet:
            raise InvalidArgument(f"address {address} is not in subnet {self.subnet} of network "
                                  f"{self.name or self.network_id}")
        return int(ip) - int(self.subnet.network_address)

    def reserve(self, address: str, holder: str = "") -> None:
        """Mark ``address`` (``a.b.c.d/len`` or ``a.b.c.d``) held by ``holder``, e.g. when rebuilding
        from the store; it may lie outside ``ip_range`` (it is still never handed out twice). Raises
        :class:`InvalidArgument` if it is outside the subnet, is its network, broadcast or gateway
        address, or is already held by another holder (the first holder keeps it)."""
        off = self._offset(address)
        if off in (0, self.subnet.num_addresses - 1, self._gw):
            raise InvalidArgument(f"address {address} is the network, broadcast or gateway address of "
                                  f"{self.subnet}")
        other = self._used.get(off)
        if other is not None and other != holder:
            raise InvalidArgument(f"address {address} on network {self.name or self.network_id} is already "
                                  f"held by {other or 'another object'}")
        self._used[off] = holder

    def holder(self, address: str) -> str | None:
        """Who holds ``address`` (``""`` if allocated without a holder), or None if it is free."""
        try:
            return self._used.get(self._offset(address))
        except InvalidArgument:
            return None

    def is_used(self, address: str) -> bool:
        """Whether ``address`` is allocated here."""
        return self.holder(address) is not None

    def release(self, address: str, holder: str | None = None) -> None:
        """Free ``address`` — only if ``holder`` holds it, when ``holder`` is given. An address that is
        not allocated (or not in the subnet) is ignored."""
        try:
            off = self._offset(address)
        except InvalidArgument:
            return
        if off in self._used and (holder is None or self._used[off] == holder):
            del self._used[off]
