"""Majority arithmetic, kept apart so it can be tested and reasoned about on its own."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from cluster.types import NodeId


def majority(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Iterable[NodeId], match: Mapping[NodeId, int]) -> int:
    """The largest index that a majority of ``voters`` hold (missing voters hold 0)."""
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    return indexes[majority(len(indexes)) - 1]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def vote_result(voters: Iterable[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    voter_list = list(voters)
    need = majority(len(voter_list))
    granted = sum(1 for v in voter_list if votes.get(v) is True)
    rejected = sum(1 for v in voter_list if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voter_list) - need:
        return VoteResult.LOST
    return VoteResult.PENDING
