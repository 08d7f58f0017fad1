"""The ingress routing mesh's kernel side on one node: the ingress sandbox (issue 9).

Docker's shape (moby ``libnetwork/service_linux.go``: ``ingress_sbox``, the host's nat rules and
the sandbox's IPVS + SNAT), with nftables in place of IPVS::

    host namespace (the caller's, or ``host_netns``)           sandbox <netns_dir>/ingress_sbox
    ────────────────────────────────────────────────           ─────────────────────────────────
    client → <any local addr>:<published>                      eth0  169.254.253.2/30, default via .1
      table ip shoal-mesh (overlaynet.lb.portmap):              │ table ip shoal-ingress (overlaynet.lb.rules):
      DNAT → 169.254.253.2:<published> ─► shoal-ingr0 ◄──veth──┘  169.254.253.2 . proto . published
                                          169.254.253.1/30         → numgen → dnat <task ingress IP>:<target>
                                                                 table ip shoal-ingress-nat: masquerade what
                                                                   was DNATed and leaves by another interface
                                                               eth1  the node's LB address on the ingress
                                                                     overlay (made by the VXLAN driver's attach)

The SNAT (masquerade to the node's ingress LB address) makes replies come back through the same
sandbox, so conntrack can undo both DNATs; it is also why the task sees the sandbox's address, not
the client's (as in Docker, moby#25526).

Beyond Swarm, keeping the client's address: a :class:`MeshPort` with ``local`` addresses (the
local-bridge addresses of this node's own tasks of the service) is sent by the host straight to
them, in the host's table ``ip shoal-mesh-local`` (:mod:`overlaynet.lb.rules` local-port keys:
``fib daddr type local`` + proto . port → numgen → ``dnat to <local task>:<target>``, at nat
priority -100, before the sandbox's DNAT at -99), without any SNAT: the reply leaves the task by its
default route (the local bridge) back into the host, where conntrack undoes the DNAT. Ports without
local tasks still go through the sandbox. The /30 between host and sandbox is link-local
(169.254.253.0/30 by default, ``link_subnet``), so it collides with no routed network; change it if
the node uses that range.

:class:`IngressSandbox` owns the namespace, the veth pair, the two tables and IPv4 forwarding; it
does not attach the overlay (``eth1``): the caller plugs the sandbox's namespace (:attr:`netns_path`)
into the ingress network with its :class:`overlaynet.driver.NetworkDriver`, as a task endpoint.
Every method is synchronous and idempotent (netlink + one ``nft`` per table, milliseconds); call it
from a thread. Errors: ``OSError``/``NetlinkError`` from the kernel, :class:`overlaynet.lb.apply.NftError`,
:class:`overlaynet.lb.rules.RulesError` for bad ports.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlaynet import netns
from overlaynet.lb.apply import LoadBalancer, flush_udp_conntrack, run_nft
from overlaynet.lb.portmap import PortMap
from overlaynet.lb.rules import Endpoint, LBState, ServiceKey, validate_table_name

__all__ = ["DEFAULT_LINK_SUBNET", "SANDBOX_NAME", "IngressSandbox", "MeshPort"]

T = TypeVar("T")

SANDBOX_NAME = "ingress_sbox"
"""The sandbox's namespace file name (Docker's ``ingress_sbox``)."""
DEFAULT_LINK_SUBNET = "169.254.253.0/30"
"""The host↔sandbox link: .1 on the host end, .2 in the sandbox (link-local, not routed)."""
SANDBOX_IFNAME = "eth0"


@dataclass(frozen=True)
class MeshPort:
    """One ingress-mode published port: ``proto`` (tcp, udp, sctp), ``published`` (the node's port,
    1-65535), ``target`` (the tasks' port) and ``endpoints`` (the tasks' ingress-network IPv4
    addresses, any node; empty: the port is answered with a reject); ``local``: the local-bridge
    addresses of this node's tasks among them, when the port should keep the client's address
    (see the module docstring; empty: through the sandbox)."""

    proto: str
    published: int
    target: int
    endpoints: tuple[str, ...] = ()
    local: tuple[str, ...] = ()


def _ignore(e: NetlinkError, *codes: int) -> None:
    if e.code not in codes:
        raise e


class IngressSandbox:
    """The ingress sandbox of this node (see the module docstring).

    ``netns_dir``: where the sandbox's namespace file goes (``<netns_dir>/ingress_sbox``);
    ``host_netns``: the namespace file of "the host" (None: the calling thread's);
    ``link_subnet``: the host↔sandbox /30; ``host_veth``: the host end's name (``shoal-ingr0``);
    ``host_table`` / ``lb_table`` / ``nat_table`` / ``local_table``: the nftables tables (host DNAT
    to the sandbox; sandbox LB; sandbox SNAT; host DNAT to local tasks);
    ``nft`` / ``conntrack``: runners (tests pass fakes). Thread-safe (one lock).
    """

    def __init__(self, netns_dir: Path, host_netns: Path | str | None = None,
                 link_subnet: str = DEFAULT_LINK_SUBNET, host_veth: str = "shoal-ingr0",
                 host_table: str = "shoal-mesh", lb_table: str = "shoal-ingress",
                 nat_table: str = "shoal-ingress-nat", local_table: str = "shoal-mesh-local",
                 nft: Callable[..., None] = run_nft,
                 conntrack: Callable[..., int] = flush_udp_conntrack) -> None:
        net = ipaddress.IPv4Network(link_subnet)
        if net.prefixlen != 30:
            raise ValueError(f"the ingress sandbox link must be a /30, not {link_subnet}")
        self.netns_dir = Path(netns_dir)
        self.host_netns = Path(host_netns) if host_netns is not None else None
        hosts = list(net.hosts())
        self.link_subnet = net
        self.host_addr, self.sandbox_addr = str(hosts[0]), str(hosts[1])
        if not 1 <= len(host_veth) <= 15:
            raise ValueError(f"bad interface name {host_veth!r}")
        self.host_veth = host_veth
        self.nat_table = validate_table_name(nat_table)
        self._nft = nft
        self._conntrack = conntrack
        self._host_map = PortMap(host_table, netns=self.host_netns, nft=nft)
        self._local_lb = LoadBalancer(local_table, netns=self.host_netns, nft=nft, conntrack=conntrack)
        self._lb = LoadBalancer(lb_table, netns=self.netns_path, nft=nft, conntrack=conntrack)
        self._lock = threading.RLock()
        self._link_mtu: int | None = None

    @property
    def netns_path(self) -> Path:
        """The sandbox's namespace file."""
        return self.netns_dir / SANDBOX_NAME

    # ---------------------------------------------------------------- helpers
    def _in_host(self, fn: Callable[[IPRoute], T]) -> T:
        def body() -> T:
            with netns.iproute() as ipr:
                return fn(ipr)
        if self.host_netns is None:
            return netns.run_in_thread(body)
        return netns.run_in_netns(self.host_netns, body)

    def _in_sandbox(self, fn: Callable[[IPRoute], T]) -> T:
        def body() -> T:
            with netns.iproute() as ipr:
                return fn(ipr)
        return netns.run_in_netns(self.netns_path, body)

    @staticmethod
    def _forwarding_on() -> None:
        with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as f:
            f.write("1\n")

    # -------------------------------------------------------------- lifecycle
    def ensure_netns(self) -> Path:
        """Make sure the sandbox's namespace exists (loopback up, IPv4 forwarding on); return its path."""
        with self._lock:
            if not netns.is_mountpoint(self.netns_path):
                netns.create(self.netns_path)
                self._link_mtu = None
                self._lb = LoadBalancer(self._lb.table, netns=self.netns_path, nft=self._nft,
                                        conntrack=self._conntrack)

            def up(ipr: IPRoute) -> None:
                (lo,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo, state="up")

            self._in_sandbox(up)
            netns.run_in_netns(self.netns_path, self._forwarding_on)
            return self.netns_path

    def ensure_link(self, mtu: int) -> None:
        """Make sure the veth pair host↔sandbox exists with ``mtu`` bytes on both ends (the ingress
        overlay's MTU), the /30 addresses, the sandbox's default route via the host end, IPv4
        forwarding in the host, and the sandbox's SNAT table. Call :meth:`ensure_netns` first."""
        with self._lock:
            if not netns.is_mountpoint(self.netns_path):
                raise FileNotFoundError(f"no ingress sandbox at {self.netns_path}: call ensure_netns first")
            plen = self.link_subnet.prefixlen

            def inside_has_link(ipr: IPRoute) -> bool:
                return bool(ipr.link_lookup(ifname=SANDBOX_IFNAME))

            def host(ipr: IPRoute) -> None:
                idx = ipr.link_lookup(ifname=self.host_veth)
                if idx and not self._in_sandbox(inside_has_link):
                    ipr.link("del", index=idx[0])  # a half-made pair
                    idx = []
                if not idx:
                    fd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        ipr.link("add", ifname=self.host_veth, kind="veth", mtu=mtu,
                                 peer={"ifname": SANDBOX_IFNAME, "net_ns_fd": fd, "mtu": mtu})
                    finally:
                        os.close(fd)
                    idx = ipr.link_lookup(ifname=self.host_veth)
                    ipr.addr("add", index=idx[0], address=self.host_addr, prefixlen=plen)
                (link,) = ipr.get_links(idx[0])
                if link.get_attr("IFLA_MTU") != mtu:
                    ipr.link("set", index=idx[0], mtu=mtu)
                ipr.link("set", index=idx[0], state="up")

            self._in_host(host)
            if self.host_netns is None:
                netns.run_in_thread(self._forwarding_on)
            else:
                netns.run_in_netns(self.host_netns, self._forwarding_on)

            def inside(ipr: IPRoute) -> None:
                (idx,) = ipr.link_lookup(ifname=SANDBOX_IFNAME)
                (link,) = ipr.get_links(idx)
                if link.get_attr("IFLA_MTU") != mtu:
                    ipr.link("set", index=idx, mtu=mtu)
                have = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)]
                if self.sandbox_addr not in have:
                    ipr.addr("add", index=idx, address=self.sandbox_addr, prefixlen=plen)
                ipr.link("set", index=idx, state="up")
                try:
                    ipr.route("replace", dst="0.0.0.0/0", gateway=self.host_addr)
                except NetlinkError as e:
                    _ignore(e, 17)

            self._in_sandbox(inside)
            if self._link_mtu is None:
                t = self.nat_table
                self._nft(
                    f"add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n"
                    "\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n"
                    f'\t\tct status dnat oifname != "{SANDBOX_IFNAME}" masquerade\n\t}}\n}}\n',
                    netns=self.netns_path)
            self._link_mtu = mtu

    def set_ports(self, ports: Iterable[MeshPort]) -> None:
        """Publish exactly ``ports``: the host's DNAT map and the sandbox's load balancer, each by
        delta (one ``nft -f`` each when something changed). A port with no endpoints is rejected
        (TCP reset / ICMP port unreachable). Raises ``RulesError`` for a bad or duplicate port."""
        plist = list(ports)
        host: dict[tuple[str, int], tuple[str, int]] = {}
        lb: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        local: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        for p in plist:
            if p.local:
                local[ServiceKey.local(p.proto, p.published)] = tuple(Endpoint(ip, p.target) for ip in p.local)
            key = ServiceKey(self.sandbox_addr, p.proto, p.published)
            if key in lb:
                raise ValueError(f"published port {p.proto}/{p.published} given twice")
            lb[key] = tuple(Endpoint(ip, p.target) for ip in p.endpoints)
            host[(key.proto, p.published)] = (self.sandbox_addr, p.published)
        state = LBState(lb)
        with self._lock:
            self._lb.apply(state)  # the sandbox first: nothing is sent there before it answers
            self._host_map.apply(host)
            if local or self._local_lb.applied is not None:  # the table only once some port uses it
                self._local_lb.apply(LBState(local))

    def ports_applied(self) -> Mapping[tuple[str, int], tuple[str, int]] | None:
        """The host map as last applied (``{(proto, published): (sandbox addr, published)}``)."""
        return self._host_map.applied

    def remove(self) -> None:
        """Remove everything: the host table, the veth pair, the sandbox (its tables and its overlay
        interface go with it; detach the overlay endpoint first to keep the driver's view right).
        Idempotent; also the start-time clean-up of a crashed daemon's leftovers."""
        with self._lock:
            first: BaseException | None = None
            for table in (self._host_map, self._local_lb):
                try:
                    table.remove()
                except Exception as e:  # go on: the rest must go too
                    first = first or e

            def host(ipr: IPRoute) -> None:
                for idx in ipr.link_lookup(ifname=self.host_veth):
                    try:
                        ipr.link("del", index=idx)
                    except NetlinkError as e:
                        _ignore(e, 19)

            self._in_host(host)
            if netns.is_mountpoint(self.netns_path):
                def clear(ipr: IPRoute) -> None:
                    for link in ipr.get_links():
                        name = link.get_attr("IFLA_IFNAME") or ""
                        if name != "lo":
                            try:
                                ipr.link("del", index=link["index"])
                            except NetlinkError as e:
                                _ignore(e, 19)

                self._in_sandbox(clear)
            netns.remove(self.netns_path)
            self._link_mtu = None
            self._lb = LoadBalancer(self._lb.table, netns=self.netns_path, nft=self._nft,
                                    conntrack=self._conntrack)
            if first is not None:
                raise first
