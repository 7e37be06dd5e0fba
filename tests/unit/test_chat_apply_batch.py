"""Applying sends in runs (``ChatState._apply_posts``) answers and writes exactly what applying
them one entry per ``apply`` call does: random logs of sends (to channels and DMs, first DM
messages, keys repeated within and across batches, non-members, unknown conversations) with
joins, leaves and other commands interleaved and a dedup window small enough to evict, applied
one entry per call and in random batch splits, give the same results, the same captured
messages and the same database (read markers included, which a sender's own new messages move
forward). Plus hand-checked batches for the tricky cases, and the short
paths of ``decode_command`` and ``validate`` against their general ways."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster.messages import Entry, EntryKind
from shards.chat import (
    AckFollowUp,
    AddDmConversation,
    ChatState,
    Code,
    Command,
    CreateChannel,
    Hlc,
    JoinChannel,
    LeaveChannel,
    MalformedCommand,
    MarkRead,
    Posted,
    PostMessage,
    ReadMarked,
    Rejected,
    decode_command,
    encode_command,
    validate,
)
from shards.chat.commands import _decode_general, _validate_general
from shards.chat.schema import Message

USERS = ["alice", "bob", "carol", "dave"]
CHANNELS = ["general", "random", "later"]  # "later" exists only once a log creates it
DMS = ["dm:alice:bob", "dm:alice:carol", "dm:bob:dave", "dm:carol:dave"]
WINDOW = 2
"""Each sender keeps two keys, so runs of a few sends evict keys entered in the same run."""

users = st.sampled_from(USERS)
times = st.integers(0, 30)  # small, so the leader's clock often "goes back"

sends: st.SearchStrategy[Command] = st.builds(
    PostMessage,
    st.sampled_from([*CHANNELS, *DMS, "nope"]),
    users,
    st.sampled_from(["k1", "k2", "k3", "k4"]),
    st.sampled_from(["hi", "hello", "héllo ✓"]),
    times,
    st.integers(0, 2),
)
"""Sends that repeat keys (duplicates and evictions), from members and non-members, to
channels, DMs (first messages included) and a conversation that does not exist."""
others: st.SearchStrategy[Command] = st.one_of(
    st.builds(JoinChannel, st.sampled_from(CHANNELS), users, times),
    st.builds(LeaveChannel, st.sampled_from(CHANNELS), users, times),
    st.builds(CreateChannel, st.just("later"), users, times),
    st.builds(MarkRead, users, st.sampled_from([*CHANNELS, *DMS]), st.integers(0, 4)),
    st.builds(AddDmConversation, users, st.sampled_from(DMS), users),
    st.builds(AckFollowUp, st.integers(0, 6)),
    st.builds(PostMessage, st.just("general"), users, st.just("bad key"), st.just("x"), times),
)


def _pick(choice: tuple[int, Command, Command]) -> bytes | None:
    """Mostly sends (so runs form), some other commands, a few garbage and no-op entries."""
    roll, send, other = choice
    if roll < 7:
        return encode_command(send)
    if roll < 9:
        return encode_command(other)
    return b"\x01\x05[1]" if roll == 9 else None


items = st.tuples(st.integers(0, 10), sends, others).map(_pick)
SETUP: list[bytes | None] = [
    encode_command(CreateChannel("general", "alice", 0)),
    encode_command(JoinChannel("general", "bob", 0)),
    encode_command(JoinChannel("general", "carol", 0)),
    encode_command(CreateChannel("random", "dave", 0)),
    encode_command(JoinChannel("random", "alice", 0)),
]


def _entries(log: Sequence[bytes | None]) -> list[Entry]:
    return [
        Entry(1, i, b"", EntryKind.NOOP) if data is None else Entry(1, i, data)
        for i, data in enumerate(log, start=1)
    ]


class Applied:
    """One replica's answers to a log: results, captured messages, final database."""

    def __init__(self, path: Path, entries: Sequence[Entry], bounds: Sequence[int]) -> None:
        sm = ChatState(path, dedup_window=WINDOW)
        try:
            sm.capture = []
            self.results: list[object | None] = []
            for lo, hi in itertools.pairwise(bounds):
                self.results.extend(sm.apply(entries[lo:hi]))
            self.captured: list[Message] = list(sm.capture)
            self.dump = sm.dump()
            self.applied = sm.applied_index()
        finally:
            sm.close()


