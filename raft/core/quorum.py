"""Majority-quorum arithmetic (Raft paper §5.3/§5.4.2, §5.2): the commit index a majority
has reached, vote tallies, and whether a majority is active (check-quorum, thesis §6.2)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "committed_index", "majority", "vote_result", "has_quorum"]


class VoteResult(enum.Enum):
    """Outcome of an election so far."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """Smallest number of voters that is a majority of ``n`` voters (n // 2 + 1)."""
    return n // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Largest index N such that a majority of ``voters`` have ``match[id] >= N`` (missing IDs
    count as 0). Returns 0 for an empty voter set. Figure 2: "If there exists an N such that
    N > commitIndex, a majority of matchIndex[i] ≥ N, …" (the term check is the caller's)."""
    if not voters:
        return 0
    values = sorted((match.get(v, 0) for v in voters), reverse=True)
    return values[majority(len(values)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON when a majority of ``voters`` granted, LOST when a majority can no longer be reached,
    PENDING otherwise. ``votes`` maps voter → granted; votes of non-voters are ignored."""
    if not voters:
        return VoteResult.LOST
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    """True when ``members`` contains a majority of ``voters``."""
    s = set(members)
    return sum(1 for v in voters if v in s) >= majority(len(voters)) if voters else False
