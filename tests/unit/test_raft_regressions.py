"""Regression tests for findings of the core's safety review (each failed before its fix)."""

from __future__ import annotations

import random

from cluster.config import Config
from cluster.messages import (
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
    VoteResponse,
)
from cluster.raft import Replica
from cluster.ready import Role
from cluster.snapshot import SnapshotReceiver
from cluster.types import GroupId, NodeId

G = GroupId(1)
VOTERS = (NodeId(1), NodeId(2), NodeId(3))


def _drain(r: Replica) -> list[object]:
    rd = r.ready()
    r.advance(rd)
    return list(rd.messages)


def _leader() -> Replica:
    """Node 1 as the leader of term 1 with its no-op committed by node 2."""
    r = Replica(Config(NodeId(1), G, VOTERS, pre_vote=False), random.Random(1))
    r.campaign()
    _drain(r)
    r.step(VoteResponse(group=G, sender=NodeId(2), to=NodeId(1), term=1, granted=True))
    assert r.role is Role.LEADER
    _drain(r)
    r.step(AppendResponse(group=G, sender=NodeId(2), to=NodeId(1), term=1, index=1))
    _drain(r)
    assert r.commit_index == 1
    return r


def test_snapshot_chunks_of_two_leaders_never_mix() -> None:
    meta = SnapshotMeta(index=6, term=1, voters=VOTERS)

    def chunk(sender: int, term: int, offset: int, data: bytes, done: bool) -> SnapshotChunk:
        return SnapshotChunk(
            group=G, sender=NodeId(sender), to=NodeId(3), term=term, meta=meta,
            offset=offset, data=data, total_size=12, done=done,
        )  # fmt: skip

    rx = SnapshotReceiver()
    assert rx.accept(chunk(1, 1, 0, b"AAAA", False)).next_offset == 4
    # A new leader (term 2) continues at offset 4 with bytes of its own image: not accepted.
    assert rx.accept(chunk(2, 2, 4, b"BBBB", False)).next_offset == 0
    assert rx.accept(chunk(2, 2, 0, b"BBBB", False)).next_offset == 4
    assert rx.accept(chunk(2, 2, 4, b"BBBB", False)).next_offset == 8
    done = rx.accept(chunk(2, 2, 8, b"BBBB", True)).complete
    assert done == Snapshot(meta, b"B" * 12)


def test_a_stale_pre_vote_grant_does_not_count_in_a_later_round() -> None:
    r = Replica(Config(NodeId(1), G, VOTERS), random.Random(1))
    r.term = 5
    r.campaign()  # pre-vote for term 6
    _drain(r)
    late = VoteResponse(
        group=G, sender=NodeId(2), to=NodeId(1), term=6, granted=True, pre_vote=True
    )
    r.step(Heartbeat(group=G, sender=NodeId(3), to=NodeId(1), term=6, commit=0, round=1))
    for _ in range(40):
        r.tick()
        if r.role is Role.PRE_CANDIDATE:
            break
    assert r.role is Role.PRE_CANDIDATE and r.term == 6  # now asking about term 7
    r.step(late)
    assert r.role is Role.PRE_CANDIDATE and r.term == 6


def test_reads_in_one_turn_share_one_heartbeat_round() -> None:
    r = _leader()
    for i in range(50):
        r.read_index(b"read-%d" % i)
    heartbeats = [m for m in _drain(r) if isinstance(m, Heartbeat)]
    assert len(heartbeats) == 2  # one round to the two followers
    r.step(HeartbeatResponse(group=G, sender=NodeId(2), to=NodeId(1), term=1, round=1))
    rd = r.ready()
    r.advance(rd)
    assert len(rd.read_states) == 50


def test_retrying_a_transfer_does_not_keep_a_cut_off_leader_in_office() -> None:
    r = _leader()
    for tick in range(5 * r.config.election_ticks):
        # A caller that keeps retrying, alternating targets, while nobody answers.
        r.transfer_leader(NodeId(2 + tick % 2))
        r.tick()
        _drain(r)
        if r.role is not Role.LEADER:
            break
    assert r.role is Role.FOLLOWER
