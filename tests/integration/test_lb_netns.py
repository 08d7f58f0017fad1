"""Integration tests for overlaynet.lb (root): service VIPs in nftables, for real.

Two scratch network namespaces (files under tmp_path, named ``lbt-<random>-c`` / ``-s``) joined by a
veth pair: the *client* namespace holds the load balancer's table and connects to VIPs; the
*servers* namespace has three addresses (10.77.0.2-4) on its veth end, each with a tiny asyncio
server answering with its own address. Sockets are made inside a namespace by a thread that joined
it (a socket keeps the namespace it was created in), so everything runs in this process. The
namespaces, and the table with them, are removed at the end, also on failure. Nothing here touches
the host's namespace, the lab's ``shoal-h*`` namespaces or ``shoal-lab0``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlaynet import netns
from overlaynet.lb.apply import LoadBalancer, NftError
from overlaynet.lb.rules import LBState
from tests.waiting import wait_until

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)
if shutil.which("nft") is None:  # pragma: no cover
    pytest.skip("needs nft (Debian package nftables)", allow_module_level=True)

CLIENT_IP = "10.77.0.1"
ROUTER_IP, OUTER_IP = "10.78.0.1", "10.78.0.2"
SERVER_IPS = ("10.77.0.2", "10.77.0.3", "10.77.0.4")
VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.11"


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


def ns_run(ns: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={ns}", "--", *cmd, check=check)


@dataclass
class Lab:
    tag: str
    client: Path
    servers: Path
    outer: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = os.urandom(3).hex()
    client, servers = tmp_path / f"lbt-{tag}-c", tmp_path / f"lbt-{tag}-s"
    outer = tmp_path / f"lbt-{tag}-o"
    made: list[Path] = []
    try:
        for p in (client, servers, outer):
            netns.create(p)
            made.append(p)
        cdev, sdev = f"lbt{tag}c", f"lbt{tag}s"
        ns_run(client, "ip", "link", "add", cdev, "type", "veth", "peer", "name", sdev, "netns", str(servers))
        ns_run(client, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", cdev)
        for ip in SERVER_IPS:
            ns_run(servers, "ip", "addr", "add", f"{ip}/24", "dev", sdev)
        for ns, dev in ((client, cdev), (servers, sdev)):
            ns_run(ns, "ip", "link", "set", "lo", "up")
            ns_run(ns, "ip", "link", "set", dev, "up")
        # the client needs a route to the VIPs for connect() to get as far as the nat output hook
        ns_run(client, "ip", "route", "add", "10.96.0.0/16", "dev", cdev)
        # outer -> client (routing, forwarding on) -> servers: VIP traffic that is forwarded
        odev, rdev = f"lbt{tag}o", f"lbt{tag}r"
        ns_run(client, "ip", "link", "add", rdev, "type", "veth", "peer", "name", odev, "netns", str(outer))
        ns_run(client, "ip", "addr", "add", f"{ROUTER_IP}/24", "dev", rdev)
        ns_run(client, "ip", "link", "set", rdev, "up")
        ns_run(client, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns_run(outer, "ip", "addr", "add", f"{OUTER_IP}/24", "dev", odev)
        ns_run(outer, "ip", "link", "set", "lo", "up")
        ns_run(outer, "ip", "link", "set", odev, "up")
        ns_run(outer, "ip", "route", "add", "10.96.0.0/16", "via", ROUTER_IP)
        ns_run(servers, "ip", "route", "add", "10.78.0.0/24", "via", CLIENT_IP)
        yield Lab(tag, client, servers, outer)
    finally:
        for p in made:
            netns.remove(p)
        assert not any(netns.is_mountpoint(p) or p.exists() for p in made)


@pytest.fixture
def lb(lab: Lab) -> Iterator[LoadBalancer]:
    balancer = LoadBalancer(f"lbt-{lab.tag}", netns=lab.client)
    try:
        yield balancer
    finally:
        try:
            balancer.remove()
            assert balancer.table not in tables(lab.client)
        except (NftError, OSError, subprocess.SubprocessError) as e:  # the namespace goes anyway
            print(f"removing table {balancer.table} failed: {e}")


def tables(ns: Path) -> list[str]:
    out = ns_run(ns, "nft", "-j", "list", "tables").stdout
    return [o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o]


def make_socket(ns: Path, kind: socket.SocketKind, bind: tuple[str, int] | None = None) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setblocking(False)
            if bind is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(bind)
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
        except BaseException:
            s.close()
            raise
        return s

    return netns.run_in_netns(ns, body)


@pytest.fixture
async def tcp_servers(lab: Lab) -> AsyncIterator[None]:
    """On each server address, port 8080: send the address and a newline, then echo until EOF."""
    servers: list[asyncio.Server] = []

    def handler_for(ip: str):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(ip.encode() + b"\n")
                await writer.drain()
                while data := await reader.read(1024):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()
        return handle

    try:
        for ip in SERVER_IPS:
            servers.append(await asyncio.start_server(handler_for(ip), sock=make_socket(
                lab.servers, socket.SOCK_STREAM, (ip, 8080))))
        yield
    finally:
        for srv in servers:
            srv.close()
        for srv in servers:
            await srv.wait_closed()


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.transport: Any = None  # a _SelectorDatagramTransport (not a DatagramTransport subclass in 3.11)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(self.ip.encode(), addr)


@pytest.fixture
async def udp_servers(lab: Lab) -> AsyncIterator[None]:
    """On each server address, UDP port 5353: answer every datagram with the address."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    try:
        for ip in SERVER_IPS:
            sock = make_socket(lab.servers, socket.SOCK_DGRAM, (ip, 5353))
            tr, _ = await loop.create_datagram_endpoint(functools.partial(_Answer, ip), sock=sock)
            transports.append(tr)
        yield
    finally:
        for t in transports:
            t.close()


