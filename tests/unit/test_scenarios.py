"""Scripted Raft scenarios: one test per file in ``tests/unit/testdata``, plus tests of the
pieces the scenarios stand on (describe, the memory store, a deliberately wrong golden file).

Each ``.txt`` file is a story told in commands of ``tests/unit/interaction.py`` with the output
the core must produce (format: ``tests/unit/datadriven.py``). After an intended change of the
core's behaviour, refresh the expected outputs with

    RAFT_REWRITE=1 python -m pytest tests/unit/test_scenarios.py

and review the diff line by line against the Raft rules before keeping it: a golden file is only
as good as that review.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import pytest

from cluster.describe import describe_data, describe_message, describe_ready, message_kind
from cluster.errors import DataDirMismatch, StorageError
from cluster.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotAck,
    SnapshotChunk,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from cluster.ready import Ready
from cluster.types import GroupId, NodeId
from tests.unit.datadriven import ScenarioMismatch, run_file
from tests.unit.interaction import InteractionEnv
from tests.unit.memstore import MemoryStore

TESTDATA = Path(__file__).parent / "testdata"
SCENARIOS = sorted(TESTDATA.glob("*.txt"))


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 14


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    env = InteractionEnv()
    run_file(path, env.handle, rewrite=os.environ.get("RAFT_REWRITE") == "1")


# ---- the harness itself --------------------------------------------------------------------


def test_a_wrong_golden_line_fails(tmp_path: Path) -> None:
    """The scenarios can fail: one altered expected line in a real script is caught."""
    text = (TESTDATA / "election.txt").read_text()
    broken = tmp_path / "election.txt"
    broken.write_text(
        text.replace("HardState term=1 vote=1 commit=1", "HardState term=1 vote=2 commit=1", 1)
    )
    with pytest.raises(ScenarioMismatch, match="vote=2"):
        run_file(broken, InteractionEnv().handle)


class _Header(TypedDict):
    group: GroupId
    sender: NodeId
    to: NodeId
    term: int


def test_every_message_type_is_described() -> None:
    header = _Header(group=GroupId(1), sender=NodeId(1), to=NodeId(2), term=3)
    meta = SnapshotMeta(9, 2, (NodeId(1), NodeId(2)))
    samples: list[Message] = [
        VoteRequest(**header, last_log_index=5, last_log_term=2, pre_vote=True),
        VoteResponse(**header, granted=False),
        AppendRequest(
            **header,
            prev_log_index=3,
            prev_log_term=1,
            entries=(Entry(2, 4, kind=EntryKind.NOOP), Entry(2, 5, b"x")),
            leader_commit=3,
        ),
        AppendResponse(**header, index=7, reject=True, hint_index=5, hint_term=1),
        Heartbeat(**header, commit=2, round=4),
        HeartbeatResponse(**header, round=4),
        SnapshotChunk(**header, meta=meta, offset=16, data=b"abcd", total_size=20, done=True),
        SnapshotAck(**header, snapshot_index=9, snapshot_term=2, next_offset=20),
        TimeoutNow(**header),
        ReadIndexRequest(**header, context=b"c"),
        ReadIndexResponse(**header, context=b"c", index=9),
    ]
    assert {type(m) for m in samples} == set(MESSAGE_TYPES)
    described = [describe_message(m) for m in samples]
    assert described == [
        "1->2 Vote term=3 pre last=2/5",
        "1->2 VoteResp term=3 rejected",
        '1->2 App term=3 prev=1/3 commit=3 [2/4 NOOP, 2/5 "x"]',
        "1->2 AppResp term=3 reject idx=7 hint=1/5",
        "1->2 Heartbeat term=3 commit=2 round=4",
        "1->2 HeartbeatResp term=3 round=4",
        "1->2 Snap term=3 snap=2/9 voters=(1,2) bytes=[16,20)/20 done",
        "1->2 SnapAck term=3 snap=2/9 next=20",
        "1->2 TimeoutNow term=3",
        '1->2 ReadIndex term=3 ctx="c"',
        '1->2 ReadIndexResp term=3 ctx="c" idx=9',
    ]
    assert [d.split()[1] for d in described] == [message_kind(m) for m in samples]


def test_describe_data_and_ready() -> None:
    assert describe_data(b'say "hi"') == '"say \\"hi\\""'
    assert describe_data(b"\x00\xff") == "0x00ff"
    assert describe_data(b"a" * 20) == '"aaaaaaaaaaaaaaaa"...(20 bytes)'
    assert describe_ready(Ready()) == "<empty Ready>"
    rd = Ready(
        hard_state=HardState(2, NodeId(1), 1),
        entries=tuple(Entry(2, i, b"e") for i in range(1, 9)),
        dropped_reads=(b"r",),
    )
    assert describe_ready(rd).splitlines() == [
        "HardState term=2 vote=1 commit=1",
        "Entries:",
        '  2/1 "e"',
        '  2/2 "e"',
        '  2/3 "e"',
        "  ...(3 more)",
        '  2/7 "e"',
        '  2/8 "e"',
        'Dropped reads: "r"',
    ]


def test_memory_store_crash_keeps_only_synced_writes() -> None:
    store = MemoryStore()
    group = GroupId(1)
    store.ensure_group(group, (NodeId(1),))
    store.append(group, [Entry(1, 1, b"a"), Entry(1, 2, b"b")])
    store.set_hard_state(group, HardState(1, NodeId(1), 1))
    store.sync()
    store.append(group, [Entry(2, 2, b"c"), Entry(2, 3, b"d")])  # overwrites index 2
    store.set_hard_state(group, HardState(2, NodeId(1), 2))
    assert [e.data for e in store.load(group).entries] == [b"a", b"c", b"d"]
    store.crash()
    state = store.load(group)
    assert [e.data for e in state.entries] == [b"a", b"b"]
    assert state.hard_state == HardState(1, NodeId(1), 1)


def test_memory_store_snapshots_and_refusals() -> None:
    store = MemoryStore()
    group = GroupId(1)
    voters = (NodeId(1), NodeId(2))
    store.ensure_group(group, voters)
    store.append(group, [Entry(1, i) for i in range(1, 6)])
    store.save_snapshot(group, Snapshot(SnapshotMeta(3, 1, voters)), discard_log=False)
    assert [e.index for e in store.load(group).entries] == [4, 5]
    with pytest.raises(StorageError):
        store.append(group, [Entry(1, 2)])  # below the snapshot
    with pytest.raises(StorageError):
        store.append(group, [Entry(1, 8)])  # a gap
    store.save_snapshot(group, Snapshot(SnapshotMeta(9, 2, voters)), discard_log=True)
    state = store.load(group)
    assert state.entries == ()
    assert state.snapshot is not None
    assert state.snapshot.meta.index == 9
    with pytest.raises(DataDirMismatch):
        store.ensure_group(group, (NodeId(1),))
