"""Placement through the Engine API routes (aiohttp's test client over a real store): the 400s
for bad constraints, preferences, reservations and max replicas; a reservation no node can hold
is accepted and leaves the task pending with Swarm's message; the dry runs (``POST
/services/plan``, ``POST /services/{id}/plan``) answer where tasks would go and write nothing;
``POST /nodes/{id}/update`` with new ``Spec.Labels`` (the docker CLI's ``node update
--label-add``) gets a pending task placed."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.orchestrator import Orchestrator
from manager.scheduler import Scheduler
from manager.specs import default_swarm_spec
from manager.store import Store
from shoal.daemon.http.app import add_swarm_routes
from tests.stores import open_store
from tests.unit.test_api import ManagerTestDouble, creating
from tests.unit.test_scheduler_filters import CPU, GIB, node
from tests.waiting import wait_until

Client = TestClient[web.Request, web.Application]

SPEC: dict[str, Any] = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                        "Mode": {"Replicated": {"Replicas": 3}}}


def spec_with(**task_template: Any) -> dict[str, Any]:
    """SPEC with ``task_template`` fields set in its TaskTemplate."""
    s = copy.deepcopy(SPEC)
    s["TaskTemplate"].update(task_template)
    return s


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Client, Store]]:
    """The swarm routes over a store holding three ready 2-CPU, 2 GiB nodes h1..h3."""
    store = await open_store(tmp_path / "raft")
    await store.update(lambda tx: tx.create("cluster", {"ID": "cluster1", "Spec": default_swarm_spec()}))
    await store.update(creating("nodes", *[node(f"node{i}", f"h{i}", cpus=2 * CPU, mem=2 * GIB) for i in (1, 2, 3)]))
    app = web.Application()
    add_swarm_routes(app, ManagerTestDouble(store))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store
    finally:
        await client.close()
        await store.close()


@pytest.fixture
async def loops(api: tuple[Client, Store]) -> AsyncIterator[tuple[Client, Store]]:
    """``api`` with the orchestrator and the scheduler running."""
    _, store = api
    tasks = [asyncio.create_task(Orchestrator(store, debounce=0.005).run()),
             asyncio.create_task(Scheduler(store, debounce=0.005).run())]
    try:
        yield api
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


BAD = [
    ({"Placement": {"Constraints": ["node.colour==red"]}}, "constraint key 'node.colour' is not supported"),
    ({"Placement": {"Constraints": ["node.labels.zone=eu"]}}, "constraint expected one operator from ==, !="),
    ({"Placement": {"Constraints": ["node.role=="]}}, "constraint 'node.role==': value must not be empty"),
    ({"Placement": {"Constraints": ["node.role==worker", "node.labels.=x"]}},
     "constraint expected one operator from ==, !=: 'node.labels.=x' is not of the form KEY==VALUE"),
    ({"Placement": {"Constraints": ["node.labels.==x"]}}, "constraint key 'node.labels.' is not supported"),
    ({"Placement": {"Constraints": ["node.ip==10.1"]}}, "node.ip takes an IP address or a network"),
    ({"Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.hostname"}}]}},
     "invalid placement preference spread=node.hostname: the descriptor must be node.labels.<label> or "
     "engine.labels.<label>"),
    ({"Placement": {"Preferences": [{"Pack": {"SpreadDescriptor": "node.labels.zone"}}]}}, "only spread is supported"),
    ({"Placement": {"Preferences": "spread"}}, "cannot unmarshal string into Go struct field Placement.Preferences"),
    ({"Placement": {"MaxReplicas": -1}},
     "json: cannot unmarshal number -1 into Go struct field Placement.MaxReplicas of type uint64"),
    ({"Placement": {"MaxReplicas": "2"}},
     "json: cannot unmarshal string into Go struct field Placement.MaxReplicas of type uint64"),
    ({"Resources": {"Reservations": {"NanoCPUs": -1}}}, "TaskSpec: reservation NanoCPUs cannot be negative"),
    ({"Resources": {"Reservations": {"MemoryBytes": -5}}}, "TaskSpec: reservation MemoryBytes cannot be negative"),
    ({"Resources": {"Reservations": {"MemoryBytes": 1000}}}, "invalid memory value 1000: Must be at least 4MiB"),
    ({"Resources": {"Reservations": {"NanoCPUs": 10}}}, "invalid cpu value 1e-08: Must be at least 0.001"),
    ({"Resources": {"Reservations": {"MemoryBytes": 2**80}}},
     "cannot unmarshal number 1208925819614629174706176 into Go struct field"),
]


@pytest.mark.parametrize(("template", "message"), BAD)
async def test_bad_placement_is_a_400_naming_it(api: tuple[Client, Store], template: dict[str, Any],
                                                message: str) -> None:
    client, store = api
    before = store.snapshot_bytes()
    for path in ("/v1.41/services/create", "/services/plan"):
        r = await client.post(path, json=spec_with(**template))
        assert r.status == 400, await r.text()
        assert message in (await r.json())["message"]
    # and on update, from a good service
    r = await client.post("/services/create", json=SPEC)
    assert r.status == 201
    svc = await (await client.get("/services/web")).json()
    r = await client.post(f"/services/web/update?version={svc['Version']['Index']}", json=spec_with(**template))
    assert r.status == 400 and message in (await r.json())["message"]
    r = await client.post("/services/web/plan", json=spec_with(**template))
    assert r.status == 400 and message in (await r.json())["message"]
    assert len(store.view().list("services")) == 1 and before != store.snapshot_bytes()


async def test_reservation_larger_than_any_node_leaves_tasks_pending(loops: tuple[Client, Store]) -> None:
    client, store = loops
    r = await client.post("/services/create", json=spec_with(Resources={"Reservations": {"MemoryBytes": 64 * GIB}}))
    assert r.status == 201, await r.text()

    def errs() -> list[str] | None:
        ts = store.view().list("tasks")
        got = [str(t["Status"].get("Err") or "") for t in ts if t["Status"]["State"] == "pending"]
        return got if len(got) == 3 and all(got) else None

    assert await wait_until(errs, what="3 pending tasks with a reason") == \
        ["no suitable node (insufficient resources on 3 nodes)"] * 3


async def test_docker_cli_shaped_placement_is_understood(api: tuple[Client, Store]) -> None:
    """The docker CLI's JSON, in any key case Go accepts, lands in Docker's shape."""
    client, store = api
    body = spec_with(Placement={"constraints": ["node.role!=manager"], "maxReplicas": 2,
                                "preferences": [{"spread": {"spreadDescriptor": "node.labels.zone"}}]},
                     Resources={"reservations": {"nanoCPUs": CPU // 2, "memoryBytes": 64 << 20}})
    r = await client.post("/services/create", json=body)
    assert r.status == 201, await r.text()
    tt = store.view().list("services")[0]["Spec"]["TaskTemplate"]
    assert tt["Placement"] == {"Constraints": ["node.role!=manager"], "MaxReplicas": 2,
                               "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}
    assert tt["Resources"]["Reservations"] == {"NanoCPUs": CPU // 2, "MemoryBytes": 64 << 20}


async def test_image_platforms_leave_tasks_pending_on_other_nodes(loops: tuple[Client, Store]) -> None:
    """``Placement.Platforms`` as the docker CLI fills it from the registry: nodes of another
    architecture are counted as ``unsupported platform``; the image's own architecture places
    (the node says x86_64, the image index amd64)."""
    client, store = loops
    body = spec_with(Placement={"Platforms": [{"Architecture": "arm64", "OS": "linux"}]})
    r = await client.post("/services/create", json=body)
    assert r.status == 201, await r.text()

    def errs() -> set[str]:
        return {str(t["Status"].get("Err") or "") for t in store.view().list("tasks")}

    await wait_until(lambda: errs() == {"no suitable node (unsupported platform on 3 nodes)"},
                     what="the tasks pending with the reason")
    plan = await (await client.post("/services/plan", json={**body, "Name": "other"})).json()
    assert {t["Error"] for t in plan["Tasks"]} == {"no suitable node (unsupported platform on 3 nodes)"}
    body["TaskTemplate"]["Placement"]["Platforms"].append({"Architecture": "amd64", "OS": "linux"})
    plan = await (await client.post("/services/plan", json={**body, "Name": "other"})).json()
    assert sorted(t["Node"] for t in plan["Tasks"]) == ["h1", "h2", "h3"]


async def test_dry_run_create_plans_and_writes_nothing(api: tuple[Client, Store]) -> None:
    client, store = api
    before = store.snapshot_bytes()
    body = spec_with(Resources={"Reservations": {"NanoCPUs": CPU}}, Placement={"Constraints": ["node.hostname!=h3"]})
    body["Mode"] = {"Replicated": {"Replicas": 5}}
    r = await client.post("/v1.41/services/plan", json=body)
    assert r.status == 200, await r.text()
    plan = await r.json()
    assert plan["Warnings"] == []
    rows = plan["Tasks"]
    assert [t["Slot"] for t in rows] == [1, 2, 3, 4, 5]
    assert sorted(t["Node"] for t in rows if "Node" in t) == ["h1", "h1", "h2", "h2"]
    assert rows[4] == {"Slot": 5, "Error": "no suitable node (insufficient resources on 2 nodes; scheduling "
                                          "constraints not satisfied on 1 node)"}
    assert store.snapshot_bytes() == before
    assert store.view().list("services") == [] and store.view().list("tasks") == []
    # the same checks as a create: a taken name is a 409
    assert (await client.post("/services/create", json=SPEC)).status == 201
    r = await client.post("/services/plan", json=SPEC)
    assert r.status == 409
    assert (await r.json())["message"] == "rpc error: code = AlreadyExists desc = name conflicts with an existing object"


async def test_dry_run_update_keeps_current_tasks_and_writes_nothing(loops: tuple[Client, Store]) -> None:
    client, store = loops
    assert (await client.post("/services/create", json=SPEC)).status == 201

    def assigned() -> list[dict[str, Any]] | None:
        ts = [t for t in store.view().list("tasks") if t["Status"]["State"] == "assigned"]
        return ts if len(ts) == 3 else None

    await wait_until(assigned, what="3 tasks assigned")
    before = store.snapshot_bytes()
    svc = await (await client.get("/services/web")).json()
    # a scale-up: the 3 tasks stay, a 4th is placed
    more = copy.deepcopy(svc["Spec"])
    more["Mode"]["Replicated"]["Replicas"] = 4
    plan = await (await client.post(f"/services/{svc['ID']}/plan", json=more)).json()
    assert [t.get("Unchanged", False) for t in plan["Tasks"]] == [True, True, True, False]
    assert {t["Node"] for t in plan["Tasks"][:3]} == {"h1", "h2", "h3"} and plan["Tasks"][3]["Node"]
    # a new placement: every task is placed again under it
    moved = copy.deepcopy(svc["Spec"])
    moved["TaskTemplate"]["Placement"] = {"Constraints": ["node.hostname==h1"], "MaxReplicas": 1}
    r = await client.post("/services/web/plan", json=moved)
    assert r.status == 200, await r.text()
    rows = (await r.json())["Tasks"]
    assert rows[0] == {"Slot": 1, "NodeID": "node1", "Node": "h1"}
    assert rows[1]["Error"] == rows[2]["Error"] == \
        "no suitable node (scheduling constraints not satisfied on 2 nodes; max replicas per node limit exceed)"
    assert store.snapshot_bytes() == before
    r = await client.post("/services/nothere/plan", json=moved)
    assert r.status == 404
    # the mode cannot change (as Swarm refuses the update itself)
    r = await client.post("/services/web/plan", json={**svc["Spec"], "Mode": {"Global": {}}})
    assert r.status == 400 and "mode" in (await r.json())["message"]
    assert store.snapshot_bytes() == before


async def test_dry_run_update_refuses_a_mode_change(api: tuple[Client, Store]) -> None:
    client, store = api
    stored = {"ID": "g1", "Version": {"Index": 1}, "Spec": {**SPEC, "Name": "g", "Mode": {"Global": {}}}}
    await store.update(creating("services", stored))
    r = await client.post("/services/g/plan", json={**SPEC, "Name": "g"})
    assert r.status == 400
    msg = (await r.json())["message"]
    assert msg.startswith("rpc error: code = InvalidArgument desc = service mode change is not allowed")
    assert msg.endswith("remove the service and create it again in the new mode")


async def test_node_labelled_through_the_api_gets_the_pending_task_placed(loops: tuple[Client, Store]) -> None:
    client, store = loops
    r = await client.post("/services/create", json=spec_with(Placement={"Constraints": ["node.labels.zone==eu"]}))
    assert r.status == 201

    def errs() -> set[str]:
        return {str(t["Status"].get("Err") or "") for t in store.view().list("tasks")}

    await wait_until(lambda: errs() == {"no suitable node (scheduling constraints not satisfied on 3 nodes)"},
                     what="the tasks pending with the reason")
    n = await (await client.get("/nodes/h2")).json()
    # what `docker node update --label-add zone=eu h2` sends
    r = await client.post(f"/nodes/{n['ID']}/update?version={n['Version']['Index']}",
                          json={**n["Spec"], "Labels": {"zone": "eu"}})
    assert r.status == 200, await r.text()
    await wait_until(lambda: [t.get("NodeID") for t in store.view().list("tasks")] == ["node2"] * 3,
                     timeout=2.0, what="all three tasks placed on h2")


async def test_dry_run_of_a_replicated_job_numbers_its_slots_from_0(api: tuple[Client, Store]) -> None:
    """A replicated job's slots are 0..MaxConcurrent-1 (swarmkit), in the dry run as in the
    orchestrator; the plan places MaxConcurrent tasks (at most TotalCompletions)."""
    client, store = api
    body = {**SPEC, "Name": "job", "Mode": {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}}
    r = await client.post("/services/plan", json=body)
    assert r.status == 200, await r.text()
    rows = (await r.json())["Tasks"]
    assert [t["Slot"] for t in rows] == [0, 1] and all(t.get("Node") for t in rows)
    body["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 4, "TotalCompletions": 3}}
    rows = (await (await client.post("/services/plan", json=body)).json())["Tasks"]
    assert [t["Slot"] for t in rows] == [0, 1, 2]
    assert store.view().list("services") == []


async def test_global_dry_run_leaves_out_the_nodes_the_create_skips(api: tuple[Client, Store]) -> None:
    """As the global orchestrator: a node that does not meet the constraints, or is paused or
    drained, gets no task (no row, no error); a node that meets them but lacks resources is a row
    with the reason (its task would stay pending there)."""
    client, store = api

    def pause_h2(tx: Any) -> None:
        n = copy.deepcopy(tx.get("nodes", "node2"))
        n["Spec"]["Availability"] = "pause"
        tx.update("nodes", n)

    await store.update(pause_h2)
    body = {**spec_with(Placement={"Constraints": ["node.hostname!=h3"]}), "Mode": {"Global": {}}}
    rows = (await (await client.post("/services/plan", json=body)).json())["Tasks"]
    assert rows == [{"NodeID": "node1", "Node": "h1"}]
    body = {**spec_with(Resources={"Reservations": {"NanoCPUs": 100 * CPU}}), "Mode": {"Global": {}}}
    rows = (await (await client.post("/services/plan", json=body)).json())["Tasks"]
    assert [(r["Node"], r["Error"]) for r in rows] == [
        ("h1", "no suitable node (insufficient resources on 1 node)"),
        ("h3", "no suitable node (insufficient resources on 1 node)")]
