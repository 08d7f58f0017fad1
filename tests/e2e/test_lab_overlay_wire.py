"""The overlay on the wire (issue 9's proof), on a lab whose underlay links have MTU 1400
(``shoal-lab up --mtu 1400``, the e2e lab's ``LAB_MTU``):

- every overlay interface of a task — ``eth1`` in the container and, in the network's namespace on
  its host, the VXLAN device, the bridge and the veth end — has the underlay's MTU minus 50: 1350;
- task-to-task traffic between hosts crosses the underlay as VXLAN, UDP to the data path port 4789,
  carrying the network's VNI (``com.docker.network.driver.overlay.vxlanid_list``) around the two
  tasks' own addresses, and never bare (captured with scapy on h1's underlay veth);
- a 2 MiB HTTP download from a task on h2 to a task on h1 (the task's own busybox ``wget``)
  arrives whole (byte count and SHA-256 against the file the server task wrote);
- after the lab's ``down``: no lab namespace (by name, by mount, or alive anywhere on the machine
  holding a lab link, VXLAN device or underlay address), no lab link, no FDB entry towards the
  underlay, no ``shoal*`` nftables table, and no process left — including one a test started
  inside a task's network namespace (as the overlay benchmark does with iperf3).

Requests run inside the tasks' network namespaces (``nsenter``): the overlay is reachable only
from containers attached to it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.config import conf
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.sendrecv import AsyncSniffer

from deploy.lab import lab
from tests.e2e.conftest import LAB_MTU, client, shoal, wait_until
from tests.e2e.test_lab_overlay import _running_tasks

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NETWORK = "wire"
SUBNET = "10.30.0.0/24"
DATA_PATH_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (RFC 7348)
BIG = 2 * 1024 * 1024
# the server task writes its 2 MiB file, then serves /www (busybox httpd)
SERVER_CMD = f"dd if=/dev/urandom of=/www/big bs=1024 count={BIG // 1024} 2>/dev/null && exec httpd -f -p 80 -h /www"

_strays: list[subprocess.Popen[bytes]] = []  # processes a test left in a task's namespace for down to find


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _lab_objects_on_the_machine() -> list[str]:
    """What of the lab the machine still shows, read with the plain tools, not the lab's own code."""
    out = []
    out += [f"netns {n}" for n in _run(["ip", "netns", "list"]).stdout.split() if n.startswith("shoal-")]
    out += [f"link {x['ifname']}" for x in json.loads(_run(["ip", "-j", "link", "show"]).stdout)
            if x["ifname"].startswith("shoal-lab")]
    out += [f"fdb {e}" for e in json.loads(_run(["bridge", "-j", "fdb", "show"]).stdout or "[]")
            if str(e.get("dst", "")).startswith("10.99.0.") or str(e.get("ifname", "")).startswith("shoal-lab")]
    tables = json.loads(_run(["nft", "-j", "list", "tables"]).stdout or "{}").get("nftables", [])
    out += [f"nft table {t['table']['name']}" for t in tables
            if "table" in t and t["table"]["name"].startswith("shoal")]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    out += [f"mount {m}" for m in mounts if "shoal-lab" in m or "/netns/shoal-" in m]
    return out


@pytest.fixture(scope="module")
def _nothing_left_after_down() -> Iterator[None]:
    """Set up before the lab and torn down after its ``down``: checks what the machine still has."""
    yield
    try:
        alive = [p.pid for p in _strays if p.poll() is None]
        assert alive == [], f"down left processes running inside a task's namespace: {alive}"
        assert _lab_objects_on_the_machine() == []
        assert lab.check_clean() == []  # incl. any namespace alive anywhere holding lab devices/addresses
    finally:
        for p in _strays:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def lab_up(_nothing_left_after_down: None, lab_up: lab.LabState) -> lab.LabState:
    """The e2e lab (conftest), with the after-down check wrapped around it."""
    return lab_up


