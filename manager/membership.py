"""Manager membership: which managers are Raft voters, and the rules for changing that.

swarmkit's role manager is the model (SK: manager/role_manager.go, manager/controlapi/node.go):
the node objects' ``Spec.Role`` in the store is what users change (``node promote`` /
``node demote``); the leader reconciles the Raft configuration to it. The rules:

- **promote**: the promoted node renews its certificate and asks the leader to add it
  (``raft.join`` → :meth:`Membership.add_manager`): learner first, voter once caught up;
- **demote** is refused when it would leave the Raft configuration without a reachable quorum
  (swarmkit's ``CanRemoveMember``) or without a manager (:meth:`Membership.demote_problem`);
- **reconcile** (on the leader, once a second): a node whose spec says worker leaves the Raft
  configuration; the leader, when it is the one demoted, first hands leadership to a reachable
  voter (:meth:`Membership.reconcile_roles`);
- **ManagerStatus** (Docker's ``Leader``, ``Reachability``, ``Addr``) is computed from Raft
  when asked (:meth:`Membership.manager_status`); the leader also keeps a copy in the node
  objects (:meth:`Membership.update_manager_status`) for readers of the store.

Raft is reached only through the facade :class:`RaftMembers` (a
:class:`raft.replicated.ReplicatedLog` in the daemon, ``tests/fakeraft.py`` in unit tests).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

from manager.ca import is_blacklisted
from manager.store import Store, Unavailable, WriteTx
from raft.replicated import LogUnavailable

log = logging.getLogger(__name__)

__all__ = ["Membership", "RaftMembers", "raft_id", "is_manager"]


def raft_id(node_id: str) -> int:
    """The Raft member ID (a positive 63-bit int) of Swarm node ``node_id`` (a string): the first
    8 bytes of its SHA-256, so every manager computes the same mapping without storing it."""
    v = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") >> 1
    return v or 1


LOST_MANAGER_MESSAGE = ("manager lost with the old cluster (swarm init --force-new-cluster): down until its "
                        "daemon reconnects")
"""``Status.Message`` of a manager the new cluster left behind (:meth:`Membership.demote_lost_managers`)."""


def lost_manager(node: dict[str, Any]) -> bool:
    """Whether ``node`` is a manager left behind by ``--force-new-cluster`` that has not come back
    yet (down, with :data:`LOST_MANAGER_MESSAGE`): it shows ``Unreachable`` until it does."""
    status = node.get("Status") or {}
    return bool(status.get("State") == "down" and status.get("Message") == LOST_MANAGER_MESSAGE)


def is_manager(node: dict[str, Any]) -> bool:
    """Whether the node's spec makes it a manager (``Spec.Role``)."""
    return bool((node.get("Spec") or {}).get("Role") == "manager")


class RaftMembers(Protocol):
    """What the manager uses of Raft (:class:`raft.replicated.ReplicatedLog` has it all; the
    docstrings there give the details). IDs are Raft IDs (:func:`raft_id`)."""

    @property
    def id(self) -> int: ...
    @property
    def leader_id(self) -> int: ...
    @property
    def is_leader(self) -> bool: ...
    @property
    def election_timeout(self) -> float: ...
    def voters(self) -> frozenset[int]: ...
    def members(self) -> frozenset[int]: ...
    def addr(self, node_id: int) -> str | None: ...
    def reachable(self, within: float | None = None) -> set[int]: ...
    def not_leader_message(self) -> str: ...
    async def add_voter(self, node_id: int, addr: str, timeout: float = 30.0) -> None: ...
    async def remove_voter(self, node_id: int, timeout: float = 10.0) -> None: ...
    async def transfer_leadership(self, to: int, timeout: float = 5.0) -> None: ...


