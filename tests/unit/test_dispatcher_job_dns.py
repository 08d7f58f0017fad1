"""A job's task (desired state ``complete``) while it runs is on its networks as any task, as in
Swarm: a peer of the other nodes, a DNS record of its service (``<name>`` and ``tasks.<name>``),
a backend of its VIP and its ingress ports; once it has completed it is none of these.
Pure (:class:`TaskIndex`) and through the real dispatcher with loopback sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher.assignments import TaskIndex, dns_task_keys, node_ingress, node_networks, peer_keys
from overlaynet.dns.records import DnsTable
from tests.unit.test_dispatcher import _env
from tests.unit.test_dispatcher_dns import DnsEnv, dns, rec, service, svc_rec, task
from tests.unit.test_dispatcher_ingress import ING, ingress_net, lb, published
from tests.unit.test_dispatcher_networks import NET, VTEP, connect, network
from tests.waiting import wait_until
from worker.overlay import dns_records


def job(sid: str, name: str) -> dict[str, Any]:
    """A stored replicated job attached to ``NET``."""
    s = service(sid, name, {NET: []})
    s["Spec"]["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}}
    return s


def test_a_running_job_task_is_a_record_a_peer_and_a_backend() -> None:
    svc = published("j1", "batch", {NET: []}, vips={NET: "10.0.1.2/24", ING: "10.0.0.2/24"})
    svc["Spec"]["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}}
    nodes = {"n1": {"ID": "n1", "Attachments": lb("10.0.0.5/24")}, "n2": {"ID": "n2", "Attachments": lb("10.0.0.6/24")}}
    running = {**task("j-a", "n2", "j1", 0, {NET: "10.0.1.7/24", ING: "10.0.0.9/24"}, desired="complete"),
               "Name": "batch.0.j-a"}  # slot 0: a replicated job's first slot, not a node
    global_job = {**task("g-a", "n2", "j2", 0, {NET: "10.0.1.9/24"}, desired="complete"), "Name": "gj.n2.g-a"}
    done = task("j-b", "n2", "j1", 1, {NET: "10.0.1.8/24", ING: "10.0.0.8/24"}, state="complete", desired="complete")
    mine = task("w1", "n1", "s1", 1, {NET: "10.0.1.5/24"})
    index = TaskIndex([running, done, mine, global_job],
                      [svc, service("s1", "web", {NET: []}), service("j2", "gj", {NET: []})], nodes.values(), ING)
    nets = {NET: network(), ING: ingress_net()}
    got = node_networks("n1", index.tasks_of("n1"), index, nets.get, VTEP.get, nodes["n1"])
    assert [p["IP"] for p in got[NET]["Peers"]] == ["10.0.1.7", "10.0.1.9"]  # the completed one is no peer
    assert got[NET]["DNS"]["Tasks"] == [rec("batch", 0, "j-a", "10.0.1.7"), rec("gj", "n2", "g-a", "10.0.1.9"),
                                        rec("web", 1, "w1", "10.0.1.5")]
    assert {"Name": "batch", "Aliases": [], "VIP": "10.0.1.2"} in got[NET]["DNS"]["Services"]
    # what the worker's embedded DNS then answers: the VIP, the task, the task's own name
    table = DnsTable()
    table.replace(dns_records(NET, got[NET]))
    assert [r.to_text() for r in table.lookup("batch", [NET]) or ()] == ["10.0.1.2"]
    assert [r.to_text() for r in table.lookup("tasks.batch", [NET]) or ()] == ["10.0.1.7"]
    assert [r.to_text() for r in table.lookup("batch.0.j-a", [NET]) or ()] == ["10.0.1.7"]
    assert [r.to_text() for r in table.lookup("tasks.gj", [NET]) or ()] == ["10.0.1.9"]
    ing = node_ingress(nodes["n1"], index)
    assert ing is not None and ing["Ports"][0]["Endpoints"] == ["10.0.0.9"]
    assert dns_task_keys(done) == set() and peer_keys(done) == set()
    # a job task asked to stop (a new JobIteration, `service rm`) leaves at once, as any task
    stopping = {**running, "DesiredState": "shutdown"}
    assert dns_task_keys(stopping) == set() and peer_keys(stopping) == set()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[DnsEnv]:
    async for e in _env(tmp_path, 5.0):
        yield DnsEnv(e.store, e.d, e.port)


async def test_a_job_task_answers_while_it_runs_and_leaves_once_complete(env: DnsEnv) -> None:
    for nid in ("n1", "n2"):
        await env.add_node(nid)
    await env.add_network(network())
    await env.create("services", service("s1", "web", {NET: []}))
    await env.create("services", job("j1", "batch"))
    await env.create("tasks", task("w1", "n1", "s1", 1, {NET: "10.0.1.5/24"}))
    await env.create("tasks", task("j-a", "n2", "j1", 0, {NET: "10.0.1.7/24"}, state="assigned", desired="complete"))
    n1, n2 = await connect(env, "n1", "n2")

    def ids(n: Any) -> list[str] | None:
        d = dns(n)
        return None if d is None else [t["ID"] for t in d["Tasks"]]

    await wait_until(lambda: ids(n1) == ["w1"] and len(n1.peers() or []) == 1, 3, "the assigned job task a peer of n1")
    await n2.status([{"TaskID": "j-a", "Status": {"State": "running"}}])
    for n in (n1, n2):
        await wait_until(lambda n=n: ids(n) == ["j-a", "w1"], 2, f"the job task in {n.node_id}'s records")  # type: ignore[misc]
    assert dns(n1) is not None and svc_rec("batch") in (dns(n1) or {})["Services"]
    await n2.status([{"TaskID": "j-a", "Status": {"State": "complete"}}])
    await wait_until(lambda: ids(n1) == ["w1"] and not n1.peers(), 2, "the completed job task gone from n1")
