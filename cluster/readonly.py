"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read is served at the commit index the leader had when the read arrived, but only once a
majority has answered a heartbeat sent *after* that — proof that no newer leader existed then.
Reads are numbered by a per-term sequence; heartbeats carry the newest number, and a follower's
answer confirms every read numbered up to what it echoes. One heartbeat round confirms a whole
batch of reads.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cluster.types import NodeId


@dataclass(frozen=True, slots=True)
class PendingRead:
    context: bytes
    index: int  # commit index when the read arrived
    seq: int
    requester: NodeId  # the leader itself, or a follower that forwarded it


class ReadOnlyQueue:
    def __init__(self) -> None:
        self.seq = 0
        self._pending: deque[PendingRead] = deque()

    def add(self, context: bytes, index: int, requester: NodeId) -> int:
        self.seq += 1
        self._pending.append(PendingRead(context, index, self.seq, requester))
        return self.seq

    def release(self, confirmed_seq: int) -> list[PendingRead]:
        """Every read whose round is confirmed by a quorum (``confirmed_seq``), in order."""
        out: list[PendingRead] = []
        while self._pending and self._pending[0].seq <= confirmed_seq:
            out.append(self._pending.popleft())
        return out

    def drain(self) -> list[PendingRead]:
        out = list(self._pending)
        self._pending.clear()
        return out

    def __len__(self) -> int:
        return len(self._pending)
