"""The chat state machine, one command and one query at a time: every rule of shards.chat.state
(seq without gaps, exactly-once within the dedup window, monotonic stamps, membership, read
markers, routes, follow-ups), every rejection, the encoding, and the GroupStateMachine contract
(replays skipped, applied_index durable, snapshot/restore)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from cluster.snapshotfile import SnapshotFile
from cluster.statemachine import FileSnapshots, GroupStateMachine
from shards.chat import (
    MAX_PAGE,
    AckFollowUp,
    AddDmConversation,
    ChannelCreated,
    ChatState,
    Code,
    Command,
    CreateChannel,
    DmAdded,
    DropRoute,
    FollowUpAcked,
    Hlc,
    JoinChannel,
    Joined,
    LeaveChannel,
    Left,
    MalformedCommand,
    MarkRead,
    Posted,
    PostMessage,
    ReadMarked,
    RegisterUser,
    Rejected,
    RouteDropped,
    RouteSet,
    SetRoute,
    UserRegistered,
    decode_command,
    dm_id,
    encode_command,
    parse_dm,
    validate,
)
from shards.chat.commands import CloseSession, OpenSession, SessionClosed, SessionOpened

DM = "dm:alice:bob"


class Replica:
    """A ChatState fed one command per log entry, with consecutive indexes."""

    def __init__(self, path: Path, dedup_window: int = 10_000) -> None:
        self.path = path
        self.sm = ChatState(path, dedup_window=dedup_window)
        self.index = self.sm.applied_index()

    def entry(self, cmd: Command | bytes | None) -> Entry:
        self.index += 1
        if cmd is None:
            return Entry(1, self.index, b"", EntryKind.NOOP)
        return Entry(1, self.index, cmd if isinstance(cmd, bytes) else encode_command(cmd))

    def run(self, *cmds: Command | bytes | None) -> list[object | None]:
        return self.sm.apply([self.entry(c) for c in cmds])

    def one(self, cmd: Command | bytes) -> object:
        (result,) = self.run(cmd)
        return result

    def post(self, conv: str, sender: str, key: str, text: str = "hi", ms: int = 100) -> object:
        return self.one(PostMessage(conv, sender, key, text, ms, 0))


@pytest.fixture
def rep(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path / "chat.db")
    try:
        yield r
    finally:
        r.sm.close()


@pytest.fixture
def general(rep: Replica) -> Replica:
    """alice created #general, bob joined it."""
    rep.run(CreateChannel("general", "alice", 1), JoinChannel("general", "bob", 2))
    return rep


def _rejected(result: object, code: Code, field: str) -> None:
    assert isinstance(result, Rejected), result
    assert (result.code, result.field) == (code, field), result


# ---- the protocol and the encoding --------------------------------------------------------------


def test_chat_state_is_a_group_state_machine(rep: Replica) -> None:
    sm: GroupStateMachine = rep.sm
    assert sm.applied_index() == 0
    assert isinstance(sm, FileSnapshots)  # its snapshots go to a file, never through memory


ALL_COMMANDS: list[Command] = [
    RegisterUser("alice", "Alice Ä", "scrypt$16384$8$1$c2FsdA$aGFzaA", 1_700_000_000_000),
    CreateChannel("general", "alice", 5),
    JoinChannel("general", "bob", 6),
    LeaveChannel("general", "bob", 7),
    PostMessage(DM, "alice", "key-1", "héllo \n 👋", 123, 4),
    MarkRead("bob", "general", 3),
    SetRoute("alice", "s-1", 2, 99),
    DropRoute("alice", "s-1", 2),
    AddDmConversation("bob", DM, "alice"),
    AckFollowUp(17),
    OpenSession("alice", "0123456789abcdef" * 4, 1_700_000_000_001),
    CloseSession("alice", "0123456789abcdef" * 4),
]


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_round_trips_through_its_bytes(cmd: Command) -> None:
    data = encode_command(cmd)
    assert data[0] == 1  # format version
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data  # deterministic
    assert validate(cmd) is None


def test_encoding_is_compact_positional_json() -> None:
    data = encode_command(JoinChannel("general", "bob", 6))
    assert data == b'\x01\x03["general","bob",6]'


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x03[]",  # unknown version
        b"\x01\x63[]",  # unknown kind
        b"\x01\x03",  # no body
        b"\x01\x03{}",  # not an array
        b'\x01\x03["general","bob"]',  # too few fields
        b'\x01\x03["general","bob",6,7]',  # too many
        b'\x01\x03["general","bob","6"]',  # int field as string
        b'\x01\x03["general","bob",true]',  # bool is not an int
        b'\x01\x03["general","bob",6.5]',
        b'\x01\x03["general",null,6]',
        b'\x01\x03["general","bob",99999999999999999999]',  # beyond SQLite's INTEGER
        b'\x01\x03["general","\\ud800",6]',  # lone surrogate
        b"\x01\x03\xff\xfe",  # not UTF-8
        b"\x01\x03" + b"[" * 100_000,  # nesting beyond the recursion limit
        b"\x01\x03NaN",
    ],
)
def test_garbage_does_not_decode(data: bytes) -> None:
    with pytest.raises(MalformedCommand):
        decode_command(data)