def _bounds(n: int, cuts: Sequence[int]) -> list[int]:
    return sorted({0, n, *(c % (n + 1) for c in cuts)})


@settings(max_examples=150, deadline=None)
@given(log=st.lists(items, min_size=20, max_size=80), cuts=st.lists(st.integers(0, 80)))
def test_batched_apply_equals_one_entry_per_call(
    tmp_path_factory: pytest.TempPathFactory, log: list[bytes | None], cuts: list[int]
) -> None:
    entries = _entries([*SETUP, *log])
    tmp = tmp_path_factory.mktemp("batch")
    single = Applied(tmp / "single.db", entries, range(len(entries) + 1))
    batched = Applied(tmp / "batched.db", entries, _bounds(len(entries), cuts))
    assert batched.results == single.results
    assert batched.captured == single.captured
    assert batched.dump == single.dump
    assert batched.applied == single.applied == len(entries)
    # And the window's invariant holds: each sender keeps its newest min(entered, WINDOW).
    for sender, entered in single.dump["dedup_senders"]:
        kept = [row for row in single.dump["dedup"] if row[0] == sender]
        assert len(kept) == min(int(str(entered)), WINDOW), sender
    # Read markers (in the dumps compared above) hold exactly what the answers imply.
    assert single.dump["read_markers"] == _expected_markers(entries, single.results)


def _expected_markers(
    entries: Sequence[Entry], results: Sequence[object | None]
) -> list[tuple[object, ...]]:
    """The read markers a log leaves, from its answers alone: each (user, conversation) at
    the largest of the seqs of the user's new messages there (one's own message is read) and
    of the markers their MarkReads answered; no row for a user who did neither (or marked 0).
    A duplicate send, a refused one, and other users' sends move nothing."""
    marks: dict[tuple[str, str], int] = {}
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, Posted) and not result.duplicate:
            cmd = decode_command(entry.data)
            assert isinstance(cmd, PostMessage)
            user, seq = cmd.sender, result.seq
        elif isinstance(result, ReadMarked) and result.read_seq > 0:
            user, seq = result.user, result.read_seq
        else:
            continue
        place = (user, result.conversation)
        marks[place] = max(marks.get(place, 0), seq)
    return [(user, conv, seq) for (user, conv), seq in sorted(marks.items())]


# ---- hand-checked batches -----------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ChatState]:
    sm = ChatState(tmp_path / "chat.db", dedup_window=WINDOW)
    sm.apply(_entries(SETUP))
    try:
        yield sm
    finally:
        sm.close()


def _apply(sm: ChatState, *cmds: Command) -> list[object | None]:
    first = sm.applied_index() + 1
    return sm.apply([Entry(1, first + i, encode_command(c)) for i, c in enumerate(cmds)])


def _post(conv: str, sender: str, key: str, ms: int = 10, counter: int = 0) -> PostMessage:
    return PostMessage(conv, sender, key, "hi", ms, counter)


def test_the_same_key_twice_in_one_batch_is_one_message(state: ChatState) -> None:
    results = _apply(
        state,
        _post("general", "alice", "k1", ms=10),
        _post("general", "bob", "k1", ms=10),  # another sender's k1 is another message
        _post("general", "alice", "k1", ms=50),
    )
    assert results == [
        Posted("general", 1, Hlc(10, 0), False),
        Posted("general", 2, Hlc(10, 1), False),
        Posted("general", 1, Hlc(10, 0), True),
    ]
    assert state.last_seq("general") == 2


