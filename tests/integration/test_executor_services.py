"""Integration test of the executor's service networking (issue 9, root): a real executor, runtime,
local bridge, VXLAN driver, VIP balancers, ingress sandbox and host-ports table on scratch host a;
host b built directly with the driver.

Hosts a and b are network namespaces joined by a veth underlay (MTU 1400; 192.0.2.1/.2,
``tests/integration/conftest.underlay_hosts``). Two overlay networks: ``backend`` (10.0.1.0/24,
VNI 4097) and ``ingress`` (10.0.2.0/24, VNI 4098). On a, the executor runs

- ``web``: busybox httpd on ``backend`` (10.0.1.5) and ``ingress`` (10.0.2.5), publishing 8080→80
  in host mode;
- ``client``: ``nslookup api`` (the embedded DNS answers the VIP 10.0.1.2) and ``wget http://api/``
  (the VIP's only endpoint is the "api" server on host b at 10.0.1.3); exits 0 when it got the page;

and the push carries the ingress entry (a's LB address 10.0.2.250, port 30080→80 with the web
task as endpoint). Proved from host b: the VIP works from inside a task (DNS → VIP → a task on
another host), the mesh port answers on a (through the sandbox), the host-mode port answers on a and
the web task sees b's own address; then the tasks are removed and the executor closed: no host
port, no mesh table, no sandbox, no overlay namespace is left on a.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlaynet import netns
from overlaynet.driver import EndpointConfig, NetworkConfig, mac_from_ip, peer_for
from overlaynet.mesh import IngressSandbox
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import (
    GW,
    SUBNET,
    UNDERLAY,
    executor_node,
    links,
    netns_socket,
    ns_run,
    overlay_network,
    overlay_task,
    scratch_executor,
    serve,
    tables,
    underlay_hosts,
)
from tests.waiting import wait_until
from worker.executor import container_id_for
from worker.hostports import HostPorts
from worker.vip import VipBalancers

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)
if shutil.which("nft") is None:  # pragma: no cover
    pytest.skip("needs nft (Debian package nftables)", allow_module_level=True)

NET_ID, ING_ID = "backendnet" + "0123456789abcde", "ingressnet" + "0123456789abcde"
NETWORK = overlay_network(NET_ID, "backend", 4097, SUBNET, GW)
INGRESS = overlay_network(ING_ID, "ingress", 4098, "10.0.2.0/24", "10.0.2.1")
VIP, API_B, WEB_A, WEB_A_ING, LB_A = "10.0.1.2", "10.0.1.3", "10.0.1.5", "10.0.2.5", "10.0.2.250"
CLIENT_A = "10.0.1.6"
BRIDGE_SUBNET, BRIDGE_GW = "10.233.6.0/24", "10.233.6.1"
TASK_WEB, TASK_CLIENT = "svcwebtask000000000000001", "svcclienttask000000000001"
NODE = executor_node("servicesnode", BRIDGE_SUBNET, BRIDGE_GW)


def http_get(ns: Path, ip: str, port: int, path: str = "/", timeout: float = 15.0) -> str:
    """GET ``http://ip:port/path`` from namespace ``ns``, retried until ``timeout``; the response."""
    def once() -> str:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.decode(errors="replace")

    deadline = time.monotonic() + timeout
    while True:
        try:
            got = netns.run_in_netns(ns, once)
            if " 200 " in got.split("\r\n", 1)[0]:
                return got
        except OSError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"GET http://{ip}:{port}{path}: no 200")
        time.sleep(0.2)


def api_server(ns: Path, ip: str, stop: threading.Event) -> socket.socket:
    """A tiny HTTP server at ``ip:80`` in ``ns`` answering ``api-on-b <peer ip>``."""
    srv = netns_socket(ns, socket.SOCK_STREAM, (ip, 80), listen=16, timeout=0.2, reuse=True)

    def answer(c: socket.socket, peer: Any) -> None:
        with c:
            c.settimeout(2)
            try:
                c.recv(4096)
                body = f"api-on-b {peer[0]}\n"
                c.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            except OSError:
                pass

    serve(stop, srv.accept, answer)
    return srv


