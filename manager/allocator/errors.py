"""Errors of the network allocator, each carrying a Docker-style message.

The control API maps them to HTTP statuses (:func:`manager.controlapi.networks.allocator_error`):
:class:`InvalidArgument` and its subclasses -> 400, :class:`NetworkNotFound` -> 400 (a service
naming an unknown network is bad input), :class:`PortConflict` -> 409, the exhausted pools, VNIs,
addresses and ports -> 400 FailedPrecondition. The
allocator loop (:mod:`manager.allocator.loop`) leaves a task it cannot give addresses to in state
``new`` with the exception's text as its status message (retried when tasks go away), as
swarmkit's allocator leaves a task unallocated with "failed to allocate network IP for task ...".
"""

from __future__ import annotations

__all__ = [
    "AddressesExhausted", "AllocatorError", "InvalidArgument", "NetworkNotFound", "PoolExhausted",
    "PortConflict", "PortsExhausted", "SubnetOverlap", "VNIExhausted",
]


class AllocatorError(Exception):
    """Base class: an allocation cannot be made; ``str(e)`` is the message for the user."""


class InvalidArgument(AllocatorError, ValueError):
    """Bad user input (malformed subnet, gateway outside the subnet, bad port ...): HTTP 400."""


class SubnetOverlap(InvalidArgument):
    """A requested subnet overlaps another network's subnet or a host route.

    ``other`` names what it overlaps (``network "name" (10.0.0.0/24)`` or ``host route 10.0.0.0/16``)."""

    def __init__(self, subnet: str, other: str) -> None:
        self.subnet, self.other = subnet, other
        super().__init__(f"invalid pool request: Pool overlaps with other one on this address space: "
                         f"subnet {subnet} overlaps with {other}")


class NetworkNotFound(AllocatorError, LookupError):
    """A service or task names a network the allocator does not know (or that has no allocation)."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"network {ref} not found")


class AddressesExhausted(AllocatorError):
    """No free address is left in a network: tasks stay Pending with this message."""

    def __init__(self, network: str, subnet: str) -> None:
        self.network, self.subnet = network, subnet
        super().__init__(f"network {network} is out of addresses: no available IPv4 addresses in "
                         f"{subnet} (use a bigger --subnet or fewer replicas)")


class PoolExhausted(AllocatorError):
    """No subnet of the configured size is free in any default address pool (libnetwork's text)."""

    def __init__(self, pools: str, size: int) -> None:
        super().__init__(f"could not find an available, non-overlapping IPv4 address pool among the "
                         f"defaults to assign to the network ({pools} in /{size} subnets)")


class VNIExhausted(AllocatorError):
    """Every VXLAN ID from 4096 to 2^24-1 is in use."""


class PortConflict(AllocatorError):
    """A published (ingress) port is held by another service: HTTP 409.

    ``port``, ``protocol``, ``service_id``, ``service_name`` say which port and who holds it."""

    def __init__(self, port: int, protocol: str, service_id: str, service_name: str) -> None:
        self.port, self.protocol = port, protocol
        self.service_id, self.service_name = service_id, service_name
        super().__init__(f"port '{port}/{protocol}' is already in use by service '{service_name}' "
                         f"({service_id}) as an ingress port")


class PortsExhausted(AllocatorError):
    """Every port of the dynamic range 30000-32767 is taken for this protocol."""
