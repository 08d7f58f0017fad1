"""Integration tests of the node's service networking (issue 9, root): service VIPs in a task's
namespace, the ingress routing mesh, host-mode ports and egress of an overlay task, on real
namespaces, VXLAN and nftables.

Two scratch "hosts" a and b (network namespaces ``snt<rand>a``/``…b`` under the test's scratch
directory, joined by a veth underlay of MTU 1400 with 192.0.2.1/24 and 192.0.2.2/24, built by
``tests/integration/conftest.underlay_hosts``); a VXLAN driver per host (namespace files under the
scratch directory); bare "task" namespaces plugged into overlay networks with the driver; small
TCP/UDP servers made inside namespaces (a socket keeps the namespace it was made in) that answer
``"<own ip> <peer ip>"``. Every namespace, link and table made here lives inside the scratch
namespaces or is removed in a ``finally``; nothing touches the host's namespace, the lab's
``shoal-h*``/``shoal-lab0`` or ``shoal0``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlaynet import netns
from overlaynet.bridge import LocalBridge
from overlaynet.driver import Attachment, EndpointConfig, NetworkConfig, peer_for
from overlaynet.mesh import IngressSandbox
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import (
    UNDERLAY,
    links,
    netns_socket,
    ns_run,
    overlay_network,
    serve,
    tables,
    underlay_hosts,
)
from worker.hostports import HostPorts
from worker.mesh import Mesh
from worker.vip import VipBalancers

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)
if shutil.which("nft") is None:  # pragma: no cover
    pytest.skip("needs nft (Debian package nftables)", allow_module_level=True)

A_IP, B_IP = UNDERLAY
NODE_A = {"ID": "nodea", "Status": {"State": "ready", "Addr": A_IP}}


class Servers:
    """TCP servers (and UDP answerers) inside namespaces: each connection / datagram gets
    ``"<ip> <peer ip>"``. ``close()`` stops them all."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()

    def _socket(self, ns: Path, kind: int, ip: str, port: int, **opts: Any) -> socket.socket:
        s = netns_socket(ns, kind, (ip, port), **opts)
        self.socks.append(s)
        return s

    def tcp(self, ns: Path, ip: str, port: int) -> None:
        s = self._socket(ns, socket.SOCK_STREAM, ip, port, listen=64, timeout=0.2, reuse=True)

        def answer(c: socket.socket, peer: Any) -> None:
            with c:
                c.sendall(f"{ip} {peer[0]}\n".encode())

        serve(self._stop, s.accept, answer)

    def hold(self, ns: Path, ip: str, port: int) -> None:
        """A listener that never accepts: the kernel completes handshakes, connections stay open."""
        self._socket(ns, socket.SOCK_STREAM, ip, port, listen=8)

    def udp(self, ns: Path, ip: str, port: int) -> None:
        s = self._socket(ns, socket.SOCK_DGRAM, ip, port, timeout=0.2)
        serve(self._stop, lambda: s.recvfrom(2048), lambda _, peer: s.sendto(f"{ip} {peer[0]}".encode(), peer))

    def close(self) -> None:
        self._stop.set()
        time.sleep(0.3)
        for s in self.socks:
            s.close()


def tcp_get(ns: Path, ip: str, port: int, timeout: float = 3.0) -> str:
    """Connect from namespace ``ns`` to ``ip:port``; return the line served. Raises OSError
    (ConnectionRefusedError for a reset, TimeoutError when it hangs)."""
    def body() -> str:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip()
    return netns.run_in_netns(ns, body)


def udp_get(ns: Path, ip: str, port: int, timeout: float = 2.0) -> str:
    with netns_socket(ns, socket.SOCK_DGRAM, timeout=timeout) as s:
        s.sendto(b"?", (ip, port))
        return s.recv(256).decode()


