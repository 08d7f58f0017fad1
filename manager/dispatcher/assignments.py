"""What the dispatcher pushes to a node: its assignment set, the overlay networks its tasks use
with their peers (:class:`TaskIndex`, :func:`node_networks`), the fingerprint that tells whether
the node must hear of a change, and the per-session outbox that writes pushes one at a time."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from manager.dispatcher.increments import SentState
from shoal.base.netaddr import ip_of, mac_from_ip
from shoal.base.taskstate import ASSIGNED, COMPLETE, REMOVE, RUNNING, state_order
from shoal.base.views import Node, Task
from shoal.rpc import wire

__all__ = ["OVERLAY", "PEER_DESIRED", "DNS_DESIRED", "Session", "TaskIndex", "assignment_set", "attachments", "dns_task_keys",
           "fingerprint", "ingress_port_keys", "manager_addr", "node_ingress", "node_lb_addresses", "node_network_ids",
           "node_networks",
           "peer_keys", "send_outbox", "service_dns_keys", "service_vips", "vtep"]

log = logging.getLogger("manager.dispatcher")

_VOLATILE = ("Status", "Version", "UpdatedAt")

OVERLAY = "overlay"
"""``DriverState.Name`` of the networks whose peers a node is sent."""

PEER_DESIRED = frozenset({"ready", "running", "complete"})
"""The ``DesiredState`` values of a task that is a peer (with ``Status.State`` assigned..running);
``complete`` is a job's task, on its networks while it runs as any other (Swarm)."""

DNS_DESIRED = frozenset({"running", "complete"})
"""The ``DesiredState`` values of a running task that answers DNS and backs its service's VIP and
ingress ports: a service's (``running``) or a job's (``complete``), as Swarm (libnetwork registers
every task container's service binding when it joins the network, whatever the service mode)."""


