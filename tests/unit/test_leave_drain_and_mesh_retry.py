"""``swarm leave`` then ``swarm init`` at once (a hostile tester's finding): the leave must return
only once the tasks and their overlay namespaces are gone, a routing mesh that failed must come
up by itself, and a VNI held by a network of the swarm just left must not reject the new tasks.

- :meth:`worker.executor.Executor.wait_drained` / ``drop_overlays`` and ``Daemon.stop_roles``;
- :class:`worker.netplane.NetPlane` retrying a failed mesh update with capped backoff;
- :class:`worker.mesh.Mesh` rebuilding a half-built sandbox;
- the executor freeing a stale VNI (``VniInUse`` → ``cleanup_stale(known, vni)`` → retry).

Test doubles are those of test_executor_overlay_calls / test_node_service_networking (no root);
the kernel side of ``cleanup_stale(…, vni)`` is in tests/integration/test_vxlan.py.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from overlaynet.driver import Attachment, EndpointConfig, NetworkConfig, mac_from_ip
from shoal.daemon.daemon import Daemon
from tests.unit.test_executor_overlay_calls import (
    NET_A,
    NET_B,
    OVNODE,
    TID,
    TID2,
    OvEnv,
    overlay_task,
    peers_msg,
)
from tests.unit.test_executor_states import make_task
from tests.unit.test_node_service_networking import INGRESS_NET, WEB_PORT, SandboxDouble, ingress_entry
from tests.waiting import wait_until as until
from worker.executor import DRAIN_MARGIN_S, Executor
from worker.mesh import Mesh
from worker.netplane import NetPlane

# -- wait_drained / drop_overlays ------------------------------------------------------------------


class SlowStopEnv(OvEnv):
    """``runtime.stop`` takes ``stop_s`` seconds (a container using its grace period)."""

    def __init__(self, stop_s: float) -> None:
        super().__init__()
        fast_stop = self.runtime.stop

        async def slow_stop(cid: str, timeout: float, signal: str) -> None:
            await asyncio.sleep(stop_s)
            await fast_stop(cid, timeout, signal)

        self.runtime.stop = slow_stop  # type: ignore[method-assign]


async def test_wait_drained_returns_once_tasks_and_overlay_endpoints_are_gone() -> None:
    e = SlowStopEnv(stop_s=0.3)
    tasks = [overlay_task(TID, (NET_A, "10.0.1.5/24")), overlay_task(TID2, (NET_A, "10.0.1.6/24"))]
    tasks[1]["NetworksAttachments"][0]["Addresses"] = ["10.200.1.8/24"]
    await e.ex.set_assignments(OVNODE, tasks, {NET_A: peers_msg(NET_A)})
    await until(lambda: e.states(TID)[-1:] == ["running"] and e.states(TID2)[-1:] == ["running"])
    await e.ex.set_assignments({}, [], networks={})  # swarm leave: every task vanishes
    t0 = time.monotonic()
    assert await e.ex.wait_drained(5.0) is True
    assert time.monotonic() - t0 >= 0.25  # it waited for the stops
    assert e.ex.task_states() == {} and e.runtime.containers == {}
    assert ("detach", NET_A, TID) in e.driver.calls and ("detach", NET_A, TID2) in e.driver.calls
    assert e.ex._local == {}
    assert await e.ex.drop_overlays() == []
    assert e.driver.calls[-1] == ("cleanup_stale", [])  # whatever is left: removed
    await e.ex.close()


async def test_wait_drained_gives_up_at_its_deadline_and_says_which_tasks() -> None:
    e = SlowStopEnv(stop_s=5.0)
    await e.ex.set_assignments(OVNODE, [overlay_task(TID, (NET_A, "10.0.1.5/24"))], {NET_A: peers_msg(NET_A)})
    await until(lambda: e.states(TID)[-1:] == ["running"])
    await e.ex.set_assignments({}, [], networks={})
    t0 = time.monotonic()
    assert await e.ex.wait_drained(0.3) is False
    assert 0.25 <= time.monotonic() - t0 < 2.0
    assert TID in e.ex.task_states()
    await e.ex.close()


def test_the_default_drain_deadline_is_the_longest_stop_grace_plus_a_margin() -> None:
    e = OvEnv()
    assert e.ex.drain_timeout() == DRAIN_MARGIN_S  # no task
    ex: Executor = e.ex
    ex._controllers = {"a": _Ctl(make_task(TID)),  # type: ignore[dict-item]
                       "b": _Ctl(make_task(TID2, StopGracePeriod=30_000_000_000))}
    assert ex.drain_timeout() == 30.0 + DRAIN_MARGIN_S
    ex._controllers = {"a": _Ctl(overlay_task(TID))}  # type: ignore[dict-item]
    assert ex.drain_timeout() == 10.0 + DRAIN_MARGIN_S  # Docker's default grace


class _Ctl:
    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task


class _RecordingExecutor:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.net = self

    async def set_assignments(self, node: dict[str, Any], tasks: list[Any], networks: Any = None) -> None:
        self.calls.append(f"set_assignments {len(tasks)} {networks}")

    async def wait_drained(self, timeout: float | None = None) -> bool:
        self.calls.append("wait_drained")
        return True

    async def wait_idle(self) -> None:
        self.calls.append("net.wait_idle")

    async def close(self) -> None:
        self.calls.append("net.close")

    async def drop_overlays(self) -> list[str]:
        self.calls.append("drop_overlays")
        return []


async def test_stop_roles_leaving_waits_for_the_drain_before_returning() -> None:
    d = Daemon.__new__(Daemon)  # only the attributes stop_roles reads
    d.agent, d.manager, d.args = None, None, argparse.Namespace()
    ex = _RecordingExecutor()
    d.executor = ex  # type: ignore[assignment]
    await d.stop_roles(leaving=True)
    assert ex.calls == ["set_assignments 0 {}", "wait_drained", "net.wait_idle", "net.close", "drop_overlays"]
    ex.calls.clear()
    await d.stop_roles()  # a daemon stop: the tasks keep running
    assert ex.calls == []


# -- the mesh retried -------------------------------------------------------------------------------


class FlakyAttach:
    """The executor's overlay attach for the mesh: fails ``fails`` times (VNI in use), then works."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.attached: list[EndpointConfig] = []
        self.detached: list[EndpointConfig] = []

    async def attach(self, cfg: NetworkConfig, ep: EndpointConfig) -> Attachment:
        self.attached.append(ep)
        if self.fails > 0:
            self.fails -= 1
            raise RuntimeError(f"a VXLAN device with VNI {cfg.vni} and port 4789 already exists")
        return Attachment(ep.network_id, ep.endpoint_id, ep.netns_path, ep.ifname, ep.address,
                          mac_from_ip(ep.address), 1450)

    async def detach(self, ep: EndpointConfig) -> None:
        self.detached.append(ep)