def refused(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except ConnectionRefusedError:
        return True
    return False


class World:
    """Hosts a and b, a VXLAN driver on each, and bare namespaces made with :meth:`ns`."""

    def __init__(self, root: Path, tag: str) -> None:
        self.root, self.tag = root, tag
        self.a, self.b = root / f"{tag}a", root / f"{tag}b"
        self.drv = {"a": VxlanDriver(root / "ov-a", host_netns=self.a),
                    "b": VxlanDriver(root / "ov-b", host_netns=self.b)}
        self.made: list[Path] = []

    def ns(self, name: str) -> Path:
        p = self.root / f"{self.tag}{name}"
        netns.create(p)
        self.made.append(p)
        ns_run(p, "ip", "link", "set", "lo", "up")
        return p

    def wire_to_a(self, ns: Path, dev: str, prefix: str) -> None:
        """A veth from host a (``dev``, ``<prefix>.1/24``) to ``ns`` (``eth0``, ``<prefix>.2/24``,
        its default route via a): as a task's local bridge."""
        ns_run(self.a, "ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", str(ns))
        ns_run(self.a, "ip", "addr", "add", f"{prefix}.1/24", "dev", dev)
        ns_run(self.a, "ip", "link", "set", dev, "up")
        ns_run(ns, "ip", "addr", "add", f"{prefix}.2/24", "dev", "eth0")
        ns_run(ns, "ip", "link", "set", "eth0", "up")
        ns_run(ns, "ip", "route", "add", "default", "via", f"{prefix}.1")

    def sandbox(self, **extra: Any) -> IngressSandbox:
        """Host a's ingress sandbox (under ``mesh-a``, tables named after the tag); ``extra`` go to
        IngressSandbox (``local_table``)."""
        return IngressSandbox(self.root / "mesh-a", host_netns=self.a, host_veth=f"{self.tag}i",
                              host_table=f"mesht-{self.tag}", lb_table=f"meshlb-{self.tag}",
                              nat_table=f"meshnat-{self.tag}", **extra)

    def mesh(self, sandbox: IngressSandbox, **extra: Any) -> Mesh:
        """A Mesh on ``sandbox`` whose endpoints host a's driver attaches to the ingress network,
        with b's task (ING_TASK_B) as the peer; ``extra`` go to Mesh (``local_addresses``)."""
        drv = self.drv["a"]

        async def attach(cfg: NetworkConfig, ep: EndpointConfig) -> Attachment:
            drv.ensure_network(cfg)
            drv.set_peers(cfg.network_id, [peer_for(ING_TASK_B, B_IP)])
            return drv.attach(ep)

        async def detach(ep: EndpointConfig) -> None:
            drv.detach(ep)

        return Mesh(sandbox, attach, detach, **extra)


@pytest.fixture
def world(scratch_dir: Path) -> Iterator[World]:
    tag = "snt" + os.urandom(3).hex()
    w = World(scratch_dir, tag)
    with underlay_hosts(scratch_dir, tag, UNDERLAY):
        errors: list[BaseException] = []
        try:
            yield w
        finally:
            for d in w.drv.values():
                try:
                    d.cleanup_stale([])
                except Exception as e:  # noqa: BLE001 - keep cleaning
                    errors.append(e)
            for p in w.made:
                try:
                    netns.remove(p)
                except OSError as e:
                    errors.append(e)
            for sub in ("ov-a", "ov-b", "mesh-a"):
                shutil.rmtree(scratch_dir / sub, ignore_errors=True)
        assert not errors, errors


def stop_mesh_test(servers: Servers, sandbox: IngressSandbox) -> None:
    """The end of a mesh test, even on failure: ``servers`` closed, then host a's ``sandbox``
    removed (a failure is printed: the scratch hosts go anyway)."""
    servers.close()
    try:
        sandbox.remove()
    except Exception as e:  # noqa: BLE001 - the scratch hosts go anyway
        print(f"sandbox cleanup: {e}")


def plug(w: World, host: str, net: NetworkConfig, ns: Path, ip: str, ifname: str = "eth1") -> Attachment:
    w.drv[host].ensure_network(net)
    ep_id = ns.name[len(w.tag):] + w.tag + "x" * 12  # the first 10 characters name the veth: differ per ns
    return w.drv[host].attach(EndpointConfig(net.network_id, ep_id, str(ns), f"{ip}/24", ifname))


def dns_push(nid: str, network: dict[str, Any], services: list[tuple[str, str | None]],
             tasks: list[tuple[str, str]]) -> dict[str, Any]:
    return {nid: {"Network": network, "Peers": [],
                  "DNS": {"Services": [{"Name": n, "Aliases": [], "VIP": v} for n, v in services],
                          "Tasks": [{"Service": s, "Slot": i, "ID": f"{s}{i:022d}", "IP": ip, "Hostname": None}
                                    for i, (s, ip) in enumerate(tasks, start=1)]}}}


# -- 1. service VIPs in a task's namespace --------------------------------------------------------

VIP_NET = "vipnet" + "0123456789abcdefghi"
VIP, EMPTY_VIP = "10.0.9.2", "10.0.9.3"
CLIENT, SRV_A, SRV_B = "10.0.9.4", "10.0.9.5", "10.0.9.6"


def test_vip_any_port_across_hosts_deltas_reject_and_no_idle_cut(world: World) -> None:
    w = world
    network = overlay_network(VIP_NET, "vipnet", 4301, "10.0.9.0/24", "10.0.9.1")
    cfg = {h: NetworkConfig(VIP_NET, "10.0.9.0/24", "10.0.9.1", 4301, ip) for h, ip in zip("ab", UNDERLAY, strict=True)}
    client, sa, sb = w.ns("cl"), w.ns("sa"), w.ns("sb")
    plug(w, "a", cfg["a"], client, CLIENT)
    plug(w, "a", cfg["a"], sa, SRV_A)
    plug(w, "b", cfg["b"], sb, SRV_B)
    w.drv["a"].set_peers(VIP_NET, [peer_for(SRV_B, B_IP)])
    w.drv["b"].set_peers(VIP_NET, [peer_for(CLIENT, A_IP), peer_for(SRV_A, A_IP)])
    servers = Servers()
    try:
        for ns, ip in ((sa, SRV_A), (sb, SRV_B)):
            servers.tcp(ns, ip, 80)
            servers.tcp(ns, ip, 8080)
            servers.udp(ns, ip, 5353)
            servers.hold(ns, ip, 7000)
        both = dns_push(VIP_NET, network, [("api", VIP), ("idle", EMPTY_VIP), ("db", None)],
                        [("api", SRV_A), ("api", SRV_B), ("db", CLIENT)])
        vb = VipBalancers(table=f"vipt-{w.tag}")

        async def main() -> None:
            await vb.add("clienttask00000000000001", str(client), [VIP_NET], both)
            # any port of the VIP goes to the same port of a task, on either host
            for port in (80, 8080):
                seen = {tcp_get(client, VIP, port).split()[0] for _ in range(30)}
                assert seen == {SRV_A, SRV_B}, (port, seen)
            assert tcp_get(client, VIP, 80).split()[1] == CLIENT  # no SNAT: the task sees the client
            assert {udp_get(client, VIP, 5353).split()[0] for _ in range(20)} <= {SRV_A, SRV_B}
            # a VIP without tasks rejects at once (TCP reset), it does not hang
            t0 = time.monotonic()
            assert refused(lambda: tcp_get(client, EMPTY_VIP, 80))
            assert time.monotonic() - t0 < 1.0
            # a TCP connection through the VIP gets the kernel's established timeout, not IPVS's 900 s
            holder = netns.run_in_netns(client, lambda: socket.create_connection((VIP, 7000), timeout=3))
            try:
                ct = ns_run(client, "conntrack", "-L", "-p", "tcp", "--orig-dst", VIP, check=False).stdout
                timeouts = [int(line.split()[2]) for line in ct.splitlines() if "ESTABLISHED" in line]
                assert timeouts and min(timeouts) > 900, ct
            finally:
                holder.close()
            # a UDP flow that went to SRV_A (a socket keeps its flow, so conntrack keeps its endpoint)
            udp_a = None
            for _ in range(40):
                sock = netns_socket(client, socket.SOCK_DGRAM, timeout=2)
                sock.connect((VIP, 5353))
                sock.send(b"?")
                if sock.recv(256).decode().split()[0] == SRV_A:
                    udp_a = sock
                    break
                sock.close()
            assert udp_a is not None
            # the task set changes: one delta; within 1 s only SRV_B answers
            one = dns_push(VIP_NET, network, [("api", VIP), ("idle", EMPTY_VIP)], [("api", SRV_B)])
            t0 = time.monotonic()
            await vb.update(one)
            assert time.monotonic() - t0 < 1.0
            assert {tcp_get(client, VIP, 80).split()[0] for _ in range(15)} == {SRV_B}
            # ... and the UDP flow that went to SRV_A had its conntrack entry deleted: it moves to SRV_B
            udp_a.send(b"?")
            assert udp_a.recv(256).decode().split()[0] == SRV_B
            udp_a.close()
            await vb.remove("clienttask00000000000001")
            assert f"vipt-{w.tag}" not in tables(client)

        asyncio.run(main())
    finally:
        servers.close()


# -- 2. the ingress routing mesh -------------------------------------------------------------------

ING_NET = "ingressnet" + "0123456789abcde"
ING_LB_A, ING_TASK_B = "10.0.10.250", "10.0.10.7"


def test_mesh_answers_on_the_node_without_a_task_and_tears_down(world: World) -> None:
    w = world
    network = overlay_network(ING_NET, "ingress", 4302, "10.0.10.0/24", "10.0.10.1")
    cfg_b = NetworkConfig(ING_NET, "10.0.10.0/24", "10.0.10.1", 4302, B_IP)
    task_b = w.ns("tb")
    plug(w, "b", cfg_b, task_b, ING_TASK_B)
    w.drv["b"].set_peers(ING_NET, [peer_for(ING_LB_A, A_IP)])  # a's sandbox: a peer of the ingress network
    sandbox = w.sandbox()
    mesh = w.mesh(sandbox)
    node = NODE_A
    nets = {ING_NET: {"Network": network, "Peers": []}}
    port = {"ServiceID": "svcweb", "Service": "web", "Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80,
            "Endpoints": [ING_TASK_B]}
    empty = {**port, "PublishedPort": 8081, "Endpoints": []}
    ingress = {"NetworkID": ING_NET, "Address": f"{ING_LB_A}/24", "Ports": [port, empty]}
    servers = Servers()
    try:
        servers.tcp(task_b, ING_TASK_B, 80)

        async def main() -> None:
            await mesh.update(ingress, nets, node, 4789)
            assert mesh.endpoint is not None
            # MTU: the overlay's (1400 - 50) on the sandbox's both interfaces and the host end
            sl = links(sandbox.netns_path)
            assert sl["eth0"]["mtu"] == sl["eth1"]["mtu"] == 1350, sl
            assert links(w.a)[f"{w.tag}i"]["mtu"] == 1350
            # host a runs no web task: from b (prerouting) and from a itself (output) the published port
            # answers, through the sandbox (the task sees a's LB address: Swarm's SNAT)
            assert tcp_get(w.b, A_IP, 8080) == f"{ING_TASK_B} {ING_LB_A}"
            assert tcp_get(w.a, A_IP, 8080) == f"{ING_TASK_B} {ING_LB_A}"
            # a port whose service has no task: rejected at once
            t0 = time.monotonic()
            assert refused(lambda: tcp_get(w.b, A_IP, 8081))
            assert time.monotonic() - t0 < 1.0
            # the task goes: the port rejects (a delta, within 1 s)
            t0 = time.monotonic()
            await mesh.update({**ingress, "Ports": [{**port, "Endpoints": []}, empty]}, nets, node, 4789)
            assert time.monotonic() - t0 < 1.0
            assert refused(lambda: tcp_get(w.b, A_IP, 8080))
            await mesh.update(ingress, nets, node, 4789)
            assert tcp_get(w.b, A_IP, 8080).startswith(ING_TASK_B)
            # a restarted daemon (a new Mesh on the same sandbox, nothing remembered): its first push
            # removes the leftovers and builds anew
            again = w.mesh(w.sandbox())
            await again.update(ingress, nets, node, 4789)
            assert again.endpoint is not None
            assert tcp_get(w.b, A_IP, 8080).startswith(ING_TASK_B)
            # the ingress entry disappears: everything goes
            await mesh.update(None, nets, node, 4789)
            assert not netns.is_mountpoint(sandbox.netns_path) and not sandbox.netns_path.exists()
            assert f"{w.tag}i" not in links(w.a)
            assert f"mesht-{w.tag}" not in tables(w.a)
            assert not netns.is_mountpoint(w.drv["a"].netns_path(ING_NET))  # its last endpoint: the network goes
            # built again and closed (daemon stop): nothing left either
            await mesh.update(ingress, nets, node, 4789)
            assert tcp_get(w.b, A_IP, 8080).startswith(ING_TASK_B)
            await mesh.close()
            assert not sandbox.netns_path.exists() and f"{w.tag}i" not in links(w.a)
            assert f"mesht-{w.tag}" not in tables(w.a)

        asyncio.run(main())
    finally:
        stop_mesh_test(servers, sandbox)


# -- 3. host-mode ports ------------------------------------------------------------------------------


def test_host_mode_port_keeps_the_client_address_and_goes_with_the_task(world: World) -> None:
    w = world
    cont = w.ns("hc")
    w.wire_to_a(cont, f"{w.tag}h", "10.233.9")
    ns_run(w.a, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    hp = HostPorts(table=f"hpt-{w.tag}")
    task = {"ID": "hosttask00000000000000001", "Endpoint": {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}}
    servers = Servers()
    try:
        servers.tcp(cont, "10.233.9.2", 80)
        netns.run_in_netns(w.a, lambda: hp.sync([(task, "10.233.9.2")]))
        # from b: answered by the container, which sees b's own address (no masquerade)
        assert tcp_get(w.b, A_IP, 8080) == f"10.233.9.2 {B_IP}"
        # the task stops: its port goes
        netns.run_in_netns(w.a, lambda: hp.sync([]))
        assert refused(lambda: tcp_get(w.b, A_IP, 8080))
        netns.run_in_netns(w.a, hp.remove)
        assert f"hpt-{w.tag}" not in tables(w.a)
    finally:
        servers.close()
        ns_run(w.a, "nft", "delete", "table", "ip", f"hpt-{w.tag}", check=False)


# -- 4. egress of a task on an overlay network ----------------------------------------------------------

EG_NET = "egressnet" + "0123456789abcdef"


def test_overlay_task_reaches_outside_through_its_local_bridge(world: World, scratch_dir: Path) -> None:
    w = world
    bridge = LocalBridge(f"{w.tag}br", scratch_dir / "exec-eg")
    cid = "egresscontainer000000000000000001"
    servers = Servers()
    try:
        def make() -> str:
            bridge.ensure("10.233.8.0/24", "10.233.8.1")
            return bridge.attach(cid, "10.233.8.2/24", "10.233.8.1")

        path = Path(netns.run_in_netns(w.a, make))
        plug(w, "a", NetworkConfig(EG_NET, "10.0.11.0/24", "10.0.11.1", 4303, A_IP), path, "10.0.11.5")
        routes = json.loads(ns_run(path, "ip", "-j", "route", "show", "default").stdout)
        assert [r.get("dev") for r in routes] == ["eth0"]  # the default route stays on the local bridge
        servers.tcp(w.b, B_IP, 9000)  # "outside the cluster": an address on the underlay
        assert tcp_get(path, B_IP, 9000) == f"{B_IP} {A_IP}"  # masqueraded to the node's address
    finally:
        servers.close()
        try:
            netns.run_in_netns(w.a, bridge.cleanup)
        except Exception as e:  # noqa: BLE001 - the scratch hosts go anyway
            print(f"bridge cleanup: {e}")


# -- 2b. the mesh keeping the client's address (beyond Swarm) --------------------------------------------

ING_TASK_A = "10.0.10.8"


def test_mesh_keeps_the_client_address_when_a_local_task_exists(world: World) -> None:
    w = world
    network = overlay_network(ING_NET, "ingress", 4304, "10.0.10.0/24", "10.0.10.1")
    cfg = {h: NetworkConfig(ING_NET, "10.0.10.0/24", "10.0.10.1", 4304, ip) for h, ip in zip("ab", UNDERLAY, strict=True)}
    task_b, task_a = w.ns("tb"), w.ns("ta")
    plug(w, "b", cfg["b"], task_b, ING_TASK_B)
    w.drv["b"].set_peers(ING_NET, [peer_for(ING_LB_A, A_IP), peer_for(ING_TASK_A, A_IP)])
    # the local task on a: eth0 on a veth to host a (its "local bridge"), default route there; eth1 on ingress
    w.wire_to_a(task_a, f"{w.tag}t", "10.233.7")
    plug(w, "a", cfg["a"], task_a, ING_TASK_A)
    sandbox = w.sandbox(local_table=f"meshloc-{w.tag}")
    local = {ING_TASK_A: "10.233.7.2"}
    mesh = w.mesh(sandbox, local_addresses=lambda: dict(local))
    node = NODE_A
    nets = {ING_NET: {"Network": network, "Peers": []}}
    port = {"Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80, "Endpoints": [ING_TASK_B, ING_TASK_A]}
    ingress = {"NetworkID": ING_NET, "Address": f"{ING_LB_A}/24", "Ports": [port]}
    servers = Servers()
    try:
        servers.tcp(task_b, ING_TASK_B, 80)
        servers.tcp(task_a, "0.0.0.0", 80)

        async def main() -> None:
            await mesh.update(ingress, nets, node, 4789)
            # a runs a task of the service: a's port goes to it, and it sees the client's own address
            assert {tcp_get(w.b, A_IP, 8080) for _ in range(10)} == {f"0.0.0.0 {B_IP}"}
            assert f"meshloc-{w.tag}" in tables(w.a)
            # the local task stops: a's port goes through the sandbox to b's task again (address hidden)
            local.clear()
            await mesh.update({**ingress, "Ports": [{**port, "Endpoints": [ING_TASK_B]}]}, nets, node, 4789)
            assert tcp_get(w.b, A_IP, 8080) == f"{ING_TASK_B} {ING_LB_A}"
            await mesh.close()
            assert f"meshloc-{w.tag}" not in tables(w.a) and f"mesht-{w.tag}" not in tables(w.a)

        asyncio.run(main())
    finally:
        stop_mesh_test(servers, sandbox)
