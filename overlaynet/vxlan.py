"""The VXLAN overlay driver: one network namespace per overlay network on this node (issue 9).

Layout, after Docker's overlay driver (moby ``libnetwork/drivers/overlay``: ``ov_network.go``
builds the sandbox, ``peerdb.go``/``ov_utils.go`` program the peers), with the control plane, not
gossip or kernel learning, as the only source of peers::

    host namespace                     network namespace  <netns_dir>/sov-<network_id[:12]>
    ──────────────                     ─────────────────────────────────────────────────────
    <data path addr>:<port> UDP  ◄───  sovx-<vni hex>  (vxlan: id VNI, local = data path addr,
      (the vxlan socket stays here)      dstport, learning off, proxy on) ─┐
                                       sovb-<vni hex> (bridge, holds the gateway IP) ◄┘ ports:
    container namespace                sove-<endpoint_id[:10]> (veth) ◄──► <ifname> in the
      <ifname> 10.55.0.2/24, MAC 02:42:0a:37:00:02                          container

- The VXLAN device is created in the *host* namespace and then moved into the network's
  namespace, so its UDP socket is bound in the host's (the kernel opens it in the namespace the
  device was created in), where the underlay is; everything else lives in the network namespace.
- Learning is off; nothing floods: there is no all-zeros FDB entry and no multicast group.  Each
  remote endpoint is a permanent neighbour entry (IP → MAC) on the VXLAN device plus a permanent
  FDB entry (MAC → the remote node's data path address, ``bridge fdb append … self permanent``);
  with ``proxy`` on the VXLAN device answers the containers' ARP requests from those neighbour
  entries, so ARP never crosses the underlay.  Local endpoints need no entries (the bridge).
- The MTU of the VXLAN device, the bridge and both veth ends is the MTU of the host interface
  that holds the data path address minus 50, unless the network sets
  ``com.docker.network.driver.mtu`` (:func:`overlaynet.driver.overlay_mtu`).
- The namespace is removed when its last endpoint is detached (``remove_when_empty``).
- The namespace files live in ``netns_dir`` (not ``/run/netns``, as ``overlaynet.netns`` keeps
  them); ``cleanup_stale`` removes ``sov-*`` files of unknown networks (deleting their links
  first, so a VNI is free again at once) and ``sovx-*`` devices left in the host namespace by a
  crash between "create" and "move".

"The host" is the network namespace file ``host_netns`` when given (the tests run two hosts in
one process), else the namespace of the calling thread.  Every kernel call runs in a short-lived
thread that joined the right namespace (:mod:`overlaynet.netns`), so callers never change
namespace, and calls from an event loop's thread work (they block it for milliseconds).

Sources: ip-link(8) (vxlan: id, local, dstport, nolearning, proxy; bridge; veth), bridge(8)
(``fdb append … dst … self permanent``), ip-neighbour(8), RFC 7348 (VXLAN, 50 bytes overhead),
and the layout of moby's libnetwork overlay driver (read, not copied).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from overlaynet import netns
from overlaynet.driver import (
    Attachment,
    DriverError,
    EndpointConfig,
    NetworkConfig,
    Peer,
    PeerDelta,
    VniInUse,
    check_id,
    check_ifname,
    mac_from_ip,
    overlay_mtu,
)

__all__ = ["NETNS_PREFIX", "VxlanDriver"]

T = TypeVar("T")

NETNS_PREFIX = "sov-"
"""Namespace files of overlay networks: ``<netns_dir>/sov-<network_id[:12]>``."""
VXLAN_PREFIX = "sovx-"
BRIDGE_PREFIX = "sovb-"
VETH_PREFIX = "sove-"

_NUD_PERMANENT = ndmsg.states["permanent"]
_ENODEV = errno.ENODEV
_ENOENT = errno.ENOENT


def _ignore(e: NetlinkError, *codes: int) -> None:
    if e.code not in codes:
        raise e


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _delete_link(ipr: IPRoute, name: str) -> bool:
    idx = _lookup(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        _ignore(e, _ENODEV)
    return True


def _link_names(ipr: IPRoute) -> list[str]:
    return [link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()]


@dataclass
class _Net:
    """What the driver remembers of a network it ensured (lost on restart: everything it needs
    again is read back from the kernel)."""

    config: NetworkConfig
    mtu: int


class VxlanDriver:
    """The VXLAN overlay driver (:class:`overlaynet.driver.NetworkDriver`).

    ``netns_dir``: where the networks' namespace files go (e.g. ``<exec_root>/overlay``; not the
    local bridge's ``<exec_root>/netns``, whose cleanup removes every file there);
    ``host_netns``: the namespace file of "the host" (holds the data path address and the VXLAN
    sockets), None for the calling thread's namespace; ``remove_when_empty``: remove a network's
    namespace when its last endpoint is detached (the issue's rule; off for tests of a bare network).

    Thread-safe (one lock; every call takes milliseconds). Errors: :class:`DriverError` for bad
    input, a missing network or underlay; ``OSError``/``NetlinkError`` from the kernel.
    """

    def __init__(self, netns_dir: Path, host_netns: Path | str | None = None,
                 remove_when_empty: bool = True) -> None:
        self.netns_dir = Path(netns_dir)
        self.host_netns = Path(host_netns) if host_netns is not None else None
        self.remove_when_empty = remove_when_empty
        self._lock = threading.RLock()
        self._nets: dict[str, _Net] = {}

    # ------------------------------------------------------------------ names
    def netns_path(self, network_id: str) -> Path:
        """The namespace file of ``network_id``: ``<netns_dir>/sov-<network_id[:12]>``."""
        check_id(network_id, "network ID")
        return self.netns_dir / (NETNS_PREFIX + network_id[:12])

    @staticmethod
    def vxlan_name(vni: int) -> str:
        """The VXLAN device's name (in both namespaces): ``sovx-<vni as 6 hex digits>``."""
        return f"{VXLAN_PREFIX}{vni:06x}"

    @staticmethod
    def bridge_name(vni: int) -> str:
        """The bridge's name in the network namespace: ``sovb-<vni as 6 hex digits>``."""
        return f"{BRIDGE_PREFIX}{vni:06x}"

    @staticmethod
    def veth_name(endpoint_id: str) -> str:
        """The veth end in the network namespace: ``sove-<endpoint_id[:10]>``."""
        check_id(endpoint_id, "endpoint ID")
        return VETH_PREFIX + endpoint_id[:10]

    # ---------------------------------------------------------- namespaces
    def _in_host(self, fn: Callable[[], T]) -> T:
        if self.host_netns is None:
            return netns.run_in_thread(fn)
        return netns.run_in_netns(self.host_netns, fn)

    @staticmethod
    def _in(path: Path | str, fn: Callable[[IPRoute], T]) -> T:
        def body() -> T:
            with netns.iproute() as ipr:
                return fn(ipr)
        return netns.run_in_netns(path, body)

    def _host_ipr(self, fn: Callable[[IPRoute], T]) -> T:
        def body() -> T:
            with netns.iproute() as ipr:
                return fn(ipr)
        return self._in_host(body)

    def underlay_mtu(self, data_path_addr: str) -> int:
        """The MTU (bytes) of the host interface that holds ``data_path_addr``.

        Raises :class:`DriverError` when no interface in the host namespace has that address.
        """
        def find(ipr: IPRoute) -> int | None:
            for a in ipr.get_addr(family=socket.AF_INET):
                if a.get_attr("IFA_ADDRESS") == data_path_addr or a.get_attr("IFA_LOCAL") == data_path_addr:
                    (link,) = ipr.get_links(a["index"])
                    return int(link.get_attr("IFLA_MTU"))
            return None

        mtu = self._host_ipr(find)
        if mtu is None:
            raise DriverError(f"no interface in the host namespace holds the data path address {data_path_addr}; "
                              "check --data-path-addr / --advertise-addr")
        return mtu

    # ------------------------------------------------------------- network
    def ensure_network(self, net: NetworkConfig) -> None:
        """Make sure ``net``'s namespace, bridge and VXLAN device exist with the right MTU; idempotent.

        A namespace already there (e.g. made before a restart) whose VXLAN device has ``net.vni``
        is kept (its MTU is set again); one with another VNI is rebuilt. Raises
        :class:`DriverError` (bad config, ``encrypted`` refused, no interface holds the data path
        address, the VNI taken by a device this driver does not own); on failure the network's
        namespace is removed.
        """
        subnet, gw, opts = net.validate()
        with self._lock:
            mtu = overlay_mtu(self.underlay_mtu(net.data_path_addr), opts.mtu)
            path = self.netns_path(net.network_id)
            vx, br = self.vxlan_name(net.vni), self.bridge_name(net.vni)
            if netns.is_mountpoint(path):
                if self._in(path, lambda ipr: _lookup(ipr, vx) is not None and _lookup(ipr, br) is not None):
                    self._in(path, lambda ipr: self._set_mtus(ipr, mtu))
                    self._nets[net.network_id] = _Net(net, mtu)
                    return
                self._remove(net.network_id)
            try:
                self._create(net, path, subnet, gw, mtu)
            except BaseException:
                self._remove(net.network_id, vni=net.vni)
                raise
            self._nets[net.network_id] = _Net(net, mtu)

    def _create(self, net: NetworkConfig, path: Path, subnet: ipaddress.IPv4Network,
                gw: ipaddress.IPv4Address, mtu: int) -> None:
        vx, br = self.vxlan_name(net.vni), self.bridge_name(net.vni)
        netns.create(path)

        def make_bridge(ipr: IPRoute) -> None:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")
            mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            ipr.link("add", ifname=br, kind="bridge", address=mac, mtu=mtu)
            idx = _lookup(ipr, br)
            assert idx is not None
            ipr.addr("add", index=idx, address=str(gw), prefixlen=subnet.prefixlen)
            ipr.link("set", index=idx, state="up")

        self._in(path, make_bridge)

        def make_vxlan(ipr: IPRoute) -> None:
            _delete_link(ipr, vx)  # left by a crash between "create" and "move"
            try:
                ipr.link("add", ifname=vx, kind="vxlan", vxlan_id=net.vni, vxlan_local=net.data_path_addr,
                         vxlan_port=net.data_path_port, vxlan_learning=0, vxlan_proxy=1, mtu=mtu)
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise VniInUse(
                        f"network {net.network_id[:12]}: a VXLAN device with VNI {net.vni} and port "
                        f"{net.data_path_port} already exists in the host namespace (another network or "
                        "daemon?); remove it or restart shoald to clean stale devices",
                        net.network_id, net.vni, net.data_path_port) from e
                raise
            idx = _lookup(ipr, vx)
            assert idx is not None
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("set", index=idx, net_ns_fd=fd)
            except BaseException:
                _delete_link(ipr, vx)
                raise
            finally:
                os.close(fd)

        self._host_ipr(make_vxlan)

        def plug_vxlan(ipr: IPRoute) -> None:
            vidx, bidx = _lookup(ipr, vx), _lookup(ipr, br)
            assert vidx is not None and bidx is not None
            ipr.link("set", index=vidx, master=bidx)
            ipr.link("set", index=vidx, state="up")

        self._in(path, plug_vxlan)

    def _set_mtus(self, ipr: IPRoute, mtu: int) -> None:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            if name.startswith((VXLAN_PREFIX, BRIDGE_PREFIX, VETH_PREFIX)) and link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=link["index"], mtu=mtu)

    def remove_network(self, network_id: str) -> None:
        """Remove ``network_id``'s namespace with its bridge, VXLAN device and every endpoint's
        veth (the containers lose that interface); idempotent."""
        check_id(network_id, "network ID")
        with self._lock:
            known = self._nets.get(network_id)
            self._remove(network_id, vni=known.config.vni if known else None)

    def _remove(self, network_id: str, vni: int | None = None) -> None:
        path = self.netns_path(network_id)
        if netns.is_mountpoint(path):
            # Delete the links first: the namespace itself dies only when nothing holds it, and
            # its VNI would stay taken until then.
            def clear(ipr: IPRoute) -> None:
                for name in _link_names(ipr):
                    if name != "lo":
                        _delete_link(ipr, name)

            self._in(path, clear)
        netns.remove(path)
        if vni is not None:
            self._host_ipr(lambda ipr: _delete_link(ipr, self.vxlan_name(vni)))
        self._nets.pop(network_id, None)

    # ------------------------------------------------------------ endpoints
    def attach(self, endpoint: EndpointConfig) -> Attachment:
        """Plug the container namespace ``endpoint.netns_path`` into the network with a veth pair.

        Inside the container: ``endpoint.ifname`` with ``endpoint.address``, the MAC
        :func:`~overlaynet.driver.mac_from_ip` of it and the network's MTU, up (``lo`` up too); no
        routes beyond the subnet's (the default route is the caller's business). In the network
        namespace: ``sove-<endpoint_id[:10]>`` on the bridge, same MTU. A leftover veth of the same
        endpoint is replaced. Raises :class:`DriverError` when the network was not ensured, the
        address is not in its subnet, or the namespace file is missing; on failure nothing is left.
        """
        check_id(endpoint.endpoint_id, "endpoint ID")
        check_ifname(endpoint.ifname)
        try:
            iface = ipaddress.ip_interface(endpoint.address)
        except ValueError as e:
            raise DriverError(f"bad endpoint address {endpoint.address!r}: {e}") from e
        mac = mac_from_ip(endpoint.address)
        if not os.path.exists(endpoint.netns_path):
            raise DriverError(f"endpoint {endpoint.endpoint_id[:12]}: no network namespace at {endpoint.netns_path}")
        veth = self.veth_name(endpoint.endpoint_id)
        with self._lock:
            path = self.netns_path(endpoint.network_id)
            if not netns.is_mountpoint(path):
                raise DriverError(f"network {endpoint.network_id[:12]} is not set up on this node: "
                                  "call ensure_network first")

            def bridge_of(ipr: IPRoute) -> tuple[int, int, str]:
                for link in ipr.get_links():
                    name = link.get_attr("IFLA_IFNAME") or ""
                    if name.startswith(BRIDGE_PREFIX):
                        return link["index"], int(link.get_attr("IFLA_MTU")), name
                raise DriverError(f"network {endpoint.network_id[:12]} has no bridge: call ensure_network again")

            bidx, mtu, _ = self._in(path, bridge_of)
            known = self._nets.get(endpoint.network_id)
            if known is not None:
                mtu = known.mtu
                subnet = ipaddress.ip_network(known.config.subnet)
                if iface.ip not in subnet or iface.network != subnet:
                    raise DriverError(f"endpoint address {endpoint.address} is not in network "
                                      f"{endpoint.network_id[:12]}'s subnet {subnet}")
            cfd = os.open(endpoint.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                def plug(ipr: IPRoute) -> None:
                    _delete_link(ipr, veth)
                    ipr.link("add", ifname=veth, kind="veth", mtu=mtu,
                             peer={"ifname": endpoint.ifname, "net_ns_fd": cfd, "mtu": mtu, "address": mac})
                    idx = _lookup(ipr, veth)
                    assert idx is not None
                    ipr.link("set", index=idx, master=bidx)
                    ipr.link("set", index=idx, state="up")

                def inside(ipr: IPRoute) -> None:
                    (lo,) = ipr.link_lookup(ifname="lo")
                    ipr.link("set", index=lo, state="up")
                    idx = _lookup(ipr, endpoint.ifname)
                    assert idx is not None
                    ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                    ipr.link("set", index=idx, state="up")

                try:
                    self._in(path, plug)
                    self._in(endpoint.netns_path, inside)
                except BaseException:
                    self._in(path, lambda ipr: _delete_link(ipr, veth))
                    raise
            finally:
                os.close(cfd)
        return Attachment(endpoint.network_id, endpoint.endpoint_id, str(endpoint.netns_path), endpoint.ifname,
                          f"{iface.ip}/{iface.network.prefixlen}", mac, mtu)

    def detach(self, endpoint: EndpointConfig) -> None:
        """Delete the endpoint's veth pair (its end in the container goes with it); idempotent.

        With ``remove_when_empty`` the network's namespace is removed when no endpoint is left.
        """
        veth = self.veth_name(endpoint.endpoint_id)
        with self._lock:
            path = self.netns_path(endpoint.network_id)
            if not netns.is_mountpoint(path):
                return

            def unplug(ipr: IPRoute) -> bool:
                _delete_link(ipr, veth)
                return any(n.startswith(VETH_PREFIX) for n in _link_names(ipr))

            others = self._in(path, unplug)
            if self.remove_when_empty and not others:
                self.remove_network(endpoint.network_id)

    def endpoints(self, network_id: str) -> list[str]:
        """The veth ends (``sove-…``) in ``network_id``'s namespace, sorted; [] when it has none."""
        path = self.netns_path(network_id)
        if not netns.is_mountpoint(path):
            return []
        return sorted(n for n in self._in(path, _link_names) if n.startswith(VETH_PREFIX))

    # ---------------------------------------------------------------- peers
    def set_peers(self, network_id: str, peers: Iterable[Peer]) -> PeerDelta:
        """Make ``peers`` the network's remote endpoints: read the permanent neighbour and FDB
        entries on its VXLAN device, delete those not wanted, add the missing ones.

        The kernel is the record, so this is right after a restart too. Raises
        :class:`DriverError` when the network is not set up or two peers claim one IP or MAC
        with different values.
        """
        want = sorted(set(peers))
        by_ip: dict[str, Peer] = {}
        by_mac: dict[str, Peer] = {}
        for p in want:
            if by_ip.setdefault(p.ip, p) != p or by_mac.setdefault(p.mac, p) != p:
                raise DriverError(f"network {network_id[:12]}: conflicting peers for {p.ip} / {p.mac}")
        with self._lock:
            path = self.netns_path(network_id)
            if not netns.is_mountpoint(path):
                raise DriverError(f"network {network_id[:12]} is not set up on this node: call ensure_network first")
            return self._in(path, lambda ipr: self._program(ipr, network_id, want))

    @staticmethod
    def _vxlan_index(ipr: IPRoute, network_id: str) -> int:
        for link in ipr.get_links():
            if (link.get_attr("IFLA_IFNAME") or "").startswith(VXLAN_PREFIX):
                return int(link["index"])
        raise DriverError(f"network {network_id[:12]} has no VXLAN device: call ensure_network again")

    @classmethod
    def _read_peers(cls, ipr: IPRoute, vidx: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """``({(ip, mac)} permanent neighbours, {(mac, dst)} FDB entries with a destination)`` on ``vidx``."""
        neigh: set[tuple[str, str]] = set()
        for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=vidx):
            mac = n.get_attr("NDA_LLADDR")
            if n["ifindex"] == vidx and n["state"] & _NUD_PERMANENT and mac:
                neigh.add((n.get_attr("NDA_DST"), mac.lower()))
        fdb: set[tuple[str, str]] = set()
        for f in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=vidx):
            dst, mac = f.get_attr("NDA_DST"), f.get_attr("NDA_LLADDR")
            if f["ifindex"] == vidx and dst and mac:
                fdb.add((mac.lower(), dst))
        return neigh, fdb

    @classmethod
    def _program(cls, ipr: IPRoute, network_id: str, want: list[Peer]) -> PeerDelta:
        vidx = cls._vxlan_index(ipr, network_id)
        neigh, fdb = cls._read_peers(ipr, vidx)
        want_neigh = {(p.ip, p.mac) for p in want}
        want_fdb = {(p.mac, p.vtep) for p in want}
        for ip, mac in sorted(neigh - want_neigh):
            try:
                ipr.neigh("del", dst=ip, lladdr=mac, ifindex=vidx, family=socket.AF_INET)
            except NetlinkError as e:
                _ignore(e, _ENOENT)
        for mac, dst in sorted(fdb - want_fdb):
            try:
                ipr.fdb("del", ifindex=vidx, lladdr=mac, dst=dst)
            except NetlinkError as e:
                _ignore(e, _ENOENT)
        for mac, dst in sorted(want_fdb - fdb):
            ipr.fdb("append", ifindex=vidx, lladdr=mac, dst=dst, state=_NUD_PERMANENT)
        for ip, mac in sorted(want_neigh - neigh):
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=vidx, state=_NUD_PERMANENT, family=socket.AF_INET)
        old = {(ip, mac, dst) for ip, mac in neigh for m, dst in fdb if m == mac}
        new = {(p.ip, p.mac, p.vtep) for p in want}
        added = tuple(sorted(Peer(*t) for t in new - old))
        removed = tuple(sorted(Peer(*t) for t in old - new))
        return PeerDelta(added, removed)

    def peers(self, network_id: str) -> list[Peer]:
        """The network's peers as the kernel holds them (neighbour ∧ FDB entry), sorted; [] when
        the network is not set up."""
        path = self.netns_path(network_id)
        if not netns.is_mountpoint(path):
            return []

        def read(ipr: IPRoute) -> list[Peer]:
            neigh, fdb = self._read_peers(ipr, self._vxlan_index(ipr, network_id))
            return sorted(Peer(ip, mac, dst) for ip, mac in neigh for m, dst in fdb if m == mac)

        return self._in(path, read)

    # -------------------------------------------------------------- cleanup
    def cleanup_stale(self, known_network_ids: Iterable[str], vni: int | None = None) -> list[str]:
        """Remove what a crashed daemon (or an earlier swarm) left: ``sov-*`` namespace files in
        ``netns_dir`` of networks not in ``known_network_ids`` (links first, then the mount) and
        every ``sovx-*`` VXLAN device in the host namespace (only ever there between "create" and
        "move").

        ``vni`` given: only what holds that VNI — namespaces (of unknown networks) whose VXLAN
        device is ``sovx-<vni hex>``, and that device in the host namespace — so a network being
        set up can take a VNI an unknown network still holds (:class:`~overlaynet.driver.VniInUse`).

        Returns the removed namespace files' and devices' names, sorted. Without ``vni``, call it
        at start, before any ``ensure_network``.
        """
        keep = {self.netns_path(n).name for n in known_network_ids}
        only = self.vxlan_name(vni) if vni is not None else None
        removed: list[str] = []
        with self._lock:
            if self.netns_dir.is_dir():
                for f in sorted(self.netns_dir.iterdir()):
                    if not f.name.startswith(NETNS_PREFIX) or f.name in keep:
                        continue
                    mounted = netns.is_mountpoint(f)
                    if only is not None and not (mounted and only in self._in(f, _link_names)):
                        continue
                    if mounted:
                        self._in(f, lambda ipr: [_delete_link(ipr, n) for n in _link_names(ipr) if n != "lo"])
                    netns.remove(f)
                    removed.append(f.name)
                    for nid in [n for n in self._nets if self.netns_path(n).name == f.name]:
                        del self._nets[nid]

            def host(ipr: IPRoute) -> list[str]:
                gone = []
                for name in _link_names(ipr):
                    if (name == only if only is not None else name.startswith(VXLAN_PREFIX)) \
                            and _delete_link(ipr, name):
                        gone.append(name)
                return gone

            removed += self._host_ipr(host)
        return sorted(removed)
