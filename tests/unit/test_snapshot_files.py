"""Snapshot data on disk: file views, the streaming writer and reader, and the store's staging
(a follower's chunks written straight to a file, a local snapshot copied once, both adopted by
rename). Crash and damage sweeps live in test_storage_crash.py, memory in
test_snapshot_memory.py."""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from cluster.messages import Snapshot, SnapshotChunk, SnapshotMeta
from cluster.snapshot import SnapshotReceiver, cut_chunk
from cluster.snapshotfile import SnapshotFile, SnapshotFileWriter, read_snapshot_file
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId

NODE = NodeId(1)
G1 = GroupId(1)
VOTERS = (NodeId(1), NodeId(2), NodeId(3))
META = SnapshotMeta(12, 2, VOTERS)
DATA = bytes(random.Random(7).randbytes(5000))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore.open(tmp_path / "data", node_id=NODE, cluster_id="test", fsync=True)
    s.ensure_group(G1, VOTERS)
    try:
        yield s
    finally:
        s.close()


def tmp_files(store: LogStore) -> list[str]:
    return sorted(n for n in os.listdir(store.path) if n.endswith(".tmp"))


def snap_files(store: LogStore) -> list[str]:
    return sorted(n for n in os.listdir(store.path) if n.endswith(".snap"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- SnapshotFile ---------------------------------------------------------------------------


def test_a_view_slices_like_the_bytes_it_covers(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"head" + DATA + b"tail")
    view = SnapshotFile.open(tmp_path / "f", 4, len(DATA))
    rng = random.Random(1)
    try:
        assert len(view) == len(DATA)
        for _ in range(200):
            a, b = rng.randrange(-6000, 6000), rng.randrange(-6000, 6000)
            assert view[a:b] == DATA[a:b]
        assert view[:] == DATA and view == DATA
        assert Snapshot(META, DATA) == Snapshot(META, view)  # bytes first: the reflected __eq__
        assert view != DATA[:-1] and view != b"x" * len(DATA)
        assert view.region(10, 20) == DATA[10:30]
        with pytest.raises(ValueError, match="contiguous"):
            view[::2]
        with pytest.raises(ValueError):
            view.region(4990, 20)
    finally:
        view.close()
    with pytest.raises(ValueError, match="closed"):
        view[0:1]


def test_a_view_reads_on_through_rename_and_unlink_and_frees_its_descriptor(
    tmp_path: Path,
) -> None:
    (tmp_path / "f").write_bytes(DATA)
    gc.collect()  # views other tests left to the collector must not close during the count
    before = open_fds()
    view = SnapshotFile.open(tmp_path / "f")
    os.rename(tmp_path / "f", tmp_path / "g")
    os.unlink(tmp_path / "g")
    assert view[100:200] == DATA[100:200]  # the store may delete a file a replica sends from
    assert open_fds() == before + 1
    del view
    gc.collect()
    assert open_fds() == before  # collected views close their descriptor


def test_the_writer_streams_the_store_format_and_the_reader_checks_it(tmp_path: Path) -> None:
    writer = SnapshotFileWriter(tmp_path / "s", G1, META, fsync=False)
    for i in range(0, len(DATA), 999):
        writer.write(DATA[i : i + 999])
    written = writer.finish()
    assert written == DATA
    header, data = read_snapshot_file(tmp_path / "s")
    assert (header.group, header.meta, len(data)) == (G1, META, len(DATA))
    assert data == DATA
    writer = SnapshotFileWriter(tmp_path / "t", G1, META, fsync=False)
    writer.write(b"partial")
    writer.abort()
    assert not (tmp_path / "t").exists()


# ---- staging in the store --------------------------------------------------------------------


def test_a_local_snapshot_is_copied_once_then_adopted_by_rename(store: LogStore) -> None:
    snap = store.stage_snapshot(G1, META, DATA)
    assert isinstance(snap.content, SnapshotFile) and snap.content == DATA
    (staged,) = tmp_files(store)
    inode = os.stat(store.path / staged).st_ino
    store.save_snapshot(G1, snap, discard_log=True)
    store.sync()
    assert tmp_files(store) == [] and snap_files(store) == [staged.removesuffix(".tmp")]
    assert os.stat(store.path / snap_files(store)[0]).st_ino == inode  # renamed, not copied
    loaded = store.load(G1).snapshot
    assert loaded is not None and loaded.meta == META and loaded.content == DATA


def test_received_chunks_are_written_to_a_file_that_save_adopts(store: LogStore) -> None:
    rx = SnapshotReceiver(partial(store.receive_snapshot, G1))
    source = Snapshot(META, DATA)
    offset, result = 0, None
    while result is None:
        offset, data, done = cut_chunk(source, offset, 700)
        chunk = SnapshotChunk(
            group=G1, sender=NodeId(2), to=NODE, term=2, meta=META,
            offset=offset, data=data, total_size=len(DATA), done=done,
        )  # fmt: skip
        accepted = rx.accept(chunk)
        offset, result = accepted.next_offset, accepted.complete
        if result is None:  # the partial file holds what was acknowledged, after its header
            (partial_file,) = tmp_files(store)
            assert os.path.getsize(store.path / partial_file) > offset
    assert isinstance(result.content, SnapshotFile) and result == source
    (staged,) = tmp_files(store)
    inode = os.stat(store.path / staged).st_ino
    store.save_snapshot(G1, result, discard_log=True)
    assert os.stat(store.path / snap_files(store)[0]).st_ino == inode
    assert tmp_files(store) == []


def test_a_new_download_drops_the_abandoned_one(store: LogStore) -> None:
    rx = SnapshotReceiver(partial(store.receive_snapshot, G1))

    def chunk(sender: int, term: int, offset: int, data: bytes, done: bool) -> SnapshotChunk:
        return SnapshotChunk(
            group=G1, sender=NodeId(sender), to=NODE, term=term, meta=META,
            offset=offset, data=data, total_size=len(DATA), done=done,
        )  # fmt: skip

    assert rx.accept(chunk(2, 2, 0, DATA[:100], False)).next_offset == 100
    (first,) = tmp_files(store)
    assert rx.accept(chunk(3, 3, 0, DATA[:50], False)).next_offset == 50  # a new leader
    (second,) = tmp_files(store)
    assert second != first
    # The last chunk arrives but the sizes disagree: the download starts over, file and all.
    assert rx.accept(chunk(3, 3, 50, DATA[50:60], True)).next_offset == 0
    assert tmp_files(store) == []


def test_staged_files_nobody_adopts_are_deleted_and_their_views_still_read(
    store: LogStore,
) -> None:
    sink = store.receive_snapshot(G1, META, len(DATA))
    sink.write(DATA)
    unneeded = sink.finish()  # Raft found its log already held the snapshot's index
    assert len(tmp_files(store)) == 1
    local = store.stage_snapshot(G1, SnapshotMeta(13, 2, VOTERS), DATA[:10])
    assert len(tmp_files(store)) == 1  # only the new one
    assert unneeded == DATA
    other = store.receive_snapshot(G1, META, 10)
    other.write(b"half")
    store.close()  # nothing can adopt them any more
    assert tmp_files(store) == []
    assert local.content == DATA[:10]


def test_saving_data_staged_elsewhere_copies_it(store: LogStore, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(DATA)
    view = SnapshotFile.open(tmp_path / "elsewhere")
    try:
        store.save_snapshot(G1, Snapshot(META, view), discard_log=True)
    finally:
        view.close()
    store.sync()
    (tmp_path / "elsewhere").unlink()
    assert tmp_files(store) == [] and len(snap_files(store)) == 1
    loaded = store.load(G1).snapshot
    assert loaded is not None and loaded.content == DATA
