"""Crash safety of LogStore: torn tails at every byte offset, flipped bits, simulated crashes.

Every check compares what a reopened store returns with a model of the operations that should
have survived, so a lost synced record, a served damaged one, or a wrong recovery report fails.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.errors import CorruptLog
from cluster.messages import Entry, HardState, Snapshot, SnapshotMeta, StoredState
from cluster.storage import LogStore, RecoveryReport
from cluster.types import GroupId, NodeId

NODE = NodeId(1)
G1, G2, G3, PIN = GroupId(1), GroupId(2), GroupId(3), GroupId(9)
VOTERS = (NodeId(1), NodeId(2), NodeId(3))

# ---------------------------------------------------------------------------------------------
# Operations and a model of what they leave behind.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ensure:
    group: GroupId
    voters: tuple[NodeId, ...] = VOTERS


@dataclass(frozen=True)
class Append:
    group: GroupId
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class SetHardState:
    group: GroupId
    hard_state: HardState


@dataclass(frozen=True)
class SaveSnapshot:
    group: GroupId
    snapshot: Snapshot
    discard_log: bool


Op = Ensure | Append | SetHardState | SaveSnapshot


def entries(group: GroupId, term: int, first: int, last: int) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, b"g%d-t%d-%d" % (group, term, i)) for i in range(first, last + 1))


def snapshot(index: int, term: int, tag: bytes) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, VOTERS), tag)


@dataclass
class _ModelGroup:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index


@dataclass
class Model:
    groups: dict[GroupId, _ModelGroup] = field(default_factory=dict)

    def apply(self, op: Op) -> None:
        if isinstance(op, Ensure):
            self.groups.setdefault(op.group, _ModelGroup())
            return
        g = self.groups[op.group]
        if isinstance(op, Append):
            first = op.entries[0].index
            g.entries = [e for e in g.entries if e.index < first] + list(op.entries)
        elif isinstance(op, SetHardState):
            g.hard_state = op.hard_state
        else:
            index = op.snapshot.meta.index
            if op.discard_log or index >= g.last_index:
                g.entries = []
            else:
                g.entries = [e for e in g.entries if e.index > index]
            g.snapshot = op.snapshot

    def stored(self) -> dict[GroupId, StoredState]:
        return {
            gid: StoredState(g.hard_state, g.snapshot, tuple(g.entries))
            for gid, g in sorted(self.groups.items())
        }


def model_of(ops: Sequence[Op]) -> Model:
    m = Model()
    for op in ops:
        m.apply(op)
    return m


def perform(store: LogStore, op: Op) -> None:
    if isinstance(op, Ensure):
        store.ensure_group(op.group, op.voters)
    elif isinstance(op, Append):
        store.append(op.group, op.entries)
    elif isinstance(op, SetHardState):
        store.set_hard_state(op.group, op.hard_state)
    else:
        store.save_snapshot(op.group, op.snapshot, discard_log=op.discard_log)


def contents(store: LogStore) -> dict[GroupId, StoredState]:
    return {g: store.load(g) for g in store.groups()}


def open_store(path: Path, segment_bytes: int = 1 << 20) -> LogStore:
    return LogStore.open(
        path, node_id=NODE, cluster_id="crash", fsync=False, segment_bytes=segment_bytes
    )


def wal_files(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("wal-"))


def snap_count(path: Path) -> int:
    return sum(n.startswith("snap-") for n in os.listdir(path))


# Synced history, then the tail that gets damaged: every record type, overwrites, and the first
# snapshot of two groups (one local, one received), all in the last segment. PIN's entry keeps
# the oldest segment (hence all) alive: the sweeps damage *synced* records, and a segment deleted
# on the strength of one of them is gone for good (test_damaged_compaction_is_corruption).
PREFIX: list[Op] = [
    Ensure(PIN),
    Append(PIN, entries(PIN, 1, 1, 1)),
    Ensure(G1),
    Ensure(G2),
    Append(G1, entries(G1, 1, 1, 6)),
    Append(G2, entries(G2, 1, 1, 4)),
    SetHardState(G1, HardState(1, NodeId(1), 3)),
    SetHardState(G2, HardState(1, NodeId(2), 2)),
    Append(G1, entries(G1, 1, 7, 8)),
]
TAIL: list[Op] = [
    Ensure(G3),
    Append(G1, entries(G1, 2, 9, 11)),
    SetHardState(G1, HardState(2, NodeId(3), 9)),
    Append(G2, entries(G2, 2, 3, 5)),
    SaveSnapshot(G1, snapshot(7, 1, b"g1@7"), discard_log=False),
    Append(G3, entries(G3, 1, 1, 2)),
    SaveSnapshot(G2, snapshot(9, 3, b"g2@9"), discard_log=True),
    SetHardState(G3, HardState(1, NodeId(1), 1)),
    Append(G1, entries(G1, 3, 10, 10)),
]


@dataclass(frozen=True)
class Built:
    """A closed store whose last segment holds TAIL at ``spans`` (start, end) byte ranges."""

    path: Path
    segment: str
    spans: list[tuple[int, int]]


def build(path: Path, *, rotate_prefix: bool) -> Built:
    store = open_store(path, segment_bytes=300 if rotate_prefix else 1 << 20)
    for op in PREFIX:
        perform(store, op)
    store.sync()
    store.close()
    store = open_store(path)
    segment = wal_files(path)[-1]
    spans = []
    for op in TAIL:
        start = os.path.getsize(path / segment)
        perform(store, op)
        store.sync()
        spans.append((start, os.path.getsize(path / segment)))
        assert spans[-1][1] > start, f"{op} wrote nothing"
    assert wal_files(path)[-1] == segment, "the tail must stay in one segment"
    store.close()
    return Built(path, segment, spans)


def damaged_copy(built: Built, dest: Path, edit: bytes) -> None:
    """Make ``dest`` a copy of the built store whose last segment is ``edit``. Incremental (the
    sweeps reopen hundreds of copies): opening only deletes files or rewrites the last segment."""
    dest.mkdir(exist_ok=True)
    wanted = set(os.listdir(built.path))
    for name in set(os.listdir(dest)) - wanted:
        os.unlink(dest / name)
    for name in wanted - set(os.listdir(dest)):
        shutil.copyfile(built.path / name, dest / name)
    (dest / built.segment).write_bytes(edit)


def check(path: Path, kept: int, report: RecoveryReport, *, reasons: set[str]) -> None:
    """Reopen ``path``: it must hold exactly PREFIX + TAIL[:kept] and report ``report``."""
    store = open_store(path)
    try:
        want = model_of(PREFIX + TAIL[:kept])
        assert contents(store) == want.stored()
        got = store.recovery
        assert (got.truncated_bytes, got.segment, got.offset) == (
            report.truncated_bytes,
            report.segment,
            report.offset,
        )
        assert got.reason in reasons
        assert snap_count(path) == sum(g.snapshot is not None for g in want.groups.values())
    finally:
        store.close()


@pytest.fixture(params=[False, True], ids=["one-segment", "rotated"])
def built(request: pytest.FixtureRequest, tmp_path: Path) -> Built:
    return build(tmp_path / "orig", rotate_prefix=request.param)


def test_truncation_at_every_offset_keeps_exactly_the_whole_records(
    built: Built, tmp_path: Path
) -> None:
    raw = (built.path / built.segment).read_bytes()
    first = built.spans[0][0]
    assert len(raw) == built.spans[-1][1]
    for cut in range(first, len(raw) + 1):
        kept = sum(end <= cut for _, end in built.spans)
        boundary = built.spans[kept - 1][1] if kept else first
        damaged_copy(built, tmp_path / "copy", raw[:cut])
        if cut == boundary:
            want = RecoveryReport()
            reasons = {""}
        else:
            want = RecoveryReport(cut - boundary, built.segment, boundary, "")
            reasons = {"short header", "short record"}
        check(tmp_path / "copy", kept, want, reasons=reasons)


def test_a_flipped_bit_anywhere_in_the_tail_cuts_from_that_record(tmp_path: Path) -> None:
    built = build(tmp_path / "orig", rotate_prefix=False)
    raw = (built.path / built.segment).read_bytes()
    for k, (start, end) in enumerate(built.spans):
        for pos in range(start, end):
            damaged = bytearray(raw)
            damaged[pos] ^= 1 << (pos % 8)
            damaged_copy(built, tmp_path / "copy", bytes(damaged))
            want = RecoveryReport(len(raw) - start, built.segment, start, "")
            check(tmp_path / "copy", k, want, reasons={"crc mismatch", "short record"})


def test_a_truncated_store_keeps_working(built: Built, tmp_path: Path) -> None:
    raw = (built.path / built.segment).read_bytes()
    start, end = built.spans[4]  # G1's snapshot record, cut in half
    damaged_copy(built, tmp_path / "copy", raw[: (start + end) // 2])
    store = open_store(tmp_path / "copy")
    assert store.recovery.offset == start
    store.append(G1, entries(G1, 4, 12, 13))
    store.close()
    store = open_store(tmp_path / "copy")
    assert store.recovery == RecoveryReport()
    assert store.load(G1).entries == entries(G1, 1, 1, 8) + entries(G1, 2, 9, 11) + entries(
        G1, 4, 12, 13
    )
    store.close()


def test_damage_before_the_last_segment_is_corruption(tmp_path: Path) -> None:
    built = build(tmp_path / "orig", rotate_prefix=True)
    names = wal_files(built.path)
    assert len(names) >= 3
    middle = names[1]
    raw = (built.path / middle).read_bytes()
    for edit, message in [
        (raw[:-3], "only the last segment"),
        (raw[:20] + bytes([raw[20] ^ 4]) + raw[21:], "only the last segment"),
        (raw[:-1] + bytes([raw[-1] ^ 0x80]), "only the last segment"),
    ]:
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        shutil.copytree(built.path, tmp_path / "copy")
        (tmp_path / "copy" / middle).write_bytes(edit)
        with pytest.raises(CorruptLog, match=message):
            open_store(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy")
    shutil.copytree(built.path, tmp_path / "copy")
    os.unlink(tmp_path / "copy" / middle)
    with pytest.raises(CorruptLog, match="missing"):
        open_store(tmp_path / "copy")


def test_damaged_compaction_is_corruption_not_a_shorter_log(tmp_path: Path) -> None:
    """Media damage to a synced SNAPSHOT record whose compaction already deleted segments must
    not be served as a log that silently lost its entries."""
    for discard_log in (False, True):
        path = tmp_path / f"discard-{discard_log}"
        store = open_store(path, segment_bytes=200)
        for op in PREFIX[2:]:  # without PIN
            perform(store, op)
        store.close()
        store = open_store(path)
        perform(store, SaveSnapshot(G1, snapshot(8, 1, b"g1"), discard_log=False))
        store.sync()
        assert len(wal_files(path)) > 1  # G2's entries still pin the old segments
        segment = wal_files(path)[-1]
        start = os.path.getsize(path / segment)
        perform(store, SaveSnapshot(G2, snapshot(4, 1, b"g2"), discard_log))
        store.close()
        assert wal_files(path) == [segment]  # everything older was compacted away
        raw = (path / segment).read_bytes()
        (path / segment).write_bytes(raw[: start + 5])  # G2's snapshot record is lost
        with pytest.raises(CorruptLog, match="group 2"):
            open_store(path)


# ---------------------------------------------------------------------------------------------
# Snapshot files: written whole or never named, never served damaged.
# ---------------------------------------------------------------------------------------------


def test_a_torn_snapshot_file_is_never_served(tmp_path: Path) -> None:
    """Snapshot files are renamed into place only once complete, so a torn one means damage:
    cut at any length (every byte of the header, a stride through the data), it is refused."""
    orig = tmp_path / "orig"
    store = open_store(orig)
    for op in PREFIX:
        perform(store, op)
    data = bytes(range(256)) * 40  # 10 KiB: the data's CRC is checked across several reads
    perform(store, SaveSnapshot(G1, snapshot(7, 1, data), discard_log=False))
    store.sync()
    assert store.load(G1).snapshot == snapshot(7, 1, data)
    store.close()
    (name,) = (n for n in os.listdir(orig) if n.startswith("snap-"))
    raw = (orig / name).read_bytes()
    header = len(raw) - len(data)
    for cut in [*range(0, header + 2), *range(header + 2, len(raw), 509), len(raw) - 1]:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(orig, copy)
        (copy / name).write_bytes(raw[:cut])
        store = open_store(copy)
        try:
            with pytest.raises(CorruptLog, match=name):
                store.load(G1)
            assert store.load(G2) == model_of(PREFIX).stored()[G2]  # other groups are served
        finally:
            store.close()


def test_a_crash_while_snapshots_are_staged_loses_nothing_synced(tmp_path: Path) -> None:
    """A download half written, one complete but not yet saved, a local snapshot staged: none
    is in the log, so a crash forgets them all, and opening deletes their files."""
    store = open_store(tmp_path)
    for op in CRASH_PREFIX:
        perform(store, op)
    store.sync()
    meta = SnapshotMeta(9, 3, VOTERS)
    half = store.receive_snapshot(G2, meta, 1000)
    half.write(b"x" * 500)
    done = store.receive_snapshot(PIN, meta, 10)
    done.write(b"y" * 10)
    assert done.finish() == b"y" * 10
    staged = store.stage_snapshot(G1, SnapshotMeta(8, 1, VOTERS), b"local")
    assert staged.content == b"local"
    assert sum(n.endswith(".tmp") for n in os.listdir(tmp_path)) == 3
    store.crash(0)
    store = open_store(tmp_path)
    try:
        assert contents(store) == model_of(CRASH_PREFIX).stored()
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        assert snap_count(tmp_path) == 1
    finally:
        store.close()


def test_a_saved_snapshot_whose_record_was_lost_is_forgotten(tmp_path: Path) -> None:
    """The file is renamed into place before its record is written: a crash before the sync
    leaves a complete file the durable log does not name, which opening deletes."""
    store = open_store(tmp_path)
    for op in CRASH_PREFIX:
        perform(store, op)
    store.sync()
    perform(store, SaveSnapshot(G2, snapshot(9, 3, b"g2@9"), discard_log=True))
    assert snap_count(tmp_path) == 2
    store.crash(0)
    store = open_store(tmp_path)
    try:
        assert contents(store) == model_of(CRASH_PREFIX).stored()
        assert snap_count(tmp_path) == 1
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# LogStore.crash(): what the simulation uses.
# ---------------------------------------------------------------------------------------------

CRASH_PREFIX: list[Op] = [*PREFIX, SaveSnapshot(G1, snapshot(4, 1, b"g1@4"), discard_log=False)]
CRASH_TAIL: list[Op] = [
    *TAIL[:4],
    SaveSnapshot(G1, snapshot(7, 1, b"g1@7 again"), discard_log=False),  # supersedes g1@4
    *TAIL[5:],
]


def run_until_crash(path: Path, keep_unsynced: int) -> tuple[list[int], int]:
    """Sync CRASH_PREFIX, write CRASH_TAIL without syncing, crash. Returns each tail op's end
    offset past the synced point, and how many bytes were unsynced."""
    store = open_store(path)
    for op in CRASH_PREFIX:
        perform(store, op)
    store.sync()
    base = store.stats.bytes_written
    ends = []
    for op in CRASH_TAIL:
        perform(store, op)
        ends.append(store.stats.bytes_written - base)
    store.crash(keep_unsynced)
    return ends, ends[-1]


def test_crash_loses_only_unsynced_bytes_for_any_torn_length(tmp_path: Path) -> None:
    ends, unsynced = run_until_crash(tmp_path / "probe", 0)
    # Every record boundary and its neighbours, plus a stride through the records.
    keeps = {k for end in [0, *ends] for k in (end - 1, end, end + 1) if k >= 0}
    keeps |= {*range(0, unsynced, 7), unsynced + 100}
    for keep in sorted(keeps):
        path = tmp_path / f"k{keep}"
        ends, _ = run_until_crash(path, keep)
        kept = sum(end <= keep for end in ends)
        store = open_store(path)
        try:
            assert contents(store) == model_of(CRASH_PREFIX + CRASH_TAIL[:kept]).stored()
            torn = min(keep, unsynced) - (ends[kept - 1] if kept else 0)
            assert store.recovery.truncated_bytes == torn
            assert (store.recovery.reason == "") == (torn == 0)
        finally:
            store.close()
        shutil.rmtree(path)


def test_rotation_is_a_durability_point(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_bytes=300)
    store.ensure_group(G1, VOTERS)
    store.sync()
    done: list[Op] = [Ensure(G1)]
    durable: list[Op] = list(done)
    for i in range(1, 40):
        op = Append(G1, entries(G1, 1, i, i))
        segments = store.stats.segments
        perform(store, op)
        if store.stats.segments != segments:
            durable = list(done)  # everything before the record that rotated
        done.append(op)
    assert len(durable) > 10
    store.crash(0)
    store = open_store(tmp_path, segment_bytes=300)
    assert contents(store) == model_of(durable).stored()
    store.close()


# ---------------------------------------------------------------------------------------------
# Random histories with syncs, crashes and reopens against the model.
# ---------------------------------------------------------------------------------------------

STEPS = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 10_000)), max_size=45)


class _History:
    """Drives one random history; ``durable`` is the model at the last durability point."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = open_store(path, segment_bytes=400)
        self.model = Model()
        self.durable = Model()
        self.term = 1
        for g in (G1, G2, G3):
            self.do(Ensure(g))
        self.sync()

    def do(self, op: Op) -> None:
        segments = self.store.stats.segments
        before = copy.deepcopy(self.model)
        perform(self.store, op)
        self.model.apply(op)
        if self.store.stats.segments > segments:
            self.durable = before

    def sync(self) -> None:
        self.store.sync()
        self.durable = copy.deepcopy(self.model)

    def reopen(self, *, crash: bool) -> None:
        if crash:
            self.store.crash()
            self.model = copy.deepcopy(self.durable)
        else:
            self.store.close()
            self.durable = copy.deepcopy(self.model)
        self.store = open_store(self.path, segment_bytes=400)
        assert self.store.recovery == RecoveryReport()
        assert contents(self.store) == self.model.stored()

    def step(self, code: int, r: int) -> None:
        gid = GroupId(1 + r % 3)
        g = self.model.groups[gid]
        lo, hi = g.snapshot_index, g.last_index
        if code in (0, 1, 2):
            first = lo + 1 + r % (hi - lo + 1)
            self.term += code == 2
            size = 150 if code == 1 else 0
            batch = tuple(
                Entry(self.term, i, b"%d" % i + b"x" * size)
                for i in range(first, first + 1 + r % 4)
            )
            self.do(Append(gid, batch))
        elif code == 3:
            hs = HardState(self.term, NodeId(1 + r % 3), min(hi, r % 50))
            if hs != g.hard_state:
                self.do(SetHardState(gid, hs))
        elif code == 4:
            index = lo + r % (hi - lo + 1)
            self.do(SaveSnapshot(gid, snapshot(index, self.term, b"local%d" % r), False))
        elif code == 5:
            index = lo + r % 10
            self.do(SaveSnapshot(gid, snapshot(index, self.term, b"recv%d" % r), True))
        elif code in (6, 7):
            self.sync()
        elif code == 8:
            self.reopen(crash=True)
        else:
            self.reopen(crash=False)


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("histories")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_random_histories_survive_crashes_and_reopens(
    history_root: Path, steps: list[tuple[int, int]]
) -> None:
    path = history_root / "h"
    shutil.rmtree(path, ignore_errors=True)
    h = _History(path)
    try:
        for code, r in steps:
            h.step(code, r)
        h.reopen(crash=True)
        h.sync()
        h.reopen(crash=False)
    finally:
        h.store.close()
