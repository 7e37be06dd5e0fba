"""Snapshot jobs: a state pinned on the loop is what the worker thread writes, whatever is
applied or restored meanwhile; a staged copy is completed or dropped without leftovers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cluster.messages import Entry, Snapshot, SnapshotMeta
from cluster.snapshotfile import SnapshotFile
from cluster.statemachine import BackgroundSnapshots, LogStateMachine
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId
from shards.chat.commands import Command, CreateChannel, JoinChannel, encode_command
from shards.chat.state import ChatState

G = GroupId(1)


def _entries(first: int, n: int) -> list[Entry]:
    return [Entry(1, i, f"record-{i}".encode()) for i in range(first, first + n)]


def _in_thread(fn: object, *args: object) -> None:
    """Run ``fn`` on another thread, as the host's snapshotter does, and re-raise its error."""
    assert callable(fn)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    if errors:
        raise errors[0]


def _restored(path: Path, snapshot_file: Path, index: int) -> LogStateMachine:
    sm = LogStateMachine(path)
    sm.restore(Snapshot(SnapshotMeta(index, 1, (NodeId(1),)), SnapshotFile.open(snapshot_file)))
    return sm


def test_the_log_state_machine_writes_the_pinned_state_not_the_current_one(
    tmp_path: Path,
) -> None:
    sm = LogStateMachine(tmp_path / "a.sqlite")
    assert isinstance(sm, BackgroundSnapshots)
    sm.apply(_entries(1, 3))
    job = sm.snapshot_job()
    sm.apply(_entries(4, 5))  # applied after pinning: not in the snapshot
    _in_thread(job.write, tmp_path / "snap")
    job.close()  # idempotent after write
    copy = _restored(tmp_path / "b.sqlite", tmp_path / "snap", 3)
    try:
        assert copy.read(1, 100) == [f"record-{i}".encode() for i in (1, 2, 3)]
        assert sm.count() == 8
    finally:
        copy.close()
        sm.close()


def test_a_restore_while_pinned_does_not_change_the_pinned_copy(tmp_path: Path) -> None:
    other = LogStateMachine(tmp_path / "other.sqlite")
    other.apply(_entries(1, 10))
    other.snapshot_to(tmp_path / "other.snap")
    other.close()

    sm = LogStateMachine(tmp_path / "a.sqlite")
    sm.apply(_entries(1, 2))
    job = sm.snapshot_job()
    sm.restore(
        Snapshot(SnapshotMeta(10, 1, (NodeId(1),)), SnapshotFile.open(tmp_path / "other.snap"))
    )
    assert sm.count() == 10 and sm.applied_index() == 10
    _in_thread(job.write, tmp_path / "pinned.snap")
    copy = _restored(tmp_path / "b.sqlite", tmp_path / "pinned.snap", 2)
    try:
        assert copy.read(1, 100) == [b"record-1", b"record-2"]
        sm.apply(_entries(11, 1))  # the restored database still takes writes
        assert sm.count() == 11
    finally:
        copy.close()
        sm.close()


def test_the_chat_state_commits_deferred_applies_before_pinning(tmp_path: Path) -> None:
    sm = ChatState(tmp_path / "chat.db", defer_commit=True)
    try:
        commands: list[Command] = [
            CreateChannel("general", "alice", 1),
            JoinChannel("general", "bob", 2),
        ]
        sm.apply([Entry(1, i + 1, encode_command(c)) for i, c in enumerate(commands)])
        job = sm.snapshot_job()  # the two applies are still uncommitted until this flushes
        sm.apply([Entry(1, 3, encode_command(JoinChannel("general", "carol", 3)))])
        _in_thread(job.write, tmp_path / "snap")
        copy = ChatState(tmp_path / "copy.db")
        try:
            copy.restore(
                Snapshot(SnapshotMeta(2, 1, (NodeId(1),)), SnapshotFile.open(tmp_path / "snap"))
            )
            assert copy.applied_index() == 2
            assert copy.members("general") == ["alice", "bob"]
            assert sm.members("general") == ["alice", "bob", "carol"]
        finally:
            copy.close()
    finally:
        sm.close()


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    s = LogStore.open(tmp_path / "raft", node_id=NodeId(1), cluster_id="t")
    s.ensure_group(G, (NodeId(1),))
    return s


def _tmp_files(store: LogStore) -> list[str]:
    return sorted(p.name for p in store.path.glob("*.tmp"))


def test_a_staged_copy_written_elsewhere_is_adopted_or_dropped(
    store: LogStore, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 300
    meta = SnapshotMeta(5, 1, (NodeId(1),))
    try:
        dropped = store.start_snapshot_copy(G, meta)
        written = dropped.write(data)
        assert len(_tmp_files(store)) == 1
        written.close()
        dropped.abort()
        assert _tmp_files(store) == [], "an aborted copy left its file"
        dropped.abort()  # idempotent

        kept = store.start_snapshot_copy(G, meta)
        snapshot = kept.complete(kept.write(data))
        assert snapshot.meta == meta and snapshot.content == data
        store.save_snapshot(G, snapshot, discard_log=False)
        store.sync()
        assert _tmp_files(store) == []
        loaded = store.load(G).snapshot
        assert loaded is not None and loaded.content == data
    finally:
        store.close()