def assignment_set(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the tasks a node must know about, sorted by ID, from all tasks with its ``NodeID``.

    A task is included once the scheduler has assigned it (``Status.State`` ≥ ``assigned``) and
    until it is finished with nothing left to do: a task whose ``DesiredState`` is ``remove``
    and whose state is terminal drops out, which tells the worker to remove its container.
    Terminal tasks kept as history (desired ``shutdown``) stay in the set.
    """
    out = []
    for raw in tasks:
        t = Task(raw)
        st = state_order(t.status.get("State"))
        if st < ASSIGNED:
            continue
        if state_order(raw.get("DesiredState")) >= REMOVE and st >= COMPLETE:
            continue
        out.append(raw)
    out.sort(key=lambda t: str(t.get("ID")))
    return out


def manager_addr(node: dict[str, Any] | None) -> str | None:
    """``ManagerStatus.Addr`` of ``node`` (None for a worker or no node)."""
    return None if node is None else Node(node).manager_addr


def fingerprint(node: dict[str, Any], tasks: list[dict[str, Any]],
                networks: Mapping[str, Mapping[str, Any]] | None = None, extra: Any = None) -> bytes:
    """A 16-byte digest (BLAKE2b of the msgpack encoding) that changes iff something the worker acts on changed (not status/version/timestamps):
    the node, its assignment set and ``networks`` (:func:`node_networks`: a network's spec, driver
    state or IPAM, a peer appearing, leaving or moving, its DNS records; not a network's
    ``Version``/``UpdatedAt``), and ``extra`` (the rest of the push: ``ingress``, ``data_path_port``)."""
    n = {k: v for k, v in node.items() if k not in _VOLATILE + ("Description", "ManagerStatus")}
    # a demoted manager acts when the leader has taken it out of Raft (ManagerStatus removed)
    n["_raft_member"] = bool(node.get("ManagerStatus"))
    # tasks entering or leaving the set change the list, so they push even if nothing else changed
    ts = [{k: v for k, v in t.items() if k not in _VOLATILE} for t in tasks]
    nets = [[nid, {k: v for k, v in _map(e.get("Network")).items() if k not in _VOLATILE}, e.get("Peers"),
             e.get("DNS")]
            for nid, e in sorted((networks or {}).items())]
    # a digest, not the bytes: one per session, and a node's set may be thousands of tasks
    return hashlib.blake2b(msgpack.packb([n, ts, nets, extra], use_bin_type=True), digest_size=16).digest()


# -- overlay networks and their peers ----------------------------------------------------------

def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def attachments(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[(network ID, "a.b.c.d/len"), …]`` of ``task``'s ``NetworksAttachments``
    (``[{"Network": {"ID", …}, "Addresses": ["10.0.1.5/24"]}]``): one per attachment with a
    network ID, its first address ("" when it has none). Malformed entries are skipped."""
    out = []
    raw = task.get("NetworksAttachments")
    for a in raw if isinstance(raw, list) else ():
        a = _map(a)
        nid = _map(a.get("Network")).get("ID")
        if not isinstance(nid, str) or not nid:
            continue
        addrs = a.get("Addresses")
        first = addrs[0] if isinstance(addrs, list) and addrs and isinstance(addrs[0], str) else ""
        out.append((nid, first))
    return out


def _is_peer(task: Mapping[str, Any]) -> bool:
    """A task whose container is (or is about to be) on its networks: ``Status.State`` between
    ``assigned`` and ``running`` and ``DesiredState`` in :data:`PEER_DESIRED`."""
    st = state_order(_map(task.get("Status")).get("State"))
    return ASSIGNED <= st <= RUNNING and task.get("DesiredState") in PEER_DESIRED


def peer_keys(task: Mapping[str, Any] | None) -> set[tuple[str, str, str]]:
    """``{(network ID, node ID, address)}`` that ``task`` (None: none) adds to peer lists: empty
    unless it is a peer (:func:`_is_peer`) with a ``NodeID``. The dispatcher compares a task's
    keys before and after a change to tell which networks' users must be told."""
    if not task or not _is_peer(task):
        return set()
    node_id = task.get("NodeID")
    if not isinstance(node_id, str) or not node_id:
        return set()
    return {(nid, node_id, addr) for nid, addr in attachments(task) if addr}


def vtep(node: Mapping[str, Any] | None) -> str | None:
    """The data path address of ``node`` (``Status.Addr``), or None when the node is missing,
    ``down`` or has no address: its tasks are then nobody's peers."""
    status = _map((node or {}).get("Status"))
    addr = status.get("Addr")
    if status.get("State") == "down" or not isinstance(addr, str) or not addr:
        return None
    return addr


def dns_task_keys(task: Mapping[str, Any] | None) -> set[tuple[str, str, int | str, str, str, str | None]]:
    """``{(network ID, service ID, slot, task ID, "a.b.c.d/len", hostname)}``: the DNS records
    ``task`` (None: none) adds, one per network it has an address on, when its ``Status.State``
    is ``running`` and its ``DesiredState`` is in :data:`DNS_DESIRED` (``running``, or ``complete``
    for a job's task) and it has a ``ServiceID``; else empty. ``slot``:
    its ``Slot``, or its ``NodeID`` when it has none (a global service's or global job's task;
    slot 0 of a replicated job, named ``<service>.0.<id>``, is a slot); ``hostname``:
    ``Spec.ContainerSpec.Hostname`` or None. Compared before and after a change, like
    :func:`peer_keys`."""
    if not task or task.get("DesiredState") not in DNS_DESIRED or _map(task.get("Status")).get("State") != "running":
        return set()
    sid, tid = task.get("ServiceID"), task.get("ID")
    if not isinstance(sid, str) or not sid or not isinstance(tid, str):
        return set()
    raw_slot = task.get("Slot")
    name = task.get("Name")
    slot: int | str
    if isinstance(raw_slot, int) and not isinstance(raw_slot, bool) and (
            raw_slot > 0 or (raw_slot == 0 and isinstance(name, str) and name.split(".")[1:2] == ["0"])):
        slot = raw_slot  # (a replicated job's slots start at 0: its task is named <service>.0.<id>)
    else:
        slot = str(task.get("NodeID") or "")
    hn = _map(_map(task.get("Spec")).get("ContainerSpec")).get("Hostname")
    hostname = hn if isinstance(hn, str) and hn else None
    return {(nid, sid, slot, tid, addr, hostname) for nid, addr in attachments(task) if addr}


def service_vips(service: Mapping[str, Any] | None) -> dict[str, str]:
    """``{network ID: "10.0.1.2"}``: the VIPs (without their prefix) of ``service``'s
    ``Endpoint.VirtualIPs``; empty for endpoint mode ``dnsrr`` or no service."""
    if not service:
        return {}
    ep = _map(service.get("Endpoint"))
    if _map(ep.get("Spec")).get("Mode") == "dnsrr":
        return {}
    out = {}
    raw = ep.get("VirtualIPs")
    for v in raw if isinstance(raw, list) else ():
        v = _map(v)
        nid, addr = v.get("NetworkID"), v.get("Addr")
        if isinstance(nid, str) and isinstance(addr, str):
            try:
                out[nid] = ip_of(addr)
            except ValueError:
                continue
    return out


def service_dns_keys(service: Mapping[str, Any] | None) -> set[tuple[str, str, tuple[str, ...], str | None]]:
    """``{(network ID, service name, (alias, …), VIP or None)}`` of ``service`` (None: none): one
    per ``Spec.TaskTemplate.Networks`` entry with a ``Target`` (the network ID as stored), with
    that entry's ``Aliases`` and the service's VIP on it (:func:`service_vips`; None for dnsrr or
    none allocated). The dispatcher compares them before and after a service change."""
    if not service:
        return set()
    spec = _map(service.get("Spec"))
    name = spec.get("Name")
    if not isinstance(name, str) or not name:
        return set()
    vips = service_vips(service)
    raw = _map(spec.get("TaskTemplate")).get("Networks")
    out = set()
    for n in raw if isinstance(raw, list) else ():
        n = _map(n)
        target = n.get("Target")
        if not isinstance(target, str) or not target:
            continue
        al = n.get("Aliases")
        aliases = tuple(a for a in al if isinstance(a, str)) if isinstance(al, list) else ()
        out.add((target, name, aliases, vips.get(target)))
    return out


def ingress_port_keys(service: Mapping[str, Any] | None) -> set[tuple[str, str, str, int, int]]:
    """``{(service ID, service name, protocol, published port, target port)}`` of the ingress-mode
    ports in ``service``'s ``Endpoint.Ports`` (what the allocator gave it; None: none). Compared
    before and after a service change: a difference concerns every node of the routing mesh."""
    if not service:
        return set()
    sid = service.get("ID")
    name = _map(service.get("Spec")).get("Name")
    if not isinstance(sid, str) or not isinstance(name, str):
        return set()
    out = set()
    raw = _map(service.get("Endpoint")).get("Ports")
    for p in raw if isinstance(raw, list) else ():
        p = _map(p)
        if str(p.get("PublishMode") or "ingress") != "ingress":
            continue
        pub, tgt = p.get("PublishedPort"), p.get("TargetPort")
        if isinstance(pub, int) and isinstance(tgt, int) and pub > 0:
            out.add((sid, name, str(p.get("Protocol") or "tcp"), pub, tgt))
    return out


def node_lb_addresses(node: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """``{(network ID, "a.b.c.d/len")}``: the load-balancer addresses in ``node``'s
    ``Attachments`` (contract §3; None: none)."""
    out = set()
    raw = (node or {}).get("Attachments")
    for a in raw if isinstance(raw, list) else ():
        a = _map(a)
        nid = _map(a.get("Network")).get("ID")
        addrs = a.get("Addresses")
        if isinstance(nid, str) and nid and isinstance(addrs, list) and addrs and isinstance(addrs[0], str):
            out.add((nid, addrs[0]))
    return out


def _dns(nid: str, index: TaskIndex) -> dict[str, Any]:
    """The ``DNS`` part of network ``nid``'s entry: its services (with their VIP on it, None for
    dnsrr) and running tasks, sorted. Empty for the ingress network (no names there, as in Docker)."""
    if nid == index.ingress_id:
        return {"Services": [], "Tasks": []}
    services = sorted(set(index.services.get(nid, ())), key=lambda s: (s[0], s[1], s[2] or ""))
    tasks = []
    for sid, slot, tid, addr, hostname in index.dns_records(nid):
        name = index.service_names.get(sid)
        if name is None:
            continue  # its service is gone: no name to answer
        try:
            ip = ip_of(addr)
        except ValueError:
            continue
        tasks.append({"Service": name, "Slot": slot, "ID": tid, "IP": ip, "Hostname": hostname})
    # ints before node IDs when a service has both (never in practice)
    tasks.sort(key=lambda t: (t["Service"], isinstance(t["Slot"], str), t["Slot"], t["ID"]))
    return {"Services": [{"Name": n, "Aliases": list(a), "VIP": v} for n, a, v in services], "Tasks": tasks}


class TaskIndex:
    """The tasks table indexed for the dispatcher's pushes, kept up to date one task at a time
    (:meth:`set_task`, fed by the store's events: O(1) per change, never a scan of every task per
    push) plus the small tables read again before each flush (:meth:`refresh`: services and nodes).
    ``tasks`` given to the constructor are indexed at once (a leader's start, or a test). Tasks
    are kept as given and only read (the store's own objects: it never changes one in place).

    - ``by_node``: node ID → {task ID: task} of the tasks with that ``NodeID`` (:meth:`tasks_of`,
      the input of :func:`assignment_set`);
    - ``peers``: network ID → {task ID: (node ID, "a.b.c.d/len")} of the tasks that are peers on
      it (:func:`peer_keys`);
    - ``dns_tasks``: network ID → {task ID: (service ID, slot, task ID, "a.b.c.d/len", hostname)}
      of the running tasks on it (:func:`dns_task_keys`); those of nodes ``down`` (``down``,
      from the last refresh) are left out where they are read (:meth:`dns_records`);
    - ``services``: network ID → ``[(service name, (alias, …), VIP or None)]`` of the services
      whose ``TaskTemplate.Networks`` target it, and ``service_names``: service ID → name
      (:func:`service_dns_keys`); ``ingress_ports``: the ingress-mode published ports of every
      service (:func:`ingress_port_keys`), sorted; ``lb``: network ID → ``[(node ID,
      "a.b.c.d/len")]`` of the nodes' load-balancer addresses (:func:`node_lb_addresses`);
      ``ingress_id``: the ID of the ingress network (None: none). These come from
      :meth:`refresh` (O(S + N)), which also drops the per-flush caches.

    A node's peer list, DNS records and ingress ports are then O(tasks and services of its
    networks), built once per network and flush however many nodes are pushed.
    """

    def __init__(self, tasks: Iterable[dict[str, Any]] = (), services: Iterable[dict[str, Any]] = (),
                 nodes: Iterable[dict[str, Any]] = (), ingress_id: str | None = None) -> None:
        self._tasks: dict[str, dict[str, Any]] = {}
        self._node_of: dict[str, str] = {}
        self.by_node: dict[str, dict[str, dict[str, Any]]] = {}
        self.peers: dict[str, dict[str, tuple[str, str]]] = {}
        self.dns_tasks: dict[str, dict[str, tuple[str, int | str, str, str, str | None]]] = {}
        self._peer_lists: dict[str, list[tuple[str, tuple[str, str, str], dict[str, str]]]] = {}
        self._ingress_endpoints: dict[str, list[str]] | None = None
        self._dns_cache: dict[str, dict[str, Any]] = {}
        self._net_digests: dict[str, bytes] = {}
        for t in tasks:
            tid = t.get("ID")
            if isinstance(tid, str):
                self.set_task(tid, t)
        self.refresh(services, nodes, ingress_id)

    def set_task(self, tid: str, task: dict[str, Any] | None) -> None:
        """Index ``task`` as the current version of task ``tid`` (None: it was deleted),
        replacing whatever was indexed for ``tid`` before. O(networks of the task)."""
        prev = self._tasks.pop(tid, None)
        if prev is not None:
            node_id = self._node_of.pop(tid, None)
            if node_id is not None:
                mine = self.by_node.get(node_id)
                if mine is not None:
                    mine.pop(tid, None)
                    if not mine:
                        del self.by_node[node_id]
            for nid, *_ in peer_keys(prev):
                self._drop(self.peers, nid, tid)
                self._peer_lists.pop(nid, None)
                self._net_digests.pop(nid, None)
            for key in dns_task_keys(prev):
                self._drop(self.dns_tasks, key[0], tid)
                self._ingress_endpoints = None
                self._dns_cache.pop(key[0], None)
                self._net_digests.pop(key[0], None)
        if task is None:
            return
        self._tasks[tid] = task
        node_id = task.get("NodeID")
        if isinstance(node_id, str) and node_id:
            self._node_of[tid] = node_id
            self.by_node.setdefault(node_id, {})[tid] = task
        for nid, nd, addr in peer_keys(task):
            self.peers.setdefault(nid, {})[tid] = (nd, addr)
            self._peer_lists.pop(nid, None)
            self._net_digests.pop(nid, None)
        for nid, sid, slot, _tid, addr, hostname in dns_task_keys(task):
            self.dns_tasks.setdefault(nid, {})[tid] = (sid, slot, tid, addr, hostname)
            self._ingress_endpoints = None
            self._dns_cache.pop(nid, None)
            self._net_digests.pop(nid, None)

    @staticmethod
    def _drop(table: dict[str, dict[str, Any]], nid: str, tid: str) -> None:
        entries = table.get(nid)
        if entries is not None:
            entries.pop(tid, None)
            if not entries:
                del table[nid]

    def tasks_of(self, node_id: str) -> list[dict[str, Any]]:
        """The tasks whose ``NodeID`` is ``node_id`` (any order)."""
        return list(self.by_node.get(node_id, {}).values())

    def refresh(self, services: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]],
                ingress_id: str | None) -> None:
        """Re-read the services and nodes (all of them, only read) and the ingress network's ID,
        and drop the per-flush caches (peer lists, ingress endpoints)."""
        self.ingress_id = ingress_id
        self.lb: dict[str, list[tuple[str, str]]] = {}
        self.ingress_ports: list[tuple[str, str, str, int, int]] = []
        self._ingress_endpoints = None
        self._peer_lists = {}
        self._dns_cache = {}
        self._net_digests = {}
        self.services: dict[str, list[tuple[str, tuple[str, ...], str | None]]] = {}
        self.service_names: dict[str, str] = {}
        nodes = list(nodes)
        # a down node's tasks may still run (parked, manager.orchestrator.slots) but answer no name
        self.down = {n.get("ID") for n in nodes if _map(n.get("Status")).get("State") == "down"}
        for svc in services:
            for nid, name, aliases, vip in service_dns_keys(svc):
                self.services.setdefault(nid, []).append((name, aliases, vip))
            svc_id, svc_name = svc.get("ID"), _map(svc.get("Spec")).get("Name")
            if isinstance(svc_id, str) and isinstance(svc_name, str) and svc_name:
                self.service_names[svc_id] = svc_name
            self.ingress_ports.extend(ingress_port_keys(svc))
        self.ingress_ports.sort(key=lambda p: (p[2], p[3], p[0]))
        for node in nodes:
            node_id = node.get("ID")
            if isinstance(node_id, str):
                for nid, addr in node_lb_addresses(node):
                    self.lb.setdefault(nid, []).append((node_id, addr))

    def dns_of(self, nid: str) -> dict[str, Any]:
        """The ``DNS`` part of network ``nid``'s entry (:func:`node_networks`), the same for every
        node: built once per network and flush (shared between the pushes, only read)."""
        got = self._dns_cache.get(nid)
        if got is None:
            got = self._dns_cache[nid] = _dns(nid, self)
        return got

    def network_digest(self, nid: str, net: Mapping[str, Any], node_vtep: Callable[[str], str | None]) -> bytes:
        """A 16-byte digest of what network ``nid``'s entry holds for any node: the stored
        network (without ``Version``/``UpdatedAt``), all its peers, its DNS part. A node's own
        entry is that minus its own peers, so this digest and the node's ID decide whether the
        node must be sent the entry again; computed once per network and flush."""
        got = self._net_digests.get(nid)
        if got is None:
            full = self._peer_lists.get(nid)
            if full is None:
                full = self._peer_lists[nid] = _all_peers(nid, self, node_vtep)
            data = msgpack.packb([{k: v for k, v in net.items() if k not in _VOLATILE},
                                  [(other, key) for other, key, _entry in full], self.dns_of(nid)], use_bin_type=True)
            got = self._net_digests[nid] = hashlib.blake2b(data, digest_size=16).digest()
        return got

    def dns_records(self, nid: str) -> list[tuple[str, int | str, str, str, str | None]]:
        """``[(service ID, slot, task ID, "a.b.c.d/len", hostname)]`` of network ``nid``'s running
        tasks, but those of down nodes (their peer entries are dropped by :func:`node_networks`:
        the node has no VTEP)."""
        entries = self.dns_tasks.get(nid)
        if not entries:
            return []
        down = self.down
        if not down:
            return list(entries.values())
        return [e for tid, e in entries.items() if self._node_of.get(tid) not in down]

    def peers_of(self, nid: str, node_id: str, node_vtep: Callable[[str], str | None]) -> list[dict[str, str]]:
        """The ``Peers`` of network ``nid`` for node ``node_id`` (:func:`node_networks`): the
        entries of the other nodes, each ``(IP, MAC, VTEP)`` once, sorted by IP then VTEP.

        The network's whole sorted list is built once per index (``node_vtep`` must answer the
        same for the index's lifetime, as a flush's cache does), so a flush that pushes to every
        node of a network of N peers parses and sorts N addresses, not N × N; the entry dicts are
        shared between the nodes' pushes (read only)."""
        full = self._peer_lists.get(nid)
        if full is None:
            full = self._peer_lists[nid] = _all_peers(nid, self, node_vtep)
        out: list[dict[str, str]] = []
        seen: set[tuple[str, str, str]] = set()
        for other, key, entry in full:
            if other != node_id and key not in seen:
                seen.add(key)
                out.append(entry)
        return out

    def ingress_endpoints(self) -> dict[str, list[str]]:
        """Service ID → the sorted ingress-network IPs of its running tasks (any node); computed
        once per index."""
        if self._ingress_endpoints is None:
            eps: dict[str, list[str]] = {}
            for sid, _slot, _tid, addr, _hn in self.dns_records(self.ingress_id or ""):
                try:
                    eps.setdefault(sid, []).append(ip_of(addr))
                except ValueError:
                    continue
            for ips in eps.values():
                ips.sort(key=ipaddress.ip_address)
            self._ingress_endpoints = eps
        return self._ingress_endpoints


