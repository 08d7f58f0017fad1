"""``swarm leave`` on a manager without ``--force`` is refused with Docker's words: "Removing this
node leaves N-1 managers out of M" where N counts the reachable managers as ``node ls`` shows
them (moby daemon/cluster/swarm.go Leave) — on a follower too, which hears only from its leader."""

from __future__ import annotations

from typing import Any

import pytest

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


class _Manager:
    """Test double of manager.manager.Manager: the Raft voters and the ManagerStatus of each."""

    def __init__(self, reachability: dict[str, str]) -> None:
        self.reachability = reachability
        self.log = _Log(set(range(len(reachability))))

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
    ({"m1": "reachable", "m2": "reachable", "m3": "reachable"}, "leaves 2 managers out of 3"),
    ({"m1": "reachable", "m2": "reachable", "m3": "unreachable"}, "leaves 1 managers out of 3"),
])
async def test_a_manager_leaving_is_told_what_is_left(reachability: dict[str, str], words: str) -> None:
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(_Manager(reachability)), force=False)  # type: ignore[arg-type]
    assert words in str(e.value) and "Use `--force` to ignore this message." in str(e.value)


async def test_the_last_manager_is_told_it_erases_the_swarm() -> None:
    with pytest.raises(SwarmStateError) as e:
        await swarm_leave(_Daemon(_Manager({"m1": "reachable"})), force=False)  # type: ignore[arg-type]
    assert "Removing the last manager erases all current state of the swarm" in str(e.value)
