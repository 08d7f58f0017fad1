"""Dispatcher tests against the real Store (single-voter WAL in a temp dir) over real loopback connections.

The node side here is a bare :class:`shoal.rpc.wire.Peer` driven by the test (no agent, no TLS);
the node ID travels in each request's ``as`` field and a small routing server (``SessionHarness``,
a test double of manager.server without TLS) hands it to the dispatcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher import Dispatcher, assignment_set
from manager.server import make_node
from manager.store import Store, WriteTx
from shoal.base.taskstate import state_order
from shoal.rpc import wire
from tests.stores import open_store
from tests.waiting import wait_until as wait_for
from worker.assigned import AssignedSet

PERIOD = 0.2


class SessionHarness:
    """Test double of the 2377 server: plain TCP, node identity taken from the body's ``as``."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.server: asyncio.Server | None = None
        self.peers: list[wire.Peer] = []

    async def start(self) -> int:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            p = wire.Peer(r, w, self.handle)
            self.peers.append(p)
            p.start()

            async def lost() -> None:
                await p.wait_closed()
                self.d.connection_lost(p)

            asyncio.create_task(lost())

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, peer: wire.Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self.d.handle(peer, body.pop("as"), t, body)

    async def close(self) -> None:
        for p in self.peers:
            await p.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class FakeNode:
    """The node side of a session, driven by the test; records pushes and answers logs.read."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.assignments: list[dict[str, Any]] = []
        """Each push folded into the set so far, as the agent does: complete bodies."""
        self.pushes: list[dict[str, Any]] = []
        """Each push as it came (complete, then incremental)."""
        self._set = AssignedSet()
        self.peer: wire.Peer | None = None
        self.session_id = ""

    async def handler(self, peer: wire.Peer, t: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if t == "assignments":
            self.pushes.append(body)
            tasks, extra = self._set.apply(body)
            self.assignments.append({"node": body.get("node"), "tasks": tasks, **extra})
            return None
        if t == "logs.read":
            return {"lines": [{"task_id": tid, "stream": "stdout", "time": "x", "log": "hi"} for tid in body["task_ids"]]}
        raise LookupError(t)

    async def connect(self, port: int) -> dict[str, Any]:
        self.peer = await wire.connect("127.0.0.1", port, None, self.handler, timeout=5)
        r = await self.req("session.open", {"description": {"Hostname": "h-" + self.node_id}, "addr": "10.9.9.9"})
        self.session_id = r["session_id"]
        return r

    async def req(self, t: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.peer is not None
        return await self.peer.request(t, {"as": self.node_id, **body}, timeout=5)

    async def heartbeat(self) -> dict[str, Any]:
        return await self.req("session.heartbeat", {"session_id": self.session_id})

    async def status(self, updates: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.req("session.status", {"session_id": self.session_id, "updates": updates})


class Env:
    def __init__(self, store: Store, d: Dispatcher, port: int) -> None:
        self.store, self.d, self.port = store, d, port

    def node(self, nid: str) -> dict[str, Any]:
        n = self.store.view().get("nodes", nid)
        assert n is not None
        return n

    def task(self, tid: str) -> dict[str, Any]:
        t = self.store.view().get("tasks", tid)
        assert t is not None
        return t

    async def add_node(self, nid: str, state: str = "unknown") -> None:
        n = make_node(nid, "worker", {"Hostname": nid}, "10.0.0.1")
        n["Status"]["State"] = state
        await self.store.update(lambda tx: tx.create("nodes", n))

    async def add_task(self, tid: str, nid: str, state: str = "assigned", desired: str = "running") -> None:
        t = {"ID": tid, "ServiceID": "s1", "Slot": 1, "NodeID": nid, "DesiredState": desired,
             "Spec": {"ContainerSpec": {"Image": "busybox"}}, "Status": {"State": state, "Message": ""}}
        await self.store.update(lambda tx: tx.create("tasks", t))

    async def modify_task(self, tid: str, fn: Callable[[dict[str, Any]], None]) -> None:
        def u(tx: WriteTx) -> None:
            t = tx.get("tasks", tid)
            assert t is not None
            fn(t)
            tx.update("tasks", t)

        await self.store.update(u)


async def _env(tmp_path: Path, period: float) -> AsyncIterator[Env]:
    store = await open_store(tmp_path / "raft")
    d = Dispatcher(store, heartbeat_period=period, grace_multiplier=3)
    await d.start()
    h = SessionHarness(d)
    port = await h.start()
    try:
        yield Env(store, d, port)
    finally:
        await h.close()
        await d.stop()
        await store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """A dispatcher with Swarm's 5 s period: sessions stay open while a test does not beat."""
    async for e in _env(tmp_path, 5.0):
        yield e


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Env]:
    """A dispatcher with a 0.2 s period (node down after about 0.6 s without heartbeats)."""
    async for e in _env(tmp_path, PERIOD):
        yield e


