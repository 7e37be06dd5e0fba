"""Snapshots on disk, a chunk at a time: a read-only view of a file region, and the streaming
writer and reader of the store's snapshot file format (described in ``cluster.wal``).

Why views hold a file descriptor, not a path: the store renames a staged snapshot file into
place and deletes superseded ones while a replica may still be sending chunks from them (or a
state machine restoring from one). An open descriptor keeps reading the same bytes through
renames and unlinks, and the disk space of a deleted file comes back when its last view closes —
explicitly (``close()``) or when the view is garbage collected. Snapshot files are immutable once
written, so a view never sees them change.

Nothing here holds more than one chunk (``cluster.snapshot.COPY_CHUNK_BYTES``) in memory.
"""

from __future__ import annotations

import contextlib
import os
import weakref
import zlib
from pathlib import Path

from cluster import wal
from cluster.errors import CorruptLog, StorageError
from cluster.messages import Snapshot, SnapshotData, SnapshotMeta
from cluster.snapshot import COPY_CHUNK_BYTES, SnapshotSink, iter_chunks
from cluster.types import GroupId


class SnapshotFile:
    """Bytes ``[offset, offset + length)`` of a file, read with ``os.pread``: a
    ``SnapshotData`` whose memory cost is the slice being read.

    Equality is by content (compared a chunk at a time), so a view equals the ``bytes`` it
    holds; views are not hashable."""

    __slots__ = ("__weakref__", "_closer", "_fd", "_length", "_offset", "name")

    def __init__(self, fd: int, offset: int, length: int, name: str) -> None:
        """Take ownership of ``fd`` (closed by ``close()`` or when the view is collected)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad region [{offset}, +{length}) of {name}")
        self._fd = fd
        self._offset = offset
        self._length = length
        self.name = name
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], offset: int = 0, length: int | None = None
    ) -> SnapshotFile:
        """A view of ``path`` from ``offset`` to its end (or ``length`` bytes)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if length is None:
                length = max(0, size - offset)
            if offset + length > size:
                raise StorageError(f"{path} has {size} bytes, not {offset + length}")
            return cls(fd, offset, length, Path(path).name)
        except BaseException:
            os.close(fd)
            raise

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: slice, /) -> bytes:
        start, stop, step = key.indices(self._length)
        if step != 1:
            raise ValueError("snapshot data is read in contiguous slices only")
        if stop <= start:
            return b""
        return self._pread(start, stop - start)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SnapshotFile | bytes):
            return NotImplemented
        if len(other) != self._length:
            return False
        for offset in range(0, self._length, COPY_CHUNK_BYTES):
            stop = offset + COPY_CHUNK_BYTES
            if self[offset:stop] != other[offset:stop]:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # equal by content: no cheap hash

    def region(self, offset: int, length: int) -> SnapshotFile:
        """A view of ``length`` bytes from ``offset`` of this one, with its own descriptor."""
        if offset < 0 or length < 0 or offset + length > self._length:
            raise ValueError(f"[{offset}, +{length}) is not inside {self!r}")
        if self.closed:
            raise ValueError(f"{self!r} is closed")
        return SnapshotFile(os.dup(self._fd), self._offset + offset, length, self.name)

    def close(self) -> None:
        """Release the descriptor (idempotent); reading afterwards raises ValueError."""
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<SnapshotFile {self.name} [{self._offset}, +{self._length}){state}>"

    def _pread(self, start: int, n: int) -> bytes:
        if self.closed:
            raise ValueError(f"read from a closed view of {self.name}")
        parts: list[bytes] = []
        pos, want = self._offset + start, n
        try:
            while want:
                part = os.pread(self._fd, want, pos)
                if not part:
                    raise StorageError(f"snapshot file {self.name} ended {want} bytes early")
                parts.append(part)
                pos += len(part)
                want -= len(part)
        except OSError as exc:
            raise StorageError(f"cannot read snapshot file {self.name}: {exc}") from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)


