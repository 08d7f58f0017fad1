"""Integration tests for overlaynet.bridge.LocalBridge (root).

Each test makes a throwaway network namespace (a file under tmp_path), runs the
bridge code in a thread that joined it, and removes everything afterwards,
also on failure.  Pings run with ``nsenter --net=<file> busybox ping``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from overlaynet import netns
from overlaynet.bridge import BridgeError, LocalBridge

pytestmark = pytest.mark.root

if os.geteuid() != 0:  # pragma: no cover
    pytest.skip("needs root", allow_module_level=True)

SUBNET, GW = "10.231.7.0/24", "10.231.7.1"
ID_A, ID_B = "a1" * 32, "b2" * 32


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


def ping(from_ns: str | Path, addr: str) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={from_ns}", "busybox", "ping", "-c1", "-W2", addr, check=False)


def links(in_ns: Path) -> list[str]:
    out = run("nsenter", f"--net={in_ns}", "ip", "-j", "link", "show").stdout
    return [link["ifname"] for link in json.loads(out)]


def nft_tables(in_ns: Path) -> list[str]:
    out = run("nsenter", f"--net={in_ns}", "nft", "-j", "list", "tables").stdout
    return [o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o]


@pytest.fixture
def hostns(tmp_path: Path) -> Iterator[Path]:
    """A throwaway network namespace standing in for the node's (like ``shoal-hN`` in the lab)."""
    path = tmp_path / "hostns"
    netns.create(path)
    try:
        yield path
    finally:
        netns.remove(path)
        assert not netns.is_mountpoint(path)


@pytest.fixture
def bridge(hostns: Path, tmp_path: Path) -> Iterator[LocalBridge]:
    br = LocalBridge("shoaltest0", tmp_path / "exec")
    try:
        yield br
    finally:
        netns.run_in_netns(hostns, br.cleanup)


