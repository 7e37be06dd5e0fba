"""What a leader knows about each follower: how far it matches, what to send next, how much is
in flight. Three states, as in etcd-io/raft:

* PROBE — we do not know where the follower's log matches; send one append and wait.
* REPLICATE — it matches; stream appends optimistically, up to ``max_inflight`` unacknowledged.
* SNAPSHOT — it needs entries we compacted; send a snapshot chunk by chunk, one chunk in flight.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


STALL_HEARTBEATS = 2
"""Answers to heartbeats sent *after* our latest append or chunk, without any progress, after
which that data is presumed lost and resent. Heartbeats sent before it prove nothing."""


class Progress:
    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.inflight: deque[int] = deque()  # last index carried by each unacknowledged append
        self.max_inflight = max_inflight
        self.pending_snapshot = 0  # index of the snapshot being sent
        self.snapshot_offset = 0  # bytes of it the follower confirmed
        self.acked_round = 0  # newest heartbeat round this follower answered
        self.sent_round = 0  # heartbeat round current when we last sent it data
        self.sent_commit = 0  # commit index carried by the last append we sent it
        self.stalled = 0  # answers to heartbeats sent after our last data, with no progress

    @property
    def paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True  # SNAPSHOT: chunks are paced by acknowledgements, not by send_append

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_offset = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.stalled = 0

    def maybe_update(self, index: int) -> bool:
        """An append up to ``index`` was accepted; False when that is old news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
            self.stalled = 0
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """An append whose previous entry was ``rejected`` failed; ``hint`` is where the leader's
        log and the follower's hint agree. False when the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last: int) -> None:
        """Book an append carrying entries up to ``last``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    inflight: int
