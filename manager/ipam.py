"""IPAM for the per-node local bridge networks (pure, no I/O).

A node's bridge network is node-local, like Docker's ``docker_gwbridge``/``docker0``: its
addresses are used only on that node (the container's ``eth0`` and default route, masqueraded
when leaving the node; host-mode published ports and the routing mesh's delivery to the tasks of
*this* node). They are never routed to another node, so two nodes may use the same subnet (Docker
gives every node the same ``docker_gwbridge`` subnet). The number of nodes is therefore not
capped by the pool.

Each node gets a bridge subnet ``10.200.K.0/24`` (K = 1, 2, …; K = 0 is never used) with the
gateway at ``.1``. While the pool has a subnet no node uses, a new node gets the lowest such K
(distinct subnets are easier for people to read in a small cluster); once every subnet is used, a
new node shares the subnet used by the fewest nodes (lowest K among those): with the default pool
(255 subnets) 1,000 nodes share each subnet 3 or 4 times.

Task addresses are kept per **node**, not per subnet: two nodes sharing a subnet allocate
independently (each up to 253 addresses on a /24), and the address APIs take the node with the
address. Addresses skip the network (.0), gateway (.1) and broadcast (.255) addresses. Allocation
is serial (the next free address after the last one handed out, wrapping), as libnetwork's
default IPAM does, so a released address is not reused at once.

State is rebuilt from the store on start with :meth:`BridgeIPAM.reserve_node` (a subnet already
used by other nodes may be reserved again) and :meth:`BridgeIPAM.reserve`. Errors:
:class:`IPAMError` (a node's subnet full, address outside the node's subnet, bad input).
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass, field

__all__ = ["BRIDGE_POOL", "BridgeIPAM", "IPAMError", "NodeSubnet"]


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
    """One node's addresses on its subnet ``net``."""

    net: ipaddress.IPv4Network
    used: set[int] = field(default_factory=set)  # host offsets in use (2..size-2)
    cursor: int = 1  # last offset handed out


BRIDGE_POOL = "10.200.0.0/16"
"""Where the nodes' local bridge subnets come from (no overlay subnet may overlap it)."""