def push(web_running: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(networks, ingress)`` as the dispatcher pushes them to a."""
    api_tasks = [{"Service": "api", "Slot": 1, "ID": "apitask0000000000000000001", "IP": API_B, "Hostname": None}]
    networks = {
        NET_ID: {"Network": NETWORK, "Peers": [{"IP": API_B, "MAC": mac_from_ip(API_B), "VTEP": UNDERLAY[1]}],
                 "DNS": {"Services": [{"Name": "api", "Aliases": [], "VIP": VIP}], "Tasks": api_tasks}},
        ING_ID: {"Network": INGRESS, "Peers": [], "DNS": {"Services": [], "Tasks": []}},
    }
    ingress = {"NetworkID": ING_ID, "Address": f"{LB_A}/24", "Ports": [
        {"ServiceID": "svcweb", "Service": "web", "Protocol": "tcp", "PublishedPort": 30080, "TargetPort": 80,
         "Endpoints": [WEB_A_ING] if web_running else []}]}
    return networks, ingress


@pytest.fixture
def hosts(scratch_dir: Path) -> Iterator[tuple[str, Path, Path]]:
    tag = "xsv" + os.urandom(3).hex()
    with underlay_hosts(scratch_dir, tag, UNDERLAY) as (a, b):
        try:
            yield tag, a, b
        finally:
            for sub in ("ov-a", "ov-b"):
                shutil.rmtree(scratch_dir / sub, ignore_errors=True)


def test_executor_vip_dns_mesh_and_host_port(hosts: tuple[str, Path, Path], scratch_dir: Path,
                                            busybox_archive: Path, cgroup_parent: str) -> None:
    tag, a, b = hosts
    driver_a = VxlanDriver(scratch_dir / "ov-a", host_netns=a)
    driver_b = VxlanDriver(scratch_dir / "ov-b", host_netns=b)
    api_ns = scratch_dir / f"{tag}api"
    stop = threading.Event()
    srv: socket.socket | None = None
    reports: list[tuple[str, dict[str, Any]]] = []
    sandbox = IngressSandbox(scratch_dir / "ing-a", host_veth=f"{tag}i", host_table=f"xsvmesh-{tag}",
                             lb_table=f"xsvlb-{tag}", nat_table=f"xsvnat-{tag}")
    hostports = HostPorts(table=f"xsvhp-{tag}")

    def states(tid: str) -> list[str]:
        return [s["State"] for t, s in reports if t == tid]

    try:
        netns.create(api_ns)
        ns_run(api_ns, "ip", "link", "set", "lo", "up")
        driver_b.ensure_network(NetworkConfig(NET_ID, SUBNET, GW, 4097, UNDERLAY[1]))
        driver_b.attach(EndpointConfig(NET_ID, "apiendpoint0001", str(api_ns), f"{API_B}/24"))
        driver_b.set_peers(NET_ID, [peer_for(WEB_A, UNDERLAY[0]), peer_for(CLIENT_A, UNDERLAY[0])])
        srv = api_server(api_ns, API_B, stop)

        async def main() -> None:
            async with scratch_executor(scratch_dir, busybox_archive, cgroup_parent, f"{tag}br", reports,
                                        overlay=driver_a, vips=VipBalancers(table=f"xsvvip-{tag}"),
                                        ingress_sandbox=sandbox, host_ports=hostports) as ex:
                web = overlay_task(TASK_WEB, "svcweb", ["httpd", "-f", "-p", "80", "-h", "/www"],
                                   (BRIDGE_SUBNET, BRIDGE_GW, "10.233.6.2/24"), NETWORK, WEB_A)
                web["NetworksAttachments"].append({"Network": INGRESS, "Addresses": [f"{WEB_A_ING}/24"]})
                web["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                              "PublishMode": "host"}]}
                client = overlay_task(TASK_CLIENT, "svcclient", [
                    # (busybox wget's -T crashes busybox-static 1.35 here: no timeout option)
                    "sh", "-c", "for i in $(seq 1 20); do nslookup api | grep -q 'Address: 10.0.1.2' && "
                    "wget -q -O /tmp/got http://api/ && grep -q api-on-b /tmp/got && exit 0; sleep 0.5; done; "
                    "nslookup api; ip addr; ip route; exit 1"],
                    (BRIDGE_SUBNET, BRIDGE_GW, "10.233.6.3/24"), NETWORK, CLIENT_A)
                networks, ingress = push(web_running=True)
                await ex.set_assignments(NODE, [web, client], networks, ingress=ingress, data_path_port=4789)
                await wait_until(lambda: states(TASK_WEB)[-1:] in (["running"], ["failed"], ["rejected"])
                                 and states(TASK_CLIENT)[-1:] in (["complete"], ["failed"], ["rejected"]), 60,
                                 "the web task to run and the client task to finish")
                assert states(TASK_WEB)[-1] == "running", reports
                # DNS gave the VIP, the VIP led to the api task on host b
                if states(TASK_CLIENT)[-1] != "complete":
                    logs = await asyncio.to_thread(ex.runtime.read_logs, container_id_for(TASK_CLIENT), -1, 0.0)
                    raise AssertionError(f"client: {states(TASK_CLIENT)}; its output: {logs}")
                await ex.net.wait_idle()
                # the mesh: a runs the web task, b asks a's published port; through a's sandbox
                got = await asyncio.to_thread(http_get, b, UNDERLAY[0], 30080)
                assert "shoal busybox" in got
                # host mode: a's port 8080 straight to the web container
                got = await asyncio.to_thread(http_get, b, UNDERLAY[0], 8080)
                assert "shoal busybox" in got
                assert f"xsvhp-{tag}" in tables(a) and f"xsvmesh-{tag}" in tables(a)
                # the tasks go: host port removed, mesh port rejects
                networks, ingress = push(web_running=False)
                await ex.set_assignments(NODE, [{**web, "DesiredState": "remove"},
                                                {**client, "DesiredState": "remove"}], networks, ingress=ingress)
                await wait_until(lambda: ex.task_states() == {}, 30, "removal")
                await ex.net.wait_idle()
                assert hostports.map.applied == {}
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.to_thread(http_get, b, UNDERLAY[0], 30080, "/", 0.5)

        netns.run_in_netns(a, lambda: asyncio.run(main()))
        # the executor closed (daemon stop): no mesh, no host ports, no sandbox; with the sandbox gone
        # the ingress network had no endpoint left, so its namespace went too
        left = tables(a)
        assert f"xsvhp-{tag}" not in left and f"xsvmesh-{tag}" not in left, left
        assert f"{tag}i" not in links(a)
        assert not sandbox.netns_path.exists()
        assert not netns.is_mountpoint(driver_a.netns_path(ING_ID))
        assert not netns.is_mountpoint(driver_a.netns_path(NET_ID))
    finally:
        stop.set()
        if srv is not None:
            time.sleep(0.3)
            srv.close()
        for step in (sandbox.remove, lambda: driver_a.cleanup_stale([]), lambda: driver_b.cleanup_stale([])):
            try:
                netns.run_in_netns(a, step)
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup: {e}")
        if netns.is_mountpoint(api_ns):
            netns.remove(api_ns)
