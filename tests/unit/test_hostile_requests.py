"""Hostile API requests (issue 7, "Requests and daemons"): every write endpoint answers a
malformed, oversized, deeply nested or wrongly typed body with a 4xx and Docker's JSON
``{"message": ...}``, never a 500 or a traceback, and stores nothing.

The app is shoald's whole API (its middleware in front of the manager's routes), served by a
Daemon that believes it is a manager leader: ``ManagerTestDouble`` (a real Store on a temp WAL)
stands in for the Manager, so a request goes the same way as on a real node."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.manager import raft_config
from manager.specs import default_swarm_spec
from shoal.base.boundedjson import MAX_JSON_BYTES, MAX_JSON_DEPTH
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.app import build_app
from shoal.daemon.main import parse_args
from tests.ports import free_port
from tests.stores import open_store
from tests.unit.test_api import ManagerTestDouble, _node, creating

Client = TestClient[web.Request, web.Application]

SERVICE = {"Name": "web", "Labels": {"a": "b"},
           "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1"], "Env": ["A=1"],
                                              "Labels": {"x": "y"}},
                            "RestartPolicy": {"Condition": "any", "Delay": 1, "MaxAttempts": 1},
                            "Placement": {"Constraints": ["node.role==worker"]},
                            "Resources": {"Limits": {"MemoryBytes": 1 << 26}}},
           "Mode": {"Replicated": {"Replicas": 1}},
           "UpdateConfig": {"Parallelism": 1, "Order": "stop-first"},
           "EndpointSpec": {"Mode": "vip"}}
NODE_SPEC = {"Role": "worker", "Availability": "active", "Labels": {"k": "v"}, "Name": "n"}

DEEP_ARRAY = b"[" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000
GENERIC_BODIES: list[tuple[str, bytes]] = [
    ("deep array", DEEP_ARRAY),
    ("deep object", DEEP_OBJECT),
    ("deep but closed", b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)),
    ("array", b"[]"),
    ("string", b'"web"'),
    ("number", b"5"),
    ("null", b"null"),
    ("not UTF-8", b'\xff\xfe{"Name": 1}'),
    ("NaN", b'{"Name": NaN}'),
    ("float overflow", b'{"Name": 1e999}'),
    ("lone surrogate", b'{"Name": "\\ud800"}'),
    ("huge integer", b'{"Name": ' + b"9" * 5000 + b"}"),
    ("truncated", b'{"Name": "x", '),
    ("over the size limit", b'{"Name": "' + b"x" * (MAX_JSON_BYTES + 10) + b'"}'),
]

# a value of every JSON type, and numbers Go would not fit, put in place of each field in turn
WRONG_VALUES: list[Any] = [[], {}, "x", 5, -1, None, True, 1.5, 2**70, [1, "a"], {"a": [1]}, 200_000]


def paths(v: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path (keys and list indexes) into ``v``."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield (*prefix, k)
            yield from paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield (*prefix, i)
            yield from paths(x, (*prefix, i))


def mutated(v: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(v)
    cur = out
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return out


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, ManagerTestDouble, Daemon]]:
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    await store.update(creating("nodes", *[_node(f"node{i}abc", f"h{i}") for i in (1, 2)]))
    mgr = ManagerTestDouble(store)
    mgr.is_leader = True  # type: ignore[attr-defined]

    async def read_barrier() -> None:
        return None

    mgr.read_barrier = read_barrier  # type: ignore[attr-defined]
    args = parse_args(["--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
                       "--socket", str(tmp_path / "s.sock"), "--cgroup-parent", "shoal-unit-test",
                       "--max-image-archive-size", "1m", "--port", str(free_port())])
    daemon = Daemon(args)
    daemon.manager = mgr
    daemon.state.data = {"NodeID": "node1abc", "Role": "manager"}  # in memory only: never saved
    client = TestClient(TestServer(build_app(daemon)))
    await client.start_server()
    try:
        yield client, mgr, daemon
    finally:
        daemon.manager = None
        await client.close()
        await store.close()


def _manager_of(env: tuple[Client, ManagerTestDouble, Daemon]) -> ManagerTestDouble:
    return env[1]


async def assert_refused(r: Any, what: str, statuses: tuple[int, ...] = (400, 413)) -> str:
    text = await r.text()
    assert r.status in statuses, f"{what}: {r.status} {text[:300]}"
    assert r.headers["Content-Type"] == "application/json", what
    msg = json.loads(text)["message"]
    assert isinstance(msg, str) and msg and "Traceback" not in msg, what
    return msg


async def post(client: Client, method: str, path: str, body: bytes) -> Any:
    return await client.request(method, path, data=body, headers={"Content-Type": "application/json"})


async def write_endpoints(client: Client, mgr: ManagerTestDouble) -> list[tuple[str, str]]:
    """(method, path) of every write endpoint that takes a JSON body, with valid IDs/versions."""
    r = await client.post("/services/create", json={**SERVICE, "Name": "existing"})
    assert r.status == 201, await r.text()
    svc = mgr.store.view().find_by_name("services", "existing")
    node = mgr.store.view().get("nodes", "node2abc")
    cluster = mgr.store.view().get("cluster", "cluster1")
    assert svc is not None and node is not None and cluster is not None
    return [
        ("POST", "/v1.41/services/create"),
        ("POST", f"/v1.41/services/{svc['ID']}/update?version={svc['Version']['Index']}"),
        ("POST", f"/v1.41/nodes/node2abc/update?version={node['Version']['Index']}"),
        ("POST", f"/v1.41/swarm/update?version={cluster['Version']['Index']}"),
    ]


async def test_generic_hostile_bodies_are_4xx_on_every_write_endpoint(
        env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    client, mgr, _ = env
    endpoints = await write_endpoints(client, mgr)
    before = mgr.store.snapshot_bytes()
    for method, path in endpoints:
        for name, body in GENERIC_BODIES:
            msg = await assert_refused(await post(client, method, path, body), f"{name} to {path}")
            if name.startswith("deep"):
                assert "nesting too deep" in msg, (path, msg)
            if name == "over the size limit":
                assert "too large" in msg or "over the limit" in msg, (path, msg)
    assert mgr.store.snapshot_bytes() == before, "a refused request changed the store"


async def test_hostile_bodies_to_swarm_init_and_join_and_deep_filters(
        env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    client, _, daemon = env
    daemon.manager = None
    daemon.state.data = {}  # not in a swarm: /swarm/init and /swarm/join act on their bodies
    # (JSON null is an empty request for Go's decoder, as for Docker: left out here, it would init)
    for path in ("/swarm/init", "/swarm/join"):
        for name, body in GENERIC_BODIES:
            if name == "null":
                continue
            msg = await assert_refused(await post(client, "POST", path, body), f"{name} to {path}")
            if name.startswith("deep"):
                assert msg.startswith("invalid JSON") and "nesting too deep" in msg, msg
    assert not daemon.state.path.exists() and not daemon.certs_dir.exists()
    daemon.manager = _manager_of(env)
    daemon.state.data = {"NodeID": "node1abc", "Role": "manager"}
    for path in ("/services", "/tasks", "/nodes"):
        # 2000 levels: deeper than the decoder's stack allows, and the URL still within aiohttp's
        # 8 KiB request-line limit (a longer one is refused by aiohttp's parser before the app)
        r = await client.get(path, params={"filters": "[" * 2000})
        msg = await assert_refused(r, f"deep filters on {path}")
        assert "nesting too deep" in msg
        r = await client.get(path, params={"filters": '{"name": 5}'})
        await assert_refused(r, f"filters of the wrong type on {path}")


async def test_every_field_of_a_service_spec_with_a_wrong_type(env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    """Each field of a valid ServiceSpec replaced by each JSON type in turn: accepted (2xx) or a
    4xx with a message, never a 500; what is accepted can be read back."""
    client, mgr, _ = env
    endpoints = await write_endpoints(client, mgr)
    create = endpoints[0][1]
    n = 0
    for path in paths(SERVICE):
        for value in WRONG_VALUES:
            spec = mutated(SERVICE, path, value)
            spec["Name"] = spec["Name"] if path == ("Name",) else f"s{n}"
            n += 1
            r = await client.post(create, json=spec)
            if r.status >= 300:
                await assert_refused(r, f"{path}={value!r}", (400, 409, 413, 501))
            else:
                sid = (await r.json())["ID"]
                r = await client.get(f"/services/{sid}?insertDefaults=true")
                assert r.status == 200, (path, value, await r.text())
    assert n > 100


async def test_wrong_types_for_swarm_node_and_service_update(env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    client, mgr, _ = env
    for path in paths(NODE_SPEC):
        for value in WRONG_VALUES:
            node = mgr.store.view().get("nodes", "node2abc")
            assert node is not None
            r = await client.post(f"/nodes/node2abc/update?version={node['Version']['Index']}",
                                  json=mutated(NODE_SPEC, path, value))
            if r.status >= 300:
                await assert_refused(r, f"node {path}={value!r}")
    swarm_spec = default_swarm_spec()
    for path in paths(swarm_spec):
        for value in WRONG_VALUES:
            cluster = mgr.store.view().get("cluster", "cluster1")
            assert cluster is not None
            r = await client.post(f"/swarm/update?version={cluster['Version']['Index']}",
                                  json=mutated(swarm_spec, path, value))
            if r.status >= 300:
                await assert_refused(r, f"swarm {path}={value!r}")
            else:
                r = await client.get("/swarm")
                assert r.status == 200, (path, value, await r.text())
                raft_config((await r.json())["Spec"])  # what a manager reads from it when it starts
    r = await client.post("/services/create", json=SERVICE)
    sid = (await r.json())["ID"]
    for path in [("Mode", "Replicated", "Replicas"), ("TaskTemplate",), ("Mode",), ("EndpointSpec", "Ports")]:
        for value in WRONG_VALUES:
            svc = mgr.store.view().get("services", sid)
            assert svc is not None
            spec = mutated(SERVICE, path, value) if path != ("EndpointSpec", "Ports") else \
                {**SERVICE, "EndpointSpec": {"Ports": value}}
            r = await client.post(f"/services/{sid}/update?version={svc['Version']['Index']}", json=spec)
            if r.status >= 300:
                await assert_refused(r, f"update {path}={value!r}", (400, 501))


INIT_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"Spec": []}, "cannot unmarshal array"),
    ({"ListenAddr": 5}, "InitRequest.ListenAddr"),
    ({"AdvertiseAddr": ["10.0.0.1"]}, "InitRequest.AdvertiseAddr"),
    ({"ForceNewCluster": "yes"}, "InitRequest.ForceNewCluster"),
    ({"ListenAddr": "[::1]:2377"}, "IPv6"),
    ({"ListenAddr": "0.0.0.0:99999"}, "the port must be a number from 1 to 65535"),
    ({"ListenAddr": "no-such-if0"}, "neither an IPv4 address nor the name of a network interface"),
    ({"AdvertiseAddr": "no-such-if0:2377"}, "neither an IPv4 address nor the name of a network interface"),
    ({"ListenAddr": "203.0.113.77:2377"}, "not an address of this host"),
    ({"AdvertiseAddr": "10.0.0.1", "Spec": {"Raft": []}}, "Raft must be a JSON object"),
    ({"AdvertiseAddr": "10.0.0.1", "Spec": {"Name": 5}}, "SwarmSpec.Name"),
]
JOIN_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"RemoteAddrs": "10.0.0.1:2377", "JoinToken": "SWMTKN-1-x"}, "JoinRequest.RemoteAddrs"),
    ({"RemoteAddrs": [5], "JoinToken": "SWMTKN-1-x"}, "JoinRequest.RemoteAddrs"),
    ({"RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": 5}, "JoinToken"),
    ({"RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": "SWMTKN-1-x", "ListenAddr": {}}, "ListenAddr"),
    ({"RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": "SWMTKN-1-x", "AdvertiseAddr": "[fe80::1]"}, "IPv6"),
]


async def test_swarm_init_and_join_bodies_of_the_wrong_shape(env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    client, _, daemon = env
    daemon.manager = None
    daemon.state.data = {}
    for body, words in INIT_BODIES:
        msg = await assert_refused(await client.post("/swarm/init", json=body), f"init {body}")
        assert words in msg, (body, msg)
        assert not daemon.state.path.exists() and not daemon.certs_dir.exists()
        assert not (daemon.data_root / "manager").exists()
    for body, words in JOIN_BODIES:
        msg = await assert_refused(await client.post("/swarm/join", json=body), f"join {body}")
        assert words in msg, (body, msg)
    assert not daemon.state.path.exists()


async def test_image_load_streams_past_the_json_limit_up_to_its_own_cap(
        env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    """`image load` is not held to the JSON limit (it streams to disk) but to
    --max-image-archive-size (1 MiB here): over it is a 413 and no temp file stays."""
    client, _, daemon = env
    assert daemon.args.max_image_archive_size == 1 << 20

    async def chunks(total: int) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            n = min(1 << 16, total - sent)
            sent += n
            yield b"\0" * n

    # over the cap without a Content-Length (chunked): refused while streaming
    r = await client.post("/images/load", data=chunks(3 << 20))
    msg = await assert_refused(r, "image load over the cap", (413,))
    assert "--max-image-archive-size" in msg
    # over the cap by its Content-Length: refused before reading
    r = await client.post("/images/load", data=b"\0" * ((1 << 20) + 1))
    await assert_refused(r, "image load over the cap (Content-Length)", (413,))
    # under the cap but not a tar: the image store's error, a 400 (not the JSON size limit)
    r = await client.post("/images/load", data=b"\0" * 1000)
    await assert_refused(r, "image load of garbage", (400,))
    assert [p.name for p in daemon.data_root.iterdir() if p.name.startswith(".load-")] == []


async def test_json_limit_is_the_same_for_a_body_without_content_length(
        env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    client, _, _ = env

    async def body() -> AsyncIterator[bytes]:
        yield b'{"Name": "'
        for _ in range(MAX_JSON_BYTES // (1 << 16) + 2):
            yield b"x" * (1 << 16)
        yield b'"}'

    r = await client.post("/services/create", data=body(), headers={"Content-Type": "application/json"})
    msg = await assert_refused(r, "chunked body over the limit", (413,))
    assert "request body too large" in msg


async def test_an_unexpected_error_is_a_json_500_without_traceback(
        env: tuple[Client, ManagerTestDouble, Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    """The backstop: a bug in a handler is logged; the client gets Docker's JSON shape."""
    client, _, daemon = env

    def broken() -> dict[str, Any]:
        raise KeyError("boom")

    monkeypatch.setattr(daemon, "info", broken)
    r = await client.get("/info")
    assert r.status == 500 and r.headers["Content-Type"] == "application/json"
    msg = (await r.json())["message"]
    assert "KeyError" in msg and "Traceback" not in msg


async def test_the_empty_body_rule_of_each_route(env: tuple[Client, ManagerTestDouble, Daemon]) -> None:
    """One JSON-body reader: an empty body is a 400 for a spec (as before), ``{}`` for
    ``/swarm/init`` and ``/swarm/join`` (and JSON null too); a non-object is a 400 naming its type."""
    client, mgr, daemon = env
    for method, path in await write_endpoints(client, mgr):
        r = await post(client, method, path, b"")
        assert r.status == 400, path
        assert r.headers["Content-Type"] == "application/json"
        assert (await r.json())["message"] == "invalid JSON: got EOF while reading request body", path
    daemon.manager = None
    daemon.state.data = {}
    for body in (b"", b"null", b"  "):
        r = await post(client, "POST", "/swarm/join", body)
        msg = (await r.json())["message"]
        assert r.status == 400 and "JSON" not in msg and "object" not in msg, (body, msg)  # got to the join itself
    r = await post(client, "POST", "/v1.41/swarm/join", b"[1]")
    assert r.status == 400
    assert (await r.json())["message"] == "the request body must be a JSON object, got array"
