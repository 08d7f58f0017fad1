"""The node's data-plane driver interface (issue 9) and its plain configuration types.

A *driver* gives a network a data plane on this node and plugs containers into it:
``ensure_network`` → ``attach`` (per container) → ``set_peers`` (as the control plane says) →
``detach`` → ``remove_network``; ``cleanup_stale`` at start removes what a crashed daemon left.
:class:`overlaynet.vxlan.VxlanDriver` is the VXLAN overlay driver.  The local bridge
(``overlaynet.bridge.LocalBridge``) is not behind this interface yet: its ``attach`` *creates* the
container's network namespace and names the interface ``eth0`` with a default route, while
:meth:`NetworkDriver.attach` plugs a veth into a namespace that already exists; an adapter needs
``LocalBridge`` split into "make the namespace" and "plug a veth", which changes its behaviour, so
it is left for the wiring step.

The pure rules live here too, so they are unit-tested without root:

- :func:`overlay_mtu`: the underlay MTU minus :data:`VXLAN_OVERHEAD` (50 bytes: inner Ethernet 14 +
  outer IPv4 20 + UDP 8 + VXLAN 8, RFC 7348 §5), unless the network sets :data:`MTU_OPTION`.
  Docker subtracts 50 from 1500 whatever the underlay is (libnetwork ``drivers/overlay``; the bug
  of libnetwork#2661, docker/for-linux#594); Shoal looks at the underlay.
- :func:`mac_from_ip`: ``02:42`` + the four IPv4 bytes, as libnetwork's ``GenerateMACFromIP``
  (a locally administered unicast MAC), so remote MACs are known without ARP across hosts.
- :func:`parse_options`: a network's driver options; ``encrypted`` is refused
  (:class:`EncryptionUnsupported`) because this kernel has neither ESP (xfrm) nor WireGuard.

This module imports only the standard library and :mod:`shoal.base.netaddr` (``overlaynet`` knows no
cluster, docs/architecture.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shoal.base.netaddr import MIN_MTU, MTU_OPTION, VXLAN_OVERHEAD, parse_mtu_option
from shoal.base.netaddr import mac_from_ip as _base_mac_from_ip

__all__ = [
    "DEFAULT_DATA_PATH_PORT", "ENCRYPTED_OPTION", "MTU_OPTION", "MAX_VNI", "MIN_MTU", "VXLAN_OVERHEAD",
    "Attachment", "DriverError", "EncryptionUnsupported", "EndpointConfig", "NetworkConfig",
    "NetworkDriver", "NetworkOptions", "Peer", "PeerDelta", "VniInUse", "mac_from_ip", "overlay_mtu",
    "parse_options", "peer_for",
]

DEFAULT_DATA_PATH_PORT = 4789
"""The IANA VXLAN port (RFC 7348), Docker's default ``--data-path-port``."""
ENCRYPTED_OPTION = "encrypted"
"""The driver option asking for IPsec between nodes (``--opt encrypted``); refused here."""
MAX_VNI = (1 << 24) - 1

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class DriverError(Exception):
    """A driver operation failed or was refused; the message says what and what to do."""


class EncryptionUnsupported(DriverError):
    """``--opt encrypted`` was asked for and this kernel cannot encrypt the data path."""


class VniInUse(DriverError):
    """``ensure_network`` could not make the network's VXLAN device: the kernel already has one
    with ``vni`` on UDP port ``port`` (EEXIST), e.g. a network of an earlier swarm whose data plane
    is still up. ``network_id``: the network being set up. :meth:`NetworkDriver.cleanup_stale`
    with ``vni`` frees the VNI when it belongs to a network no longer known."""

    def __init__(self, message: str, network_id: str, vni: int, port: int) -> None:
        super().__init__(message)
        self.network_id = network_id
        self.vni = vni
        self.port = port


@dataclass(frozen=True)
class NetworkOptions:
    """The driver options Shoal acts on. ``mtu``: the :data:`MTU_OPTION` value (bytes) or None."""

    mtu: int | None = None


def parse_options(options: Mapping[str, str] | None) -> NetworkOptions:
    """Read a network's driver options (``{"com.docker.network.driver.mtu": "1400", ...}``).

    ``encrypted`` (any value, Docker enables it by presence) raises :class:`EncryptionUnsupported`.
    The MTU must be a decimal integer in [68, 65485] (an IPv4 MTU that still fits a VXLAN frame
    in an IP packet), else :class:`DriverError`. Other options are ignored, as Docker's overlay
    driver ignores the ones it does not know (e.g. the VNI list, used by the allocator).
    """
    opts = dict(options or {})
    if ENCRYPTED_OPTION in opts:
        raise EncryptionUnsupported(
            "overlay encryption (--opt encrypted) is not supported: this kernel has no ESP (xfrm) "
            "and no WireGuard; create the network without --opt encrypted and protect the data path "
            "port (UDP 4789 by default) at the underlay instead")
    try:
        mtu = parse_mtu_option(opts.get(MTU_OPTION))
    except ValueError as e:
        raise DriverError(str(e)) from e
    return NetworkOptions(mtu=mtu)


