"""The chat service end to end in one process: request -> validation -> command -> apply on a
real ChatState (one SQLite file per group) -> result -> response, over an in-memory router that
commits each proposal as the next log entry of its group. Covers accounts and sessions, channels,
sends with exactly-once, DMs and who may read them, history, read markers and unread counts, and
the status code of every refusal."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest

from cluster.messages import Entry
from cluster.types import GroupId, NodeId
from proto import chat_pb2 as pb
from shards.chat import ChatState, Command, encode_command, service, wire
from shards.chat.api import ApiError
from shards.chat.auth import hash_password, token_digest
from shards.chat.queries import Query
from shards.chat.service import ChatService, Metadata, conversation_key, user_key
from shards.placement import Placement

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")
Rpc = Callable[[Req, Metadata], Coroutine[Any, Any, Resp]]
AnyRpc = Rpc[Any, Any]

GROUPS = 4
DM = "dm:alice:bob"
START_MS = 1_700_000_000_000


class MemoryRouter:
    """One ChatState per group; ``propose`` applies the command as the group's next entry."""

    def __init__(self, root: Path, groups: int) -> None:
        self.states = {GroupId(g): ChatState(root / f"group-{g}.db") for g in range(groups)}
        self.proposed: list[tuple[GroupId, Command]] = []

    async def propose(self, group: GroupId, command: Command) -> object:
        self.proposed.append((group, command))
        state = self.states[group]
        entry = Entry(1, state.applied_index() + 1, encode_command(command))
        (result,) = state.apply([entry])
        return result

    async def propose_many(self, group: GroupId, commands: Sequence[Command]) -> list[object]:
        return [await self.propose(group, c) for c in commands]

    async def query(self, group: GroupId, query: Query[T], *, linearizable: bool) -> T:
        """Runs ``query`` after a round trip through the wire encoding both ways, as a query
        sent to another node would take."""
        sent = wire.decode(wire.encode(query))
        assert sent == query
        answer = cast("Query[T]", sent).run(self.states[group])
        back = wire.decode(wire.encode(answer))
        assert back == answer
        return answer  # equal to what came back over the wire

    def groups(self) -> list[GroupId]:
        return sorted(self.states)

    def dumps(self) -> dict[GroupId, dict[str, list[tuple[object, ...]]]]:
        """Every group's rows but ``meta`` (whose applied index moves even on a refusal)."""
        return {
            g: {t: rows for t, rows in s.dump().items() if t != "meta"}
            for g, s in self.states.items()
        }

    def close(self) -> None:
        for state in self.states.values():
            state.close()


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


class World:
    """A service over a memory router, and a loop to call it from synchronous tests."""

    def __init__(self, root: Path, runner: asyncio.Runner) -> None:
        self.placement = Placement([NodeId(1)], GROUPS, 1)
        self.router = MemoryRouter(root, GROUPS)
        self.clock = Clock()
        self.svc = ChatService(self.router, self.placement.group_for, self.clock)
        self._runner = runner

    def call(self, rpc: Rpc[Req, Resp], req: Req, meta: Metadata = None) -> Resp:
        """Run one RPC to completion on the test's event loop."""
        return self._runner.run(rpc(req, meta))

    def fails(self, rpc: Rpc[Req, Resp], req: Req, meta: Metadata = None) -> ApiError:
        with pytest.raises(ApiError) as info:
            self.call(rpc, req, meta)
        return info.value

    def register(self, user: str, password: str = "correct horse", display: str = "") -> None:
        req = pb.RegisterRequest(user=user, password=password, display_name=display)
        self.call(self.svc.register, req)

    def login(self, user: str, password: str = "correct horse") -> Metadata:
        resp = self.call(self.svc.login, pb.LoginRequest(user=user, password=password))
        return (("authorization", f"Bearer {resp.token}"),)

    def user(self, name: str) -> Metadata:
        """Register ``name`` (display name: the name capitalised) and log in."""
        self.register(name, display=name.capitalize())
        return self.login(name)

    def send(
        self, meta: Metadata, text: str, key: str, *, to: str = "", conv: str = ""
    ) -> pb.SendResponse:
        if to:
            req = pb.SendRequest(to_user=to, text=text, idempotency_key=key)
        else:
            req = pb.SendRequest(conversation=conv, text=text, idempotency_key=key)
        return self.call(self.svc.send, req, meta)

    def history(self, meta: Metadata, conv: str, after: int | None = None) -> pb.HistoryResponse:
        req = pb.HistoryRequest(conversation=conv, after=after)
        return self.call(self.svc.history, req, meta)

    def state_of(self, key: str) -> ChatState:
        return self.router.states[self.placement.group_for(key)]


