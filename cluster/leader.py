"""The leader's half of a replica: replication, flow control, commit, heartbeats, ReadIndex.

``Replica`` (cluster.raft) inherits these handlers; they run only while it leads. They are kept
apart because they are the larger half of the protocol and read best on their own: how a leader
feeds each follower (PROBE / REPLICATE / SNAPSHOT, see cluster.progress), when an entry commits
(Figure 8: only by counting entries of the leader's own term), and how a read is confirmed (one
heartbeat round answered by a quorum, see cluster.readonly). The attributes declared below are
the replica state these handlers share with the rest of ``Replica``.
"""

from __future__ import annotations

from typing import TypedDict

from cluster.config import Config
from cluster.log import RaftLog
from cluster.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotAck,
    SnapshotChunk,
    TimeoutNow,
    entries_size,
)
from cluster.progress import STALL_HEARTBEATS, Progress, ProgressState
from cluster.quorum import committed_index
from cluster.readonly import ReadOnlyQueue
from cluster.ready import ReadState
from cluster.snapshot import cut_chunk
from cluster.types import NO_NODE, GroupId, NodeId


class Header(TypedDict):
    """The fields every message starts with (see ``RaftMessage``)."""

    group: GroupId
    sender: NodeId
    to: NodeId
    term: int


class LeaderRole:
    config: Config
    term: int
    _log: RaftLog
    _voters: tuple[NodeId, ...]
    _quorum: int
    _progress: dict[NodeId, Progress]
    _heartbeat_elapsed: int
    _election_elapsed: int
    _transferee: NodeId
    _transfer_elapsed: int
    _uncommitted_bytes: int
    _reads: ReadOnlyQueue
    _reads_before_commit: list[tuple[bytes, NodeId]]
    _round: int
    _commit_to_broadcast: bool
    _read_round_pending: bool
    _read_states: list[ReadState]

    @property
    def id(self) -> NodeId:
        return self.config.node_id

    # Provided by Replica.
    def _become_follower(self, term: int, leader: NodeId) -> None:
        raise NotImplementedError

    def _hdr(self, to: NodeId) -> Header:
        raise NotImplementedError

    def _send(self, msg: Message) -> None:
        raise NotImplementedError

    # ---- leader ----------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee != NO_NODE:
            # Its own clock: restarting a transfer must not postpone the check-quorum below.
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self._transferee = NO_NODE  # it did not finish in time: abandoned
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NO_NODE)
                return
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = 0
        for node, pr in self._progress.items():
            if node == self.id or pr.recent_active:
                active += 1
            pr.recent_active = False
        return active >= self._quorum

    def _step_leader(self, msg: Message) -> None:
        pr = self._progress.get(msg.sender)
        if pr is None:
            return
        if isinstance(msg, AppendResponse):
            pr.recent_active = True
            self._handle_append_response(msg, pr)
        elif isinstance(msg, HeartbeatResponse):
            pr.recent_active = True
            self._handle_heartbeat_response(msg, pr)
        elif isinstance(msg, SnapshotAck):
            pr.recent_active = True
            if (
                pr.state is ProgressState.SNAPSHOT
                and self._log.snapshot is not None
                and pr.pending_snapshot == msg.snapshot_index == self._log.snapshot.meta.index
            ):
                # Only forward progress sends the next chunk at once: answering every ack
                # would let duplicated acks multiply the chunks in flight. A lower offset (a
                # stale ack, or a follower that lost its partial copy) is remembered, and the
                # stall check resends from there.
                forward = msg.next_offset > pr.snapshot_offset
                pr.snapshot_offset = msg.next_offset
                if forward:
                    pr.stalled = 0
                    self._send_snapshot_chunk(msg.sender, pr)
        elif isinstance(msg, ReadIndexRequest):
            self._leader_read(msg.context, msg.sender)

    def _handle_append_response(self, msg: AppendResponse, pr: Progress) -> None:
        to = msg.sender
        if msg.reject:
            hint = msg.hint_index
            if msg.hint_term > 0:
                hint = self._log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            if pr.maybe_decrease(msg.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(to, allow_empty=True)
            return
        if not pr.maybe_update(msg.index):
            return
        if pr.state is ProgressState.PROBE or (
            pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self._log.first_index
        ):
            pr.become_replicate()
        if self._maybe_commit():
            # Many acks in one round advance the commit index many times; tell followers
            # once, when the Ready is built.
            self._commit_to_broadcast = True
        self._send_all_appends(to)
        if to == self._transferee and pr.match == self._log.last_index:
            self._send(TimeoutNow(**self._hdr(to)))

    def _handle_heartbeat_response(self, msg: HeartbeatResponse, pr: Progress) -> None:
        if msg.round > pr.acked_round:
            pr.acked_round = msg.round
            self._release_reads()
        if pr.state is ProgressState.PROBE:
            if pr.match < self._log.last_index:
                pr.probe_sent = False
                self._send_append(msg.sender, allow_empty=True)
            return
        waiting = pr.state is ProgressState.SNAPSHOT or pr.match < self._log.last_index
        if not waiting or msg.round <= pr.sent_round:
            return  # nothing outstanding, or this heartbeat left before our data did
        pr.stalled += 1
        if pr.stalled < STALL_HEARTBEATS:
            return
        pr.stalled = 0
        if pr.state is ProgressState.SNAPSHOT:
            self._send_snapshot_chunk(msg.sender, pr)  # the chunk or its ack was lost
        else:
            pr.become_probe()  # appends were lost: probe from the known match again
            self._send_append(msg.sender, allow_empty=True)

    def _maybe_commit(self) -> bool:
        index = committed_index(self._voters, {n: p.match for n, p in self._progress.items()})
        if index <= self._log.committed or self._log.term_at(index) != self.term:
            return False  # Figure 8: only entries of our own term commit by counting
        old = self._log.committed
        self._log.commit_to(index)
        newly = self._log.entries(old + 1, index + 1)
        self._uncommitted_bytes = max(0, self._uncommitted_bytes - entries_size(newly))
        if self._reads_before_commit:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)
        return True

    def _broadcast_append(self) -> None:
        for node in self._voters:
            if node != self.id:
                self._send_all_appends(node)

    def _broadcast_commit(self) -> None:
        self._commit_to_broadcast = False
        for node, pr in self._progress.items():
            if node != self.id and pr.sent_commit < self._log.committed:
                self._send_append(node, allow_empty=True)

    def _send_all_appends(self, to: NodeId) -> None:
        """Send every new entry the follower's window allows."""
        pr = self._progress[to]
        while self._send_append(to) and pr.state is ProgressState.REPLICATE:
            pass

    def _send_append(self, to: NodeId, *, allow_empty: bool = False) -> bool:
        """One append from the follower's next index (a snapshot if that is compacted).
        Empty appends carry only the commit index or probe for a match."""
        pr = self._progress[to]
        if pr.paused:
            return False
        prev_index = pr.next - 1
        prev_term = self._log.term_at(prev_index)
        if prev_term is None:
            return self._start_snapshot(to, pr)
        entries = self._log.entries(pr.next, self._log.last_index + 1, self.config.max_msg_bytes)
        if not entries and not allow_empty:
            return False
        self._send(
            AppendRequest(
                **self._hdr(to),
                prev_log_index=prev_index,
                prev_log_term=prev_term,
                entries=tuple(entries),
                leader_commit=self._log.committed,
            )
        )
        pr.sent_commit = self._log.committed
        pr.sent_round = self._round
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _start_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snapshot = self._log.snapshot
        if snapshot is None:
            return False
        pr.become_snapshot(snapshot.meta.index)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: NodeId, pr: Progress) -> None:
        snapshot = self._log.snapshot
        if snapshot is None or snapshot.meta.index != pr.pending_snapshot:
            pr.become_probe()  # our snapshot moved on; probe again and start the newer one
            return
        pr.sent_round = self._round
        offset, chunk, done = cut_chunk(
            snapshot, pr.snapshot_offset, self.config.snapshot_chunk_bytes
        )
        self._send(
            SnapshotChunk(
                **self._hdr(to),
                meta=snapshot.meta,
                offset=offset,
                data=chunk,
                total_size=len(snapshot.content),
                done=done,
            )
        )

    def _broadcast_heartbeat(self) -> None:
        self._read_round_pending = False
        self._round += 1
        for node, pr in self._progress.items():
            if node != self.id:
                self._send(
                    Heartbeat(
                        **self._hdr(node),
                        commit=min(pr.match, self._log.committed),
                        round=self._round,
                    )
                )

    # ---- ReadIndex -------------------------------------------------------------------------

    def _leader_read(self, context: bytes, requester: NodeId) -> None:
        if self._log.term_at(self._log.committed) != self.term:
            # Until an entry of our term commits we do not know the true commit index.
            self._reads_before_commit.append((context, requester))
            return
        if len(self._voters) == 1:
            self._answer_read(context, self._log.committed, requester)
            return
        # Every read that arrives before the next Ready waits for the same round: one
        # heartbeat broadcast, sent when the Ready is built, confirms them all.
        self._reads.add(context, self._log.committed, requester, self._round + 1)
        self._read_round_pending = True

    def _release_reads(self) -> None:
        rounds = [self._round if n == self.id else p.acked_round for n, p in self._progress.items()]
        confirmed = sorted(rounds, reverse=True)[self._quorum - 1]
        for read in self._reads.release(confirmed):
            self._answer_read(read.context, read.index, read.requester)

    def _answer_read(self, context: bytes, index: int, requester: NodeId) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(context, index))
        else:
            self._send(ReadIndexResponse(**self._hdr(requester), context=context, index=index))