def test_state_order_and_assignment_set() -> None:
    assert state_order("new") < state_order("assigned") < state_order("running") < state_order("shutdown")
    assert state_order("bogus") == -1
    tasks = [
        {"ID": "b", "Status": {"State": "running"}, "DesiredState": "running"},
        {"ID": "a", "Status": {"State": "pending"}, "DesiredState": "running"},  # not yet assigned
        {"ID": "c", "Status": {"State": "shutdown"}, "DesiredState": "remove"},  # done: drops out
        {"ID": "d", "Status": {"State": "running"}, "DesiredState": "remove"},  # must still be stopped
        {"ID": "e", "Status": {"State": "failed"}, "DesiredState": "shutdown"},  # history stays
    ]
    assert [t["ID"] for t in assignment_set(tasks)] == ["b", "d", "e"]


async def test_open_marks_ready_and_heartbeat_period_jitter(fast: Env) -> None:
    await fast.add_node("n1")
    fn = FakeNode("n1")
    r = await fn.connect(fast.port)
    assert 0.9 * PERIOD <= r["heartbeat_period"] <= 1.1 * PERIOD
    assert r["node"]["ID"] == "n1"
    n = fast.node("n1")
    assert n["Status"] == {"State": "ready", "Message": "", "Addr": "10.9.9.9"}
    assert n["Description"]["Hostname"] == "h-n1"
    periods = [(await fn.heartbeat())["period"] for _ in range(30)]
    assert all(0.9 * PERIOD <= p <= 1.1 * PERIOD for p in periods)
    assert len(set(periods)) > 1  # jittered
    with pytest.raises(wire.RemoteError, match="session invalid"):
        await fn.req("session.heartbeat", {"session_id": "nope"})
    with pytest.raises(wire.RemoteError, match="not part of this swarm"):
        await FakeNode("ghost").connect(fast.port)
    assert fast.store.view().get("nodes", "ghost") is None


async def test_missed_heartbeats_mark_node_down(fast: Env) -> None:
    await fast.add_node("n1")
    fn = FakeNode("n1")
    await fn.connect(fast.port)
    # heartbeating keeps it ready well past the grace period (3 × 0.2 s)
    t_end = time.monotonic() + 1.2
    while True:
        await fn.heartbeat()
        last_beat = time.monotonic()
        if last_beat > t_end:
            break
        await asyncio.sleep(PERIOD * 0.8)
        assert fast.node("n1")["Status"]["State"] == "ready"
    await wait_for(lambda: fast.node("n1")["Status"]["State"] == "down", 3, "node down")
    elapsed = time.monotonic() - last_beat
    assert 3 * PERIOD * 0.9 <= elapsed < 3 * PERIOD * 1.1 + 0.5, elapsed
    assert fast.node("n1")["Status"]["Message"] == "heartbeat failure"
    # the session is gone: its calls now fail, and a new session makes the node ready again
    with pytest.raises((wire.RemoteError, wire.WireError)):
        await fn.heartbeat()
    fn2 = FakeNode("n1")
    await fn2.connect(fast.port)
    assert fast.node("n1")["Status"]["State"] == "ready"


async def test_connection_loss_then_down_after_grace_and_quick_reconnect(fast: Env) -> None:
    await fast.add_node("n1")
    await fast.add_node("n2")
    a, b = FakeNode("n1"), FakeNode("n2")
    await a.connect(fast.port)
    await b.connect(fast.port)
    assert a.peer is not None and b.peer is not None
    await a.peer.close()
    await b.peer.close()
    # n2 reconnects at once and keeps beating; n1 stays away
    b2 = FakeNode("n2")
    await b2.connect(fast.port)
    assert fast.node("n1")["Status"]["State"] == "ready"  # not down at once
    t_end = time.monotonic() + 1.2
    while time.monotonic() < t_end:
        await b2.heartbeat()
        await asyncio.sleep(PERIOD * 0.8)
    assert fast.node("n1")["Status"]["State"] == "down"
    assert fast.node("n2")["Status"]["State"] == "ready"