def test_garbage_entry_is_rejected_counted_and_changes_nothing(general: Replica) -> None:
    before = general.sm.dump()
    results = general.run(b"\x01\x05[1,2]", b"\xff" * 10, b"\x01\x03" + b"[" * 50_000)
    for result in results:
        _rejected(result, Code.INVALID_ARGUMENT, "command")
    after = general.sm.dump()
    assert after.pop("meta") == [(general.index,)]
    before.pop("meta")
    assert after == before
    assert general.sm.applied_index() == general.index


def test_noop_entries_answer_none_and_advance_the_index(rep: Replica) -> None:
    assert rep.run(None, None) == [None, None]
    assert rep.sm.applied_index() == 2


def test_entries_already_applied_are_skipped(tmp_path: Path) -> None:
    rep = Replica(tmp_path / "a.db")
    entries = [
        rep.entry(CreateChannel("general", "alice", 1)),
        rep.entry(PostMessage("general", "alice", "k", "one", 1, 0)),
    ]
    rep.sm.apply(entries)
    rep.sm.close()
    # After a restart the host may hand the same entries again: nothing is applied twice.
    again = ChatState(tmp_path / "a.db")
    try:
        assert again.applied_index() == 2
        assert again.apply(entries) == [None, None]
        assert again.last_seq("general") == 1
        nxt = Entry(1, 3, encode_command(PostMessage("general", "alice", "k2", "two", 2, 0)))
        results = again.apply([*entries, nxt])
        assert results[:2] == [None, None]
        assert isinstance(results[2], Posted) and results[2].seq == 2
        assert again.last_seq("general") == 2
    finally:
        again.close()


def test_a_failing_batch_leaves_nothing_behind(general: Replica) -> None:
    before = general.sm.dump()
    good = general.entry(PostMessage("general", "alice", "k", "one", 1, 0))

    class Exploding:
        """An entry whose bytes cannot be read: stands in for any failure mid-batch."""

        term, index, kind = 1, good.index + 1, EntryKind.NORMAL

        @property
        def data(self) -> bytes:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        general.sm.apply([good, cast(Entry, Exploding())])
    assert general.sm.dump() == before
    assert general.sm.applied_index() == good.index - 1


# ---- accounts -----------------------------------------------------------------------------------


def test_register_and_read_a_user(rep: Replica) -> None:
    cmd = RegisterUser("alice", "Alice", "scrypt$abc", 10)
    assert rep.one(cmd) == UserRegistered("alice", duplicate=False)
    user = rep.sm.user("alice")
    assert user is not None
    assert (user.display_name, user.password_hash, user.created_ms) == ("Alice", "scrypt$abc", 10)
    assert rep.sm.user("bob") is None
    # The identical proposal again (a retry) is acknowledged, anything else is a clash.
    assert rep.one(cmd) == UserRegistered("alice", duplicate=True)
    _rejected(rep.one(RegisterUser("alice", "Other", "scrypt$x", 11)), Code.ALREADY_EXISTS, "user")
    assert rep.sm.user("alice") == user


@pytest.mark.parametrize(
    ("cmd", "field"),
    [
        (RegisterUser("Alice", "A", "h", 1), "user"),
        (RegisterUser("", "A", "h", 1), "user"),
        (RegisterUser("a" * 33, "A", "h", 1), "user"),
        (RegisterUser("al ice", "A", "h", 1), "user"),
        (RegisterUser("alice", "", "h", 1), "display_name"),
        (RegisterUser("alice", "x" * 65, "h", 1), "display_name"),
        (RegisterUser("alice", "bell\x07", "h", 1), "display_name"),
        (RegisterUser("alice", "A", "", 1), "password_hash"),
        (RegisterUser("alice", "A", "h" * 513, 1), "password_hash"),
        (RegisterUser("alice", "A", "h", -1), "created_ms"),
        (CreateChannel("Gen", "alice", 1), "channel"),
        (CreateChannel("general", "ALICE", 1), "creator"),
        (JoinChannel("general:x", "bob", 1), "channel"),
        (JoinChannel("general", "bob", -5), "ms"),
        (LeaveChannel("general", "b@b", 1), "user"),
        (PostMessage("dm:bob:alice", "alice", "k", "t", 1, 0), "conversation"),
        (PostMessage("dm:alice:alice", "alice", "k", "t", 1, 0), "conversation"),
        (PostMessage("dm:alice", "alice", "k", "t", 1, 0), "conversation"),
        (PostMessage("dm:alice:bob:carol", "alice", "k", "t", 1, 0), "conversation"),
        (PostMessage("", "alice", "k", "t", 1, 0), "conversation"),
        (PostMessage("general", "", "k", "t", 1, 0), "sender"),
        (PostMessage("general", "alice", "", "t", 1, 0), "idempotency_key"),
        (PostMessage("general", "alice", "a key", "t", 1, 0), "idempotency_key"),
        (PostMessage("general", "alice", "k" * 65, "t", 1, 0), "idempotency_key"),
        (PostMessage("general", "alice", "k", "", 1, 0), "text"),
        (PostMessage("general", "alice", "k", " \n\t", 1, 0), "text"),
        (PostMessage("general", "alice", "k", "é" * 2049, 1, 0), "text"),
        (PostMessage("general", "alice", "k", "t", -1, 0), "hlc_ms"),
        (PostMessage("general", "alice", "k", "t", 1, 1 << 40), "hlc_counter"),
        (MarkRead("alice", "dm:x", 1), "conversation"),
        (MarkRead("alice", "general", -1), "seq"),
        (SetRoute("alice", "", 1, 1), "session_id"),
        (SetRoute("alice", "s 1", 1, 1), "session_id"),
        (SetRoute("alice", "s1", 0, 1), "gateway_node"),
        (DropRoute("alice", "s1", -1), "gateway_node"),
        (AddDmConversation("carol", DM, "alice"), "conversation"),
        (AddDmConversation("alice", DM, "alice"), "conversation"),
        (AddDmConversation("alice", "general", "bob"), "conversation"),
        (AckFollowUp(-1), "outbox_id"),
        (OpenSession("a b", "a" * 64, 1), "user"),
        (OpenSession("alice", "A" * 64, 1), "token_digest"),
        (OpenSession("alice", "a" * 63, 1), "token_digest"),
        (OpenSession("alice", "a" * 64, -1), "created_ms"),
        (CloseSession("alice", "token"), "token_digest"),
    ],
)
def test_bad_fields_are_named_and_change_nothing(
    general: Replica, cmd: Command, field: str
) -> None:
    before = general.sm.dump()
    _rejected(general.one(cmd), Code.INVALID_ARGUMENT, field)
    after = general.sm.dump()
    after.pop("meta"), before.pop("meta")
    assert after == before


