"""Overlay address rules shared by the control plane (the dispatcher's peer lists) and the node's
data plane (:mod:`overlaynet.driver`), so both compute a container's MAC the same way.

- :func:`mac_from_ip`: ``02:42`` + the four IPv4 bytes, as libnetwork's ``GenerateMACFromIP``
  (a locally administered unicast MAC), so remote MACs are known without ARP across hosts.
- :func:`ip_of`: the address of ``"a.b.c.d/len"`` without its prefix length.

Standard library only.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ip_of", "mac_from_ip"]


def mac_from_ip(ip: str) -> str:
    """The MAC of the container with IPv4 address ``ip``: ``02:42:`` + its 4 bytes in hex, lowercase.

    ``"10.55.0.2"`` → ``"02:42:0a:37:00:02"`` (libnetwork ``netutils.GenerateMACFromIP``).
    Raises ``ValueError`` for anything but an IPv4 address (a ``/prefix`` is accepted and ignored).
    """
    try:
        addr = ipaddress.ip_interface(ip).ip
    except ValueError as e:
        raise ValueError(f"bad IP address {ip!r}: {e}") from e
    if addr.version != 4:
        raise ValueError(f"only IPv4 overlay addresses are supported, got {ip!r}")
    return "02:42:" + ":".join(f"{b:02x}" for b in addr.packed)


def ip_of(address: str) -> str:
    """``"10.0.1.5/24"`` → ``"10.0.1.5"`` (an address without a prefix is returned as it is,
    normalised). Raises ``ValueError`` for anything but an IP address."""
    return str(ipaddress.ip_interface(address).ip)
