"""MemoryStore: an in-memory reference implementation of the storage the runtime uses.

Same methods and semantics as ``cluster.storage.LogStore`` (ensure_group, load, append,
set_hard_state, save_snapshot, sync), minus the bytes: tests and scenarios get a store whose
behaviour is obvious, and ``crash()`` models a power cut exactly — everything written since the
last ``sync()`` is gone, everything synced survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cluster.errors import DataDirMismatch, StorageError
from cluster.messages import Entry, HardState, Snapshot, StoredState
from cluster.types import GroupId, NodeId


@dataclass(frozen=True, slots=True)
class _GroupData:
    """One group's stored state; immutable, so a sync is a cheap copy of references."""

    voters: tuple[NodeId, ...]
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()  # contiguous, right after the snapshot (or from index 1)

    @property
    def first_index(self) -> int:
        return self.snapshot.meta.index + 1 if self.snapshot is not None else 1

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.entries) - 1


class MemoryStore:
    """Stored state of every group of one node, with a durable copy as of the last sync."""

    def __init__(self) -> None:
        self._written: dict[GroupId, _GroupData] = {}
        self._synced: dict[GroupId, _GroupData] = {}
        self.syncs = 0

    def groups(self) -> list[GroupId]:
        return sorted(self._written)

    def ensure_group(self, group: GroupId, voters: tuple[NodeId, ...]) -> None:
        data = self._written.get(group)
        if data is None:
            self._written[group] = _GroupData(voters=voters)
        elif data.voters != voters:
            raise DataDirMismatch(f"group {group} stored voters {data.voters}, asked for {voters}")

    def load(self, group: GroupId) -> StoredState:
        data = self._group(group)
        return StoredState(data.hard_state, data.snapshot, data.entries)

    def append(self, group: GroupId, entries: Sequence[Entry]) -> None:
        """Store ``entries``; whatever was stored at ``entries[0].index`` and above is replaced."""
        if not entries:
            return
        data = self._group(group)
        first = entries[0].index
        if any(e.index != first + i for i, e in enumerate(entries)):
            raise StorageError(f"group {group}: entries are not contiguous")
        if first < data.first_index or first > data.last_index + 1:
            raise StorageError(
                f"group {group}: append at {first} outside [{data.first_index}, "
                f"{data.last_index + 1}]"
            )
        kept = data.entries[: first - data.first_index]
        self._written[group] = replace(data, entries=kept + tuple(entries))

    def set_hard_state(self, group: GroupId, hs: HardState) -> None:
        self._written[group] = replace(self._group(group), hard_state=hs)

    def save_snapshot(self, group: GroupId, snapshot: Snapshot, *, discard_log: bool) -> None:
        """A local snapshot (``discard_log=False``) compacts the entries it covers; one received
        from the leader replaces the whole log."""
        data = self._group(group)
        index = snapshot.meta.index
        if data.snapshot is not None and index < data.snapshot.meta.index:
            raise StorageError(f"group {group}: snapshot at {index} is older than the stored one")
        kept = () if discard_log else tuple(e for e in data.entries if e.index > index)
        if kept and kept[0].index != index + 1:
            raise StorageError(f"group {group}: snapshot at {index} leaves a gap before the log")
        self._written[group] = replace(data, snapshot=snapshot, entries=kept)

    def sync(self) -> None:
        self._synced = dict(self._written)
        self.syncs += 1

    def crash(self) -> None:
        """Lose everything written since the last ``sync()``."""
        self._written = dict(self._synced)

    def _group(self, group: GroupId) -> _GroupData:
        data = self._written.get(group)
        if data is None:
            raise StorageError(f"unknown group {group}")
        return data