def test_text_limit_is_4_kib_of_utf8(general: Replica) -> None:
    assert isinstance(general.post("general", "alice", "a", "é" * 2048), Posted)  # 4096 bytes
    assert isinstance(general.post("general", "alice", "b", "x" * 4096), Posted)


# ---- channels -----------------------------------------------------------------------------------


def test_create_channel_makes_the_creator_a_member(rep: Replica) -> None:
    assert rep.one(CreateChannel("general", "alice", 5)) == ChannelCreated("general", False)
    assert rep.sm.members("general") == ["alice"]
    info = rep.sm.channel("general")
    assert info is not None
    assert (info.creator, info.created_ms, info.member_count, info.last_seq) == ("alice", 5, 1, 0)
    assert rep.one(CreateChannel("general", "alice", 5)) == ChannelCreated("general", True)
    _rejected(rep.one(CreateChannel("general", "bob", 6)), Code.ALREADY_EXISTS, "channel")
    assert rep.sm.members("general") == ["alice"]


def test_join_and_leave_are_idempotent(general: Replica) -> None:
    assert general.one(JoinChannel("general", "carol", 3)) == Joined("general", "carol", False)
    assert general.one(JoinChannel("general", "carol", 4)) == Joined("general", "carol", True)
    assert general.sm.members("general") == ["alice", "bob", "carol"]
    assert general.one(LeaveChannel("general", "carol", 5)) == Left("general", "carol", True)
    assert general.one(LeaveChannel("general", "carol", 6)) == Left("general", "carol", False)
    assert general.sm.members("general") == ["alice", "bob"]


def test_unknown_channel_is_not_found(general: Replica) -> None:
    _rejected(general.one(JoinChannel("nope", "bob", 1)), Code.NOT_FOUND, "channel")
    _rejected(general.one(LeaveChannel("nope", "bob", 1)), Code.NOT_FOUND, "channel")
    _rejected(general.post("nope", "bob", "k"), Code.NOT_FOUND, "conversation")
    _rejected(general.one(MarkRead("bob", "nope", 0)), Code.NOT_FOUND, "conversation")
    assert general.sm.members("nope") is None
    assert general.sm.channel("nope") is None


def test_channels_lists_member_counts_and_last_seq(general: Replica) -> None:
    general.run(CreateChannel("random", "carol", 3))
    general.post("general", "bob", "k1")
    listed = [(c.name, c.member_count, c.last_seq) for c in general.sm.channels()]
    assert listed == [("general", 2, 1), ("random", 1, 0)]


# ---- messages -----------------------------------------------------------------------------------


def test_only_members_post_to_a_channel(general: Replica) -> None:
    _rejected(general.post("general", "carol", "k1"), Code.PERMISSION_DENIED, "sender")
    assert not general.sm.is_participant("carol", "general")
    general.run(JoinChannel("general", "carol", 3))
    assert general.sm.is_participant("carol", "general")
    assert general.post("general", "carol", "k1") == Posted("general", 1, Hlc(100, 0), False)
    general.run(LeaveChannel("general", "carol", 4))
    _rejected(general.post("general", "carol", "k2"), Code.PERMISSION_DENIED, "sender")
    assert general.sm.last_seq("general") == 1


def test_only_participants_post_to_a_dm(rep: Replica) -> None:
    assert rep.sm.is_participant("bob", DM) and not rep.sm.is_participant("carol", DM)
    assert not rep.sm.is_participant("bob", "general")
    _rejected(rep.post(DM, "carol", "k"), Code.PERMISSION_DENIED, "sender")
    first = rep.post(DM, "bob", "k")
    assert isinstance(first, Posted)
    assert (first.seq, first.duplicate) == (1, False)
    assert rep.post(DM, "alice", "k") == Posted(DM, 2, Hlc(100, 1), False)


