"""What the scale benchmark (tests/bench/bench_scale.py) made the manager and the agent do
differently at 1,000 nodes: a flush builds each network's peer list once (not once per node), the
manager list a heartbeat answers with is cached until a manager's address changes, watches that
only read get the stored objects without copies, a node without a subnet is logged once (not on
every pass), and an agent keeps the status reports the manager could not commit and sends them
again."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.dispatcher import Dispatcher
from manager.dispatcher.assignments import TaskIndex, node_networks, vtep
from manager.ipam import BridgeIPAM
from manager.scheduler import Scheduler
from shoal.base.netaddr import ip_of, mac_from_ip
from shoal.rpc import wire
from tests.stores import open_store
from tests.unit.test_dispatcher_networks import NET, network
from tests.unit.test_scheduler_filters import node
from tests.waiting import wait_until
from worker.agent import Agent


def naive_peers(node_id: str, index: TaskIndex, vteps: dict[str, str | None]) -> list[dict[str, str]]:
    """The peer list as it was computed per node before the per-index cache."""
    peers: dict[tuple[str, str, str], dict[str, str]] = {}
    for other, addr in [*index.peers.get(NET, {}).values(), *index.lb.get(NET, ())]:
        v = vteps.get(other)
        if other == node_id or v is None:
            continue
        ip, mac = ip_of(addr), mac_from_ip(addr)
        peers[(ip, mac, v)] = {"IP": ip, "MAC": mac, "VTEP": v}
    return [p for _, p in sorted(peers.items(), key=lambda kv: (ipaddress.ip_address(kv[0][0]), kv[0][2]))]


def test_peer_lists_built_once_per_index_match_the_per_node_lists() -> None:
    rnd = random.Random(7)
    nodes = {f"n{i}": {"Status": {"State": "down" if i % 7 == 0 else "ready", "Addr": f"10.99.0.{i % 5 + 1}"},
                       "Attachments": [{"Network": {"ID": NET}, "Addresses": [f"10.0.9.{i + 1}/24"]}]}
             for i in range(30)}
    tasks = []
    for i in range(200):
        ip = f"10.0.{rnd.randrange(1, 3)}.{rnd.randrange(2, 40)}/16"  # duplicates on purpose
        tasks.append({"ID": f"t{i}", "NodeID": f"n{rnd.randrange(30)}", "DesiredState": "running",
                      "Status": {"State": "running"}, "NetworksAttachments": [{"Network": {"ID": NET}, "Addresses": [ip]}]})
    index = TaskIndex(tasks, (), [{"ID": k, **v} for k, v in nodes.items()])
    vteps = {k: vtep(v) for k, v in nodes.items()}
    calls: list[str] = []

    def node_vtep(n: str) -> str | None:
        calls.append(n)
        return vteps.get(n)

    net = network()
    for nid in nodes:
        got = node_networks(nid, index.tasks_of(nid), index, lambda i: net, node_vtep)
        want = naive_peers(nid, index, vteps)
        if index.by_node.get(nid):
            assert got[NET]["Peers"] == want, nid
    # the addresses were looked at once for the whole index, not once per node
    assert len(calls) == len(index.peers[NET]) + len(index.lb[NET])


async def test_manager_list_is_cached_until_a_manager_address_changes(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    d = Dispatcher(store, heartbeat_period=1.0)
    try:
        def manager(nid: str, addr: str) -> dict[str, Any]:
            return {"ID": nid, "Spec": {"Role": "manager"}, "Status": {"State": "ready"},
                    "ManagerStatus": {"Addr": addr, "Reachability": "reachable"}}

        await store.update(lambda tx: tx.create("nodes", manager("m1", "127.0.0.1:2377")))
        await d.start()
        assert d.manager_addrs() == ["127.0.0.1:2377"]
        reads = 0
        real = store.view

        def counting_view() -> Any:
            nonlocal reads
            reads += 1
            return real()

        store.view = counting_view  # type: ignore[method-assign]
        for _ in range(10):
            assert d.manager_addrs() == ["127.0.0.1:2377"]
        assert reads == 0  # answered from the cache
        store.view = real  # type: ignore[method-assign]
        await store.update(lambda tx: tx.create("nodes", manager("m2", "127.0.0.2:2377")))
        await wait_until(lambda: d.manager_addrs() == ["127.0.0.1:2377", "127.0.0.2:2377"], 5,
                         "the new manager in the heartbeat's list")
        await store.update(lambda tx: tx.delete("nodes", "m1"))
        await wait_until(lambda: d.manager_addrs() == ["127.0.0.2:2377"], 5, "the removed manager gone")
    finally:
        await d.stop()
        await store.close()


class FlakyPeer:
    """A manager connection whose first ``session.status`` fails with ``first_error``."""

    def __init__(self, first_error: str) -> None:
        self.first_error = first_error
        self.calls: list[list[dict[str, Any]]] = []

    async def request(self, type: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        assert type == "session.status"
        self.calls.append(body["updates"])
        if len(self.calls) == 1:
            raise wire.RemoteError(self.first_error)
        return {}


async def _sender(tmp_path: Path, first_error: str, monkeypatch: Any) -> tuple[Agent, FlakyPeer]:
    monkeypatch.setattr("worker.agent.STATUS_RETRY", 0.01)
    agent = Agent("n1", ["127.0.0.1:9"], tmp_path, executor=None, description={})  # type: ignore[arg-type]
    peer = FlakyPeer(first_error)
    agent.report("t1", {"State": "running"})
    task = asyncio.create_task(agent._status_sender(peer))  # type: ignore[arg-type]
    try:
        await wait_until(lambda: len(peer.calls) >= 1 and not agent._pending_event.is_set() and not agent._pending
                         or len(peer.calls) >= 2, 5, "the status sender to settle")
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return agent, peer


async def test_agent_resends_status_the_manager_could_not_commit(tmp_path: Path, monkeypatch: Any) -> None:
    agent, peer = await _sender(tmp_path, "internal error: no quorum: 1 of 3 managers reachable", monkeypatch)
    assert len(peer.calls) == 2 and peer.calls[1] == peer.calls[0]
    assert not agent._pending


async def test_agent_drops_status_the_manager_refused_as_malformed(tmp_path: Path, monkeypatch: Any) -> None:
    agent, peer = await _sender(tmp_path, "session.status: unknown task state 'x' for task t1", monkeypatch)
    assert len(peer.calls) == 1
    assert not agent._pending


async def test_a_watch_without_copies_carries_the_stored_objects(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    copying, sharing = store.watch(["tasks"]), store.watch(["tasks"], copy=False)
    try:
        await store.update(lambda tx: tx.create("tasks", {"ID": "t1", "Spec": {"x": 1}}))
        await store.update(lambda tx: tx.update("tasks", {"ID": "t1", "Spec": {"x": 2}}))
        async with asyncio.timeout(5):
            c1, c2 = await copying.__anext__(), await copying.__anext__()
            s1, s2 = await sharing.__anext__(), await sharing.__anext__()
        stored = store.view()._raw("tasks", "t1")
        assert s2.obj is stored and s2.old is s1.obj  # the store's own objects, as they were
        assert c2.obj == stored and c2.obj is not stored and c2.old == s1.obj and c2.old is not s1.obj
        assert (c1.action, s1.action, s2.action) == ("create", "create", "update")
        assert s1.obj["Spec"] == {"x": 1}  # the store replaced the object; the old one is unchanged
    finally:
        copying.close()
        sharing.close()
        await store.close()


async def test_more_nodes_than_subnets_share_them_and_nothing_is_logged(tmp_path: Path, caplog: Any) -> None:
    # (logging a node without a subnet once: tests/unit/test_scheduler_shared_bridge.py)
    store = await open_store(tmp_path / "raft")
    try:
        # a pool with room for 3 node subnets (K >= 1), 4 nodes: the fourth shares the first's
        sched = Scheduler(store, ipam=BridgeIPAM("10.200.0.0/22", 24))
        await store.update(lambda tx: [tx.create("nodes", node(f"n{i}")) for i in range(4)])
        sched.rebuild()
        with caplog.at_level(logging.ERROR, logger="manager.scheduler.loop"):
            for _ in range(3):
                await sched.tick()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        view = store.view()
        subs = [((view.get("nodes", f"n{i}") or {}).get("ShoalBridge") or {}).get("Subnet") for i in range(4)]
        assert subs == ["10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24", "10.200.1.0/24"]
    finally:
        await store.close()


def test_index_kept_one_change_at_a_time_matches_one_built_from_scratch() -> None:
    """The dispatcher keeps its TaskIndex from the store's events (set_task per change, deletes
    included): after any sequence of changes it must answer as an index built from the final
    tasks does (assignment sets, peers, DNS records, down nodes' records left out)."""
    rnd = random.Random(11)
    nodes = [{"ID": f"n{i}", "Status": {"State": "down" if i == 3 else "ready", "Addr": f"10.99.0.{i + 1}"}}
             for i in range(6)]
    services = [{"ID": "s1", "Spec": {"Name": "web", "TaskTemplate": {"Networks": [{"Target": NET}]}}}]
    live = TaskIndex((), services, nodes)
    current: dict[str, dict[str, object]] = {}
    for step in range(600):
        tid = f"t{rnd.randrange(40)}"
        if tid in current and rnd.random() < 0.2:
            del current[tid]
            live.set_task(tid, None)
            continue
        task = {"ID": tid, "ServiceID": "s1", "Slot": rnd.randrange(1, 5), "NodeID": f"n{rnd.randrange(6)}",
                "DesiredState": rnd.choice(["running", "shutdown", "remove"]),
                "Status": {"State": rnd.choice(["pending", "assigned", "running", "failed"])},
                "NetworksAttachments": [{"Network": {"ID": NET}, "Addresses": [f"10.0.1.{rnd.randrange(2, 60)}/24"]}]}
        current[tid] = task
        live.set_task(tid, task)
        if step % 50 == 0:
            live.refresh(services, nodes, None)
            fresh = TaskIndex(list(current.values()), services, nodes)
            for n in nodes:
                nid = str(n["ID"])
                assert sorted(t["ID"] for t in live.tasks_of(nid)) == sorted(t["ID"] for t in fresh.tasks_of(nid))
                got = node_networks(nid, live.tasks_of(nid), live, lambda i: network(), vtep_of(nodes))
                want = node_networks(nid, fresh.tasks_of(nid), fresh, lambda i: network(), vtep_of(nodes))
                assert got == want, (step, nid)
            assert {k: dict(v) for k, v in live.peers.items()} == {k: dict(v) for k, v in fresh.peers.items()}
            assert sorted(live.dns_records(NET)) == sorted(fresh.dns_records(NET))


def vtep_of(nodes: list[dict[str, object]]) -> Callable[[str], str | None]:
    by_id = {str(n["ID"]): vtep(n) for n in nodes}
    return lambda n: by_id.get(n)
