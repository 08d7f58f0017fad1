"""Integration test of the executor's embedded DNS (issue 9, root): a real executor, runtime, local
bridge and VXLAN driver on a scratch host namespace (``wxd<rand>a``, with a veth pair as underlay,
192.0.2.1/24 on one end), as tests/integration/test_executor_overlay.py builds them (one host is enough here).

The executor's resolver reads a scratch resolv.conf naming 127.0.0.1, where the test runs a fake
upstream DNS inside the host namespace (``ext.shoal.test`` → 192.0.2.77, anything else NXDOMAIN).
A busybox task on an overlay network gets an assignment whose ``networks`` entry lists service
``api`` (VIP null) with tasks at 10.0.1.5 (the task itself) and 10.0.1.9. Proved, from inside the
container's network namespace at 127.0.0.11:53: ``api`` and ``tasks.api`` → both IPs (UDP and TCP),
a name outside the table is forwarded to the upstream, an unknown one gets NXDOMAIN at once; the
container's /etc/resolv.conf says ``nameserver 127.0.0.11`` / ``options ndots:0``; after removal the
resolver no longer answers there. Everything is removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from overlaynet import netns
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import (
    GW,
    SUBNET,
    UNDERLAY,
    executor_node,
    ns_run,
    overlay_network,
    overlay_task,
    scratch_executor,
)
from tests.waiting import wait_until
from worker.executor import container_id_for

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)

NET_ID = "dnsnet" + "0123456789abcdefghi"  # 25 characters, as a stored network's ID
VNI = 4099
TASK = "taskdns0000000000000000001"
TASK_ADDR, OTHER_ADDR = "10.0.1.5", "10.0.1.9"
BRIDGE_SUBNET, BRIDGE_GW = "10.233.9.0/24", "10.233.9.1"
EXT_NAME, EXT_ADDR = "ext.shoal.test.", "192.0.2.77"

NETWORK = overlay_network(NET_ID, "dnstest", VNI, SUBNET, GW)
NODE = executor_node("dnsnode", BRIDGE_SUBNET, BRIDGE_GW)
NETWORKS = {NET_ID: {"Network": NETWORK, "Peers": [], "DNS": {
    "Services": [{"Name": "api", "Aliases": [], "VIP": None}],
    "Tasks": [{"Service": "api", "Slot": 1, "ID": TASK, "IP": TASK_ADDR, "Hostname": None},
              {"Service": "api", "Slot": 2, "ID": "othertask000000000000000002", "IP": OTHER_ADDR,
               "Hostname": None}]}}}


def task(desired: str = "running") -> dict[str, Any]:
    return overlay_task(TASK, "svc-dnstest", ["sleep", "300"], (BRIDGE_SUBNET, BRIDGE_GW, "10.233.9.2/24"),
                        NETWORK, TASK_ADDR, desired)


@pytest.fixture
def host(scratch_dir: Path) -> Iterator[tuple[Path, str, VxlanDriver]]:
    tag = "wxd" + os.urandom(3).hex()
    a = scratch_dir / f"{tag}a"
    driver = VxlanDriver(scratch_dir / "ov-a", host_netns=a)
    made = False
    try:
        netns.create(a)
        made = True
        ns_run(a, "ip", "link", "set", "lo", "up")
        ns_run(a, "ip", "link", "add", f"{tag}u0", "type", "veth", "peer", "name", f"{tag}u1")
        ns_run(a, "ip", "addr", "add", f"{UNDERLAY[0]}/24", "dev", f"{tag}u0")
        for end in ("u0", "u1"):
            ns_run(a, "ip", "link", "set", f"{tag}{end}", "up")
        yield a, tag, driver
    finally:
        errors: list[Exception] = []
        try:
            driver.cleanup_stale([])
        except Exception as e:  # noqa: BLE001 - keep cleaning
            errors.append(e)
        if made:
            try:
                netns.remove(a)
            except OSError as e:
                errors.append(e)
        shutil.rmtree(scratch_dir / "ov-a", ignore_errors=True)
        assert not errors, errors



class FakeUpstream(asyncio.DatagramProtocol):
    """A DNS server knowing only EXT_NAME; NXDOMAIN for anything else."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.asked: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        q = dns.message.from_wire(data)
        name = q.question[0].name.to_text()
        self.asked.append(name)
        r = dns.message.make_response(q)
        if name.lower() == EXT_NAME:
            r.answer.append(dns.rrset.from_text(EXT_NAME, 30, "IN", "A", EXT_ADDR))
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(r.to_wire(), addr)