def test_a_key_evicted_earlier_in_the_batch_is_new_again(state: ChatState) -> None:
    _apply(state, _post("general", "alice", "old"))  # in the table before the batch
    results = _apply(
        state,
        _post("general", "alice", "k1"),  # alice's keys: old, k1
        _post("general", "alice", "k2"),  # evicts "old" (from the table)
        _post("general", "alice", "old"),  # new again; evicts k1 (entered by this batch)
        _post("general", "alice", "k1"),  # new again; evicts k2
        _post("general", "alice", "k2"),  # new again; evicts "old"
    )
    assert [(r.seq, r.duplicate) for r in results if isinstance(r, Posted)] == [
        (2, False),
        (3, False),
        (4, False),
        (5, False),
        (6, False),
    ]
    keys = sorted((row[2], row[3]) for row in state.dump()["dedup"] if row[0] == "alice")
    assert keys == [("k1", 5), ("k2", 6)]
    assert state.dump()["dedup_senders"] == [("alice", 6)]


def test_a_retry_of_a_key_the_batch_did_not_evict_is_a_duplicate(state: ChatState) -> None:
    _apply(state, _post("general", "alice", "a"), _post("general", "alice", "b"))
    results = _apply(
        state,
        _post("general", "alice", "c"),  # evicts a
        _post("general", "alice", "b"),  # still held (in the table): duplicate
        _post("general", "alice", "a"),  # evicted by this batch: a new message
    )
    assert results == [
        Posted("general", 3, Hlc(10, 2), False),
        Posted("general", 2, Hlc(10, 1), True),
        Posted("general", 4, Hlc(10, 3), False),
    ]


def test_a_dm_first_message_in_a_batch_makes_its_follow_ups_once(state: ChatState) -> None:
    dm = "dm:alice:bob"
    results = _apply(
        state,
        _post(dm, "carol", "k1"),  # not a participant
        _post(dm, "bob", "k1", ms=5),
        _post(dm, "alice", "k1", ms=3),  # the clock went back: the stamp still rises
        _post(dm, "bob", "k1"),
    )
    assert isinstance(results[0], Rejected) and results[0].code is Code.PERMISSION_DENIED
    first, second, dup = results[1:]
    assert isinstance(first, Posted) and len(first.follow_ups) == 2
    assert second == Posted(dm, 2, Hlc(5, 1), False)
    assert dup == Posted(dm, 1, Hlc(5, 0), True)
    assert [(f.user, f.peer) for f in state.outbox()] == [("alice", "bob"), ("bob", "alice")]
    assert state.last_seq(dm) == 2


def test_commands_between_sends_see_the_sends_before_them(state: ChatState) -> None:
    results = _apply(
        state,
        _post("later", "alice", "k1"),  # no such channel yet
        CreateChannel("later", "bob", 1),
        _post("later", "alice", "k1"),  # not a member
        JoinChannel("later", "alice", 2),
        _post("later", "alice", "k1"),
        MarkRead("bob", "later", 1),  # sees the send just before it
        LeaveChannel("later", "alice", 3),
        _post("later", "alice", "k1"),  # a retry after leaving: still its original
        _post("later", "alice", "k2"),  # but a new send is refused
    )
    assert isinstance(results[0], Rejected) and results[0].code is Code.NOT_FOUND
    assert isinstance(results[2], Rejected) and results[2].code is Code.PERMISSION_DENIED
    assert results[4] == Posted("later", 1, Hlc(10, 0), False)
    assert results[7] == Posted("later", 1, Hlc(10, 0), True)
    assert isinstance(results[8], Rejected) and results[8].code is Code.PERMISSION_DENIED


def test_a_batch_moves_each_senders_marker_as_one_entry_at_a_time_would(
    state: ChatState,
) -> None:
    dm = "dm:alice:bob"
    results = _apply(
        state,
        _post("general", "alice", "k1"),  # 1
        _post("general", "bob", "k1"),  # 2
        _post("general", "alice", "k2"),  # 3
        MarkRead("bob", "general", 1),  # bob is at 2 already (his own message)
        _post("general", "bob", "k2"),  # 4
        _post("general", "alice", "k1"),  # a retry: moves nothing
        _post(dm, "bob", "k1"),  # the DM's first message
        _post("general", "dave", "k1"),  # not a member: moves nothing
    )
    assert results[3] == ReadMarked("bob", "general", 2, 1)
    assert results[5] == Posted("general", 1, Hlc(10, 0), True)
    assert state.dump()["read_markers"] == [
        ("alice", "general", 3),
        ("bob", dm, 1),
        ("bob", "general", 4),
    ]
    assert state.unread_counts("alice") == {dm: 1, "general": 1, "random": 0}
    assert state.unread_counts("bob") == {dm: 0, "general": 0}


