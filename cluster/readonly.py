"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read is served at the commit index the leader had when the read arrived, but only once a
majority has answered a heartbeat sent *after* that — proof that no newer leader existed then.
The leader numbers its heartbeat rounds (per term); a read waits for the round sent right after it
arrived, and a follower's answer to round r confirms every read waiting for a round <= r. One
heartbeat round confirms a whole batch of reads.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cluster.types import NodeId


@dataclass(frozen=True, slots=True)
class PendingRead:
    context: bytes
    index: int  # commit index when the read arrived
    round: int  # the heartbeat round that must reach a quorum
    requester: NodeId  # the leader itself, or a follower that forwarded it


class ReadOnlyQueue:
    def __init__(self) -> None:
        self._pending: deque[PendingRead] = deque()

    def add(self, context: bytes, index: int, requester: NodeId, round: int) -> None:
        self._pending.append(PendingRead(context, index, round, requester))

    def release(self, confirmed_round: int) -> list[PendingRead]:
        """Every read whose round a quorum has answered (``confirmed_round``), in order."""
        out: list[PendingRead] = []
        while self._pending and self._pending[0].round <= confirmed_round:
            out.append(self._pending.popleft())
        return out

    def drain(self) -> list[PendingRead]:
        out = list(self._pending)
        self._pending.clear()
        return out

    def __len__(self) -> int:
        return len(self._pending)