async def test_a_half_built_mesh_is_torn_down_and_built_again_on_the_next_update(tmp_path: Path) -> None:
    sb = SandboxDouble(tmp_path / "sbox")
    fa = FlakyAttach(fails=1)
    m = Mesh(sb, fa.attach, fa.detach)  # type: ignore[arg-type]
    nets = {INGRESS_NET: peers_msg(INGRESS_NET)}
    assert await m.update(ingress_entry(WEB_PORT), nets, OVNODE, 4789) is False
    assert await m.update(ingress_entry(WEB_PORT), nets, OVNODE, 4789) is True  # the same push again
    assert len(fa.attached) == 2 and len(fa.detached) == 1  # the failed endpoint released first
    assert ("ensure_link", 1450) in sb.calls and sb.calls[-1][0] == "set_ports"
    await m.close()


async def test_netplane_retries_a_failed_mesh_with_backoff_until_it_is_up(tmp_path: Path) -> None:
    sb = SandboxDouble(tmp_path / "sbox")
    fa = FlakyAttach(fails=3)
    plane = NetPlane(mesh=Mesh(sb, fa.attach, fa.detach), retry_initial=0.05, retry_max=0.1)  # type: ignore[arg-type]
    nets = {INGRESS_NET: peers_msg(INGRESS_NET)}
    t0 = time.monotonic()
    plane.on_push(OVNODE, nets, ingress_entry(WEB_PORT), 4789)  # one push, never repeated
    await until(lambda: plane.mesh is not None and plane.mesh._up, timeout=5.0)
    # 0.05 + 0.1 + 0.1 (capped) between the four attempts
    assert len(fa.attached) == 4 and plane.retries == 3 and time.monotonic() - t0 >= 0.2
    await plane.wait_idle()
    n = len(fa.attached)
    await asyncio.sleep(0.3)
    assert len(fa.attached) == n  # up: no more retries
    await plane.close()


async def test_a_newer_push_replaces_the_one_being_retried_and_wait_idle_does_not_hang(tmp_path: Path) -> None:
    sb = SandboxDouble(tmp_path / "sbox")
    fa = FlakyAttach(fails=10**6)  # never comes up
    plane = NetPlane(mesh=Mesh(sb, fa.attach, fa.detach), retry_initial=5.0, retry_max=10.0)  # type: ignore[arg-type]
    nets = {INGRESS_NET: peers_msg(INGRESS_NET)}
    plane.on_push(OVNODE, nets, ingress_entry(WEB_PORT), 4789)
    await asyncio.wait_for(plane.wait_idle(), 2.0)  # failed, waiting 5 s to retry: idle for callers
    assert len(fa.attached) == 1
    plane.on_push(OVNODE, nets, None, 4789)  # the ingress went: applied at once, no retry left
    await asyncio.wait_for(plane.wait_idle(), 2.0)
    assert plane.mesh is not None and plane.mesh.endpoint is None and plane.retries == 0
    assert sb.calls[-1] == ("remove",)
    await plane.close()


# -- a VNI held by the swarm just left ----------------------------------------------------------------


async def test_a_vni_held_by_a_network_no_longer_known_is_freed_and_the_task_runs() -> None:
    e = OvEnv()
    e.driver.vni_holders[4097] = ["sov-oldingress00"]  # NET_A's VNI, held by a left swarm's network
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"))
    await e.ex.set_assignments(OVNODE, [t], {NET_A: peers_msg(NET_A)})
    await until(lambda: e.states(TID)[-1:] == ["running"])
    assert ("cleanup_stale", [NET_A], 4097) in e.driver.calls
    assert [c[0] for c in e.driver.calls].count("ensure_network") == 2  # refused, freed, again
    await e.ex.close()


async def test_a_vni_nothing_stale_holds_still_rejects_the_task() -> None:
    e = OvEnv()
    e.driver.vni_holders[4098] = []  # held by a device cleanup_stale cannot free
    t = overlay_task(TID, (NET_B, "10.0.2.5/24"))
    await e.ex.set_assignments(OVNODE, [t], {NET_A: peers_msg(NET_A), NET_B: peers_msg(NET_B)})
    await until(lambda: e.states(TID)[-1:] == ["rejected"])
    assert "VNI 4098" in e.last(TID)["Err"]
    assert ("cleanup_stale", sorted([NET_A, NET_B]), 4098) in e.driver.calls
    await e.ex.close()
