"""`swarm init` and the cluster's networks (issue 9): the default address pools, subnet size and data
path port (``--default-addr-pool``, ``--default-addr-pool-mask-length``, ``--data-path-port``; the
API's ``DefaultAddrPool``/``SubnetSize``/``DataPathPort``) are checked, stored on the cluster object,
reported by ``GET /swarm`` and ``/info``, and the ``ingress`` network is created with the cluster,
from those pools. Real daemons on loopback (tests/unit/swarm_daemons.py, as
tests/unit/test_swarm_init_join.py), the real docker CLI when it is installed; no root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from manager.allocator import AddressPools
from manager.clusterconfig import network_config
from shoal.cli import commands
from tests.ports import free_port
from tests.unit.swarm_daemons import daemon_on_socket, no_swarm_files, running_daemon
from tests.unit.test_orchestrator_cli import DOCKER, docker


def test_network_config_defaults_and_values() -> None:
    assert network_config() == {"DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24, "DataPathPort": 4789}
    assert network_config([], 0, 0) == network_config()
    got = network_config(["10.20.0.0/16", " 10.30.0.0/16"], 26, 7789)
    assert got == {"DefaultAddrPool": ["10.20.0.0/16", "10.30.0.0/16"], "SubnetSize": 26, "DataPathPort": 7789}
    # what the allocator reads back from the stored cluster object agrees
    pools = AddressPools.from_cluster(got)
    assert [str(n) for n in pools.networks] == got["DefaultAddrPool"] and pools.subnet_size == 26


@pytest.mark.parametrize("args, message", [
    ((["10.0.0.0/33"], 0, 0), "invalid base pool 10.0.0.0/33"),
    ((["fd00::/8"], 0, 0), "IPv6"),
    ((["nonsense"], 0, 0), "invalid base pool nonsense"),
    ((["10.0.0.0/16", "10.0.128.0/17"], 0, 0), "overlaps with pool 10.0.0.0/16"),
    ((["10.0.0.0/16"], 12, 0), "Subnet size is too small for pool"),
    ((None, 30, 0), "subnet size is out of range: 30"),
    ((None, 7, 0), "subnet size is out of range: 7"),
    ((None, 0, 80), r"Datapath port number is not in valid range \(1024-49151\) : 80"),
    ((None, 0, 49152), "not in valid range"),
    (("10.0.0.0/8", 0, 0), "DefaultAddrPool of type"),
    ((None, "24", 0), "SubnetSize"),
    ((None, 0, -1), "DataPathPort"),
    ((["0.0.0.0/0"], 0, 0), r"invalid base pool 0.0.0.0/0: it overlaps 0.0.0.0/8 \('this network'"),
    ((["127.0.0.0/8"], 0, 0), "loopback"),
    ((["224.0.0.0/4"], 0, 0), "multicast"),
    ((["169.254.0.0/16"], 0, 0), "link-local"),
    ((["10.0.0.0/8", "240.0.0.0/8"], 0, 0), "reserved addresses"),
])
def test_network_config_refusals(args: tuple[Any, Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        network_config(*args)


async def test_init_stores_the_pools_and_makes_the_ingress_network(tmp_path: Path) -> None:
    port = free_port()
    async with running_daemon(tmp_path, port) as (d, c):
        r = await c.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1",
                                              "DefaultAddrPool": ["10.0.0.0/33"]})
        assert r.status == 400 and "invalid base pool 10.0.0.0/33" in (await r.json())["message"]
        no_swarm_files(d)
        r = await c.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1",
                                              "DataPathPort": 99})
        assert r.status == 400 and "Datapath port number" in (await r.json())["message"]
        r = await c.post("/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1",
                                              "DefaultAddrPool": ["10.20.0.0/16", "10.30.0.0/16"],
                                              "SubnetSize": 26, "DataPathPort": 7789})
        assert r.status == 200, await r.text()
        sw = await (await c.get("/swarm")).json()
        assert (sw["DefaultAddrPool"], sw["SubnetSize"], sw["DataPathPort"]) == (
            ["10.20.0.0/16", "10.30.0.0/16"], 26, 7789)
        info = await (await c.get("/info")).json()
        cl = info["Swarm"]["Cluster"]
        assert (cl["DefaultAddrPool"], cl["SubnetSize"], cl["DataPathPort"]) == (
            ["10.20.0.0/16", "10.30.0.0/16"], 26, 7789)
        nets = [n for n in await (await c.get("/networks")).json() if n["Name"] == "ingress"]
        assert len(nets) == 1 and nets[0]["Ingress"] is True and nets[0]["Driver"] == "overlay"
        assert nets[0]["Scope"] == "swarm"
        assert nets[0]["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/26", "Gateway": "10.20.0.1"}]
        # the next network comes from the same pools, after the ingress network's subnet
        r = await c.post("/networks/create", json={"Name": "backend", "Driver": "overlay"})
        assert r.status == 201, await r.text()
        back = await (await c.get("/networks/backend")).json()
        assert back["IPAM"]["Config"][0]["Subnet"] == "10.20.0.64/26"


def test_cli_swarm_init_sends_the_pools() -> None:
    a = commands.build_parser().parse_args([
        "swarm", "init", "--default-addr-pool", "10.20.0.0/16", "--default-addr-pool", "10.30.0.0/16",
        "--default-addr-pool-mask-length", "26", "--data-path-port", "7789"])
    sent: dict[str, Any] = {}

    class FakeClient:
        def swarm_init(self, advertise: str, listen: str, **kw: Any) -> str:
            sent.update(kw)
            return "node1"

        def swarm_inspect(self) -> dict[str, Any]:
            return {"JoinTokens": {"Worker": "SWMTKN-1-x"}}

        def info(self) -> dict[str, Any]:
            return {"Swarm": {"NodeAddr": "127.0.0.1"}}

    class Out:
        text = ""

        def write(self, s: str) -> int:
            Out.text += s
            return len(s)

    assert a.func(FakeClient(), a, Out()) == 0
    assert sent == {"force_new_cluster": False, "default_addr_pool": ["10.20.0.0/16", "10.30.0.0/16"],
                    "subnet_size": 26, "data_path_port": 7789}


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")
async def test_docker_swarm_init_with_pools_and_data_path_port(tmp_path: Path) -> None:
    port = free_port()
    async with daemon_on_socket(tmp_path, port) as (_, sock):
        host = f"unix://{sock}"
        rc, out, err = await docker(host, tmp_path, "swarm", "init", "--advertise-addr", "127.0.0.1",
                                    "--listen-addr", f"127.0.0.1:{port}", "--default-addr-pool", "10.40.0.0/16",
                                    "--default-addr-pool-mask-length", "25", "--data-path-port", "7790")
        assert rc == 0 and "Swarm initialized" in out, (out, err)
        rc, out, err = await docker(host, tmp_path, "info")
        assert rc == 0, err
        assert "Default Address Pool: 10.40.0.0/16" in out and "SubnetSize: 25" in out, out
        assert "Data Path Port: 7790" in out, out
        rc, out, err = await docker(host, tmp_path, "network", "ls", "--filter", "name=ingress",
                                    "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
        assert (rc, out.strip()) == (0, "ingress overlay swarm"), err
        # the ingress network can be removed (no service publishes) and made again; `docker network
        # rm ingress` asks for a confirmation on the terminal, so the API call it makes is made here
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
            async with http.delete("http://shoal/v1.41/networks/ingress") as r:
                assert r.status == 204, await r.text()
        rc, out, err = await docker(host, tmp_path, "network", "create", "--ingress", "-d", "overlay", "mesh")
        assert rc == 0, (out, err)
        rc, out, err = await docker(host, tmp_path, "network", "inspect", "mesh", "--format",
                                    "{{.Ingress}} {{(index .IPAM.Config 0).Subnet}}")
        assert (rc, out.strip()) == (0, "true 10.40.0.0/25"), err
        rc, out, err = await docker(host, tmp_path, "swarm", "leave", "--force")
        assert rc == 0, (out, err)


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")
async def test_docker_cli_publish_network_and_refusals(tmp_path: Path) -> None:
    """The docker CLI's `service create --publish/--network`, `service ls` PORTS, `service inspect`'s
    Endpoint, `service update --publish-add/--network-rm` (a full spec update), and the refusals it
    prints: a port held by another service (409 naming it), dnsrr with an ingress port, an unknown
    network, the ingress network removed while a service publishes on it."""
    port = free_port()
    create = ("service", "create", "--detach", "--no-resolve-image")
    async with daemon_on_socket(tmp_path, port) as (_, sock):
        host = f"unix://{sock}"
        rc, out, err = await docker(host, tmp_path, "swarm", "init", "--advertise-addr", "127.0.0.1",
                                    "--listen-addr", f"127.0.0.1:{port}")
        assert rc == 0, (out, err)
        rc, out, err = await docker(host, tmp_path, "network", "create", "-d", "overlay", "--subnet", "10.5.0.0/24",
                                    "back")
        assert rc == 0, (out, err)
        rc, out, err = await docker(host, tmp_path, *create, "--name", "web", "--publish", "8080:80",
                                    "--publish", "published=2222,target=22,mode=host", "--network", "back",
                                    "busybox", "sleep", "100")
        assert rc == 0, (out, err)
        rc, out, err = await docker(host, tmp_path, "service", "ls", "--format", "{{.Name}} {{.Ports}}")
        assert (rc, out.strip()) == (0, "web *:8080->80/tcp"), err  # docker/cli shows ingress ports only
        rc, out, err = await docker(host, tmp_path, "service", "inspect", "web", "--format",
                                    "{{range .Endpoint.Ports}}{{.PublishMode}}:{{.PublishedPort}}->{{.TargetPort}} "
                                    "{{end}}{{len .Endpoint.VirtualIPs}} {{.Endpoint.Spec.Mode}}")
        assert (rc, out.strip()) == (0, "ingress:8080->80 host:2222->22 2 vip"), err
        rc, out, err = await docker(host, tmp_path, "service", "inspect", "web", "--format",
                                    "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}")
        assert rc == 0 and any(a.startswith("10.5.0.") for a in out.split()), (out, err)

        # refusals, as the CLI prints them
        rc, out, err = await docker(host, tmp_path, *create, "--name", "api", "--publish", "8080:81", "busybox")
        assert rc != 0 and "port '8080/tcp' is already in use by service 'web'" in err, (out, err)
        rc, out, err = await docker(host, tmp_path, *create, "--name", "rr", "--endpoint-mode", "dnsrr",
                                    "--publish", "8081:80", "busybox")
        assert rc != 0 and "can't be used with dnsrr mode" in err, (out, err)
        rc, out, err = await docker(host, tmp_path, *create, "--name", "lost", "--network", "nowhere", "busybox")
        assert rc != 0 and "network nowhere not found" in err, (out, err)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
            async with http.delete("http://shoal/v1.41/networks/ingress") as r:
                assert r.status == 400
                assert "ingress network cannot be removed because service web" in (await r.json())["message"]
            # the statuses: a port held by another service 409, a malformed port 400
            base_spec = {"Name": "api", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}
            for ports, status, msg in (
                    ([{"TargetPort": 81, "PublishedPort": 8080}], 409, "already in use by service 'web'"),
                    ([{"TargetPort": 0, "PublishedPort": 8085}], 400, "target port 0"),
                    ([{"TargetPort": 81, "Protocol": "icmp"}], 400, "invalid protocol"),
                    ([{"TargetPort": 81, "PublishedPort": "8085"}], 400, "cannot unmarshal string")):
                body = {**base_spec, "EndpointSpec": {"Ports": ports}}
                async with http.post("http://shoal/v1.41/services/create", json=body) as r:
                    assert r.status == status and msg in (await r.json())["message"], (ports, await r.text())

        # --publish-add / --network-rm: the CLI sends the whole spec; the Endpoint follows it
        rc, out, err = await docker(host, tmp_path, "service", "update", "--detach", "--publish-add", "9090:90",
                                    "--publish-rm", "22", "--network-rm", "back", "web")
        assert rc == 0, (out, err)
        rc, out, err = await docker(host, tmp_path, "service", "ls", "--format", "{{.Ports}}")
        assert (rc, out.strip()) == (0, "*:8080->80/tcp, *:9090->90/tcp"), err
        rc, out, err = await docker(host, tmp_path, "service", "inspect", "web", "--format",
                                    "{{len .Endpoint.VirtualIPs}} {{len .Spec.TaskTemplate.Networks}}")
        assert (rc, out.strip()) == (0, "1 0"), err
        rc, out, err = await docker(host, tmp_path, "swarm", "leave", "--force")
        assert rc == 0, (out, err)