async def tcp_connect(lab: Lab, vip: str, port: int, timeout: float = 2.0, ns: Path | None = None) -> socket.socket:
    """A TCP socket of the client namespace (or ``ns``) connected to ``vip:port`` (TimeoutError if it hangs)."""
    s = make_socket(ns or lab.client, socket.SOCK_STREAM)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (vip, port)), timeout)
    except BaseException:
        s.close()
        raise
    return s


async def read_line(s: socket.socket, timeout: float = 2.0) -> str:
    loop = asyncio.get_running_loop()
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await asyncio.wait_for(loop.sock_recv(s, 100), timeout)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


async def who(lab: Lab, vip: str = VIP, port: int = 80, ns: Path | None = None) -> str:
    """Connect to the VIP once (from the client namespace or ``ns``) and return the address of the
    server that answered."""
    s = await tcp_connect(lab, vip, port, ns=ns)
    try:
        return await read_line(s)
    finally:
        s.close()


def web(*ips: str) -> dict[tuple[str, str, int], list[tuple[str, int]]]:
    return {(VIP, "tcp", 80): [(ip, 8080) for ip in ips], (EMPTY_VIP, "tcp", 81): []}


async def test_every_endpoint_answers_then_a_removed_one_never(lab: Lab, lb: LoadBalancer, tcp_servers: None) -> None:
    lb.apply(LBState.build(web(*SERVER_IPS)))
    assert lb.table in tables(lab.client)
    seen: set[str] = set()

    async def all_seen() -> bool:
        seen.add(await who(lab))
        return seen == set(SERVER_IPS)

    await wait_until(all_seen, timeout=20, interval=0, what="every endpoint answering on the VIP",
                     detail=lambda: f"seen {sorted(seen)}")

    # remove one endpoint by a delta: small, fast, only the changed service
    t0 = time.monotonic()
    script = lb.apply(LBState.build(web(*SERVER_IPS[1:])))
    took = time.monotonic() - t0
    assert took < 1.0, f"applying a one-endpoint delta took {took:.3f} s"
    assert "table" not in script.replace(f"ip {lb.table}", "") and EMPTY_VIP not in script
    answers = [await who(lab) for _ in range(60)]
    assert SERVER_IPS[0] not in answers
    assert set(answers) == set(SERVER_IPS[1:])  # 60 draws from 2: both come up

    # one endpoint left, then a new one: the rules follow
    lb.apply(LBState.build(web(SERVER_IPS[2])))
    assert {await who(lab) for _ in range(10)} == {SERVER_IPS[2]}
    lb.apply(LBState.build(web(SERVER_IPS[0], SERVER_IPS[2])))
    seen.clear()

    async def both_seen() -> bool:
        seen.add(await who(lab))
        return seen == {SERVER_IPS[0], SERVER_IPS[2]}

    await wait_until(both_seen, timeout=20, interval=0, what="the re-added endpoint answering",
                     detail=lambda: f"seen {sorted(seen)}")