def test_same_key_twice_makes_one_message_with_the_same_seq(general: Replica) -> None:
    first = general.post("general", "alice", "key-1", "hello", ms=100)
    assert first == Posted("general", 1, Hlc(100, 0), False)
    general.post("general", "bob", "key-1", "bob's own key-1", ms=101)  # another sender's key
    again = general.post("general", "alice", "key-1", "hello (retry)", ms=250)
    assert again == Posted("general", 1, Hlc(100, 0), duplicate=True)
    msgs, _, _ = general.sm.history("general")
    assert [(m.seq, m.sender, m.text) for m in msgs] == [
        (1, "alice", "hello"),
        (2, "bob", "bob's own key-1"),
    ]
    # The same key in another conversation is another message.
    general.run(CreateChannel("random", "alice", 3))
    assert general.post("random", "alice", "key-1") == Posted("random", 1, Hlc(100, 0), False)


def test_a_retry_after_leaving_still_gets_its_original_seq(general: Replica) -> None:
    assert general.post("general", "bob", "k") == Posted("general", 1, Hlc(100, 0), False)
    general.run(LeaveChannel("general", "bob", 3))
    assert general.post("general", "bob", "k") == Posted("general", 1, Hlc(100, 0), True)


def test_seq_is_gap_free_per_conversation_when_interleaved(general: Replica) -> None:
    general.run(CreateChannel("random", "bob", 3), JoinChannel("random", "alice", 4))
    plan = ["general", "random", DM, "general", "general", DM, "random", "general"]
    expected: dict[str, int] = {}
    for i, conv in enumerate(plan):
        # Rejections in between take no seq either.
        _rejected(general.post(conv, "mallory", f"x{i}"), Code.PERMISSION_DENIED, "sender")
        posted = general.post(conv, "alice" if i % 2 else "bob", f"k{i}")
        expected[conv] = expected.get(conv, 0) + 1
        assert isinstance(posted, Posted) and posted.seq == expected[conv]
    for conv, last in expected.items():
        msgs, oldest, newest = general.sm.history(conv)
        assert [m.seq for m in msgs] == list(range(1, last + 1))
        assert oldest and newest


def test_stamps_stay_monotonic_when_the_clock_goes_back(general: Replica) -> None:
    given = [(1000, 0), (1000, 0), (900, 5), (1200, 0), (1200, 0), (1100, 9), (1300, 2)]
    stamps = []
    for i, (ms, counter) in enumerate(given):
        posted = general.one(PostMessage("general", "alice", f"k{i}", "t", ms, counter))
        assert isinstance(posted, Posted)
        stamps.append(posted.hlc)
    assert stamps == [
        Hlc(1000, 0),
        Hlc(1000, 1),  # same time again: one tick later
        Hlc(1000, 2),  # the leader's clock went back: still after the previous stamp
        Hlc(1200, 0),  # the clock is ahead again: it wins
        Hlc(1200, 1),
        Hlc(1200, 2),
        Hlc(1300, 2),
    ]
    assert [m.hlc for m in general.sm.history("general").messages] == stamps


def test_dedup_window_evicts_each_senders_oldest_keys(tmp_path: Path) -> None:
    rep = Replica(tmp_path / "w.db", dedup_window=3)
    try:
        rep.run(CreateChannel("general", "alice", 1), JoinChannel("general", "bob", 1))
        for key in ("k1", "k2", "k3"):
            rep.post("general", "alice", key)
        rep.post("general", "bob", "b1")
        assert rep.post("general", "alice", "k1") == Posted("general", 1, Hlc(100, 0), True)
        rep.post("general", "alice", "k4")  # alice's 4th key evicts her oldest, k1
        dedup = rep.sm.dump()["dedup"]
        assert sorted((row[0], row[2]) for row in dedup) == [
            ("alice", "k2"),
            ("alice", "k3"),
            ("alice", "k4"),
            ("bob", "b1"),  # bob's window is his own
        ]
        assert rep.sm.dump()["dedup_senders"] == [("alice", 4), ("bob", 1)]  # keys entered
        # Beyond the window a key is new again: the documented limit of exactly-once.
        late = rep.post("general", "alice", "k1")
        assert isinstance(late, Posted) and (late.seq, late.duplicate) == (6, False)
        assert rep.post("general", "alice", "k3") == Posted("general", 3, Hlc(100, 2), True)
        assert rep.post("general", "bob", "b1") == Posted("general", 4, Hlc(100, 3), True)
    finally:
        rep.sm.close()


def test_default_dedup_window_holds_ten_thousand_keys(general: Replica) -> None:
    n = 10_000
    cmds: list[Command | bytes | None] = [
        PostMessage("general", "alice", f"k{i}", "t", 1, 0) for i in range(n + 1)
    ]
    general.run(*cmds)
    assert general.sm.dump()["dedup_senders"] == [("alice", n + 1)]
    assert len(general.sm.dump()["dedup"]) == n
    assert general.post("general", "alice", f"k{n}") == Posted("general", n + 1, Hlc(1, n), True)
    assert general.post("general", "alice", "k1") == Posted("general", 2, Hlc(1, 1), True)
    late = general.post("general", "alice", "k0")  # evicted: the oldest of 10,001 keys
    assert isinstance(late, Posted) and not late.duplicate


