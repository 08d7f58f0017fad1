"""``swarm leave`` on a manager without ``--force`` is refused with Docker's words (moby
daemon/cluster/swarm.go Leave): the last manager is told it erases the swarm (never "leaves 1
managers out of 1"); "Removing this node leaves N-1 managers out of M" only when leaving loses
the quorum, N counting the reachable managers as ``node ls`` shows them — on a follower too,
which hears only from its leader; no message names a ``shoal`` command."""

from __future__ import annotations

from typing import Any

import pytest

from manager.membership import LOST_MANAGER_MESSAGE
from shoal.daemon.errors import SwarmStateError
from shoal.daemon.swarmflow import swarm_leave


class _State:
    in_swarm = True
    data = {"Role": "manager", "NodeID": "m1"}


class _Log:
    def __init__(self, voters: set[int]) -> None:
        self._voters = frozenset(voters)

    def voters(self) -> frozenset[int]:
        return self._voters


class _View:
    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.nodes = nodes

    def get(self, table: str, node_id: str) -> dict[str, Any] | None:
        return self.nodes.get(node_id)


class _Store:
    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.nodes = nodes

    def view(self) -> _View:
        return _View(self.nodes)


class _Manager:
    """Test double of manager.manager.Manager: the Raft voters, the ManagerStatus of each, the
    store's node objects (``lost``: managers left behind by --force-new-cluster)."""

    def __init__(self, reachability: dict[str, str], lost: tuple[str, ...] = ()) -> None:
        self.reachability = reachability
        self.log = _Log(set(range(len(reachability))))
        self.store = _Store({n: {"ID": n, "Status": {"State": "down", "Message": LOST_MANAGER_MESSAGE}} for n in lost})

    def manager_statuses(self) -> dict[str, dict[str, Any] | None]:
        # as on a follower: it heard only from its leader, so its own view says "unreachable"
        return {n: {"Reachability": "unreachable"} for n in self.reachability}

    def manager_status(self, node_id: str) -> dict[str, Any] | None:
        return {"Reachability": self.reachability[node_id], "Leader": node_id == "m2"}


class _Daemon:
    def __init__(self, manager: _Manager) -> None:
        self.state = _State()
        self.manager = manager


@pytest.mark.parametrize(("reachability", "words"), [
    # losing the quorum: reachable - 2 <= unreachable (moby's removingManagerCausesLossOfQuorum)
    ({"m1": "reachable", "m2": "reachable", "m3": "unreachable"}, "Removing this node leaves 1 managers out of 3. "
     "Without a Raft quorum your swarm will be inaccessible. "),
    ({"m1": "reachable", "m2": "reachable"}, "Removing this node leaves 1 managers out of 2. "),
])
async def test_a_manager_leaving_is_told_what_is_left(reachability: dict[str, str], words: str) -> None:
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(_Manager(reachability)), force=False)  # type: ignore[arg-type]
    msg = str(e.value)
    assert msg.startswith("You are attempting to leave the swarm on a node that is participating as a manager. ")
    assert words in msg and msg.endswith("reinitialize it with `--force-new-cluster`. Use `--force` to suppress "
                                         "this message.")
    assert "shoal" not in msg


async def test_a_manager_whose_leaving_keeps_the_quorum_gets_the_general_warning() -> None:
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(_Manager({"m1": "reachable", "m2": "reachable", "m3": "reachable"})),  # type: ignore[arg-type]
                          force=False)
    assert str(e.value) == ("You are attempting to leave the swarm on a node that is participating as a manager. "
                            "The only way to restore a swarm that has lost consensus is to reinitialize it with "
                            "`--force-new-cluster`. Use `--force` to suppress this message.")


async def test_the_last_manager_is_told_it_erases_the_swarm_in_dockers_words() -> None:
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(_Manager({"m1": "reachable"})), force=False)  # type: ignore[arg-type]
    assert str(e.value) == ("You are attempting to leave the swarm on a node that is participating as a manager. "
                            "Removing the last manager erases all current state of the swarm. Use `--force` to "
                            "ignore this message.")
    assert "managers out of" not in str(e.value)


async def test_after_force_new_cluster_the_survivor_is_the_last_manager() -> None:
    """The managers left behind show Unreachable but are no Raft members: the survivor leaving
    erases the swarm, it does not "leave 0 managers out of 3"."""
    m = _Manager({"m1": "reachable", "m2": "unreachable", "m3": "unreachable"}, lost=("m2", "m3"))
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(m), force=False)  # type: ignore[arg-type]
    assert "Removing the last manager erases all current state of the swarm" in str(e.value)
    assert "managers out of" not in str(e.value)
