"""IPAM for the per-node local bridge networks (pure, no I/O).

Each node gets a bridge subnet ``10.200.K.0/24`` (K = 1, 2, … in the order nodes are
assigned, lowest free K first) with the gateway at ``.1``. Task addresses on a node are taken
from its subnet, skipping the network (.0), gateway (.1) and broadcast (.255) addresses.
Allocation is serial (the next free address after the last one handed out, wrapping), as
libnetwork's default IPAM does, so a released address is not reused at once.

State is rebuilt from the store on start with :meth:`BridgeIPAM.reserve_node` and
:meth:`BridgeIPAM.reserve`. Errors: :class:`IPAMError` (pool or subnet exhausted, address
outside any node subnet, bad input).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["BridgeIPAM", "IPAMError", "NodeSubnet"]


class IPAMError(Exception):
    """An allocation cannot be made or an address/subnet is not valid here; the message says why."""


@dataclass(frozen=True)
class NodeSubnet:
    """A node's bridge network: ``subnet`` ``10.200.K.0/24`` and ``gateway`` ``10.200.K.1``."""

    subnet: str
    gateway: str

    def as_dict(self) -> dict[str, str]:
        """The ``Node["ShoalBridge"]`` shape: ``{"Subnet", "Gateway"}``."""
        return {"Subnet": self.subnet, "Gateway": self.gateway}


@dataclass
class _Pool:
    net: ipaddress.IPv4Network
    used: set[int] = field(default_factory=set)  # host offsets in use (2..size-2)
    cursor: int = 1  # last offset handed out


BRIDGE_POOL = "10.200.0.0/16"
"""Where the nodes' local bridge subnets come from (no overlay subnet may overlap it)."""


class BridgeIPAM:
    """Allocator of node subnets inside ``pool`` (default :data:`BRIDGE_POOL`, /24 per node)."""

    def __init__(self, pool: str = BRIDGE_POOL, prefix: int = 24) -> None:
        try:
            self.pool = ipaddress.IPv4Network(pool)
        except ValueError as e:
            raise IPAMError(f"bad IPAM pool {pool!r}: {e}") from e
        if not self.pool.prefixlen < prefix <= 30:
            raise IPAMError(f"node subnet prefix /{prefix} must be longer than the pool's /{self.pool.prefixlen} and at most /30")
        self.prefix = prefix
        self._subnets = list(self.pool.subnets(new_prefix=prefix))
        self._by_node: dict[str, int] = {}  # node ID -> K (index into _subnets)
        self._owner: dict[int, str] = {}
        self._pools: dict[int, _Pool] = {}

    # -- node subnets ---------------------------------------------------------------------

    def _subnet(self, k: int) -> NodeSubnet:
        net = self._subnets[k]
        return NodeSubnet(str(net), str(net.network_address + 1))

    def node_subnet(self, node_id: str) -> NodeSubnet | None:
        """The subnet assigned to ``node_id``, or None."""
        k = self._by_node.get(node_id)
        return self._subnet(k) if k is not None else None

    def assign_node(self, node_id: str) -> NodeSubnet:
        """Return ``node_id``'s subnet, assigning the lowest free K >= 1 if it has none.
        Raises :class:`IPAMError` when every subnet of the pool is taken."""
        k = self._by_node.get(node_id)
        if k is None:
            k = next((i for i in range(1, len(self._subnets)) if i not in self._owner), None)
            if k is None:
                raise IPAMError(f"no free node subnet left in {self.pool} (/{self.prefix} each): remove down nodes")
            self._by_node[node_id] = k
            self._owner[k] = node_id
            self._pools[k] = _Pool(self._subnets[k])
        return self._subnet(k)

    def reserve_node(self, node_id: str, subnet: str) -> None:
        """Record that ``node_id`` already owns ``subnet`` (rebuilding from the store).
        Raises :class:`IPAMError` if the subnet is not one of the pool's or belongs to another node."""
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise IPAMError(f"bad subnet {subnet!r}: {e}") from e
        if net.prefixlen != self.prefix or not net.subnet_of(self.pool):
            raise IPAMError(f"subnet {subnet} is not a /{self.prefix} of {self.pool}")
        k = self._subnets.index(net)
        owner = self._owner.get(k)
        if owner is not None and owner != node_id:
            raise IPAMError(f"subnet {subnet} is already assigned to node {owner}")
        old = self._by_node.get(node_id)
        if old is not None and old != k:
            raise IPAMError(f"node {node_id} already has subnet {self._subnets[old]}")
        self._by_node[node_id] = k
        self._owner[k] = node_id
        self._pools.setdefault(k, _Pool(net))

    def release_node(self, node_id: str) -> None:
        """Free ``node_id``'s subnet and its addresses (the node was removed)."""
        k = self._by_node.pop(node_id, None)
        if k is not None:
            del self._owner[k]
            del self._pools[k]

    # -- addresses ------------------------------------------------------------------------

    def _pool_of(self, node_id: str) -> _Pool:
        k = self._by_node.get(node_id)
        if k is None:
            raise IPAMError(f"node {node_id} has no bridge subnet assigned")
        return self._pools[k]

    def allocate(self, node_id: str) -> str:
        """Allocate an address on ``node_id``'s subnet; return it as ``"10.200.K.X/24"``.
        Raises :class:`IPAMError` if the node has no subnet or the subnet is full."""
        p = self._pool_of(node_id)
        size = p.net.num_addresses
        first, last = 2, size - 2  # skip network, gateway, broadcast
        span = last - first + 1
        for step in range(span):
            off = first + (p.cursor - first + 1 + step) % span
            if off not in p.used:
                p.used.add(off)
                p.cursor = off
                return f"{p.net.network_address + off}/{p.net.prefixlen}"
        raise IPAMError(f"no free address left in {p.net} on node {node_id}")

    def _locate(self, address: str) -> tuple[_Pool, int]:
        try:
            iface = ipaddress.IPv4Interface(address)
        except ValueError as e:
            raise IPAMError(f"bad address {address!r}: {e}") from e
        for p in self._pools.values():
            if iface.ip in p.net:
                return p, int(iface.ip) - int(p.net.network_address)
        raise IPAMError(f"address {address} is not in any node's bridge subnet")

    def reserve(self, address: str) -> None:
        """Mark ``address`` (``a.b.c.d/nn`` or ``a.b.c.d``) as in use (rebuilding from the store).
        Raises :class:`IPAMError` if it is outside every assigned subnet or not a host address."""
        p, off = self._locate(address)
        if not 2 <= off <= p.net.num_addresses - 2:
            raise IPAMError(f"address {address} is the network, gateway or broadcast address of {p.net}")
        p.used.add(off)

    def release(self, address: str) -> None:
        """Free ``address``; releasing an address that is not allocated does nothing."""
        try:
            p, off = self._locate(address)
        except IPAMError:
            return
        p.used.discard(off)

    def in_use(self, node_id: str) -> int:
        """How many addresses are allocated on ``node_id``'s subnet."""
        return len(self._pool_of(node_id).used)