def ask(ns_path: str, name: str, tcp: bool = False) -> dns.message.Message:
    """Query 127.0.0.11:53 from a thread inside the container's network namespace."""
    q = dns.message.make_query(name, "A")
    if tcp:
        return netns.run_in_netns(ns_path, lambda: dns.query.tcp(q, "127.0.0.11", port=53, timeout=5))
    return netns.run_in_netns(ns_path, lambda: dns.query.udp(q, "127.0.0.11", port=53, timeout=5))


def ips(resp: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in resp.answer for r in rrset)


def test_executor_embedded_dns_answers_service_names_in_the_container(
        host: tuple[Path, str, VxlanDriver], scratch_dir: Path, busybox_archive: Path, cgroup_parent: str) -> None:
    a, tag, driver = host
    resolv = scratch_dir / "host-resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    reports: list[tuple[str, dict[str, Any]]] = []

    def states() -> list[str]:
        return [s["State"] for t, s in reports if t == TASK]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        upstream = FakeUpstream()
        up_transport, _ = await loop.create_datagram_endpoint(lambda: upstream, local_addr=("127.0.0.1", 53))
        try:
            async with scratch_executor(scratch_dir, busybox_archive, cgroup_parent, f"{tag}br", reports,
                                        overlay=driver, resolv_conf=str(resolv)) as ex:
                await ex.set_assignments(NODE, [task()], NETWORKS)
                await wait_until(lambda: states()[-1:] in (["running"], ["failed"], ["rejected"]), 60, "the task to run")
                assert states()[-1] == "running", reports
                cid = container_id_for(TASK)
                ns_path = str(ex.bridge.netns_path(cid))
                pid = [s for t, s in reports if t == TASK][-1]["ContainerStatus"]["PID"]
                conf = Path(f"/proc/{pid}/root/etc/resolv.conf").read_text()
                assert "nameserver 127.0.0.11" in conf.splitlines() and "options ndots:0" in conf.splitlines(), conf
                assert "nameserver 127.0.0.1" not in conf.splitlines(), conf

                for tcp in (False, True):
                    for name in ("api", "tasks.api", "API."):
                        r = await asyncio.to_thread(ask, ns_path, name, tcp)
                        assert r.rcode() == dns.rcode.NOERROR and ips(r) == sorted([TASK_ADDR, OTHER_ADDR]), (name, tcp, r)
                r = await asyncio.to_thread(ask, ns_path, EXT_NAME)  # forwarded to the upstream
                assert r.rcode() == dns.rcode.NOERROR and ips(r) == [EXT_ADDR], (r, upstream.asked, ex.resolver.upstreams)
                t0 = time.monotonic()
                r = await asyncio.to_thread(ask, ns_path, "nosuch.shoal.test")
                assert r.rcode() == dns.rcode.NXDOMAIN and time.monotonic() - t0 < 3, r
                assert EXT_NAME in upstream.asked and "api." not in upstream.asked

                await ex.set_assignments(NODE, [task("remove")], NETWORKS)
                await wait_until(lambda: ex.task_states() == {}, 30, "removal")
                assert ex.resolver._endpoints == set()
        finally:
            up_transport.close()

    netns.run_in_netns(a, lambda: asyncio.run(main()))
