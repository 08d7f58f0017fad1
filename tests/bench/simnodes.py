"""SimulatedNode: a TEST DOUBLE of a worker node for the scale benchmark (tests/bench/bench_scale.py).

It speaks the real 2377 protocol through the real worker code: it joins with the worker token
(:func:`worker.join.join`: ``ca.root``, then ``ca.join`` with a CSR; it gets its TLS certificate
from the cluster CA), then runs the real :class:`worker.agent.Agent` session (``session.open``,
heartbeats at the period the manager hands out, ``assignments`` pushes, batched
``session.status`` reports). What it does NOT do is run anything: its executor,
:class:`SimulatedExecutor`, reports every task assigned to it with desired state ``running`` as
``running`` at once (no container, no image, no network), and every task the manager wants
stopped as ``shutdown``. Many of them run in one asyncio process (e.g. 1,000).

:meth:`SimulatedNode.lose` drops the node abruptly (its connection closes, no ``session.leave``),
as a node that lost power: the manager marks it down after the heartbeat grace.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shoal.base.taskstate import state_order
from worker.agent import Agent
from worker.join import join

__all__ = ["SimulatedExecutor", "SimulatedNode", "start_nodes"]

RUNNING = state_order("running")
"""The order of ``running`` among task states (tasks at or past it are not reported again)."""


def _description(hostname: str) -> dict[str, Any]:
    """A NodeDescription of a simulated node: 4 CPUs and 8 GiB, linux/x86_64."""
    return {
        "Hostname": hostname,
        "Platform": {"Architecture": "x86_64", "OS": "linux"},
        "Resources": {"NanoCPUs": 4_000_000_000, "MemoryBytes": 8 << 30},
        "Engine": {"EngineVersion": "simulated", "Plugins": []},
    }


class SimulatedExecutor:
    """The executor interface of :class:`worker.agent.Agent` (``set_assignments``, ``read_logs``)
    without containers: each assigned task whose desired state is ``running`` is reported
    ``running`` once; a task whose desired state is past running is reported ``shutdown``.

    ``report(task_id, status)`` is the agent's :meth:`~worker.agent.Agent.report`. ``tasks``: the
    IDs of the tasks currently assigned; ``running``: those reported running.
    """

    def __init__(self) -> None:
        self.report: Any = None
        self.tasks: set[str] = set()
        self.running: set[str] = set()
        self.stopped: set[str] = set()
        self.pushes = 0

    def set_assignments(self, node: dict[str, Any], tasks: list[dict[str, Any]], **_kw: Any) -> None:
        """Take the complete task set of this node (an ``assignments`` push) and report the moves."""
        self.pushes += 1
        ids = set()
        for t in tasks:
            tid = t["ID"]
            ids.add(tid)
            desired = t.get("DesiredState", "running")
            if state_order(desired) <= RUNNING:
                if tid not in self.running:
                    self.running.add(tid)
                    self.report(tid, {"State": "running", "Message": "started (simulated node)"})
            elif tid not in self.stopped:
                self.stopped.add(tid)
                self.running.discard(tid)
                self.report(tid, {"State": "shutdown", "Message": "stopped (simulated node)"})
        self.tasks = ids
        self.running &= ids
        self.stopped &= ids

    def read_logs(self, task_ids: list[str], tail: int, since: float, timestamps: bool) -> list[dict[str, Any]]:
        """A simulated node has no logs."""
        return []


class SimulatedNode:
    """One simulated worker node: ``hostname``, certificates under ``certs_dir``.

    :meth:`join` (worker token, manager address ``ip:port``) then :meth:`start`; :meth:`lose`
    drops it without telling the manager; :meth:`stop` leaves cleanly.
    """

    def __init__(self, hostname: str, certs_dir: Path) -> None:
        self.hostname = hostname
        self.certs_dir = certs_dir
        self.node_id = ""
        self.managers: list[str] = []
        self.executor = SimulatedExecutor()
        self.agent: Agent | None = None

    async def join(self, manager: str, token: str, timeout: float = 60.0) -> None:
        """Join the swarm through ``manager`` with the worker ``token`` (real ``ca.root`` and
        ``ca.join``). Raises :class:`worker.join.JoinError`."""
        self.node_id, _role, self.managers = await join(
            manager, token, self.hostname, "127.0.0.1", self.certs_dir,
            description=_description(self.hostname), timeout=timeout)

    def start(self) -> None:
        """Open the agent session (in the background; reconnects like a real agent)."""
        self.agent = Agent(self.node_id, self.managers, self.certs_dir, self.executor,
                           _description(self.hostname), advertise_addr="127.0.0.1",
                           request_timeout=60.0, connect_timeout=30.0)
        self.executor.report = self.agent.report
        self.agent.start()

    async def lose(self) -> None:
        """Drop the node as if it lost power: the connection closes, no ``session.leave``."""
        if self.agent is not None:
            await self.agent.stop(leaving=False)
            self.agent = None

    async def stop(self) -> None:
        """Stop the agent (without leaving the swarm)."""
        await self.lose()


async def start_nodes(n: int, manager: str, token: str, root: Path, prefix: str = "sim",
                      concurrency: int = 32) -> list[SimulatedNode]:
    """Join ``n`` simulated nodes through ``manager`` (``ip:port``) with the worker ``token``,
    ``concurrency`` joins at a time, start their sessions and wait until every one is connected.
    Certificates go under ``root/<hostname>``. Raises :class:`worker.join.JoinError` or
    ``TimeoutError``."""
    nodes = [SimulatedNode(f"{prefix}-{i:05d}", root / f"{prefix}-{i:05d}") for i in range(n)]
    sem = asyncio.Semaphore(concurrency)

    async def one(x: SimulatedNode) -> None:
        async with sem:
            await x.join(manager, token)
            x.start()
            assert x.agent is not None
            await x.agent.wait_connected(120.0)

    await asyncio.gather(*(one(x) for x in nodes))
    return nodes
