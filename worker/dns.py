"""The embedded DNS of a task's container (issue 9): the sockets at 127.0.0.11:53 in its namespace.

Every container attached to an overlay network gets ``nameserver 127.0.0.11`` in its resolv.conf;
the executor (:mod:`worker.executor`) binds a UDP and a TCP socket to ``127.0.0.11:53`` inside the
container's network namespace (:func:`open_dns_sockets`: a socket keeps the namespace it was
created in) and hands them to the node's :class:`overlaynet.dns.server.Resolver`, which answers
from the records the manager pushes (:func:`worker.overlay.dns_records`).
"""

from __future__ import annotations

import socket

from overlaynet import netns

__all__ = ["DNS_ADDR", "DNS_PORT", "dns_options", "open_dns_sockets"]

DNS_ADDR = "127.0.0.11"
DNS_PORT = 53


def dns_options(options: list[str]) -> list[str]:
    """resolv.conf options of a container on an overlay network: ``ndots:0`` first (as Docker
    writes it for the embedded DNS) unless ``options`` set ``ndots`` themselves, then ``options``."""
    if any(o.startswith("ndots:") for o in options):
        return list(options)
    return ["ndots:0", *options]


def _open_here(addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    with netns.iproute() as ipr:  # the loopback must be up for 127.0.0.11 to be bindable
        idx = ipr.link_lookup(ifname="lo")
        if not idx:
            raise OSError("the network namespace has no loopback interface")
        link = ipr.get_links(idx[0])[0]
        if not int(link.get("flags", 0)) & 1:  # IFF_UP
            ipr.link("set", index=idx[0], state="up")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except BaseException:
        udp.close()
        raise
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((addr, port))
        tcp.bind((addr, port))
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def open_dns_sockets(netns_path: str, addr: str = DNS_ADDR,
                     port: int = DNS_PORT) -> tuple[socket.socket, socket.socket]:
    """``(udp, tcp)`` sockets bound to ``addr:port`` inside the network namespace ``netns_path``
    (created in a thread that joined it; its loopback is brought up if it is down). Blocking (call
    it in a thread). Raises OSError."""
    return netns.run_in_netns(netns_path, lambda: _open_here(addr, port))
