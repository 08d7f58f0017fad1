"""`swarm init` / `swarm join` as shoald serves them (issue 7): the addresses follow Docker's
rules (shoal.daemon.listenaddr), the interface lookup works on uvloop, and a busy listen address is a
clean 400 that leaves the node out of any swarm — no state.json, certs/ or manager/, and a
restarted daemon comes back not in a swarm.

Real daemons on loopback (a real Manager on a free port, a real agent); no root needed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from shoal.daemon import listenaddr
from shoal.daemon.listenaddr import AddrError, Interface
from tests.ports import free_port
from tests.unit.swarm_daemons import daemon_on_socket, no_swarm_files, running_daemon
from tests.unit.test_orchestrator_cli import DOCKER, docker
from tests.waiting import wait_until

# ------------------------------------------------------------------ the address rules (pure)

def iface(name: str, *addrs: str, kind: str = "", up: bool = True) -> Interface:
    return Interface(name, kind, up, [ipaddress.IPv4Interface(a) for a in addrs])


LO = iface("lo", "127.0.0.1/8")


def test_system_addr_is_the_one_global_address() -> None:
    assert listenaddr.system_addr([LO, iface("eth0", "10.0.0.5/24")]) == "10.0.0.5"
    # a second address in the same subnet of the same interface is not another choice
    assert listenaddr.system_addr([LO, iface("eth0", "10.0.0.5/24", "10.0.0.6/24")]) == "10.0.0.5"
    # link-local and down interfaces are never candidates
    assert listenaddr.system_addr([LO, iface("eth0", "169.254.1.1/16", "10.0.0.5/24"),
                                   iface("eth1", "10.1.0.5/24", up=False)]) == "10.0.0.5"
    # hardware devices first: bridges, veths and Shoal's own bridge do not compete with eth0
    assert listenaddr.system_addr([LO, iface("eth0", "10.0.0.5/24"), iface("br0", "172.17.0.1/16", kind="bridge"),
                                   iface("veth1", "10.9.0.1/24", kind="veth")]) == "10.0.0.5"
    # no device has one (a daemon in a container, a lab namespace): every other interface counts
    assert listenaddr.system_addr([LO, iface("eth0", "10.99.0.2/24", kind="veth"),
                                   iface("shoal0", "10.200.1.1/24", kind="bridge")], exclude=["shoal0"]) == "10.99.0.2"


def test_several_or_no_addresses_are_a_clear_error() -> None:
    with pytest.raises(AddrError) as e:
        listenaddr.system_addr([LO, iface("eth0", "10.0.0.5/24"), iface("eth1", "192.168.1.5/24")])
    msg = str(e.value)
    assert "could not choose an IP address to advertise" in msg
    assert "10.0.0.5 on eth0" in msg and "192.168.1.5 on eth1" in msg and "--advertise-addr" in msg
    with pytest.raises(AddrError) as e:  # two subnets on one interface: two candidates too
        listenaddr.system_addr([LO, iface("eth0", "10.0.0.5/24", "10.7.0.5/24")])
    assert "10.0.0.5 on eth0, 10.7.0.5 on eth0" in str(e.value)
    with pytest.raises(AddrError) as e:
        listenaddr.system_addr([LO])
    assert "could not find this system's IP address" in str(e.value)


def test_listen_and_advertise_rules_as_docker() -> None:
    ifs = [LO, iface("eth0", "10.0.0.5/24"), iface("eth1", "192.168.1.5/24", "192.168.1.6/24")]
    rl, ra = listenaddr.resolve_listen_addr, listenaddr.resolve_advertise_addr
    assert rl("", 2377, ifs) == ("0.0.0.0", 2377)
    assert rl("", 4000, ifs) == ("0.0.0.0", 4000)  # the daemon's --port
    assert rl("0.0.0.0:5000", 2377, ifs) == ("0.0.0.0", 5000)
    assert rl("eth0", 2377, ifs) == ("10.0.0.5", 2377)  # interface names, as Docker's --listen-addr eth0
    assert rl("eth0:4567", 2377, ifs) == ("10.0.0.5", 4567)
    # the advertised port is the listen port when the advertise address has none (Docker's rule)
    assert ra("10.0.0.5", "0.0.0.0", 4567, ifs) == ("10.0.0.5", 4567)
    assert ra("10.0.0.5:9999", "0.0.0.0", 4567, ifs) == ("10.0.0.5", 9999)
    assert ra("eth0", "0.0.0.0", 4567, ifs) == ("10.0.0.5", 4567)
    assert ra("203.0.113.9", "0.0.0.0", 2377, ifs) == ("203.0.113.9", 2377)  # e.g. behind NAT: allowed
    assert ra("", "10.0.0.5", 4567, ifs) == ("10.0.0.5", 4567)  # a specific listen address is advertised
    for bad, words in [("eth1", "more than one IPv4 address"), ("nosuch0", "neither an IPv4 address"),
                       ("0.0.0.0", "cannot be advertised"), ("[::1]:2377", "IPv6"), ("10.0.0.5:0", "the port")]:
        with pytest.raises(AddrError) as e:
            ra(bad, "0.0.0.0", 2377, ifs)
        assert words in str(e.value), (bad, str(e.value))
    for bad, words in [("203.0.113.9", "not an address of this host"), (":2377", "has no host"),
                       ("eth0:x", "the port")]:
        with pytest.raises(AddrError) as e:
            rl(bad, 2377, ifs)
        assert words in str(e.value), (bad, str(e.value))


def test_interfaces_are_read_on_uvloop() -> None:
    """shoald runs uvloop, where pyroute2's IPRoute()/AsyncIPRoute cannot open their netlink
    socket; local_interfaces() must work there (and on the standard loop)."""

    async def main() -> list[Interface]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        return await listenaddr.local_interfaces()

    ifs = uvloop.run(main())
    by_name = {i.name: i for i in ifs}
    assert set(by_name) == set(p.name for p in Path("/sys/class/net").iterdir())
    assert ipaddress.IPv4Interface("127.0.0.1/8") in by_name["lo"].addrs
    assert asyncio.run(listenaddr.local_interfaces()) == ifs


# ------------------------------------------------------------------ real daemons


@contextmanager
def listening(port: int, host: str = "0.0.0.0") -> Iterator[socket.socket]:
    """Another process's listener on ``host:port`` (what makes 2377 busy)."""
    s = socket.socket()
    try:
        s.bind((host, port))
        s.listen()
        yield s
    finally:
        s.close()


