"""The in-memory view of one replica's Raft log: snapshot offset, entries, commit and apply marks.

Durable storage is the runtime's job; this class only remembers which suffix has not yet been
handed out for persisting (``unstable``) so ``Ready`` can name exactly the entries to write.
Entries live in one Python list indexed by ``index - offset - 1``; a snapshot moves the offset.
"""

from __future__ import annotations

from collections.abc import Sequence

from cluster.errors import Compacted
from cluster.messages import Entry, Snapshot, SnapshotMeta, StoredState


class RaftLog:
    def __init__(self, stored: StoredState, applied: int = 0) -> None:
        snap = stored.snapshot
        self._offset = snap.meta.index if snap else 0  # index of the entry just before _entries
        self._offset_term = snap.meta.term if snap else 0
        self.snapshot: Snapshot | None = snap  # the latest snapshot (ours or installed)
        self.pending_snapshot: Snapshot | None = None  # received; not yet persisted/restored
        self._entries: list[Entry] = list(stored.entries)
        if self._entries and self._entries[0].index != self._offset + 1:
            raise ValueError(
                f"stored entries start at {self._entries[0].index}, expected {self._offset + 1}"
            )
        self._unstable = self.last_index + 1  # first index not yet handed out for persisting
        # The state machine only ever applies committed entries, so what it holds is committed
        # even when the stored commit index (synced lazily, see Ready.must_sync) is older.
        self.committed = min(max(stored.hard_state.commit, self._offset, applied), self.last_index)
        self.applied = min(max(applied, self._offset), self.committed)

    # ---- queries -----------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._offset + 1

    @property
    def last_index(self) -> int:
        return self._offset + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when it is compacted away or beyond the end."""
        if index == self._offset:
            return self._offset_term
        pos = index - self._offset - 1
        if 0 <= pos < len(self._entries):
            return self._entries[pos].term
        return None

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a candidate's log at least as up to date as ours?"""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries ``[lo, hi)``; with ``max_bytes`` the slice stops before exceeding it (but always
        holds at least one entry)."""
        if lo < self.first_index:
            raise Compacted(f"entries before {self.first_index} are compacted (asked for {lo})")
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        out = self._entries[lo - self._offset - 1 : hi - self._offset - 1]
        if max_bytes > 0:
            size = 0
            for n, entry in enumerate(out):
                size += len(entry.data)
                if size > max_bytes and n > 0:
                    return out[:n]
        return out

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (the offset if none is left).

        Terms never decrease along a log, so this skips a whole conflicting term in one step."""
        index = min(index, self.last_index)
        while index > self._offset:
            t = self.term_at(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    # ---- mutations ---------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that start at or before ``last_index + 1``, replacing any suffix."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"overwriting committed entry {first} (commit {self.committed})")
        if first > self.last_index + 1:
            raise AssertionError(f"gap: appending {first} after {self.last_index}")
        del self._entries[first - self._offset - 1 :]
        self._entries.extend(entries)
        self._unstable = min(self._unstable, first)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise AssertionError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self._offset, self._offset_term = snapshot.meta.index, snapshot.meta.term
        self._entries = []
        self._unstable = self._offset + 1
        self.committed = snapshot.meta.index
        self.snapshot = snapshot
        self.pending_snapshot = snapshot

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries covered by a snapshot the state machine took at an applied index."""
        meta: SnapshotMeta = snapshot.meta
        if meta.index > self.applied:
            raise ValueError(f"snapshot at {meta.index} is beyond applied index {self.applied}")
        if meta.index <= self._offset:
            return  # older than what we have
        term = self.term_at(meta.index)
        if term != meta.term:
            raise ValueError(f"snapshot term {meta.term} != log term {term} at {meta.index}")
        del self._entries[: meta.index - self._offset]
        self._offset, self._offset_term = meta.index, meta.term
        # Entries not yet handed out for persisting may be covered by the snapshot now (a
        # step() between ready() and advance()); what remains unstable starts after it.
        self._unstable = max(self._unstable, meta.index + 1)
        self.snapshot = snapshot

    # ---- ready / advance bookkeeping -----------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return self._entries[self._unstable - self._offset - 1 :]

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are durable, if the entry there is still the one persisted."""
        if self.term_at(index) == term and index >= self._unstable:
            self._unstable = index + 1

    @property
    def stable_index(self) -> int:
        return self._unstable - 1

    def committed_to_apply(self) -> list[Entry]:
        if self.pending_snapshot is not None or self.applied >= self.committed:
            return []
        return self.entries(self.applied + 1, self.committed + 1)
