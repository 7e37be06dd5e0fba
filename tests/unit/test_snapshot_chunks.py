"""Chunked InstallSnapshot reassembly under loss, duplication and reordering."""

from __future__ import annotations

import random

import pytest

from cluster.messages import Snapshot, SnapshotChunk, SnapshotData, SnapshotMeta
from cluster.snapshot import MemorySink, SnapshotReceiver, cut_chunk
from cluster.types import GroupId, NodeId

META = SnapshotMeta(index=40, term=3, voters=(NodeId(1), NodeId(2), NodeId(3)))
SNAP = Snapshot(META, bytes(range(256)) * 3)


def _chunk(offset: int, size: int = 50, snap: Snapshot = SNAP) -> SnapshotChunk:
    offset, data, done = cut_chunk(snap, offset, size)
    return SnapshotChunk(
        group=GroupId(1),
        sender=NodeId(1),
        to=NodeId(2),
        term=3,
        meta=snap.meta,
        offset=offset,
        data=data,
        total_size=len(snap.content),
        done=done,
    )


def test_in_order_chunks_rebuild_the_snapshot() -> None:
    rx = SnapshotReceiver()
    offset = 0
    while True:
        result = rx.accept(_chunk(offset))
        if result.complete is not None:
            assert result.complete == SNAP
            return
        assert result.next_offset == offset + 50
        offset = result.next_offset


def test_a_gap_is_answered_with_the_offset_held() -> None:
    rx = SnapshotReceiver()
    assert rx.accept(_chunk(0)).next_offset == 50
    assert rx.accept(_chunk(100)).next_offset == 50  # chunk at 50 was lost
    assert rx.accept(_chunk(0)).next_offset == 50  # a late duplicate of the first one
    assert rx.accept(_chunk(50)).next_offset == 100


def test_a_chunk_of_another_snapshot_does_not_mix_in() -> None:
    rx = SnapshotReceiver()
    rx.accept(_chunk(0))
    other = Snapshot(SnapshotMeta(index=50, term=4), b"z" * 120)
    assert rx.accept(_chunk(50, snap=other)).next_offset == 0
    assert rx.accept(_chunk(50)).next_offset == 100  # the first transfer is intact


@pytest.mark.parametrize("seed", range(20))
def test_random_delivery_never_yields_a_wrong_snapshot(seed: int) -> None:
    rng = random.Random(seed)
    rx = SnapshotReceiver()
    acked = 0
    for _ in range(2000):
        # The leader resends from the last ack, sometimes a stale offset, sometimes a dup.
        offset = acked if rng.random() < 0.7 else rng.randrange(0, len(SNAP.content), 50)
        if rng.random() < 0.2:
            continue  # lost
        result = rx.accept(_chunk(offset))
        if result.complete is not None:
            assert result.complete == SNAP
            return
        acked = result.next_offset
    pytest.fail("the snapshot never completed")


class _RecordingSink(MemorySink):
    """A memory sink that reports what happens to it."""

    def __init__(self, events: list[str], meta: SnapshotMeta, total: int) -> None:
        super().__init__(meta, total)
        self._events = events
        self._events.append(f"open {meta.index} {total}")

    def finish(self) -> SnapshotData:
        self._events.append("finish")
        return super().finish()

    def abort(self) -> None:
        self._events.append("abort")
        super().abort()


def test_every_sink_is_finished_or_aborted_exactly_once() -> None:
    events: list[str] = []
    rx = SnapshotReceiver(lambda meta, total: _RecordingSink(events, meta, total))
    rx.accept(_chunk(0))
    other = Snapshot(SnapshotMeta(index=50, term=4), b"z" * 120)
    rx.accept(_chunk(0, snap=other))  # another snapshot starts: the first download is dropped
    assert events == ["open 40 768", "abort", "open 50 120"]
    rx.accept(_chunk(0, size=200, snap=other))  # a late duplicate start restarts nothing
    assert rx.accept(_chunk(50, size=200, snap=other)).complete == other
    assert events == ["open 40 768", "abort", "open 50 120", "finish"]
