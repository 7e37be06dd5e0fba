"""InstallSnapshot in chunks: how a leader cuts a snapshot and how a follower reassembles it.

Chunks travel one at a time (the leader sends the next one when the previous is acknowledged), so
the receiver only ever appends at the end of its buffer. Anything else — a duplicate, a chunk of an
older snapshot, a gap left by a lost message — is answered with the offset the receiver really
holds, and the leader resends from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.messages import Snapshot, SnapshotChunk, SnapshotMeta


def cut_chunk(snapshot: Snapshot, offset: int, chunk_bytes: int) -> tuple[int, bytes, bool]:
    """The chunk starting at ``offset`` (clamped): (offset, data, is_last)."""
    offset = min(max(offset, 0), len(snapshot.data))
    data = snapshot.data[offset : offset + chunk_bytes]
    return offset, data, offset + len(data) >= len(snapshot.data)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """``complete`` is the whole snapshot once its last chunk arrived intact; otherwise
    ``next_offset`` is what to acknowledge (the bytes held so far)."""

    next_offset: int
    complete: Snapshot | None = None


class SnapshotReceiver:
    """A download belongs to one leader's term: two leaders' snapshots at the same index hold
    the same state but need not be the same bytes, so chunks of two senders never mix."""

    def __init__(self) -> None:
        self._meta: SnapshotMeta | None = None
        self._source: tuple[int, int] = (0, 0)  # (sender, term) of the download in progress
        self._total = 0
        self._buffer = bytearray()

    def accept(self, chunk: SnapshotChunk) -> ChunkResult:
        source = (int(chunk.sender), chunk.term)
        same = self._meta == chunk.meta and self._source == source
        if chunk.offset == 0 and not (same and self._buffer):
            self._meta, self._total, self._buffer = chunk.meta, chunk.total_size, bytearray()
            self._source = source
            same = True
        if not same or chunk.offset != len(self._buffer):
            return ChunkResult(len(self._buffer) if same else 0)
        self._buffer += chunk.data
        if not chunk.done:
            return ChunkResult(len(self._buffer))
        buffer, total = self._buffer, self._total
        self._meta, self._source, self._total, self._buffer = None, (0, 0), 0, bytearray()
        if len(buffer) != total:
            return ChunkResult(0)  # the last chunk came but the sizes disagree: start over
        return ChunkResult(total, Snapshot(chunk.meta, bytes(buffer)))