def node_networks(node_id: str, tasks: list[dict[str, Any]], index: TaskIndex,
                  network: Callable[[str], dict[str, Any] | None],
                  node_vtep: Callable[[str], str | None],
                  node: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The ``networks`` part of node ``node_id``'s assignments::

        {network_id: {"Network": <stored network>,
                      "Peers": [{"IP": "10.0.1.7", "MAC": "02:42:0a:00:01:07", "VTEP": "10.99.0.12"}, …]}}

    for every overlay network (stored, ``DriverState.Name`` ``overlay``) that a task of ``tasks``
    (the node's assignment set) is attached to while not terminal (``Status.State`` <
    ``complete``). Peers: the tasks of ``index.peers`` on *other* nodes, with the IP without its
    prefix, the MAC :func:`~shoal.base.netaddr.mac_from_ip` of it and the VTEP ``node_vtep(node)``
    (tasks of nodes for which it is None, and addresses that are not IPv4, are left out), sorted
    by IP. ``network(id)``: the stored network or None; ``{}`` when no task uses an overlay network.

    Each entry also has ``"DNS": {"Services": [{"Name", "Aliases", "VIP": None}], "Tasks":
    [{"Service", "Slot", "ID", "IP", "Hostname"}]}``: the services of ``index.services`` on the
    network (sorted by name) and its running tasks on *any* node, this one included
    (``index.dns_tasks``, whose service is known; sorted by service, slot, ID). ``VIP``: the
    service's VIP on the network (without prefix), None for dnsrr.

    The ingress network (``index.ingress_id``) is listed too when ``node`` (the node's object) has
    a load-balancer address on it (``Attachments``), whatever its tasks; its peers include the
    other nodes' load-balancer addresses (``index.lb``, VTEP: that node's), and its ``DNS`` is empty.
    """
    out: dict[str, dict[str, Any]] = {}
    for nid, net in node_network_ids(tasks, index, network, node):
        out[nid] = {"Network": net, "Peers": index.peers_of(nid, node_id, node_vtep), "DNS": index.dns_of(nid)}
    return out


def node_network_ids(tasks: list[dict[str, Any]], index: TaskIndex,
                     network: Callable[[str], dict[str, Any] | None],
                     node: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``[(network ID, stored network)]``, sorted by ID, of the entries :func:`node_networks`
    makes for a node with assignment set ``tasks`` and object ``node`` (without building them)."""
    used: set[str] = set()
    for t in tasks:
        if state_order(_map(t.get("Status")).get("State")) < COMPLETE:
            used.update(nid for nid, _ in attachments(t))
    if index.ingress_id and any(nid == index.ingress_id for nid, _ in node_lb_addresses(node)):
        used.add(index.ingress_id)
    out = []
    for nid in sorted(used):
        net = network(nid)
        if net is not None and _map(net.get("DriverState")).get("Name") == OVERLAY:
            out.append((nid, net))
    return out


def _all_peers(nid: str, index: TaskIndex, node_vtep: Callable[[str], str | None]
               ) -> list[tuple[str, tuple[str, str, str], dict[str, str]]]:
    """Every peer entry of network ``nid`` as ``(node ID, (ip, mac, vtep), {"IP", "MAC", "VTEP"})``,
    sorted by IP then VTEP (entries of nodes whose VTEP is None and bad addresses left out)."""
    entries: list[tuple[str, tuple[str, str, str], dict[str, str]]] = []
    for other, addr in itertools.chain(index.peers.get(nid, {}).values(), index.lb.get(nid, ())):
        v = node_vtep(other)
        if v is None:
            continue
        try:
            ip, mac = ip_of(addr), mac_from_ip(addr)
        except ValueError:
            log.warning("network %s: task on node %s has a bad address %r; left out of the peers",
                        nid, other, addr)
            continue
        entries.append((other, (ip, mac, v), {"IP": ip, "MAC": mac, "VTEP": v}))
    entries.sort(key=lambda e: (ipaddress.ip_address(e[1][0]), e[1][2]))
    return entries


def node_ingress(node: Mapping[str, Any] | None, index: TaskIndex) -> dict[str, Any] | None:
    """The ``ingress`` part of a node's assignments (contract §4), or None when there is no
    ingress network or ``node`` has no load-balancer address on it::

        {"NetworkID": nid, "Address": "10.0.0.5/24",          # the node's own address on it
         "Ports": [{"ServiceID", "Service", "Protocol", "PublishedPort", "TargetPort",
                    "Endpoints": ["10.0.0.7", …]}]}          # running tasks' ingress IPs, sorted

    Every ingress-mode published port of every service is listed, with no endpoints too (the node
    then rejects connections to it rather than leaving them hanging); sorted by protocol, port."""
    nid = index.ingress_id
    if not nid:
        return None
    addr = next((a for n, a in sorted(node_lb_addresses(node)) if n == nid), None)
    if addr is None:
        return None
    eps = index.ingress_endpoints()
    ports = [{"ServiceID": sid, "Service": name, "Protocol": proto, "PublishedPort": pub, "TargetPort": tgt,
              "Endpoints": list(eps.get(sid, ()))}
             for sid, name, proto, pub, tgt in index.ingress_ports]
    return {"NetworkID": nid, "Address": addr, "Ports": ports}


@dataclass
class Session:
    """One node's session: its ID, its connection (None once lost), what it was sent, and what
    waits to be written (:func:`send_outbox`)."""

    node_id: str
    session_id: str
    peer: wire.Peer | None
    sent: SentState | None = None
    """What this connection was sent (:mod:`.increments`; None: nothing yet, the next push is
    complete)."""
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Push type → the body not yet written (a newer one is merged in: :func:`merge_pushes`)."""
    sender: asyncio.Task[None] | None = None


async def send_outbox(s: Session) -> None:
    """Write ``s.outbox`` to the session's connection, oldest type first, until it is empty; on
    a lost connection or a write error drop what is left (and ``sent``, so the next
    connection gets everything again)."""
    while s.outbox:
        peer = s.peer
        if peer is None:
            s.outbox.clear()
            s.sent = None
            return
        type = next(iter(s.outbox))
        body = s.outbox.pop(type)
        try:
            await peer.send(type, body)
        except wire.WireError as e:
            s.outbox.clear()
            s.sent = None  # resend everything to the next connection
            log.info("could not push %s to node %s: %s", type, s.node_id, e)
            return
