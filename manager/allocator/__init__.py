"""The overlay network allocator (pure core; issue 9): subnets from the default address pools or the
user's, one VNI per network, task IPs and service VIPs, ingress published ports.

Rebuilt from stored objects (:meth:`Allocator.from_objects`), so nothing it hands out can duplicate
what a committed object holds after a failover or restart. See :mod:`manager.allocator.allocator`;
the leader loop that gives tasks their addresses is :mod:`manager.allocator.loop` (imported from
there, not re-exported here).
"""

from manager.allocator.allocator import Allocator, NetworkAllocation, network_attachment
from manager.allocator.errors import (
    AddressesExhausted,
    AllocatorError,
    InvalidArgument,
    NetworkNotFound,
    PoolExhausted,
    PortConflict,
    PortsExhausted,
    SubnetOverlap,
    VNIExhausted,
)
from manager.allocator.pools import AddressPools, parse_pools, validate_ipam_config

__all__ = [
    "AddressPools", "AddressesExhausted", "Allocator", "AllocatorError", "InvalidArgument", "NetworkAllocation",
    "NetworkNotFound", "PoolExhausted", "PortConflict", "PortsExhausted", "SubnetOverlap", "VNIExhausted",
    "network_attachment", "parse_pools", "validate_ipam_config",
]