# ---- DMs and follow-ups -------------------------------------------------------------------------


def test_dm_id_is_one_id_per_pair() -> None:
    assert dm_id("bob", "alice") == dm_id("alice", "bob") == DM
    assert parse_dm(DM) == ("alice", "bob")
    assert parse_dm("general") is None
    with pytest.raises(ValueError):
        dm_id("alice", "alice")
    with pytest.raises(ValueError):
        dm_id("alice", "Bob")


def test_first_dm_message_lists_it_and_queues_follow_ups(rep: Replica) -> None:
    first = rep.post(DM, "bob", "k1")
    assert isinstance(first, Posted) and len(first.follow_ups) == 2
    second = rep.post(DM, "alice", "k2")
    assert isinstance(second, Posted) and second.follow_ups == ()
    outbox = rep.sm.outbox()
    assert [(f.id, f.user, f.conversation, f.peer) for f in outbox] == [
        (first.follow_ups[0], "alice", DM, "bob"),
        (first.follow_ups[1], "bob", DM, "alice"),
    ]
    refs = rep.sm.conversations_of("alice")
    # alice's own message (seq 2) moved her read marker there.
    assert [(r.conversation, r.peer, r.last_seq, r.read_seq) for r in refs] == [(DM, "bob", 2, 2)]
    assert rep.one(AckFollowUp(outbox[0].id)) == FollowUpAcked(outbox[0].id, True)
    assert rep.one(AckFollowUp(outbox[0].id)) == FollowUpAcked(outbox[0].id, False)
    assert [f.id for f in rep.sm.outbox()] == [outbox[1].id]
    rep.run(AckFollowUp(outbox[1].id))
    # Ids are never reused, so a late acknowledgement cannot remove a newer follow-up.
    third = rep.post("dm:alice:carol", "carol", "k1")
    assert isinstance(third, Posted) and min(third.follow_ups) > outbox[1].id


def test_add_dm_conversation_is_idempotent(rep: Replica) -> None:
    # The recipient's group learns of a DM that lives in another group.
    cmd = AddDmConversation("bob", DM, "alice")
    assert rep.one(cmd) == DmAdded("bob", DM, True)
    assert rep.one(cmd) == DmAdded("bob", DM, False)
    refs = rep.sm.conversations_of("bob")
    assert [(r.conversation, r.peer, r.last_seq) for r in refs] == [(DM, "alice", None)]
    assert rep.sm.unread_counts("bob") == {}  # the counts live with the conversation


# ---- read markers -------------------------------------------------------------------------------


def test_read_markers_never_move_backwards(general: Replica) -> None:
    for i in range(5):
        general.post("general", "alice", f"k{i}")
    assert general.sm.unread("bob", "general") == 5
    assert general.one(MarkRead("bob", "general", 3)) == ReadMarked("bob", "general", 3, 2)
    assert general.one(MarkRead("bob", "general", 1)) == ReadMarked("bob", "general", 3, 2)
    assert general.sm.unread("bob", "general") == 2
    assert general.one(MarkRead("bob", "general", 5)) == ReadMarked("bob", "general", 5, 0)
    _rejected(general.one(MarkRead("bob", "general", 6)), Code.FAILED_PRECONDITION, "seq")
    assert general.sm.unread("bob", "general") == 0


def test_mark_read_needs_membership(general: Replica) -> None:
    general.post("general", "alice", "k")
    _rejected(general.one(MarkRead("carol", "general", 1)), Code.PERMISSION_DENIED, "user")
    _rejected(general.one(MarkRead("carol", DM, 0)), Code.PERMISSION_DENIED, "user")
    assert general.one(MarkRead("bob", DM, 0)) == ReadMarked("bob", DM, 0, 0)


def test_unread_counts_cover_channels_and_dms(general: Replica) -> None:
    general.run(CreateChannel("random", "carol", 3))  # bob is not in it
    for i in range(3):
        general.post("general", "alice", f"g{i}")
    general.post(DM, "alice", "d1")
    general.post("random", "carol", "r1")
    general.run(MarkRead("bob", "general", 1))
    assert general.sm.unread_counts("bob") == {"general": 2, DM: 1}
    assert general.sm.unread_counts("alice") == {"general": 0, DM: 0}  # all her own
    refs = general.sm.conversations_of("bob")
    assert [(r.conversation, r.peer, r.read_seq) for r in refs] == [
        (DM, "alice", 0),
        ("general", None, 1),
    ]


# ---- one's own messages are read ---------------------------------------------------------------


def _markers(rep: Replica) -> dict[tuple[str, str], int]:
    return {(str(u), str(c)): int(str(s)) for u, c, s in rep.sm.dump()["read_markers"]}