def overlay_mtu(underlay_mtu: int, mtu_option: int | None = None) -> int:
    """The MTU of every overlay interface (VXLAN device, bridge, both veth ends), in bytes.

    ``mtu_option`` (the network's :data:`MTU_OPTION`, already parsed) wins when set; otherwise
    ``underlay_mtu - 50``: 1500 → 1450, 1400 → 1350. Raises :class:`DriverError` when the underlay
    is too small to carry any overlay (below 68 + 50).
    """
    if mtu_option is not None:
        return mtu_option
    mtu = underlay_mtu - VXLAN_OVERHEAD
    if mtu < MIN_MTU:
        raise DriverError(f"the underlay MTU {underlay_mtu} is too small for VXLAN (needs at least "
                          f"{MIN_MTU + VXLAN_OVERHEAD})")
    return mtu


def mac_from_ip(ip: str) -> str:
    """The MAC of the container with IPv4 address ``ip``: ``02:42:`` + its 4 bytes in hex, lowercase.

    ``"10.55.0.2"`` → ``"02:42:0a:37:00:02"`` (libnetwork ``netutils.GenerateMACFromIP``). The rule
    is :func:`shoal.base.netaddr.mac_from_ip`, shared with the manager (its peer lists); this
    wrapper raises :class:`DriverError` instead of ``ValueError`` for anything but an IPv4 address
    (a ``/prefix`` is accepted and ignored).
    """
    try:
        return _base_mac_from_ip(ip)
    except ValueError as e:
        raise DriverError(str(e)) from e


@dataclass(frozen=True, order=True)
class Peer:
    """A remote endpoint on an overlay network: its overlay ``ip`` (``"10.55.0.3"``, no prefix),
    its ``mac`` (lowercase ``aa:bb:..``; :func:`mac_from_ip` of the IP) and the ``vtep``, the
    underlay (data path) address of the node it runs on. Validated on creation (:class:`DriverError`)."""

    ip: str
    mac: str
    vtep: str

    def __post_init__(self) -> None:
        for what, value in (("peer IP", self.ip), ("peer VTEP", self.vtep)):
            try:
                a = ipaddress.ip_address(value)
            except ValueError as e:
                raise DriverError(f"bad {what} {value!r}: {e}") from e
            if a.version != 4:
                raise DriverError(f"bad {what} {value!r}: only IPv4 is supported")
        mac = self.mac.lower()
        if not _MAC_RE.match(mac):
            raise DriverError(f"bad peer MAC {self.mac!r}: expected six hex bytes like 02:42:0a:00:00:02")
        object.__setattr__(self, "mac", mac)


def peer_for(ip: str, vtep: str) -> Peer:
    """The :class:`Peer` of a remote task with overlay address ``ip`` (prefix ignored) on the node
    whose data path address is ``vtep``; the MAC is :func:`mac_from_ip`."""
    mac = mac_from_ip(ip)  # validates ip first
    return Peer(str(ipaddress.ip_interface(ip).ip), mac, vtep)


