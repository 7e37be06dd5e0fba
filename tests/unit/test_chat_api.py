"""The public chat API's edge (shards/chat/api.py): validation, conversion, error mapping,
passwords and tokens. Pure functions: no server, no sockets."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cluster.messages import Entry
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc
from shards.chat import api, auth
from shards.chat.commands import (
    Code,
    CreateChannel,
    Hlc,
    JoinChannel,
    Joined,
    LeaveChannel,
    MarkRead,
    Posted,
    PostMessage,
    RegisterUser,
    Rejected,
    encode_command,
)
from shards.chat.schema import ChannelInfo, ConversationRef, HistoryPage, Message, SyncPage
from shards.chat.state import ChatState

ME = "alice"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def _send(**kw: object) -> pb.SendRequest:
    fields: dict[str, object] = {"conversation": "general", "text": "hi", "idempotency_key": "k1"}
    fields.update(kw)
    if "to_user" in kw:
        del fields["conversation"]
    return pb.SendRequest(**fields)  # type: ignore[arg-type]


def _register(**kw: str) -> object:
    return api.parse_register(pb.RegisterRequest(**kw))


def _history(**kw: object) -> object:
    return api.history_query(pb.HistoryRequest(**kw), ME)  # type: ignore[arg-type]


def _sync(cursors: dict[str, int], limit: int = 0) -> object:
    return api.sync_query(pb.SyncRequest(cursors=cursors, limit=limit), ME)


def _mark(conversation: str = "", seq: int = 0) -> object:
    return api.mark_read_command(pb.MarkReadRequest(conversation=conversation, seq=seq), ME)


def _frame(first: bool = True, **kw: object) -> object:
    return api.parse_client_frame(pb.ClientFrame(**kw), ME, first=first)  # type: ignore[arg-type]


def _auth(value: str) -> object:
    return auth.bearer_token([("authorization", value)])[1]


@dataclass(frozen=True)
class Bad:
    """One bad request: how to parse it, the expected status and field."""

    name: str
    parse: Callable[[], object]
    code: grpc.StatusCode
    field: str


PW = "x" * 8
MANY_SENDS = [_send(idempotency_key=f"k{i}") for i in range(257)]
# fmt: off
BAD_INPUTS = [
    # names, credentials
    Bad("register bad user", lambda: _register(user="Al!", password=PW), INVALID, "user"),
    Bad("register long user", lambda: _register(user="a" * 33, password=PW), INVALID, "user"),
    Bad("register empty user", lambda: _register(password=PW), INVALID, "user"),
    Bad("register short password", lambda: _register(user="bob", password="short"), INVALID, "password"),  # noqa: E501
    Bad("register control char in display name", lambda: _register(user="bob", display_name="a\nb", password=PW), INVALID, "display_name"),  # noqa: E501
    Bad("login bad user", lambda: api.parse_login(pb.LoginRequest(user="BOB", password=PW)), INVALID, "user"),  # noqa: E501
    Bad("login empty password", lambda: api.parse_login(pb.LoginRequest(user="bob")), INVALID, "password"),  # noqa: E501
    Bad("create bad channel", lambda: api.create_channel_command(pb.CreateChannelRequest(channel="Gen eral"), ME, 1), INVALID, "channel"),  # noqa: E501
    Bad("join empty channel", lambda: api.join_command(pb.JoinChannelRequest(), ME, 1), INVALID, "channel"),  # noqa: E501
    Bad("leave a dm id", lambda: api.leave_command(pb.LeaveChannelRequest(channel="dm:alice:bob"), ME, 1), INVALID, "channel"),  # noqa: E501
    Bad("who bad channel", lambda: api.who_channel(pb.WhoRequest(channel="#x")), INVALID, "channel"),  # noqa: E501
    # sends
    Bad("send without target", lambda: api.parse_send(pb.SendRequest(text="hi", idempotency_key="k"), ME), INVALID, "conversation"),  # noqa: E501
    Bad("send bad channel", lambda: api.parse_send(_send(conversation="Général"), ME), INVALID, "conversation"),  # noqa: E501
    Bad("send unsorted dm id", lambda: api.parse_send(_send(conversation="dm:bob:alice"), ME), INVALID, "conversation"),  # noqa: E501
    Bad("send to others' dm", lambda: api.parse_send(_send(conversation="dm:bob:carol"), ME), DENIED, "conversation"),  # noqa: E501
    Bad("send bad to_user", lambda: api.parse_send(_send(to_user="Bob"), ME), INVALID, "to_user"),
    Bad("dm to oneself", lambda: api.parse_send(_send(to_user=ME), ME), INVALID, "to_user"),
    Bad("empty text", lambda: api.parse_send(_send(text=""), ME), INVALID, "text"),
    Bad("blank text", lambda: api.parse_send(_send(text=" \n\t"), ME), INVALID, "text"),
    Bad("oversize text", lambda: api.parse_send(_send(text="x" * 4097), ME), TOO_BIG, "text"),
    Bad("oversize utf-8", lambda: api.parse_send(_send(text="é" * 2049), ME), TOO_BIG, "text"),
    Bad("empty key", lambda: api.parse_send(_send(idempotency_key=""), ME), INVALID, "idempotency_key"),  # noqa: E501
    Bad("key with space", lambda: api.parse_send(_send(idempotency_key="a b"), ME), INVALID, "idempotency_key"),  # noqa: E501
    Bad("long key", lambda: api.parse_send(_send(idempotency_key="k" * 65), ME), INVALID, "idempotency_key"),  # noqa: E501
    Bad("non-ascii key", lambda: api.parse_send(_send(idempotency_key="ключ"), ME), INVALID, "idempotency_key"),  # noqa: E501
    # history
    Bad("history limit 10000", lambda: _history(conversation="g", limit=10_000), INVALID, "limit"),
    Bad("history limit 501", lambda: _history(conversation="g", limit=501), INVALID, "limit"),
    Bad("history negative before", lambda: _history(conversation="g", before=-1), INVALID, "before"),  # noqa: E501
    Bad("history before 0", lambda: _history(conversation="g", before=0), INVALID, "before"),
    Bad("history negative after", lambda: _history(conversation="g", after=-5), INVALID, "after"),
    Bad("history around 0", lambda: _history(conversation="g", around=0), INVALID, "around"),
    Bad("history absent conversation", lambda: _history(), INVALID, "conversation"),
    Bad("history of others' dm", lambda: _history(conversation="dm:bob:carol"), DENIED, "conversation"),  # noqa: E501
    # sync cursors
    Bad("negative cursor", lambda: _sync({"g": -1}), INVALID, "cursors[g]"),
    Bad("absent cursor conversation", lambda: _sync({"": 3}), INVALID, "cursors[]"),
    Bad("malformed cursor conversation", lambda: _sync({"dm:x": 3}), INVALID, "cursors[dm:x]"),
    Bad("cursor of others' dm", lambda: _sync({"dm:bob:carol": 0}), DENIED, "cursors[dm:bob:carol]"),  # noqa: E501
    Bad("too many cursors", lambda: _sync({f"c{i}": 0 for i in range(1001)}), TOO_BIG, "cursors"),
    Bad("sync limit 10000", lambda: _sync({}, limit=10_000), INVALID, "limit"),
    # mark read
    Bad("mark read absent seq", lambda: _mark("g"), INVALID, "seq"),
    Bad("mark read negative seq", lambda: _mark("g", -3), INVALID, "seq"),
    Bad("mark read absent conversation", lambda: _mark(seq=1), INVALID, "conversation"),
    # session frames: frame-level problems end the stream
    Bad("frame of 257 sends", lambda: _frame(sends=MANY_SENDS), TOO_BIG, "sends"),
    Bad("resume on a later frame", lambda: _frame(False, resume=pb.Resume()), INVALID, "resume"),
    Bad("malformed resume cursor", lambda: _frame(resume=pb.Resume(cursors={"g": -2})), INVALID, "resume.cursors[g]"),  # noqa: E501
    # authorization metadata
    Bad("no token", lambda: auth.bearer_token([("x-other", "1")]), UNAUTH, "authorization"),
    Bad("basic auth", lambda: _auth("Basic " + "a" * 43), UNAUTH, "authorization"),
    Bad("short token", lambda: _auth("Bearer me.abc"), UNAUTH, "authorization"),
    Bad("token without a user", lambda: _auth("Bearer " + "a" * 43), UNAUTH, "authorization"),
    Bad("token with a bad user", lambda: _auth("Bearer Me." + "a" * 43), UNAUTH, "authorization"),
    Bad("token with spaces", lambda: _auth("Bearer " + "a " * 30), UNAUTH, "authorization"),
]
# fmt: on


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input_names_status_and_field(bad: Bad) -> None:
    with pytest.raises(api.ApiError) as caught:
        bad.parse()
    err = caught.value
    assert (err.code, err.field) == (bad.code, bad.field), err
    assert err.details.startswith(f"{bad.field}: ")
    assert ("x-field", bad.field) in err.trailing_metadata()


# ---- good requests ------------------------------------------------------------------------------


def test_register_round_trip_and_default_display_name() -> None:
    reg = api.parse_register(pb.RegisterRequest(user="bob", password="correct horse"))
    assert reg == api.Registration("bob", "bob", "correct horse")
    assert reg.command("scrypt$h", 7) == RegisterUser("bob", "bob", "scrypt$h", 7)
    named = api.parse_register(
        pb.RegisterRequest(user="bob", display_name="Bob B.", password="correct horse")
    )
    assert named.display_name == "Bob B."


def test_channel_commands_carry_the_authenticated_user() -> None:
    assert api.create_channel_command(pb.CreateChannelRequest(channel="general"), ME, 5) == (
        CreateChannel("general", ME, 5)
    )
    assert api.join_command(pb.JoinChannelRequest(channel="a-b_1"), ME, 6) == (
        JoinChannel("a-b_1", ME, 6)
    )
    assert api.leave_command(pb.LeaveChannelRequest(channel="x"), ME, 7) == (
        LeaveChannel("x", ME, 7)
    )
    assert api.who_channel(pb.WhoRequest()) is None
    assert api.who_channel(pb.WhoRequest(channel="x")) == "x"


def test_send_to_channel_and_dm_round_trip() -> None:
    hlc = Hlc(1_700_000_000_000, 3)
    text = "é" * 2048  # exactly 4096 bytes
    intent = api.parse_send(_send(text=text), ME)
    assert intent.command(hlc) == PostMessage("general", ME, "k1", text, hlc.ms, hlc.counter)
    dm = api.parse_send(_send(to_user="bob"), "zed")
    assert dm.conversation == "dm:bob:zed"
    assert dm.target_field == "to_user"
    by_id = api.parse_send(_send(conversation="dm:alice:bob"), ME)
    assert by_id.command(hlc).conversation == "dm:alice:bob"


def test_history_and_sync_queries() -> None:
    q = api.history_query(pb.HistoryRequest(conversation="dm:alice:bob", after=0), ME)
    assert q == api.HistoryQuery("dm:alice:bob", None, 0, None, api.DEFAULT_HISTORY_LIMIT, False)
    q = api.history_query(
        pb.HistoryRequest(conversation="g", around=9, limit=500, stale_ok=True), ME
    )
    assert (q.around, q.limit, q.stale_ok, q.before, q.after) == (9, 500, True, None, None)
    s = api.sync_query(pb.SyncRequest(cursors={"b": 2, "a": 0, "dm:alice:bob": 7}), ME)
    assert s == api.SyncQuery((("a", 0), ("b", 2), ("dm:alice:bob", 7)), 500)
    assert api.mark_read_command(pb.MarkReadRequest(conversation="g", seq=4), ME) == (
        MarkRead(ME, "g", 4)
    )


def test_queries_run_against_the_state(tmp_path: Path) -> None:
    state = ChatState(tmp_path / "chat.db")
    try:
        cmds = [CreateChannel("general", ME, 1)] + [
            api.parse_send(_send(idempotency_key=f"k{i}", text=f"m{i}"), ME).command(Hlc(10, i))
            for i in range(5)
        ]
        state.apply(
            [Entry(term=1, index=i + 1, data=encode_command(c)) for i, c in enumerate(cmds)]
        )
        page = api.history_query(pb.HistoryRequest(conversation="general", before=4), ME).run(state)
        assert [m.seq for m in page.messages] == [1, 2, 3]
        sync = api.sync_query(pb.SyncRequest(cursors={"general": 3}), ME).run(state)
        assert [m.text for m in sync.messages] == ["m3", "m4"]
    finally:
        state.close()


def test_client_frame_coalesces_sends_and_isolates_bad_ones() -> None:
    frame = pb.ClientFrame(
        sends=[
            _send(idempotency_key="a"),
            _send(idempotency_key="b", text=""),
            _send(idempotency_key="a", text="again"),
            _send(idempotency_key="c", to_user="bob"),
        ],
        resume=pb.Resume(cursors={"general": 10}),
        mark_reads=[pb.MarkReadRequest(conversation="general", seq=3), pb.MarkReadRequest()],
        heartbeat=42,
    )
    parsed = api.parse_client_frame(frame, ME, first=True)
    assert parsed.resume == (("general", 10),)
    assert parsed.heartbeat == 42
    good, empty, repeated, dm = parsed.sends
    assert isinstance(good, api.SendIntent) and good.idempotency_key == "a"
    assert isinstance(empty, api.RejectedSend)
    assert (empty.idempotency_key, empty.error.field) == ("b", "sends[1].text")
    assert isinstance(repeated, api.RejectedSend)
    assert repeated.error.field == "sends[2].idempotency_key"
    assert isinstance(dm, api.SendIntent) and dm.conversation == "dm:alice:bob"
    mark, bad_mark = parsed.mark_reads
    assert mark == MarkRead(ME, "general", 3)
    assert isinstance(bad_mark, api.ApiError)
    assert bad_mark.field == "mark_reads[1].conversation"
    failure = bad_mark.to_failure()
    assert failure.code == INVALID.value[0] and failure.field == "mark_reads[1].conversation"
    assert api.parse_client_frame(pb.ClientFrame(), ME, first=False).resume is None


# ---- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(Code), ids=[c.name for c in Code])
def test_every_rejection_code_maps_to_its_status(code: Code) -> None:
    err = api.rejection_error(Rejected(code, "channel", "why"), JoinChannel)
    assert (err.code, err.field, err.message) == (grpc.StatusCode[code.name], "channel", "why")
    with pytest.raises(api.ApiError) as caught:
        api.expect(Rejected(code, "channel", "why"), JoinChannel("x", ME, 1), Joined)
    assert caught.value.code == grpc.StatusCode[code.name]


def test_rejection_fields_are_renamed_to_request_fields() -> None:
    not_member = Rejected(Code.PERMISSION_DENIED, "sender", "not a member")
    assert api.rejection_error(not_member, PostMessage).field == "conversation"
    intent = api.parse_send(_send(to_user="bob"), ME, prefix="sends[4].")
    assert intent.rejection(Rejected(Code.NOT_FOUND, "conversation", "x")).field == (
        "sends[4].to_user"
    )
    assert api.rejection_error(Rejected(Code.PERMISSION_DENIED, "user", "no"), MarkRead).field == (
        "conversation"
    )
    assert api.rejection_error(
        Rejected(Code.ALREADY_EXISTS, "user", "taken"), RegisterUser
    ).code == (grpc.StatusCode.ALREADY_EXISTS)
    # A syntax refusal of a field the server filled in is the server's bug.
    bug = api.rejection_error(Rejected(Code.INVALID_ARGUMENT, "hlc_ms", "bad"), PostMessage)
    assert bug.code == grpc.StatusCode.INTERNAL
    with pytest.raises(api.ApiError) as caught:
        api.expect(None, JoinChannel("x", ME, 1), Joined)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert api.expect(Joined("x", ME, False), JoinChannel("x", ME, 1), Joined).channel == "x"


def test_results_to_proto() -> None:
    posted = Posted("general", 7, Hlc(100, 2), duplicate=True)
    assert api.posted_to_proto(posted) == pb.SendResponse(
        conversation="general", seq=7, hlc_ms=100, hlc_counter=2, duplicate=True
    )
    ok = api.send_result("k", posted)
    assert ok.WhichOneof("outcome") == "sent" and ok.sent.seq == 7
    err = api.send_result("k", api.ApiError(TOO_BIG, "sends[0].text", "big", retry_after_ms=5))
    assert err.WhichOneof("outcome") == "error"
    assert (err.error.code, err.error.retry_after_ms) == (TOO_BIG.value[0], 5)

    mine = Message("general", 1, ME, "hi", Hlc(100, 0), "key-1")
    theirs = Message("general", 2, "bob", "yo", Hlc(100, 1), "key-2")
    page = api.history_to_proto(HistoryPage([mine, theirs], True, False), ME, {"bob": "Bob"})
    assert [m.idempotency_key for m in page.messages] == ["key-1", ""]
    assert [m.sender_display for m in page.messages] == ["", "Bob"]
    assert (page.reached_oldest, page.reached_newest) == (True, False)
    sync = api.sync_to_proto(
        SyncPage([theirs], {"general": 2}, True), ME, gaps=[api.Gap("general", 3, 900)]
    )
    assert dict(sync.cursors) == {"general": 2} and sync.limited
    assert sync.gaps[0] == pb.Gap(conversation="general", first_seq=3, last_seq=900)

    infos = [ChannelInfo("b", ME, 1, 3, 9), ChannelInfo("a", "bob", 2, 1, 0)]
    listed = api.channels_to_proto(infos, joined=["b"])
    assert [(c.name, c.joined, c.member_count) for c in listed.channels] == [
        ("a", False, 1),
        ("b", True, 3),
    ]
    unread = api.unread_to_proto(
        [ConversationRef("general", None, 9, 4), ConversationRef("dm:a:b", "b", None, 0)]
    )
    assert [(c.conversation, c.peer, c.unread) for c in unread.conversations] == [
        ("dm:a:b", "b", 0),
        ("general", "", 5),
    ]


# ---- passwords and tokens -----------------------------------------------------------------------


def test_password_hash_and_verify() -> None:
    encoded = auth.hash_password("correct horse")
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32
    assert auth.verify_password("correct horse", encoded)
    assert not auth.verify_password("correct horsE", encoded)
    assert not auth.verify_password("correct horse", None)  # unknown user: still False
    assert auth.hash_password("correct horse") != encoded  # a fresh salt every time


def test_tampered_hash_strings_never_verify() -> None:
    salt = bytes(range(16))
    encoded = auth.hash_password("pw-pw-pw-pw", salt=salt)
    scheme, n, r, p, salt_b64, key_b64 = encoded.split("$")
    key = bytearray(base64.b64decode(key_b64))
    key[0] ^= 1
    flipped = base64.b64encode(bytes(key)).decode()
    tampered = [
        f"{scheme}${n}${r}${p}${salt_b64}${flipped}",  # key bit flipped
        f"{scheme}${n}${r}${p}${base64.b64encode(bytes(16)).decode()}${key_b64}",  # other salt
        f"{scheme}$8192${r}${p}${salt_b64}${key_b64}",  # other cost
        f"{scheme}${2**30}${r}${p}${salt_b64}${key_b64}",  # would need 128 GiB
        f"{scheme}$1000${r}${p}${salt_b64}${key_b64}",  # n not a power of two
        f"bcrypt${n}${r}${p}${salt_b64}${key_b64}",
        f"{scheme}${n}${r}${p}${salt_b64}",
        f"{scheme}${n}${r}${p}$!!${key_b64}",
        "",
    ]
    assert auth.verify_password("pw-pw-pw-pw", encoded)
    for bad in tampered:
        assert not auth.verify_password("pw-pw-pw-pw", bad), bad


def test_session_tokens_and_digests() -> None:
    token = auth.new_session_token("alice")
    assert token.startswith("alice.") and len(token) == len("alice.") + 43
    assert token != auth.new_session_token("alice")
    digest = auth.token_digest(token)
    assert len(digest) == 64 and token not in digest
    assert auth.bearer_token([("authorization", f"Bearer {token}")]) == ("alice", token)
    assert auth.bearer_token([("Authorization", f"bearer {token}".encode())]) == ("alice", token)
    with pytest.raises(api.ApiError):
        auth.bearer_token([("authorization", f"Bearer {token}")] * 2)
    failed = auth.login_failed()
    assert failed.code == grpc.StatusCode.UNAUTHENTICATED


# ---- the generated code ------------------------------------------------------------------------


def test_generated_chat_proto_has_the_session_stream() -> None:
    frame = pb.ClientFrame(sends=[_send(idempotency_key=f"k{i}") for i in range(3)])
    again = pb.ClientFrame.FromString(frame.SerializeToString())
    assert [s.idempotency_key for s in again.sends] == ["k0", "k1", "k2"]
    assert pb.ClientFrame.DESCRIPTOR.fields_by_name["sends"].is_repeated
    server = pb.ServerFrame.DESCRIPTOR.fields_by_name
    assert server["results"].is_repeated and server["messages"].is_repeated
    session = pb.DESCRIPTOR.services_by_name["Chat"].methods_by_name["Session"]
    assert session.client_streaming and session.server_streaming
    assert hasattr(chat_pb2_grpc, "ChatStub") and hasattr(chat_pb2_grpc, "ChatServicer")
