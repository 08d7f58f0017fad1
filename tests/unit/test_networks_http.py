"""The network routes (shoal.daemon.http.networks) through shoald's whole application
(build_app: middleware, error rendering, the 501 table) with a ManagerTestDouble over a real
store: overlay networks created, listed, filtered, inspected and removed through
manager.controlapi.networks on a manager; only the local bridge on a worker or outside a swarm.
Then the `shoal network` commands and the real `docker network` CLI (skipped without `docker` on
PATH) against the application on a unix socket."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.specs import default_swarm_spec
from manager.store import Store
from shoal.cli import commands as cli
from shoal.daemon.daemon import Daemon
from shoal.daemon.errors import NOT_IN_SWARM, WORKER_NOT_MANAGER
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args
from tests.stores import open_store
from tests.unit.test_api import ManagerTestDouble
from tests.unit.test_orchestrator_cli import DOCKER, docker

NEED_DOCKER = pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")

Client = TestClient[web.Request, web.Application]


class Manager(ManagerTestDouble):
    """The manager role as the network routes use it: the store, the read barrier (counted)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.barriers = 0

    async def read_barrier(self) -> None:
        self.barriers += 1


def _args(base: Path) -> Any:
    return parse_args(["--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                       "--socket", str(base / "s.sock"), "--cgroup-parent", "shoal-unit-test"])


def as_manager(daemon: Daemon, mgr: Manager) -> None:
    daemon.state.data = {"NodeID": "n1", "Role": "manager"}
    daemon.manager = mgr


def as_worker(daemon: Daemon) -> None:
    daemon.state.data = {"NodeID": "n1", "Role": "worker"}
    daemon.manager = None


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, Daemon, Manager]]:
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    mgr = Manager(store)
    daemon = Daemon(_args(tmp_path))
    as_manager(daemon, mgr)
    client: Client = TestClient(TestServer(build_app(daemon)))
    await client.start_server()
    try:
        yield client, daemon, mgr
    finally:
        daemon.manager = None
        await client.close()
        await store.close()


async def expect(r: Any, status: int, message: str, exact: bool = False) -> None:
    text = await r.text()
    assert r.status == status, (r.method, r.url, text)
    assert r.headers["Content-Type"] == "application/json"  # exactly: the docker CLI needs it so
    got = json.loads(text)["message"]
    assert (got == message) if exact else (message in got), got


def overlay(name: str, subnet: str = "", **kw: Any) -> dict[str, Any]:
    """A NetworkCreateRequest as the docker CLI sends it."""
    config = [{"Subnet": subnet}] if subnet else []
    return {"Name": name, "Driver": "overlay", "IPAM": {"Driver": "default", "Config": config}, **kw}


def filters(**f: list[str]) -> str:
    return quote(json.dumps(f))


async def names(client: Client, query: str = "") -> list[str]:
    r = await client.get("/v1.41/networks" + query)
    assert r.status == 200, await r.text()
    return [n["Name"] for n in await r.json()]


async def test_create_list_inspect_remove(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, mgr = env
    r = await client.post("/v1.41/networks/create", json=overlay("backend", "10.20.0.0/24", Labels={"tier": "db"}))
    assert r.status == 201, await r.text()
    created = await r.json()
    nid = created["Id"]
    assert created == {"Id": nid, "Warning": ""}
    r = await client.post("/networks/create", json={"name": "front", "driver": "overlay", "attachable": True})
    assert r.status == 201, await r.text()  # keys case-insensitive as Go's decoder; a subnet from the pool

    before = mgr.barriers
    assert await names(client) == ["bridge", "backend", "front"]
    assert mgr.barriers == before + 1  # swarm reads after the read barrier

    for ref in ("backend", nid, nid[:5]):
        r = await client.get(f"/v1.41/networks/{ref}?scope=swarm&verbose=true")
        assert r.status == 200, (ref, await r.text())
        net = await r.json()
        assert net["Id"] == nid and net["Name"] == "backend"
    assert net["Driver"] == "overlay" and net["Scope"] == "swarm" and net["Labels"] == {"tier": "db"}
    assert net["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.1"}]
    assert net["Options"]["com.docker.network.driver.overlay.vxlanid_list"].isdigit()
    front = await (await client.get("/networks/front")).json()
    assert front["Attachable"] is True and front["IPAM"]["Config"][0]["Subnet"].startswith("10.")

    # the bridge: any scope but swarm; by name, ID, ID prefix
    for path in ("/networks/bridge", "/networks/shoal-bridge?scope=local", "/networks/shoal-b"):
        r = await client.get(path)
        assert r.status == 200 and (await r.json())["Driver"] == "bridge", path
    await expect(await client.get("/networks/bridge?scope=swarm"), 404, "network bridge not found", exact=True)
    await expect(await client.get("/networks/backend?scope=local"), 404, "network backend not found", exact=True)
    await expect(await client.get("/networks/backend?scope=planet"), 400, "invalid scope")
    await expect(await client.get("/networks/nope"), 404, "network nope not found", exact=True)

    r = await client.delete(f"/v1.41/networks/{nid}")
    assert r.status == 204, await r.text()
    r = await client.delete("/networks/front")
    assert r.status == 204, await r.text()
    assert await names(client) == ["bridge"]
    assert mgr.store.view().list("networks") == []
    await expect(await client.delete("/networks/backend"), 404, "network backend not found")