async def assert_not_in_swarm(root: Path, port: int) -> None:
    """A new daemon on the same data root starts and reports that it is not in a swarm."""
    async with running_daemon(root, port) as (d2, c2):
        assert not d2.state.in_swarm and d2.manager is None
        info = await (await c2.get("/info")).json()
        assert info["Swarm"]["LocalNodeState"] == "inactive"
        assert (await c2.get("/_ping")).headers["Swarm"] == "inactive"


async def test_init_on_a_busy_port_is_a_clean_400_and_no_half_state(tmp_path: Path) -> None:
    port = free_port()
    async with running_daemon(tmp_path, port) as (d, c):
        with listening(port):
            r = await c.post("/swarm/init", json={"AdvertiseAddr": "127.0.0.1"})
            assert r.status == 400 and r.headers["Content-Type"] == "application/json"
            msg = (await r.json())["message"]
            assert msg.startswith(f"listen address 0.0.0.0:{port} is already in use"), msg
            no_swarm_files(d)
            assert (await c.get("/_ping")).headers["Swarm"] == "inactive"
    await assert_not_in_swarm(tmp_path, port)


async def test_init_whose_manager_cannot_bind_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The port taken between the check and the manager's bind: init_cluster has written certs/
    and manager/ by then; they are removed and the answer is the same 400."""
    port = free_port()
    monkeypatch.setattr(listenaddr, "check_listen_free", lambda ip, port: None)
    async with running_daemon(tmp_path, port) as (d, c):
        with listening(port, "127.0.0.1"):
            r = await c.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1"})
            assert r.status == 400, await r.text()
            assert (await r.json())["message"].startswith(f"listen address 127.0.0.1:{port} is already in use")
            no_swarm_files(d)
            assert d.manager is None and d.agent is None
    await assert_not_in_swarm(tmp_path, port)


async def test_init_advertises_the_listen_port_and_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    async with running_daemon(tmp_path, 1) as (d, c):  # --port 1: the request's ListenAddr rules
        # leftovers of an init killed before it finished are cleared, not mixed in
        (d.certs_dir).mkdir()
        (d.certs_dir / "ca.key").write_text("stale")
        r = await c.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1"})
        assert r.status == 200, await r.text()
        node_id = await r.json()
        assert d.state.data["AdvertiseAddr"] == f"127.0.0.1:{port}"  # the listen port, not --port
        assert d.state.data["ListenAddr"] == f"127.0.0.1:{port}" and d.state.data["NodeID"] == node_id
        assert (d.certs_dir / "ca.key").read_text() != "stale"
    async with running_daemon(tmp_path, 1) as (d2, c2):
        assert d2.manager is not None and d2.state.data["NodeID"] == node_id
        info = await (await c2.get("/info")).json()
        assert info["Swarm"]["LocalNodeState"] == "active" and info["Swarm"]["ControlAvailable"] is True
        r = await c2.post("/swarm/leave?force=1")
        assert r.status == 200, await r.text()
        no_swarm_files(d2)


async def test_join_as_manager_on_a_busy_port_is_refused_before_the_node_is_added(tmp_path: Path) -> None:
    mport, jport = free_port(), free_port()
    async with running_daemon(tmp_path / "m", mport) as (m, mc):
        r = await mc.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{mport}", "AdvertiseAddr": "127.0.0.1"})
        assert r.status == 200, await r.text()
        tokens = (await (await mc.get("/swarm")).json())["JoinTokens"]
        assert m.manager is not None
        await wait_until(lambda: m.manager.is_leader, 10, "the first manager to lead")
        nodes_before = len(m.manager.store.view().list("nodes"))
        async with running_daemon(tmp_path / "j", jport) as (j, jc):
            body = {"RemoteAddrs": [f"127.0.0.1:{mport}"], "ListenAddr": f"127.0.0.1:{jport}",
                    "AdvertiseAddr": "127.0.0.1", "JoinToken": tokens["Manager"]}
            with listening(jport, "127.0.0.1"):
                r = await jc.post("/swarm/join", json=body)
                assert r.status == 400, await r.text()
                msg = (await r.json())["message"]
                assert msg.startswith(f"listen address 127.0.0.1:{jport} is already in use"), msg
                no_swarm_files(j)
                assert len(m.manager.store.view().list("nodes")) == nodes_before  # nobody was added
                # a worker does not listen: the same busy port does not stop a worker join
                r = await jc.post("/swarm/join", json={**body, "JoinToken": tokens["Worker"]})
                assert r.status == 200, await r.text()
                assert j.state.data["Role"] == "worker" and j.state.path.exists()
                assert j.state.data["AdvertiseAddr"] == f"127.0.0.1:{jport}"
            r = await jc.post("/swarm/leave")
            assert r.status == 200, await r.text()


def test_init_without_an_address_on_uvloop(tmp_path: Path) -> None:
    """`swarm init` with no --advertise-addr on uvloop (as shoald runs): the system's one address
    with the listen port, or a 400 listing the candidates — never a 500."""

    async def main() -> None:
        port = free_port()
        async with running_daemon(tmp_path, port) as (d, c):
            r = await c.post("/swarm/init", json={})
            text = await r.text()
            ifs = await listenaddr.local_interfaces()
            try:
                expected = listenaddr.system_addr(ifs, exclude=[d.bridge.name])
            except AddrError as e:
                assert r.status == 400 and str(e) in text, text
                no_swarm_files(d)
                return
            assert r.status == 200, text
            assert d.state.data["AdvertiseAddr"] == f"{expected}:{port}"
            assert (await c.post("/swarm/leave?force=1")).status == 200

    uvloop.run(main())


async def test_cli_prints_the_busy_port_as_an_error_response(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`shoal swarm init` against shoald's API on its unix socket: the daemon's 400 is printed as
    Docker's CLI prints it, and the exit status is 1."""
    from shoal.cli import commands as cli

    port = free_port()
    async with daemon_on_socket(tmp_path, port) as (d, sock):
        with listening(port, "127.0.0.1"):
            rc = await asyncio.to_thread(cli.main, ["-H", f"unix://{sock}", "swarm", "init", "--listen-addr",
                                                    f"127.0.0.1:{port}", "--advertise-addr", "127.0.0.1"])
        err = capsys.readouterr().err
        assert rc == 1
        assert err.startswith(f"Error response from daemon: listen address 127.0.0.1:{port} is already in use"), err
        rc = await asyncio.to_thread(cli.main, ["-H", f"unix://{sock}", "swarm", "init", "--advertise-addr", "eth9:x"])
        assert rc == 1 and "Error response from daemon: --advertise-addr 'eth9:x': the port" in capsys.readouterr().err
        no_swarm_files(d)