class BridgeIPAM:
    """Allocator of node subnets inside ``pool`` (default :data:`BRIDGE_POOL`, a ``/prefix``
    (default /24) per node, shared by several nodes once every subnet is used) and of each
    node's task addresses on its subnet.

    Raises :class:`IPAMError` for a bad ``pool`` or a ``prefix`` not longer than the pool's
    or longer than /30."""

    def __init__(self, pool: str = BRIDGE_POOL, prefix: int = 24) -> None:
        try:
            self.pool = ipaddress.IPv4Network(pool)
        except ValueError as e:
            raise IPAMError(f"bad IPAM pool {pool!r}: {e}") from e
        if not self.pool.prefixlen < prefix <= 30:
            raise IPAMError(f"node subnet prefix /{prefix} must be longer than the pool's /{self.pool.prefixlen} and at most /30")
        self.prefix = prefix
        self._count = 1 << (prefix - self.pool.prefixlen)  # subnets in the pool; K = 1 .. count-1 used
        self._size = 1 << (32 - prefix)  # addresses per subnet
        self._by_node: dict[str, int] = {}  # node ID -> K
        self._users: dict[int, int] = {}  # K -> how many nodes use it (absent: none)
        self._pools: dict[str, _Pool] = {}  # node ID -> its addresses
        # (users, K) candidates for the next node, lowest first; an entry is current only when
        # its users equals _users.get(K, 0) (stale ones are dropped when they come up)
        self._heap: list[tuple[int, int]] = [(0, k) for k in range(1, self._count)]

    # -- node subnets ---------------------------------------------------------------------

    def _net(self, k: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.pool.network_address) + k * self._size, self.prefix))

    def _subnet(self, k: int) -> NodeSubnet:
        net = self._net(k)
        return NodeSubnet(str(net), str(net.network_address + 1))

    def _push(self, users: int, k: int) -> None:
        heapq.heappush(self._heap, (users, k))
        if len(self._heap) > 2 * self._count + 64:  # drop the stale entries churn left behind
            self._heap = [(self._users.get(i, 0), i) for i in range(1, self._count)]
            heapq.heapify(self._heap)

    def _use(self, node_id: str, k: int) -> None:
        n = self._users.get(k, 0) + 1
        self._users[k] = n
        self._by_node[node_id] = k
        self._push(n, k)

    def node_subnet(self, node_id: str) -> NodeSubnet | None:
        """The subnet assigned to ``node_id``, or None."""
        k = self._by_node.get(node_id)
        return self._subnet(k) if k is not None else None

    def users(self, subnet: str) -> int:
        """How many nodes use ``subnet`` (``"10.200.K.0/24"``; 0 for one no node uses or that is
        not a subnet of the pool)."""
        try:
            k = self._index(subnet)
        except IPAMError:
            return 0
        return self._users.get(k, 0)

    def assign_node(self, node_id: str) -> NodeSubnet:
        """Return ``node_id``'s subnet, assigning one if it has none: the lowest K no node uses,
        or, when every subnet is used, the lowest K among those used by the fewest nodes. Never
        fails for lack of subnets (nodes share them; their addresses never leave the node)."""
        k = self._by_node.get(node_id)
        if k is None:
            while True:
                users, k = self._heap[0]
                if users == self._users.get(k, 0):
                    break
                heapq.heappop(self._heap)  # stale
            heapq.heapreplace(self._heap, (users + 1, k))
            self._users[k] = users + 1
            self._by_node[node_id] = k
            self._pools[node_id] = _Pool(self._net(k))
        return self._subnet(k)

    def _index(self, subnet: str) -> int:
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise IPAMError(f"bad subnet {subnet!r}: {e}") from e
        if net.prefixlen != self.prefix or not net.subnet_of(self.pool):
            raise IPAMError(f"subnet {subnet} is not a /{self.prefix} of {self.pool}")
        k = (int(net.network_address) - int(self.pool.network_address)) // self._size
        if k == 0:
            raise IPAMError(f"subnet {subnet} is the pool's first /{self.prefix}, which is not used for nodes")
        return k

    def reserve_node(self, node_id: str, subnet: str) -> None:
        """Record that ``node_id`` already uses ``subnet`` (rebuilding from the store); other
        nodes may use it too. Raises :class:`IPAMError` if the subnet is not one of the pool's
        node subnets or the node already has another subnet."""
        k = self._index(subnet)
        old = self._by_node.get(node_id)
        if old is not None:
            if old != k:
                raise IPAMError(f"node {node_id} already has subnet {self._net(old)}")
            return
        self._use(node_id, k)
        self._pools[node_id] = _Pool(self._net(k))

    def release_node(self, node_id: str) -> None:
        """Forget ``node_id``'s subnet and free its addresses (the node was removed); the other
        nodes sharing the subnet keep theirs. Unknown nodes: nothing happens."""
        k = self._by_node.pop(node_id, None)
        if k is None:
            return
        del self._pools[node_id]
        n = self._users[k] - 1
        if n:
            self._users[k] = n
        else:
            del self._users[k]
        self._push(n, k)

    # -- addresses ------------------------------------------------------------------------

    def _pool_of(self, node_id: str) -> _Pool:
        p = self._pools.get(node_id)
        if p is None:
            raise IPAMError(f"node {node_id} has no bridge subnet assigned")
        return p

    def allocate(self, node_id: str) -> str:
        """Allocate an address on ``node_id``'s subnet; return it as ``"10.200.K.X/24"``.
        Raises :class:`IPAMError` if the node has no subnet or its addresses are all in use
        (other nodes sharing the subnet do not count)."""
        p = self._pool_of(node_id)
        first, last = 2, self._size - 2  # skip network, gateway, broadcast
        span = last - first + 1
        for step in range(span):
            off = first + (p.cursor - first + 1 + step) % span
            if off not in p.used:
                p.used.add(off)
                p.cursor = off
                return f"{p.net.network_address + off}/{p.net.prefixlen}"
        raise IPAMError(f"no free address left in {p.net} on node {node_id}")

    @staticmethod
    def _offset(p: _Pool, address: str) -> int:
        try:
            iface = ipaddress.IPv4Interface(address)
        except ValueError as e:
            raise IPAMError(f"bad address {address!r}: {e}") from e
        if iface.ip not in p.net:
            raise IPAMError(f"address {address} is not in the node's bridge subnet {p.net}")
        return int(iface.ip) - int(p.net.network_address)

    def reserve(self, node_id: str, address: str) -> None:
        """Mark ``address`` (``a.b.c.d/nn`` or ``a.b.c.d``) as in use on ``node_id`` (rebuilding
        from the store). Raises :class:`IPAMError` if the node has no subnet, the address is
        outside it, or it is not a host address."""
        p = self._pool_of(node_id)
        off = self._offset(p, address)
        if not 2 <= off <= self._size - 2:
            raise IPAMError(f"address {address} is the network, gateway or broadcast address of {p.net}")
        p.used.add(off)

    def release(self, node_id: str, address: str) -> None:
        """Free ``address`` on ``node_id``; an address that is not allocated there, a bad one or
        an unknown node: nothing happens (other nodes sharing the subnet are never touched)."""
        p = self._pools.get(node_id)
        if p is None:
            return
        try:
            off = self._offset(p, address)
        except IPAMError:
            return
        p.used.discard(off)

    def in_use(self, node_id: str) -> int:
        """How many addresses are allocated on ``node_id``'s subnet (by this node only).
        Raises :class:`IPAMError` if the node has no subnet."""
        return len(self._pool_of(node_id).used)
