"""Service VIPs in each overlay task's network namespace (issue 9), Docker's way.

Docker load-balances a service's VIP inside every container attached to the service's network
(IPVS keyed by a firewall mark: any port sent to the VIP goes to the same port of one task). Shoal
does the same with nftables: each container on overlay networks gets the private table
``ip shoal-vip`` (:class:`overlaynet.lb.apply.LoadBalancer` with ``netns`` = the container's
namespace) holding one whole-VIP entry (:meth:`overlaynet.lb.rules.ServiceKey.whole`) per service
with a VIP on its networks, whose endpoints are the service's running tasks on that network.

Where the data comes from (the assignment push, ``networks[nid]["DNS"]``, /work/notes/contract9.md
§4): ``Services[].VIP`` (null for dnsrr: no entry) and ``Tasks[]`` (``Service``, ``IP``) —
:func:`vip_state` turns them into an :class:`LBState`; :class:`VipBalancers` keeps one balancer per
container and re-applies every container's state (deltas only) on each push, so rules follow the
task set as fast as the push does. Nothing here sets a conntrack timeout: a DNATed connection lives
as long as the kernel's established timeout (432000 s), unlike IPVS's 900 s (moby#31208).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from overlaynet.lb.apply import LoadBalancer, NftError, flush_udp_conntrack, run_nft
from overlaynet.lb.rules import Endpoint, LBState, RulesError, ServiceKey
from worker import overlay as ov

__all__ = ["VIP_TABLE", "VipBalancers", "vip_state"]

log = logging.getLogger("shoal.worker.vip")

VIP_TABLE = "shoal-vip"


def vip_state(networks: Mapping[str, Any], network_ids: Iterable[str]) -> LBState:
    """The VIP load balancing of a container attached to ``network_ids`` (in order), from the
    push's ``networks``: for each service with a VIP on one of them, the whole VIP → the IPs of that
    service's serving tasks on that network (none: the VIP rejects). A VIP seen twice keeps its first
    network's entry. Malformed entries are left out (``worker.overlay.dns_records`` logs them)."""
    out: dict[ServiceKey, tuple[Endpoint, ...]] = {}
    for nid in network_ids:
        recs = ov.dns_records(str(nid), networks.get(nid))
        ips: dict[str, list[str]] = {}
        for t in recs.tasks:
            if t.serving:
                ips.setdefault(t.service.lower(), []).append(t.ip)
        for s in recs.services:
            if not s.vip:
                continue
            try:
                key = ServiceKey.whole(s.vip)
                eps = tuple(Endpoint(ip, None) for ip in ips.get(s.name.lower(), ()))
            except RulesError as e:
                log.warning("network %s: no VIP for service %s: %s", str(nid)[:12], s.name, e)
                continue
            out.setdefault(key, eps)
    return LBState(out)


class _Box:
    __slots__ = ("lb", "lock", "network_ids")

    def __init__(self, lb: LoadBalancer, network_ids: list[str]) -> None:
        self.lb = lb
        self.network_ids = network_ids
        self.lock = asyncio.Lock()


class VipBalancers:
    """One :class:`LoadBalancer` per container on overlay networks, keyed by task ID.

    ``await add(task_id, netns_path, network_ids, networks)`` loads the container's table (full);
    ``await update(networks)`` re-applies every container's state from a new push (deltas, all
    containers concurrently, each in a thread); ``await remove(task_id)`` deletes the table (if the
    namespace is still there) and forgets it. ``nft``/``conntrack``: runners (tests pass fakes).
    """

    def __init__(self, table: str = VIP_TABLE, nft: Callable[..., None] = run_nft,
                 conntrack: Callable[..., int] = flush_udp_conntrack) -> None:
        self.table = table
        self._nft = nft
        self._conntrack = conntrack
        self._boxes: dict[str, _Box] = {}
        self._networks: Mapping[str, Any] = {}

    def tasks(self) -> list[str]:
        """The task IDs with a balancer, sorted."""
        return sorted(self._boxes)

    def state_of(self, task_id: str) -> LBState | None:
        """The state last applied to ``task_id``'s container, or None."""
        box = self._boxes.get(task_id)
        return box.lb.applied if box is not None else None

    async def add(self, task_id: str, netns_path: str, network_ids: list[str],
                  networks: Mapping[str, Any] | None = None) -> None:
        """Give the container in ``netns_path`` its VIP table. Raises ``NftError``/``RulesError``."""
        if networks is not None:
            self._networks = networks
        box = _Box(LoadBalancer(self.table, netns=netns_path, nft=self._nft, conntrack=self._conntrack),
                   list(network_ids))
        self._boxes[task_id] = box
        async with box.lock:
            await asyncio.to_thread(box.lb.apply, vip_state(self._networks, box.network_ids))

    async def update(self, networks: Mapping[str, Any]) -> None:
        """Apply ``networks`` (a push) to every container; failures are logged (the next push
        retries with a full load)."""
        self._networks = networks
        states: dict[tuple[str, ...], LBState] = {}  # containers on the same networks share one state
        for box in self._boxes.values():
            key = tuple(box.network_ids)
            if key not in states:
                states[key] = vip_state(networks, box.network_ids)
        await asyncio.gather(*(self._apply(tid, box, states[tuple(box.network_ids)])
                               for tid, box in list(self._boxes.items())))

    async def _apply(self, task_id: str, box: _Box, state: LBState) -> None:
        async with box.lock:
            if self._boxes.get(task_id) is not box:
                return
            try:
                await asyncio.to_thread(box.lb.apply, state)
            except (NftError, RulesError, OSError) as e:
                log.warning("task %s: updating its service VIPs failed: %s", task_id, e)
            except Exception as e:  # conntrack clean-up (the rules are in)
                log.warning("task %s: service VIPs updated, clean-up failed: %s", task_id, e)

    async def remove(self, task_id: str) -> None:
        """Delete the container's table while its namespace exists; forget it. Never raises."""
        box = self._boxes.pop(task_id, None)
        if box is None:
            return
        async with box.lock:
            ns = box.lb.netns
            if ns is None or not os.path.exists(ns):
                return
            try:
                await asyncio.to_thread(box.lb.remove)
            except Exception as e:  # the namespace went meanwhile: the table went with it
                log.debug("task %s: removing its VIP table: %s", task_id, e)