def test_a_sender_has_nothing_unread_after_sending_and_the_recipient_one(
    general: Replica,
) -> None:
    general.run(CreateChannel("random", "bob", 3))
    assert general.post("general", "alice", "k1") == Posted("general", 1, Hlc(100, 0), False)
    assert general.sm.unread("alice", "general") == 0
    assert general.sm.unread("bob", "general") == 1
    for i in range(2, 4):
        general.post("general", "alice", f"k{i}")
    assert general.sm.unread_counts("alice") == {"general": 0}
    assert general.sm.unread_counts("bob") == {"general": 3, "random": 0}
    # Only the sender's marker moved, and only in the conversation sent to.
    assert _markers(general) == {("alice", "general"): 3}


def test_sending_catches_the_sender_up_with_what_came_before(general: Replica) -> None:
    general.post("general", "bob", "b1")
    general.post("general", "bob", "b2")
    assert general.sm.unread("alice", "general") == 2
    general.post("general", "alice", "a1")  # seq 3: she writes, so she has read 1 and 2
    assert general.sm.unread("alice", "general") == 0
    assert general.sm.unread("bob", "general") == 1
    general.post("general", "bob", "b3")
    assert general.sm.unread("alice", "general") == 1
    assert general.one(MarkRead("alice", "general", 2)) == ReadMarked("alice", "general", 3, 1)


def test_a_dm_both_ways(rep: Replica) -> None:
    first = rep.post(DM, "alice", "a1")
    assert isinstance(first, Posted) and first.seq == 1 and first.follow_ups
    assert rep.sm.unread_counts("alice") == {DM: 0}
    assert rep.sm.unread_counts("bob") == {DM: 1}
    rep.post(DM, "bob", "b1")
    assert rep.sm.unread_counts("alice") == {DM: 1}
    assert rep.sm.unread_counts("bob") == {DM: 0}
    rep.post(DM, "alice", "a2")
    rep.post(DM, "alice", "a3")
    assert (rep.sm.unread("alice", DM), rep.sm.unread("bob", DM)) == (0, 2)
    assert _markers(rep) == {("alice", DM): 4, ("bob", DM): 2}


def test_a_replayed_send_moves_no_marker(general: Replica) -> None:
    general.post("general", "alice", "k1")
    general.post("general", "bob", "k1")
    before = {t: rows for t, rows in general.sm.dump().items() if t != "meta"}
    assert _markers(general) == {("alice", "general"): 1, ("bob", "general"): 2}
    # alice's retry answers her original seq 1 and writes nothing: her marker stays at 1
    # (seq 2, bob's, is still unread to her) and bob's at 2.
    again = general.post("general", "alice", "k1", ms=999)
    assert again == Posted("general", 1, Hlc(100, 0), True)
    assert {t: rows for t, rows in general.sm.dump().items() if t != "meta"} == before
    assert general.sm.unread("alice", "general") == 1


def test_a_marker_already_beyond_a_new_message_stays(tmp_path: Path) -> None:
    # MarkRead never goes beyond the last message, so no log puts a marker past the sender's
    # next message; the row is planted directly to check that the send's upsert only moves
    # markers forward (as every other write of a marker does).
    path = tmp_path / "chat.db"
    rep = Replica(path)
    rep.run(CreateChannel("general", "alice", 1), JoinChannel("general", "bob", 2))
    rep.post("general", "alice", "k1")
    rep.sm.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE read_markers SET seq = 5 WHERE user = 'alice'")
    conn.close()
    rep.sm = ChatState(path)
    try:
        assert rep.post("general", "alice", "k2") == Posted("general", 2, Hlc(100, 1), False)
        rep.post("general", "bob", "k1")
        assert _markers(rep) == {("alice", "general"): 5, ("bob", "general"): 3}
    finally:
        rep.sm.close()


def test_a_run_of_sends_moves_each_senders_marker_to_their_newest(general: Replica) -> None:
    general.run(CreateChannel("random", "bob", 3), JoinChannel("random", "alice", 4))
    general.run(
        PostMessage("general", "alice", "k1", "a", 100, 0),
        PostMessage("random", "alice", "k2", "b", 100, 0),
        PostMessage("general", "bob", "k1", "c", 100, 0),
        PostMessage("general", "alice", "k3", "d", 100, 0),
        PostMessage("general", "carol", "k1", "not a member", 100, 0),
        PostMessage("general", "bob", "k1", "a retry", 100, 0),
        PostMessage("random", "bob", "k2", "e", 100, 0),
    )
    assert _markers(general) == {
        ("alice", "general"): 3,
        ("alice", "random"): 1,
        ("bob", "general"): 2,
        ("bob", "random"): 2,
    }
    assert general.sm.unread_counts("alice") == {"general": 0, "random": 1}
    assert general.sm.unread_counts("bob") == {"general": 1, "random": 0}


# ---- routes -------------------------------------------------------------------------------------