class Membership:
    """The membership rules of manager ``node_id`` over ``raft`` and ``store``.

    Methods that change the Raft configuration run on the leader (the caller forwards or
    refuses elsewhere); they raise :class:`raft.log.LogUnavailable` / :class:`Unavailable` as
    noted.
    """

    def __init__(self, raft: RaftMembers, store: Store, node_id: str) -> None:
        self.raft = raft
        self.store = store
        self.node_id = node_id

    # -- reading --------------------------------------------------------------------------------

    def handover_target(self) -> int | None:
        """A reachable voter other than this one to hand leadership to (None if there is none);
        the lowest Raft ID, so the choice is stable."""
        others = sorted((self.raft.voters() - {self.raft.id}) & self.raft.reachable())
        return others[0] if others else None

    def _status(self, node: dict[str, Any], members: frozenset[int], heard: set[int],
                live_only: bool) -> dict[str, Any] | None:
        rid = raft_id(node["ID"])
        ms = node.get("ManagerStatus") or {}
        if not is_manager(node) and rid not in members:
            if lost_manager(node):
                return {"Leader": False, "Reachability": "unreachable", "Addr": ms.get("Addr", "")}
            return None
        if rid not in members:
            reach = "unknown"
        elif rid in heard:
            reach = "reachable"
        elif live_only:
            reach = "unreachable"
        else:
            # a follower hears from the leader only: for the others the leader's record is the
            # best knowledge here
            reach = str(ms.get("Reachability") or "unknown")
        return {"Leader": rid == self.raft.leader_id, "Reachability": reach,
                "Addr": self.raft.addr(rid) or ms.get("Addr", "")}

    def manager_statuses(self) -> dict[str, dict[str, Any] | None]:
        """``{node_id: ManagerStatus | None}`` as the leader sees it now (Docker API
        ``ManagerStatus``: ``Leader``, ``Reachability`` reachable | unreachable | unknown,
        ``Addr``); None for a node demoted and already out of the Raft configuration. Nodes that
        are neither managers, Raft members nor show a ManagerStatus are not in it."""
        heard = self.raft.reachable()
        members = self.raft.members()
        out: dict[str, dict[str, Any] | None] = {}
        for n in self.store.view().find("nodes", lambda n: is_manager(n) or bool(n.get("ManagerStatus"))
                                        or raft_id(n["ID"]) in members):
            ms = self._status(n, members, heard, live_only=True)
            if ms is not None or n.get("ManagerStatus"):
                out[n["ID"]] = ms
        return out

    def manager_status(self, node_id: str) -> dict[str, Any] | None:
        """Docker's ``ManagerStatus`` of node ``node_id`` computed from Raft now (None for a
        worker, an unknown node, or a manager demoted and out of the configuration). ``Leader``
        is the leader this node knows now; on the leader ``Reachability`` is what it heard within
        1.5 election timeouts; on a follower a member it did not hear from itself keeps the
        leader's last record (it hears from the leader only)."""
        node = self.store.view().get("nodes", node_id)
        if node is None:
            return None
        return self._status(node, self.raft.members(), self.raft.reachable(), live_only=self.raft.is_leader)

    def demote_problem(self, node_id: str) -> str | None:
        """Why demoting manager ``node_id`` now would be unsafe (None if it is fine): it must not
        leave the Raft configuration without a reachable quorum (swarmkit's CanRemoveMember)."""
        rid = raft_id(node_id)
        voters = self.raft.voters()
        if rid not in voters:
            return None
        # managers already demoted in the spec but not yet out of Raft are leaving too
        leaving = {raft_id(n["ID"]) for n in self.store.view().find("nodes", lambda n: not is_manager(n))}
        remaining = voters - {rid} - leaving
        if not remaining:
            return "attempting to demote the last manager of the swarm"
        # heard from within one election timeout (the leader's check-quorum window)
        up = len(remaining & self.raft.reachable(self.raft.election_timeout))
        if up < len(remaining) // 2 + 1:
            return (f"can't remove member from the raft: this would result in a loss of quorum "
                    f"({up} of the {len(remaining)} remaining managers are reachable)")
        return None

    def peer_problem(self, ident: tuple[str, str] | None, rid: int) -> str | None:
        """Vet an inbound Raft connection (the Raft transport's peer check; ``ident``: the
        certificate's ``(node_id, role)``, ``rid``: the Raft ID it claims): None to accept, else
        why not. The certificate's node ID must map to the Raft ID it claims, must not be a
        removed node's, and the node must be a current member: in this node's Raft
        configuration; or, when it is not (this node has no configuration yet — a joiner
        hearing from the leader — or lags behind a member that joined since), not a node this
        store knows to be demoted."""
        if ident is None:
            return "no certificate"
        node_id = ident[0]
        if raft_id(node_id) != rid:
            return f"certificate of node {node_id} does not belong to Raft member {rid}"
        view = self.store.view()
        clusters = view.list("cluster")
        if clusters and is_blacklisted(clusters[0], node_id):
            return f"node {node_id} was removed from the swarm"
        members = self.raft.members()
        if rid in members or not members:
            return None
        node = view.get("nodes", node_id)
        if node is not None and not is_manager(node):
            role = (node.get("Spec") or {}).get("Role") or "worker"
            return f"node {node_id} is not a Raft member (it is a {role} now)"
        return None

    # -- changing (on the leader) ---------------------------------------------------------------

    async def update_manager_status(self) -> None:
        """Write :meth:`manager_statuses` into the node objects where they differ (the store's
        copy, for readers of the store). A failed write is logged, not raised."""
        want = self.manager_statuses()

        def fn(tx: WriteTx) -> None:
            for nid, ms in want.items():
                node = tx.get("nodes", nid)
                if node is None or node.get("ManagerStatus") == ms:
                    continue
                if ms is None:
                    node.pop("ManagerStatus", None)
                else:
                    node["ManagerStatus"] = ms
                node.pop("Version", None)
                tx.update("nodes", node)

        try:
            await self.store.update(fn)
        except Unavailable as e:
            log.info("could not record manager status: %s", e)

    async def reconcile_roles(self) -> None:
        """On the leader: take nodes whose spec says worker out of the Raft configuration
        (``node demote``); the leader hands leadership to a reachable voter before leaving.
        Promotion is driven by the promoted node itself (it renews its certificate and asks
        ``raft.join``)."""
        members = self.raft.members()
        for n in self.store.view().find("nodes", lambda n: not is_manager(n) and raft_id(n["ID"]) in members):
            await self.remove_member(raft_id(n["ID"]), n["ID"])

    async def remove_member(self, rid: int, node_id: str) -> None:
        """Take Raft member ``rid`` (node ``node_id``) out of the configuration; when it is this
        node, hand leadership to :meth:`handover_target` instead (the new leader removes it).
        Failures are logged, not raised (the next reconcile retries)."""
        try:
            if rid == self.raft.id:
                to = self.handover_target()
                if to is not None:
                    log.info("handing leadership to raft %d before leaving the Raft cluster", to)
                    await self.raft.transfer_leadership(to)
                return
            await self.raft.remove_voter(rid)
            log.info("node %s (raft %d) removed from the Raft cluster", node_id, rid)
        except (LogUnavailable, ValueError) as e:
            log.warning("could not remove node %s (raft %d) from the Raft cluster: %s", node_id, rid, e)

    async def add_manager(self, joiner: str, addr: str) -> None:
        """Make manager ``joiner`` listening at ``addr`` a voter (``raft.join`` on the leader);
        a voter at another address is removed and added again. Raises PermissionError (not a
        manager in the store), :class:`Unavailable` (the change did not commit)."""
        node = self.store.view().get("nodes", joiner)
        if node is None or not is_manager(node):
            raise PermissionError(f"raft.join: node {joiner} is not a manager of this swarm")
        rid = raft_id(joiner)
        if rid in self.raft.voters():
            if self.raft.addr(rid) == addr:
                return
            await self.raft.remove_voter(rid)
        try:
            await self.raft.add_voter(rid, addr, timeout=30.0)
        except LogUnavailable as e:
            raise Unavailable(str(e)) from e
        log.info("manager %s (raft %d) at %s added to the Raft cluster", joiner, rid, addr)
        await self.update_manager_status()

    async def leave(self, node_id: str) -> None:
        """Manager ``node_id`` leaves the swarm (``raft.leave`` on the leader): its node becomes
        a worker in the spec and it is taken out of Raft. Raises :class:`Unavailable`."""

        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", node_id)
            if node is None:
                return
            node["Spec"] = {**(node.get("Spec") or {}), "Role": "worker"}
            node.pop("Version", None)
            tx.update("nodes", node)

        await self.store.update(fn)
        await self.remove_member(raft_id(node_id), node_id)

    async def demote_lost_managers(self) -> bool:
        """After ``--force-new-cluster``: the other managers of the old cluster are no Raft
        members any more; make them workers in the spec, so that when one comes back its
        daemon switches to the worker role (its node is pushed without ManagerStatus) instead
        of waiting for a quorum that no longer exists. ``node promote`` brings one back.
        Until it comes back it shows what is true: ``Status.State`` down
        (:data:`LOST_MANAGER_MESSAGE`) and ``ManagerStatus.Reachability`` unreachable, not
        the Ready/Reachable of the old cluster (:func:`lost_manager`).
        Returns whether the write went through (a failure is logged)."""

        def fn(tx: WriteTx) -> None:
            for n in tx.list("nodes"):
                if n["ID"] != self.node_id and is_manager(n):
                    n["Spec"] = {**n["Spec"], "Role": "worker"}
                    addr = (n.get("ManagerStatus") or {}).get("Addr", "")
                    n["ManagerStatus"] = {"Leader": False, "Reachability": "unreachable", "Addr": addr}
                    n["Status"] = {**(n.get("Status") or {}), "State": "down", "Message": LOST_MANAGER_MESSAGE}
                    n.pop("Version", None)
                    tx.update("nodes", n)

        try:
            await self.store.update(fn)
            return True
        except Unavailable as e:
            log.warning("could not demote the managers lost with the old cluster: %s", e)
            return False
