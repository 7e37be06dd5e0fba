"""What a replica asks its runtime to do, and the rule for doing it.

The runtime loop, for every replica that ``has_ready()``::

    rd = replica.ready()
    storage: save rd.snapshot (if any, replacing the log), then rd.entries (an entry at index i
             replaces any stored entry at i or above), then rd.hard_state (if any)
    send rd.messages now                  # only if rd.early_messages (a leader's, see below)
    storage.sync()  if any rd.must_sync   # one fsync for every group on the node
    send rd.messages                      # ONLY after the sync: they promise what was persisted
    restore rd.snapshot into the state machine, then apply rd.committed_entries in order
    answer rd.read_states once applied >= their index; fail rd.dropped_reads
    replica.advance(rd)

Persist-before-send is the one rule that makes votes and acknowledgements binding across crashes;
it is written here once and every runtime (simulation, benchmark, node host) follows it.

The one exception is the leader's own appends (Raft thesis, section 10.2.1): a leader whose term
and vote are already durable may send the entries it is writing before its fsync returns. Its
messages promise nothing about its own disk: its own copy counts toward the commit quorum only
once ``advance`` reports it durable, so an entry commits either on a durable leader plus one
follower or on durable followers alone. What it saves is one fsync (and one thread hop) on the
path of every write. Followers' acknowledgements and every vote still wait for the sync.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cluster.messages import Entry, HardState, Message, Snapshot
from cluster.types import NO_NODE, NodeId


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (e.g. to discovery): who leads, and what we are."""

    leader: NodeId = NO_NODE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the runtime; see the module docstring for the order."""

    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    dropped_reads: tuple[bytes, ...] = ()
    soft_state: SoftState | None = None
    must_sync: bool = False
    """Something must be durable before ``messages`` go out: entries, a snapshot, or a new term
    or vote. A hard state that only moves the commit index is written but need not be synced
    on its own (the next sync carries it): a lost commit index is learned again from the
    leader, and applied entries prove their own commitment after a restart."""
    early_messages: bool = False
    """``messages`` may go out as soon as the Ready is persisted, before the sync: they come
    from a leader whose term and vote were durable already (see the module docstring)."""
