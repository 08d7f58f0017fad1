"""The node's service networking beside the tasks' own interfaces (issue 9): one small facade the
executor calls at four moments, so that each capability stays in its own module.

- :class:`worker.vip.VipBalancers`: the service VIPs in each overlay task's namespace;
- :class:`worker.mesh.Mesh`: the ingress routing mesh (sandbox, host DNAT, sandbox LB);
- :class:`worker.hostports.HostPorts`: host-mode published ports of running local tasks.

Moments: :meth:`NetPlane.on_push` (every assignment push: VIPs and the mesh follow it, in the
background, latest push wins; a push whose mesh update failed is applied again after
:data:`RETRY_INITIAL_S` doubling up to :data:`RETRY_MAX_S`, until it succeeds or a newer push
replaces it), :meth:`NetPlane.task_up` / :meth:`NetPlane.task_down` (a container's
namespace got its overlay interfaces / is about to go), :meth:`NetPlane.ports_changed` (the set of
running tasks may have changed), :meth:`NetPlane.close` (daemon stop: mesh and host ports removed).
Any part may be None (not on this node, or a test): its calls do nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from worker.hostports import HostPorts
from worker.mesh import Mesh
from worker.vip import VipBalancers

__all__ = ["RETRY_INITIAL_S", "RETRY_MAX_S", "NetPlane"]

log = logging.getLogger("shoal.worker.netplane")

RETRY_INITIAL_S = 0.5
"""Seconds before a push whose routing mesh failed is applied again (doubling each failure)."""
RETRY_MAX_S = 10.0
"""Seconds, the cap of that backoff."""

RunningFn = Callable[[], Iterable[tuple[Mapping[str, Any], str]]]


class NetPlane:
    """``vips``, ``mesh``, ``host_ports``: the parts (or None); ``running``: returns the running
    local tasks as ``[(task, local-bridge IPv4)]`` (read when host ports are synced)."""

    def __init__(self, vips: VipBalancers | None = None, mesh: Mesh | None = None,
                 host_ports: HostPorts | None = None, running: RunningFn = lambda: (),
                 retry_initial: float = RETRY_INITIAL_S, retry_max: float = RETRY_MAX_S) -> None:
        self.vips = vips
        self.mesh = mesh
        self.host_ports = host_ports
        self._running = running
        self._bg: set[asyncio.Task[None]] = set()
        self._push: tuple[Any, ...] | None = None  # the latest push not applied yet
        self._last_push: tuple[Any, ...] | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._ports_lock = asyncio.Lock()
        self._ports_dirty = False
        self._networks: Mapping[str, Any] = {}
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.retries = 0  # pushes applied again after a failed mesh update (tests, logs)
        self._wake = asyncio.Event()  # a push arrived (ends a retry wait)
        self._settled = asyncio.Event()  # no push waiting: applied, or failed and waiting to retry
        self._settled.set()

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    # ---------------------------------------------------------------- pushes
    def on_push(self, node: Mapping[str, Any], networks: Mapping[str, Any], ingress: Mapping[str, Any] | None,
                dp_port: int) -> None:
        """Follow a push: every VIP table and the mesh, by delta, in the background (a push arriving
        meanwhile replaces a pending one or a retry: the latest wins)."""
        self._networks = networks
        self._last_push = (node, networks, ingress, dp_port)
        self._queue(self._last_push)

    def _queue(self, push: tuple[Any, ...]) -> None:
        self._push = push
        self._settled.clear()
        self._wake.set()
        if self._push_task is None or self._push_task.done():
            self._push_task = self._background(self._apply_pushes())

    async def _apply_pushes(self) -> None:
        delay = self.retry_initial
        try:
            while self._push is not None:
                push, self._push = self._push, None
                self._wake.clear()
                if await self._apply(push) or self._push is not None:
                    delay = self.retry_initial
                    continue
                # the mesh failed and nothing newer came: apply this push again after a backoff,
                # unless a newer one arrives meanwhile
                log.info("ingress routing mesh: retrying in %g s", delay)
                self._settled.set()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                if self._push is None:
                    self._push = push
                    self.retries += 1
                    delay = min(delay * 2, self.retry_max)
                else:
                    delay = self.retry_initial
                self._settled.clear()
        finally:
            if self._push is None:
                self._settled.set()

    async def _apply(self, push: tuple[Any, ...]) -> bool:
        """Apply one push; False when the mesh update failed (VIP failures are logged per
        container and not retried here: the next push re-applies every table)."""
        node, networks, ingress, dp_port = push
        jobs: list[Coroutine[Any, Any, bool | None]] = []
        if self.vips is not None:
            jobs.append(self.vips.update(networks))
        if self.mesh is not None:
            jobs.append(self.mesh.update(ingress, networks, node, dp_port))
        ok = True
        for r in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(r, BaseException):
                log.warning("service networking update failed: %s", r)
            elif r is False:
                ok = False
        return ok

    async def wait_idle(self) -> None:
        """Wait until the pushes seen so far were applied (or failed and wait for their retry)
        and pending port syncs are done."""
        while True:
            await self._settled.wait()
            others = [t for t in self._bg if not t.done() and t is not self._push_task]
            if others:
                await asyncio.gather(*others, return_exceptions=True)
                continue
            if self._settled.is_set():
                return

    # ----------------------------------------------------------------- tasks
    async def task_up(self, task_id: str, netns_path: str, network_ids: list[str]) -> None:
        """A container on overlay networks ``network_ids`` is plugged: its VIP table. Raises
        RuntimeError saying what failed (the caller rejects the task)."""
        if self.vips is None or not network_ids:
            return
        try:
            await self.vips.add(task_id, netns_path, network_ids, self._networks)
        except Exception as e:
            raise RuntimeError(f"setting up the service VIPs in the container's network namespace failed: "
                               f"{e or type(e).__name__}") from e

    async def task_down(self, task_id: str) -> None:
        """The container's namespace is about to go: its VIP table first. Never raises."""
        if self.vips is not None:
            await self.vips.remove(task_id)

    def ports_changed(self) -> None:
        """Re-sync the host-mode ports from the running tasks (in the background, coalesced), and
        the mesh when it sends to local tasks (its option keeping the client's address)."""
        if self.mesh is not None and self.mesh.local_addresses is not None and self._last_push is not None:
            self._queue(self._push or self._last_push)
        if self.host_ports is None:
            return
        self._ports_dirty = True
        if not self._ports_lock.locked():
            self._background(self._sync_ports())

    async def _sync_ports(self) -> None:
        assert self.host_ports is not None
        async with self._ports_lock:
            while self._ports_dirty:
                self._ports_dirty = False
                running = list(self._running())
                try:
                    script = await asyncio.to_thread(self.host_ports.sync, running)
                    if script:
                        log.info("host-mode ports: %s", sorted(self.host_ports.map.applied or {}))
                except Exception as e:
                    log.warning("host-mode ports: applying failed: %s", e)

    # ----------------------------------------------------------------- close
    async def close(self) -> None:
        """Daemon stop: pending work cancelled, the mesh and the host-ports table removed."""
        self._push = None
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        self._settled.set()
        if self.mesh is not None:
            await self.mesh.close()
        if self.host_ports is not None and self.host_ports.touched:
            try:
                await asyncio.to_thread(self.host_ports.remove)
            except Exception as e:
                log.warning("host-mode ports: removing the table failed: %s", e)
