"""The addresses of ``swarm init`` / ``swarm join``: where the cluster port listens and which
address other nodes are told to use, chosen by Docker's rules (MOBY: daemon/cluster/
listen_addr.go, listen_addr_linux.go; learned from, not copied):

- ``ListenAddr`` is ``host[:port]`` where ``host`` is an IPv4 address or an interface name
  (``eth0:2377``); empty means ``0.0.0.0`` on the daemon's cluster port.
- ``AdvertiseAddr`` is ``host[:port]`` with ``host`` an IPv4 address or an interface name; a
  missing port is the *listen* port. Empty means: the listen address when it is a specific
  one, else the system's one address: the one global unicast IPv4 address on an interface that
  is up, looking at hardware devices first (no link kind: not a bridge, veth, dummy, vxlan …)
  and at every other interface only when no device has one (Docker falls back the same way for
  a daemon that runs inside a container). Several candidates are an error listing them; so is
  none.

The interfaces are read over netlink with pyroute2. pyroute2's sockets cannot run on the
daemon's uvloop loop (uvloop opens no ``AF_NETLINK`` endpoint, and the synchronous ``IPRoute``
would try to run the loop that is already running), so :func:`system_interfaces` runs
``IPRoute`` on a private standard-library selector loop and :func:`local_interfaces` calls it
in a worker thread.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2 import IPRoute

__all__ = ["AddrError", "Interface", "system_interfaces", "local_interfaces", "split_host_port",
           "resolve_listen_addr", "resolve_advertise_addr", "system_addr", "check_listen_free"]

_IFF_UP = 0x1


class AddrError(ValueError):
    """An address cannot be used or chosen; ``str(e)`` says why and what to pass instead."""


@dataclass
class Interface:
    """One network interface of this host: ``name``, link ``kind`` ("" for a hardware device,
    else ``bridge``, ``veth``, ``dummy`` …), whether it is ``up``, and its IPv4 ``addrs``
    (``ipaddress.IPv4Interface``, address with prefix)."""

    name: str
    kind: str = ""
    up: bool = True
    addrs: list[ipaddress.IPv4Interface] = field(default_factory=list)


def system_interfaces() -> list[Interface]:
    """This network namespace's interfaces with their IPv4 addresses (netlink, via pyroute2).

    Blocking; safe in any thread, also one whose loop is uvloop: it never touches a running
    event loop (pyroute2 gets a private selector loop, closed afterwards). Async code calls
    :func:`local_interfaces`. Raises ``OSError`` if netlink cannot be read."""
    loop = asyncio.SelectorEventLoop()
    try:
        with IPRoute(use_event_loop=loop) as ipr:
            by_index: dict[int, Interface] = {}
            for link in ipr.get_links():
                kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
                by_index[int(link["index"])] = Interface(
                    name=str(link.get_attr("IFLA_IFNAME")), kind=str(kind), up=bool(link["flags"] & _IFF_UP))
            for a in ipr.get_addr(family=socket.AF_INET):
                iface = by_index.get(int(a["index"]))
                ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                if iface is not None and ip:
                    iface.addrs.append(ipaddress.IPv4Interface(f"{ip}/{a['prefixlen']}"))
            return list(by_index.values())
    finally:
        loop.close()


async def local_interfaces() -> list[Interface]:
    """:func:`system_interfaces` from async code (in a worker thread; works under uvloop)."""
    return await asyncio.to_thread(system_interfaces)


def split_host_port(spec: str, default_port: int, what: str) -> tuple[str, int]:
    """``"host"`` / ``"host:port"`` → ``(host, port)``; ``what`` names the flag in errors.
    Raises :class:`AddrError` for an empty host, a bad port, or an IPv6 form."""
    s = spec.strip()
    if s.startswith("[") or s.count(":") > 1:
        raise AddrError(f"{what} {spec!r}: IPv6 addresses are not supported by shoal yet; use an IPv4 "
                        "address or an interface name")
    host, sep, port_s = s.partition(":")
    if not host:
        raise AddrError(f"{what} {spec!r} has no host: give an IPv4 address or an interface name "
                        "(with an optional port), e.g. 10.0.0.1:2377 or eth0")
    if not sep:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise AddrError(f"{what} {spec!r}: the port must be a number from 1 to 65535")
    return host, int(port_s)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _usable(ip: ipaddress.IPv4Address) -> bool:
    """Go's ``IsGlobalUnicast`` for IPv4: not loopback, link-local, multicast, unspecified or
    broadcast (private ranges are fine: most clusters use them)."""
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def _interface_addr(name: str, ifaces: Iterable[Interface], what: str) -> str | None:
    """The IPv4 address of interface ``name``; None if there is no such interface."""
    for iface in ifaces:
        if iface.name != name:
            continue
        addrs = [str(a.ip) for a in iface.addrs]
        if not addrs:
            raise AddrError(f"{what}: interface {name} has no IPv4 address")
        if len(addrs) > 1:
            raise AddrError(f"{what}: interface {name} has more than one IPv4 address ({' and '.join(addrs)}); "
                            "give one of them instead of the interface name")
        return addrs[0]
    return None


def _host_ip(host: str, ifaces: Iterable[Interface], what: str) -> str:
    if _is_ipv4(host):
        return host
    ip = _interface_addr(host, ifaces, what)
    if ip is None:
        raise AddrError(f"{what} {host!r} is neither an IPv4 address nor the name of a network interface "
                        "of this host")
    return ip


def resolve_listen_addr(spec: str, default_port: int, ifaces: Iterable[Interface]) -> tuple[str, int]:
    """``ListenAddr`` → ``(ipv4, port)``: empty is ``0.0.0.0:default_port``; an interface name
    is its address. Raises :class:`AddrError` for a bad form, an unknown interface, or an IP
    that is not an address of this host."""
    ifaces = list(ifaces)
    if not spec.strip():
        return "0.0.0.0", default_port
    host, port = split_host_port(spec, default_port, "--listen-addr")
    ip = _host_ip(host, ifaces, "--listen-addr")
    if ip != "0.0.0.0" and ip not in {str(a.ip) for i in ifaces for a in i.addrs}:
        raise AddrError(f"--listen-addr {spec!r}: {ip} is not an address of this host (use one of its "
                        "addresses, an interface name, or 0.0.0.0)")
    return ip, port


def system_addr(ifaces: Iterable[Interface], exclude: Iterable[str] = ()) -> str:
    """The system's one address to advertise (see the module doc; ``exclude``: interface names
    that are never candidates, e.g. Shoal's own bridge). Raises :class:`AddrError` listing the
    candidates when there are several, or saying there are none."""
    skip = set(exclude)
    live = [i for i in ifaces if i.up and i.name not in skip]

    def candidates(group: list[Interface]) -> list[tuple[str, str]]:
        out = []
        for iface in group:
            usable = [a for a in iface.addrs if _usable(a.ip)]
            # more addresses on one interface: fine if they are in the first one's subnet
            first = usable[0] if usable else None
            for a in usable:
                if first is not None and (a is first or a.ip not in first.network):
                    out.append((str(a.ip), iface.name))
        return out

    found = candidates([i for i in live if not i.kind]) or candidates(live)
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise AddrError("could not find this system's IP address to advertise (no interface that is up has a "
                        "global IPv4 address): specify one with --advertise-addr")
    listed = ", ".join(f"{ip} on {name}" for ip, name in found)
    raise AddrError("could not choose an IP address to advertise since this system has multiple addresses "
                    f"({listed}): specify one with --advertise-addr")


def resolve_advertise_addr(spec: str, listen_ip: str, listen_port: int, ifaces: Iterable[Interface],
                           exclude: Iterable[str] = ()) -> tuple[str, int]:
    """``AdvertiseAddr`` → ``(ipv4, port)`` by Docker's rules (module doc): a missing port is
    ``listen_port``; empty uses ``listen_ip`` when it is not ``0.0.0.0``, else
    :func:`system_addr`. Raises :class:`AddrError`."""
    ifaces = list(ifaces)
    if spec.strip():
        host, port = split_host_port(spec, listen_port, "--advertise-addr")
        ip = _host_ip(host, ifaces, "--advertise-addr")
        if ipaddress.IPv4Address(ip).is_unspecified:
            raise AddrError(f"--advertise-addr {spec!r}: 0.0.0.0 cannot be advertised; give an address other "
                            "nodes can reach")
        return ip, port
    if listen_ip != "0.0.0.0":
        return listen_ip, listen_port
    return system_addr(ifaces, exclude), listen_port


def check_listen_free(ip: str, port: int) -> None:
    """Raise :class:`AddrError` ("listen address … is already in use …") if a TCP listener
    could not bind ``ip:port`` now (bound as asyncio's server binds: ``SO_REUSEADDR``). Any
    other bind failure is an :class:`AddrError` naming the address and the system's reason.
    Nothing stays bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            raise AddrError(listen_error(ip, port, e)) from e


def listen_error(ip: str, port: int, e: OSError) -> str:
    """The message for a failure to listen on ``ip:port`` (used when the manager's bind fails)."""
    if e.errno == errno.EADDRINUSE:
        return (f"listen address {ip}:{port} is already in use: another process listens on port {port}; "
                "stop it or choose another address with --listen-addr")
    if e.errno == errno.EADDRNOTAVAIL:
        return f"listen address {ip}:{port} is not an address of this host: choose another with --listen-addr"
    return f"cannot listen on {ip}:{port}: {e.strerror or e}"
