"""Durable Raft log storage shared by every group hosted on a node.

Why one store for all groups: a node's runtime persists the ``Ready`` of every group it hosts and
then calls :meth:`LogStore.sync` once, so a whole round costs one fsync (group commit). The WAL
format is described in :mod:`cluster.wal`.

Data directory layout::

    IDENTITY                 JSON {format, version, node_id, cluster_id}, written atomically
    LOCK                     flock'ed while a store has the directory open
    wal-<seq>.log            log segments (see cluster.wal)
    snap-<n>.snap            one file per live snapshot: a CRC-checked header, then the data
    *.tmp                    files being written (staged snapshots, scratch); deleted on open

Design decisions:

- **Metadata only in memory.** Replaying the log on open decodes every record header but keeps,
  per group, only its voters, hard state, snapshot pointer, last index and a list of *extents*
  (which entry range lives in which ENTRIES record at which segment offset). :meth:`load` reads
  the entries back from disk: memory grows with the number of uncompacted append batches, never
  with their bytes.
- **Overwrite.** An ENTRIES record starting at index ``i`` replaces everything the group had at
  ``i`` and above, both at run time and on replay (the same ``_apply_*`` code does both).
- **Crash recovery.** Only the last segment may end in damage (a torn write): it is truncated to
  the last intact record and described in :attr:`LogStore.recovery`. Damage anywhere else, a
  missing segment or snapshot file, or a log with a hole, is :class:`CorruptLog`: never served.
  A damaged record is always cut together with everything after it, so a corrupt record is never
  returned and every record before it is. (Media damage in the middle of the last segment looks
  like a torn write, so it also cuts the records after it; ``recovery`` says so. Checkpoints carry
  each group's last index, so a cut that would lose entries a deleted segment held is CorruptLog,
  not a silently shorter log.)
- **Rotation is a durability point.** A full segment is fsynced, and the next one is created with
  a CHECKPOINT record, fsynced, and its directory entry fsynced, before any more records go in.
  So only the newest segment can ever hold unsynced bytes, and a crash can only tear its tail.
- **One caller at a time.** The store is not thread-safe: a runtime that moves ``sync()`` to a
  worker thread must not call anything else on the store until it returns.
- **Compaction.** A snapshot's data goes to its own file (tmp + fsync + rename + dir fsync) before
  the SNAPSHOT record that points to it is written. Once a :meth:`sync` makes that record durable,
  older snapshot files of the group are deleted, and so is every segment, oldest first, that no
  longer holds a live entry of any group (its state is in the next segment's checkpoint).
- **Snapshots never sit in memory.** Files are written and checked a chunk at a time
  (``cluster.snapshotfile``), and :meth:`load` hands back a view of the file, not its bytes.
  Snapshot data is *staged* into its ``.tmp`` file before Raft sees it: a follower's chunks are
  written there as they arrive (:meth:`receive_snapshot`), a local snapshot is copied there
  (:meth:`stage_snapshot`), so the ``Snapshot`` a replica keeps (and sends from) is already a view
  of that file, and :meth:`save_snapshot` only renames it into place. Data that was not staged
  here (``bytes``, another file) is copied by ``save_snapshot`` itself. See
  ``cluster.snapshotfile.SnapshotStaging`` for what becomes of files nobody adopts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster import wal
from cluster.errors import CorruptLog, DataDirMismatch, StorageError
from cluster.messages import Entry, HardState, Snapshot, SnapshotData, SnapshotMeta, StoredState
from cluster.snapshot import SnapshotSink
from cluster.snapshotfile import SnapshotStaging, StagedCopy, read_snapshot_file
from cluster.types import GroupId, NodeId
from cluster.wal import RecordType, SnapshotPointer

FORMAT = "raftchat-log"
FORMAT_VERSION = 1
_IDENTITY = "IDENTITY"
_LOCK = "LOCK"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening the store had to cut. ``reason`` is "" when nothing was cut."""

    truncated_bytes: int = 0
    segment: str | None = None
    offset: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters for benchmarks: real fsyncs, sync() calls that had something to make durable,
    records written and their bytes (headers included)."""

    fsyncs: int
    syncs: int
    records: int
    bytes_written: int
    segments: int


@dataclass(frozen=True, slots=True)
class _Extent:
    """Entries ``first..last`` of a group live in the ENTRIES record at ``seq``/``offset``."""

    first: int
    last: int
    seq: int
    offset: int


class _GroupState:
    """A group's metadata; never its entries."""

    __slots__ = ("extents", "hard_state", "last_index", "snapshot", "voters")

    def __init__(self, voters: tuple[NodeId, ...]) -> None:
        self.voters = voters
        self.hard_state = HardState()
        self.snapshot: SnapshotPointer | None = None
        self.last_index = 0
        self.extents: deque[_Extent] = deque()

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0


