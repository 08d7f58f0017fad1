"""Integration test (root) of ``swarm leave`` then ``swarm init`` at once on one node, at the
executor's level (a hostile tester's finding): the ingress network of the new swarm takes the VNI
(4096) that the old swarm's ingress still holds while its tasks stop.

A real executor, runtime, local bridge, VXLAN driver and ingress sandbox on scratch host a
(``tests/integration/conftest.underlay_hosts``). Swarm 1: a task on ``ingress`` (ID 1, VNI 4096)
that ignores SIGTERM (busybox ``sleep`` as PID 1: it stops only at the end of its 3 s grace), and
the routing mesh on that network. Then the leave's empty assignment and, at once, swarm 2's push:
its ``ingress`` (ID 2, the same VNI 4096) with the mesh and a new task on it. Proved: the new task
runs (not ``rejected`` with "a VXLAN device with VNI 4096 … already exists") and the mesh comes up
on the new network by itself — the executor frees the VNI held by the network no longer known, and
a mesh update that failed meanwhile is retried. Then the leave as the daemon does it
(``wait_drained``, ``net.close``, ``drop_overlays``) leaves no overlay namespace behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlaynet import netns
from overlaynet.mesh import IngressSandbox
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import (
    executor_node,
    overlay_network,
    overlay_task,
    scratch_executor,
    underlay_hosts,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)
if shutil.which("nft") is None:  # pragma: no cover
    pytest.skip("needs nft (Debian package nftables)", allow_module_level=True)

OLD_ING, NEW_ING = "oldingress" + "0123456789abcde", "newingress" + "0123456789abcde"
OLD = overlay_network(OLD_ING, "ingress", 4096, "10.0.0.0/24", "10.0.0.1")
NEW = overlay_network(NEW_ING, "ingress", 4096, "10.0.0.0/24", "10.0.0.1")
BRIDGE_SUBNET, BRIDGE_GW = "10.233.7.0/24", "10.233.7.1"
NODE = executor_node("leavenode", BRIDGE_SUBNET, BRIDGE_GW)
T_OLD, T_NEW = "oldswarmtask0000000000001", "newswarmtask0000000000001"


def ingress_push(net: dict[str, Any], endpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    networks = {net["ID"]: {"Network": net, "Peers": [], "DNS": {"Services": [], "Tasks": []}}}
    ingress = {"NetworkID": net["ID"], "Address": "10.0.0.250/24", "Ports": [
        {"ServiceID": "svcweb", "Service": "web", "Protocol": "tcp", "PublishedPort": 30081, "TargetPort": 80,
         "Endpoints": [endpoint]}]}
    return networks, ingress


@pytest.fixture
def host_a(scratch_dir: Path) -> Iterator[tuple[str, Path]]:
    tag = "xlv" + os.urandom(3).hex()
    with underlay_hosts(scratch_dir, tag) as (a, _b):
        yield tag, a


def test_leave_then_init_at_once_the_new_ingress_takes_the_vni(host_a: tuple[str, Path], scratch_dir: Path,
                                                              busybox_archive: Path, cgroup_parent: str) -> None:
    tag, a = host_a
    driver = VxlanDriver(scratch_dir / "ov-a", host_netns=a)
    sandbox = IngressSandbox(scratch_dir / "ing-a", host_veth=f"{tag}i", host_table=f"xlvmesh-{tag}",
                             lb_table=f"xlvlb-{tag}", nat_table=f"xlvnat-{tag}")
    reports: list[tuple[str, dict[str, Any]]] = []

    def states(tid: str) -> list[str]:
        return [s["State"] for t, s in reports if t == tid]

    async def main() -> None:
        async with scratch_executor(scratch_dir, busybox_archive, cgroup_parent, f"{tag}br", reports,
                                    overlay=driver, ingress_sandbox=sandbox) as ex:
            old = overlay_task(T_OLD, "svcweb", ["sleep", "600"], (BRIDGE_SUBNET, BRIDGE_GW, "10.233.7.2/24"),
                               OLD, "10.0.0.5")
            old["Spec"]["ContainerSpec"]["StopGracePeriod"] = 3_000_000_000
            networks, ingress = ingress_push(OLD, "10.0.0.5")
            await ex.set_assignments(NODE, [old], networks, ingress=ingress)
            await wait_until(lambda: states(T_OLD)[-1:] == ["running"], 60, "the old swarm's task to run")
            await ex.net.wait_idle()
            assert ex.net.mesh is not None and ex.net.mesh._up
            # swarm leave (the old code returned here, the task still stopping) and swarm init at once
            await ex.set_assignments({}, [], networks={})
            new = overlay_task(T_NEW, "svcweb", ["sleep", "600"], (BRIDGE_SUBNET, BRIDGE_GW, "10.233.7.3/24"),
                               NEW, "10.0.0.6")
            networks, ingress = ingress_push(NEW, "10.0.0.6")
            t0 = time.monotonic()
            await ex.set_assignments(NODE, [new], networks, ingress=ingress)
            await wait_until(lambda: states(T_NEW)[-1:] in (["running"], ["rejected"], ["failed"]), 60,
                             "the new swarm's task to start")
            assert states(T_NEW)[-1] == "running", reports
            mesh = ex.net.mesh
            await wait_until(lambda: mesh._up and mesh.endpoint is not None and mesh.endpoint.network_id == NEW_ING,
                             20, "the routing mesh on the new ingress")
            assert time.monotonic() - t0 < 15
            assert netns.is_mountpoint(driver.netns_path(NEW_ING))
            assert not netns.is_mountpoint(driver.netns_path(OLD_ING))  # freed for the new network
            await wait_until(lambda: T_OLD not in ex.task_states(), 30, "the old task's removal")
            # swarm leave as the daemon does it: returns with every task and namespace gone
            await ex.set_assignments({}, [], networks={})
            assert await ex.wait_drained() is True
            assert ex.task_states() == {}
            await ex.net.wait_idle()
            await ex.net.close()
            await ex.drop_overlays()
            left = sorted(p.name for p in driver.netns_dir.iterdir()) if driver.netns_dir.is_dir() else []
            assert left == [], left
            assert not sandbox.netns_path.exists()

    try:
        netns.run_in_netns(a, lambda: asyncio.run(main()))
    finally:
        for step in (sandbox.remove, lambda: driver.cleanup_stale([])):
            try:
                netns.run_in_netns(a, step)
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup: {e}")
        shutil.rmtree(scratch_dir / "ov-a", ignore_errors=True)