def test_routes_move_atomically_and_drop_guarded(rep: Replica) -> None:
    assert rep.one(SetRoute("alice", "s1", 1, 10)) == RouteSet("alice", "s1", 1, 0)
    assert rep.one(SetRoute("alice", "s2", 3, 11)) == RouteSet("alice", "s2", 3, 0)
    # The session reconnects on node 2: one command moves it.
    assert rep.one(SetRoute("alice", "s1", 2, 12)) == RouteSet("alice", "s1", 2, 1)
    assert [(r.session_id, r.gateway_node, r.ms) for r in rep.sm.routes("alice")] == [
        ("s1", 2, 12),
        ("s2", 3, 11),
    ]
    # Node 1 cleaning up late must not drop the route node 2 now owns.
    assert rep.one(DropRoute("alice", "s1", 1)) == RouteDropped("alice", "s1", False)
    assert rep.one(DropRoute("alice", "s1", 2)) == RouteDropped("alice", "s1", True)
    assert rep.one(DropRoute("alice", "s2")) == RouteDropped("alice", "s2", True)
    assert rep.one(DropRoute("alice", "s2")) == RouteDropped("alice", "s2", False)
    assert rep.sm.routes("alice") == []


# ---- sessions -----------------------------------------------------------------------------------


def test_sessions_open_once_close_idempotently_and_only_for_their_user(rep: Replica) -> None:
    digest, other = "a" * 64, "b" * 64
    _rejected(rep.one(OpenSession("alice", digest, 5)), Code.NOT_FOUND, "user")
    rep.one(RegisterUser("alice", "Alice", "h", 1))
    rep.one(RegisterUser("bob", "Bob", "h", 1))
    assert rep.one(OpenSession("alice", digest, 5)) == SessionOpened("alice", duplicate=False)
    assert rep.one(OpenSession("alice", digest, 5)) == SessionOpened("alice", duplicate=True)
    _rejected(rep.one(OpenSession("bob", digest, 6)), Code.ALREADY_EXISTS, "token_digest")
    assert rep.sm.session_user(digest) == "alice"
    assert rep.sm.session_user(other) is None
    # A digest paired with another user (a forged token prefix) closes nothing.
    assert rep.one(CloseSession("bob", digest)) == SessionClosed("bob", closed=False)
    assert rep.one(CloseSession("alice", digest)) == SessionClosed("alice", closed=True)
    assert rep.one(CloseSession("alice", digest)) == SessionClosed("alice", closed=False)
    assert rep.sm.session_user(digest) is None


# ---- history and sync ---------------------------------------------------------------------------


@pytest.fixture
def ten(general: Replica) -> Replica:
    general.run(*[PostMessage("general", "alice", f"k{i}", f"m{i + 1}", 1, 0) for i in range(10)])
    return general


def _page(rep: Replica, **kw: int) -> tuple[list[int], bool, bool]:
    msgs, oldest, newest = rep.sm.history("general", **kw)
    return [m.seq for m in msgs], oldest, newest


def test_history_pages(ten: Replica) -> None:
    r = ten
    assert _page(r) == (list(range(1, 11)), True, True)
    assert _page(r, limit=3) == ([8, 9, 10], False, True)
    assert _page(r, before=8, limit=3) == ([5, 6, 7], False, False)
    assert _page(r, before=3, limit=5) == ([1, 2], True, False)
    assert _page(r, before=1) == ([], True, False)
    assert _page(r, before=1000, limit=2) == ([9, 10], False, True)
    assert _page(r, after=3, limit=3) == ([4, 5, 6], False, False)
    assert _page(r, after=8, limit=5) == ([9, 10], False, True)
    assert _page(r, after=10) == ([], False, True)
    assert _page(r, after=0, limit=2) == ([1, 2], True, False)
    assert _page(r, around=5, limit=3) == ([4, 5, 6], False, False)
    assert _page(r, around=5, limit=4) == ([4, 5, 6, 7], False, False)
    assert _page(r, around=1, limit=3) == ([1, 2, 3], True, False)
    assert _page(r, around=10, limit=3) == ([8, 9, 10], False, True)
    assert _page(r, around=99, limit=3) == ([8, 9, 10], False, True)
    assert _page(r, limit=0) == ([10], False, True)  # clamped to 1
    assert r.sm.history("general", limit=3).messages[0].text == "m8"
    with pytest.raises(ValueError):
        r.sm.history("general", before=3, after=1)


def test_history_of_an_empty_or_unknown_conversation(general: Replica) -> None:
    assert general.sm.history("general") == ([], True, True)
    assert general.sm.history("nope", around=3) == ([], True, True)


def test_history_limit_is_clamped_to_500(general: Replica) -> None:
    general.run(
        *[PostMessage("general", "alice", f"k{i}", "t", 1, 0) for i in range(MAX_PAGE + 20)]
    )
    msgs, oldest, newest = general.sm.history("general", limit=10_000)
    assert len(msgs) == MAX_PAGE and not oldest and newest
    assert msgs[0].seq == 21


def test_since_resumes_from_cursors_with_no_gap_and_no_duplicate(ten: Replica) -> None:
    r = ten
    r.post(DM, "bob", "d1")
    r.post(DM, "alice", "d2")
    page = r.sm.since({"general": 7, DM: 0, "unknown": 3}, limit=4)
    assert [(m.conversation, m.seq) for m in page.messages] == [
        (DM, 1),
        (DM, 2),
        ("general", 8),
        ("general", 9),
    ]
    assert page.cursors == {DM: 2, "general": 9}
    assert page.limited
    rest = r.sm.since(page.cursors, limit=4)
    assert [(m.conversation, m.seq) for m in rest.messages] == [("general", 10)]
    assert rest.cursors == {DM: 2, "general": 10}
    assert not rest.limited
    assert r.sm.since(rest.cursors).messages == []