class SnapshotFileWriter:
    """Writes one snapshot file at ``path`` in the store's format, streamed: the header's place
    is reserved (its length depends only on the number of voters), the data is appended with a
    running CRC, and ``finish`` fills the header in and fsyncs. Also a ``SnapshotSink``: a
    follower's chunks go straight into it. The caller renames the finished file into place."""

    def __init__(self, path: Path, group: GroupId, meta: SnapshotMeta, *, fsync: bool) -> None:
        self.path = path
        self._group = group
        self._meta = meta
        self._fsync = fsync
        self._header = wal.snapshot_file_header_size(len(meta.voters))
        self._size = 0
        self._crc = 0
        self._done = False
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create snapshot file {path.name}: {exc}") from exc
        try:
            self._write_all(bytes(self._header))
        except BaseException:
            self.abort()
            raise

    @property
    def size(self) -> int:
        """Data bytes written so far."""
        return self._size

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError(f"snapshot file {self.path.name} is already finished")
        self._write_all(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)

    def finish(self) -> SnapshotFile:
        """Complete the file (header written, fsynced unless the store runs without fsync) and
        return a view of its data, which owns the writer's descriptor."""
        if self._done:
            raise StorageError(f"snapshot file {self.path.name} is already finished")
        header = wal.encode_snapshot_file_header(self._group, self._meta, self._size, self._crc)
        try:
            if os.pwrite(self._fd, header, 0) != len(header):
                raise OSError("short write of the header")
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish snapshot file {self.path.name}: {exc}") from exc
        self._done = True
        return SnapshotFile(self._fd, self._header, self._size, self.path.name)

    def abort(self) -> None:
        """Drop the file (idempotent; nothing happens once finished)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write snapshot file {self.path.name}: {exc}") from exc


def read_snapshot_file(path: Path) -> tuple[wal.SnapshotFileHeader, SnapshotFile]:
    """Open the snapshot file at ``path``, check both of its CRCs (the data's by streaming it)
    and return its header and a view of its data. Raises CorruptLog if it is damaged, torn or
    unreadable."""
    name = path.name
    try:
        whole = SnapshotFile.open(path)
    except (StorageError, OSError) as exc:
        raise CorruptLog(f"snapshot file {name} is unreadable: {exc}") from exc
    try:
        header = wal.decode_snapshot_file_header(whole[0 : wal.SNAPSHOT_HEADER_MAX], name)
        if len(whole) != header.data_offset + header.size:
            raise CorruptLog(
                f"snapshot file {name} is damaged: {len(whole)} bytes, its header says "
                f"{header.data_offset + header.size}"
            )
        data = whole.region(header.data_offset, header.size)
        crc = 0
        for chunk in iter_chunks(data):
            crc = zlib.crc32(chunk, crc)
        if crc != header.crc:
            data.close()
            raise CorruptLog(f"snapshot file {name} is damaged")
        return header, data
    except CorruptLog:
        raise
    except (StorageError, OSError) as exc:
        raise CorruptLog(f"snapshot file {name} is unreadable: {exc}") from exc
    finally:
        whole.close()


class _Staged:
    """One staged snapshot file: ``<name>.tmp`` in the directory, not in the log yet.
    ``data`` is set once it is complete: the view the ``Snapshot`` handed out holds."""

    __slots__ = ("data", "group", "meta", "name")

    def __init__(self, group: GroupId, meta: SnapshotMeta, name: str) -> None:
        self.group = group
        self.meta = meta
        self.name = name
        self.data: SnapshotFile | None = None


class SnapshotStaging:
    """The snapshot files of a data directory that are written, or being written, before the
    log names them. ``LogStore`` owns one.

    Why stage: Raft takes hold of a snapshot (a follower's complete download, a local snapshot
    handed to ``NodeDriver.compact``) before the store persists it, and keeps sending chunks of
    it afterwards. Writing the data into its final file's ``.tmp`` first makes the ``Snapshot``
    Raft holds a view of that very file, so persisting it is a rename, and nothing is ever held
    in memory. A staged file nobody adopts — a download abandoned, or one Raft turned out not to
    need — is deleted with the next staging of its group, at close, or (after a crash) when the
    store opens and deletes every ``.tmp``. Views keep reading through their descriptors
    whatever happens to the names.
    """

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self._root = root
        self._fsync = fsync
        self._staged: dict[str, _Staged] = {}  # by final file name
        self.last_number = 0
        """The last ``snap-<n>.snap`` number handed out (the store sets it when it opens)."""
        self.fsyncs = 0

    def receive(self, group: GroupId, meta: SnapshotMeta) -> SnapshotSink:
        """A sink whose chunks go straight into a new staged file (see ``LogStore``)."""
        staged = self._begin(group, meta)
        try:
            return _StagingSink(self, staged, self._writer(staged))
        except BaseException:
            del self._staged[staged.name]
            raise

    def copy(self, group: GroupId, meta: SnapshotMeta, data: SnapshotData) -> Snapshot:
        """Copy ``data`` into a new staged file, a chunk at a time; the snapshot returned is a
        view of it."""
        staged = self._copy(group, meta, data)
        assert staged.data is not None
        return Snapshot(meta, staged.data)

    def start_copy(self, group: GroupId, meta: SnapshotMeta) -> StagedCopy:
        """Begin staging a local snapshot whose bytes another thread will write
        (``StagedCopy``); older complete staged files of ``group`` are dropped first."""
        self.drop_unadopted(group)
        staged = self._begin(group, meta)
        try:
            return StagedCopy(self, staged, self._writer(staged))
        except BaseException:
            del self._staged[staged.name]
            raise

    def adopt(self, group: GroupId, snapshot: Snapshot) -> str:
        """Give ``snapshot`` its final file (tmp + fsync + rename + directory fsync) and return
        the file's name: only the rename if it is a view of a file staged here for ``group``,
        a copy first otherwise."""
        staged = self._find(group, snapshot)
        if staged is None:
            staged = self._copy(group, snapshot.meta, snapshot.content)
        try:
            os.replace(self._tmp(staged.name), self._root / staged.name)
            if self._fsync:
                wal.fsync_dir(self._root)
                self.fsyncs += 1
        except OSError as exc:
            raise StorageError(f"cannot write snapshot file {staged.name}: {exc}") from exc
        del self._staged[staged.name]
        self.drop_unadopted(group)
        return staged.name

    def drop_unadopted(self, group: GroupId) -> None:
        """Delete the complete staged files of ``group`` that were never adopted (downloads in
        progress are their sinks' to finish or abort)."""
        for name in [n for n, s in self._staged.items() if s.group == group and s.data is not None]:
            del self._staged[name]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp(name))

    def clear(self) -> None:
        """Delete every staged file (the store is closing: nothing can adopt them any more)."""
        for name in list(self._staged):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp(name))
        self._staged.clear()

    def _begin(self, group: GroupId, meta: SnapshotMeta) -> _Staged:
        self.last_number += 1
        staged = _Staged(group, meta, wal.snapshot_file_name(self.last_number))
        self._staged[staged.name] = staged
        return staged

    def _writer(self, staged: _Staged) -> SnapshotFileWriter:
        return SnapshotFileWriter(
            self._tmp(staged.name), staged.group, staged.meta, fsync=self._fsync
        )

    def _complete(self, staged: _Staged, data: SnapshotFile) -> None:
        self.fsyncs += int(self._fsync)
        staged.data = data

    def _copy(self, group: GroupId, meta: SnapshotMeta, data: SnapshotData) -> _Staged:
        copy = self.start_copy(group, meta)
        try:
            copy.complete(copy.write(data))
        except BaseException:
            copy.abort()
            raise
        return copy.staged

    def _find(self, group: GroupId, snapshot: Snapshot) -> _Staged | None:
        for staged in self._staged.values():
            if staged.data is not None and staged.data is snapshot.content:
                return staged if (staged.group, staged.meta) == (group, snapshot.meta) else None
        return None

    def _tmp(self, name: str) -> Path:
        return self._root / (name + wal.TMP_SUFFIX)


