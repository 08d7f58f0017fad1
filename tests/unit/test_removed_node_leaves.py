"""A node removed from the swarm while its daemon was down (``node rm`` once Down, then the daemon
started again) learns it from the manager's refusal of its session ("node X was removed from the
swarm", as swarmkit's dispatcher answers ``ErrNodeRemoved``): its agent stops for good (no more
retries), and the daemon leaves the swarm locally as ``swarm leave --force`` would (tasks stopped
and removed, state and certificates forgotten, ``/info`` shows LocalNodeState "inactive") and logs
one line saying so."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from shoal.daemon import sysinfo
from shoal.daemon.daemon import Daemon
from shoal.daemon.state import LocalState
from shoal.daemon.swarmflow import REMOVED_MESSAGE
from shoal.rpc import wire
from tests.unit.test_leave_drain_and_mesh_retry import _RecordingExecutor
from tests.waiting import wait_until
from worker.agent import Agent


class _Exec:
    def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
        pass

    def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        return []


def _refusing(msg: str, calls: list[str]) -> Any:
    async def session(self: Agent, addr: str) -> bool:
        calls.append(addr)
        raise wire.RemoteError(msg)
    return session


async def test_a_session_refused_as_removed_stops_the_agent_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(Agent, "_session", _refusing("node n1 was removed from the swarm", calls))
    reasons: list[str] = []
    agent = Agent("n1", ["10.0.0.1:2377", "10.0.0.2:2377"], "/nonexistent", _Exec(), {},
                  backoff_initial=0.001, backoff_max=0.001, on_removed=reasons.append)
    agent.start()
    try:
        assert agent._task is not None
        await asyncio.wait_for(asyncio.shield(agent._task), 5)  # the loop ended by itself
        assert agent.removed and not agent.connected.is_set()
        assert reasons == ["node n1 was removed from the swarm"]
        assert calls == ["10.0.0.1:2377"]  # no retry, not even with the other manager
    finally:
        await agent.stop()


async def test_other_refusals_are_still_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    # another node's removal (not this one's) and ordinary errors are not final
    monkeypatch.setattr(Agent, "_session", _refusing("node n2 was removed from the swarm", calls))
    reasons: list[str] = []
    agent = Agent("n1", ["10.0.0.1:2377"], "/nonexistent", _Exec(), {},
                  backoff_initial=0.001, backoff_max=0.001, on_removed=reasons.append)
    agent.start()
    try:
        await wait_until(lambda: len(calls) >= 3, what="the agent retrying")
        assert not agent.removed and reasons == []
    finally:
        await agent.stop()


async def test_the_daemon_of_a_removed_node_leaves_the_swarm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    monkeypatch.setattr(Agent, "_session", _refusing("node w1 was removed from the swarm", calls))
    d = Daemon.__new__(Daemon)  # only the attributes the worker role and the leave use
    d.args, d.manager, d.agent, d._removal = argparse.Namespace(), None, None, None
    d._swarm_lock = asyncio.Lock()
    d.hostname, d.engine_labels = "h3", {}
    d.data_root, d.certs_dir = tmp_path, tmp_path / "certs"
    d.certs_dir.mkdir()
    (d.certs_dir / "node.crt").write_text("x")
    d.state = LocalState(tmp_path / "state.json")
    d.state.save({"NodeID": "w1", "Role": "worker", "AdvertiseAddr": "10.0.0.3:2377",
                  "ManagerAddrs": ["10.0.0.1:2377"]})
    ex = _RecordingExecutor()
    d.executor = ex  # type: ignore[assignment]
    caplog.set_level(logging.INFO)

    await d.start_worker_role()
    agent = d.agent
    await wait_until(lambda: d._removal is not None and d._removal.done(), what="the daemon leaving")
    assert d._removal is not None and d._removal.exception() is None
    assert agent.removed and agent._task is None  # stopped through stop_roles
    assert calls == ["10.0.0.1:2377"]  # refused once, never retried
    assert d.agent is None and not d.state.in_swarm
    assert not (tmp_path / "state.json").exists() and not d.certs_dir.exists()
    # the tasks stopped and removed, as swarm leave --force does
    assert ex.calls == ["set_assignments 0 {}", "wait_drained", "net.wait_idle", "net.close", "drop_overlays"]
    info = sysinfo.info(hostname="h3", state=d.state, manager=None, containers=[], image_count=0,
                        data_root=tmp_path, insecure_registries=[], default_runtime="runc")
    assert info["Swarm"]["LocalNodeState"] == "inactive" and info["Swarm"]["Error"] == ""
    assert d.swarm_header() == "inactive"
    assert [r.getMessage() for r in caplog.records].count(REMOVED_MESSAGE) == 1
    assert not any("session with" in r.getMessage() and "ended" in r.getMessage() for r in caplog.records)