@dataclass
class Wire:
    """The swarm (h1 manager, h2 and h3 workers), network ``wire`` and a server and client task."""

    state: lab.LabState
    network_id: str
    vni: int
    server: dict[str, Any]  # on h2: {"node", "pid", "ip", "id", "host"}
    client: dict[str, Any]  # on h1


def _hostname(node_id: str) -> str:
    return str(client("h1").node(node_id)["Description"]["Hostname"])


@pytest.fixture(scope="module")
def wire(lab_up: lab.LabState) -> Wire:
    h1 = lab_up.host("h1")
    assert shoal("h1", "swarm", "init", "--advertise-addr", h1.ip).returncode == 0
    token = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
    for h in ("h2", "h3"):
        r = shoal(h, "swarm", "join", "--token", token, f"{h1.ip}:2377")
        assert r.returncode == 0, f"{h}: {r.stderr}"
    wait_until(lambda: sum(n["Status"]["State"] == "ready" for n in client("h1").nodes()) == 3, 60, "3 ready nodes")
    r = shoal("h1", "network", "create", "-d", "overlay", "--subnet", SUBNET, NETWORK)
    assert r.returncode == 0, r.stderr
    for name, host, cmd in (("srv", "h2", ["sh", "-c", SERVER_CMD]), ("cli", "h1", ["sleep", "100000"])):
        r = shoal("h1", "service", "create", "--detach", "--name", name, "--network", NETWORK,
                  "--constraint", f"node.hostname=={host}", lab.IMAGE, *cmd)
        assert r.returncode == 0, r.stdout + r.stderr
    (server,) = wait_until(lambda: _running_tasks("srv", NETWORK), 90, "the srv task running on wire")
    (cli,) = wait_until(lambda: _running_tasks("cli", NETWORK), 90, "the cli task running on wire")
    server["host"], cli["host"] = _hostname(server["node"]), _hostname(cli["node"])
    assert (server["host"], cli["host"]) == ("h2", "h1")
    # the file is there before anyone fetches it (dd runs before httpd starts)
    wait_until(lambda: Path(f"/proc/{server['pid']}/root/www/big").stat().st_size == BIG, 30,
               "the server task to write its 2 MiB file")
    net = client("h1").network(NETWORK)
    vni = int(net["Options"]["com.docker.network.driver.overlay.vxlanid_list"].split(",")[0])
    return Wire(lab_up, net["Id"], vni, server, cli)


def _links(netns_path: str) -> dict[str, int]:
    """``{ifname: mtu}`` of the namespace at ``netns_path`` (a task's /proc/PID/ns/net or a file)."""
    res = _run(["nsenter", f"--net={netns_path}", "ip", "-j", "link", "show"])
    assert res.returncode == 0, res.stderr
    return {x["ifname"]: int(x["mtu"]) for x in json.loads(res.stdout)}


