"""The node's local bridge network (like Docker's ``docker0``).

One Linux bridge per ``shoald`` (default ``shoal0``) holds the gateway address
of the node's subnet (``Node["ShoalBridge"]``, see docs/contracts.md); each
container gets a network namespace kept as a file under
``<exec_root>/netns/<container_id[:12]>`` and a veth pair: the host end
``vs<container_id[:10]>`` is a port of the bridge, the peer is ``eth0`` inside
the container's namespace with the task's address and a default route via the
gateway.  An nftables table ``ip shoal_<bridge>`` masquerades traffic from the
subnet that leaves through another interface, so containers reach the underlay
(as Docker's ``POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE``).

Everything lives in the network namespace of the thread that calls these
methods: in the lab ``shoald`` runs inside ``shoal-hN`` (entered with
``nsenter --net``), so the bridge and the nftables table are that host's; the
namespace files live in the (host) mount namespace.

Sources: ip-link(8) (bridge, veth), ip-netns(8) and iproute2 ``ipnetns.c`` (a
namespace kept by a bind mount), nft(8) (nat chain, masquerade), Docker's
bridge driver (moby ``libnetwork/drivers/bridge``) for the layout.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlaynet import netns

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,}$")


P = ParamSpec("P")
R = TypeVar("R")


def _off_event_loop(fn: Callable[P, R]) -> Callable[P, R]:
    """pyroute2's sync IPRoute cannot run in a thread whose asyncio loop is running; when called
    from one, run ``fn`` in a fresh thread (it inherits this thread's network namespace) and block."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return netns.run_in_thread(lambda: fn(*args, **kwargs))

    return wrapper


class BridgeError(Exception):
    """A bridge operation failed; the message says what and what to do."""


def _ensure_ipv4_forwarding() -> None:
    # /proc/sys/net/* shows the network namespace of the thread that opens it.
    with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as f:
        f.write("1\n")


def _nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        raise BridgeError(f"nft failed (exit {proc.returncode}): {proc.stderr.strip()}\nscript:\n{script}")


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


class LocalBridge:
    """A local bridge network on this node: ``ensure``, ``attach``, ``detach``, ``cleanup``.

    ``name``: the bridge's interface name (1–15 characters of ``[A-Za-z0-9_.-]``).
    ``exec_root``: the daemon's exec root; namespace files go to ``exec_root/netns/``.

    All methods are synchronous (netlink and one ``nft`` call, milliseconds) and
    thread-safe; asyncio callers should run them in a thread (``asyncio.to_thread``); called
    directly from an event loop's thread they still work (in a helper thread) but block the loop.
    They act in the network namespace of the calling thread.
    Errors: ``BridgeError`` (bad input, missing bridge, nft failure),
    ``OSError``/``NetlinkError`` from the kernel.
    """

    def __init__(self, name: str = "shoal0", exec_root: Path = Path("/run/shoal")) -> None:
        if not _IFNAME_RE.match(name):
            raise BridgeError(f"bad bridge name {name!r}: use 1-15 characters of letters, digits, '_', '.', '-'")
        self.name = name
        self.exec_root = Path(exec_root)
        self.netns_dir = self.exec_root / "netns"
        self.table = "shoal_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
        self._lock = threading.Lock()
        self._ensured: tuple[str, str] | None = None

    # ---------------------------------------------------------------- bridge
    @_off_event_loop
    def ensure(self, subnet: str, gateway: str) -> None:
        """Make sure the bridge exists, is up and holds ``gateway`` (in ``subnet``); idempotent.

        ``subnet``: e.g. ``"10.200.1.0/24"``; ``gateway``: e.g. ``"10.200.1.1"``.
        Also turns on IPv4 forwarding in this network namespace and (re)writes
        the nftables table ``ip shoal_<bridge>`` with a masquerade rule for
        traffic from ``subnet`` leaving by another interface.  Addresses of
        another subnet on the bridge are removed (the node got a new subnet).
        Raises BridgeError for a malformed subnet/gateway or an nft failure.
        """
        net, gw = self._parse(subnet, gateway)
        key = (str(net), str(gw))
        with self._lock:
            with netns.iproute() as ipr:
                idx = self._bridge_index(ipr)
                if self._ensured == key and idx is not None:
                    return
                if idx is None:
                    mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
                    try:
                        ipr.link("add", ifname=self.name, kind="bridge", address=mac)
                    except NetlinkError as e:
                        if e.code != 17:  # EEXIST: another process made it meanwhile
                            raise
                    idx = self._bridge_index(ipr)
                    if idx is None:
                        raise BridgeError(f"bridge {self.name} vanished right after it was created")
                else:
                    kind = self._link_kind(ipr, idx)
                    if kind != "bridge":
                        raise BridgeError(
                            f"interface {self.name} exists but is a {kind or 'non-bridge'} device; "
                            "remove it or pick another bridge name")
                have_gw = False
                for a in ipr.get_addr(index=idx, family=socket.AF_INET):
                    addr = _attr(a, "IFA_ADDRESS")
                    plen = a["prefixlen"]
                    if addr == str(gw) and plen == net.prefixlen:
                        have_gw = True
                    else:
                        ipr.addr("del", index=idx, address=addr, prefixlen=plen)
                if not have_gw:
                    ipr.addr("add", index=idx, address=str(gw), prefixlen=net.prefixlen)
                ipr.link("set", index=idx, state="up")
            _ensure_ipv4_forwarding()
            _nft(
                f"add table ip {self.table}\n"
                f"delete table ip {self.table}\n"
                f"table ip {self.table} {{\n"
                f"  chain postrouting {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n"
                f"    ip saddr {net} oifname != \"{self.name}\" masquerade\n"
                f"  }}\n"
                f"}}\n")
            self._ensured = key

    # ------------------------------------------------------------ containers
    def netns_path(self, container_id: str) -> Path:
        """Return the namespace file of ``container_id``: ``exec_root/netns/<container_id[:12]>``."""
        self._check_id(container_id)
        return self.netns_dir / container_id[:12]

    def veth_name(self, container_id: str) -> str:
        """Return the host end's name of ``container_id``'s veth pair: ``vs<container_id[:10]>``."""
        self._check_id(container_id)
        return "vs" + container_id[:10]

    @_off_event_loop
    def attach(self, container_id: str, address_cidr: str, gateway: str) -> str:
        """Give ``container_id`` a network namespace on the bridge and return the namespace file's path.

        ``address_cidr``: the container's address with prefix, e.g. ``"10.200.1.7/24"``;
        ``gateway``: the bridge's address, e.g. ``"10.200.1.1"``.
        Creates ``exec_root/netns/<id[:12]>``, the veth pair (``vs<id[:10]>`` on
        the bridge, ``eth0`` inside), sets lo and eth0 up, the address and the
        default route.  A leftover attachment of the same ID is replaced.
        Raises BridgeError when the bridge does not exist (call ``ensure``
        first) or the input is malformed; on any failure nothing is left behind.
        """
        try:
            iface = ipaddress.ip_interface(address_cidr)
            gw = ipaddress.ip_address(gateway)
        except ValueError as e:
            raise BridgeError(f"bad address {address_cidr!r} or gateway {gateway!r}: {e}") from e
        if iface.version != 4 or gw.version != 4:
            raise BridgeError("only IPv4 addresses are supported on the local bridge")
        path = self.netns_path(container_id)
        veth = self.veth_name(container_id)
        with netns.iproute() as ipr:
            br = self._bridge_index(ipr)
            if br is None:
                raise BridgeError(f"bridge {self.name} does not exist: call ensure(subnet, gateway) first")
        self.detach(container_id)
        netns.create(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with netns.iproute() as ipr:
                    ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
                    (vidx,) = ipr.link_lookup(ifname=veth)
                    ipr.link("set", index=vidx, master=br)
                    ipr.link("set", index=vidx, state="up")

                def inside() -> None:
                    netns.setns_current_thread(fd)
                    with netns.iproute() as nipr:
                        (lo,) = nipr.link_lookup(ifname="lo")
                        nipr.link("set", index=lo, state="up")
                        (eth0,) = nipr.link_lookup(ifname="eth0")
                        nipr.addr("add", index=eth0, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                        nipr.link("set", index=eth0, state="up")
                        nipr.route("add", dst="0.0.0.0/0", gateway=str(gw))

                netns.run_in_thread(inside)
            finally:
                os.close(fd)
        except BaseException:
            self.detach(container_id)
            raise
        return str(path)

    @_off_event_loop
    def detach(self, container_id: str) -> None:
        """Remove ``container_id``'s veth pair and namespace file (unmount, then delete); idempotent."""
        veth = self.veth_name(container_id)
        with netns.iproute() as ipr:
            for idx in ipr.link_lookup(ifname=veth):
                try:
                    ipr.link("del", index=idx)
                except NetlinkError as e:
                    if e.code != 19:  # ENODEV: gone meanwhile
                        raise
        netns.remove(self.netns_path(container_id))

    # --------------------------------------------------------------- cleanup
    @_off_event_loop
    def cleanup(self) -> None:
        """Remove everything this bridge made: namespace files, veths, the bridge, the nftables table.

        Idempotent; IPv4 forwarding is left on (as Docker leaves it).
        """
        with self._lock:
            if self.netns_dir.is_dir():
                for f in self.netns_dir.iterdir():
                    netns.remove(f)
                try:
                    self.netns_dir.rmdir()
                except OSError:
                    pass
            with netns.iproute() as ipr:
                br = self._bridge_index(ipr)
                if br is not None:
                    for link in ipr.get_links():
                        name = _attr(link, "IFLA_IFNAME") or ""
                        if _attr(link, "IFLA_MASTER") == br and name.startswith("vs"):
                            try:
                                ipr.link("del", index=link["index"])
                            except NetlinkError as e:
                                if e.code != 19:
                                    raise
                    try:
                        ipr.link("del", index=br)
                    except NetlinkError as e:
                        if e.code != 19:
                            raise
            _nft(f"add table ip {self.table}\ndelete table ip {self.table}\n")
            self._ensured = None

    # --------------------------------------------------------------- helpers
    def _bridge_index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.name)
        return found[0] if found else None

    @staticmethod
    def _link_kind(ipr: IPRoute, idx: int) -> str | None:
        (link,) = ipr.get_links(idx)
        info = _attr(link, "IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else None

    @staticmethod
    def _check_id(container_id: str) -> None:
        if not isinstance(container_id, str) or len(container_id) < 12 or not _ID_RE.match(container_id):
            raise BridgeError(
                f"bad container ID {container_id!r}: need at least 12 characters of letters, digits, '_', '.', '-'")

    @staticmethod
    def _parse(subnet: str, gateway: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]:
        try:
            net = ipaddress.ip_network(subnet, strict=True)
            gw = ipaddress.ip_address(gateway)
        except ValueError as e:
            raise BridgeError(f"bad bridge subnet {subnet!r} or gateway {gateway!r}: {e}") from e
        if not isinstance(net, ipaddress.IPv4Network) or not isinstance(gw, ipaddress.IPv4Address):
            raise BridgeError("only IPv4 subnets are supported on the local bridge")
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise BridgeError(f"gateway {gw} is not a host address of subnet {net}")
        return net, gw
