"""The manager's membership rules (manager/membership.py) against a fake of the Raft facade
(tests/fakeraft.py) and a real store: promote, demote and its quorum checks, handing leadership
over, role reconciliation, the managers lost with --force-new-cluster, ManagerStatus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.manager import Manager
from manager.membership import Membership, raft_id
from manager.store import Store, Unavailable, WriteTx
from tests.fakeraft import FakeRaftMembers
from tests.stores import open_log, open_store, start_leader

N1, N2, N3 = "node1", "node2", "node3"
R1, R2, R3 = raft_id(N1), raft_id(N2), raft_id(N3)
ADDRS = {R1: "10.0.0.1:2377", R2: "10.0.0.2:2377", R3: "10.0.0.3:2377"}


def _node(node_id: str, role: str, leader: bool = False) -> dict[str, Any]:
    n: dict[str, Any] = {"ID": node_id, "Spec": {"Role": role, "Availability": "active"}}
    if role == "manager":
        n["ManagerStatus"] = {"Leader": leader, "Reachability": "reachable", "Addr": ADDRS[raft_id(node_id)]}
    return n


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "raft")

    def seed(tx: WriteTx) -> None:
        tx.create("nodes", _node(N1, "manager", leader=True))
        tx.create("nodes", _node(N2, "manager"))
        tx.create("nodes", _node(N3, "manager"))
        tx.create("nodes", {"ID": "worker1", "Spec": {"Role": "worker"}})

    await s.update(seed)
    yield s
    await s.close()


def three(store: Store) -> tuple[FakeRaftMembers, Membership]:
    raft = FakeRaftMembers(R1, {R1, R2, R3}, election_timeout=1.5)
    raft.addrs.update(ADDRS)
    return raft, Membership(raft, store, N1)


async def set_role(store: Store, node_id: str, role: str) -> None:
    def fn(tx: WriteTx) -> None:
        n = tx.get("nodes", node_id)
        assert n is not None
        n["Spec"]["Role"] = role
        tx.update("nodes", n)

    await store.update(fn)


# -- demote: the quorum check ------------------------------------------------------------------


async def test_demote_is_fine_while_the_remaining_managers_keep_a_quorum(store: Store) -> None:
    raft, m = three(store)
    assert m.demote_problem(N2) is None
    raft.heard = {R1, R3}  # node2 itself being down does not matter: it is the one leaving
    assert m.demote_problem(N2) is None
    # the window is the leader's check-quorum window: one election timeout
    assert raft.windows[-1] == 1.5


async def test_demote_refused_when_it_would_lose_the_quorum(store: Store) -> None:
    raft, m = three(store)
    raft.heard = {R1, R2}  # node3 is unreachable: demoting node2 leaves 1 of 2
    assert m.demote_problem(N2) == ("can't remove member from the raft: this would result in a loss of quorum "
                                    "(1 of the 2 remaining managers are reachable)")


async def test_demote_of_the_last_manager_is_refused(store: Store) -> None:
    raft = FakeRaftMembers(R1, {R1})
    m = Membership(raft, store, N1)
    assert m.demote_problem(N1) == "attempting to demote the last manager of the swarm"
    # managers already demoted in the spec but still voters are leaving too
    _, m2 = three(store)
    await set_role(store, N2, "worker")
    await set_role(store, N3, "worker")
    assert m2.demote_problem(N1) == "attempting to demote the last manager of the swarm"


async def test_demote_of_a_node_that_is_no_voter_is_fine(store: Store) -> None:
    _, m = three(store)
    assert m.demote_problem("worker1") is None


# -- promote -------------------------------------------------------------------------------------


async def test_promote_adds_the_manager_as_a_voter_and_records_its_status(store: Store) -> None:
    raft = FakeRaftMembers(R1, {R1})
    raft.addrs[R1] = ADDRS[R1]
    m = Membership(raft, store, N1)
    await m.add_manager(N2, ADDRS[R2])
    assert raft.calls == [("add_voter", R2, ADDRS[R2])]
    assert raft.voters() == {R1, R2}
    ms = (store.view().get("nodes", N2) or {}).get("ManagerStatus")
    assert ms == {"Leader": False, "Reachability": "reachable", "Addr": ADDRS[R2]}
    # again at the same address: nothing to do; at another: removed and added again
    await m.add_manager(N2, ADDRS[R2])
    assert len(raft.calls) == 1
    await m.add_manager(N2, "10.9.9.9:2377")
    assert raft.calls[1:] == [("remove_voter", R2), ("add_voter", R2, "10.9.9.9:2377")]


async def test_promote_refuses_a_worker_and_reports_an_uncommitted_change(store: Store) -> None:
    raft = FakeRaftMembers(R1, {R1})
    m = Membership(raft, store, N1)
    with pytest.raises(PermissionError, match="raft.join: node worker1 is not a manager of this swarm"):
        await m.add_manager("worker1", "10.0.0.9:2377")
    raft.fail = "no quorum: 1 of 2 managers reachable"
    with pytest.raises(Unavailable, match="no quorum: 1 of 2"):
        await m.add_manager(N2, ADDRS[R2])


# -- reconciling roles -----------------------------------------------------------------------------


async def test_reconcile_removes_demoted_managers_from_raft(store: Store) -> None:
    raft, m = three(store)
    await m.reconcile_roles()
    assert raft.calls == []
    await set_role(store, N3, "worker")
    await m.reconcile_roles()
    assert raft.calls == [("remove_voter", R3)] and raft.voters() == {R1, R2}
    await m.reconcile_roles()  # done: nothing more
    assert len(raft.calls) == 1


async def test_a_demoted_leader_hands_leadership_over_instead_of_removing_itself(store: Store) -> None:
    raft, m = three(store)
    raft.heard = {R1, R3}
    await set_role(store, N1, "worker")
    await m.reconcile_roles()
    # the reachable voter with the lowest ID; the new leader removes the old one
    assert raft.calls == [("transfer_leadership", R3)] and raft.voters() == {R1, R2, R3}
    assert raft.leader == R3


async def test_handover_target_is_a_reachable_voter_other_than_this_one(store: Store) -> None:
    raft, m = three(store)
    assert m.handover_target() == min(R2, R3)
    raft.heard = {R1}
    assert m.handover_target() is None
    raft.learners.add(R2)
    raft.voters_.discard(R2)
    raft.heard = {R1, R2}
    assert m.handover_target() is None  # a learner cannot lead
    await set_role(store, N1, "worker")
    await m.reconcile_roles()  # no one to hand over to: stays, nothing removed
    assert raft.calls == []


async def test_a_failed_removal_is_logged_and_retried_later(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    raft, m = three(store)
    await set_role(store, N2, "worker")
    raft.fail = "no quorum: 1 of 3 managers reachable"
    await m.reconcile_roles()
    assert "could not remove node node2" in caplog.text and raft.voters() == {R1, R2, R3}
    await m.reconcile_roles()
    assert raft.voters() == {R1, R3}


async def test_leave_makes_the_node_a_worker_and_takes_it_out(store: Store) -> None:
    raft, m = three(store)
    await m.leave(N2)
    assert (store.view().get("nodes", N2) or {})["Spec"]["Role"] == "worker"
    assert raft.calls == [("remove_voter", R2)]


async def test_managers_lost_with_force_new_cluster_become_workers(store: Store) -> None:
    raft = FakeRaftMembers(R1, {R1})
    m = Membership(raft, store, N1)
    assert await m.demote_lost_managers()
    nodes = {n["ID"]: n for n in store.view().list("nodes")}
    assert nodes[N1]["Spec"]["Role"] == "manager" and "ManagerStatus" in nodes[N1]
    for nid in (N2, N3):
        # workers in the spec, shown Down/Unreachable (not the old cluster's Ready/Reachable)
        assert nodes[nid]["Spec"]["Role"] == "worker"
        assert nodes[nid]["Status"]["State"] == "down"
        assert nodes[nid]["ManagerStatus"] == {"Leader": False, "Reachability": "unreachable",
                                               "Addr": ADDRS[raft_id(nid)]}
        assert m.manager_status(nid) == nodes[nid]["ManagerStatus"]
    assert raft.calls == []
    # the statuses written each second keep them unreachable while they are down
    await m.update_manager_status()
    assert (store.view().get("nodes", N2) or {})["ManagerStatus"]["Reachability"] == "unreachable"

    # node2 comes back (its daemon's session marks it ready): a worker, no manager status
    def back(tx: WriteTx) -> None:
        n = tx.get("nodes", N2)
        assert n is not None
        n["Status"] = {"State": "ready", "Message": ""}
        tx.update("nodes", n)

    await store.update(back)
    assert m.manager_status(N2) is None
    await m.update_manager_status()
    assert "ManagerStatus" not in (store.view().get("nodes", N2) or {})
    assert (store.view().get("nodes", N3) or {})["ManagerStatus"]["Reachability"] == "unreachable"


# -- ManagerStatus ---------------------------------------------------------------------------------


async def test_manager_statuses_as_the_leader_sees_them(store: Store) -> None:
    raft, m = three(store)
    raft.heard = {R1, R2}
    st = m.manager_statuses()
    assert st == {N1: {"Leader": True, "Reachability": "reachable", "Addr": ADDRS[R1]},
                  N2: {"Leader": False, "Reachability": "reachable", "Addr": ADDRS[R2]},
                  N3: {"Leader": False, "Reachability": "unreachable", "Addr": ADDRS[R3]}}
    # node3 demoted and out of the configuration: its status goes (None), and is written so
    await set_role(store, N3, "worker")
    raft.voters_.discard(R3)
    assert m.manager_statuses()[N3] is None
    await m.update_manager_status()
    assert "ManagerStatus" not in (store.view().get("nodes", N3) or {})
    assert (store.view().get("nodes", N2) or {})["ManagerStatus"] == st[N2]


async def test_manager_status_is_read_from_raft_not_from_the_store_copy(store: Store) -> None:
    """The store's copy says node1 leads; Raft says node2 does now (node1 died and a write already
    went through node2): the status computed at call time says so at once."""
    raft, m = three(store)
    raft.leader = R2
    raft.heard = {R1, R2}
    # node1 is a follower now: it heard from the leader, not from node3, whose last record is the
    # leader's ("reachable")
    assert m.manager_status(N2) == {"Leader": True, "Reachability": "reachable", "Addr": ADDRS[R2]}
    assert m.manager_status(N1) == {"Leader": False, "Reachability": "reachable", "Addr": ADDRS[R1]}
    assert m.manager_status(N3) == {"Leader": False, "Reachability": "reachable", "Addr": ADDRS[R3]}
    assert (store.view().get("nodes", N1) or {})["ManagerStatus"]["Leader"] is True  # the stale copy
    # as the leader, what it did not hear from is unreachable
    raft.leader = R1
    assert m.manager_status(N3) == {"Leader": False, "Reachability": "unreachable", "Addr": ADDRS[R3]}
    assert m.manager_status("worker1") is None and m.manager_status("nosuchnode") is None


async def test_manager_manager_status_on_the_daemons_log(tmp_path: Path) -> None:
    """``Manager.manager_status`` over a real single-voter ReplicatedLog (the facade itself)."""
    log = open_log(tmp_path / "raft", raft_id=R1, addr=ADDRS[R1])
    store = Store(log, snapshot_interval=0)
    await start_leader(log)
    try:
        await store.update(lambda tx: tx.create("nodes", {"ID": N1, "Spec": {"Role": "manager"}}))
        await store.update(lambda tx: tx.create("nodes", {"ID": "worker1", "Spec": {"Role": "worker"}}))
        m = Manager(tmp_path / "m", tmp_path / "certs", N1, ADDRS[R1], "127.0.0.1:0")
        m.log, m.store, m.membership = log, store, Membership(log, store, N1)
        assert m.manager_status(N1) == {"Leader": True, "Reachability": "reachable", "Addr": ADDRS[R1]}
        assert m.manager_status("worker1") is None
        assert m.demote_problem(N1) == "attempting to demote the last manager of the swarm"
        assert m.manager_statuses() == {N1: m.manager_status(N1)}
    finally:
        await store.close()


async def test_peer_check_of_inbound_raft_connections(store: Store) -> None:
    raft, m = three(store)
    assert m.peer_problem(None, R2) == "no certificate"
    assert m.peer_problem((N2, "manager"), R3) == f"certificate of node {N2} does not belong to Raft member {R3}"
    assert m.peer_problem((N2, "manager"), R2) is None
    # not in the configuration (yet): fine unless the store knows the node was demoted
    rw = raft_id("worker1")
    assert m.peer_problem(("worker1", "manager"), rw) == "node worker1 is not a Raft member (it is a worker now)"
    assert m.peer_problem(("newmanager", "manager"), raft_id("newmanager")) is None
    raft.voters_.clear()  # no configuration yet (a joiner): anyone the certificate vouches for
    assert m.peer_problem(("worker1", "manager"), rw) is None
