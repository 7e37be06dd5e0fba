"""Tunables of one replica. Ticks are the only notion of time the core has."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.types import GroupId, NodeId


@dataclass(frozen=True, slots=True)
class Config:
    node_id: NodeId
    group: GroupId
    voters: tuple[NodeId, ...]
    election_ticks: int = 10
    """A follower campaigns after a random timeout in [election_ticks, 2*election_ticks)."""
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_bytes: int = 1 << 20
    """Byte cap of entry payloads in one AppendEntries (one entry always fits)."""
    max_inflight_msgs: int = 256
    """Appends in flight per follower before the leader waits for acknowledgements."""
    max_uncommitted_bytes: int = 64 << 20
    """Proposals are refused (ProposalDropped) past this much uncommitted payload; 0 = no cap."""
    snapshot_chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.node_id not in self.voters:
            raise ValueError(f"node {self.node_id} is not among the voters {self.voters}")
        if len(set(self.voters)) != len(self.voters) or any(v <= 0 for v in self.voters):
            raise ValueError(f"voters must be distinct positive ids: {self.voters}")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight_msgs < 1 or self.snapshot_chunk_bytes < 1:
            raise ValueError("max_inflight_msgs and snapshot_chunk_bytes must be positive")
