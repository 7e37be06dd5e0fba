"""Property tests of the chat state machine: determinism across replicas, batchings and a
snapshot taken and restored at a random point, plus the per-conversation invariants (dense seqs,
strictly rising stamps) on random command logs that include garbage and no-op entries."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from shards.chat import (
    AckFollowUp,
    AddDmConversation,
    ChatState,
    Command,
    CreateChannel,
    DropRoute,
    JoinChannel,
    LeaveChannel,
    MarkRead,
    PostMessage,
    RegisterUser,
    SetRoute,
    encode_command,
)
from shards.chat.commands import CloseSession, OpenSession

USERS = ["alice", "bob", "carol"]
CHANNELS = ["general", "random"]
DMS = ["dm:alice:bob", "dm:alice:carol", "dm:bob:carol"]
CONVERSATIONS = [*CHANNELS, *DMS, "dm:bob:alice"]  # the last one is malformed
WINDOW = 3
"""A tiny dedup window, so random logs evict keys too."""

users = st.sampled_from(USERS)
channels = st.sampled_from([*CHANNELS, "nope"])
conversations = st.sampled_from(CONVERSATIONS)
times = st.integers(0, 50)  # small, so the leader's clock often "goes back"
digests = st.sampled_from(["a" * 64, "b" * 64, "not-a-digest"])

posts: st.SearchStrategy[Command] = st.builds(
    PostMessage,
    st.sampled_from([*CHANNELS, *DMS]),
    users,
    st.sampled_from(["k1", "k2", "k3", "k4", "k5"]),
    st.sampled_from(["hi", "hello"]),
    times,
    st.integers(0, 3),
)
"""Mostly valid sends (keys repeat, so duplicates and evictions happen)."""
others: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        RegisterUser, users, st.sampled_from(["A", "B"]), st.sampled_from(["h1", "h2"]), times
    ),
    st.builds(CreateChannel, channels, users, times),
    st.builds(JoinChannel, channels, users, times),
    st.builds(LeaveChannel, channels, users, times),
    st.builds(
        PostMessage, conversations, users, st.text(max_size=3), st.text(max_size=3), times, times
    ),
    st.builds(MarkRead, users, conversations, st.integers(0, 6)),
    st.builds(SetRoute, users, st.sampled_from(["s1", "s2"]), st.integers(1, 3), times),
    st.builds(DropRoute, users, st.sampled_from(["s1", "s2"]), st.integers(0, 3)),
    st.builds(AddDmConversation, users, st.sampled_from(DMS), users),
    st.builds(AckFollowUp, st.integers(0, 8)),
    st.builds(OpenSession, users, digests, times),
    st.builds(CloseSession, users, digests),
)


def _pick(choice: tuple[int, Command, Command, bytes]) -> bytes | None:
    """Half sends, a third other commands, some garbage and leader no-op entries."""
    roll, post, other, garbage = choice
    if roll < 5:
        return encode_command(post)
    if roll < 8:
        return encode_command(other)
    return garbage if roll == 8 else None


items = st.tuples(st.integers(0, 9), posts, others, st.binary(max_size=12)).map(_pick)
SETUP: list[bytes | None] = [
    encode_command(CreateChannel("general", "alice", 0)),
    encode_command(JoinChannel("general", "bob", 0)),
    encode_command(JoinChannel("general", "carol", 0)),
    encode_command(CreateChannel("random", "carol", 0)),
    encode_command(JoinChannel("random", "alice", 0)),
]
"""Every log starts with channels that have members, so channel sends mostly succeed."""


def _entries(log: Sequence[bytes | None]) -> list[Entry]:
    return [
        Entry(1, i, b"", EntryKind.NOOP) if data is None else Entry(1, i, data)
        for i, data in enumerate(log, start=1)
    ]


def _apply_in_batches(
    sm: ChatState, entries: Sequence[Entry], cuts: Sequence[int]
) -> list[object | None]:
    """Apply ``entries`` in consecutive batches cut at the given offsets (any order, any size)."""
    bounds = sorted({0, len(entries), *(c % (len(entries) + 1) for c in cuts)})
    results: list[object | None] = []
    for lo, hi in itertools.pairwise(bounds):
        results.extend(sm.apply(entries[lo:hi]))
    return results


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _check_invariants(sm: ChatState) -> None:
    dump = sm.dump()
    last = {row[0]: row[1] for row in dump["conversations"]}
    by_conv: dict[str, list[tuple[int, int, int]]] = {}
    for conv, seq, _sender, _text, hlc_ms, hlc_counter, _key in dump["messages"]:
        by_conv.setdefault(str(conv), []).append((_int(seq), _int(hlc_ms), _int(hlc_counter)))
    for conv, rows in by_conv.items():
        assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1)), conv
        assert last[conv] == len(rows)
        stamps = [(ms, c) for _, ms, c in rows]
        assert all(a < b for a, b in itertools.pairwise(stamps)), conv
    for sender, entered in dump["dedup_senders"]:
        kept = sum(1 for row in dump["dedup"] if row[0] == sender)
        assert kept == min(_int(entered), WINDOW), sender


@settings(max_examples=80, deadline=None)
@given(
    log=st.lists(items, min_size=5, max_size=60),
    split=st.integers(0, 65),
    cuts_a=st.lists(st.integers(0, 60), max_size=4),
    cuts_c=st.lists(st.integers(0, 60), max_size=4),
)
def test_snapshot_at_any_point_gives_the_same_state_and_results(
    log: list[bytes | None], split: int, cuts_a: list[int], cuts_c: list[int]
) -> None:
    entries = _entries([*SETUP, *log])
    split = min(split, len(entries))
    with tempfile.TemporaryDirectory() as tmp:
        a = ChatState(Path(tmp) / "a.db", dedup_window=WINDOW)
        b = ChatState(Path(tmp) / "b.db", dedup_window=WINDOW)
        c = ChatState(Path(tmp) / "c.db", dedup_window=WINDOW)
        try:
            results_a = _apply_in_batches(a, entries, cuts_a)
            assert a.applied_index() == len(entries)
            _check_invariants(a)

            # B applies a prefix (in one batch) and agrees with A on it.
            assert b.apply(entries[:split]) == results_a[:split]
            meta = SnapshotMeta(index=split, term=1)
            c.restore(Snapshot(meta, b.snapshot()))
            assert c.applied_index() == split
            assert c.dump() == b.dump()

            # C, restored from B's snapshot, applies the rest (with a replayed overlap, which
            # must be skipped) and ends where A is, having answered exactly as A did.
            overlap = entries[max(0, split - 2) : split]
            assert c.apply(overlap) == [None] * len(overlap)
            results_c = _apply_in_batches(c, entries[split:], cuts_c)
            assert results_c == results_a[split:]
            assert c.dump() == a.dump()
            assert c.applied_index() == a.applied_index()
        finally:
            a.close()
            b.close()
            c.close()
