"""Overlay address rules shared by the control plane (the dispatcher's peer lists) and the node's
data plane (:mod:`overlaynet.driver`), so both compute a container's MAC the same way.

- :func:`mac_from_ip`: ``02:42`` + the four IPv4 bytes, as libnetwork's ``GenerateMACFromIP``
  (a locally administered unicast MAC), so remote MACs are known without ARP across hosts.
- :func:`ip_of`: the address of ``"a.b.c.d/len"`` without its prefix length.
- :func:`parse_mtu_option`: a network's ``com.docker.network.driver.mtu`` option, checked the same
  way when the manager creates the network and when a node sets it up.

Standard library only.
"""

from __future__ import annotations

import ipaddress

__all__ = ["MAX_MTU", "MIN_MTU", "MTU_OPTION", "VXLAN_OVERHEAD", "ip_of", "mac_from_ip", "parse_mtu_option"]

MTU_OPTION = "com.docker.network.driver.mtu"
"""The driver option that sets an overlay's MTU (``docker network create --opt``)."""
VXLAN_OVERHEAD = 50
"""Bytes VXLAN adds over IPv4: inner Ethernet 14 + outer IPv4 20 + UDP 8 + VXLAN 8."""
MIN_MTU = 68
"""The smallest IPv4 MTU (RFC 791)."""
MAX_MTU = 65535 - VXLAN_OVERHEAD
"""The largest overlay MTU whose VXLAN frame still fits an IPv4 packet."""


def parse_mtu_option(raw: object) -> int | None:
    """The overlay MTU a network's :data:`MTU_OPTION` value asks for (bytes), or None when ``raw``
    is None. Raises ``ValueError`` naming the option unless it is a decimal integer in
    [:data:`MIN_MTU`, :data:`MAX_MTU`]."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text.isdigit():
        raise ValueError(f"invalid {MTU_OPTION} {raw!r}: expected an integer number of bytes")
    mtu = int(text)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"invalid {MTU_OPTION} {mtu}: must be between {MIN_MTU} and {MAX_MTU}")
    return mtu


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
