"""Integration tests for overlaynet.vxlan.VxlanDriver (root): a VXLAN overlay between two scratch hosts.

Two "hosts" are network namespaces (files under a scratch directory, ``vxt<rand>a`` / ``…b``)
joined by a veth pair with MTU 1400 and underlay addresses 192.0.2.1/24 and 192.0.2.2/24; each
runs its own driver told that its host is that namespace. One overlay network (VNI 4097,
10.55.0.0/24) and one "container" namespace per host (10.55.0.2 on a, 10.55.0.3 on b). Pings run
with ``nsenter --net=<file> busybox ping``; TCP runs in this process in threads that joined the
namespaces (a socket keeps the namespace it was made in). Everything is removed at the end, also
on failure. Nothing here touches the host's namespace, the lab's ``shoal-h*``, ``shoal-lab0`` or
``shoal0``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlaynet import netns
from overlaynet.driver import (
    DriverError,
    EncryptionUnsupported,
    EndpointConfig,
    NetworkConfig,
    NetworkDriver,
    Peer,
    VniInUse,
    mac_from_ip,
    peer_for,
)
from overlaynet.vxlan import VxlanDriver
from tests.integration.conftest import underlay_hosts
from tests.waiting import wait_until

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)

BUSYBOX = "/usr/bin/busybox"
NET_ID = "n" + "0123456789abcdef" * 2
VNI = 4097
SUBNET, GW = "10.55.0.0/24", "10.55.0.1"
UNDERLAY = ("192.0.2.1", "192.0.2.2")
ADDRS = ("10.55.0.2", "10.55.0.3")
EP_IDS = ("taskaaaaaaaaaaaa1", "taskbbbbbbbbbbbb2")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


def ping(from_ns: Path | str, addr: str) -> bool:
    return run("nsenter", f"--net={from_ns}", BUSYBOX, "ping", "-c1", "-W1", addr, check=False).returncode == 0


def links(in_ns: Path | str) -> dict[str, dict[str, object]]:
    out = run("nsenter", f"--net={in_ns}", "ip", "-j", "-d", "link", "show").stdout
    return {link["ifname"]: link for link in json.loads(out)}


@dataclass
class Host:
    ns: Path             # the host's namespace file
    driver: VxlanDriver
    container: Path      # a container's namespace file on it
    underlay: str


@dataclass
class Lab:
    root: Path
    tag: str
    a: Host
    b: Host

    def net(self, side: Host, **kw: object) -> NetworkConfig:
        args: dict[str, object] = {"network_id": NET_ID, "subnet": SUBNET, "gateway": GW, "vni": VNI,
                                   "data_path_addr": side.underlay}
        args.update(kw)
        return NetworkConfig(**args)  # type: ignore[arg-type]

    def endpoint(self, i: int) -> EndpointConfig:
        side = (self.a, self.b)[i]
        return EndpointConfig(NET_ID, EP_IDS[i], str(side.container), f"{ADDRS[i]}/24")


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = "vxt" + os.urandom(3).hex()
    root = Path("/tmp") / tag
    root.mkdir()
    made: list[Path] = []
    try:
        with underlay_hosts(root, tag, UNDERLAY) as host_ns:
            errors = []
            try:
                hosts = []
                for i, side in enumerate("ab"):
                    ctr = root / f"{tag}c{side}"
                    netns.create(ctr)
                    made.append(ctr)
                    hosts.append(Host(host_ns[i], VxlanDriver(root / f"ov{side}", host_netns=host_ns[i]), ctr,
                                      UNDERLAY[i]))
                yield Lab(root, tag, hosts[0], hosts[1])
            finally:
                for ov in sorted(root.glob("ov*")):
                    for f in sorted(ov.iterdir()):
                        try:
                            netns.remove(f)
                        except OSError as e:
                            errors.append(e)
                for ns in made:
                    try:
                        netns.remove(ns)
                    except OSError as e:
                        errors.append(e)
            assert not errors, errors
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tcp_roundtrip(lab: Lab, size: int) -> bytes:
    """Connect from a's container to b's container (10.55.0.3:7777), send ``size`` bytes, read them back."""
    listener = netns.run_in_netns(lab.b.container, lambda: socket.create_server((ADDRS[1], 7777)))
    listener.settimeout(10)

    def echo() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            got = 0
            while got < size:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                conn.sendall(chunk)
                got += len(chunk)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        cli = netns.run_in_netns(lab.a.container, lambda: socket.create_connection((ADDRS[1], 7777), timeout=5))
        with cli:
            cli.settimeout(10)
            payload = os.urandom(size)
            sender = threading.Thread(target=cli.sendall, args=(payload,), daemon=True)
            sender.start()
            back = b""
            while len(back) < size:
                chunk = cli.recv(65536)
                if not chunk:
                    break
                back += chunk
            sender.join(10)
        assert back == payload, f"echoed {len(back)} of {size} bytes"
        return back
    finally:
        listener.close()
        t.join(10)


def set_both_peers(lab: Lab) -> None:
    lab.a.driver.set_peers(NET_ID, [peer_for(ADDRS[1], UNDERLAY[1])])
    lab.b.driver.set_peers(NET_ID, [peer_for(ADDRS[0], UNDERLAY[0])])


async def test_two_hosts_overlay(lab: Lab) -> None:
    a, b = lab.a, lab.b
    assert isinstance(a.driver, NetworkDriver)
    for i, h in enumerate((a, b)):
        h.driver.ensure_network(lab.net(h))
        h.driver.ensure_network(lab.net(h))  # idempotent
        att = h.driver.attach(lab.endpoint(i))
        assert (att.mtu, att.mac, att.address, att.ifname) == (1350, mac_from_ip(ADDRS[i]), f"{ADDRS[i]}/24", "eth0")

    # the layout: the vxlan device in the network namespace, learning off, VNI/port/local as asked
    ovns = a.driver.netns_path(NET_ID)
    assert ovns.name == "sov-" + NET_ID[:12]
    ov = links(ovns)
    vx = ov["sovx-001001"]
    info = vx["linkinfo"]["info_data"]  # type: ignore[index]
    assert info["id"] == VNI and info["port"] == 4789 and info["local"] == UNDERLAY[0]
    assert info["learning"] is False and info["proxy"] is True
    assert vx["master"] == "sovb-001001"
    veth = "sove-" + EP_IDS[0][:10]
    assert ov[veth]["master"] == "sovb-001001"
    # MTU 1350 (1400 - 50) on the vxlan device, the bridge and both veth ends
    assert {n: ov[n]["mtu"] for n in ("sovx-001001", "sovb-001001", veth)} == dict.fromkeys(
        ("sovx-001001", "sovb-001001", veth), 1350)
    ctr = links(a.container)
    assert ctr["eth0"]["mtu"] == 1350 and ctr["eth0"]["address"] == mac_from_ip(ADDRS[0])
    # nothing of the overlay stays in the host namespace: only lo and the underlay
    assert set(links(a.ns)) == {"lo", f"{lab.tag}u0"}

    # without peers nothing crosses (no flooding, no learning)
    assert not ping(a.container, ADDRS[1])
    # local: the container reaches the gateway on its network's bridge
    assert ping(a.container, GW)

    set_both_peers(lab)
    assert a.driver.peers(NET_ID) == [Peer(ADDRS[1], mac_from_ip(ADDRS[1]), UNDERLAY[1])]
    await wait_until(lambda: ping(a.container, ADDRS[1]), timeout=5, what="ping a -> b over VXLAN")
    assert ping(b.container, ADDRS[0])
    # TCP with full-size segments: 1 MiB echoed proves the 1350 MTU fits the 1400 underlay
    tcp_roundtrip(lab, 1 << 20)
    # a set_peers with the same set changes nothing
    delta = a.driver.set_peers(NET_ID, [peer_for(ADDRS[1], UNDERLAY[1])])
    assert delta.added == () and delta.removed == ()

    # removing the peer entry on a makes traffic a -> b fail
    delta = a.driver.set_peers(NET_ID, [])
    assert delta.removed == (Peer(ADDRS[1], mac_from_ip(ADDRS[1]), UNDERLAY[1]),) and delta.added == ()
    assert a.driver.peers(NET_ID) == []
    await wait_until(lambda: not ping(a.container, ADDRS[1]), timeout=5, what="ping a -> b to fail")
    # and back
    a.driver.set_peers(NET_ID, [peer_for(ADDRS[1], UNDERLAY[1])])
    await wait_until(lambda: ping(a.container, ADDRS[1]), timeout=5, what="ping a -> b again")

    # detaching the last endpoint removes the network's namespace (and the container's eth0)
    a.driver.detach(lab.endpoint(0))
    a.driver.detach(lab.endpoint(0))  # idempotent
    assert not netns.is_mountpoint(ovns) and not ovns.exists()
    assert "eth0" not in links(a.container)
    assert set(links(a.ns)) == {"lo", f"{lab.tag}u0"}
    # b still has its network
    assert b.driver.endpoints(NET_ID) == ["sove-" + EP_IDS[1][:10]]


async def test_option_mtu_and_encrypted(lab: Lab) -> None:
    a = lab.a
    with pytest.raises(EncryptionUnsupported, match="no ESP"):
        a.driver.ensure_network(lab.net(a, options={"encrypted": ""}))
    assert not a.driver.netns_path(NET_ID).exists()
    a.driver.ensure_network(lab.net(a, options={"com.docker.network.driver.mtu": "1200"}))
    att = a.driver.attach(lab.endpoint(0))
    assert att.mtu == 1200
    ov = links(a.driver.netns_path(NET_ID))
    assert ov["sovx-001001"]["mtu"] == 1200 and ov["sovb-001001"]["mtu"] == 1200
    assert links(a.container)["eth0"]["mtu"] == 1200
    # no underlay interface holds the data path address: refused, nothing left
    with pytest.raises(DriverError, match="data path address"):
        a.driver.ensure_network(lab.net(a, network_id="m" * 20, vni=4098, data_path_addr="192.0.2.77"))
    assert not a.driver.netns_path("m" * 20).exists()
    a.driver.remove_network(NET_ID)
    a.driver.remove_network(NET_ID)  # idempotent
    assert not a.driver.netns_path(NET_ID).exists()
    assert "eth0" not in links(a.container)


async def test_cleanup_stale(lab: Lab) -> None:
    a = lab.a
    keep_id, stale_id = "k" * 20, "s" * 20
    a.driver.ensure_network(lab.net(a, network_id=keep_id, vni=5000))
    a.driver.ensure_network(lab.net(a, network_id=stale_id, vni=5001))
    # a crash between "create in the host" and "move": a vxlan device left in the host namespace
    # (another VNI: the host's VXLAN sockets already hold 5001, see ensure_network's EEXIST)
    run("nsenter", f"--net={a.ns}", "ip", "link", "add", "sovx-001770", "type", "vxlan", "id", "6000",
        "dstport", "4789", "local", UNDERLAY[0])
    # a fresh driver (the restarted daemon) knows only keep_id
    fresh = VxlanDriver(a.driver.netns_dir, host_netns=a.ns)
    removed = fresh.cleanup_stale([keep_id])
    assert removed == sorted(["sov-" + stale_id[:12], "sovx-001770"])
    assert fresh.netns_path(keep_id).exists() and not fresh.netns_path(stale_id).exists()
    assert set(links(a.ns)) == {"lo", f"{lab.tag}u0"}
    # the stale VNI is free again at once, and the kept network is adopted as it is
    fresh.ensure_network(lab.net(a, network_id=stale_id, vni=5001))
    fresh.ensure_network(lab.net(a, network_id=keep_id, vni=5000))
    assert fresh.cleanup_stale([keep_id, stale_id]) == []
    # a VNI held by a device the driver does not own: refused with a message, nothing left
    run("nsenter", f"--net={a.ns}", "ip", "link", "add", f"{lab.tag}x", "type", "vxlan", "id", "6001",
        "dstport", "4789", "local", UNDERLAY[0])
    with pytest.raises(DriverError, match="VNI 6001 .* already exists"):
        fresh.ensure_network(lab.net(a, network_id="o" * 20, vni=6001))
    assert not fresh.netns_path("o" * 20).exists()
    assert set(links(a.ns)) == {"lo", f"{lab.tag}u0", f"{lab.tag}x"}
    fresh.remove_network(keep_id)
    fresh.remove_network(stale_id)
    assert list(fresh.netns_dir.iterdir()) == []


async def test_peers_by_delta_at_scale_and_errors(lab: Lab) -> None:
    a = lab.a
    with pytest.raises(DriverError, match="ensure_network first"):
        a.driver.attach(lab.endpoint(0))
    with pytest.raises(DriverError, match="ensure_network first"):
        a.driver.set_peers(NET_ID, [])
    a.driver.ensure_network(lab.net(a, subnet="10.56.0.0/16", gateway="10.56.0.1", data_path_port=7789))
    info = links(a.driver.netns_path(NET_ID))["sovx-001001"]["linkinfo"]["info_data"]  # type: ignore[index]
    assert info["port"] == 7789
    with pytest.raises(DriverError, match="not in network"):
        a.driver.attach(lab.endpoint(0))  # 10.55.0.2/24 is not in 10.56.0.0/16
    assert a.driver.endpoints(NET_ID) == [] and "eth0" not in links(a.container)
    with pytest.raises(DriverError, match="conflicting"):
        a.driver.set_peers(NET_ID, [peer_for("10.56.0.9", "192.0.2.2"), peer_for("10.56.0.9", "192.0.2.3")])

    # 500 remote tasks on 20 nodes, then one task moves and one goes: each step well within a second
    peers = [peer_for(f"10.56.{i // 250 + 1}.{i % 250 + 2}", f"192.0.2.{i % 20 + 10}") for i in range(500)]
    t0 = time.monotonic()
    delta = a.driver.set_peers(NET_ID, peers)
    first = time.monotonic() - t0
    assert len(delta.added) == 500 and delta.removed == ()
    changed = [peer_for(peers[0].ip, "192.0.2.99")] + peers[2:]
    t0 = time.monotonic()
    delta = a.driver.set_peers(NET_ID, changed)
    step = time.monotonic() - t0
    assert delta.added == (changed[0],)
    assert set(delta.removed) == {peers[0], peers[1]}
    assert a.driver.peers(NET_ID) == sorted(changed)
    assert first < 5 and step < 1, (first, step)
    # the kernel is the record: a fresh driver (a restarted daemon) computes the same delta
    fresh = VxlanDriver(a.driver.netns_dir, host_netns=a.ns)
    assert fresh.set_peers(NET_ID, changed[1:]).removed == (changed[0],)
    fresh.remove_network(NET_ID)
    assert not fresh.netns_path(NET_ID).exists()


async def test_a_vni_held_by_a_left_swarms_network_is_freed_by_cleanup_stale_with_the_vni(lab: Lab) -> None:
    """``swarm leave`` then ``init`` at once: the old ingress (VNI 4096) still has its namespace
    when the new ingress asks for VNI 4096 → VniInUse; ``cleanup_stale(known, vni=4096)`` removes
    only the namespace holding that VNI (not another unknown network's), and the retry succeeds."""
    a = lab.a
    old_id, other_id, new_id = "p" * 20, "q" * 20, "r" * 20
    a.driver.ensure_network(lab.net(a, network_id=old_id, vni=4096))
    a.driver.ensure_network(lab.net(a, network_id=other_id, vni=5002))
    with pytest.raises(VniInUse) as e:
        a.driver.ensure_network(lab.net(a, network_id=new_id, vni=4096))
    assert (e.value.network_id, e.value.vni, e.value.port) == (new_id, 4096, 4789)
    assert not a.driver.netns_path(new_id).exists()
    assert a.driver.cleanup_stale([new_id], vni=4096) == ["sov-" + old_id[:12]]
    assert a.driver.netns_path(other_id).exists()  # another VNI: kept
    a.driver.ensure_network(lab.net(a, network_id=new_id, vni=4096))
    assert a.driver.cleanup_stale([new_id], vni=4096) == []  # a known network is never removed
    a.driver.remove_network(new_id)
    a.driver.remove_network(other_id)
    assert list(a.driver.netns_dir.iterdir()) == []