class _StagingSink:
    """``SnapshotStaging.receive``'s sink: a snapshot file writer whose finished view the
    staging area will recognise, and whose aborted file it forgets."""

    def __init__(
        self, staging: SnapshotStaging, staged: _Staged, writer: SnapshotFileWriter
    ) -> None:
        self._staging = staging
        self._staged = staged
        self._writer = writer

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except BaseException:
            self.abort()  # the writer dropped its file already
            raise

    def finish(self) -> SnapshotData:
        staging, staged = self._staging, self._staged
        try:
            view = self._writer.finish()
        except BaseException:
            staging._staged.pop(staged.name, None)
            raise
        staging.drop_unadopted(staged.group)
        staging._complete(staged, view)
        return view

    def abort(self) -> None:
        self._writer.abort()
        self._staging._staged.pop(self._staged.name, None)


class StagedCopy:
    """A staged snapshot file being written from a local snapshot: ``write`` touches nothing
    but its own file, so it may run on a worker thread while the store goes on; ``complete``
    and ``abort`` change the staging's books and run where the store is used (the loop)."""

    __slots__ = ("_staging", "_writer", "staged")

    def __init__(
        self, staging: SnapshotStaging, staged: _Staged, writer: SnapshotFileWriter
    ) -> None:
        self._staging = staging
        self.staged = staged
        self._writer = writer

    def write(self, data: SnapshotData) -> SnapshotFile:
        """Copy ``data`` into the file a chunk at a time and finish it (header, fsync); the
        view returned is for ``complete``."""
        for chunk in iter_chunks(data):
            self._writer.write(chunk)
        return self._writer.finish()

    def complete(self, written: SnapshotFile) -> Snapshot:
        """The staged snapshot as a view of its file, ready for ``LogStore.save_snapshot``."""
        self._staging._complete(self.staged, written)
        return Snapshot(self.staged.meta, written)

    def abort(self) -> None:
        """Drop the file and forget it, written or not (idempotent; nothing happens once the
        store adopted it)."""
        self._writer.abort()
        if self._staging._staged.pop(self.staged.name, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging._tmp(self.staged.name))