async def test_a_promotion_on_a_busy_port_leaves_a_worker_that_restarts_as_one(tmp_path: Path) -> None:
    """`node promote` of a node whose cluster port is taken: its manager cannot start, so
    state.json still says worker (a restart comes back as a worker, no crash); once the port is
    free, the next node update promotes it."""
    mport, jport = free_port(), free_port()
    async with running_daemon(tmp_path / "m", mport) as (m, mc):
        r = await mc.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{mport}", "AdvertiseAddr": "127.0.0.1"})
        assert r.status == 200, await r.text()
        assert m.manager is not None
        await wait_until(lambda: m.manager.is_leader, 10, "the first manager to lead")
        tokens = (await (await mc.get("/swarm")).json())["JoinTokens"]
        body = {"RemoteAddrs": [f"127.0.0.1:{mport}"], "ListenAddr": f"127.0.0.1:{jport}",
                "AdvertiseAddr": "127.0.0.1", "JoinToken": tokens["Worker"]}

        async def set_spec(node_id: str, **spec: Any) -> None:
            n = await (await mc.get(f"/nodes/{node_id}")).json()
            r = await mc.post(f"/nodes/{node_id}/update?version={n['Version']['Index']}", json={**n["Spec"], **spec})
            assert r.status == 200, await r.text()

        with listening(jport, "127.0.0.1"):
            async with running_daemon(tmp_path / "j", jport) as (j, jc):
                r = await jc.post("/swarm/join", json=body)
                assert r.status == 200, await r.text()
                jid = j.state.data["NodeID"]
                await wait_until(lambda: j.agent is not None and j.agent.connected.is_set(), 10, "the session")
                await set_spec(jid, Role="manager")
                # the node renews its certificate as a manager, then cannot listen
                await wait_until(lambda: (j.certs_dir / "ca.key").exists(), 15, "the manager certificate")
                await wait_until(lambda: j._role_switch is not None and j._role_switch.done(), 15, "the switch to end")
                assert j.manager is None and j.state.data["Role"] == "worker"
            async with running_daemon(tmp_path / "j", jport) as (j2, _):
                assert j2.state.data["Role"] == "worker" and j2.manager is None  # restarted as a worker
                await wait_until(lambda: j2.agent is not None and j2.agent.connected.is_set(), 10, "the session")
        # the port is free now: the next update of the node promotes it
        async with running_daemon(tmp_path / "j", jport) as (j3, _):
            await wait_until(lambda: j3.agent is not None and j3.agent.connected.is_set(), 10, "the session")
            await set_spec(jid, Labels={"retry": "1"})
            await wait_until(lambda: j3.state.data["Role"] == "manager" and j3.manager is not None, 20,
                             "the promotion")
            assert (await (await mc.get(f"/nodes/{jid}")).json())["ManagerStatus"]["Reachability"] in (
                "reachable", "unknown")


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")
async def test_docker_swarm_init_with_the_clis_zero_raft_ticks(tmp_path: Path) -> None:
    """`docker swarm init` sends every SwarmSpec section, with Raft.ElectionTick and
    HeartbeatTick 0 when they are not given: those keep swarmkit's defaults (before: 400
    "RaftConfig.ElectionTick must be at least 1, got 0"), as the engine sanitizes an init."""
    port = free_port()
    async with daemon_on_socket(tmp_path, port) as (d, sock):
        host = f"unix://{sock}"
        rc, out, err = await docker(host, tmp_path, "swarm", "init", "--advertise-addr", "127.0.0.1",
                                    "--listen-addr", f"127.0.0.1:{port}")
        assert rc == 0 and "Swarm initialized" in out, (out, err)
        assert d.manager is not None
        spec = d.manager.cluster["Spec"]
        assert (spec["Raft"]["ElectionTick"], spec["Raft"]["HeartbeatTick"]) == (10, 1)
        assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == 5
        rc, out, err = await docker(host, tmp_path, "info", "--format", "{{.Swarm.LocalNodeState}}")
        assert (rc, out.strip()) == (0, "active"), err
        rc, out, err = await docker(host, tmp_path, "swarm", "leave", "--force")
        assert rc == 0, (out, err)