async def test_nodes_up_at_start_get_a_deadline(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    n = make_node("old", "worker", {}, "10.0.0.5")
    n["Status"]["State"] = "ready"
    await store.update(lambda tx: tx.create("nodes", n))
    d = Dispatcher(store, heartbeat_period=0.1, grace_multiplier=3)
    await d.start()
    try:
        await wait_for(lambda: store.view().get("nodes", "old")["Status"]["State"] == "down", 3, "old node down")  # type: ignore[index]
    finally:
        await d.stop()
        await store.close()


async def test_assignments_pushed_on_change_only(env: Env) -> None:
    await env.add_node("n1")
    await env.add_node("n2")
    await env.add_task("t0", "n1")
    fn = FakeNode("n1")
    await fn.connect(env.port)
    await wait_for(lambda: len(fn.assignments) == 1, 3, "initial assignments")
    first = fn.assignments[0]
    assert first["node"]["ID"] == "n1" and [t["ID"] for t in first["tasks"]] == ["t0"]

    # a burst of new tasks is coalesced into few pushes, ending with all of them
    for i in range(1, 6):
        await env.add_task(f"t{i}", "n1")
    await wait_for(lambda: len(fn.assignments[-1]["tasks"]) == 6, 3, "6 tasks assigned")
    assert len(fn.assignments) <= 4
    n_before = len(fn.assignments)

    # status-only changes, tasks of other nodes and unassigned tasks push nothing
    await fn.status([{"TaskID": "t0", "Status": {"State": "running"}}])
    await env.add_task("other", "n2")
    await env.add_task("pend", "n1", state="pending")
    await asyncio.sleep(0.3)
    assert len(fn.assignments) == n_before

    # a desired-state change pushes the full set again
    await env.modify_task("t0", lambda t: t.__setitem__("DesiredState", "shutdown"))
    await wait_for(lambda: len(fn.assignments) == n_before + 1, 3, "push after desired-state change")
    last = {t["ID"]: t for t in fn.assignments[-1]["tasks"]}
    assert set(last) == {f"t{i}" for i in range(6)}
    assert last["t0"]["DesiredState"] == "shutdown"
    # after the connection's first, complete push, a push carries only what changed
    assert "incremental" not in fn.pushes[0]
    assert fn.pushes[-1]["incremental"] is True and [t["ID"] for t in fn.pushes[-1]["tasks"]] == ["t0"]
    assert fn.pushes[-1]["removed"] == [] and "networks" not in fn.pushes[-1]
    # the task's removal from the store drops it from the set
    await env.store.update(lambda tx: tx.delete("tasks", "t5"))
    await wait_for(lambda: "t5" not in {t["ID"] for t in fn.assignments[-1]["tasks"]}, 3, "t5 dropped")
    assert fn.pushes[-1]["removed"] == ["t5"] and fn.pushes[-1]["tasks"] == []


async def test_status_updates_forward_only_and_batched(env: Env) -> None:
    await env.add_node("n1")
    await env.add_node("n2")
    for i in range(20):
        await env.add_task(f"t{i}", "n1")
    await env.add_task("x", "n2")
    fn = FakeNode("n1")
    await fn.connect(env.port)
    before = env.store.applied_index
    cs = {"ContainerID": "c" * 64, "PID": 4242, "ExitCode": 0}
    # 20 concurrent calls land in one store transaction
    await asyncio.gather(
        *(fn.status([{"TaskID": f"t{i}", "Status": {"State": "running", "Message": "started", "ContainerStatus": cs}}])
          for i in range(20))
    )
    assert env.store.applied_index - before <= 2
    t0 = env.task("t0")
    assert t0["Status"]["State"] == "running" and t0["Status"]["ContainerStatus"] == cs
    assert t0["Status"]["Timestamp"].endswith("Z")
    # backward moves are ignored; forward ones applied; another node's task is untouched
    await fn.status([
        {"TaskID": "t0", "Status": {"State": "preparing"}},
        {"TaskID": "t1", "Status": {"State": "failed", "Err": "boom", "ContainerStatus": {**cs, "ExitCode": 3}}},
        {"TaskID": "x", "Status": {"State": "running"}},
        {"TaskID": "missing", "Status": {"State": "running"}},
    ])
    assert env.task("t0")["Status"]["State"] == "running"
    t1 = env.task("t1")["Status"]
    assert t1["State"] == "failed" and t1["Err"] == "boom" and t1["ContainerStatus"]["ExitCode"] == 3
    assert env.task("x")["Status"]["State"] == "assigned"
    # a forward move without ContainerStatus keeps the known one
    await fn.status([{"TaskID": "t0", "Status": {"State": "complete"}}])
    assert env.task("t0")["Status"]["ContainerStatus"] == cs
    # an ended task keeps its final state: a restarted agent that finds the container killed
    # must not turn a clean shutdown into a failure (or a completion into anything else)
    await fn.status([{"TaskID": "t2", "Status": {"State": "shutdown", "Message": "shutdown"}}])
    await fn.status([
        {"TaskID": "t2", "Status": {"State": "failed", "Err": "task: non-zero exit (137)"}},
        {"TaskID": "t0", "Status": {"State": "failed", "Err": "late"}},
    ])
    assert env.task("t2")["Status"]["State"] == "shutdown"
    assert env.task("t0")["Status"]["State"] == "complete"
    with pytest.raises(wire.RemoteError, match="unknown task state 'bogus'"):
        await fn.status([{"TaskID": "t2", "Status": {"State": "bogus"}}])
    with pytest.raises(wire.RemoteError, match="TaskID"):
        await fn.status([{"Status": {"State": "running"}}])


async def test_request_logs(env: Env) -> None:
    await env.add_node("n1")
    with pytest.raises(LookupError, match="not connected"):
        await env.d.request_logs("n1", {"task_ids": ["t"]})
    fn = FakeNode("n1")
    await fn.connect(env.port)
    r = await env.d.request_logs("n1", {"task_ids": ["t1", "t2"], "tail": -1, "since": 0, "timestamps": False})
    assert [ln["task_id"] for ln in r["lines"]] == ["t1", "t2"]


async def test_status_updates_arriving_during_a_commit_are_not_lost(env: Env) -> None:
    await env.add_node("n1")
    for i in range(40):
        await env.add_task(f"t{i}", "n1")
    fn = FakeNode("n1")
    await fn.connect(env.port)
    env.d.batch_interval = 0.01
    # make commits slow (as a busy disk would) so that updates arrive while one is in flight
    real_update = env.store.update

    async def slow_update(fn: Any) -> Any:
        await asyncio.sleep(0.05)
        return await real_update(fn)

    env.store.update = slow_update  # type: ignore[method-assign]

    async def staggered(i: int) -> None:
        await asyncio.sleep(i * 0.003)
        await fn.status([{"TaskID": f"t{i}", "Status": {"State": "running"}}])

    await asyncio.wait_for(asyncio.gather(*(staggered(i) for i in range(40))), 10)
    assert all(env.task(f"t{i}")["Status"]["State"] == "running" for i in range(40))


async def test_leave_marks_the_node_down_at_once(env: Env) -> None:
    await env.add_node("n1")
    fn = FakeNode("n1")
    await fn.connect(env.port)
    assert env.node("n1")["Status"]["State"] == "ready"
    # with a 5 s period the heartbeat grace is 15 s: down now can only come from session.leave
    await fn.req("session.leave", {"session_id": fn.session_id})
    n = env.node("n1")
    assert n["Status"]["State"] == "down"
    assert n["Status"]["Message"] == "node left the swarm"
    with pytest.raises(wire.RemoteError):
        await fn.heartbeat()  # the session is gone


async def test_a_node_that_does_not_read_costs_one_pending_push_not_a_queue(env: Env) -> None:
    """Every assignment change while the node reads nothing: one push is being written, the
    newest set waits (replacing older ones), and no task or message piles up per change."""
    await env.add_node("n1")
    for i in range(10):
        await env.add_task(f"t{i}", "n1")
    r, w = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        w.write(wire.encode_frame({"t": "session.open", "id": 1, "b": {"as": "n1"}}))
        assert (await wire.read_frame(r))["t"] == "reply"
        # from now on the node reads nothing; each change makes a ~500 KB assignment set
        most_tasks = 0
        for k in range(40):
            await env.modify_task(f"t{k % 10}", lambda t, k=k: t["Spec"]["ContainerSpec"].update(  # type: ignore[misc]
                Env=[f"K={k}", "PAD=" + "p" * 50_000]))
            await asyncio.sleep(0.04)  # past the 30 ms coalescing: every change is its own push
            most_tasks = max(most_tasks, len(env.d._tasks))
        assert most_tasks <= 2, f"{most_tasks} push tasks for one node"
        assert len(env.d._sessions["n1"].outbox) <= 1
    finally:
        w.close()