@dataclass(frozen=True)
class PeerDelta:
    """What :meth:`NetworkDriver.set_peers` changed: the peers ``added`` and ``removed`` (sorted)."""

    added: tuple[Peer, ...] = ()
    removed: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class NetworkConfig:
    """One network's data plane on this node.

    ``network_id``: the network's ID (≥ 12 characters of ``[A-Za-z0-9_.-]``; its first 12 name the
    namespace); ``subnet`` (``"10.55.0.0/24"``) and ``gateway`` (``"10.55.0.1"``, held by the
    network's bridge): IPv4; ``vni``: the VXLAN ID, 1..2^24-1 (Swarm allocates from 4096);
    ``data_path_addr``: this node's underlay IPv4 address (VXLAN source, ``--data-path-addr``);
    ``data_path_port``: the UDP port of VXLAN (``--data-path-port``, default 4789);
    ``options``: the network's driver options (see :func:`parse_options`).
    """

    network_id: str
    subnet: str
    gateway: str
    vni: int
    data_path_addr: str
    data_path_port: int = DEFAULT_DATA_PATH_PORT
    options: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Address, NetworkOptions]:
        """Check every field; return ``(subnet, gateway, options)`` parsed. Raises
        :class:`DriverError` (or :class:`EncryptionUnsupported`) naming the bad field."""
        check_id(self.network_id, "network ID")
        opts = parse_options(self.options)
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
            gw = ipaddress.ip_address(self.gateway)
            ipaddress.IPv4Address(self.data_path_addr)
        except ValueError as e:
            raise DriverError(f"network {self.network_id[:12]}: bad subnet {self.subnet!r}, gateway "
                              f"{self.gateway!r} or data path address {self.data_path_addr!r}: {e}") from e
        if not isinstance(net, ipaddress.IPv4Network) or not isinstance(gw, ipaddress.IPv4Address):
            raise DriverError(f"network {self.network_id[:12]}: only IPv4 subnets are supported")
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise DriverError(f"network {self.network_id[:12]}: gateway {gw} is not a host address of {net}")
        if not 1 <= self.vni <= MAX_VNI:
            raise DriverError(f"network {self.network_id[:12]}: VNI {self.vni} out of range 1..{MAX_VNI}")
        if not 1 <= self.data_path_port <= 65535:
            raise DriverError(f"network {self.network_id[:12]}: bad data path port {self.data_path_port}")
        return net, gw, opts


@dataclass(frozen=True)
class EndpointConfig:
    """A container's interface on a network.

    ``network_id``: the network (already ensured); ``endpoint_id``: what the endpoint is known by
    on this node, e.g. the task ID (≥ 12 characters of ``[A-Za-z0-9_.-]``, the first 10 name the
    veth end inside the network's namespace, so they must differ between endpoints of one network);
    ``netns_path``: the container's network namespace file (it must exist); ``address``: the
    container's IPv4 address with prefix, ``"10.55.0.2/24"``; ``ifname``: the interface's name
    inside the container (``eth0``; another name when the container already has an ``eth0``).
    """

    network_id: str
    endpoint_id: str
    netns_path: str
    address: str
    ifname: str = "eth0"


@dataclass(frozen=True)
class Attachment:
    """What :meth:`NetworkDriver.attach` made: the interface ``ifname`` in the namespace
    ``netns_path`` with ``address`` (``"10.55.0.2/24"``), ``mac`` and ``mtu`` (bytes)."""

    network_id: str
    endpoint_id: str
    netns_path: str
    ifname: str
    address: str
    mac: str
    mtu: int


_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{12,}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def check_id(value: str, what: str) -> None:
    """Raise :class:`DriverError` unless ``value`` is ≥ 12 characters of ``[A-Za-z0-9_.-]``."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise DriverError(f"bad {what} {value!r}: need at least 12 characters of letters, digits, '_', '.', '-'")


def check_ifname(value: str) -> None:
    """Raise :class:`DriverError` unless ``value`` is a valid interface name (1-15 characters)."""
    if not isinstance(value, str) or not _IFNAME_RE.match(value):
        raise DriverError(f"bad interface name {value!r}: use 1-15 characters of letters, digits, '_', '.', '-'")


@runtime_checkable
class NetworkDriver(Protocol):
    """A network data plane on this node. Every method is synchronous (netlink, milliseconds),
    idempotent and thread-safe; asyncio callers run them in a thread (``asyncio.to_thread``).
    Errors: :class:`DriverError` (bad input, a missing network, a refused option), ``OSError`` /
    netlink errors from the kernel; a failed call leaves nothing half-made behind."""

    def ensure_network(self, net: NetworkConfig) -> None:
        """Make sure ``net``'s data plane exists on this node (create it, or keep the one there)."""
        ...

    def attach(self, endpoint: EndpointConfig) -> Attachment:
        """Plug ``endpoint``'s container into its (ensured) network; replaces a leftover of the same ID."""
        ...

    def detach(self, endpoint: EndpointConfig) -> None:
        """Unplug ``endpoint`` (only ``network_id``/``endpoint_id`` are used); a missing one is fine."""
        ...

    def remove_network(self, network_id: str) -> None:
        """Remove the network's data plane from this node, endpoints and all; a missing one is fine."""
        ...

    def set_peers(self, network_id: str, peers: Iterable[Peer]) -> PeerDelta:
        """Make ``peers`` the network's complete set of remote endpoints (by delta); return the change."""
        ...

    def cleanup_stale(self, known_network_ids: Iterable[str], vni: int | None = None) -> list[str]:
        """Remove data planes of networks not in ``known_network_ids`` (with ``vni``: only those
        holding that VNI); return what was removed."""
        ...
