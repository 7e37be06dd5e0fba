"""The write-ahead log's on-disk format: CRC-framed records inside numbered segment files.

Why a home-grown format: the log of every group on a node shares one append-only stream so that a
whole ``ready`` round ends in one fsync, and every byte read back must be proven intact (a torn
tail after a crash is expected; serving it would break Raft's promises).

Segment files are named ``wal-<seq:016d>.log``, ``seq`` counting up from 1 with no gaps. A record
is a 9-byte header followed by its payload, all little-endian::

    length u32 | crc32 u32 | type u8 | payload (length bytes)

``crc32`` covers the type byte and the payload, so a flipped bit anywhere in a record (header
included: a wrong length puts the CRC over the wrong bytes) is caught. Payloads by type:

- ``CHECKPOINT`` (always the first record of a segment): every group's voters, hard state,
  last index and snapshot pointer at the moment the segment was opened, so older segments can be
  deleted once their entries are compacted away (the last index lets replay notice entries that
  vanished with a deleted segment without being compacted). ``u32 count`` then per group
  ``u32 group, u64 term, u64 voted_for, u64 commit, u64 last_index, u8 has_snapshot, voters``
  and, if present, ``u64 index, u64 term, voters, name``.
- ``ENTRIES``: ``u32 group, u64 first_index, u32 count`` then per entry ``u64 term, u8 kind,
  u32 data_length, data``; entry ``k`` has index ``first_index + k``. One record per append batch.
- ``HARD_STATE``: ``u32 group, u64 term, u64 voted_for, u64 commit``.
- ``GROUP``: ``u32 group, voters``.
- ``SNAPSHOT``: ``u32 group, u64 index, u64 term, u8 discard_log, voters, name`` where ``name`` is
  the snapshot file (``u16`` length + UTF-8) in the data directory.

``voters`` is ``u32 n`` followed by ``n`` u64 node ids.

Snapshot files (``snap-<n:016d>.snap``, ``n`` counting up per data directory) are written whole
or not at all (tmp + fsync + rename + directory fsync), streamed: the header is reserved, the
data appended with a running CRC, the header filled in last (``cluster.snapshotfile``)::

    magic "RCSNAP01" | u32 group | u64 index | u64 term | u64 data_length | u32 data_crc32 |
    u32 n_voters | n_voters x u64 | u32 crc32 of everything before | data

Writes go to a user-space buffer and reach the file with one ``writev`` per flush; ``fsync`` only
happens in :meth:`SegmentFile.sync`, which is how the store gets group commit.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import CorruptLog, StorageError
from cluster.messages import Entry, EntryKind, HardState, SnapshotMeta
from cluster.types import GroupId, NodeId

HEADER = struct.Struct("<IIB")
"""length, crc32 (over type + payload), type."""
MAX_PAYLOAD = 0xFFFF_FFFF

_ENTRIES_HEAD = struct.Struct("<IQI")
_ENTRY_HEAD = struct.Struct("<QBI")
_HARD_STATE = struct.Struct("<IQQQ")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_SNAPSHOT_HEAD = struct.Struct("<IQQB")
_CKPT_GROUP = struct.Struct("<IQQQQB")
_INDEX_TERM = struct.Struct("<QQ")

_KINDS: dict[int, EntryKind] = {k.value: k for k in EntryKind}
_IOV_MAX = 1024
_SEGMENT_PREFIX = "wal-"
_SEGMENT_SUFFIX = ".log"
_SNAP_PREFIX = "snap-"
_SNAP_SUFFIX = ".snap"
_SNAP_MAGIC = b"RCSNAP01"
_SNAP_HEAD = struct.Struct("<8sIQQQII")  # magic, group, index, term, data_len, data_crc, n_voters
TMP_SUFFIX = ".tmp"


class RecordType(enum.IntEnum):
    CHECKPOINT = 1
    ENTRIES = 2
    HARD_STATE = 3
    GROUP = 4
    SNAPSHOT = 5


_TYPE_CRC: dict[int, int] = {t: zlib.crc32(bytes([t])) for t in RecordType}


# ---------------------------------------------------------------------------------------------
# Decoded records (everything except ENTRIES, whose entries are decoded only by ``load``).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPointer:
    """Where a group's latest snapshot lives: its position in the log and its file's name."""

    index: int
    term: int
    voters: tuple[NodeId, ...]
    name: str


@dataclass(frozen=True, slots=True)
class EntriesHeader:
    group: GroupId
    first_index: int
    count: int


@dataclass(frozen=True, slots=True)
class HardStateRecord:
    group: GroupId
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class GroupRecord:
    group: GroupId
    voters: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    group: GroupId
    pointer: SnapshotPointer
    discard_log: bool


@dataclass(frozen=True, slots=True)
class CheckpointGroup:
    group: GroupId
    voters: tuple[NodeId, ...]
    hard_state: HardState
    last_index: int
    snapshot: SnapshotPointer | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    groups: tuple[CheckpointGroup, ...]


Record = EntriesHeader | HardStateRecord | GroupRecord | SnapshotRecord | Checkpoint


# ---------------------------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------------------------


def frame(rtype: RecordType, payload: bytes) -> bytes:
    """The header that precedes ``payload`` on disk."""
    if len(payload) > MAX_PAYLOAD:
        raise StorageError(f"record of {len(payload)} bytes exceeds the format's limit")
    return HEADER.pack(len(payload), zlib.crc32(payload, _TYPE_CRC[rtype]), rtype)


def encode_entries(group: GroupId, entries: Sequence[Entry]) -> bytes:
    """One payload for a whole batch: a C-level join over per-entry packs, no per-entry copies
    beyond the join itself (this is the hot path of the benchmark)."""
    n = len(entries)
    parts: list[bytes] = [b""] * (2 * n + 1)
    parts[0] = _ENTRIES_HEAD.pack(group, entries[0].index, n)
    pack = _ENTRY_HEAD.pack
    parts[1::2] = [pack(e.term, e.kind, len(e.data)) for e in entries]
    parts[2::2] = [e.data for e in entries]
    return b"".join(parts)


def _voters(voters: Sequence[NodeId]) -> bytes:
    return _U32.pack(len(voters)) + struct.pack(f"<{len(voters)}Q", *voters)


def _name(name: str) -> bytes:
    raw = name.encode()
    return _U16.pack(len(raw)) + raw


def encode_hard_state(group: GroupId, hs: HardState) -> bytes:
    return _HARD_STATE.pack(group, hs.term, hs.voted_for, hs.commit)


def encode_group(group: GroupId, voters: Sequence[NodeId]) -> bytes:
    return _U32.pack(group) + _voters(voters)


def encode_snapshot(group: GroupId, pointer: SnapshotPointer, discard_log: bool) -> bytes:
    head = _SNAPSHOT_HEAD.pack(group, pointer.index, pointer.term, int(discard_log))
    return head + _voters(pointer.voters) + _name(pointer.name)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    parts = [_U32.pack(len(checkpoint.groups))]
    for g in checkpoint.groups:
        hs = g.hard_state
        snap = g.snapshot
        has_snap = snap is not None
        parts.append(
            _CKPT_GROUP.pack(g.group, hs.term, hs.voted_for, hs.commit, g.last_index, has_snap)
        )
        parts.append(_voters(g.voters))
        if snap is not None:
            parts.append(_INDEX_TERM.pack(snap.index, snap.term))
            parts.append(_voters(snap.voters))
            parts.append(_name(snap.name))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Decoding. A record whose CRC matched but whose payload does not parse was written by a bug or
# another format version, never by a torn write: that is CorruptLog, not a tail to cut.
# ---------------------------------------------------------------------------------------------


class _Reader:
    """A cursor over one payload."""

    __slots__ = ("_buf", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int = 0) -> None:
        self._buf = buf
        self.pos = pos

    def take(self, st: struct.Struct) -> tuple[int, ...]:
        values = st.unpack_from(self._buf, self.pos)
        self.pos += st.size
        return values

    def voters(self) -> tuple[NodeId, ...]:
        (n,) = self.take(_U32)
        if n > (len(self._buf) - self.pos) // 8:
            raise CorruptLog(f"voter count {n} overruns its record")
        values = struct.unpack_from(f"<{n}Q", self._buf, self.pos)
        self.pos += 8 * n
        return tuple(NodeId(v) for v in values)

    def name(self) -> str:
        (n,) = self.take(_U16)
        raw = bytes(self._buf[self.pos : self.pos + n])
        if len(raw) != n:
            raise CorruptLog("name overruns its record")
        self.pos += n
        return raw.decode()

    def done(self) -> None:
        if self.pos != len(self._buf):
            raise CorruptLog(f"{len(self._buf) - self.pos} trailing bytes in a record")


def decode(rtype: int, payload: bytes | memoryview) -> Record:
    """Decode every record type; ENTRIES yields only its header (entries stay on disk)."""
    try:
        return _decode(rtype, payload)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise CorruptLog(f"undecodable record of type {rtype}: {exc}") from exc


def _decode(rtype: int, payload: bytes | memoryview) -> Record:
    r = _Reader(payload)
    if rtype == RecordType.ENTRIES:
        group, first, count = r.take(_ENTRIES_HEAD)
        if first < 1 or count < 1:
            raise CorruptLog(f"ENTRIES record with first index {first} and count {count}")
        return EntriesHeader(GroupId(group), first, count)
    if rtype == RecordType.HARD_STATE:
        group, term, voted_for, commit = r.take(_HARD_STATE)
        r.done()
        return HardStateRecord(GroupId(group), HardState(term, NodeId(voted_for), commit))
    if rtype == RecordType.GROUP:
        (group,) = r.take(_U32)
        voters = r.voters()
        r.done()
        return GroupRecord(GroupId(group), voters)
    if rtype == RecordType.SNAPSHOT:
        group, index, term, discard = r.take(_SNAPSHOT_HEAD)
        voters = r.voters()
        name = r.name()
        r.done()
        return SnapshotRecord(
            GroupId(group), SnapshotPointer(index, term, voters, name), bool(discard)
        )
    if rtype == RecordType.CHECKPOINT:
        (count,) = r.take(_U32)
        groups = []
        for _ in range(count):
            group, term, voted_for, commit, last_index, has_snap = r.take(_CKPT_GROUP)
            voters = r.voters()
            snap = None
            if has_snap:
                index, snap_term = r.take(_INDEX_TERM)
                snap = SnapshotPointer(index, snap_term, r.voters(), r.name())
            hs = HardState(term, NodeId(voted_for), commit)
            groups.append(CheckpointGroup(GroupId(group), voters, hs, last_index, snap))
        r.done()
        return Checkpoint(tuple(groups))
    raise CorruptLog(f"unknown record type {rtype}")


def decode_entries(payload: bytes, lo: int, hi: int) -> list[Entry]:
    """The entries with index in ``[lo, hi]`` from an ENTRIES payload."""
    try:
        _group, first, count = _ENTRIES_HEAD.unpack_from(payload, 0)
        pos = _ENTRIES_HEAD.size
        unpack = _ENTRY_HEAD.unpack_from
        step = _ENTRY_HEAD.size
        out: list[Entry] = []
        append = out.append
        last = min(hi, first + count - 1)
        for index in range(first, last + 1):
            term, kind, n = unpack(payload, pos)
            pos += step
            if index >= lo:
                append(Entry(term, index, payload[pos : pos + n], _KINDS[kind]))
            pos += n
        if pos > len(payload) or (last == first + count - 1 and pos != len(payload)):
            raise CorruptLog("entry data overruns its record")
        return out
    except (struct.error, KeyError) as exc:
        raise CorruptLog(f"undecodable ENTRIES record: {exc!r}") from exc


# ---------------------------------------------------------------------------------------------
# Scanning a segment.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damage:
    """The first record of a segment that cannot be trusted, and why."""

    offset: int
    reason: str


class SegmentScanner:
    """Iterates ``(offset, type, payload)`` over the intact records of a segment's bytes and stops
    at the first damaged one, leaving it in ``damage`` (None if the segment ends cleanly)."""

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self.damage: Damage | None = None
        self.end = 0
        """Offset just past the last intact record."""

    def __iter__(self) -> Iterator[tuple[int, int, memoryview]]:
        buf = self._buf
        view = memoryview(buf)
        size = len(buf)
        pos = 0
        unpack = HEADER.unpack_from
        hsize = HEADER.size
        while pos < size:
            if size - pos < hsize:
                self.damage = Damage(pos, "short header")
                return
            length, crc, rtype = unpack(buf, pos)
            start = pos + hsize
            if length > size - start:
                self.damage = Damage(pos, "short record")
                return
            payload = view[start : start + length]
            if rtype not in _TYPE_CRC or zlib.crc32(payload, _TYPE_CRC[rtype]) != crc:
                self.damage = Damage(pos, "crc mismatch")
                return
            yield pos, rtype, payload
            pos = start + length
            self.end = pos


def read_record(fd: int, offset: int, name: str) -> tuple[int, bytes]:
    """Read and CRC-check the record at ``offset`` of an open segment; damage is CorruptLog here
    because the record was intact when the store opened (or was written since)."""
    head = os.pread(fd, HEADER.size, offset)
    if len(head) != HEADER.size:
        raise CorruptLog(f"{name}: the record at {offset} is gone")
    length, crc, rtype = HEADER.unpack(head)
    payload = os.pread(fd, length, offset + HEADER.size)
    if len(payload) != length or rtype not in _TYPE_CRC:
        raise CorruptLog(f"{name}: the record at {offset} is damaged")
    if zlib.crc32(payload, _TYPE_CRC[rtype]) != crc:
        raise CorruptLog(f"{name}: crc mismatch in the record at {offset}")
    return rtype, payload


# ---------------------------------------------------------------------------------------------
# Segment files.
# ---------------------------------------------------------------------------------------------


def segment_name(seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{seq:016d}{_SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The sequence number of a segment file name, or None for any other file."""
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    if len(digits) != 16 or not digits.isdigit():
        return None
    return int(digits)