def _fast_hash(password: str) -> str:
    """An scrypt hash in the production format with tiny cost parameters (n=16), so the many
    registrations of these tests take microseconds; ``verify_password`` reads the parameters
    from the string and runs unchanged. One test keeps the real ``hash_password``."""
    salt = hashlib.sha256(password.encode()).digest()[:16]
    key = hashlib.scrypt(password.encode(), salt=salt, n=16, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    return f"scrypt$16$8$1${b64(salt).decode()}${b64(key).decode()}"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(service, "hash_password", _fast_hash)
    with asyncio.Runner() as runner:
        w = World(tmp_path, runner)
        try:
            yield w
        finally:
            w.router.close()


@pytest.fixture
def chat(world: World) -> tuple[World, Metadata, Metadata, Metadata]:
    """alice created #general, bob joined it, carol is registered but in nothing."""
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    world.call(world.svc.create_channel, pb.CreateChannelRequest(channel="general"), alice)
    world.call(world.svc.join_channel, pb.JoinChannelRequest(channel="general"), bob)
    return world, alice, bob, carol


def _code(err: ApiError, code: grpc.StatusCode, field: str) -> None:
    assert (err.code, err.field) == (code, field), err


# ---- the happy path ---------------------------------------------------------------------------


def test_register_login_create_send_and_read_history(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "hash_password", hash_password)  # the real cost, once
    world.register("alice", display="Alice A.")
    login = world.call(world.svc.login, pb.LoginRequest(user="alice", password="correct horse"))
    assert (login.user, login.display_name) == ("alice", "Alice A.")
    assert login.token.startswith("alice.") and len(login.token) == len("alice.") + 43
    alice: Metadata = (("authorization", f"Bearer {login.token}"),)
    bob = world.user("bob")

    created = world.call(
        world.svc.create_channel, pb.CreateChannelRequest(channel="general"), alice
    )
    assert created.channel == pb.ChannelInfo(
        name="general", creator="alice", created_ms=START_MS, member_count=1, joined=True
    )
    joined = world.call(world.svc.join_channel, pb.JoinChannelRequest(channel="general"), bob)
    assert (joined.channel, joined.already_member) == ("general", False)

    first = world.send(alice, "hello", "k1", conv="general")
    second = world.send(bob, "hi alice", "k1", conv="general")  # keys are per sender
    assert (first.conversation, first.seq, first.duplicate) == ("general", 1, False)
    assert (first.hlc_ms, first.hlc_counter) == (START_MS, 0)
    assert second.seq == 2 and (second.hlc_ms, second.hlc_counter) > (first.hlc_ms, 0)

    page = world.history(bob, "general")
    assert [(m.seq, m.sender, m.sender_display, m.text) for m in page.messages] == [
        (1, "alice", "Alice A.", "hello"),
        (2, "bob", "Bob", "hi alice"),
    ]
    # The idempotency key is shown only on the reader's own messages.
    assert [m.idempotency_key for m in page.messages] == ["", "k1"]
    assert page.reached_oldest and page.reached_newest
    assert world.history(alice, "general", after=1).messages[0].text == "hi alice"


def test_channels_are_listed_from_every_group(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, _bob, carol = chat
    for name in ("zeta", "alpha", "mid", "omega"):
        world.call(world.svc.create_channel, pb.CreateChannelRequest(channel=name), alice)
    names = ["alpha", "general", "mid", "omega", "zeta"]
    holders = {world.placement.group_for(conversation_key(n)) for n in names}
    assert len(holders) > 1  # the listing really spans groups
    listed = world.call(world.svc.list_channels, pb.ListChannelsRequest(), carol)
    assert [(c.name, c.joined) for c in listed.channels] == [(n, False) for n in names]
    general = world.call(world.svc.list_channels, pb.ListChannelsRequest(), alice).channels[1]
    assert (general.name, general.member_count, general.joined) == ("general", 2, True)
    mine = world.call(world.svc.list_channels, pb.ListChannelsRequest(joined_only=True), carol)
    assert list(mine.channels) == []


def test_join_and_leave_twice_are_not_errors(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, _alice, bob, _carol = chat
    again = world.call(world.svc.join_channel, pb.JoinChannelRequest(channel="general"), bob)
    assert again.already_member
    left = world.call(world.svc.leave_channel, pb.LeaveChannelRequest(channel="general"), bob)
    assert left.was_member
    left = world.call(world.svc.leave_channel, pb.LeaveChannelRequest(channel="general"), bob)
    assert not left.was_member
    err = world.fails(
        world.svc.send, pb.SendRequest(conversation="general", text="x", idempotency_key="k"), bob
    )
    _code(err, grpc.StatusCode.PERMISSION_DENIED, "conversation")


def test_state_lives_in_the_groups_its_keys_name(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, _bob, _carol = chat
    world.send(alice, "psst", "k1", to="bob")
    homes = {
        "user": world.placement.group_for(user_key("alice")),
        "channel": world.placement.group_for(conversation_key("general")),
        "dm": world.placement.group_for(conversation_key(DM)),
    }
    assert conversation_key(DM) == DM and conversation_key("general") == "channel:general"
    for group, state in world.router.states.items():
        assert (state.user("alice") is not None) == (group == homes["user"])
        assert (state.channel("general") is not None) == (group == homes["channel"])
        assert (state.last_seq(DM) == 1) == (group == homes["dm"])
    digest = token_digest(_token(alice))
    assert world.state_of(user_key("alice")).session_user(digest) == "alice"


def test_stamps_rise_even_when_the_clock_goes_back(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, bob, _carol = chat
    world.clock.ms = START_MS + 500
    a = world.send(alice, "one", "k1", conv="general")
    world.clock.ms = START_MS  # a new leader whose clock is behind
    b = world.send(bob, "two", "k2", conv="general")
    assert (a.hlc_ms, a.hlc_counter) == (START_MS + 500, 0)
    assert (b.hlc_ms, b.hlc_counter) == (START_MS + 500, 1)


# ---- direct messages --------------------------------------------------------------------------


def test_dm_is_visible_to_both_participants_and_no_one_else(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, bob, carol = chat
    sent = world.send(alice, "psst", "k1", to="bob")
    assert (sent.conversation, sent.seq) == (DM, 1)
    reply = world.send(bob, "yes?", "k1", conv=DM)
    assert reply.seq == 2
    for reader in (alice, bob):
        page = world.history(reader, DM)
        assert [(m.sender, m.text) for m in page.messages] == [("alice", "psst"), ("bob", "yes?")]
    cases: list[tuple[AnyRpc, Any]] = [
        (world.svc.history, pb.HistoryRequest(conversation=DM)),
        (world.svc.send, pb.SendRequest(conversation=DM, text="hi", idempotency_key="k")),
        (world.svc.mark_read, pb.MarkReadRequest(conversation=DM, seq=1)),
    ]
    for rpc, req in cases:
        _code(world.fails(rpc, req, carol), grpc.StatusCode.PERMISSION_DENIED, "conversation")
    # The first message owes each participant's group a follow-up; this service leaves them in
    # the DM group's outbox for the node's follow-up task.
    outbox = world.state_of(DM).outbox()
    assert sorted((f.user, f.peer) for f in outbox) == [("alice", "bob"), ("bob", "alice")]


def test_dm_to_an_unknown_user_is_not_found(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, _bob, _carol = chat
    before = world.router.dumps()
    err = world.fails(
        world.svc.send, pb.SendRequest(to_user="nobody", text="hi", idempotency_key="k"), alice
    )
    _code(err, grpc.StatusCode.NOT_FOUND, "to_user")
    err = world.fails(
        world.svc.send,
        pb.SendRequest(conversation="dm:alice:nobody", text="hi", idempotency_key="k"),
        alice,
    )
    _code(err, grpc.StatusCode.NOT_FOUND, "conversation")
    assert world.router.dumps() == before


# ---- identity -----------------------------------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_answer(world: World) -> None:
    world.register("alice")
    wrong = world.fails(world.svc.login, pb.LoginRequest(user="alice", password="wrong horse"))
    unknown = world.fails(world.svc.login, pb.LoginRequest(user="nobody", password="correct horse"))
    _code(wrong, grpc.StatusCode.UNAUTHENTICATED, "password")
    assert (wrong.code, wrong.field, wrong.message) == (
        unknown.code,
        unknown.field,
        unknown.message,
    )


def test_logout_makes_the_token_unusable(chat: tuple[World, Metadata, Metadata, Metadata]) -> None:
    world, alice, _bob, _carol = chat
    other_device = world.login("alice")
    world.call(world.svc.logout, pb.LogoutRequest(), alice)
    cases: list[tuple[AnyRpc, Any]] = [
        (world.svc.list_channels, pb.ListChannelsRequest()),
        (world.svc.send, pb.SendRequest(conversation="general", text="x", idempotency_key="k")),
        (world.svc.logout, pb.LogoutRequest()),
    ]
    for rpc, req in cases:
        err = world.fails(rpc, req, alice)
        _code(err, grpc.StatusCode.UNAUTHENTICATED, "authorization")
    # Only that session ended.
    assert world.send(other_device, "still here", "k1", conv="general").seq == 1


def _token(meta: Metadata) -> str:
    assert meta is not None
    ((_, value),) = tuple(meta)
    return str(value).removeprefix("Bearer ")


@pytest.mark.parametrize(
    "make",
    [
        lambda token: None,
        lambda token: (),
        lambda token: (("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")),
        lambda token: (("authorization", f"Basic {token}"),),
        lambda token: (("authorization", token),),
        lambda token: (("authorization", "Bearer alice.short"),),
        lambda token: (("authorization", "Bearer " + token.split(".")[1]),),  # no user part
        # Another user's name before alice's secret: looked up in bob's group, not found there.
        lambda token: (("authorization", "Bearer bob." + token.split(".")[1]),),
        lambda token: (("authorization", "Bearer nobody." + token.split(".")[1]),),
        lambda token: (("authorization", "Bearer alice." + "A" * 43),),
    ],
    ids=[
        "none",
        "empty",
        "twice",
        "basic",
        "no-scheme",
        "short",
        "no-user",
        "other-user",
        "unknown-user",
        "unknown-secret",
    ],
)
def test_bad_or_unknown_tokens_are_unauthenticated(
    chat: tuple[World, Metadata, Metadata, Metadata], make: Callable[[str], Metadata]
) -> None:
    world, alice, _bob, _carol = chat
    err = world.fails(world.svc.list_channels, pb.ListChannelsRequest(), make(_token(alice)))
    _code(err, grpc.StatusCode.UNAUTHENTICATED, "authorization")


# ---- exactly once, existence, membership --------------------------------------------------------


def test_the_same_idempotency_key_twice_makes_one_message(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, bob, _carol = chat
    first = world.send(alice, "once", "retry-me", conv="general")
    world.clock.ms += 1000  # the retry comes later, maybe via another node
    again = world.send(alice, "once", "retry-me", conv="general")
    assert (again.seq, again.hlc_ms, again.hlc_counter) == (
        first.seq,
        first.hlc_ms,
        first.hlc_counter,
    )
    assert (first.duplicate, again.duplicate) == (False, True)
    assert [m.text for m in world.history(bob, "general").messages] == ["once"]
    dm = world.send(alice, "dm once", "retry-me", to="bob")
    assert world.send(alice, "dm once", "retry-me", conv=DM) == pb.SendResponse(
        conversation=DM, seq=dm.seq, hlc_ms=dm.hlc_ms, hlc_counter=dm.hlc_counter, duplicate=True
    )
    assert len(world.history(bob, DM).messages) == 1


def test_an_unknown_channel_is_not_found(chat: tuple[World, Metadata, Metadata, Metadata]) -> None:
    world, alice, _bob, _carol = chat
    cases: list[tuple[AnyRpc, Any, str]] = [
        (world.svc.join_channel, pb.JoinChannelRequest(channel="nope"), "channel"),
        (world.svc.leave_channel, pb.LeaveChannelRequest(channel="nope"), "channel"),
        (
            world.svc.send,
            pb.SendRequest(conversation="nope", text="x", idempotency_key="k"),
            "conversation",
        ),
        (world.svc.history, pb.HistoryRequest(conversation="nope"), "conversation"),
        (world.svc.mark_read, pb.MarkReadRequest(conversation="nope", seq=1), "conversation"),
    ]
    for rpc, req, field in cases:
        _code(world.fails(rpc, req, alice), grpc.StatusCode.NOT_FOUND, field)


def test_a_non_member_is_permission_denied(
    chat: tuple[World, Metadata, Metadata, Metadata],
) -> None:
    world, alice, _bob, carol = chat
    world.send(alice, "members only", "k1", conv="general")
    before = world.router.dumps()
    cases: list[tuple[AnyRpc, Any]] = [
        (world.svc.send, pb.SendRequest(conversation="general", text="x", idempotency_key="k")),
        (world.svc.history, pb.HistoryRequest(conversation="general")),
        (world.svc.history, pb.HistoryRequest(conversation="general", stale_ok=True)),
        (world.svc.mark_read, pb.MarkReadRequest(conversation="general", seq=1)),
    ]
    for rpc, req in cases:
        _code(world.fails(rpc, req, carol), grpc.StatusCode.PERMISSION_DENIED, "conversation")
    assert world.router.dumps() == before


# ---- bad input: api.py's codes, nothing changes -----------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("rpc", "req", "code", "field"),
    [
        ("register", pb.RegisterRequest(user="Bad Name", password="long enough"), INVALID, "user"),
        ("register", pb.RegisterRequest(user="dave", password="short"), INVALID, "password"),
        (
            "register",
            pb.RegisterRequest(user="dave", password="long enough", display_name="\n"),
            INVALID,
            "display_name",
        ),
        (
            "register",
            pb.RegisterRequest(user="alice", password="long enough"),
            grpc.StatusCode.ALREADY_EXISTS,
            "user",
        ),
        ("login", pb.LoginRequest(user="Alice", password="correct horse"), INVALID, "user"),
        ("login", pb.LoginRequest(user="alice", password=""), INVALID, "password"),
        ("create_channel", pb.CreateChannelRequest(channel="Général"), INVALID, "channel"),
        (
            "create_channel",
            pb.CreateChannelRequest(channel="general"),
            grpc.StatusCode.ALREADY_EXISTS,
            "channel",
        ),
        ("join_channel", pb.JoinChannelRequest(channel=""), INVALID, "channel"),
        ("leave_channel", pb.LeaveChannelRequest(channel="a" * 33), INVALID, "channel"),
        ("send", pb.SendRequest(text="x", idempotency_key="k"), INVALID, "conversation"),
        (
            "send",
            pb.SendRequest(conversation="general", text=" \n", idempotency_key="k"),
            INVALID,
            "text",
        ),
        (
            "send",
            pb.SendRequest(conversation="general", text="é" * 2049, idempotency_key="k"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "text",
        ),
        (
            "send",
            pb.SendRequest(conversation="general", text="x", idempotency_key="a key"),
            INVALID,
            "idempotency_key",
        ),
        (
            "send",
            pb.SendRequest(conversation="general", text="x", idempotency_key=""),
            INVALID,
            "idempotency_key",
        ),
        (
            "send",
            pb.SendRequest(to_user="alice", text="x", idempotency_key="k"),
            INVALID,
            "to_user",
        ),
        (
            "send",
            pb.SendRequest(conversation="dm:bob:alice", text="x", idempotency_key="k"),
            INVALID,
            "conversation",
        ),
        (
            "send",
            pb.SendRequest(conversation="dm:bob:carol", text="x", idempotency_key="k"),
            grpc.StatusCode.PERMISSION_DENIED,
            "conversation",
        ),
        ("history", pb.HistoryRequest(conversation="general", limit=10_000), INVALID, "limit"),
        ("history", pb.HistoryRequest(conversation="general", before=0), INVALID, "before"),
        ("history", pb.HistoryRequest(conversation="general", after=-1), INVALID, "after"),
        ("mark_read", pb.MarkReadRequest(conversation="general", seq=0), INVALID, "seq"),
        (
            "mark_read",
            pb.MarkReadRequest(conversation="general", seq=99),
            grpc.StatusCode.FAILED_PRECONDITION,
            "seq",
        ),
    ],
)
def test_bad_input_is_refused_with_the_api_code_and_changes_nothing(
    chat: tuple[World, Metadata, Metadata, Metadata],
    rpc: str,
    req: object,
    code: grpc.StatusCode,
    field: str,
) -> None:
    world, alice, _bob, _carol = chat
    world.clock.ms += 1  # a later call: not the replay of alice's own CreateChannel("general")
    before = world.router.dumps()
    err = world.fails(getattr(world.svc, rpc), req, alice)
    _code(err, code, field)
    assert world.router.dumps() == before


# ---- read markers -------------------------------------------------------------------------------


def test_unread_counts_follow_mark_read(chat: tuple[World, Metadata, Metadata, Metadata]) -> None:
    world, alice, bob, carol = chat
    for i in range(3):
        world.send(alice, f"m{i}", f"c{i}", conv="general")
    for i in range(2):
        world.send(alice, f"d{i}", f"d{i}", to="bob")

    def counts(meta: Metadata) -> list[tuple[str, str, int, int, int]]:
        resp = world.call(world.svc.unread_counts, pb.UnreadCountsRequest(), meta)
        return [
            (c.conversation, c.peer, c.last_seq, c.read_seq, c.unread) for c in resp.conversations
        ]

    assert counts(bob) == [(DM, "alice", 2, 0, 2), ("general", "", 3, 0, 3)]
    assert counts(carol) == []
    marked = world.call(world.svc.mark_read, pb.MarkReadRequest(conversation="general", seq=2), bob)
    assert (marked.conversation, marked.read_seq, marked.unread) == ("general", 2, 1)
    back = world.call(world.svc.mark_read, pb.MarkReadRequest(conversation="general", seq=1), bob)
    assert (back.read_seq, back.unread) == (2, 1)  # markers never move back
    world.call(world.svc.mark_read, pb.MarkReadRequest(conversation=DM, seq=2), bob)
    assert counts(bob) == [(DM, "alice", 2, 2, 0), ("general", "", 3, 2, 1)]
