"""Integration test of the executor on an overlay network (issue 9, root): a real executor, runtime,
local bridge and VXLAN driver on scratch host "a"; the peer on scratch host "b" built directly with
the driver.

Two "hosts" are network namespaces (files under the test's scratch directory, ``wxo<rand>a`` /
``…b``) joined by a veth pair (MTU 1400) with underlay addresses 192.0.2.1/24 and 192.0.2.2/24, as
tests/integration/test_vxlan.py builds them. On a, the executor's event loop runs in a thread that
joined a's namespace (as tests/integration/test_executor.py), with a local bridge of its own name
(``wxo<rand>br``) and a VxlanDriver told that a is its host. On b, a driver makes the same overlay
network (VNI 4097, 10.0.1.0/24) and plugs a bare "container" namespace (10.0.1.3) into it.

The executor gets tasks whose ``NetworksAttachments`` carry the bridge (eth0) and the overlay
(eth1), and an assignment whose ``networks`` names b's endpoint as the peer; b's driver is told
the executor's tasks are peers. Proved: a task's container pings 10.0.1.3 across the underlay (its
process exits 0), b reaches another task's httpd at its overlay address, the interface is eth1 with
MTU 1350; removing the tasks removes the endpoints and, with the last one, the network on a.
Everything is removed at the end, also on failure; nothing touches the host's namespace, the lab's
``shoal-h*``, ``shoal-lab0`` or ``shoal0``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlaynet import netns
from overlaynet.driver import EndpointConfig, NetworkConfig, mac_from_ip, peer_for
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import (
    GW,
    SUBNET,
    UNDERLAY,
    executor_node,
    links,
    ns_run,
    overlay_network,
    overlay_task,
    scratch_executor,
    underlay_hosts,
)
from tests.integration.test_executor import fetch
from tests.waiting import wait_until
from worker.executor import container_id_for

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)

NET_ID = "ovnet" + "0123456789abcdefghij"  # 25 characters, as a stored network's ID
VNI = 4097
B_ADDR = "10.0.1.3"
TASK_WEB, TASK_PING = "taskweb0000000000000000001", "taskping000000000000000002"
WEB_ADDR, PING_ADDR = "10.0.1.5", "10.0.1.6"
BRIDGE_SUBNET, BRIDGE_GW = "10.233.7.0/24", "10.233.7.1"

NETWORK = overlay_network(NET_ID, "ovtest", VNI, SUBNET, GW)
NODE = executor_node("overlaynode", BRIDGE_SUBNET, BRIDGE_GW)
NETWORKS = {NET_ID: {"Network": NETWORK, "Peers": [{"IP": B_ADDR, "MAC": mac_from_ip(B_ADDR), "VTEP": UNDERLAY[1]}]}}


def task(tid: str, bridge_addr: str, overlay_addr: str, args: list[str]) -> dict[str, Any]:
    return overlay_task(tid, "svc-ovtest", args, (BRIDGE_SUBNET, BRIDGE_GW, bridge_addr), NETWORK, overlay_addr)


class Hosts:
    def __init__(self, root: Path, tag: str) -> None:
        self.root, self.tag = root, tag
        self.a, self.b, self.cb = root / f"{tag}a", root / f"{tag}b", root / f"{tag}cb"
        self.driver_a = VxlanDriver(root / "ov-a", host_netns=self.a)
        self.driver_b = VxlanDriver(root / "ov-b", host_netns=self.b)


@pytest.fixture
def hosts(scratch_dir: Path) -> Iterator[Hosts]:
    tag = "wxo" + os.urandom(3).hex()
    h = Hosts(scratch_dir, tag)
    with underlay_hosts(scratch_dir, tag, UNDERLAY):
        errors: list[Exception] = []
        try:
            netns.create(h.cb)
            ns_run(h.cb, "ip", "link", "set", "lo", "up")
            yield h
        finally:
            for d in (h.driver_a, h.driver_b):
                try:
                    d.cleanup_stale([])
                except Exception as e:  # noqa: BLE001 - keep cleaning
                    errors.append(e)
            if netns.is_mountpoint(h.cb):
                try:
                    netns.remove(h.cb)
                except OSError as e:
                    errors.append(e)
            for sub in ("ov-a", "ov-b"):
                shutil.rmtree(scratch_dir / sub, ignore_errors=True)
        assert not errors, errors


def test_executor_task_on_overlay_reaches_peer_across_underlay(hosts: Hosts, scratch_dir: Path,
                                                               busybox_archive: Path, cgroup_parent: str) -> None:
    h = hosts
    # host b: the network and its endpoint, built directly with the driver; the executor's tasks as peers
    h.driver_b.ensure_network(NetworkConfig(NET_ID, SUBNET, GW, VNI, UNDERLAY[1]))
    h.driver_b.attach(EndpointConfig(NET_ID, "peerendpoint0001", str(h.cb), f"{B_ADDR}/24"))
    h.driver_b.set_peers(NET_ID, [peer_for(WEB_ADDR, UNDERLAY[0]), peer_for(PING_ADDR, UNDERLAY[0])])

    reports: list[tuple[str, dict[str, Any]]] = []

    def states(tid: str) -> list[str]:
        return [s["State"] for t, s in reports if t == tid]

    async def main() -> None:
        async with scratch_executor(scratch_dir, busybox_archive, cgroup_parent, f"{h.tag}br", reports,
                                    overlay=h.driver_a) as ex:
            web = task(TASK_WEB, "10.233.7.2/24", WEB_ADDR, ["httpd", "-f", "-p", "80", "-h", "/www"])
            pinger = task(TASK_PING, "10.233.7.3/24", PING_ADDR,
                          ["sh", "-c", f"for i in 1 2 3 4 5 6 7 8 9 10; do ping -c1 -W1 {B_ADDR} && exit 0; done; exit 1"])
            await ex.set_assignments(NODE, [web, pinger], NETWORKS)
            await wait_until(lambda: states(TASK_WEB)[-1:] in (["running"], ["failed"], ["rejected"])
                             and states(TASK_PING)[-1:] in (["complete"], ["failed"], ["rejected"]), 60,
                             "the web task to run and the ping task to finish")
            assert states(TASK_WEB)[-1] == "running", reports
            assert states(TASK_PING)[-1] == "complete", reports  # ping from inside the container: exit 0

            # the web container: eth0 on the bridge, eth1 on the overlay (MTU 1400 - 50)
            cid = container_id_for(TASK_WEB)
            ifs = links(ex.bridge.netns_path(cid))
            assert "eth0" in ifs and "eth1" in ifs, ifs
            assert ifs["eth1"]["mtu"] == 1350 and ifs["eth1"]["address"] == mac_from_ip(WEB_ADDR)
            assert f"{WEB_ADDR}" in [a["local"] for a in ifs["eth1"]["addr_info"]]
            assert sorted(p.ip for p in h.driver_a.peers(NET_ID)) == [B_ADDR]

            # b's endpoint reaches the web task's httpd at its overlay address across the underlay
            body = await asyncio.to_thread(
                netns.run_in_netns, h.cb, lambda: asyncio.run(fetch(WEB_ADDR, "/", timeout=15)))
            assert "shoal busybox" in body

            # removal: endpoints detached; with the last one the network leaves host a
            await ex.set_assignments(NODE, [{**web, "DesiredState": "remove"}, {**pinger, "DesiredState": "remove"}],
                                     NETWORKS)
            await wait_until(lambda: ex.task_states() == {}, 30, "removal")
            assert not netns.is_mountpoint(h.driver_a.netns_path(NET_ID))
            assert h.driver_a.endpoints(NET_ID) == []

    netns.run_in_netns(h.a, lambda: asyncio.run(main()))
