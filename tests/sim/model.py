"""The simulated application: per group, the ordered list of applied payloads.

It keeps the whole history (not just a digest) so that the heal phase can check "every
acknowledged proposal applied exactly once, in the same order" directly, and so that snapshots
have real weight and travel in several InstallSnapshot chunks. A running CRC over
(index, term, kind, data) lets checkers compare two states, or a state and a snapshot, cheaply.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from cluster.types import GroupId, NodeId

_HEADER = struct.Struct(">QQII")  # index, term, digest, payload count
_LEN = struct.Struct(">I")
_ENTRY_KEY = struct.Struct(">QQB")


def fold(digest: int, entry: Entry) -> int:
    """The running digest after applying ``entry``."""
    return zlib.crc32(
        entry.data, zlib.crc32(_ENTRY_KEY.pack(entry.index, entry.term, entry.kind), digest)
    )


@dataclass(slots=True)
class GroupState:
    """One group's applied state on one node."""

    index: int = 0
    term: int = 0
    digest: int = 0
    payloads: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        parts = [_HEADER.pack(self.index, self.term, self.digest, len(self.payloads))]
        for p in self.payloads:
            parts.append(_LEN.pack(len(p)))
            parts.append(p)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> GroupState:
        index, term, digest, count = _HEADER.unpack_from(data, 0)
        pos = _HEADER.size
        payloads: list[bytes] = []
        for _ in range(count):
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            payloads.append(data[pos : pos + n])
            pos += n
        if pos != len(data):
            raise ValueError(f"snapshot data has {len(data) - pos} trailing bytes")
        return cls(index, term, digest, payloads)

    def snapshot(self, voters: tuple[NodeId, ...]) -> Snapshot:
        return Snapshot(SnapshotMeta(self.index, self.term, voters), self.encode())


ApplyHook = Callable[[NodeId, GroupId, GroupState, Entry], None]
"""Called before each entry is applied, with the state it is applied to (checkers)."""

RestoreHook = Callable[[NodeId, GroupId, GroupState, Snapshot], None]


class SimStateMachine:
    """One node's application state for every group it hosts (a ``driver.StateMachine``)."""

    def __init__(self, node: NodeId, on_apply: ApplyHook, on_restore: RestoreHook) -> None:
        self.node = node
        self.groups: dict[GroupId, GroupState] = {}
        self._on_apply = on_apply
        self._on_restore = on_restore

    def state(self, group: GroupId) -> GroupState:
        st = self.groups.get(group)
        if st is None:
            st = self.groups[group] = GroupState()
        return st

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        st = self.state(group)
        for entry in entries:
            self._on_apply(self.node, group, st, entry)
            st.index = entry.index
            st.term = entry.term
            st.digest = fold(st.digest, entry)
            if entry.kind is EntryKind.NORMAL:
                st.payloads.append(entry.data)

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        st = GroupState.decode(snapshot.data)
        self._on_restore(self.node, group, st, snapshot)
        self.groups[group] = st
