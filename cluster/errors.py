"""Named errors of the Raft library, so callers can map each to the right gRPC status."""

from __future__ import annotations

from cluster.types import NO_NODE, NodeId


class RaftError(Exception):
    """Base class of every error the library raises on purpose."""


class NotLeader(RaftError):
    """A proposal or read reached a replica that is not the leader. ``leader`` is a hint
    (``NO_NODE`` when unknown)."""

    def __init__(self, leader: NodeId = NO_NODE) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader refused a proposal it could accept later: too many uncommitted bytes, or a
    leadership transfer in progress. Retrying after a short back-off is the right answer."""


class Compacted(RaftError):
    """The requested log entries were discarded by a snapshot."""


class StorageError(RaftError):
    """The durable store cannot be used as asked."""


class CorruptLog(StorageError):
    """A damaged record sits where a torn write cannot explain it (not at the tail)."""


class DataDirMismatch(StorageError):
    """The data directory belongs to another node or cluster, or a group's stored membership
    differs from the one requested."""


class ProposalLost(RaftError):
    """A proposal was appended but will not be confirmed here: its entry was overwritten by
    another leader's, or this node stopped leading the group before applying it. The outcome is
    UNKNOWN: the entry may still commit under the next leader, so retry only idempotently."""


class HostStopped(RaftError):
    """The node host was stopped (or its loop failed) before the request was answered."""
