"""The edge of the public chat API (``proto/chat.proto``): request validation, conversion to the
state machine's commands and queries, results back to protobuf, passwords and session tokens.

Pure functions, no server: the servicer stays thin (convert, validate, hand off) and every rule
of the wire format is testable here without a socket. Each parser takes the *authenticated* user
from the caller (the session), never from the request (guarantee 8), and raises :class:`ApiError`
naming the offending request field. The state machine's own :func:`~shards.chat.validate` runs
again on apply; checking here first refuses bad input without a round through Raft.

Status codes (DESIGN.md section 5), one rule:

- ``INVALID_ARGUMENT`` — a field is malformed or outside its documented range: a bad name, empty
  or whitespace-only text, a bad idempotency key, a negative or absent seq, a history limit over
  500 (10,000 is refused, not clamped: a client asking for that much has a bug), a DM to oneself,
  a short password.
- ``RESOURCE_EXHAUSTED`` — well-formed content that exceeds a size limit: text over 4096 bytes,
  more sends or mark-reads in one frame, or more cursors, than a request may carry. The request
  is fine in shape; the same data in smaller pieces would be accepted. (Also the send rate, which
  the service enforces.)
- ``PERMISSION_DENIED`` — a DM id the caller is not part of (decidable from the id alone).

State-dependent answers (NOT_FOUND, ALREADY_EXISTS, membership) come from the state machine as
``Rejected(code, field, reason)``; :func:`rejection_error` maps them, with the command's field
renamed to the request field the client sent.

Passwords and tokens live in :mod:`shards.chat.auth`. Passwords are scrypt hashes (n=2**14, r=8,
p=1, 16-byte random salt, 32-byte key), stored as the self-describing
``scrypt$n$r$p$salt_b64$hash_b64`` so parameters can be raised later without breaking old accounts.
Session tokens are 256 random bits; the server stores only their SHA-256 (``auth.token_digest``):
session records live in replicated state, which is copied to every replica, into snapshots and to
analytics jobs, so a leaked copy must not hand out live sessions. A plain fast hash is enough for
that (unlike passwords): nobody can brute-force 256 random bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc

from proto import chat_pb2 as pb
from shards.chat.commands import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_DISPLAY_NAME,
    MAX_INT,
    MAX_TEXT_BYTES,
    Code,
    Command,
    CreateChannel,
    Hlc,
    JoinChannel,
    Joined,
    LeaveChannel,
    Left,
    MarkRead,
    Posted,
    PostMessage,
    ReadMarked,
    RegisterUser,
    Rejected,
    UserRegistered,
    dm_id,
    is_name,
    parse_dm,
    validate,
)
from shards.chat.schema import (
    ChannelInfo,
    ConversationRef,
    HistoryPage,
    Message,
    Route,
    SyncPage,
)
from shards.chat.state import MAX_PAGE, ChatState

DEFAULT_HISTORY_LIMIT: Final = 50
"""A HistoryRequest with ``limit`` 0 (proto3's "unset") gets this many messages."""
MAX_SENDS_PER_FRAME: Final = 256
MAX_MARK_READS_PER_FRAME: Final = 256
MAX_CURSORS: Final = 1000
MIN_PASSWORD_BYTES: Final = 8
MAX_PASSWORD_BYTES: Final = 1024
"""Bounds the scrypt input; far above any real passphrase."""

R = TypeVar("R")


# ---------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A refused request: the gRPC status, the request field at fault (``sends[2].text``), and
    why. The servicer aborts with ``code`` and :attr:`details`, plus :meth:`trailing_metadata`;
    on the session stream a per-item failure becomes a ``Failure`` (:meth:`to_failure`)."""

    def __init__(
        self, code: grpc.StatusCode, field: str, message: str, *, retry_after_ms: int = 0
    ) -> None:
        super().__init__(code, field, message)
        self.code = code
        self.field = field
        self.message = message
        self.retry_after_ms = retry_after_ms

    @property
    def details(self) -> str:
        return f"{self.field}: {self.message}"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        meta = [("x-field", self.field)]
        if self.retry_after_ms:
            meta.append(("x-retry-after-ms", str(self.retry_after_ms)))
        return tuple(meta)

    def to_failure(self) -> pb.Failure:
        return pb.Failure(
            code=int(self.code.value[0]),
            field=self.field,
            message=self.message,
            retry_after_ms=self.retry_after_ms,
        )

    def __repr__(self) -> str:
        return f"ApiError({self.code.name}, {self.field!r}, {self.message!r})"


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, field, message)


def _too_big(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, field, message)


def _check_name(field: str, value: str) -> str:
    if not is_name(value):
        raise _invalid(field, f"{value[:40]!r} is not a name ([a-z0-9_-]{{1,32}})")
    return value


def _check_text(field: str, text: str) -> str:
    if not text.strip():
        raise _invalid(field, "must not be empty")
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise _too_big(field, f"{size} bytes of UTF-8, at most {MAX_TEXT_BYTES} allowed")
    return text


def _check_seq(field: str, value: int, low: int) -> int:
    if not low <= value <= MAX_INT:
        raise _invalid(field, f"must be a sequence number >= {low}, got {value}")
    return value


def _check_conversation(field: str, value: str, user: str) -> str:
    """A channel name, or a DM id ``user`` is part of (PERMISSION_DENIED for others' DMs)."""
    if is_name(value):
        return value
    pair = parse_dm(value)
    if pair is None:
        raise _invalid(
            field, f"{value[:80]!r} is neither a channel name nor a DM id dm:<a>:<b> (a < b)"
        )
    if user not in pair:
        raise ApiError(grpc.StatusCode.PERMISSION_DENIED, field, f"{user!r} is not in {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Requests -> commands and queries.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """A valid RegisterRequest. The password is hashed (slow) only after it passed."""

    user: str
    display_name: str
    password: str

    def command(self, password_hash: str, created_ms: int) -> RegisterUser:
        return RegisterUser(self.user, self.display_name, password_hash, created_ms)


def parse_register(req: pb.RegisterRequest) -> Registration:
    user = _check_name("user", req.user)
    display = req.display_name or user
    if not (len(display) <= MAX_DISPLAY_NAME and display.isprintable()):
        raise _invalid("display_name", f"must be 1..{MAX_DISPLAY_NAME} printable characters")
    return Registration(user, display, _check_password(req.password))


def _check_password(password: str) -> str:
    size = len(password.encode("utf-8"))
    if not MIN_PASSWORD_BYTES <= size <= MAX_PASSWORD_BYTES:
        raise _invalid(
            "password", f"must be {MIN_PASSWORD_BYTES}..{MAX_PASSWORD_BYTES} bytes, got {size}"
        )
    return password


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str


def parse_login(req: pb.LoginRequest) -> Credentials:
    """Only the shape: a malformed name is a client bug (INVALID_ARGUMENT; name syntax is no
    secret). The password is not held to the registration minimum, so a rule change never locks
    anyone out; whether it matches is :func:`verify_password`'s answer."""
    user = _check_name("user", req.user)
    if not req.password or len(req.password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise _invalid("password", f"must be 1..{MAX_PASSWORD_BYTES} bytes")
    return Credentials(user, req.password)


def create_channel_command(req: pb.CreateChannelRequest, user: str, ms: int) -> CreateChannel:
    return CreateChannel(_check_name("channel", req.channel), user, ms)


def join_command(req: pb.JoinChannelRequest, user: str, ms: int) -> JoinChannel:
    return JoinChannel(_check_name("channel", req.channel), user, ms)


def leave_command(req: pb.LeaveChannelRequest, user: str, ms: int) -> LeaveChannel:
    return LeaveChannel(_check_name("channel", req.channel), user, ms)


def who_channel(req: pb.WhoRequest) -> str | None:
    """The channel to list online members of; None for everyone."""
    return _check_name("channel", req.channel) if req.channel else None


@dataclass(frozen=True, slots=True)
class SendIntent:
    """A valid send, before the owning group's leader stamps it. ``prefix`` and
    ``target_field`` remember where it came from (``sends[3].`` / ``to_user``) so the state
    machine's answer can name the field the client actually sent."""

    conversation: str
    sender: str
    text: str
    idempotency_key: str
    target_field: str = "conversation"
    prefix: str = ""

    def command(self, hlc: Hlc) -> PostMessage:
        """The PostMessage to propose, stamped with the leader's clock ``hlc``."""
        cmd = PostMessage(
            self.conversation, self.sender, self.idempotency_key, self.text, hlc.ms, hlc.counter
        )
        bad = validate(cmd)
        if bad is not None:
            raise self.rejection(bad)
        return cmd

    def rejection(self, rejected: Rejected) -> ApiError:
        """The state machine's refusal of this send, as the client should see it."""
        return rejection_error(rejected, PostMessage, self.prefix, self.target_field)


def parse_send(req: pb.SendRequest, sender: str, prefix: str = "") -> SendIntent:
    """Validate a send by ``sender``; ``prefix`` (``sends[3].``) is put before field names."""
    target = req.WhichOneof("target")
    if target == "to_user":
        peer = _check_name(prefix + "to_user", req.to_user)
        if peer == sender:
            raise _invalid(prefix + "to_user", "cannot send a direct message to oneself")
        conversation = dm_id(sender, peer)
    elif target == "conversation":
        conversation = _check_conversation(prefix + "conversation", req.conversation, sender)
    else:
        raise _invalid(prefix + "conversation", "one of conversation or to_user is required")
    text = _check_text(prefix + "text", req.text)
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(req.idempotency_key):
        raise _invalid(
            prefix + "idempotency_key", "must be 1..64 printable ASCII characters, no space"
        )
    return SendIntent(conversation, sender, text, req.idempotency_key, target, prefix)


def mark_read_command(req: pb.MarkReadRequest, user: str, prefix: str = "") -> MarkRead:
    conversation = _check_conversation(prefix + "conversation", req.conversation, user)
    return MarkRead(user, conversation, _check_seq(prefix + "seq", req.seq, 1))


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A valid HistoryRequest: at most one of ``before`` / ``after`` / ``around``."""

    conversation: str
    before: int | None
    after: int | None
    around: int | None
    limit: int
    stale_ok: bool

    def run(self, state: ChatState) -> HistoryPage:
        return state.history(
            self.conversation,
            before=self.before,
            after=self.after,
            around=self.around,
            limit=self.limit,
        )


def history_query(req: pb.HistoryRequest, user: str) -> HistoryQuery:
    conversation = _check_conversation("conversation", req.conversation, user)
    anchor = req.WhichOneof("anchor")
    before = _check_seq("before", req.before, 1) if anchor == "before" else None
    after = _check_seq("after", req.after, 0) if anchor == "after" else None
    around = _check_seq("around", req.around, 1) if anchor == "around" else None
    return HistoryQuery(
        conversation, before, after, around, _limit(req.limit, DEFAULT_HISTORY_LIMIT), req.stale_ok
    )


def _limit(value: int, default: int, field: str = "limit") -> int:
    if value == 0:
        return default
    if value > MAX_PAGE:
        raise _invalid(field, f"must be 1..{MAX_PAGE} (0: {default}), got {value}")
    return value


Cursors = tuple[tuple[str, int], ...]
"""Validated cursors: (conversation, last seq the client has), sorted by conversation."""


def _check_cursors(cursors: Mapping[str, int], user: str, field: str) -> Cursors:
    if len(cursors) > MAX_CURSORS:
        raise _too_big(field, f"{len(cursors)} cursors, at most {MAX_CURSORS} per request")
    out = []
    for conversation in sorted(cursors):
        where = f"{field}[{conversation[:80]}]"
        _check_conversation(where, conversation, user)
        out.append((conversation, _check_seq(where, cursors[conversation], 0)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SyncQuery:
    cursors: Cursors
    limit: int

    def run(self, state: ChatState) -> SyncPage:
        return state.since(dict(self.cursors), self.limit)


def sync_query(req: pb.SyncRequest, user: str) -> SyncQuery:
    return SyncQuery(_check_cursors(req.cursors, user, "cursors"), _limit(req.limit, MAX_PAGE))


@dataclass(frozen=True, slots=True)
class RejectedSend:
    """A send of a frame that failed validation: answered alone, the frame goes on."""

    idempotency_key: str
    error: ApiError


@dataclass(frozen=True, slots=True)
class SessionFrame:
    """A valid ClientFrame. ``resume`` is None when the frame asked for none."""

    sends: tuple[SendIntent | RejectedSend, ...]
    resume: Cursors | None
    mark_reads: tuple[MarkRead | ApiError, ...]
    heartbeat: int


def parse_client_frame(frame: pb.ClientFrame, user: str, *, first: bool) -> SessionFrame:
    """Validate one frame of ``user``'s session. Frame-level problems (too many items, resume
    after the first frame, bad cursors) raise :class:`ApiError` and end the stream; a bad send
    or mark-read fails alone and is returned for its own answer. Keys repeated within a frame
    are refused after their first use: results are matched by key, so two sends sharing one
    could not be told apart."""
    if len(frame.sends) > MAX_SENDS_PER_FRAME:
        raise _too_big("sends", f"{len(frame.sends)} sends, at most {MAX_SENDS_PER_FRAME}")
    if len(frame.mark_reads) > MAX_MARK_READS_PER_FRAME:
        raise _too_big(
            "mark_reads", f"{len(frame.mark_reads)} items, at most {MAX_MARK_READS_PER_FRAME}"
        )
    resume: Cursors | None = None
    if frame.HasField("resume"):
        if not first:
            raise _invalid("resume", "only the first frame of a session may resume")
        resume = _check_cursors(frame.resume.cursors, user, "resume.cursors")
    sends: list[SendIntent | RejectedSend] = []
    seen: set[str] = set()
    for i, req in enumerate(frame.sends):
        prefix = f"sends[{i}]."
        try:
            if req.idempotency_key in seen:
                raise _invalid(prefix + "idempotency_key", "repeated within the frame")
            sends.append(parse_send(req, user, prefix))
            seen.add(req.idempotency_key)
        except ApiError as exc:
            sends.append(RejectedSend(req.idempotency_key, exc))
    marks: list[MarkRead | ApiError] = []
    for i, mark in enumerate(frame.mark_reads):
        try:
            marks.append(mark_read_command(mark, user, f"mark_reads[{i}]."))
        except ApiError as exc:
            marks.append(exc)
    return SessionFrame(tuple(sends), resume, tuple(marks), frame.heartbeat)


# ---------------------------------------------------------------------------------------------
# Results -> errors and protobuf.
# ---------------------------------------------------------------------------------------------

_SERVER_SET: Final[dict[type[Command], frozenset[str]]] = {
    RegisterUser: frozenset({"password_hash", "created_ms"}),
    CreateChannel: frozenset({"creator", "created_ms"}),
    JoinChannel: frozenset({"user", "ms"}),
    LeaveChannel: frozenset({"user", "ms"}),
    PostMessage: frozenset({"sender", "hlc_ms", "hlc_counter"}),
    MarkRead: frozenset({"user"}),
}
"""Command fields the server fills in (the authenticated user, times, the hash). A syntax
refusal of one is the server's bug (INTERNAL); any other refusal concerns the conversation or
channel the request named, so the field is renamed to that."""
_SUBJECT: Final[dict[type[Command], str]] = {
    RegisterUser: "user",
    CreateChannel: "channel",
    JoinChannel: "channel",
    LeaveChannel: "channel",
    PostMessage: "conversation",
    MarkRead: "conversation",
}


def rejection_error(
    rejected: Rejected,
    kind: type[Command],
    prefix: str = "",
    target_field: str = "conversation",
) -> ApiError:
    """The state machine's ``Rejected`` as the client sees it: the status of the same name
    (``Code`` is named after gRPC codes) and the request field. E.g. PERMISSION_DENIED on a
    PostMessage's ``sender`` (not a member) names ``conversation``; with ``target_field``
    ``to_user``, the DM's conversation is reported as that field."""
    field = rejected.field
    code = grpc.StatusCode[rejected.code.name]
    if field in _SERVER_SET.get(kind, frozenset()):
        if rejected.code is Code.INVALID_ARGUMENT:
            return ApiError(grpc.StatusCode.INTERNAL, field, f"server-made {rejected.reason}")
        field = _SUBJECT[kind]
    if kind is PostMessage and field == "conversation":
        field = target_field
    return ApiError(code, prefix + field, rejected.reason)


def expect(result: object, cmd: Command, kind: type[R]) -> R:
    """``result`` of applying ``cmd`` as a ``kind``; a ``Rejected`` raises its
    :func:`rejection_error`, anything else (None: the entry was not applied) is INTERNAL."""
    if isinstance(result, kind):
        return result
    if isinstance(result, Rejected):
        raise rejection_error(result, type(cmd))
    raise ApiError(grpc.StatusCode.INTERNAL, "", f"unexpected result {result!r} for {cmd!r}")


def posted_to_proto(posted: Posted) -> pb.SendResponse:
    return pb.SendResponse(
        conversation=posted.conversation,
        seq=posted.seq,
        hlc_ms=posted.hlc.ms,
        hlc_counter=posted.hlc.counter,
        duplicate=posted.duplicate,
    )


def send_result(idempotency_key: str, outcome: Posted | ApiError) -> pb.SendResult:
    """One answer of a session frame's sends."""
    if isinstance(outcome, ApiError):
        return pb.SendResult(idempotency_key=idempotency_key, error=outcome.to_failure())
    return pb.SendResult(idempotency_key=idempotency_key, sent=posted_to_proto(outcome))


def message_to_proto(
    message: Message, reader: str, displays: Mapping[str, str] | None = None
) -> pb.ChatMessage:
    """A stored message as ``reader`` gets it: the idempotency key only on their own messages,
    the sender's display name from ``displays`` ("" when not known)."""
    return pb.ChatMessage(
        conversation=message.conversation,
        seq=message.seq,
        sender=message.sender,
        sender_display=(displays or {}).get(message.sender, ""),
        text=message.text,
        hlc_ms=message.hlc.ms,
        hlc_counter=message.hlc.counter,
        idempotency_key=message.idempotency_key if message.sender == reader else "",
    )


def history_to_proto(
    page: HistoryPage, reader: str, displays: Mapping[str, str] | None = None
) -> pb.HistoryResponse:
    return pb.HistoryResponse(
        messages=[message_to_proto(m, reader, displays) for m in page.messages],
        reached_oldest=page.reached_oldest,
        reached_newest=page.reached_newest,
    )


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first_seq..last_seq`` of ``conversation`` were skipped over (see chat.proto)."""

    conversation: str
    first_seq: int
    last_seq: int

    def to_proto(self) -> pb.Gap:
        return pb.Gap(
            conversation=self.conversation, first_seq=self.first_seq, last_seq=self.last_seq
        )


def sync_to_proto(
    page: SyncPage,
    reader: str,
    displays: Mapping[str, str] | None = None,
    gaps: Iterable[Gap] = (),
) -> pb.SyncResponse:
    return pb.SyncResponse(
        messages=[message_to_proto(m, reader, displays) for m in page.messages],
        cursors=page.cursors,
        limited=page.limited,
        gaps=[g.to_proto() for g in gaps],
    )


def channel_to_proto(info: ChannelInfo, joined: bool) -> pb.ChannelInfo:
    return pb.ChannelInfo(
        name=info.name,
        creator=info.creator,
        created_ms=info.created_ms,
        member_count=info.member_count,
        last_seq=info.last_seq,
        joined=joined,
    )


def channels_to_proto(
    infos: Iterable[ChannelInfo], joined: Iterable[str]
) -> pb.ListChannelsResponse:
    """Channels by name; ``joined``: the names the caller is a member of."""
    mine = set(joined)
    return pb.ListChannelsResponse(
        channels=[channel_to_proto(c, c.name in mine) for c in sorted(infos, key=lambda c: c.name)]
    )


def registered_to_proto(result: UserRegistered, display_name: str) -> pb.RegisterResponse:
    return pb.RegisterResponse(user=result.user, display_name=display_name)


def joined_to_proto(result: Joined) -> pb.JoinChannelResponse:
    return pb.JoinChannelResponse(channel=result.channel, already_member=result.already_member)


def left_to_proto(result: Left) -> pb.LeaveChannelResponse:
    return pb.LeaveChannelResponse(channel=result.channel, was_member=result.was_member)


def read_marked_to_proto(result: ReadMarked) -> pb.MarkReadResponse:
    return pb.MarkReadResponse(
        conversation=result.conversation, read_seq=result.read_seq, unread=result.unread
    )


def unread_to_proto(refs: Iterable[ConversationRef]) -> pb.UnreadCountsResponse:
    """Unread counts by conversation id. A ref whose ``last_seq`` is None (a DM held by
    another group) must be resolved by the caller first; it counts as empty here."""
    rows = []
    for ref in sorted(refs, key=lambda r: r.conversation):
        last = ref.last_seq or 0
        rows.append(
            pb.ConversationUnread(
                conversation=ref.conversation,
                peer=ref.peer or "",
                last_seq=last,
                read_seq=ref.read_seq,
                unread=max(0, last - ref.read_seq),
            )
        )
    return pb.UnreadCountsResponse(conversations=rows)


def route_to_proto(route: Route, display_name: str, node_address: str) -> pb.OnlineSession:
    return pb.OnlineSession(
        user=route.user,
        display_name=display_name,
        node_id=route.gateway_node,
        node_address=node_address,
        since_ms=route.ms,
    )
