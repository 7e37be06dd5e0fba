"""The Raft core's vocabulary: log entries, persistent state and the messages replicas exchange.

Everything here is a frozen dataclass with the Raft paper's names. Protobuf lives at the edge
(``cluster.codec``); the core never sees it. Every message carries its group id, its sender, its
receiver and the sender's term, so a multi-group host can route and filter it without decoding
anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from cluster.types import NO_NODE, GroupId, NodeId


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0  # an application command
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``index`` starts at 1; index 0 / term 0 is the empty log's sentinel."""

    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL


@dataclass(frozen=True, slots=True)
class HardState:
    """What a replica must have on disk before it answers: its term, its vote, its commit index."""

    term: int = 0
    voted_for: NodeId = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log, and the membership it was taken under."""

    index: int
    term: int
    voters: tuple[NodeId, ...] = ()


class SnapshotData(Protocol):
    """The bytes of a snapshot, read one slice at a time: what Raft holds, sends and stores.

    Why not plain ``bytes``: a snapshot is a copy of a whole database, and a replica keeps its
    latest one for as long as a lagging follower may need it. Everything the core does with it
    is ``len()`` and ``data[offset : offset + n]`` for one chunk, so ``bytes`` is one
    implementation (the simulation, scripted tests, small states) and
    ``cluster.snapshotfile.SnapshotFile``, a region of a file read with ``pread``, is the other:
    memory per snapshot is then one chunk, whatever the database's size. Implementations are
    immutable; slices are clamped like ``bytes`` slices (no step)."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine's state at ``meta.index``; ``content`` is opaque to Raft."""

    meta: SnapshotMeta
    content: SnapshotData = b""

    @property
    def data(self) -> bytes:
        """The whole content in memory. Only for states known to be small (discovery's map,
        tests, the simulation); the cluster itself never calls it, a large state machine reads
        ``content`` a slice at a time instead."""
        return self.content[0 : len(self.content)]


# ---------------------------------------------------------------------------------------------
# Messages. ``kw_only`` keeps construction explicit and lets each subclass add required fields.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftMessage:
    """Fields every message carries."""

    group: GroupId
    sender: NodeId
    to: NodeId
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(RaftMessage):
    """RequestVote. With ``pre_vote`` it asks "would you vote for me?" without changing terms
    (``term`` is then the term the candidate would campaign in). ``transfer`` marks a campaign
    started by TimeoutNow, which voters honour even while they believe a leader is alive."""

    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(RaftMessage):
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(RaftMessage):
    """AppendEntries carrying any number of entries (bounded by a byte cap)."""

    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...] = ()
    leader_commit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(RaftMessage):
    """On success ``index`` is the last index the follower now holds that matches the leader.

    On rejection ``index`` echoes the rejected ``prev_log_index``, and ``hint_index`` /
    ``hint_term`` name the largest entry of the follower's log at or before it whose term is
    not greater than ``prev_log_term``: the leader can skip a whole conflicting term per round.
    """

    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(RaftMessage):
    """Keeps followers from campaigning; ``commit`` is capped at what the follower is known to
    hold. ``round`` numbers the leader's heartbeat rounds in its term: an answer to round r proves
    the follower heard this leader after everything the leader did before sending it (ReadIndex
    and lost-append detection both rest on that)."""

    commit: int = 0
    round: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(RaftMessage):
    round: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk(RaftMessage):
    """One piece of InstallSnapshot: bytes ``[offset, offset + len(data))`` of a snapshot of
    ``total_size`` bytes. ``done`` marks the last piece."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    total_size: int
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotAck(RaftMessage):
    """The follower holds the first ``next_offset`` bytes of the snapshot at ``snapshot_index``
    (a lower offset than the leader sent asks it to resend from there)."""

    snapshot_index: int
    snapshot_term: int
    next_offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow(RaftMessage):
    """Leadership transfer: the receiver campaigns at once, skipping pre-vote."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(RaftMessage):
    """A follower asks the leader for a read index on behalf of a local reader."""

    context: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse(RaftMessage):
    """The leader's answer: once the follower has applied ``index`` it may serve the read."""

    context: bytes
    index: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | SnapshotChunk
    | SnapshotAck
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)
"""Every message the core sends or accepts."""

MESSAGE_TYPES: tuple[type[RaftMessage], ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    SnapshotChunk,
    SnapshotAck,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)


def entries_size(entries: tuple[Entry, ...] | list[Entry]) -> int:
    """Payload bytes of ``entries``, the unit of every byte cap in the core."""
    return sum(len(e.data) for e in entries)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What durable storage hands back to rebuild a replica after a restart."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()  # contiguous, starting right after the snapshot (or at 1)
