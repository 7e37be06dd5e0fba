"""InstallSnapshot in chunks: how a leader cuts a snapshot and how a follower reassembles it.

Chunks travel one at a time (the leader sends the next one when the previous is acknowledged), so
the receiver only ever appends at the end of what it holds. Anything else — a duplicate, a chunk
of an older snapshot, a gap left by a lost message — is answered with the offset the receiver
really holds, and the leader resends from there.

Neither side holds a whole snapshot: the leader reads one chunk at a time through
``SnapshotData`` (a file region on a node host), and the follower appends each chunk to a
``SnapshotSink``. The core only knows the sink's three methods; which sink to use is the
runtime's choice (``SnapshotReceiver(sink_factory)``): the default keeps the bytes in memory (the
simulation and scripted tests), a node host passes one that writes straight into a file of its
data directory (``LogStore.receive_snapshot``), so receiving costs one chunk of memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cluster.messages import Snapshot, SnapshotChunk, SnapshotData, SnapshotMeta

COPY_CHUNK_BYTES = 1 << 20
"""Slice size for streaming a snapshot through memory (copying, checking, restoring)."""


def cut_chunk(snapshot: Snapshot, offset: int, chunk_bytes: int) -> tuple[int, bytes, bool]:
    """The chunk starting at ``offset`` (clamped): (offset, data, is_last)."""
    size = len(snapshot.content)
    offset = min(max(offset, 0), size)
    data = snapshot.content[offset : offset + chunk_bytes]
    return offset, data, offset + len(data) >= size


def iter_chunks(data: SnapshotData, chunk_bytes: int = COPY_CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` in consecutive slices of at most ``chunk_bytes`` (nothing for empty data)."""
    size = len(data)
    for offset in range(0, size, chunk_bytes):
        yield data[offset : offset + chunk_bytes]


class SnapshotSink(Protocol):
    """Where a follower puts the chunks of one download, in order."""

    def write(self, data: bytes) -> None:
        """Append the next chunk."""
        ...

    def finish(self) -> SnapshotData:
        """Every chunk arrived: the complete data (the sink is done after this)."""
        ...

    def abort(self) -> None:
        """The download was abandoned: drop what was written (the sink is done after this)."""
        ...


SinkFactory = Callable[[SnapshotMeta, int], SnapshotSink]
"""``factory(meta, total_size)`` opens the sink for a new download."""


class MemorySink:
    """The default sink: the chunks in memory. Right for tests and the simulation, where
    snapshots are small; a node host passes a file-backed one."""

    def __init__(self, meta: SnapshotMeta, total_size: int) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data

    def finish(self) -> SnapshotData:
        data, self._buffer = bytes(self._buffer), bytearray()
        return data

    def abort(self) -> None:
        self._buffer = bytearray()


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """``complete`` is the whole snapshot once its last chunk arrived intact; otherwise
    ``next_offset`` is what to acknowledge (the bytes held so far)."""

    next_offset: int
    complete: Snapshot | None = None


class SnapshotReceiver:
    """A download belongs to one leader's term: two leaders' snapshots at the same index hold
    the same state but need not be the same bytes, so chunks of two senders never mix."""

    def __init__(self, sink_factory: SinkFactory | None = None) -> None:
        self._factory: SinkFactory = sink_factory or MemorySink
        self._meta: SnapshotMeta | None = None
        self._source: tuple[int, int] = (0, 0)  # (sender, term) of the download in progress
        self._total = 0
        self._received = 0
        self._sink: SnapshotSink | None = None

    def accept(self, chunk: SnapshotChunk) -> ChunkResult:
        source = (int(chunk.sender), chunk.term)
        same = self._sink is not None and self._meta == chunk.meta and self._source == source
        if chunk.offset == 0 and not (same and self._received):
            self._start(chunk.meta, source, chunk.total_size)
            same = True
        if not same or chunk.offset != self._received:
            return ChunkResult(self._received if same else 0)
        sink = self._sink
        assert sink is not None
        sink.write(chunk.data)
        self._received += len(chunk.data)
        if not chunk.done:
            return ChunkResult(self._received)
        received, total = self._received, self._total
        self._reset()
        if received != total:
            sink.abort()
            return ChunkResult(0)  # the last chunk came but the sizes disagree: start over
        return ChunkResult(total, Snapshot(chunk.meta, sink.finish()))

    def _start(self, meta: SnapshotMeta, source: tuple[int, int], total: int) -> None:
        if self._sink is not None:
            self._sink.abort()
        self._reset()
        self._sink = self._factory(meta, total)
        self._meta, self._source, self._total = meta, source, total

    def _reset(self) -> None:
        self._meta, self._source, self._total, self._received = None, (0, 0), 0, 0
        self._sink = None
