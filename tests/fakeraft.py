"""``FakeRaftMembers``: a test double of the Raft facade the manager's membership rules use
(:class:`manager.membership.RaftMembers`, implemented for real by
:class:`raft.replicated.ReplicatedLog`), so the rules are tested without three real managers.

The test sets the state directly: ``voters`` / ``learners`` (Raft IDs), ``addrs``, ``heard``
(who answered recently: :meth:`reachable` returns it plus this node, whatever the window),
``leader``. Changes are recorded in ``calls`` (``("add_voter", id, addr)``,
``("remove_voter", id)``, ``("transfer_leadership", to)``) and applied to the state the way a
committed change would be; ``fail`` makes the next change raise :class:`LogUnavailable` with it.
"""

from __future__ import annotations

from typing import Any

from raft.replicated import LogUnavailable

__all__ = ["FakeRaftMembers"]


class FakeRaftMembers:
    """This node is ``id``; it is the leader unless ``leader`` says otherwise."""

    def __init__(self, id: int, voters: set[int] | None = None, *, election_timeout: float = 1.0) -> None:
        self._id = id
        self.voters_: set[int] = set(voters or {id})
        self.learners: set[int] = set()
        self.addrs: dict[int, str] = {}
        self.heard: set[int] = set(self.voters_)
        self.leader = id
        self._election_timeout = election_timeout
        self.calls: list[tuple[Any, ...]] = []
        self.windows: list[float | None] = []
        self.fail: str | None = None

    @property
    def id(self) -> int:
        return self._id

    @property
    def leader_id(self) -> int:
        return self.leader

    @property
    def is_leader(self) -> bool:
        return self.leader == self._id

    @property
    def election_timeout(self) -> float:
        return self._election_timeout

    def voters(self) -> frozenset[int]:
        return frozenset(self.voters_)

    def members(self) -> frozenset[int]:
        return frozenset(self.voters_ | self.learners)

    def addr(self, node_id: int) -> str | None:
        return self.addrs.get(node_id)

    def reachable(self, within: float | None = None) -> set[int]:
        self.windows.append(within)
        return (self.heard & (self.voters_ | self.learners)) | {self._id}

    def not_leader_message(self) -> str:
        return "no leader elected yet (an election is in progress); retry"

    def _check(self) -> None:
        if self.fail is not None:
            msg, self.fail = self.fail, None
            raise LogUnavailable(msg)
        if not self.is_leader:
            raise LogUnavailable(f"not the leader; the leader is {self.leader} at ?")

    async def add_voter(self, node_id: int, addr: str, timeout: float = 30.0) -> None:
        self.calls.append(("add_voter", node_id, addr))
        self._check()
        if node_id in self.voters_:
            raise ValueError(f"node {node_id} is already a voter")
        self.addrs[node_id] = addr
        self.voters_.add(node_id)
        self.heard.add(node_id)

    async def remove_voter(self, node_id: int, timeout: float = 10.0) -> None:
        self.calls.append(("remove_voter", node_id))
        self._check()
        if node_id not in self.voters_:
            raise ValueError(f"node {node_id} is not a voter")
        self.voters_.discard(node_id)

    async def transfer_leadership(self, to: int, timeout: float = 5.0) -> None:
        self.calls.append(("transfer_leadership", to))
        self._check()
        if to not in self.voters_:
            raise ValueError(f"node {to} is not a voter")
        self.leader = to