def _fetch_in_task(pid: int, url: str, out: str = "/dev/null", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The task's own busybox ``wget`` (its mount and network namespaces) saving ``url`` to ``out``
    (no ``-T``: this busybox's wget crashes with it; the subprocess timeout bounds it)."""
    return _run(["nsenter", "-t", str(pid), "-m", "-n", "-r", "-w", "--", "/bin/wget", "-q",
                 "-O", out, url], timeout=timeout)


def test_every_overlay_interface_has_the_underlay_mtu_minus_50(wire: Wire) -> None:
    assert wire.state.mtu == LAB_MTU == 1400
    assert _links(f"/proc/{wire.server['pid']}/ns/net")  # sanity: the namespace is readable
    root = {x["ifname"]: int(x["mtu"]) for x in json.loads(_run(["ip", "-j", "link", "show"]).stdout)}
    underlay = {n: m for n, m in root.items() if n.startswith("shoal-lab")}
    for h in wire.state.hosts:
        underlay[f"{h.name}/eth0"] = _links(str(lab.NETNS_DIR / h.netns))["eth0"]
    assert set(underlay.values()) == {LAB_MTU}, underlay
    want = LAB_MTU - VXLAN_OVERHEAD
    for task in (wire.server, wire.client):
        assert _links(f"/proc/{task['pid']}/ns/net")["eth1"] == want, task
        netns = lab.RUN / task["host"] / "overlay-netns" / f"sov-{wire.network_id[:12]}"
        links = _links(str(netns))
        mine = {n: m for n, m in links.items()
                if n in (f"sovx-{wire.vni:06x}", f"sovb-{wire.vni:06x}", f"sove-{task['id'][:10]}")}
        assert mine == {f"sovx-{wire.vni:06x}": want, f"sovb-{wire.vni:06x}": want,
                        f"sove-{task['id'][:10]}": want}, (task["host"], links)


def test_task_traffic_crosses_the_underlay_as_vxlan_with_the_networks_vni(wire: Wire) -> None:
    srv, cli = wire.server["ip"], wire.client["ip"]
    h1, h2 = wire.state.host("h1").ip, wire.state.host("h2").ip
    # the capture socket is open before any traffic (no race with a sniffer thread starting); scapy
    # lists the interfaces once, at import, before the lab made this one
    conf.ifaces.reload()
    sock = conf.L2listen(iface="shoal-lab-h1")
    packets: list[Packet] = []  # appended by the sniffer's thread (its .results exist only once stopped)
    sniffer = AsyncSniffer(opened_socket=sock, store=False, lfilter=lambda p: IP in p, prn=packets.append)
    sniffer.start()
    try:
        def both_ways_seen() -> bool:
            assert _fetch_in_task(wire.client["pid"], f"http://{srv}/index.html").returncode == 0
            inner = {(p[VXLAN][IP].src, p[VXLAN][IP].dst) for p in list(packets) if VXLAN in p and IP in p[VXLAN]}
            return {(cli, srv), (srv, cli)} <= inner
        wait_until(both_ways_seen, 20, f"VXLAN packets {cli} <-> {srv} on h1's underlay veth", interval=0.3)
    finally:
        sniffer.stop()
        sock.close()
    ours = [p for p in packets if VXLAN in p and IP in p[VXLAN] and {p[VXLAN][IP].src, p[VXLAN][IP].dst} == {cli, srv}]
    assert ours
    for p in ours:
        assert p[UDP].dport == DATA_PATH_PORT, p.summary()
        assert p[VXLAN].vni == wire.vni, (p[VXLAN].vni, wire.vni)
        assert {p[IP].src, p[IP].dst} == {h1, h2}, p.summary()  # host to host on the underlay
    # the tasks' addresses never travel bare on the underlay
    bare = [p.summary() for p in packets if VXLAN not in p and {p[IP].src, p[IP].dst} & {cli, srv}]
    assert bare == []


def test_a_2mib_download_between_tasks_on_two_hosts_arrives_whole(wire: Wire) -> None:
    out = "/tmp/big"
    res = _fetch_in_task(wire.client["pid"], f"http://{wire.server['ip']}/big", out)
    assert res.returncode == 0, res.stderr
    got = Path(f"/proc/{wire.client['pid']}/root{out}").read_bytes()
    sent = Path(f"/proc/{wire.server['pid']}/root/www/big").read_bytes()
    assert len(got) == BIG == len(sent)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(sent).hexdigest()


def test_down_finds_a_process_left_inside_a_tasks_namespace(wire: Wire) -> None:
    """A tool started in a task's network namespace with nsenter (neither in a lab cgroup nor with
    a lab path in its argv) still counts as the lab's; the after-down check asserts it is gone."""
    stray = subprocess.Popen(["nsenter", f"--net=/proc/{wire.client['pid']}/ns/net", "sleep", "1000"],
                             start_new_session=True)
    _strays.append(stray)
    task_ns = Path(f"/proc/{wire.client['pid']}/ns/net").stat().st_ino
    wait_until(lambda: Path(f"/proc/{stray.pid}/ns/net").stat().st_ino == task_ns, 10, "nsenter to enter the task")
    assert stray.pid in lab.lab_pids(lab.LabState.load())