async def test_a_service_without_endpoints_is_refused_at_once(lab: Lab, lb: LoadBalancer, tcp_servers: None) -> None:
    lb.apply(LBState.build({**web(*SERVER_IPS), (EMPTY_VIP, "udp", 53): []}))
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await tcp_connect(lab, EMPTY_VIP, 81)  # a hang would be TimeoutError after 2 s
        assert time.monotonic() - t0 < 1.0

    # UDP: the reject runs in this namespace's output hook, so the sender's send() itself fails
    # (EPERM, the packet was rejected locally); from another namespace it would see the ICMP
    # port-unreachable as ECONNREFUSED. Either way it fails at once instead of waiting.
    s = make_socket(lab.client, socket.SOCK_DGRAM)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(s, (EMPTY_VIP, 53))
        with pytest.raises((PermissionError, ConnectionRefusedError)):
            await loop.sock_sendall(s, b"q")
            await asyncio.wait_for(loop.sock_recv(s, 100), 2.0)
    finally:
        s.close()

    # a service losing its last endpoint is refused too; getting one back makes it answer
    lb.apply(LBState.build(web()))
    with pytest.raises(ConnectionRefusedError):
        await tcp_connect(lab, VIP, 80)
    lb.apply(LBState.build(web(SERVER_IPS[1])))
    assert await who(lab) == SERVER_IPS[1]


async def test_an_idle_vip_connection_has_no_900_s_cut(lab: Lab, lb: LoadBalancer, tcp_servers: None) -> None:
    if shutil.which("conntrack") is None:
        pytest.skip("needs conntrack (Debian package conntrack)")
    lb.apply(LBState.build(web(*SERVER_IPS)))
    s = await tcp_connect(lab, VIP, 80)
    try:
        ip = await read_line(s)
        assert ip in SERVER_IPS
        out = ns_run(lab.client, "conntrack", "-L", "-p", "tcp", "--orig-dst", VIP, check=False).stdout
        m = re.search(r"^tcp\s+6\s+(\d+)\s+ESTABLISHED .*dst=" + re.escape(VIP), out, re.M)
        assert m, out
        assert int(m.group(1)) > 900, out  # kernel conntrack timeout (432000 s), not IPVS's 900 s
        # an endpoint change elsewhere in the service does not break it
        others = [x for x in SERVER_IPS if x != ip]
        lb.apply(LBState.build(web(ip, others[0])))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(s, b"still here\n")
        assert await read_line(s) == "still here"
    finally:
        s.close()


async def test_udp_conntrack_of_a_removed_endpoint_is_deleted(lab: Lab, lb: LoadBalancer,
                                                              udp_servers: None) -> None:
    if shutil.which("conntrack") is None:
        pytest.skip("needs conntrack (Debian package conntrack)")
    svc = (VIP, "udp", 53)
    lb.apply(LBState.build({svc: [(ip, 5353) for ip in SERVER_IPS]}))
    loop = asyncio.get_running_loop()
    s = make_socket(lab.client, socket.SOCK_DGRAM)
    try:
        await loop.sock_connect(s, (VIP, 53))  # one source port: one conntrack entry

        async def ask() -> str:
            await loop.sock_sendall(s, b"q")
            return (await asyncio.wait_for(loop.sock_recv(s, 100), 2.0)).decode()

        first = await ask()
        assert first in SERVER_IPS
        assert {await ask() for _ in range(5)} == {first}  # the flow sticks to its endpoint
        # remove that endpoint (its server keeps running: only the deleted entry moves the flow)
        lb.apply(LBState.build({svc: [(ip, 5353) for ip in SERVER_IPS if ip != first]}))
        after = await ask()
        assert after in SERVER_IPS and after != first
        assert {await ask() for _ in range(5)} == {after}
    finally:
        s.close()


async def test_forwarded_vip_traffic_is_balanced_and_refused(lab: Lab, lb: LoadBalancer, tcp_servers: None,
                                                             udp_servers: None) -> None:
    """From a namespace routed through the table's one: DNAT on prerouting, reject on forward."""
    lb.apply(LBState.build({**web(*SERVER_IPS), (EMPTY_VIP, "udp", 53): []}))
    seen: set[str] = set()

    async def all_seen() -> bool:
        seen.add(await who(lab, ns=lab.outer))
        return seen == set(SERVER_IPS)

    await wait_until(all_seen, timeout=20, interval=0, what="every endpoint answering forwarded traffic",
                     detail=lambda: f"seen {sorted(seen)}")
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await tcp_connect(lab, EMPTY_VIP, 81, ns=lab.outer)
    s = make_socket(lab.outer, socket.SOCK_DGRAM)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(s, (EMPTY_VIP, 53))
        await loop.sock_sendall(s, b"q")
        with pytest.raises(ConnectionRefusedError):  # the ICMP port-unreachable
            await asyncio.wait_for(loop.sock_recv(s, 100), 2.0)
    finally:
        s.close()
    assert time.monotonic() - t0 < 2.0
