"""The synchronous runtime loop of one node hosting replicas of many groups.

This is the one place that carries out the contract written in ``cluster.ready``: for every
replica with work, persist what its ``Ready`` asks for into the node's ONE shared store, make it
durable with ONE ``sync()`` for all groups (group commit), and only then release the messages,
apply the committed entries and ``advance()``. The simulation, the benchmark and the asyncio host
all drive replicas through it, so "persist before send" is enforced once.

The driver does no I/O of its own beyond the store it is handed, keeps no clock and never sends
anything: delivering the returned messages is the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cluster.messages import Entry, HardState, Message, Snapshot
from cluster.raft import Replica
from cluster.ready import ReadState, Ready, SoftState
from cluster.types import GroupId, NodeId


class RaftStore(Protocol):
    """The part of a durable store the driver uses (``cluster.storage.LogStore`` and test
    doubles such as an in-memory store both fit)."""

    def append(self, group: GroupId, entries: Sequence[Entry]) -> None: ...

    def set_hard_state(self, group: GroupId, hs: HardState) -> None: ...

    def save_snapshot(self, group: GroupId, snapshot: Snapshot, *, discard_log: bool) -> None: ...

    def sync(self) -> None: ...


class StateMachine(Protocol):
    """What the node applies committed entries to; one object serves every hosted group."""

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None: ...

    def restore(self, group: GroupId, snapshot: Snapshot) -> None: ...


@dataclass
class DriverOutput:
    """What one ``process_ready`` round produced for the caller.

    ``messages`` may be sent now (everything they promise is durable). ``read_states`` may be
    served now: the state machine has applied at least their index. ``dropped_reads`` are the
    contexts of reads that must be failed (the caller retries them elsewhere).
    """

    messages: list[Message] = field(default_factory=list)
    read_states: list[tuple[GroupId, ReadState]] = field(default_factory=list)
    dropped_reads: list[tuple[GroupId, bytes]] = field(default_factory=list)
    soft_states: list[tuple[GroupId, SoftState]] = field(default_factory=list)
    applied: int = 0
    """Committed entries applied to the state machine in this round."""
    synced: bool = False
    """Whether this round called ``store.sync()`` (at most once)."""
    readies: int = 0
    """Replicas that had work this round (0: the node was idle)."""


@dataclass
class PendingRound:
    """A round written to the store but not yet durable (see ``NodeDriver.persist``)."""

    batch: list[tuple[GroupId, Replica, Ready]] = field(default_factory=list)
    must_sync: bool = False
    early: list[Message] = field(default_factory=list)
    """Leaders' messages that may be sent before the sync (``Ready.early_messages``). A caller
    that sends them takes them (empties the list); ``finish`` returns whatever is left here
    with the other messages."""


class NodeDriver:
    """Drives every replica hosted on one node through persist → sync → send → apply → advance."""

    def __init__(self, node_id: NodeId, store: RaftStore, state_machine: StateMachine) -> None:
        self.node_id = node_id
        self.store = store
        self.state_machine = state_machine
        self.replicas: dict[GroupId, Replica] = {}
        self._applied: dict[GroupId, int] = {}
        # Read states the replica released before the state machine caught up with them.
        self._waiting_reads: dict[GroupId, list[ReadState]] = {}
        self.unknown_group_messages = 0
        """Messages for a group this node does not host (dropped and counted, never raised)."""

    def add(self, replica: Replica) -> None:
        """Host ``replica``; its state machine must already hold ``replica.applied_index``."""
        if replica.id != self.node_id:
            raise ValueError(f"replica of node {replica.id} added to node {self.node_id}")
        if replica.group in self.replicas:
            raise ValueError(f"group {replica.group} is already hosted on node {self.node_id}")
        self.replicas[replica.group] = replica
        self._applied[replica.group] = replica.applied_index
        self._waiting_reads[replica.group] = []

    def applied_index(self, group: GroupId) -> int:
        """The last index the state machine holds for ``group``."""
        return self._applied[group]

    def tick(self) -> None:
        """Advance every hosted replica's clock by one tick."""
        for replica in self.replicas.values():
            replica.tick()

    def step(self, msg: Message) -> bool:
        """Hand ``msg`` to the replica of its group; False (and counted) if there is none."""
        replica = self.replicas.get(msg.group)
        if replica is None or msg.to != self.node_id:
            self.unknown_group_messages += 1
            return False
        replica.step(msg)
        return True

    def has_ready(self) -> bool:
        return any(r.has_ready() for r in self.replicas.values())

    def compact(self, group: GroupId, snapshot: Snapshot) -> None:
        """Record a snapshot the application took at an applied index, then let the replica
        drop the log it covers. The store record becomes durable with the next sync; until
        then a crash simply leaves the older log in place."""
        if snapshot.meta.index > self._applied[group]:
            raise ValueError(
                f"snapshot at {snapshot.meta.index} is beyond applied index {self._applied[group]}"
            )
        self.store.save_snapshot(group, snapshot, discard_log=False)
        self.replicas[group].compact(snapshot)

    def process_ready(
        self, send_early: Callable[[list[Message]], None] | None = None
    ) -> DriverOutput:
        """One loop turn for every replica with work; see ``cluster.ready`` for the order.
        ``send_early`` receives the leaders' messages that may leave before the sync (a
        simulation passes its network, so a crash during the sync finds them already sent);
        without it they are returned with the others."""
        pending = self.persist()
        if send_early is not None and pending.early:
            send_early(pending.early)
            pending.early = []
        if pending.must_sync:
            self.store.sync()
        return self.finish(pending)

    def persist(self) -> PendingRound:
        """Steps 1 of a round: take every replica's Ready and write it to the shared store.
        Leaders' messages that need not wait for the sync are collected in ``early``.

        The caller must then make the store durable (``store.sync()``) when ``must_sync`` —
        possibly on another thread, so the event loop keeps accepting requests meanwhile; that
        is what lets the next round carry many proposals — and then call ``finish``. Nothing may
        touch the replicas or the store in between."""
        pending = PendingRound()
        for group, replica in self.replicas.items():
            if not replica.has_ready():
                continue
            rd = replica.ready()
            pending.batch.append((group, replica, rd))
            if rd.snapshot is not None:
                self.store.save_snapshot(group, rd.snapshot, discard_log=True)
            if rd.entries:
                self.store.append(group, rd.entries)
            if rd.hard_state is not None:
                self.store.set_hard_state(group, rd.hard_state)
            pending.must_sync = pending.must_sync or rd.must_sync
            if rd.early_messages:
                pending.early.extend(rd.messages)
        return pending

    def finish(self, pending: PendingRound) -> DriverOutput:
        """Steps 3-4 of a round, once ``pending`` is durable: release the messages, apply,
        answer reads, advance."""
        out = DriverOutput(synced=pending.must_sync, readies=len(pending.batch))
        # 3. Only now may anything promising that state leave the node.
        out.messages.extend(pending.early)
        for _, _, rd in pending.batch:
            if not rd.early_messages:
                out.messages.extend(rd.messages)
        # 4. Apply, answer reads, then tell each replica its Ready is done.
        for group, replica, rd in pending.batch:
            if rd.soft_state is not None:
                out.soft_states.append((group, rd.soft_state))
            if rd.snapshot is not None:
                self.state_machine.restore(group, rd.snapshot)
                self._applied[group] = rd.snapshot.meta.index
            if rd.committed_entries:
                self.state_machine.apply(group, rd.committed_entries)
                self._applied[group] = rd.committed_entries[-1].index
                out.applied += len(rd.committed_entries)
            waiting = self._waiting_reads[group]
            waiting.extend(rd.read_states)
            if waiting:
                self._release_reads(group, waiting, out)
            out.dropped_reads.extend((group, ctx) for ctx in rd.dropped_reads)
            replica.advance(rd)
        return out

    def _release_reads(self, group: GroupId, waiting: list[ReadState], out: DriverOutput) -> None:
        applied = self._applied[group]
        still: list[ReadState] = []
        for rs in waiting:
            if rs.index <= applied:
                out.read_states.append((group, rs))
            else:
                still.append(rs)
        waiting[:] = still