async def test_list_filters_apply_to_the_bridge_too(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, _ = env
    for body in (overlay("backend", Labels={"tier": "db"}), overlay("frontend")):
        assert (await client.post("/networks/create", json=body)).status == 201
    backend = await (await client.get("/networks/backend")).json()
    assert await names(client, "?filters=" + filters(driver=["overlay"])) == ["backend", "frontend"]
    assert await names(client, "?filters=" + filters(driver=["bridge"])) == ["bridge"]
    assert await names(client, "?filters=" + filters(scope=["local"])) == ["bridge"]
    assert await names(client, "?filters=" + filters(scope=["swarm"])) == ["backend", "frontend"]
    assert await names(client, "?filters=" + filters(type=["builtin"])) == ["bridge"]
    assert await names(client, "?filters=" + filters(type=["custom"])) == ["backend", "frontend"]
    assert await names(client, "?filters=" + filters(name=["end"])) == ["backend", "frontend"]
    assert await names(client, "?filters=" + filters(name=["^b"])) == ["bridge", "backend"]
    assert await names(client, "?filters=" + filters(name=["bridge"])) == ["bridge"]
    assert await names(client, "?filters=" + filters(label=["tier=db"])) == ["backend"]
    assert await names(client, "?filters=" + filters(label=["tier"])) == ["backend"]
    assert await names(client, "?filters=" + filters(id=[backend["Id"][:6]])) == ["backend"]
    assert await names(client, "?filters=" + filters(id=["shoal-bridge"])) == ["bridge"]
    # the older {"key": {"value": true}} form
    assert await names(client, "?filters=" + quote(json.dumps({"driver": {"bridge": True}}))) == ["bridge"]
    await expect(await client.get("/networks?filters=" + filters(dangling=["true"])), 400, "invalid filter 'dangling'")
    await expect(await client.get("/networks?filters=" + filters(type=["odd"])), 400, "invalid filter 'type=odd'")
    await expect(await client.get("/networks?filters=" + filters(scope=["odd"])), 400, "invalid filter 'scope=odd'")
    await expect(await client.get("/networks?filters={bad"), 400, "invalid filter")


async def test_bad_create_requests(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, mgr = env
    for body in ({"Name": "n"}, {"Name": "n", "Driver": "bridge"}, {"Name": "n", "driver": "local"}):
        await expect(await client.post("/networks/create", json=body), 400,
                     "each node has one local bridge network (bridge)")
    await expect(await client.post("/networks/create", json={"Name": "n", "Driver": "macvlan"}), 400,
                 "network driver 'macvlan' is not supported: shoal creates overlay networks only")
    await expect(await client.post("/networks/create", data=b""), 400, "invalid JSON")
    await expect(await client.post("/networks/create", data=b"{nope"), 400, "invalid JSON")
    await expect(await client.post("/networks/create", json=overlay("")), 400, "name must be provided")
    await expect(await client.post("/networks/create", json=overlay("bridge")), 403,
                 "bridge is a pre-defined network and cannot be created")
    await expect(await client.post("/networks/create", json=overlay("x", Options={"encrypted": ""})), 400,
                 "encrypted overlay networks are not supported")
    await expect(await client.post("/networks/create", json=overlay("x", "10.20.0.0/33")), 400, "InvalidArgument")

    assert (await client.post("/networks/create", json=overlay("backend", "10.20.0.0/24"))).status == 201
    await expect(await client.post("/networks/create", json=overlay("backend", "10.30.0.0/24")), 409,
                 "network with name backend already exists")
    await expect(await client.post("/networks/create", json=overlay("other", "10.20.0.0/16")), 400, "overlaps")
    assert [n["Spec"]["Name"] for n in mgr.store.view().list("networks")] == ["backend"]


async def test_remove_the_bridge_or_a_network_in_use(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, mgr = env
    for ref in ("bridge", "shoal-bridge"):
        await expect(await client.delete(f"/networks/{ref}"), 403,
                     "bridge is a pre-defined network and cannot be removed", exact=True)
    nid = (await (await client.post("/networks/create", json=overlay("backend"))).json())["Id"]
    spec = {"Name": "db", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "Networks": [{"Target": nid}]},
            "Mode": {"Replicated": {"Replicas": 1}}}
    await mgr.store.update(lambda tx: tx.create("services", {"ID": "svc1", "Spec": spec}))
    await expect(await client.delete("/networks/backend"), 400, "is in use by service db (svc1)")
    assert len(mgr.store.view().list("networks")) == 1
    await mgr.store.update(lambda tx: tx.delete("services", "svc1"))
    assert (await client.delete("/networks/backend")).status == 204


async def test_a_worker_and_a_node_outside_a_swarm_serve_only_the_bridge(
        env: tuple[Client, Daemon, Manager]) -> None:
    client, daemon, mgr = env
    assert (await client.post("/networks/create", json=overlay("backend"))).status == 201
    for state, refusal in ((as_worker, WORKER_NOT_MANAGER), (lambda d: setattr(d.state, "data", {}), NOT_IN_SWARM)):
        state(daemon)
        barriers = mgr.barriers
        assert await names(client) == ["bridge"]
        assert await names(client, "?filters=" + filters(type=["custom"])) == []
        assert (await client.get("/networks/bridge")).status == 200
        await expect(await client.get("/networks/backend"), 404, "network backend not found", exact=True)
        await expect(await client.post("/networks/create", json=overlay("other")), 503, refusal, exact=True)
        # a non-overlay driver is refused as on a manager: the node's bridge is its only local network
        await expect(await client.post("/networks/create", json={"Name": "x"}), 400, "one local bridge network")
        await expect(await client.delete("/networks/backend"), 404, "network backend not found", exact=True)
        await expect(await client.delete("/networks/bridge"), 403, "pre-defined network")
        assert mgr.barriers == barriers
    as_manager(daemon, mgr)
    assert await names(client) == ["bridge", "backend"]


async def test_a_manager_without_quorum_answers_503_for_swarm_reads(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, mgr = env
    from manager.store import Unavailable

    async def no_quorum() -> None:
        raise Unavailable("no leader")

    mgr.read_barrier = no_quorum  # type: ignore[method-assign]
    r = await client.get("/networks")
    assert r.status == 503, await r.text()
    # the bridge needs no barrier
    assert (await client.get("/networks/bridge")).status == 200


async def test_unserved_network_routes_still_answer_501(env: tuple[Client, Daemon, Manager]) -> None:
    client, _, _ = env
    for method, path in (("POST", "/networks/bridge/connect"), ("POST", "/v1.41/networks/x/disconnect"),
                         ("POST", "/networks/prune")):
        await expect(await client.request(method, path, json={}), 501,
                     "connecting, disconnecting and pruning networks is not supported by Shoal yet")


# -- the CLIs against a unix socket ---------------------------------------------------------------

@pytest.fixture
async def sock() -> AsyncIterator[tuple[str, Path, Daemon, Manager]]:
    base = Path(tempfile.mkdtemp(prefix="shoal-net-"))
    store = await open_store(base / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    mgr = Manager(store)
    daemon = Daemon(_args(base))
    as_manager(daemon, mgr)
    runner = web.AppRunner(build_app(daemon))
    await runner.setup()
    await web.UnixSite(runner, str(base / "api.sock")).start()
    try:
        yield f"unix://{base / 'api.sock'}", base, daemon, mgr
    finally:
        daemon.manager = None
        await runner.cleanup()
        await store.close()
        shutil.rmtree(base, ignore_errors=True)


async def shoal(host: str, *argv: str) -> tuple[int, str]:
    """Run the `shoal` CLI (blocking http.client) in a thread against ``host``."""
    out = io.StringIO()
    rc = await asyncio.to_thread(cli.main, ["--host", host, *argv], out)
    return rc, out.getvalue()


async def test_shoal_network_commands(sock: tuple[str, Path, Daemon, Manager],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    host, _, _, mgr = sock
    rc, out = await shoal(host, "network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.254",
                          "--ip-range", "10.20.0.128/25", "--attachable", "--label", "tier=db", "--opt", "mtu=1400",
                          "backend")
    assert rc == 0, capsys.readouterr().err
    nid = out.strip()
    stored = mgr.store.view().get("networks", nid)
    assert stored is not None
    assert stored["Spec"]["Attachable"] is True and stored["Spec"]["Labels"] == {"tier": "db"}
    assert stored["Spec"]["DriverConfiguration"]["Options"] == {"mtu": "1400"}
    assert stored["IPAMOptions"]["Configs"] == [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.254",
                                                 "Range": "10.20.0.128/25"}]
    assert (await shoal(host, "network", "create", "-d", "overlay", "front"))[0] == 0

    rc, out = await shoal(host, "network", "ls")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    rows = [ln.split() for ln in lines[1:]]
    assert rows[0] == [nid[:12], "backend", "overlay", "swarm"]
    assert rows[1] == ["shoal-bridge", "bridge", "bridge", "local"]
    assert rows[2][1:] == ["front", "overlay", "swarm"]
    rc, out = await shoal(host, "network", "ls", "-q", "-f", "driver=overlay", "-f", "label=tier=db")
    assert (rc, out) == (0, nid[:12] + "\n")
    rc, out = await shoal(host, "network", "ls", "--no-trunc", "-q", "--filter", "name=backend")
    assert (rc, out) == (0, nid + "\n")

    rc, out = await shoal(host, "network", "inspect", "backend", "bridge")
    assert rc == 0
    assert [n["Name"] for n in json.loads(out)] == ["backend", "bridge"]

    # errors as the docker CLI prints them
    capsys.readouterr()
    rc, _ = await shoal(host, "network", "create", "-d", "bridge", "x")
    assert rc == 1 and "Error response from daemon: each node has one local bridge" in capsys.readouterr().err
    rc, _ = await shoal(host, "network", "create", "--gateway", "10.1.0.1", "x")
    assert rc == 1 and "every ip-range or gateway must have a corresponding subnet" in capsys.readouterr().err
    rc, _ = await shoal(host, "network", "ls", "-f", "nonsense")
    assert rc == 1 and "bad format of filter" in capsys.readouterr().err

    rc, out = await shoal(host, "network", "rm", "backend", "bridge", "front")
    assert rc == 1 and out == "backend\nfront\n"
    assert "bridge is a pre-defined network and cannot be removed" in capsys.readouterr().err
    assert mgr.store.view().list("networks") == []


@NEED_DOCKER
async def test_the_docker_cli_drives_networks(sock: tuple[str, Path, Daemon, Manager]) -> None:
    host, base, _, mgr = sock
    rc, out, err = await docker(host, base, "network", "create", "-d", "overlay", "--subnet", "10.20.0.0/24", "backend")
    assert rc == 0, (out, err)
    nid = out.strip()
    assert mgr.store.view().get("networks", nid) is not None

    rc, out, err = await docker(host, base, "network", "ls")
    assert rc == 0, (out, err)
    rows = [ln.split() for ln in out.splitlines()]
    assert rows[0] == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [nid[:12], "backend", "overlay", "swarm"] in rows and ["shoal-bridge", "bridge", "bridge", "local"] in rows
    rc, out, err = await docker(host, base, "network", "ls", "-q", "--filter", "driver=overlay")
    assert (rc, out) == (0, nid[:12] + "\n"), err

    rc, out, err = await docker(host, base, "network", "inspect", "backend")
    assert rc == 0, (out, err)
    [net] = json.loads(out)
    assert net["Id"] == nid and net["Scope"] == "swarm"
    assert net["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.1"}]
    rc, out, err = await docker(host, base, "network", "inspect", "-f", "{{.Driver}}", "bridge")
    assert (rc, out) == (0, "bridge\n"), err

    for argv, words in ((("network", "create", "x"), "each node has one local bridge network"),
                        (("network", "create", "-d", "overlay", "--subnet", "10.20.0.0/16", "x"), "overlaps"),
                        (("network", "create", "-d", "overlay", "backend"), "network with name backend already exists"),
                        (("network", "create", "-d", "overlay", "--opt", "encrypted", "x"),
                         "encrypted overlay networks are not supported"),
                        (("network", "rm", "bridge"), "bridge is a pre-defined network and cannot be removed")):
        rc, out, err = await docker(host, base, *argv)
        assert rc != 0 and err.startswith("Error response from daemon: ") and words in err, (argv, out, err)

    rc, out, err = await docker(host, base, "network", "rm", "backend")
    assert (rc, out) == (0, "backend\n"), err
    assert mgr.store.view().list("networks") == []
    rc, out, err = await docker(host, base, "network", "ls", "--format", "{{.Name}}")
    assert (rc, out) == (0, "bridge\n"), err