def test_attach_ping_detach_cleanup(hostns: Path, bridge: LocalBridge) -> None:
    def body() -> tuple[str, str]:
        bridge.ensure(SUBNET, GW)
        bridge.ensure(SUBNET, GW)  # idempotent
        a = bridge.attach(ID_A, "10.231.7.2/24", GW)
        b = bridge.attach(ID_B, "10.231.7.3/24", GW)
        return a, b

    a, b = netns.run_in_netns(hostns, body)
    assert a == str(bridge.exec_root / "netns" / ID_A[:12])
    assert netns.is_mountpoint(a) and netns.is_mountpoint(b)

    # container <-> container over the bridge, host side -> each container
    assert ping(a, "10.231.7.3").returncode == 0, ping(a, "10.231.7.3").stdout
    assert ping(b, "10.231.7.2").returncode == 0
    assert ping(hostns, "10.231.7.2").returncode == 0
    assert ping(hostns, "10.231.7.3").returncode == 0
    # the container sees eth0 with its address and a default route via the gateway
    inside = json.loads(run("nsenter", f"--net={a}", "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert any(ai["local"] == "10.231.7.2" and ai["prefixlen"] == 24 for ai in inside["addr_info"])
    route = run("nsenter", f"--net={a}", "ip", "route", "show", "default").stdout
    assert "via 10.231.7.1 dev eth0" in route
    assert {"shoaltest0", "vs" + ID_A[:10], "vs" + ID_B[:10]} <= set(links(hostns))
    assert bridge.table in nft_tables(hostns)
    fwd = run("nsenter", f"--net={hostns}", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert fwd == "1"

    netns.run_in_netns(hostns, lambda: bridge.detach(ID_A))
    netns.run_in_netns(hostns, lambda: bridge.detach(ID_A))  # idempotent
    assert not Path(a).exists() and not netns.is_mountpoint(a)
    assert "vs" + ID_A[:10] not in links(hostns)
    assert ping(hostns, "10.231.7.3").returncode == 0  # the other one is untouched

    netns.run_in_netns(hostns, bridge.cleanup)
    netns.run_in_netns(hostns, bridge.cleanup)  # idempotent
    assert not Path(b).exists() and not netns.is_mountpoint(b)
    assert set(links(hostns)) == {"lo"}
    assert bridge.table not in nft_tables(hostns)


def test_masquerade_reaches_underlay(hostns: Path, bridge: LocalBridge, tmp_path: Path) -> None:
    """A container reaches an 'underlay' peer that has no route back to the bridge subnet."""
    outside = tmp_path / "outside"
    netns.create(outside)
    try:
        run("ip", "link", "add", "shtu0", "netns", str(hostns), "type", "veth", "peer", "name", "shtu1",
            "netns", str(outside))
        run("nsenter", f"--net={hostns}", "ip", "addr", "add", "10.250.9.1/30", "dev", "shtu0")
        run("nsenter", f"--net={hostns}", "ip", "link", "set", "shtu0", "up")
        run("nsenter", f"--net={outside}", "ip", "addr", "add", "10.250.9.2/30", "dev", "shtu1")
        run("nsenter", f"--net={outside}", "ip", "link", "set", "shtu1", "up")

        def body() -> str:
            bridge.ensure(SUBNET, GW)
            return bridge.attach(ID_A, "10.231.7.2/24", GW)

        a = netns.run_in_netns(hostns, body)
        res = ping(a, "10.250.9.2")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        netns.remove(outside)  # its veth end dies with it, and so does the peer


def test_new_subnet_replaces_old_address(hostns: Path, bridge: LocalBridge) -> None:
    def body() -> list[str]:
        bridge.ensure(SUBNET, GW)
        bridge.ensure("10.231.8.0/24", "10.231.8.1")
        out = run("ip", "-j", "addr", "show", "shoaltest0").stdout
        return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"]

    assert netns.run_in_netns(hostns, body) == ["10.231.8.1/24"]
    ruleset = run("nsenter", f"--net={hostns}", "nft", "list", "table", "ip", bridge.table).stdout
    assert "10.231.8.0/24" in ruleset and "10.231.7.0/24" not in ruleset


def test_many_parallel_attaches(hostns: Path, bridge: LocalBridge) -> None:
    ids = [f"{i:02d}" * 32 for i in range(20)]

    def body() -> list[str]:
        bridge.ensure(SUBNET, GW)
        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(lambda i: bridge.attach(ids[i], f"10.231.7.{10 + i}/24", GW), range(len(ids))))

    # threads started by a thread in hostns inherit hostns
    paths = netns.run_in_netns(hostns, body)
    assert len(set(paths)) == 20
    for i in (0, 19):
        assert ping(hostns, f"10.231.7.{10 + i}").returncode == 0

    def detach_all() -> None:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(bridge.detach, ids))

    netns.run_in_netns(hostns, detach_all)
    assert not any(Path(p).exists() for p in paths)
    assert set(links(hostns)) == {"lo", "shoaltest0"}


def test_bad_input(hostns: Path, bridge: LocalBridge) -> None:
    with pytest.raises(BridgeError, match="not a host address"):
        netns.run_in_netns(hostns, lambda: bridge.ensure(SUBNET, "10.231.9.1"))
    with pytest.raises(BridgeError, match="bad bridge subnet"):
        netns.run_in_netns(hostns, lambda: bridge.ensure("10.231.7.0/33", GW))
    with pytest.raises(BridgeError, match="call ensure"):
        netns.run_in_netns(hostns, lambda: bridge.attach(ID_A, "10.231.7.2/24", GW))
    with pytest.raises(BridgeError, match="bad container ID"):
        bridge.netns_path("short")
    with pytest.raises(BridgeError, match="bad bridge name"):
        LocalBridge("much-too-long-bridge-name", bridge.exec_root)
    assert not (bridge.exec_root / "netns" / ID_A[:12]).exists()


def test_works_under_uvloop(hostns: Path, bridge: LocalBridge) -> None:
    """shoald installs uvloop, whose loops cannot open netlink sockets; the bridge must not use them."""
    import asyncio

    uvloop = pytest.importorskip("uvloop")
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        async def main() -> str:
            await asyncio.to_thread(bridge.ensure, SUBNET, GW)
            path = await asyncio.to_thread(bridge.attach, ID_A, "10.231.7.2/24", GW)
            bridge.detach(ID_B)  # directly from the loop's thread, too
            return path

        a = netns.run_in_netns(hostns, lambda: asyncio.run(main()))
    finally:
        asyncio.set_event_loop_policy(old)
    assert ping(hostns, "10.231.7.2").returncode == 0
    assert netns.is_mountpoint(a)
