"""Memory stays flat as history grows: a ~50 MB state travels through every snapshot path —
taken, persisted, kept by the leader, sent in chunks to a lagging follower, received, persisted,
restored, read back after a restart — while Python's peak allocation stays at a few chunks.

Three replicas of one group, each with its own ``LogStore`` and ``LogStateMachine`` (SQLite) on
disk, driven by ``NodeDriver`` exactly as the node host drives them (``take_snapshot`` and the
store-backed chunk sink are the host's own code paths); messages are handed over in memory.

tracemalloc sees Python allocations only. SQLite's page cache is C memory, bounded per
connection by ``cache_size`` (2 MB by default), whatever the database's size.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cluster.config import Config
from cluster.driver import NodeDriver
from cluster.messages import Entry, Snapshot, SnapshotChunk, SnapshotMeta
from cluster.raft import Replica
from cluster.ready import Role
from cluster.snapshotfile import SnapshotFile
from cluster.snapshotter import take_snapshot
from cluster.statemachine import LogStateMachine
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId

GROUP = GroupId(1)
IDS = (NodeId(1), NodeId(2), NodeId(3))
RECORD_BYTES = 256 << 10
RECORDS = 200  # 50 MiB of records
CHUNK_BYTES = 1 << 20
PEAK_LIMIT = 8 << 20
"""A few chunks; the whole state would be 50 MiB (twice that while receiving, before)."""


def _payload(i: int) -> bytes:
    return bytes([i % 251]) * RECORD_BYTES


class _Applier:
    """The driver's state machine: one LogStateMachine (one group per node here)."""

    def __init__(self, sm: LogStateMachine) -> None:
        self.sm = sm

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        self.sm.apply(entries)

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        self.sm.restore(snapshot)


@dataclass
class _Node:
    id: NodeId
    store: LogStore
    sm: LogStateMachine
    driver: NodeDriver

    @property
    def replica(self) -> Replica:
        return self.driver.replicas[GROUP]

    def close(self) -> None:
        self.store.close()
        self.sm.close()


def _start(root: Path, n: NodeId, sm_name: str) -> _Node:
    store = LogStore.open(root / f"node{n}", node_id=n, cluster_id="memory", fsync=False)
    store.ensure_group(GROUP, IDS)
    sm = LogStateMachine(root / sm_name)
    stored = store.load(GROUP)
    if stored.snapshot is not None and sm.applied_index() < stored.snapshot.meta.index:
        sm.restore(stored.snapshot)  # what NodeHost.add_group does
    driver = NodeDriver(n, store, _Applier(sm))
    config = Config(node_id=n, group=GROUP, voters=IDS, snapshot_chunk_bytes=CHUNK_BYTES)
    sink = partial(store.receive_snapshot, GROUP)
    replica = Replica(
        config, random.Random(n), stored, applied=sm.applied_index(), snapshot_sink=sink
    )
    driver.add(replica)
    return _Node(n, store, sm, driver)


def _turn(nodes: dict[NodeId, _Node], up: set[NodeId]) -> list[SnapshotChunk]:
    """One loop turn of every node that is up; messages to a node that is down are lost.
    Returns the snapshot chunks that were delivered."""
    messages = [m for n in sorted(up) for m in nodes[n].driver.process_ready().messages]
    for m in messages:
        if m.to in up:
            nodes[m.to].driver.step(m)
    return [m for m in messages if isinstance(m, SnapshotChunk) and m.to in up]


def _settle(nodes: dict[NodeId, _Node], up: set[NodeId], done: Callable[[], bool]) -> int:
    """Turn until ``done()`` holds; returns the snapshot chunks delivered meanwhile."""
    chunks = 0
    for _ in range(10_000):
        if done():
            return chunks
        chunks += len(_turn(nodes, up))
        nodes[IDS[0]].driver.tick()  # the leader's heartbeats find the follower that came back
    raise AssertionError("the cluster did not settle")


def test_a_large_snapshot_never_sits_in_memory(tmp_path: Path) -> None:
    nodes = {n: _start(tmp_path, n, f"sm{n}.sqlite") for n in IDS}
    try:
        leader, lagging = nodes[IDS[0]], nodes[IDS[2]]
        up = {IDS[0], IDS[1]}  # node 3 is away while history is written
        leader.replica.campaign()
        _settle(nodes, up, lambda: leader.replica.role is Role.LEADER)
        follower = nodes[IDS[1]]
        for first in range(0, RECORDS, 8):
            leader.replica.propose_batch([_payload(i) for i in range(first, first + 8)])
            _settle(nodes, up, lambda: follower.sm.applied_index() == leader.replica.last_index)
        applied = leader.sm.applied_index()
        assert leader.sm.count() == RECORDS

        tracemalloc.start()
        try:
            # Both live replicas snapshot (the log they held is compacted away).
            for n in up:
                node = nodes[n]
                meta = SnapshotMeta(applied, node.replica.term, IDS)
                node.driver.compact(GROUP, take_snapshot(node.store, GROUP, node.sm, meta))
                node.store.sync()
            size = len(leader.store.load(GROUP).snapshot.content)  # type: ignore[union-attr]
            assert size > RECORDS * RECORD_BYTES
            # Node 3 comes back: it gets the snapshot in chunks, persists and restores it.
            up.add(lagging.id)
            chunks = _settle(nodes, up, lambda: lagging.sm.applied_index() == applied)
            assert chunks >= size // CHUNK_BYTES
            assert lagging.sm.restores == 1
            # Node 3 restarts having lost its database: it restores from its stored snapshot.
            lagging.close()
            nodes[lagging.id] = lagging = _start(tmp_path, lagging.id, "sm3-again.sqlite")
            assert lagging.sm.applied_index() == applied
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"snapshot of {size / 2**20:.1f} MiB: Python peak {peak / 2**20:.2f} MiB")
        assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB for a {size >> 20} MiB snapshot"

        assert lagging.sm.count() == RECORDS
        for i in (0, RECORDS // 2, RECORDS - 1):
            assert lagging.sm.read(i + 1, 1) == [_payload(i)]
        stored = lagging.store.load(GROUP).snapshot
        assert stored is not None and isinstance(stored.content, SnapshotFile)
    finally:
        for node in nodes.values():
            node.close()