def snapshot_file_name(number: int) -> str:
    return f"{_SNAP_PREFIX}{number:016d}{_SNAP_SUFFIX}"


def parse_snapshot_file_name(name: str) -> int | None:
    """The number of a snapshot file name, or None for any other file."""
    if not (name.startswith(_SNAP_PREFIX) and name.endswith(_SNAP_SUFFIX)):
        return None
    digits = name[len(_SNAP_PREFIX) : -len(_SNAP_SUFFIX)]
    return int(digits) if len(digits) == 16 and digits.isdigit() else None


@dataclass(frozen=True, slots=True)
class SnapshotFileHeader:
    """What a snapshot file says before its data: whose snapshot it is, and how to check it."""

    group: GroupId
    meta: SnapshotMeta
    size: int
    """Bytes of data after the header."""
    crc: int
    """crc32 of the data."""
    data_offset: int
    """Where the data starts in the file (the header's length)."""


SNAPSHOT_HEADER_MAX = 64 << 10
"""Reading this much of a snapshot file always covers its header (a header this long would
need thousands of voters)."""


def snapshot_file_header_size(n_voters: int) -> int:
    return _SNAP_HEAD.size + 8 * n_voters + _U32.size


def encode_snapshot_file_header(group: GroupId, meta: SnapshotMeta, size: int, crc: int) -> bytes:
    """Everything a snapshot file holds before its ``size`` bytes of data (crc32 ``crc``). Its
    length depends only on the number of voters, so a writer can reserve it, stream the data
    and fill it in last (see ``cluster.snapshotfile``)."""
    n = len(meta.voters)
    head = _SNAP_HEAD.pack(_SNAP_MAGIC, group, meta.index, meta.term, size, crc, n)
    head += struct.pack(f"<{n}Q", *meta.voters)
    return head + _U32.pack(zlib.crc32(head))