# ---- snapshots ----------------------------------------------------------------------------------


def test_snapshot_restores_into_a_fresh_and_into_a_used_replica(
    ten: Replica, tmp_path: Path
) -> None:
    ten.post(DM, "bob", "d1")
    ten.run(SetRoute("bob", "s", 2, 5), MarkRead("bob", "general", 4))
    meta = SnapshotMeta(index=ten.index, term=1)
    ten.sm.snapshot_to(tmp_path / "snapshot")
    data = SnapshotFile.open(tmp_path / "snapshot")
    assert data == ten.sm.snapshot()  # the in-memory convenience holds the same bytes
    for name in ("fresh.db", "used.db"):
        other = Replica(tmp_path / name)
        try:
            if name == "used.db":
                other.run(CreateChannel("junk", "zed", 1), *[None] * 50)
            other.sm.restore(Snapshot(meta, data))
            assert other.sm.applied_index() == ten.index
            assert other.sm.dump() == ten.sm.dump()
            assert other.sm.restores == 1
            # And it carries on exactly like the original: the dedup table came along.
            other.index = ten.index
            assert other.post("general", "alice", "k3") == ten.post("general", "alice", "k3")
            assert other.post("general", "bob", "new") == ten.post("general", "bob", "new")
            assert other.sm.dump() == ten.sm.dump()
            ten.sm.restore(Snapshot(meta, data))  # rewind the original for the next round
            ten.index = meta.index
        finally:
            other.sm.close()


def test_restore_from_an_empty_snapshot_and_reopen(general: Replica, tmp_path: Path) -> None:
    general.sm.restore(Snapshot(SnapshotMeta(index=7, term=2)))
    assert general.sm.applied_index() == 7
    assert general.sm.channels() == []
    general.sm.close()
    reopened = ChatState(general.path)
    try:
        assert reopened.applied_index() == 7
        journal = reopened.dump()  # still readable, and still in WAL mode
        assert journal["meta"] == [(7,)]
    finally:
        reopened.close()
    general.sm = ChatState(general.path)  # for the fixture's cleanup


# ---- where a member joined -----------------------------------------------------------------------


def test_a_join_records_the_channel_seq_it_happened_at(general: Replica) -> None:
    general.post("general", "alice", "k1")
    general.post("general", "bob", "k2")
    general.run(CreateChannel("random", "carol", 3), JoinChannel("random", "alice", 4))
    general.one(JoinChannel("general", "carol", 5))
    general.post("general", "carol", "k3")
    general.one(JoinChannel("general", "carol", 6))  # again: the first join point stays
    joined = {
        (ref.conversation, user): ref.joined_seq
        for user in ("alice", "bob", "carol")
        for ref in general.sm.conversations_of(user)
    }
    assert joined == {
        ("general", "alice"): 0,  # created it
        ("general", "bob"): 0,
        ("random", "alice"): 0,
        ("general", "carol"): 2,
        ("random", "carol"): 0,
    }


def test_a_database_from_before_joined_seq_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = Replica(path)
    first.run(CreateChannel("general", "alice", 1), JoinChannel("general", "bob", 2))
    first.sm.close()
    conn = sqlite3.connect(path, isolation_level=None)  # the members table as it used to be
    conn.execute("ALTER TABLE members DROP COLUMN joined_seq")
    conn.close()
    again = Replica(path)
    try:
        assert [r.joined_seq for r in again.sm.conversations_of("bob")] == [None]  # unknown
        again.post("general", "alice", "k1")
        again.one(JoinChannel("general", "carol", 3))
        assert [r.joined_seq for r in again.sm.conversations_of("carol")] == [1]
    finally:
        again.sm.close()


# ---- deferred commits ----------------------------------------------------------------------------


def _committed_messages(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def test_deferred_commits_reach_the_file_on_flush_and_a_crash_replays(tmp_path: Path) -> None:
    path = tmp_path / "deferred.db"
    sm = ChatState(path, defer_commit=True)
    log = [
        Entry(1, 1, encode_command(CreateChannel("general", "alice", 1))),
        Entry(1, 2, encode_command(PostMessage("general", "alice", "k1", "one", 5, 0))),
    ]
    sm.apply(log)
    assert sm.history("general").messages[0].text == "one"  # visible on its own connection
    assert _committed_messages(path) == 0  # not yet in the file for anyone else
    sm.flush()
    assert _committed_messages(path) == 1
    more = [
        Entry(1, 3, encode_command(PostMessage("general", "alice", "k2", "two", 6, 0))),
        Entry(1, 4, encode_command(PostMessage("general", "alice", "k3", "three", 7, 0))),
    ]
    results = sm.apply(more)
    sm._conn.close()  # a crash: the open transaction is lost, unflushed
    again = ChatState(path, defer_commit=True)
    try:
        assert again.applied_index() == 2  # the committed point, with its effects
        assert again.apply(log + more)[2:] == results  # replayed from there, the same answers
        assert [m.text for m in again.history("general").messages] == ["one", "two", "three"]
    finally:
        again.close()
    assert _committed_messages(path) == 3  # close() flushed
