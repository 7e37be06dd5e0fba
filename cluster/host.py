"""``NodeHost``: the asyncio runtime of one node, driving every Raft group it hosts.

One task runs the loop. It sleeps until a tick is due, messages arrived or callers queued
proposals or reads, then does one turn for ALL groups:

1. tick every replica if a tick is due (idle groups cost exactly this);
2. step every inbound message;
3. flush queued proposals as ONE ``propose_batch`` per group (many concurrent ``propose()``
   and ``propose_many()`` calls in one turn become one batch: this is where throughput comes
   from; a ``propose_many`` call costs one future and one timeout however many commands it
   carries), and queued reads
   as one ``read_index`` per group;
4. ``NodeDriver.process_ready()`` while there is work (bounded per turn): persist every group,
   ONE fsync, send, apply, advance (the contract of ``cluster.ready``);
5. resolve the futures of applied proposals (matching index AND term), fail those whose entry
   got another term or whose leader stepped down, answer reads, report leadership changes, and
   compact groups whose log grew past the threshold.

Everything that touches a replica, the store or a state machine runs inside that loop task (or,
for ``add_group``/``status``, synchronously between turns): asyncio is single-threaded, so no
locks are needed.

Group commit: each round is ``NodeDriver.persist`` (write every group's Ready into the store),
then the fsync on the node's sync thread (``cluster.syncthread``), then ``NodeDriver.finish``
(send, apply, advance). While the thread is in fsync the event loop keeps accepting RPCs and
peer batches — it only queues them — so the next round carries everything that arrived
meanwhile under one fsync. Without that, the loop blocked in fsync saw one proposal per round
(measured: 1 entry per fsync, ~250 writes/s).
Nothing touches the replicas or the store until the fsync returns; ``stop`` waits for it.
State machines that defer their own commits (``DeferredCommit``) are flushed from the loop
within ``FLUSH_INTERVAL`` of an apply, never in the middle of one.

Snapshots never sit in memory: a state machine writes its snapshot into a scratch file of the
store's directory, the store copies it into a staged snapshot file, and the replica keeps (and
sends chunks from) a view of that file; a follower's replica writes incoming chunks straight into
a staged file (``LogStore.receive_snapshot``), and the state machine restores from a view of it.
Memory per snapshot is one chunk. Nor do they stall the loop: a state machine that can pin its
state (``BackgroundSnapshots``: SQLite, a read transaction on a second connection) is copied on a
worker thread (``cluster.snapshotter``) and the group compacts at the turn after the copy ends.
Only ``BytesSnapshots`` machines, small by design, are still snapshotted inside a turn, and
restoring a leader's snapshot (rare: a follower that fell behind the leader's log) still runs on
the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.config import Config
from cluster.driver import DriverOutput, NodeDriver
from cluster.errors import HostStopped, NotLeader, RaftError
from cluster.messages import Entry, Message, Snapshot, SnapshotMeta
from cluster.raft import Replica
from cluster.ready import Role
from cluster.snapshotter import BackgroundSnapshotter, TakenSnapshot, take_snapshot
from cluster.statemachine import (
    BackgroundSnapshots,
    DeferredCommit,
    GroupStateMachine,
)
from cluster.storage import LogStore
from cluster.syncthread import SyncThread
from cluster.transport import Transport
from cluster.types import NO_NODE, GroupId, NodeId
from cluster.waiters import GroupWaiters

log = logging.getLogger(__name__)

DEFAULT_COMPACT_AFTER = 10_000
"""Applied entries since the last snapshot after which a group takes a new one."""
MAX_ROUNDS_PER_TURN = 8
"""``process_ready`` rounds in one turn before the loop yields to inbound I/O."""
FLUSH_INTERVAL = 0.01
"""Seconds a ``DeferredCommit`` state machine may hold applied effects uncommitted."""
DEFAULT_INBOX_LIMIT = 200_000
"""Inbound messages waiting for the loop beyond which new ones are dropped (and counted)."""

_HOST_KEYS = frozenset(f.name for f in dataclasses.fields(Config)) - {
    "node_id",
    "group",
    "voters",
}


class UnknownGroup(RaftError):
    """This node does not host the group (a routing error: the caller's map is stale)."""

    def __init__(self, group: GroupId) -> None:
        super().__init__(f"group {group} is not hosted on this node")
        self.group = group


LeadershipCallback = Callable[[GroupId, NodeId, int], None]
"""``callback(group, leader, term)``; ``leader`` is ``NO_NODE`` while there is none."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One group as this node sees it. ``match`` is filled on the leader only: the last index
    each follower is known to hold (``commit - match`` is its lag)."""

    group: GroupId
    role: Role
    term: int
    leader: NodeId
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    match: Mapping[NodeId, int]


@dataclass(frozen=True, slots=True)
class HostStats:
    """Counters for status pages and benchmarks."""

    turns: int
    ready_rounds: int
    syncs: int
    proposals: int
    proposal_batches: int
    applied_entries: int
    inbound_messages: int
    inbound_dropped: int
    unknown_group_messages: int
    snapshots_taken: int


class _Group:
    """What the host keeps per hosted group besides the replica itself."""

    __slots__ = (
        "deferred",
        "id",
        "replica",
        "reported",
        "sm",
        "snapshot_index",
        "voters",
        "waiters",
    )

    def __init__(
        self, group: GroupId, replica: Replica, sm: GroupStateMachine, voters: tuple[NodeId, ...]
    ) -> None:
        self.id = group
        self.replica = replica
        self.sm = sm
        self.deferred = sm if isinstance(sm, DeferredCommit) else None
        self.voters = voters
        self.waiters = GroupWaiters(group)
        meta = replica.snapshot_meta
        self.snapshot_index = meta.index if meta is not None else 0
        self.reported = (NO_NODE, replica.term)


class _Applier:
    """The driver's ``StateMachine``: routes each group's entries to its own state machine and
    captures the per-entry results for the host's pending proposals (the driver itself only
    applies)."""

    def __init__(self, host: NodeHost) -> None:
        self._host = host

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        self._host._apply(group, entries)

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        self._host._restore(group, snapshot)


class NodeHost:
    """Hosts replicas of many groups on one node; see the module docstring for the loop.

    ``store`` and ``transport`` are owned by the host from then on: ``stop()`` closes both.
    State machines are not: whoever created them closes them after ``stop()``. Inbound Raft
    messages arrive through ``deliver`` (pass the host to ``transport.add_transport_servicer``).
    """

    def __init__(
        self,
        node_id: NodeId,
        store: LogStore,
        transport: Transport,
        *,
        tick_interval: float = 0.05,
        config_defaults: Mapping[str, int | bool] | None = None,
        rng_seed: int | None = None,
        compact_after: int = DEFAULT_COMPACT_AFTER,
        inbox_limit: int = DEFAULT_INBOX_LIMIT,
    ) -> None:
        if tick_interval <= 0 or compact_after < 1 or inbox_limit < 1:
            raise ValueError("tick_interval, compact_after and inbox_limit must be positive")
        unknown = set(config_defaults or ()) - _HOST_KEYS
        if unknown:
            raise ValueError(
                f"unknown config_defaults {sorted(unknown)}; known: {sorted(_HOST_KEYS)}"
            )
        self.node_id = node_id
        self._store = store
        self._transport = transport
        self._tick_interval = tick_interval
        # Any: mypy's dataclass plugin types every field of Config.replace; keys are checked above.
        self._config_defaults: dict[str, Any] = dict(config_defaults or {})
        self._rng_seed = rng_seed
        self._compact_after = compact_after
        self._inbox_limit = inbox_limit
        self._groups: dict[GroupId, _Group] = {}
        self._driver = NodeDriver(node_id, store, _Applier(self))
        self._callbacks: list[LeadershipCallback] = []
        # Loop state.
        self._inbox: list[Message] = []
        self._proposing: set[GroupId] = set()
        self._reading: set[GroupId] = set()
        self._applied_now: set[GroupId] = set()
        self._wake = asyncio.Event()
        self._tick_due = False
        self._next_tick = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._failure: BaseException | None = None
        self._syncing: asyncio.Future[None] | None = None
        self._syncer = SyncThread(store.sync, name=f"raft-fsync-{node_id}")
        self._snapshotter = BackgroundSnapshotter(store, self._wake.set)
        self._unflushed: set[GroupId] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_due = False
        self._read_seq = 0
        # Read contexts must not repeat across restarts: a leader's late answer to a read of
        # this node's previous life must not complete a new read with the same number.
        self._read_prefix = os.urandom(8)
        # Counters.
        self._turns = 0
        self._rounds = 0
        self._syncs = 0
        self._proposals = 0
        self._proposal_batches = 0
        self._applied_entries = 0
        self._inbound = 0
        self._inbound_dropped = 0
        self._snapshots = 0

    # ---- set-up ------------------------------------------------------------------------------

    def add_group(
        self, group: GroupId, voters: Sequence[NodeId], state_machine: GroupStateMachine
    ) -> None:
        """Host this node's replica of ``group``, restarting from what the store and the state
        machine hold. May be called before or after ``start()``."""
        if group in self._groups:
            raise ValueError(f"group {group} is already hosted on node {self.node_id}")
        voters = tuple(voters)
        self._store.ensure_group(group, voters)
        stored = self._store.load(group)
        applied = state_machine.applied_index()
        if stored.snapshot is not None and applied < stored.snapshot.meta.index:
            # The log no longer holds the entries between the state machine and the snapshot
            # (a local snapshot was taken, then the state machine lost its newest writes, or a
            # leader's snapshot was persisted but not yet restored): start from the snapshot.
            state_machine.restore(stored.snapshot)
            applied = state_machine.applied_index()
        if applied > stored.hard_state.commit:
            log.warning(
                "node %s group %s: state machine is at %s, beyond the stored commit index %s "
                "(log written without fsync?)",
                self.node_id,
                group,
                applied,
                stored.hard_state.commit,
            )
        config = dataclasses.replace(
            Config(node_id=self.node_id, group=group, voters=voters), **self._config_defaults
        )
        rng = random.Random(
            None if self._rng_seed is None else f"{self._rng_seed}/{self.node_id}/{group}"
        )
        sink = functools.partial(self._store.receive_snapshot, group)
        replica = Replica(config, rng, stored, applied=applied, snapshot_sink=sink)
        self._driver.add(replica)
        self._groups[group] = _Group(group, replica, state_machine, voters)
        self._wake.set()

    def on_leadership(self, callback: LeadershipCallback) -> None:
        """Call ``callback(group, leader, term)`` whenever a group's known leader or term
        changes (from the loop; it must not block, and exceptions are logged, not raised)."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Start the transport and the loop. Idempotent."""
        if self._running:
            return
        if self._failure is not None:
            raise HostStopped("this host was stopped; create a new one") from self._failure
        self._running = True
        await self._transport.start()
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + self._tick_interval
        self._tick_handle = loop.call_at(self._next_tick, self._on_tick)
        self._task = loop.create_task(self._run(), name=f"raft-host-{self.node_id}")

    async def stop(self) -> None:
        """Stop the loop, fail every waiting request with HostStopped, close the transport and
        the store (which syncs it). Idempotent."""
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        task, self._task = self._task, None
        self._running = False
        if self._failure is None:
            self._failure = HostStopped(f"node host {self.node_id} stopped")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._syncing is not None:
            # The loop was cancelled while the sync thread was in fsync: let it finish before
            # the store is closed under it.
            with contextlib.suppress(Exception):
                await self._syncing
            self._syncing = None
        self._syncer.close()
        with contextlib.suppress(Exception):  # their owners close (and flush) them anyway
            self._flush()
        self._fail_everything(f"node host {self.node_id} stopped")
        await self._snapshotter.close()  # copies on worker threads write into the store's dir
        try:
            await self._transport.close()
        finally:
            self._store.close()

    # ---- requests ----------------------------------------------------------------------------

    async def propose(self, group: GroupId, data: bytes, timeout: float) -> object:
        """Replicate ``data`` in ``group`` and return what its state machine's ``apply`` made of
        it on this node. Raises NotLeader (with a hint) at once if this node does not lead the
        group, ProposalDropped if the leader refuses load for now, ProposalLost if the entry
        will not be confirmed here, TimeoutError past ``timeout`` seconds (the outcome is then
        unknown), UnknownGroup, HostStopped."""
        return (await self.propose_many(group, (data,), timeout))[0]

    async def propose_many(
        self, group: GroupId, data: Sequence[bytes], timeout: float
    ) -> list[object]:
        """Replicate every command of ``data`` in ``group``, as consecutive entries in this
        order, and return their results in the same order — like ``propose`` for each, but
        with one future and one timeout for the lot, which is what a batch of a hundred
        commands should cost. All or nothing for the caller: if any entry is lost or the
        timeout passes, the call raises as ``propose`` does, and the outcome of each entry is
        unknown (some may have been applied; the commands must be idempotent to retry)."""
        g = self._hosted(group)
        self._check_running()
        replica = g.replica
        if replica.role is not Role.LEADER:
            raise NotLeader(replica.leader)
        if not data:
            return []
        future = g.waiters.add_proposal(list(data))
        self._proposing.add(group)
        self._wake.set()
        async with asyncio.timeout(timeout):
            return await future

    async def read_index(self, group: GroupId, timeout: float) -> None:
        """Return once a linearizable read of ``group`` may be served from this node's state
        machine (ReadIndex: the leader confirmed its leadership after the read began and this
        node applied at least the commit index it had then). Works on followers too (the
        leader is asked). Raises NotLeader when no leader is known, TimeoutError, UnknownGroup,
        HostStopped."""
        g = self._hosted(group)
        self._check_running()
        future = g.waiters.add_read()
        self._reading.add(group)
        self._wake.set()
        async with asyncio.timeout(timeout):
            await future

    def deliver(self, messages: Sequence[Message]) -> None:
        """Inbound messages from the transport; they are stepped at the next turn. Messages
        that arrive before ``start()`` wait; after ``stop()`` (or past the inbox limit) they
        are dropped and counted, as the network might have."""
        if self._failure is not None or len(self._inbox) >= self._inbox_limit:
            self._inbound_dropped += len(messages)
            return
        self._inbox.extend(messages)
        self._inbound += len(messages)
        self._wake.set()

    def campaign(self, group: GroupId) -> None:
        """Start an election for ``group`` now instead of after an election timeout (used for
        a brand-new group, so the first leaders appear at once and spread over the nodes).
        Safe at any time: it is what a timeout would do; pre-vote keeps it from disrupting a
        healthy leader."""
        self._hosted(group).replica.campaign()
        self._wake.set()

    # ---- observation -------------------------------------------------------------------------

    def leader(self, group: GroupId) -> NodeId:
        """The leader this node knows for ``group`` (``NO_NODE`` if unknown)."""
        return self._hosted(group).replica.leader

    def groups(self) -> list[GroupId]:
        return sorted(self._groups)

    def status(self) -> list[GroupStatus]:
        return [self.group_status(group) for group in sorted(self._groups)]

    def group_status(self, group: GroupId) -> GroupStatus:
        g = self._hosted(group)
        st = g.replica.status()
        match = {n: p.match for n, p in st.progress.items() if n != self.node_id}
        return GroupStatus(
            group=group,
            role=st.role,
            term=st.term,
            leader=st.leader,
            commit=st.commit,
            applied=self._driver.applied_index(group),
            last_index=st.last_index,
            snapshot_index=g.snapshot_index,
            match=match,
        )

    def stats(self) -> HostStats:
        return HostStats(
            turns=self._turns,
            ready_rounds=self._rounds,
            syncs=self._syncs,
            proposals=self._proposals,
            proposal_batches=self._proposal_batches,
            applied_entries=self._applied_entries,
            inbound_messages=self._inbound,
            inbound_dropped=self._inbound_dropped,
            unknown_group_messages=self._driver.unknown_group_messages,
            snapshots_taken=self._snapshots,
        )

    @property
    def running(self) -> bool:
        return self._running

    # ---- the loop ----------------------------------------------------------------------------

    def _on_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick_due = True
        self._wake.set()
        self._next_tick += self._tick_interval
        now = loop.time()
        if self._next_tick <= now:  # the loop lagged: skip missed ticks rather than burst them
            self._next_tick = now + self._tick_interval
        self._tick_handle = loop.call_at(self._next_tick, self._on_tick)

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                # Let every callback that is already runnable (RPCs the gRPC poller handed
                # over, other streams' batches) queue its work first: one turn then carries
                # them all, in one propose_batch per group and one fsync.
                await asyncio.sleep(0)
                self._wake.clear()
                await self._turn()
        except Exception as exc:
            # A node whose storage (or anything else) failed mid-turn must not go on: it could
            # acknowledge what is not durable. Stop here, loudly.
            log.critical("node host %s stopped by an error", self.node_id, exc_info=True)
            self._failure = exc
            self._running = False
            if self._tick_handle is not None:
                self._tick_handle.cancel()
                self._tick_handle = None
            self._fail_everything(f"node host {self.node_id} failed: {exc}")

    async def _turn(self) -> None:
        self._turns += 1
        driver = self._driver
        if self._flush_due:
            self._flush()
        taken = self._snapshotter.take_done()
        if taken:
            self._compact_with(taken)
        if self._tick_due:
            self._tick_due = False
            driver.tick()
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for msg in inbox:
                driver.step(msg)
        if self._proposing:
            self._flush_proposals()
        if self._reading:
            self._flush_reads()
        rounds = 0
        while rounds < MAX_ROUNDS_PER_TURN and driver.has_ready():
            pending = driver.persist()
            if pending.early:
                # A leader's appends travel while its own fsync runs (cluster.ready).
                self._transport.send(pending.early)
                pending.early = []
            if pending.must_sync:
                # fsync on the sync thread: meanwhile the loop keeps taking requests and
                # messages (queued, not stepped), so the next round carries all of them under
                # one fsync. Nothing touches the replicas or the store until it returns.
                self._syncing = self._syncer.run()
                await asyncio.shield(self._syncing)
                self._syncing = None
            out = driver.finish(pending)
            rounds += 1
            self._after_round(out)
        if rounds:
            self._rounds += rounds
            self._check_groups()
            if rounds == MAX_ROUNDS_PER_TURN and driver.has_ready():
                self._wake.set()  # more to do: come back after letting I/O in
        if self._applied_now:
            self._maybe_compact()

    def _flush_proposals(self) -> None:
        for group in self._proposing:
            g = self._groups[group]
            proposed = g.waiters.flush_proposals(g.replica)
            if proposed:
                self._proposals += proposed
                self._proposal_batches += 1
        self._proposing.clear()

    def _flush_reads(self) -> None:
        for group in self._reading:
            g = self._groups[group]
            ctx = self._read_prefix + (self._read_seq + 1).to_bytes(8, "big")
            if g.waiters.start_reads(g.replica, ctx):  # one round serves every queued read
                self._read_seq += 1
        self._reading.clear()

    def _after_round(self, out: DriverOutput) -> None:
        if out.messages:
            self._transport.send(out.messages)
        if out.synced:
            self._syncs += 1
        self._applied_entries += out.applied
        for group, rs in out.read_states:
            self._groups[group].waiters.read_ready(rs.context)
        for group, ctx in out.dropped_reads:
            g = self._groups[group]
            g.waiters.read_dropped(ctx, g.replica.leader)

    def _check_groups(self) -> None:
        """After a turn with work: fail proposals whose leadership is gone, report leader or
        term changes. A plain attribute comparison per group, only on turns that did work."""
        for g in self._groups.values():
            replica = g.replica
            if g.waiters.has_pending and replica.role is not Role.LEADER:
                g.waiters.fail_pending(f"node {self.node_id} is no longer the leader")
            now = (replica.leader, replica.term)
            if now != g.reported:
                g.reported = now
                for callback in self._callbacks:
                    try:
                        callback(g.id, now[0], now[1])
                    except Exception:
                        log.exception("leadership callback failed for group %s", g.id)

    def _maybe_compact(self) -> None:
        groups, self._applied_now = self._applied_now, set()
        for group in groups:
            g = self._groups[group]
            applied = self._driver.applied_index(group)
            if applied - g.snapshot_index < self._compact_after or self._snapshotter.busy(group):
                continue
            term = g.replica.term_at(applied)
            if term is None:
                continue
            meta = SnapshotMeta(applied, term, g.voters)
            if isinstance(g.sm, BackgroundSnapshots):
                self._snapshotter.start(group, g.sm, meta)  # compacts in a later turn
                continue
            self._driver.compact(group, take_snapshot(self._store, group, g.sm, meta))
            g.snapshot_index = applied
            self._snapshots += 1

    def _compact_with(self, taken: list[TakenSnapshot]) -> None:
        """Compact with the snapshots finished on worker threads, unless a newer one (a
        leader's, restored meanwhile) got there first."""
        for t in taken:
            g = self._groups[t.group]
            if t.meta.index <= g.snapshot_index:
                t.discard()
                continue
            self._driver.compact(t.group, t.snapshot())
            g.snapshot_index = t.meta.index
            self._snapshots += 1

    # ---- the driver's state machine ----------------------------------------------------------

    def _apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        g = self._groups[group]
        results = g.sm.apply(entries)
        if len(results) != len(entries):
            raise RuntimeError(
                f"group {group}: the state machine returned {len(results)} results for "
                f"{len(entries)} entries"
            )
        self._applied_now.add(group)
        if g.deferred is not None:
            self._unflushed.add(group)
            if self._flush_handle is None:
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_later(FLUSH_INTERVAL, self._on_flush_due)
        g.waiters.applied(entries, results)

    def _on_flush_due(self) -> None:
        self._flush_due = True
        self._wake.set()

    def _flush(self) -> None:
        """Commit every deferred state machine applied to since the last flush."""
        self._flush_due = False
        self._flush_handle = None
        groups, self._unflushed = self._unflushed, set()
        for group in groups:
            deferred = self._groups[group].deferred
            if deferred is not None:
                deferred.flush()

    def _restore(self, group: GroupId, snapshot: Snapshot) -> None:
        g = self._groups[group]
        g.sm.restore(snapshot)
        g.snapshot_index = snapshot.meta.index
        g.waiters.fail_pending(f"group {group}: a leader's snapshot replaced this node's log")

    # ---- helpers -----------------------------------------------------------------------------

    def _hosted(self, group: GroupId) -> _Group:
        g = self._groups.get(group)
        if g is None:
            raise UnknownGroup(group)
        return g

    def _check_running(self) -> None:
        if not self._running:
            raise HostStopped(f"node host {self.node_id} is not running") from self._failure

    def _fail_everything(self, why: str) -> None:
        for g in self._groups.values():
            g.waiters.fail_all(why)