def test_a_run_with_more_markers_than_one_statement_holds(tmp_path: Path) -> None:
    # 70 (sender, conversation) pairs in one run: the markers are written 64 per statement.
    channels = [f"c{i}" for i in range(70)]
    log: list[bytes | None] = [encode_command(CreateChannel(c, "alice", 0)) for c in channels]
    log += [encode_command(JoinChannel(c, "bob", 0)) for c in channels]
    log += [encode_command(_post(c, "alice", "k")) for c in channels]
    log += [encode_command(_post(c, "alice", "k2")) for c in channels[::2]]
    entries = _entries(log)
    single = Applied(tmp_path / "single.db", entries, range(len(entries) + 1))
    batched = Applied(tmp_path / "batched.db", entries, [0, 140, len(entries)])
    assert batched.dump == single.dump
    expected = sorted(("alice", c, 2 if i % 2 == 0 else 1) for i, c in enumerate(channels))
    assert single.dump["read_markers"] == expected


# ---- the short paths of decode and validate -----------------------------------------------------

texts = st.text(max_size=6) | st.sampled_from(["hi", " ", "\ud800", "é" * 2000])
ints = st.integers(-(2**64), 2**64) | st.integers(0, 5)
names = st.sampled_from(["alice", "Bob", "", "a" * 33, "dm:alice:bob", "dm:bob:alice", "nope"])
post_values = st.tuples(names, names, texts | st.just("k1"), texts, ints, ints)


@settings(max_examples=400, deadline=None)
@given(values=post_values)
def test_validate_agrees_with_its_general_way(
    values: tuple[str, str, str, str, int, int],
) -> None:
    cmd = PostMessage(*values)
    try:
        expected: object = _validate_general(cmd)
    except UnicodeEncodeError as exc:  # a lone surrogate (never decoded from bytes)
        expected = exc.reason
    try:
        got: object = validate(cmd)
    except UnicodeEncodeError as exc:
        got = exc.reason
    assert got == expected


def _outcome(decode: Callable[[bytes], Command], data: bytes) -> object:
    try:
        return decode(data)
    except MalformedCommand as exc:
        return str(exc)


encodable_posts = post_values.filter(lambda v: all("\ud800" not in str(x) for x in v))
json_like = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=7),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(
    body=st.one_of(
        st.tuples(
            encodable_posts, st.sampled_from([b"", b"", b" ", b"\n", b"x", b"]", b",1]"])
        ).map(
            lambda v: encode_command(PostMessage(*v[0]))[2:] + v[1]  # + trailing bytes
        ),
        st.sampled_from([b"\\u00e9", b"\\ud800", b"\\udc00\\ud800", b"\\u0022"]).map(
            lambda escape: b'["general","alice","k","' + escape + b'",1,2]'
        ),
        json_like.map(lambda v: repr(v).replace("'", '"').encode("utf-8", "surrogatepass")),
        st.binary(max_size=40),
        st.sampled_from([b' ["a","b","c","d",1,2]', b'["a","b","c","d",1,2] ', b'["\\u00e9"]']),
    ),
    kind=st.sampled_from([5, 5, 5, 3]),
    version=st.sampled_from([1, 1, 1, 2]),
)
@example(body=b'["general","alice","k","t",1,9223372036854775808]', kind=5, version=1)
@example(body=b'["general","alice","k","t",-9223372036854775809,0]', kind=5, version=1)
@example(body=b'["general","alice","k","t",true,0]', kind=5, version=1)
def test_decode_agrees_with_its_general_way(body: bytes, kind: int, version: int) -> None:
    data = bytes((version, kind)) + body
    assert _outcome(decode_command, data) == _outcome(_decode_general, data)