def decode_snapshot_file_header(raw: bytes, name: str) -> SnapshotFileHeader:
    """Check the header CRC of a snapshot file whose first bytes are ``raw`` (at least the
    header; ``SNAPSHOT_HEADER_MAX`` bytes or the whole file always suffice) and decode it. The
    data's CRC is the reader's to check, streaming."""
    try:
        magic, group, index, term, size, crc, n = _SNAP_HEAD.unpack_from(raw, 0)
        if n > (SNAPSHOT_HEADER_MAX - _SNAP_HEAD.size) // 8:
            raise CorruptLog(f"snapshot file {name} is damaged (claims {n} voters)")
        voters = struct.unpack_from(f"<{n}Q", raw, _SNAP_HEAD.size)
        end = _SNAP_HEAD.size + 8 * n
        (head_crc,) = _U32.unpack_from(raw, end)
    except struct.error as exc:
        raise CorruptLog(f"snapshot file {name} is truncated: {exc}") from exc
    if magic != _SNAP_MAGIC or zlib.crc32(raw[:end]) != head_crc:
        raise CorruptLog(f"snapshot file {name} is damaged")
    meta = SnapshotMeta(index, term, tuple(NodeId(v) for v in voters))
    return SnapshotFileHeader(GroupId(group), meta, size, crc, end + _U32.size)