class LogStore:
    """The durable log of every Raft group on one node. Create with :meth:`open`."""

    def __init__(
        self, root: Path, lock_fd: int, *, node_id: NodeId, fsync: bool, segment_bytes: int
    ) -> None:
        self._root = root
        self._lock_fd = lock_fd
        self._node_id = node_id
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._groups: dict[GroupId, _GroupState] = {}
        self._segments: list[int] = []
        self._refs: dict[int, int] = {}  # segment seq -> live extents in it
        self._active: wal.SegmentFile | None = None
        self._active_base = 0  # size of the active segment's checkpoint, if written by us
        self._obsolete_snapshots: list[str] = []
        self._staging = SnapshotStaging(root, fsync=fsync)
        self._closed = False
        self._failed: StorageError | None = None
        self._fsyncs = 0
        self._syncs = 0
        self._records = 0
        self._bytes = 0
        self.recovery = RecoveryReport()

    # -----------------------------------------------------------------------------------------
    # Opening.
    # -----------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        node_id: NodeId,
        cluster_id: str,
        fsync: bool = True,
        segment_bytes: int = 64 << 20,
    ) -> LogStore:
        """Open (or create) the data directory at ``path``, recovering from any torn tail."""
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        identity_needed = _check_identity(root, node_id, cluster_id)
        lock_fd = _lock(root)
        try:
            if identity_needed:
                _write_identity(root, node_id, cluster_id, fsync=fsync)
            store = cls(root, lock_fd, node_id=node_id, fsync=fsync, segment_bytes=segment_bytes)
            store._recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def _recover(self) -> None:
        names = os.listdir(self._root)
        for name in names:
            if name.endswith(wal.TMP_SUFFIX):
                os.unlink(self._root / name)
        snap_numbers = {n: wal.parse_snapshot_file_name(n) for n in names}
        snap_files = {n for n, number in snap_numbers.items() if number is not None}
        self._staging.last_number = max((n or 0 for n in snap_numbers.values()), default=0)
        seqs = sorted(s for s in map(wal.parse_segment_name, names) if s is not None)
        if seqs and seqs != list(range(seqs[0], seqs[-1] + 1)):
            raise CorruptLog(f"log segments are missing: found {seqs}")
        for i, seq in enumerate(seqs):
            self._replay_segment(seq, first=i == 0, last=i == len(seqs) - 1)
            self._segments.append(seq)
        if not seqs:
            self._start_segment(1)
        elif self._segment_is_empty(seqs[-1]):
            # The last segment's checkpoint itself was torn; rebuild it from what came before.
            os.unlink(self._root / wal.segment_name(seqs[-1]))
            self._segments.pop()
            self._start_segment(seqs[-1])
        else:
            self._active = wal.SegmentFile.open_existing(self._root, seqs[-1], fsync=self._fsync)
            # What we replayed may still sit only in the page cache (the previous process died
            # before its sync): make it durable before deleting anything on its strength.
            self._active.sync(force=True)
        self._validate_and_clean(snap_files)
        self._collect_garbage()

    def _segment_is_empty(self, seq: int) -> bool:
        return os.path.getsize(self._root / wal.segment_name(seq)) == 0

    def _replay_segment(self, seq: int, *, first: bool, last: bool) -> None:
        name = wal.segment_name(seq)
        path = self._root / name
        buf = path.read_bytes()
        scanner = wal.SegmentScanner(buf)
        for offset, rtype, payload in scanner:
            record = wal.decode(rtype, payload)
            if offset == 0:
                if not isinstance(record, wal.Checkpoint):
                    raise CorruptLog(f"{name} does not start with a checkpoint")
                if first:
                    self._apply_checkpoint(record)
                continue
            self._apply(record, seq, offset)
        damage = scanner.damage
        if damage is None:
            if scanner.end == 0 and (not last or (first and seq != 1)):
                raise CorruptLog(f"{name} is empty: it lacks the checkpoint later state rests on")
            return
        where = f"{name} at offset {damage.offset}: {damage.reason}"
        if not last:
            raise CorruptLog(f"damaged record in {where} (only the last segment may be torn)")
        if damage.offset == 0 and first and seq != 1:
            raise CorruptLog(f"the checkpoint of {where}; older segments are already compacted")
        os.truncate(path, damage.offset)
        self.recovery = RecoveryReport(len(buf) - damage.offset, name, damage.offset, damage.reason)

    def _validate_and_clean(self, snap_files: set[str]) -> None:
        live: set[str] = set()
        for group, g in self._groups.items():
            expected = g.snapshot_index + 1
            for i, ext in enumerate(g.extents):
                if ext.first > expected or (i > 0 and ext.first != expected):
                    raise CorruptLog(f"group {group}: the log has a hole before index {ext.first}")
                expected = ext.last + 1
            if expected - 1 != g.last_index:
                raise CorruptLog(f"group {group}: last index {g.last_index} not backed by records")
            if g.snapshot is not None:
                if g.snapshot.name not in snap_files:
                    raise CorruptLog(f"group {group}: snapshot file {g.snapshot.name} is missing")
                live.add(g.snapshot.name)
        for name in snap_files - live:
            os.unlink(self._root / name)

    # -----------------------------------------------------------------------------------------
    # Applying records to the in-memory metadata: shared by replay and by the write path.
    # -----------------------------------------------------------------------------------------

    def _apply(self, record: wal.Record, seq: int, offset: int) -> None:
        if isinstance(record, wal.EntriesHeader):
            self._apply_entries(self._group(record.group), record, seq, offset)
        elif isinstance(record, wal.HardStateRecord):
            self._group(record.group).hard_state = record.hard_state
        elif isinstance(record, wal.GroupRecord):
            if record.group in self._groups:
                self._groups[record.group].voters = record.voters
            else:
                self._groups[record.group] = _GroupState(record.voters)
        elif isinstance(record, wal.SnapshotRecord):
            self._apply_snapshot(self._group(record.group), record.pointer, record.discard_log)
        else:
            raise CorruptLog(f"a checkpoint in the middle of segment {seq}")

    def _group(self, group: GroupId) -> _GroupState:
        try:
            return self._groups[group]
        except KeyError:
            raise CorruptLog(f"a record for group {group}, which was never created") from None

    def _apply_checkpoint(self, ckpt: wal.Checkpoint) -> None:
        for c in ckpt.groups:
            g = _GroupState(c.voters)
            g.hard_state = c.hard_state
            g.snapshot = c.snapshot
            # Entries up to last_index sit in older segments: deleted only once compacted, so a
            # record later in the log must compact them, or _validate_and_clean objects.
            g.last_index = c.last_index
            self._groups[c.group] = g

    def _apply_entries(self, g: _GroupState, rec: wal.EntriesHeader, seq: int, offset: int) -> None:
        self._drop_from(g, rec.first_index)
        g.extents.append(_Extent(rec.first_index, rec.first_index + rec.count - 1, seq, offset))
        self._refs[seq] = self._refs.get(seq, 0) + 1
        g.last_index = rec.first_index + rec.count - 1

    def _drop_from(self, g: _GroupState, index: int) -> None:
        """Forget the group's entries at ``index`` and above (Raft log overwrite)."""
        extents = g.extents
        while extents and extents[-1].first >= index:
            self._unref(extents.pop().seq)
        if extents and extents[-1].last >= index:
            ext = extents[-1]
            extents[-1] = _Extent(ext.first, index - 1, ext.seq, ext.offset)

    def _apply_snapshot(self, g: _GroupState, ptr: SnapshotPointer, discard_log: bool) -> None:
        extents = g.extents
        if discard_log or ptr.index >= g.last_index:
            while extents:
                self._unref(extents.pop().seq)
            g.last_index = ptr.index
        else:
            while extents and extents[0].last <= ptr.index:
                self._unref(extents.popleft().seq)
        g.snapshot = ptr

    def _unref(self, seq: int) -> None:
        self._refs[seq] -= 1

    # -----------------------------------------------------------------------------------------
    # Public API.
    # -----------------------------------------------------------------------------------------

    def groups(self) -> list[GroupId]:
        """Every group this node has recorded, in id order."""
        return sorted(self._groups)

    def ensure_group(self, group: GroupId, voters: tuple[NodeId, ...]) -> None:
        """Record a group and its voters the first time; afterwards insist they are unchanged."""
        self._check_writable()
        g = self._groups.get(group)
        if g is not None:
            if sorted(g.voters) != sorted(voters):
                raise DataDirMismatch(
                    f"group {group} is stored with voters {g.voters} in {self._root}, "
                    f"but was opened with voters {tuple(voters)}"
                )
            return
        if not voters or not 0 <= group <= 0xFFFF_FFFF:
            raise ValueError(f"group {group} needs a u32 id and at least one voter: {voters}")
        self._write(RecordType.GROUP, wal.encode_group(group, voters))
        self._groups[group] = _GroupState(tuple(voters))

    def load(self, group: GroupId) -> StoredState:
        """Hard state, latest snapshot (with its data) and the entries after it, read from disk."""
        g = self._known(group)
        assert self._active is not None
        self._active.flush()
        snapshot = None
        if g.snapshot is not None:
            snapshot = self._read_snapshot(group, g.snapshot)
        entries: list[Entry] = []
        lo = g.snapshot_index + 1
        fds: dict[int, int] = {}
        try:
            for ext in g.extents:
                name = wal.segment_name(ext.seq)
                if ext.seq not in fds:
                    fds[ext.seq] = os.open(self._root / name, os.O_RDONLY)
                rtype, payload = wal.read_record(fds[ext.seq], ext.offset, name)
                if rtype != RecordType.ENTRIES:
                    raise CorruptLog(f"{name}: expected entries at {ext.offset}, found {rtype}")
                entries.extend(wal.decode_entries(payload, max(lo, ext.first), ext.last))
        except OSError as exc:
            raise CorruptLog(f"group {group}: cannot read its log: {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)
        if len(entries) != g.last_index - g.snapshot_index:
            raise CorruptLog(f"group {group}: read {len(entries)} entries, expected a full log")
        return StoredState(hard_state=g.hard_state, snapshot=snapshot, entries=tuple(entries))

    def append(self, group: GroupId, entries: Sequence[Entry]) -> None:
        """Store contiguous ``entries``; whatever the group had at ``entries[0].index`` and above
        is replaced. Entries at or below the snapshot index are skipped (they are committed, so
        the snapshot already covers them). Not durable until :meth:`sync`."""
        if not entries:
            return
        g = self._known(group)
        first = entries[0].index
        if entries[-1].index - first != len(entries) - 1:
            raise StorageError(
                f"group {group}: entries {first}..{entries[-1].index} not contiguous"
            )
        if first <= g.snapshot_index:
            entries = entries[g.snapshot_index + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        if first > g.last_index + 1:
            raise StorageError(
                f"group {group}: entry {first} would leave a hole after {g.last_index}"
            )
        seq, offset = self._write(RecordType.ENTRIES, wal.encode_entries(group, entries))
        self._apply_entries(g, wal.EntriesHeader(group, first, len(entries)), seq, offset)

    def set_hard_state(self, group: GroupId, hs: HardState) -> None:
        """Record term, vote and commit in one atomic record. Not durable until :meth:`sync`."""
        g = self._known(group)
        if hs == g.hard_state:
            return
        self._write(RecordType.HARD_STATE, wal.encode_hard_state(group, hs))
        g.hard_state = hs

    def save_snapshot(self, group: GroupId, snapshot: Snapshot, *, discard_log: bool) -> None:
        """Store a snapshot: its data durably in its own file now, the log record pointing to it
        at the next :meth:`sync`. ``discard_log`` (a snapshot from the leader) drops the whole log;
        otherwise (a local snapshot) only entries up to its index are compacted away."""
        g = self._known(group)
        meta = snapshot.meta
        if meta.index < g.snapshot_index:
            raise StorageError(
                f"group {group}: snapshot at {meta.index} is older than the stored one at "
                f"{g.snapshot_index}"
            )
        name = self._staging.adopt(group, snapshot)  # a rename if staged here, else a copy
        ptr = SnapshotPointer(meta.index, meta.term, tuple(meta.voters), name)
        self._write(RecordType.SNAPSHOT, wal.encode_snapshot(group, ptr, discard_log))
        if g.snapshot is not None:
            self._obsolete_snapshots.append(g.snapshot.name)
        self._apply_snapshot(g, ptr, discard_log)

    def receive_snapshot(self, group: GroupId, meta: SnapshotMeta, total_size: int) -> SnapshotSink:
        """A sink for a snapshot arriving from the leader in chunks (a runtime gives its replica
        ``functools.partial(store.receive_snapshot, group)``): the chunks go straight into a
        staged file, and ``finish()`` returns a view of it that :meth:`save_snapshot` adopts by
        renaming. ``total_size`` is only a promise of the sender's and is not trusted."""
        self._known(group)
        return self._staging.receive(group, meta)

    def stage_snapshot(self, group: GroupId, meta: SnapshotMeta, data: SnapshotData) -> Snapshot:
        """Copy ``data`` (a local snapshot, e.g. a file a state machine just wrote) into a staged
        file a chunk at a time, and return the snapshot as a view of it: pass that to
        :meth:`save_snapshot` (through ``NodeDriver.compact``), which then only renames it."""
        self._known(group)
        return self._staging.copy(group, meta, data)

    def start_snapshot_copy(self, group: GroupId, meta: SnapshotMeta) -> StagedCopy:
        """Like :meth:`stage_snapshot`, in three steps so the copy can run on a worker thread:
        ``write`` there, then ``complete`` (or ``abort``) here."""
        self._known(group)
        return self._staging.start_copy(group, meta)

    def scratch_path(self, group: GroupId) -> Path:
        """A path in the data directory where the application may write a snapshot of
        ``group`` (it is the caller's to delete; a crash leaves it to :meth:`open`, which deletes
        every ``.tmp`` file). Any file already there is removed."""
        path = self._root / f"scratch-{int(group)}{wal.TMP_SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return path

    def sync(self) -> None:
        """Make everything written so far durable with one fsync, then reclaim space that the
        now-durable records made obsolete."""
        self._check_writable()
        assert self._active is not None
        try:
            synced = self._active.sync()
        except StorageError as exc:
            self._failed = exc
            raise
        if synced:
            self._syncs += 1
        self._collect_garbage()

    def close(self) -> None:
        """Sync and release the directory. Idempotent."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._release()

    def crash(self, keep_unsynced: int = 0) -> None:
        """For tests and simulation: close WITHOUT syncing, as if the machine lost power. Every
        byte written since the last durability point is lost except the first ``keep_unsynced``
        (a torn write). Old snapshot files and segments pending deletion stay."""
        if self._closed:
            return
        try:
            if self._active is not None:
                self._active.cut(keep_unsynced)
        finally:
            self._release()

    @property
    def stats(self) -> StoreStats:
        fsyncs = self._fsyncs + self._staging.fsyncs
        fsyncs += self._active.fsyncs if self._active is not None else 0
        return StoreStats(fsyncs, self._syncs, self._records, self._bytes, len(self._segments))

    @property
    def path(self) -> Path:
        return self._root

    # -----------------------------------------------------------------------------------------
    # Writing.
    # -----------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"the store at {self._root} is closed")
        if self._failed is not None:
            raise StorageError(f"the store at {self._root} failed earlier: {self._failed}")

    def _known(self, group: GroupId) -> _GroupState:
        self._check_writable()
        g = self._groups.get(group)
        if g is None:
            raise StorageError(f"group {group} is unknown to this store; call ensure_group first")
        return g

    def _write(self, rtype: RecordType, payload: bytes) -> tuple[int, int]:
        """Append one record, rotating first if the segment is full; returns (seq, offset)."""
        seg = self._active
        assert seg is not None
        try:
            size = wal.HEADER.size + len(payload)
            if seg.size > self._active_base and seg.size + size > self._segment_bytes:
                seg = self._rotate()
            offset = seg.append(wal.frame(rtype, payload), payload)
        except StorageError as exc:
            self._failed = exc
            raise
        self._records += 1
        self._bytes += wal.HEADER.size + len(payload)
        return seg.seq, offset

    def _rotate(self) -> wal.SegmentFile:
        old = self._active
        assert old is not None
        if old.sync():
            self._syncs += 1
        self._fsyncs += old.fsyncs
        old.close()
        self._active = None  # a failed start of the next segment must not leave a closed one
        return self._start_segment(old.seq + 1)

    def _start_segment(self, seq: int) -> wal.SegmentFile:
        """Create segment ``seq`` holding a checkpoint of the current state, durably."""
        payload = wal.encode_checkpoint(self._checkpoint())
        try:
            seg = wal.SegmentFile.create(self._root, seq, fsync=self._fsync)
            self._active = seg
            self._segments.append(seq)
            seg.append(wal.frame(RecordType.CHECKPOINT, payload), payload)
            seg.sync()
            self._fsync_dir()
        except OSError as exc:
            raise StorageError(f"cannot start segment {seq}: {exc}") from exc
        self._active_base = seg.size
        self._records += 1
        self._bytes += wal.HEADER.size + len(payload)
        return seg

    def _checkpoint(self) -> wal.Checkpoint:
        return wal.Checkpoint(
            tuple(
                wal.CheckpointGroup(group, g.voters, g.hard_state, g.last_index, g.snapshot)
                for group, g in sorted(self._groups.items())
            )
        )

    def _fsync_dir(self) -> None:
        if self._fsync:
            wal.fsync_dir(self._root)
            self._fsyncs += 1

    def _collect_garbage(self) -> None:
        """Delete what durable records made obsolete: superseded snapshot files, and the oldest
        segments while none of their entries is live (the next segment's checkpoint covers the
        rest of their state)."""
        try:
            for name in self._obsolete_snapshots:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._root / name)
            self._obsolete_snapshots.clear()
            active = self._active.seq if self._active is not None else None
            segments = self._segments
            while segments and segments[0] != active and not self._refs.get(segments[0]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._root / wal.segment_name(segments[0]))
                self._refs.pop(segments.pop(0), None)
        except OSError as exc:
            raise StorageError(f"cannot delete obsolete files in {self._root}: {exc}") from exc

    def _release(self) -> None:
        self._closed = True
        self._staging.clear()
        if self._active is not None:
            self._fsyncs += self._active.fsyncs
            self._active.close()
            self._active = None
        os.close(self._lock_fd)

    # -----------------------------------------------------------------------------------------
    # Snapshot files.
    # -----------------------------------------------------------------------------------------

    def _read_snapshot(self, group: GroupId, ptr: SnapshotPointer) -> Snapshot:
        header, data = read_snapshot_file(self._root / ptr.name)
        if (header.group, header.meta.index, header.meta.term) != (group, ptr.index, ptr.term):
            data.close()
            raise CorruptLog(f"snapshot file {ptr.name} does not match its log record")
        return Snapshot(header.meta, data)


# ---------------------------------------------------------------------------------------------
# The data directory's identity and lock.
# ---------------------------------------------------------------------------------------------


def _check_identity(root: Path, node_id: NodeId, cluster_id: str) -> bool:
    """Raise DataDirMismatch unless ``root`` is ours or empty; True when it still needs an
    identity file."""
    path = root / _IDENTITY
    if not path.exists():
        foreign = [n for n in os.listdir(root) if n != _LOCK and not n.endswith(wal.TMP_SUFFIX)]
        if foreign:
            raise DataDirMismatch(
                f"{root} is not a raftchat data dir (no {_IDENTITY} file, but it holds "
                f"{sorted(foreign)[:5]})"
            )
        return True
    try:
        ident = json.loads(path.read_text())
        fmt, version = ident["format"], ident["version"]
        stored_node, stored_cluster = ident["node_id"], ident["cluster_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataDirMismatch(f"{root} is not a raftchat data dir ({path} unreadable)") from exc
    if fmt != FORMAT or version != FORMAT_VERSION:
        raise DataDirMismatch(f"{root} holds format {fmt!r} v{version}, not {FORMAT!r} v1")
    if stored_node != node_id or stored_cluster != cluster_id:
        raise DataDirMismatch(
            f"{root} belongs to node {stored_node} of cluster {stored_cluster!r}, "
            f"not to node {node_id} of cluster {cluster_id!r}"
        )
    return False


def _write_identity(root: Path, node_id: NodeId, cluster_id: str, *, fsync: bool) -> None:
    ident = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "node_id": node_id,
        "cluster_id": cluster_id,
    }
    wal.write_atomically(root / _IDENTITY, (json.dumps(ident).encode() + b"\n",), fsync=fsync)


def _lock(root: Path) -> int:
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{root} is already open by another store") from None
    return fd
