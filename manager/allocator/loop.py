"""The network allocator loop (issue 9): gives the tasks of services attached to overlay networks
their addresses before they are scheduled. A leader loop like the orchestrator and the reaper
(:func:`manager.loop.reconcile_loop`).

Each pass, in one store transaction: the tasks in state ``new`` (desired ``running`` or less)
whose spec has ``Networks`` (the orchestrator leaves those ``new``; it moves the others to
``pending`` itself) get, from an :class:`~manager.allocator.Allocator` rebuilt from the store
(:func:`rebuild_allocator`: networks, services, the tasks that hold their addresses —
:func:`holds_addresses` —, nodes; the cluster's default address pools), one
address per network (:meth:`~manager.allocator.Allocator.allocate_task`), written as
``NetworksAttachments: [{"Network": <stored network>, "Addresses": ["10.0.1.5/24"]}]``
(:func:`~manager.allocator.network_attachment`), and move to ``pending`` ("pending task
scheduling"); the scheduler then puts the node's bridge attachment first. A task that cannot get
its addresses stays ``new`` with ``Status.Message`` = the reason (``network NAME is out of
addresses: …``, ``network ID not found``) and is retried on the next pass, which any task change
(a task going away frees its addresses) triggers. Terminal tasks hold no addresses: theirs may be
handed to new tasks, and so may those of tasks that will never run (desired ``shutdown`` or
``remove`` before being placed).

The same pass gives every node that is not ``down`` a load-balancer address on the ingress network
(``Node.Attachments``, as Docker's ingress sandbox address) and drops attachments to removed
networks, and re-allocates the ``Endpoint`` of a service whose spec changed without the control
API (an automatic rollback: :func:`endpoint_is_stale`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from manager.allocator.allocator import Allocator, network_attachment
from manager.allocator.errors import AllocatorError
from manager.allocator.pools import AddressPools
from manager.allocator.ports import CLUSTER_PORT, DEFAULT_DATA_PATH_PORT
from manager.ipam import BRIDGE_POOL
from manager.loop import reconcile_loop
from manager.store import MAX_TRANSACTION_BYTES, Event, ReadTx, Store, WriteTx
from shoal.base.taskstate import ASSIGNED, COMPLETE, STATE_ORDER, TERMINAL_STATES
from shoal.base.util import now_rfc3339
from shoal.base.views import endpoint_spec_key, task_desired_order, task_needs_networks, task_state

__all__ = ["NetworkAllocatorLoop", "MAX_TASKS_PER_PASS", "endpoint_is_stale", "holds_addresses",
           "needs_allocation", "node_attachments_wanted", "nodes_needing_attachments", "rebuild_allocator"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MAX_TASKS_PER_PASS = 200
"""Most tasks one pass allocates (as the orchestrator's batches); the rest wait for the next pass."""


def needs_allocation(task: Obj) -> bool:
    """Whether ``task`` waits for the allocator: state ``new``, desired ``complete`` (a job's) or less, and
    attached to overlay networks (a spec with ``Networks``, or ingress ports in its ``Endpoint``:
    :func:`shoal.base.views.task_needs_networks`)."""
    return (task_state(task) == "new" and task_desired_order(task) <= COMPLETE
            and task_needs_networks(task))


def holds_addresses(task: Obj) -> bool:
    """Whether ``task``'s overlay addresses are still its own: not terminal, and not a task that
    will never run (desired beyond ``complete`` and never placed: the scheduler skips it)."""
    state = task_state(task)
    if state in TERMINAL_STATES:
        return False
    return not (task_desired_order(task) > COMPLETE and STATE_ORDER.get(state, 0) < ASSIGNED)


def _map_list(v: Any) -> list[Obj]:
    return [a for a in v if isinstance(a, dict)] if isinstance(v, list) else []


def _att_network(att: Obj) -> str:
    net = att.get("Network")
    return str(net.get("ID") or "") if isinstance(net, dict) else ""


def endpoint_is_stale(service: Obj) -> bool:
    """Whether ``service``'s ``Endpoint.Spec`` is not its ``Spec.EndpointSpec`` (mode and ports):
    its spec changed without the control API allocating for it (an automatic rollback)."""
    ep = service.get("Endpoint")
    spec = service.get("Spec")
    if not isinstance(ep, dict) or not isinstance(spec, dict):
        return False
    return endpoint_spec_key(ep.get("Spec")) != endpoint_spec_key(spec.get("EndpointSpec"))


def node_attachments_wanted(node: Obj, ingress: str | None, networks: dict[str, Obj]) -> list[str] | None:
    """What ``node``'s ``Attachments`` (its load-balancer addresses, contract §3) need: None =
    nothing; otherwise the network IDs to give it an address on (``[ingress ID]`` when it is not
    ``down`` and has no address there; ``[]`` when it only has attachments to networks that are
    gone, to drop)."""
    atts = _map_list(node.get("Attachments"))
    kept = [a for a in atts if _att_network(a) in networks]
    need = ingress is not None and (node.get("Status") or {}).get("State") != "down" and \
        not any(_att_network(a) == ingress for a in kept)
    if not need and len(kept) == len(atts):
        return None
    return [ingress] if need and ingress is not None else []


def nodes_needing_attachments(nodes: list[Obj], networks: dict[str, Obj], skip: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether any node's ``Attachments`` must change (:func:`node_attachments_wanted`), but those
    of the nodes in ``skip`` (IDs)."""
    ingress = next((nid for nid, n in networks.items() if (n.get("Spec") or {}).get("Ingress")), None)
    return any(node_attachments_wanted(n, ingress, networks) is not None for n in nodes if n.get("ID") not in skip)


def _pools(tx: ReadTx) -> AddressPools | None:
    """The cluster's default address pools (``DefaultAddrPool`` / ``SubnetSize`` of the cluster
    object), or None (10.0.0.0/8 in /24s) when there is no cluster object or it holds none."""
    for c in tx.list_shallow("cluster"):
        try:
            return AddressPools.from_cluster(c)
        except AllocatorError:
            return None
    return None


def _ipv4(text: object) -> ipaddress.IPv4Address | None:
    try:
        addr = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return addr if isinstance(addr, ipaddress.IPv4Address) else None


def node_routes(nodes: Iterable[Obj]) -> list[str]:
    """What no overlay subnet may overlap on the nodes: the local bridges' pool
    (:data:`manager.ipam.BRIDGE_POOL`) and each node's own bridge subnet (``ShoalBridge.Subnet``:
    a task would get two routes to it), and each node's own address (``Status.Addr`` as a /32: a
    task could no longer reach that node's underlay address). Loopback and unspecified addresses
    are skipped (a node seen before its first session)."""
    out: list[str] = [BRIDGE_POOL]
    for n in nodes:
        bridge = (n.get("ShoalBridge") or {}).get("Subnet") if isinstance(n.get("ShoalBridge"), dict) else None
        if bridge:
            out.append(str(bridge))
        addr = _ipv4((n.get("Status") or {}).get("Addr") if isinstance(n.get("Status"), dict) else None)
        if addr is not None and not (addr.is_loopback or addr.is_unspecified):
            out.append(f"{addr}/32")
    return out


def reserved_ports(tx: ReadTx, nodes: Iterable[Obj]) -> dict[tuple[str, int], str]:
    """``{(protocol, port): what}`` that no service may publish: the cluster port (2377/tcp and
    every manager's own port from ``ManagerStatus.Addr``) and the swarm's VXLAN data path port
    (the cluster object's ``DataPathPort``, UDP). A published port is DNATed on every node before
    the node's own sockets see the packet, so publishing these would cut the swarm apart."""
    out: dict[tuple[str, int], str] = {("tcp", CLUSTER_PORT): "the swarm's cluster port (managers' Raft, "
                                                                "dispatcher and CA)"}
    for n in nodes:
        ms = n.get("ManagerStatus")
        addr = str(ms.get("Addr") or "") if isinstance(ms, dict) else ""
        port = addr.rpartition(":")[2]
        if port.isdigit() and 0 < int(port) < 65536:
            out[("tcp", int(port))] = "a manager's cluster port (Raft, dispatcher and CA)"
    dp = DEFAULT_DATA_PATH_PORT
    for c in tx.list_shallow("cluster"):
        got = c.get("DataPathPort")
        if isinstance(got, int) and not isinstance(got, bool) and 0 < got < 65536:
            dp = got
    out[("udp", dp)] = "the swarm's VXLAN data path port"
    return out


def rebuild_allocator(tx: ReadTx, networks: Iterable[Obj], services: Iterable[Obj], tasks: Iterable[Obj],
                      nodes: Iterable[Obj]) -> Allocator:
    """An allocator holding exactly what the store (as ``tx`` sees it) holds, from the objects
    read in ``tx``: networks, services' VIPs and ports, nodes' load-balancer addresses, and the
    addresses of those ``tasks`` that still hold theirs (:func:`holds_addresses`); the cluster's
    default address pools; the nodes' own routes (:func:`node_routes`) and reserved ports
    (:func:`reserved_ports`). The allocator loop and the control API
    (``manager.controlapi.networks.store_allocator``) both rebuild it so."""
    nodes = list(nodes)
    return Allocator.from_objects(networks, services, [t for t in tasks if holds_addresses(t)],
                                  pools=_pools(tx), nodes=nodes, host_routes=node_routes(nodes),
                                  reserved_ports=reserved_ports(tx, nodes))


class NetworkAllocatorLoop:
    """The allocator loop over ``store``: after task, service or network changes (debounced by
    ``debounce`` s, default 0.02), allocates the waiting tasks (module docstring), at most
    ``max_tasks`` per transaction; ``await run()`` until cancelled."""

    def __init__(self, store: Store, debounce: float = 0.02, max_tasks: int = MAX_TASKS_PER_PASS) -> None:
        self.store = store
        self.debounce = debounce
        self.max_tasks = max_tasks
        self.passes = 0
        self._more = False
        self._waiting: set[str] | None = None
        """IDs of the tasks that may wait for addresses (kept from the store's events; None:
        not known yet, the next pass reads every task once)."""
        self._no_address: set[str] = set()
        """IDs of the nodes that got no load-balancer address for want of one: not a reason for a
        pass (which rebuilds the allocator from every task) until a network changes or a node is
        removed (1,000 nodes on a /24 ingress made every pass a rebuild)."""
        self._told: dict[str, str] = {}
        """Node ID → the last "no load-balancer address" reason logged for it (logged once, not
        on every pass: 745 nodes over the ingress subnet made ~80,000 lines in a minute)."""

    def observe(self, ev: Event) -> None:
        """Keep the IDs of the tasks that wait for addresses (:func:`needs_allocation`) from the
        store's events, so a pass finds them without reading every task."""
        if ev.table == "networks" or (ev.table == "nodes" and ev.action == "delete"):
            self._no_address.clear()  # addresses may have been freed (or a subnet changed): try again
        if ev.table != "tasks" or self._waiting is None:
            return
        tid = str(ev.obj["ID"])
        if ev.action != "delete" and needs_allocation(ev.obj):
            self._waiting.add(tid)
        else:
            self._waiting.discard(tid)

    def _waiting_tasks(self, tx: WriteTx) -> list[Obj]:
        if self._waiting is None:  # the first pass (or after a failed one): find them all
            self._waiting = {str(t["ID"]) for t in tx.list_shallow("tasks") if needs_allocation(t)}
        out = []
        for tid in list(self._waiting):
            t = tx.get_shallow("tasks", tid)
            if t is not None and needs_allocation(t):
                out.append(t)
            else:
                self._waiting.discard(tid)
        return out

    def _pass(self, tx: WriteTx) -> int:
        """One pass in ``tx``; returns how many tasks moved to pending. Reads every task only
        when there is something to allocate (to rebuild the allocator)."""
        self._more = False
        waiting = self._waiting_tasks(tx)
        networks = {str(n["ID"]): n for n in tx.list_shallow("networks")}
        nodes = tx.list_shallow("nodes")
        services = {str(s["ID"]): s for s in tx.list_shallow("services")}
        stale = [s for s in services.values() if endpoint_is_stale(s)]
        if not waiting and not stale and not nodes_needing_attachments(nodes, networks, self._no_address):
            return 0
        alloc = rebuild_allocator(tx, networks.values(), services.values(), tx.list_shallow("tasks"), nodes)
        for p in alloc.problems:
            log.warning("network allocator: %s", p)
        self._attach_nodes(tx, alloc, nodes, networks)
        for s in stale:
            self._reallocate_endpoint(tx, alloc, s, services)
        if not waiting:
            return 0
        waiting.sort(key=lambda t: (str(t.get("ServiceID", "")), int(t.get("Slot") or 0), str(t["ID"])))
        if len(waiting) > self.max_tasks:
            waiting, self._more = waiting[:self.max_tasks], True
        now = now_rfc3339()
        moved = 0
        budget = MAX_TRANSACTION_BYTES * 3 // 4
        for t in waiting:
            t = dict(t)
            try:
                got = alloc.allocate_task(t, services.get(str(t.get("ServiceID", ""))))
            except AllocatorError as e:
                msg = str(e)
                if (t.get("Status") or {}).get("Message") != msg:
                    t["Status"] = {**(t.get("Status") or {}), "Timestamp": now, "State": "new", "Message": msg}
                    tx.update("tasks", t)
                continue
            t["NetworksAttachments"] = [network_attachment(networks[nid], addr) for nid, addr in got.items()]
            t["Status"] = {"Timestamp": now, "State": "pending", "Message": "pending task scheduling"}
            tx.update("tasks", t)
            moved += 1
            budget -= 4096  # a stored network object per attachment: stay well inside one entry
            if budget <= 0:
                self._more = True
                break
        return moved

    def _attach_nodes(self, tx: WriteTx, alloc: Allocator, nodes: list[Obj], networks: dict[str, Obj]) -> None:
        """Give every node that is not down a load-balancer address on the ingress network
        (``Attachments``: ``[{"Network": <stored ingress network>, "Addresses": ["10.0.0.5/24"]}]``,
        :func:`node_attachments_wanted`); drop attachments to networks that are gone (the removed
        network's addresses went with it). A removed node's address is free once it is deleted."""
        ingress = alloc.ingress_network()
        for node in nodes:
            want = node_attachments_wanted(node, ingress, networks)
            if want is None:
                continue
            nid = str(node["ID"])
            atts = [a for a in _map_list(node.get("Attachments")) if _att_network(a) in networks]
            for net_id in want:
                try:
                    addr = alloc.allocate_address(net_id, f"node:{nid}")
                except AllocatorError as e:
                    self._no_address.add(nid)
                    if self._told.get(nid) != str(e):
                        self._told[nid] = str(e)
                        log.warning("network allocator: no load-balancer address for node %s: %s", nid, e)
                    continue
                self._told.pop(nid, None)
                atts.append(network_attachment(networks[net_id], addr))
            fresh = tx.get("nodes", nid)
            if fresh is None or fresh.get("Attachments", []) == atts:
                continue  # (nothing changed: no write, so no event to wake this loop again)
            fresh["Attachments"] = atts
            fresh.pop("Version", None)
            tx.update("nodes", fresh)

    def _reallocate_endpoint(self, tx: WriteTx, alloc: Allocator, service: Obj, services: dict[str, Obj]) -> None:
        """Re-allocate the ``Endpoint`` of a service whose spec changed without the control API
        (an automatic rollback puts ``PreviousSpec`` back): VIPs and ports as its spec says now."""
        try:
            endpoint = alloc.allocate_service(service)
        except AllocatorError as e:
            log.warning("network allocator: service %s: cannot allocate its endpoint: %s", service.get("ID"), e)
            return
        for key in ("Ports", "VirtualIPs"):
            if not endpoint.get(key):
                endpoint.pop(key, None)
        fresh = tx.get("services", str(service["ID"]))
        if fresh is None:
            return
        fresh["Endpoint"] = endpoint
        fresh.pop("Version", None)
        tx.update("services", fresh)
        services[str(service["ID"])] = fresh

    async def tick(self) -> int:
        """Run one pass now; returns how many tasks got their addresses. A pass that fails to
        commit leaves nothing behind: the next one rebuilds the allocator from the store."""
        self.passes += 1
        try:
            return await self.store.update(self._pass)
        except Exception:
            self._waiting = None  # find the waiting tasks again from the store
            raise

    async def run(self) -> None:
        """Watch tasks, services, networks and the cluster, and allocate until cancelled (see
        :func:`manager.loop.reconcile_loop`); a pass that left tasks for later runs again at once."""
        await reconcile_loop(self.store, ["tasks", "services", "networks", "cluster", "nodes"], self.tick,
                             self.debounce,
                             log, "network allocator", lambda: 0.0 if self._more else None, self.observe)