def write_atomically(path: Path, parts: Sequence[bytes], *, fsync: bool) -> None:
    """tmp + fsync + rename + directory fsync: the file exists whole or not at all."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make renames, creations and deletions in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentFile:
    """The segment being appended to. Records are buffered and reach the file in one ``writev``
    per flush; ``durable`` tracks the size at the last sync (maintained even when fsync is off,
    so a simulated crash knows exactly what a real one could lose)."""

    FLUSH_BYTES = 1 << 20

    def __init__(self, directory: Path, seq: int, fd: int, size: int, *, fsync: bool) -> None:
        self.seq = seq
        self.path = directory / segment_name(seq)
        self._fd = fd
        self._fsync = fsync
        self.size = size
        """Logical size: bytes in the file plus bytes still buffered."""
        self.durable = size
        self._flushed = size
        self._pending: list[bytes] = []
        self.fsyncs = 0

    @classmethod
    def create(cls, directory: Path, seq: int, *, fsync: bool) -> SegmentFile:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL
        fd = os.open(directory / segment_name(seq), flags, 0o644)
        seg = cls(directory, seq, fd, 0, fsync=fsync)
        seg.durable = 0
        return seg

    @classmethod
    def open_existing(cls, directory: Path, seq: int, *, fsync: bool) -> SegmentFile:
        fd = os.open(directory / segment_name(seq), os.O_RDWR | os.O_APPEND)
        return cls(directory, seq, fd, os.fstat(fd).st_size, fsync=fsync)

    def append(self, header: bytes, payload: bytes) -> int:
        """Buffer one record; returns its offset in the segment."""
        offset = self.size
        self._pending.append(header)
        self._pending.append(payload)
        self.size += len(header) + len(payload)
        if self.size - self._flushed >= self.FLUSH_BYTES:
            self.flush()
        return offset

    def flush(self) -> None:
        """Hand buffered records to the OS. On failure the file is cut back to its last flushed
        size, so no half-written record is left in front of later ones."""
        if not self._pending:
            return
        bufs, self._pending = self._pending, []
        try:
            for i in range(0, len(bufs), _IOV_MAX):
                chunk = bufs[i : i + _IOV_MAX]
                done = os.writev(self._fd, chunk)
                want = sum(map(len, chunk))
                if done < want:
                    rest = memoryview(b"".join(chunk))[done:]
                    while rest:
                        rest = rest[os.write(self._fd, rest) :]
        except OSError as exc:
            self.size = self._flushed
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._flushed)
            raise StorageError(f"write to {self.path.name} failed: {exc}") from exc
        self._flushed = self.size

    def sync(self, *, force: bool = False) -> bool:
        """Flush and fsync; returns False when there was nothing new to make durable. ``force``
        fsyncs anyway (bytes found on open may have come from a process that never synced)."""
        self.flush()
        if self.durable == self.size and not force:
            return False
        if self._fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise StorageError(f"fsync of {self.path.name} failed: {exc}") from exc
            self.fsyncs += 1
        self.durable = self.size
        return True

    def cut(self, keep_unsynced: int) -> None:
        """Simulated crash: keep what was durable plus ``keep_unsynced`` more bytes."""
        self.flush()
        keep = self.durable + max(0, min(keep_unsynced, self.size - self.durable))
        os.ftruncate(self._fd, keep)
        self.size = self._flushed = keep

    def close(self) -> None:
        """Idempotent: a descriptor number is reused by the kernel at once, so closing it twice
        could close some other file of the process."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
