"""One Raft replica as a deterministic state machine (sans-I/O, after etcd-io/raft).

The runtime feeds it ``tick()``, ``step(message)``, ``propose(...)``, ``read_index(...)`` and
``transfer_leader(...)``; it answers through ``ready()`` (see ``cluster.ready`` for the rule of
persisting before sending) and learns what was done through ``advance()``. There is no clock, no
socket and no unseeded randomness here, so a simulation can replay any schedule from a seed.

Roles change only in ``_become_follower`` / ``_become_pre_candidate`` / ``_become_candidate`` /
``_become_leader``; each role has its own step handler. Rules implemented: randomized election
timeout, pre-vote, check-quorum with follower leases, a no-op entry on election, commit by counting
current-term entries only (Figure 8), fast backtracking with conflict hints, batched appends with a
byte cap, pipelining with an in-flight window, a cap on uncommitted bytes, chunked InstallSnapshot,
ReadIndex and leadership transfer (TimeoutNow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.config import Config
from cluster.errors import NotLeader, ProposalDropped
from cluster.leader import Header, LeaderRole
from cluster.log import RaftLog
from cluster.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotAck,
    SnapshotChunk,
    SnapshotMeta,
    StoredState,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from cluster.progress import Progress, ProgressStatus
from cluster.quorum import VoteResult, majority, vote_result
from cluster.readonly import ReadOnlyQueue
from cluster.ready import ReadState, Ready, Role, SoftState
from cluster.snapshot import SinkFactory, SnapshotReceiver
from cluster.types import NO_NODE, GroupId, NodeId

if TYPE_CHECKING:
    import random


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    group: GroupId
    term: int
    role: Role
    leader: NodeId
    commit: int
    applied: int
    last_index: int
    progress: dict[NodeId, ProgressStatus]


class Replica(LeaderRole):
    def __init__(
        self,
        config: Config,
        rng: random.Random,
        stored: StoredState | None = None,
        applied: int = 0,
        snapshot_sink: SinkFactory | None = None,
    ) -> None:
        stored = stored or StoredState()
        self.config = config
        self._rng = rng
        self._voters = config.voters
        self._quorum = majority(len(config.voters))
        self._log = RaftLog(stored, applied)
        hs = stored.hard_state
        self.term = hs.term
        self.voted_for = hs.voted_for
        self.role = Role.FOLLOWER
        self.leader = NO_NODE
        self._prev_hard_state = HardState(hs.term, hs.voted_for, self._log.committed)
        self._prev_soft_state = SoftState()
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._ready_outstanding = False
        # Timers (in ticks).
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        # Election state.
        self._votes: dict[NodeId, bool] = {}
        # Leader state.
        self._progress: dict[NodeId, Progress] = {}
        self._uncommitted_bytes = 0
        self._transferee = NO_NODE
        self._transfer_elapsed = 0
        self._reads = ReadOnlyQueue()
        self._reads_before_commit: list[tuple[bytes, NodeId]] = []
        self._round = 0  # heartbeat rounds sent in this term as leader
        self._commit_to_broadcast = False
        self._read_round_pending = False
        self._transfer_elapsed = 0
        # Follower state.
        self._incoming = SnapshotReceiver(snapshot_sink)  # chunks go to memory unless told
        self._reset_timeout()

    # ---- read-only properties ------------------------------------------------------------

    @property
    def group(self) -> GroupId:
        return self.config.group

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def first_index(self) -> int:
        return self._log.first_index

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._log.snapshot.meta if self._log.snapshot else None

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._log.entries(lo, hi)

    def term_at(self, index: int) -> int | None:
        return self._log.term_at(index)

    def status(self) -> Status:
        progress = {
            node: ProgressStatus(pr.match, pr.next, pr.state, len(pr.inflight))
            for node, pr in self._progress.items()
        }
        return Status(
            self.id,
            self.group,
            self.term,
            self.role,
            self.leader,
            self._log.committed,
            self._log.applied,
            self._log.last_index,
            progress,
        )

    # ---- inputs --------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self.campaign()

    def campaign(self) -> None:
        """Start an election now (through pre-vote when enabled)."""
        if self.role is Role.LEADER:
            return
        if self._log.pending_snapshot is not None:
            return  # a snapshot is being installed; our log is not settled yet
        if self.config.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append one command; returns its index. Raises NotLeader or ProposalDropped."""
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Append several commands as consecutive entries; returns the first index."""
        if not datas:
            raise ValueError("propose_batch needs at least one command")
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee != NO_NODE:
            raise ProposalDropped(f"leadership is being transferred to {self._transferee}")
        size = sum(map(len, datas))
        cap = self.config.max_uncommitted_bytes
        if cap and self._uncommitted_bytes > 0 and self._uncommitted_bytes + size > cap:
            raise ProposalDropped(
                f"{self._uncommitted_bytes} bytes are uncommitted (cap {cap}); retry later"
            )
        first = self._log.last_index + 1
        term = self.term
        self._log.append([Entry(term, first + i, d) for i, d in enumerate(datas)])
        self._uncommitted_bytes += size
        self._broadcast_append()
        return first

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState (or a dropped read).

        On a follower the request is forwarded to the leader it knows, and nothing is kept here:
        if that leader is gone or the message is lost, no answer ever comes. The runtime must
        put a deadline on every read (as it does on every proposal) and retry elsewhere."""
        if self.role is Role.LEADER:
            self._leader_read(context, self.id)
        elif self.role is Role.FOLLOWER and self.leader != NO_NODE:
            self._send(ReadIndexRequest(**self._hdr(self.leader), context=context))
        else:
            self._dropped_reads.append(context)

    def transfer_leader(self, to: NodeId) -> None:
        """Hand leadership to ``to`` once it has our whole log (TimeoutNow)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to not in self._voters:
            raise ValueError(f"{to} is not a voter of group {self.group}")
        if to == self.id or to == self._transferee:
            return
        self._transferee = to
        self._transfer_elapsed = 0  # the transfer must finish within one election timeout
        if self._progress[to].match == self._log.last_index:
            self._send(TimeoutNow(**self._hdr(to)))
        else:
            self._send_append(to, allow_empty=True)  # a probe if it has nothing new to send

    def compact(self, snapshot: Snapshot) -> None:
        """The state machine took ``snapshot`` at an applied index: drop the log it covers."""
        self._log.compact(snapshot)

    def step(self, msg: Message) -> None:
        """Handle one message from a peer."""
        if msg.group != self.group or msg.to != self.id or msg.sender not in self._voters:
            return
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                in_lease = (
                    self.config.check_quorum
                    and self.leader != NO_NODE
                    and self._election_elapsed < self.config.election_ticks
                )
                if in_lease and not msg.transfer:
                    return  # we heard from a live leader recently: do not help unseat it
            if isinstance(msg, VoteRequest) and msg.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass  # granted pre-votes carry the term we would campaign in
            elif isinstance(msg, (AppendRequest, Heartbeat, SnapshotChunk)):
                self._become_follower(msg.term, msg.sender)
            else:
                self._become_follower(msg.term, NO_NODE)
        elif msg.term < self.term:
            if isinstance(msg, (AppendRequest, Heartbeat)) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader (e.g. back from a partition) learns our term and steps down;
                # the index means nothing to it, so none is claimed.
                self._send(AppendResponse(**self._hdr(msg.sender), index=0))
            elif isinstance(msg, VoteRequest) and msg.pre_vote:
                self._send(VoteResponse(**self._hdr(msg.sender), granted=False, pre_vote=True))
            return

        if isinstance(msg, VoteRequest):
            self._handle_vote_request(msg)
        elif self.role is Role.LEADER:
            self._step_leader(msg)
        elif self.role is Role.FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_candidate(msg)

    # ---- ready / advance -----------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self._log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def has_ready(self) -> bool:
        return bool(
            self._commit_to_broadcast
            or self._read_round_pending
            or self._msgs
            or self._read_states
            or self._dropped_reads
            or self._hard_state() != self._prev_hard_state
            or self._soft_state() != self._prev_soft_state
            or self._log.pending_snapshot is not None
            or self._log.stable_index < self._log.last_index
            or (self._log.pending_snapshot is None and self._log.applied < self._log.committed)
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply now. Call ``advance`` with it when done."""
        if self._ready_outstanding:
            raise RuntimeError("ready() called again before advance()")
        self._ready_outstanding = True
        if self._commit_to_broadcast:
            self._broadcast_commit()
        if self._read_round_pending:
            self._broadcast_heartbeat()
        hs = self._hard_state()
        ss = self._soft_state()
        entries = tuple(self._log.unstable_entries())
        snapshot = self._log.pending_snapshot
        prev = self._prev_hard_state
        settled = hs.term == prev.term and hs.voted_for == prev.voted_for  # durable already
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(self._msgs),
            committed_entries=tuple(self._log.committed_to_apply()),
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            soft_state=ss if ss != self._prev_soft_state else None,
            must_sync=bool(entries) or snapshot is not None or not settled,
            early_messages=settled and snapshot is None and self.role is Role.LEADER,
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime persisted, sent and applied ``rd``."""
        self._ready_outstanding = False
        if rd.snapshot is not None and rd.snapshot is self._log.pending_snapshot:
            self._log.pending_snapshot = None
            self._log.applied = max(self._log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self._log.applied = max(self._log.applied, rd.committed_entries[-1].index)
        # As leader, our own copy counts toward the quorum only once it is durable.
        if (
            self.role is Role.LEADER
            and self._progress[self.id].maybe_update(self._log.stable_index)
            and self._maybe_commit()
        ):
            self._commit_to_broadcast = True

    # ---- role transitions ------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = NO_NODE
        self.leader = NO_NODE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_timeout()
        self._votes = {}
        self._transferee = NO_NODE
        self._uncommitted_bytes = 0
        for read in self._reads.drain():
            if read.requester == self.id:
                self._dropped_reads.append(read.context)
        for context, requester in self._reads_before_commit:
            if requester == self.id:
                self._dropped_reads.append(context)
        self._reads = ReadOnlyQueue()
        self._reads_before_commit = []
        self._round = 0
        self._commit_to_broadcast = False
        self._read_round_pending = False
        self._progress = {}

    def _reset_timeout(self) -> None:
        e = self.config.election_ticks
        self._randomized_timeout = self._rng.randrange(e, 2 * e)

    def _become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # Term and vote stay as they are: a failed pre-vote leaves no trace.
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._request_votes(pre_vote=True, transfer=False)

    def _become_candidate(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.voted_for = self.id
        self._request_votes(pre_vote=False, transfer=transfer)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self._log.last_index
        for node in self._voters:
            self._progress[node] = Progress(last + 1, self.config.max_inflight_msgs)
        me = self._progress[self.id]
        me.maybe_update(self._log.stable_index)
        me.become_replicate()
        for pr in self._progress.values():
            pr.recent_active = True  # give everyone one election timeout to show up
        # The no-op lets this leader commit entries of earlier terms by counting (Figure 8).
        self._log.append([Entry(self.term, last + 1, b"", EntryKind.NOOP)])
        self._broadcast_append()

    def _request_votes(self, *, pre_vote: bool, transfer: bool) -> None:
        term = self.term + 1 if pre_vote else self.term
        self._votes[self.id] = True
        if self._tally_votes():
            return
        for node in self._voters:
            if node != self.id:
                self._send(
                    VoteRequest(
                        group=self.group,
                        sender=self.id,
                        to=node,
                        term=term,
                        last_log_index=self._log.last_index,
                        last_log_term=self._log.last_term,
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _tally_votes(self) -> bool:
        """Act on the election outcome; True when it is decided."""
        result = vote_result(self._voters, self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self.term, NO_NODE)
            return True
        return False

    # ---- votes -----------------------------------------------------------------------------

    def _handle_vote_request(self, msg: VoteRequest) -> None:
        can_vote = (
            self.voted_for == msg.sender
            or (self.voted_for == NO_NODE and self.leader == NO_NODE)
            or (msg.pre_vote and msg.term > self.term)
        )
        if can_vote and self._log.is_up_to_date(msg.last_log_index, msg.last_log_term):
            self._send(
                VoteResponse(
                    group=self.group,
                    sender=self.id,
                    to=msg.sender,
                    term=msg.term,
                    granted=True,
                    pre_vote=msg.pre_vote,
                )
            )
            if not msg.pre_vote:
                self._election_elapsed = 0
                self.voted_for = msg.sender
        else:
            self._send(VoteResponse(**self._hdr(msg.sender), granted=False, pre_vote=msg.pre_vote))

    def _step_candidate(self, msg: Message) -> None:
        if isinstance(msg, VoteResponse):
            pre = self.role is Role.PRE_CANDIDATE
            if msg.pre_vote != pre:
                return
            if pre and msg.granted and msg.term != self.term + 1:
                return  # a grant from an earlier pre-vote round, for another term
            self._votes.setdefault(msg.sender, msg.granted)
            self._tally_votes()
        elif isinstance(msg, (AppendRequest, Heartbeat, SnapshotChunk)):
            # Someone won this term (same term: the higher-term case was handled in step()).
            self._become_follower(msg.term, msg.sender)
            self._step_follower(msg)
        elif isinstance(msg, TimeoutNow):
            pass

    # ---- follower --------------------------------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, (AppendRequest, Heartbeat, SnapshotChunk)):
            self._election_elapsed = 0
            self.leader = msg.sender
            if isinstance(msg, AppendRequest):
                self._handle_append(msg)
            elif isinstance(msg, Heartbeat):
                if msg.commit <= self._log.last_index:
                    self._log.commit_to(msg.commit)
                self._send(HeartbeatResponse(**self._hdr(msg.sender), round=msg.round))
            else:
                self._handle_snapshot_chunk(msg)
        elif isinstance(msg, TimeoutNow):
            if self._log.pending_snapshot is None:
                self._become_candidate(transfer=True)
        elif isinstance(msg, ReadIndexResponse):
            self._read_states.append(ReadState(msg.context, msg.index))

    def _handle_append(self, msg: AppendRequest) -> None:
        log = self._log
        prev_index, prev_term, entries = msg.prev_log_index, msg.prev_log_term, msg.entries
        if prev_index < log.committed:
            # Our committed prefix matches the leader's; skip what we already have for sure.
            skip = log.committed - prev_index
            if skip >= len(entries):
                self._send(AppendResponse(**self._hdr(msg.sender), index=log.committed))
                return
            entries = entries[skip:]
            prev_index = log.committed
            prev_term = log.term_at(prev_index) or 0
        if log.matches(prev_index, prev_term):
            last_new = prev_index + len(entries)
            for pos, entry in enumerate(entries):
                if not log.matches(entry.index, entry.term):
                    if entry.index <= log.last_index:
                        self._withdraw_acks(entry.index)
                    log.append(entries[pos:])
                    break
            log.commit_to(min(msg.leader_commit, last_new))
            self._send(AppendResponse(**self._hdr(msg.sender), index=last_new))
            return
        hint = log.find_conflict_by_term(min(prev_index, log.last_index), prev_term)
        self._send(
            AppendResponse(
                **self._hdr(msg.sender),
                index=msg.prev_log_index,
                reject=True,
                hint_index=hint,
                hint_term=log.term_at(hint) or 0,
            )
        )

    def _withdraw_acks(self, index: int) -> None:
        """Our log is about to lose entries from ``index`` on. Acknowledgements of them still in
        the outbox (to an older leader, earlier this round) would go out after the sync that no
        longer holds them: every ack must describe durable state, so take them back."""
        self._msgs = [
            m
            for m in self._msgs
            if not (isinstance(m, AppendResponse) and not m.reject and m.index >= index)
        ]

    def _handle_snapshot_chunk(self, msg: SnapshotChunk) -> None:
        log = self._log
        meta = msg.meta
        if meta.index <= log.committed or log.pending_snapshot is not None:
            # Already have it (or are installing one): tell the leader where we really are.
            self._send(AppendResponse(**self._hdr(msg.sender), index=log.committed))
            return
        result = self._incoming.accept(msg)
        if result.complete is None:
            self._send(
                SnapshotAck(
                    **self._hdr(msg.sender),
                    snapshot_index=meta.index,
                    snapshot_term=meta.term,
                    next_offset=result.next_offset,
                )
            )
            return
        if log.matches(meta.index, meta.term):
            log.commit_to(meta.index)  # our log already holds it: just fast-forward
        else:
            self._withdraw_acks(log.committed + 1)
            log.restore(result.complete)
        self._send(AppendResponse(**self._hdr(msg.sender), index=meta.index))

    # ---- helpers ---------------------------------------------------------------------------

    def _hdr(self, to: NodeId) -> Header:
        return {"group": self.group, "sender": self.id, "to": to, "term": self.term}

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)
