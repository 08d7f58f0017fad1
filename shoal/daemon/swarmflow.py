"""The swarm membership flows of a daemon: ``swarm init``, ``swarm join`` and ``swarm leave``
(and the leave a manager imposes: :func:`removed_from_swarm`).

Each flow moves the node between "not in a swarm" and a role, through the role start/stop of
:class:`shoal.daemon.daemon.Daemon` (``start_manager_role``, ``start_worker_role``, ``stop_roles``).
``state.json`` is written only once the node is in (its manager serving and, on a join, a Raft
member): a flow that fails removes what it left under the data root (``certs/``, ``manager/``), so
the node is still not in a swarm. The callers (the API handlers) hold ``Daemon._swarm_lock``.

Errors, as the API answers them: ``ValueError`` (HTTP 400) for bad input and a busy listen
address, :class:`shoal.daemon.errors.SwarmStateError` (503) when the node's swarm state does not
allow the flow or a join is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import shutil
import socket
from pathlib import Path
from typing import Any, Protocol

from manager.manager import Manager, initial_swarm_spec, network_config
from manager.membership import lost_manager
from overlaynet.bridge import LocalBridge
from shoal.daemon import listenaddr
from shoal.daemon.errors import SwarmStateError
from shoal.daemon.request import body_bool, body_str, body_str_list, json_type
from shoal.daemon.state import LocalState
from shoal.daemon.sysinfo import node_description
from worker.executor import Executor
from worker.join import JoinError, join

__all__ = ["ALREADY_IN_SWARM", "Daemon", "discard_swarm_files", "route_source_addr", "swarm_init",
           "removed_from_swarm", "swarm_join", "swarm_leave"]


class Daemon(Protocol):
    """What the flows use of :class:`shoal.daemon.daemon.Daemon` (that class satisfies it)."""

    args: argparse.Namespace
    data_root: Path
    certs_dir: Path
    hostname: str
    engine_labels: dict[str, str]
    state: LocalState
    bridge: LocalBridge
    executor: Executor
    manager: Any

    async def start_manager_role(self, force_new_cluster: bool = False,
                                 state: dict[str, Any] | None = None) -> None: ...

    async def start_worker_role(self) -> None: ...

    async def stop_roles(self, leaving: bool = False) -> None: ...

log = logging.getLogger("shoald")

REMOVED_MESSAGE = ("this node was removed from the swarm by a manager: it left the swarm (its tasks "
                   "were stopped and removed); it can join again with a join token (docker swarm join)")
"""The one line a daemon logs when a manager refused its node as removed (``node rm``)."""

ALREADY_IN_SWARM = ("This node is already part of a swarm. Use \"docker swarm leave\" to leave this "
                    "swarm and join another one.")


def discard_swarm_files(daemon: Daemon) -> None:
    """Remove ``certs/`` and ``manager/`` of a swarm this node is not in (what an init or
    join that failed, or was interrupted before ``state.json`` was written, left behind)."""
    for d in (daemon.certs_dir, daemon.data_root / "manager"):
        if d.exists():
            log.warning("removing %s: left by a swarm init/join that did not finish", d)
            shutil.rmtree(d, ignore_errors=True)


async def _addresses(daemon: Daemon, body: dict[str, Any]) -> tuple[str, str, list[listenaddr.Interface]]:
    """``(listen "ip:port", advertise "ip:port" or "", interfaces)`` for an init/join
    request, by Docker's rules (:mod:`shoal.daemon.listenaddr`); the advertised address is left
    empty when the request gives none and the listen address is ``0.0.0.0`` (the caller
    picks). Raises :class:`shoal.daemon.listenaddr.AddrError` (a ``ValueError``: HTTP 400)."""
    ifaces = await listenaddr.local_interfaces()
    lhost, lport = listenaddr.resolve_listen_addr(body_str(body, "ListenAddr"), daemon.args.port, ifaces)
    adv = body_str(body, "AdvertiseAddr")
    if not adv and lhost == "0.0.0.0":
        return f"{lhost}:{lport}", "", ifaces
    ahost, aport = listenaddr.resolve_advertise_addr(adv, lhost, lport, ifaces)
    return f"{lhost}:{lport}", f"{ahost}:{aport}", ifaces


async def swarm_init(daemon: Daemon, body: dict[str, Any]) -> str:
    """``POST /swarm/init`` (``InitRequest`` body): become the first manager of a new cluster, or
    with ``ForceNewCluster`` on a manager, the only member of its cluster. Returns the node ID.
    ``DefaultAddrPool`` (CIDRs), ``SubnetSize`` and ``DataPathPort`` are checked
    (:func:`manager.clusterconfig.network_config`: a bad one is a 400 naming it) and stored on the
    cluster object; the ``ingress`` network is created with the cluster.

    ``state.json`` is written only once the manager serves: if anything fails before (a bad
    address, the cluster port in use, a bad spec), ``certs/`` and ``manager/`` are removed
    again and the node is still not in a swarm. Raises ``ValueError`` (HTTP 400) for bad
    input and a busy listen address, :class:`SwarmStateError` (503) in a swarm already."""

    state = daemon.state
    force = body_bool(body, "ForceNewCluster")
    if state.in_swarm and force and state.data.get("Role") == "manager":
        # recover from a permanent loss of quorum: keep the state, become the only member
        await daemon.stop_roles()
        await daemon.start_manager_role(force_new_cluster=True)
        await daemon.start_worker_role()
        return str(state.data["NodeID"])
    if state.in_swarm:
        raise SwarmStateError(ALREADY_IN_SWARM)
    if force:
        raise ValueError("--force-new-cluster recovers a swarm this node is a manager of; this "
                         "node is not part of a swarm (use `swarm init` without it)")
    spec = body.get("Spec")
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(f"json: cannot unmarshal {json_type(spec)} into Go struct field InitRequest.Spec "
                         "of type swarm.Spec")
    initial_swarm_spec(spec or {})  # a bad spec is refused before anything is bound or written
    net_config = network_config(body.get("DefaultAddrPool"), body.get("SubnetSize"), body.get("DataPathPort"))
    listen, advertise, ifaces = await _addresses(daemon, body)
    if not advertise:
        ip = listenaddr.system_addr(ifaces, exclude=[daemon.bridge.name])
        advertise = f"{ip}:{listen.rsplit(':', 1)[1]}"
    lhost, lport = listenaddr.split_host_port(listen, daemon.args.port, "--listen-addr")
    listenaddr.check_listen_free(lhost, lport)
    discard_swarm_files(daemon)
    try:
        node_id = await Manager.init_cluster(
            data_dir=daemon.data_root / "manager", certs_dir=daemon.certs_dir,
            advertise_addr=advertise, description=node_description(daemon.hostname, daemon.engine_labels),
            spec=spec or {}, heartbeat_period=daemon.args.heartbeat_period, net_config=net_config,
        )
        data = {"NodeID": node_id, "Role": "manager", "ManagerAddrs": [advertise],
                "AdvertiseAddr": advertise, "ListenAddr": listen}
        await daemon.start_manager_role(state=data)
        state.save(data)
    except BaseException as e:
        if daemon.manager is not None:
            with contextlib.suppress(Exception):
                await daemon.manager.stop()
            daemon.manager = None
        state.clear()
        discard_swarm_files(daemon)
        if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise ValueError(listenaddr.listen_error(lhost, lport, e)) from e
        raise
    await daemon.start_worker_role()
    return node_id


async def swarm_join(daemon: Daemon, body: dict[str, Any]) -> None:
    """``POST /swarm/join`` (``JoinRequest`` body): join with a token; a manager token makes this
    node a manager.

    ``state.json`` is written only once this node is in: for a manager, once its manager
    serves and is a Raft member. When the listen address is busy the join says so to the
    manager, which refuses a manager token then (a worker does not listen). Raises
    ``ValueError`` (400) for bad input, :class:`SwarmStateError` (503) when the join fails."""

    state = daemon.state
    if state.in_swarm:
        raise SwarmStateError(ALREADY_IN_SWARM)
    remotes = body_str_list(body, "RemoteAddrs", "JoinRequest")
    token = body_str(body, "JoinToken")
    if not remotes:
        raise ValueError("at least 1 RemoteAddr is required to join")
    if not token:
        raise ValueError("a join token is required to join a swarm (--token)")
    remote = remotes[0] if ":" in remotes[0] else f"{remotes[0]}:2377"
    listen, advertise, _ = await _addresses(daemon, body)
    lhost, lport = listenaddr.split_host_port(listen, daemon.args.port, "--listen-addr")
    if not advertise:
        # as Docker lets the manager see the joining node's address: the source address of
        # this host's route to the manager
        src = route_source_addr(remote.rsplit(":", 1)[0])
        advertise = f"{src}:{lport}" if src else ""
    busy: str | None = None
    try:
        listenaddr.check_listen_free(lhost, lport)
    except listenaddr.AddrError as e:
        busy = str(e)
    discard_swarm_files(daemon)
    try:
        node_id, role, managers = await join(
            remote, token, daemon.hostname, advertise.rsplit(":", 1)[0], daemon.certs_dir,
            description=node_description(daemon.hostname, daemon.engine_labels), cannot_manage=busy or "")
    except JoinError as e:
        discard_swarm_files(daemon)
        if busy and busy in str(e):
            raise ValueError(f"{busy} (the join token is a manager token: a manager serves the cluster "
                             "port there)") from e
        raise SwarmStateError(str(e)) from e
    data = {"NodeID": node_id, "Role": role, "ManagerAddrs": managers or [remote],
            "AdvertiseAddr": advertise, "ListenAddr": listen}
    if role == "manager":
        try:
            await daemon.start_manager_role(state=data)
            await daemon.manager.join_raft(list(dict.fromkeys([remote, *(managers or [])])))
        except (OSError, RuntimeError) as e:
            await daemon.stop_roles()
            discard_swarm_files(daemon)
            if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise ValueError(listenaddr.listen_error(lhost, lport, e)) from e
            raise SwarmStateError(f"joined as a manager but could not become a Raft member: {e}") from e
    state.save(data)
    await daemon.start_worker_role()


async def swarm_leave(daemon: Daemon, force: bool) -> None:
    """``POST /swarm/leave``: stop the roles, stop and remove this node's tasks, forget the swarm.
    Returns once the tasks are gone and their overlay namespaces removed (bounded: the tasks'
    longest stop grace period + 15 s; see ``Daemon.stop_roles``), so an init or join right after
    can reuse the VXLAN VNIs (4096 for ``ingress``). Raises
    :class:`SwarmStateError` (503) outside a swarm, and on a manager without ``force`` (with
    what leaving would do to the cluster's quorum)."""
    state = daemon.state
    if not state.in_swarm:
        raise SwarmStateError("This node is not part of a swarm")
    if state.data.get("Role") == "manager" and not force:
        raise SwarmStateError(leave_refusal(daemon.manager))
    if daemon.manager is not None:
        try:
            await daemon.manager.leave_raft()
        except Exception as e:  # forced: leave anyway
            log.warning("could not leave the Raft cluster cleanly: %s", e)
    await _leave_locally(daemon)


async def removed_from_swarm(daemon: Daemon, reason: str) -> None:
    """A manager refused this node's session as removed from the swarm (``node rm`` while it was
    down; ``reason``: the manager's words). Leave locally as ``swarm leave --force`` does: the roles
    stopped, the tasks stopped and removed, the swarm forgotten (``/info`` then shows
    ``LocalNodeState`` "inactive"), and log :data:`REMOVED_MESSAGE` once. Nothing when the node is
    no longer in a swarm. The caller holds ``Daemon._swarm_lock``."""
    if not daemon.state.in_swarm:
        return
    log.debug("removal: %s", reason)
    await _leave_locally(daemon)
    log.warning("%s", REMOVED_MESSAGE)


async def _leave_locally(daemon: Daemon) -> None:
    """Stop the roles, drop every task, its networks and the mesh, forget the swarm."""
    await daemon.stop_roles(leaving=True)
    daemon.state.clear()
    shutil.rmtree(daemon.certs_dir, ignore_errors=True)
    shutil.rmtree(daemon.data_root / "manager", ignore_errors=True)


def route_source_addr(dest: str) -> str | None:
    """The source address the kernel would use to reach ``dest`` (a UDP connect, no packet sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((dest, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _manager_counts(manager: Manager) -> tuple[int, int]:
    """``(reachable, unreachable)`` managers now, as ``node ls`` shows them (``ManagerStatus``:
    live on the leader; a follower hears only from its leader and keeps the leader's record for
    the others), managers lost with ``--force-new-cluster`` left out."""
    reachable = unreachable = 0
    view = manager.store.view()
    for node_id in manager.manager_statuses():
        node = view.get("nodes", node_id)
        if node is not None and lost_manager(node):
            continue  # left behind by --force-new-cluster: no Raft member any more
        ms = manager.manager_status(node_id)
        reach = ms.get("Reachability") if ms is not None else None
        reachable += reach == "reachable"
        unreachable += reach == "unreachable"
    return reachable, unreachable


def leave_refusal(manager: Manager | None) -> str:
    """Why ``swarm leave`` without ``--force`` is refused on a manager, in Docker's words
    (MOBY: daemon/cluster/swarm.go ``Leave``): the last manager ("Removing the last manager
    erases all current state of the swarm"); a manager whose leaving loses the quorum
    (reachable - 2 <= unreachable: "Removing this node leaves N managers out of M"); otherwise
    the general warning. Never names a ``shoal`` command (the docker CLI shows it too)."""
    msg = "You are attempting to leave the swarm on a node that is participating as a manager. "
    if manager is None:
        msg += "Doing so may lose the consensus of your cluster. "
    else:
        reachable, unreachable = _manager_counts(manager)
        if reachable <= 1 and unreachable == 0:
            return msg + "Removing the last manager erases all current state of the swarm. Use `--force` to ignore " \
                         "this message."
        if reachable - 2 <= unreachable:
            msg += (f"Removing this node leaves {max(reachable - 1, 0)} managers out of {reachable + unreachable}. "
                    "Without a Raft quorum your swarm will be inaccessible. ")
    return msg + ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                  "`--force-new-cluster`. Use `--force` to suppress this message.")
