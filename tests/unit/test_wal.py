"""The WAL record format and segment files, below the LogStore."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from cluster import wal
from cluster.errors import CorruptLog
from cluster.messages import Entry, EntryKind, HardState
from cluster.types import GroupId, NodeId
from cluster.wal import RecordType, SnapshotPointer

G = GroupId(7)
VOTERS = (NodeId(1), NodeId(2), NodeId(3))


def record(rtype: RecordType, payload: bytes) -> bytes:
    return wal.frame(rtype, payload) + payload


def scan(buf: bytes) -> tuple[list[tuple[int, int, bytes]], wal.SegmentScanner]:
    scanner = wal.SegmentScanner(buf)
    return [(off, t, bytes(p)) for off, t, p in scanner], scanner


def test_every_record_type_round_trips() -> None:
    ptr = SnapshotPointer(40, 3, VOTERS, "snap-0000000000000001.snap")
    ckpt = wal.Checkpoint(
        (
            wal.CheckpointGroup(G, VOTERS, HardState(3, NodeId(2), 39), 45, ptr),
            wal.CheckpointGroup(GroupId(8), (NodeId(4),), HardState(), 0, None),
        )
    )
    cases: list[tuple[RecordType, bytes, wal.Record]] = [
        (RecordType.CHECKPOINT, wal.encode_checkpoint(ckpt), ckpt),
        (RecordType.CHECKPOINT, wal.encode_checkpoint(wal.Checkpoint(())), wal.Checkpoint(())),
        (
            RecordType.HARD_STATE,
            wal.encode_hard_state(G, HardState(5, NodeId(3), 17)),
            wal.HardStateRecord(G, HardState(5, NodeId(3), 17)),
        ),
        (RecordType.GROUP, wal.encode_group(G, VOTERS), wal.GroupRecord(G, VOTERS)),
        (
            RecordType.SNAPSHOT,
            wal.encode_snapshot(G, ptr, True),
            wal.SnapshotRecord(G, ptr, True),
        ),
        (
            RecordType.ENTRIES,
            wal.encode_entries(G, [Entry(2, 11, b"a"), Entry(2, 12, b"")]),
            wal.EntriesHeader(G, 11, 2),
        ),
    ]
    buf = b"".join(record(t, p) for t, p, _ in cases)
    records, scanner = scan(buf)
    assert scanner.damage is None and scanner.end == len(buf)
    assert [wal.decode(t, p) for _, t, p in records] == [want for _, _, want in cases]
    assert [t for _, t, _ in records] == [t for t, _, _ in cases]


def test_decode_entries_returns_the_requested_range_with_implied_indexes() -> None:
    entries = [
        Entry(1, 5, b"five"),
        Entry(1, 6, b"", EntryKind.NOOP),
        Entry(2, 7, b"seven" * 50),
        Entry(3, 8, b"\x00\xff"),
    ]
    payload = wal.encode_entries(G, entries)
    assert wal.decode_entries(payload, 5, 8) == entries
    assert wal.decode_entries(payload, 6, 7) == entries[1:3]
    assert wal.decode_entries(payload, 1, 100) == entries
    assert wal.decode_entries(payload, 9, 100) == []


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(1, "short header"), (8, "short header"), (9, "short record"), (20, "short record")],
)
def test_scanner_reports_a_torn_last_record(cut: int, reason: str) -> None:
    first = record(RecordType.GROUP, wal.encode_group(G, VOTERS))
    second = record(RecordType.HARD_STATE, wal.encode_hard_state(G, HardState(1, NodeId(1), 0)))
    records, scanner = scan(first + second[:cut])
    assert [off for off, _, _ in records] == [0]
    assert scanner.damage == wal.Damage(len(first), reason)
    assert scanner.end == len(first)


def test_scanner_catches_every_single_bit_flip() -> None:
    good = record(RecordType.ENTRIES, wal.encode_entries(G, [Entry(4, 9, b"payload")]))
    for i in range(len(good) * 8):
        damaged = bytearray(good)
        damaged[i // 8] ^= 1 << (i % 8)
        records, scanner = scan(bytes(damaged))
        assert records == [], f"bit {i} went unnoticed"
        assert scanner.damage is not None and scanner.damage.offset == 0


def test_scanner_rejects_unknown_types_and_zero_fill() -> None:
    payload = b"abc"
    header = wal.HEADER.pack(len(payload), 0, 99)
    assert scan(header + payload)[1].damage == wal.Damage(0, "crc mismatch")
    assert scan(bytes(64))[1].damage == wal.Damage(0, "crc mismatch")
    assert scan(b"")[1].damage is None


def test_a_record_that_passes_its_crc_but_does_not_parse_is_corrupt_not_torn() -> None:
    payload = wal.encode_group(G, VOTERS) + b"junk"
    with pytest.raises(CorruptLog):
        wal.decode(RecordType.GROUP, payload)
    with pytest.raises(CorruptLog):
        wal.decode(RecordType.GROUP, struct.pack("<II", 7, 1000))
    with pytest.raises(CorruptLog):
        wal.decode(RecordType.ENTRIES, struct.pack("<IQI", 7, 0, 1))


def test_segment_names() -> None:
    assert wal.segment_name(12) == "wal-0000000000000012.log"
    assert wal.parse_segment_name(wal.segment_name(12)) == 12
    for other in ("IDENTITY", "wal-12.log", "wal-000000000000001x.log", "wal-0000000000000012.tmp"):
        assert wal.parse_segment_name(other) is None


def test_segment_file_buffers_until_flush_and_tracks_what_is_durable(tmp_path: Path) -> None:
    seg = wal.SegmentFile.create(tmp_path, 1, fsync=False)
    one = record(RecordType.GROUP, wal.encode_group(G, VOTERS))
    assert seg.append(one[:9], one[9:]) == 0
    assert seg.append(one[:9], one[9:]) == len(one)
    assert os.path.getsize(seg.path) == 0  # buffered
    seg.flush()
    assert os.path.getsize(seg.path) == 2 * len(one) and seg.durable == 0
    assert seg.sync() is True and seg.durable == 2 * len(one)
    assert seg.sync() is False
    seg.append(one[:9], one[9:])
    seg.cut(5)
    assert os.path.getsize(seg.path) == 2 * len(one) + 5
    seg.close()
    reopened = wal.SegmentFile.open_existing(tmp_path, 1, fsync=True)
    assert reopened.size == reopened.durable == 2 * len(one) + 5
    assert reopened.sync(force=True) is True and reopened.fsyncs == 1
    reopened.close()


def test_segment_file_flushes_more_buffers_than_one_writev_takes(tmp_path: Path) -> None:
    seg = wal.SegmentFile.create(tmp_path, 3, fsync=False)
    one = record(RecordType.HARD_STATE, wal.encode_hard_state(G, HardState(1, NodeId(1), 1)))
    for _ in range(3000):
        seg.append(one[:9], one[9:])
    seg.sync()
    seg.close()
    records, scanner = scan(seg.path.read_bytes())
    assert len(records) == 3000 and scanner.damage is None


def test_read_record_verifies_the_crc(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    one = record(RecordType.GROUP, wal.encode_group(G, VOTERS))
    path.write_bytes(one + one)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wal.read_record(fd, len(one), "seg") == (RecordType.GROUP, one[9:])
    finally:
        os.close(fd)
    damaged = bytearray(one + one)
    damaged[-1] ^= 0x10
    path.write_bytes(bytes(damaged))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptLog, match="crc mismatch"):
            wal.read_record(fd, len(one), "seg")
        with pytest.raises(CorruptLog):
            wal.read_record(fd, 2 * len(one), "seg")
    finally:
        os.close(fd)
