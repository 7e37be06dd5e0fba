"""LogStore: the durable log shared by every group of a node (crash sweeps live in
test_storage_crash.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.errors import CorruptLog, DataDirMismatch, StorageError
from cluster.messages import Entry, EntryKind, HardState, Snapshot, SnapshotMeta, StoredState
from cluster.storage import LogStore, RecoveryReport
from cluster.types import GroupId, NodeId

NODE = NodeId(1)
G1, G2 = GroupId(1), GroupId(2)
VOTERS = (NodeId(1), NodeId(2), NodeId(3))


_opened: list[LogStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def open_store(path: Path, **kw: int) -> LogStore:
    s = LogStore.open(path, node_id=NODE, cluster_id="test", fsync=False, **kw)
    _opened.append(s)
    return s


def run(term: int, first: int, last: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(term, i, tag + b"%d" % i) for i in range(first, last + 1)]


def segments(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("wal-"))


def snap_files(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("snap-"))


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    s = open_store(tmp_path)
    s.ensure_group(G1, VOTERS)
    return s


def reopen(s: LogStore, **kw: int) -> LogStore:
    s.close()
    return open_store(s.path, **kw)


def test_an_empty_store_has_no_groups_and_reopens_clean(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    assert s.groups() == []
    assert s.recovery == RecoveryReport()
    s = reopen(s)
    assert s.groups() == [] and s.recovery.reason == ""
    s.ensure_group(G1, VOTERS)
    assert s.load(G1) == StoredState()
    s.close()


def test_append_overwrite_suffix_and_reopen(store: LogStore) -> None:
    store.append(G1, run(1, 1, 10))
    store.append(G1, run(1, 11, 12))
    store.append(G1, run(2, 6, 8, b"new"))  # replaces 6..12
    want = run(1, 1, 5) + run(2, 6, 8, b"new")
    assert store.load(G1).entries == tuple(want)
    store = reopen(store)
    assert store.load(G1).entries == tuple(want)
    store.append(G1, [Entry(3, 9, b"x", EntryKind.NOOP)])
    store.append(G1, run(3, 2, 3, b"again"))  # replaces 2..9
    want = run(1, 1, 1) + run(3, 2, 3, b"again")
    assert store.load(G1).entries == tuple(want)
    assert reopen(store).load(G1).entries == tuple(want)


def test_append_rejects_holes_and_non_contiguous_batches(store: LogStore) -> None:
    with pytest.raises(StorageError, match="hole"):
        store.append(G1, run(1, 2, 3))
    with pytest.raises(StorageError, match="contiguous"):
        store.append(G1, [Entry(1, 1), Entry(1, 3)])
    store.append(G1, [])
    assert store.load(G1).entries == ()


def test_unknown_groups_are_refused(store: LogStore) -> None:
    with pytest.raises(StorageError, match="ensure_group"):
        store.append(G2, run(1, 1, 1))
    with pytest.raises(StorageError, match="ensure_group"):
        store.load(G2)


def test_hard_state_is_the_latest_one_written(store: LogStore) -> None:
    store.set_hard_state(G1, HardState(1, NodeId(2), 0))
    store.set_hard_state(G1, HardState(2, NodeId(3), 0))
    store.append(G1, run(2, 1, 3))
    store.set_hard_state(G1, HardState(2, NodeId(3), 3))
    assert store.load(G1).hard_state == HardState(2, NodeId(3), 3)
    records = store.stats.records
    store.set_hard_state(G1, HardState(2, NodeId(3), 3))
    assert store.stats.records == records  # unchanged: nothing written
    assert reopen(store).load(G1).hard_state == HardState(2, NodeId(3), 3)


def test_multiple_groups_interleaved(store: LogStore) -> None:
    store.ensure_group(G2, (NodeId(1), NodeId(4), NodeId(5)))
    for n, i in enumerate(range(1, 30, 3), start=1):
        store.append(G1, run(1, i, i + 2, b"g1-"))
        store.append(G2, run(5, n, n, b"g2-"))
        store.set_hard_state(G2, HardState(5, NodeId(4), i))
    store.append(G2, run(6, 5, 6, b"g2b-"))
    g1 = tuple(run(1, 1, 30, b"g1-"))
    g2 = tuple(run(5, 1, 4, b"g2-") + run(6, 5, 6, b"g2b-"))
    for reopening in (False, True):
        if reopening:
            store = reopen(store)
        assert store.groups() == [G1, G2]
        assert store.load(G1).entries == g1
        assert store.load(G2) == StoredState(HardState(5, NodeId(4), 28), None, g2)


def test_local_snapshot_compacts_and_keeps_later_entries(store: LogStore) -> None:
    store.append(G1, run(1, 1, 20))
    snap = Snapshot(SnapshotMeta(12, 1, VOTERS), b"state@12")
    store.save_snapshot(G1, snap, discard_log=False)
    want = StoredState(HardState(), snap, tuple(run(1, 13, 20)))
    assert store.load(G1) == want
    store = reopen(store)
    assert store.load(G1) == want
    store.append(G1, run(1, 5, 12))  # wholly covered by the snapshot: nothing to store
    assert store.load(G1) == want
    store.append(G1, run(2, 11, 14))  # the compacted part is skipped, 13.. overwritten
    assert store.load(G1).entries == tuple(run(2, 13, 14))
    assert reopen(store).load(G1).entries == tuple(run(2, 13, 14))


def test_received_snapshot_replaces_the_whole_log(store: LogStore) -> None:
    store.append(G1, run(1, 1, 20))
    snap = Snapshot(SnapshotMeta(15, 3, VOTERS), b"from the leader")
    store.save_snapshot(G1, snap, discard_log=True)
    assert store.load(G1) == StoredState(HardState(), snap, ())
    store = reopen(store)
    assert store.load(G1) == StoredState(HardState(), snap, ())
    store.append(G1, run(3, 16, 17))
    assert store.load(G1).entries == tuple(run(3, 16, 17))


def test_snapshot_beyond_the_log_leaves_it_empty(store: LogStore) -> None:
    store.append(G1, run(1, 1, 5))
    snap = Snapshot(SnapshotMeta(9, 2, VOTERS), b"ahead")
    store.save_snapshot(G1, snap, discard_log=False)
    assert reopen(store).load(G1) == StoredState(HardState(), snap, ())


def test_older_snapshot_files_are_deleted_once_the_new_one_is_durable(store: LogStore) -> None:
    store.append(G1, run(1, 1, 10))
    store.save_snapshot(G1, Snapshot(SnapshotMeta(3, 1, VOTERS), b"a"), discard_log=False)
    store.sync()
    first = snap_files(store.path)
    store.save_snapshot(G1, Snapshot(SnapshotMeta(6, 1, VOTERS), b"b"), discard_log=False)
    assert len(snap_files(store.path)) == 2  # the old one is still what the durable log names
    store.sync()
    assert len(snap_files(store.path)) == 1 and snap_files(store.path) != first
    with pytest.raises(StorageError, match="older"):
        store.save_snapshot(G1, Snapshot(SnapshotMeta(5, 1, VOTERS), b"c"), discard_log=False)
    assert store.load(G1).snapshot == Snapshot(SnapshotMeta(6, 1, VOTERS), b"b")


def test_a_damaged_snapshot_file_is_never_served(store: LogStore) -> None:
    store.append(G1, run(1, 1, 4))
    store.save_snapshot(G1, Snapshot(SnapshotMeta(2, 1, VOTERS), b"state"), discard_log=False)
    store.sync()
    (name,) = snap_files(store.path)
    raw = bytearray((store.path / name).read_bytes())
    raw[-1] ^= 1
    (store.path / name).write_bytes(bytes(raw))
    with pytest.raises(CorruptLog, match="damaged"):
        store.load(G1)
    os.unlink(store.path / name)
    store.close()
    with pytest.raises(CorruptLog, match="missing"):
        open_store(store.path)


def test_rotation_spreads_the_log_over_segments_and_reopens(tmp_path: Path) -> None:
    s = open_store(tmp_path, segment_bytes=512)
    s.ensure_group(G1, VOTERS)
    s.ensure_group(G2, VOTERS)
    for i in range(1, 60):
        s.append(G1 if i % 2 else G2, [Entry(1, (i + 1) // 2, b"x" * 40)])
        s.set_hard_state(G1, HardState(1, NodeId(1), i))
    assert len(segments(tmp_path)) > 5
    assert s.stats.segments == len(segments(tmp_path))
    want1, want2 = s.load(G1), s.load(G2)
    assert len(want1.entries) == 30 and len(want2.entries) == 29
    s = reopen(s, segment_bytes=512)
    assert (s.load(G1), s.load(G2)) == (want1, want2)
    s.close()


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    s = open_store(tmp_path, segment_bytes=100)
    s.ensure_group(G1, VOTERS)
    s.append(G1, [Entry(1, 1, b"y" * 1000)])
    s.append(G1, [Entry(1, 2, b"z" * 1000)])
    assert reopen(s, segment_bytes=100).load(G1).entries == (
        Entry(1, 1, b"y" * 1000),
        Entry(1, 2, b"z" * 1000),
    )


def test_compaction_deletes_old_segments_oldest_first(tmp_path: Path) -> None:
    s = open_store(tmp_path, segment_bytes=600)
    s.ensure_group(G1, VOTERS)
    s.ensure_group(G2, VOTERS)
    s.append(G2, run(1, 1, 1))  # G2's entry pins the first segment until G2 compacts
    for i in range(1, 101):
        s.append(G1, [Entry(1, i, b"p" * 50)])
    s.sync()
    before = segments(tmp_path)
    assert len(before) > 5
    s.save_snapshot(G1, Snapshot(SnapshotMeta(90, 1, VOTERS), b"s1"), discard_log=False)
    s.sync()
    # G2 still has a live entry in the oldest segment, which pins every later one.
    assert segments(tmp_path)[: len(before)] == before
    s.save_snapshot(G2, Snapshot(SnapshotMeta(1, 1, VOTERS), b"s2"), discard_log=False)
    assert segments(tmp_path)[: len(before)] == before  # not before the record is durable
    s.sync()
    after = segments(tmp_path)
    assert len(after) < len(before) and before[0] not in after
    assert after == sorted(after) and all(a in before or a > before[-1] for a in after)
    want1, want2 = s.load(G1), s.load(G2)
    assert [e.index for e in want1.entries] == list(range(91, 101))
    s = reopen(s, segment_bytes=600)
    assert (s.load(G1), s.load(G2)) == (want1, want2)
    # Everything compacted: only the segment being written survives.
    s.save_snapshot(G1, Snapshot(SnapshotMeta(100, 1, VOTERS), b"s3"), discard_log=True)
    for i in range(101, 130):
        s.append(G1, [Entry(2, i, b"q" * 50)])
    s.save_snapshot(G1, Snapshot(SnapshotMeta(129, 2, VOTERS), b"s4"), discard_log=False)
    s.sync()
    assert len(segments(tmp_path)) == 1
    assert s.stats.segments == 1
    s = reopen(s, segment_bytes=600)
    assert s.load(G1) == StoredState(HardState(), Snapshot(SnapshotMeta(129, 2, VOTERS), b"s4"), ())
    assert s.load(G2).snapshot == Snapshot(SnapshotMeta(1, 1, VOTERS), b"s2")
    s.close()


def test_overwritten_entries_do_not_pin_old_segments(tmp_path: Path) -> None:
    s = open_store(tmp_path, segment_bytes=400)
    s.ensure_group(G1, VOTERS)
    for i in range(1, 21):
        s.append(G1, [Entry(1, i, b"o" * 40)])
    s.append(G1, run(2, 2, 3))  # entries 2..20 of the first segments are dead now
    s.save_snapshot(G1, Snapshot(SnapshotMeta(1, 1, VOTERS), b"s"), discard_log=False)
    s.sync()
    assert len(segments(tmp_path)) == 1
    assert reopen(s).load(G1).entries == tuple(run(2, 2, 3))


def test_identity_mismatch_names_both_sides(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    with pytest.raises(DataDirMismatch, match=r"node 1 of cluster 'test'.*node 2 of cluster"):
        LogStore.open(tmp_path, node_id=NodeId(2), cluster_id="test", fsync=False)
    with pytest.raises(DataDirMismatch, match="'other'"):
        LogStore.open(tmp_path, node_id=NODE, cluster_id="other", fsync=False)
    ident = json.loads((tmp_path / "IDENTITY").read_text())
    assert ident["node_id"] == 1 and ident["cluster_id"] == "test"


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataDirMismatch, match="not a raftchat data dir"):
        open_store(tmp_path)
    (tmp_path / "IDENTITY").write_text("garbage")
    with pytest.raises(DataDirMismatch, match="not a raftchat data dir"):
        open_store(tmp_path)


def test_stored_voters_must_match(store: LogStore) -> None:
    store.ensure_group(G1, (NodeId(3), NodeId(1), NodeId(2)))  # same set, other order
    with pytest.raises(DataDirMismatch, match="voters"):
        store.ensure_group(G1, (NodeId(1), NodeId(2), NodeId(4)))
    store = reopen(store)
    with pytest.raises(DataDirMismatch, match="voters"):
        store.ensure_group(G1, (NodeId(1),))


def test_one_store_per_directory_at_a_time(store: LogStore) -> None:
    with pytest.raises(StorageError, match="already open"):
        open_store(store.path)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.ensure_group(G1, VOTERS)
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.append(G1, run(1, 1, 1))
    with pytest.raises(StorageError, match="closed"):
        s.sync()


def test_sync_is_one_fsync_for_everything_written_since_the_last(tmp_path: Path) -> None:
    s = LogStore.open(tmp_path, node_id=NODE, cluster_id="test", fsync=True)
    _opened.append(s)
    s.ensure_group(G1, VOTERS)
    s.ensure_group(G2, VOTERS)
    s.sync()
    before = s.stats
    for g in (G1, G2):
        s.append(g, run(1, 1, 50))
        s.set_hard_state(g, HardState(1, NodeId(1), 0))
    s.sync()
    after = s.stats
    assert after.fsyncs - before.fsyncs == 1
    assert after.syncs - before.syncs == 1
    assert after.records - before.records == 4
    s.sync()  # nothing new: no fsync
    assert s.stats.fsyncs == after.fsyncs
    s.close()
