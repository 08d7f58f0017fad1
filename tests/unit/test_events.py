"""Docker's events from the store (manager/events.py) and ``GET /events`` (shoal/daemon/http/events.py):
the message shapes of service, node, network and task changes, Docker's filters, ``since``/``until``
replay from the ring buffer and bounded calls, a live stream, and 400 for bad parameters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.events import EventFilter, EventHub, FilterError, parse_timestamp, to_message
from shoal.base.util import now_rfc3339
from shoal.daemon.http import events as events_http
from tests.stores import open_store
from tests.unit.test_orchestrator_cli import DOCKER, docker
from tests.waiting import wait_until

Client = TestClient[web.Request, web.Application]

T0 = 1_765_000_000.0


def svc(name: str = "web", replicas: int = 1, image: str = "busybox", state: str | None = None,
        at: float = T0) -> dict[str, Any]:
    s: dict[str, Any] = {"ID": "s1", "CreatedAt": now_rfc3339(at), "UpdatedAt": now_rfc3339(at),
                         "Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
                                  "TaskTemplate": {"ContainerSpec": {"Image": image}}}}
    if state:
        s["UpdateStatus"] = {"State": state}
    return s


def node(avail: str = "active", state: str = "ready", role: str = "worker", at: float = T0) -> dict[str, Any]:
    return {"ID": "n1", "UpdatedAt": now_rfc3339(at), "CreatedAt": now_rfc3339(T0), "Version": {"Index": 3},
            "Spec": {"Role": role, "Availability": avail}, "Description": {"Hostname": "h2"},
            "Status": {"State": state}}


def task(state: str, desired: str = "running", node_id: str = "", at: float = T0) -> dict[str, Any]:
    return {"ID": "t1", "Name": "web.1.t1", "ServiceID": "s1", "Slot": 1, "NodeID": node_id,
            "DesiredState": desired, "Status": {"State": state}, "UpdatedAt": now_rfc3339(at),
            "CreatedAt": now_rfc3339(T0)}


def test_service_messages_have_dockers_shape_and_changed_attributes() -> None:
    m = to_message("create", "services", svc(), None, T0 + 5)
    assert m == {"Type": "service", "Action": "create", "Actor": {"ID": "s1", "Attributes": {"name": "web"}},
                 "scope": "swarm", "time": int(T0), "timeNano": int(T0) * 1_000_000_000}
    m = to_message("update", "services", svc(replicas=3, image="nginx", state="updating", at=T0 + 2), svc(), T0 + 5)
    assert m is not None and m["Action"] == "update" and m["time"] == int(T0) + 2
    assert m["Actor"]["Attributes"] == {"name": "web", "image.old": "busybox", "image.new": "nginx",
                                        "replicas.old": "1", "replicas.new": "3", "updatestate.new": "updating"}
    m = to_message("update", "services", svc(state="completed"), svc(state="updating"), T0)
    assert m is not None
    assert m["Actor"]["Attributes"] == {"name": "web", "updatestate.old": "updating", "updatestate.new": "completed"}
    m = to_message("delete", "services", svc(), svc(), T0 + 9.5)
    assert m is not None and m["Action"] == "remove" and m["timeNano"] == int((T0 + 9.5) * 1e9)


def test_node_messages_report_what_changed_and_nothing_when_nothing_did() -> None:
    m = to_message("update", "nodes", node(avail="drain", state="down", at=T0 + 1), node(), T0)
    assert m is not None and m["Type"] == "node"
    assert m["Actor"] == {"ID": "n1", "Attributes": {"name": "h2", "availability.old": "active",
                                                     "availability.new": "drain", "state.old": "ready",
                                                     "state.new": "down"}}
    same = node(at=T0 + 1)
    same["Version"] = {"Index": 9}
    assert to_message("update", "nodes", same, node(), T0) is None
    mgr_old, mgr_new = node(role="manager"), node(role="manager")
    mgr_old["ManagerStatus"] = {"Leader": True, "Reachability": "reachable"}
    mgr_new["ManagerStatus"] = {"Leader": False, "Reachability": "unreachable"}
    m = to_message("update", "nodes", mgr_new, mgr_old, T0)
    assert m is not None and m["Actor"]["Attributes"] == {
        "name": "h2", "leader.old": "true", "leader.new": "false",
        "reachability.old": "reachable", "reachability.new": "unreachable"}


def test_network_and_task_messages() -> None:
    net = {"ID": "w1", "Spec": {"Name": "backend"}, "CreatedAt": now_rfc3339(T0)}
    assert to_message("create", "networks", net, None, T0) == {
        "Type": "network", "Action": "create", "Actor": {"ID": "w1", "Attributes": {"name": "backend"}},
        "scope": "swarm", "time": int(T0), "timeNano": int(T0) * 1_000_000_000}
    m = to_message("create", "tasks", task("new"), None, T0, {"s1": "web"})
    assert m is not None and m["Type"] == "task" and m["Actor"]["Attributes"] == {
        "name": "web.1.t1", "service.id": "s1", "service.name": "web", "node.id": "", "slot": "1",
        "state.new": "new", "desiredstate.new": "running"}
    m = to_message("update", "tasks", task("assigned", node_id="n1"), task("pending"), T0, {"s1": "web"})
    assert m is not None and m["Actor"]["Attributes"]["state.old"] == "pending"
    assert m["Actor"]["Attributes"]["node.id"] == "n1" and m["Actor"]["Attributes"]["node.id.old"] == ""
    failed = task("failed", node_id="n1")
    failed["Status"]["Err"] = "exit code 1"
    m = to_message("update", "tasks", failed, task("running", node_id="n1"), T0)
    assert m is not None and m["Actor"]["Attributes"]["error"] == "exit code 1"
    # a step between placement and running (same desired state and node) is no event
    assert to_message("update", "tasks", task("starting", node_id="n1"), task("preparing", node_id="n1"), T0) is None
    m = to_message("update", "tasks", task("running", node_id="n1"), task("starting", node_id="n1"), T0)
    assert m is not None and m["Actor"]["Attributes"]["state.new"] == "running"
    # a status detail (same state, desired state and node) is no event
    assert to_message("update", "tasks", task("running", node_id="n1", at=T0 + 3),
                      task("running", node_id="n1"), T0) is None
    assert to_message("update", "cluster", {"ID": "c"}, {"ID": "c"}, T0) is None


def test_filters_follow_docker() -> None:
    svc_msg = to_message("create", "services", svc(), None, T0)
    node_msg = to_message("update", "nodes", node(avail="drain"), node(), T0)
    assert svc_msg is not None and node_msg is not None

    def f(**fields: list[str]) -> EventFilter:
        return EventFilter.parse(fields)

    assert f().include(svc_msg) and f().include(node_msg)
    assert f(type=["service"]).include(svc_msg) and not f(type=["service"]).include(node_msg)
    assert f(type=["service", "node"]).include(node_msg)
    assert f(event=["create"]).include(svc_msg) and not f(event=["create"]).include(node_msg)
    assert f(scope=["swarm"]).include(svc_msg) and not f(scope=["local"]).include(svc_msg)
    # service=, node=: by ID or name, a prefix matches (Docker's FuzzyMatch); other events drop out
    assert f(service=["web"]).include(svc_msg) and f(service=["s"]).include(svc_msg)
    assert not f(service=["db"]).include(svc_msg) and not f(service=["web"]).include(node_msg)
    assert f(node=["h2"]).include(node_msg) and f(node=["n1"]).include(node_msg)
    assert f(label=["name=web"]).include(svc_msg) and not f(label=["name=db"]).include(svc_msg)
    assert f(label=["name"]).include(svc_msg) and not f(label=["image.old"]).include(svc_msg)
    assert not f(image=["busybox"]).include(svc_msg)


def test_bad_filters_and_times_are_refused() -> None:
    for fields, words in (({"servce": ["web"]}, "invalid filter 'servce': events can be filtered by"),
                          ({"type": ["services"]}, "invalid filter 'type=services': the types are"),
                          ({"scope": ["global"]}, "invalid filter 'scope=global'")):
        with pytest.raises(FilterError, match=words):
            EventFilter.parse(fields)
    assert parse_timestamp("", "since") is None
    assert parse_timestamp("1765000000.5", "since") == 1765000000.5
    assert parse_timestamp("1765000000", "until") == 1765000000.0
    assert parse_timestamp("2025-12-06T05:46:40Z", "since") == 1765000000.0
    with pytest.raises(FilterError, match="invalid value for 'since'"):
        parse_timestamp("10m", "since")


def test_hub_replays_since_until_from_a_bounded_ring() -> None:
    clock = SimpleNamespace(t=T0)
    hub = EventHub(limit=3, clock=lambda: clock.t)
    for i in range(5):
        hub.on_change(SimpleNamespace(action="create", table="services", obj=svc(name=f"s{i}", at=T0 + i), old=None))
    everything = EventFilter()
    assert [m["Actor"]["Attributes"]["name"] for m in hub.buffered(0, None, everything)] == ["s2", "s3", "s4"]
    assert [m["Actor"]["Attributes"]["name"] for m in hub.buffered(T0 + 3, None, everything)] == ["s3", "s4"]
    assert [m["Actor"]["Attributes"]["name"] for m in hub.buffered(None, T0 + 3, everything)] == ["s2", "s3"]
    assert hub.buffered(None, None, everything) == []  # no replay without since or until (Docker)


async def test_subscribers_get_live_messages_their_filter_takes() -> None:
    hub = EventHub()
    svcs = hub.subscribe(None, None, EventFilter.parse({"type": ["service"]}))
    alls = hub.subscribe(None, None, EventFilter())
    hub.on_change(SimpleNamespace(action="update", table="nodes", obj=node(avail="drain"), old=node()))
    hub.on_change(SimpleNamespace(action="create", table="services", obj=svc(), old=None))
    m = await svcs.get(1.0)
    assert m is not None and m["Type"] == "service"
    assert await svcs.get(0.01) is None
    got = [await alls.get(1.0), await alls.get(1.0)]
    assert [g["Type"] for g in got if g] == ["node", "service"]
    svcs.close()
    alls.close()
    assert hub.subscribers == 0


async def test_the_hub_follows_a_real_store_with_task_service_names(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.update(lambda tx: tx.create("services", svc()))
        hub = EventHub()
        hub.attach(store)  # learns the service's name from the store
        sub = hub.subscribe(None, None, EventFilter())
        await store.update(lambda tx: tx.create("tasks", task("new")))
        await store.update(lambda tx: tx.delete("services", "s1"))
        m1, m2 = await sub.get(2.0), await sub.get(2.0)
        assert m1 is not None and m1["Type"] == "task" and m1["Actor"]["Attributes"]["service.name"] == "web"
        assert m2 is not None and (m2["Type"], m2["Action"]) == ("service", "remove")
        sub.close()
    finally:
        await store.close()


@pytest.fixture
async def api() -> AsyncIterator[tuple[Client, EventHub]]:
    hub = EventHub()
    app = web.Application()
    events_http.add_routes(app, lambda: hub)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, hub
    finally:
        await client.close()


async def test_get_events_bounded_call_returns_the_window(api: tuple[Client, EventHub]) -> None:
    client, hub = api
    now = time.time()
    hub.on_change(SimpleNamespace(action="create", table="services", obj=svc(at=now - 30), old=None))
    hub.on_change(SimpleNamespace(action="update", table="nodes", obj=node(avail="pause", at=now - 20),
                                  old=node()))
    started = time.monotonic()
    r = await client.get("/v1.41/events", params={"since": f"{now - 60:.9f}", "until": f"{now:.9f}",
                                                  "filters": json.dumps({"type": ["service"]})})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    lines = [json.loads(x) for x in (await r.text()).splitlines()]
    assert time.monotonic() - started < 2
    assert [(m["Type"], m["Action"], m["Actor"]["Attributes"]["name"]) for m in lines] == [("service", "create", "web")]


async def test_get_events_streams_live_until_the_until_time(api: tuple[Client, EventHub]) -> None:
    client, hub = api
    started = time.monotonic()
    r = await client.get("/events", params={"until": f"{time.time() + 1.5:.9f}"})
    assert r.status == 200

    async def later() -> None:
        await asyncio.sleep(0.2)
        hub.on_change(SimpleNamespace(action="create", table="services", obj=svc(at=time.time()), old=None))

    asyncio.get_running_loop().create_task(later())
    line = await asyncio.wait_for(r.content.readline(), 5)
    assert json.loads(line)["Action"] == "create"
    rest = await asyncio.wait_for(r.content.read(), 5)  # ends at `until`
    assert rest == b"" and 1.0 < time.monotonic() - started < 4
    assert hub.subscribers == 0


async def test_get_events_bad_parameters_are_400(api: tuple[Client, EventHub]) -> None:
    client, _hub = api
    for params, words in (({"filters": "{not json"}, "invalid filter"),
                          ({"filters": json.dumps({"typo": ["x"]})}, "invalid filter 'typo'"),
                          ({"filters": json.dumps({"type": ["servic"]})}, "invalid filter 'type=servic'"),
                          ({"since": "yesterday"}, "invalid value for 'since'"),
                          ({"since": "200", "until": "100"}, "cannot be after `until` time")):
        r = await client.get("/events", params=params)
        assert r.status == 400, params
        assert words in (await r.json())["message"], params


async def test_get_events_on_a_node_without_a_manager_is_an_empty_stream() -> None:
    app = web.Application()
    events_http.add_routes(app, lambda: None)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/events", params={"since": "0", "until": f"{time.time():.9f}"})
        assert r.status == 200 and await r.text() == ""


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI on PATH")
async def test_the_docker_cli_reads_events_and_bad_filters(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    hub = EventHub()
    hub.attach(store)
    app = web.Application()
    events_http.add_routes(app, lambda: hub)

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="OK", headers={"Api-Version": "1.41", "OSType": "linux"})
    app.router.add_route("GET", "/_ping", ping)
    app.router.add_route("HEAD", "/_ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    host = f"unix://{sock}"
    try:
        await store.update(lambda tx: tx.create("services", svc(at=time.time())))
        await store.update(lambda tx: tx.create("nodes", dict(node(), CreatedAt=now_rfc3339())))
        made = time.time()
        # the docker CLI sends `until` in whole seconds (as Docker's daemon, a message of the current
        # second is after it): wait for the next second
        await wait_until(lambda: int(time.time()) > int(made), 2, "the next second")
        rc, out, err = await docker(host, tmp_path, "events", "--since", "1m", "--until", "0s",
                                    "--filter", "type=service", "--format", "{{json .}}", timeout=30)
        assert rc == 0, err
        msgs = [json.loads(x) for x in out.splitlines()]
        assert [(m["Type"], m["Action"], m["Actor"]["Attributes"]["name"], m["scope"]) for m in msgs] == [
            ("service", "create", "web", "swarm")]
        rc, out, err = await docker(host, tmp_path, "events", "--since", "1m", "--until", "0s", timeout=30)
        assert rc == 0 and "service create s1 (name=web)" in out and "node create n1 (name=h2)" in out, out + err
        # live: a follow sees a change made after it started
        proc = await asyncio.create_subprocess_exec(
            DOCKER or "docker", "events", "--filter", "event=remove", "--format", "{{.Type}} {{.Action}}",
            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "DOCKER_HOST": host, "HOME": str(tmp_path),
                 "DOCKER_CONFIG": str(tmp_path / "dc")}, stdout=asyncio.subprocess.PIPE)
        try:
            await wait_until(lambda: hub.subscribers == 1, 10, "docker events to subscribe")
            await store.update(lambda tx: tx.delete("services", "s1"))
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line.decode().strip() == "service remove"
        finally:
            proc.kill()
            await proc.wait()
        rc, out, err = await docker(host, tmp_path, "events", "--until", "0s", "--filter", "servce=web", timeout=30)
        assert rc != 0 and "invalid filter 'servce'" in err, err
    finally:
        await runner.cleanup()
        await store.close()
