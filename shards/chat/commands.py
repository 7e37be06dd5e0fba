"""Chat commands: what a gateway proposes to a group's Raft log, the input rules the gateway and
apply share, and the byte encoding of a command in a log entry. What applying one returns (and
the HLC stamp) is in ``results``, re-exported here.

Why the rules live here and not in the service: every replica must reach the same verdict on the
same bytes, so :func:`validate` is part of the replicated state machine (``ChatState.apply`` calls
it on every entry). The service calls the same function before proposing, so a bad request is
refused without a round through Raft, with the same code and field name.

Every command carries the leader-assigned times it needs (``created_ms``, ``ms``, ``hlc_ms`` …):
applying never reads a clock. User names in channel and DM commands are trusted as authenticated
by the gateway (guarantee 8): a user's record lives in the user's group, which is usually not the
group that owns the channel or DM, so apply checks only their syntax.

Encoding (format version 1), chosen to be compact, deterministic and cheap to decode::

    byte 0   FORMAT_VERSION (1)
    byte 1   CommandKind (1..12)
    bytes 2… the command's fields in declaration order as a JSON array, UTF-8, no spaces
             (``ensure_ascii=False``), e.g. ``[\"general\",\"alice\",1700000000000]``

Equal commands give equal bytes; a field is added only with a new format version. Bytes that do
not decode raise :class:`MalformedCommand`; apply turns that into ``Rejected(INVALID_ARGUMENT,
"command", …)`` on every replica alike, so garbage in the log changes nothing and never crashes
the apply loop.
"""

from __future__ import annotations

import enum
import json
import json.scanner
import re
from dataclasses import dataclass, fields
from typing import Final

# Re-exported: importers of the results from here predate the ``results`` module.
from shards.chat.results import ChannelCreated as ChannelCreated
from shards.chat.results import Code as Code
from shards.chat.results import DmAdded as DmAdded
from shards.chat.results import FollowUpAcked as FollowUpAcked
from shards.chat.results import Hlc as Hlc
from shards.chat.results import Joined as Joined
from shards.chat.results import Left as Left
from shards.chat.results import Posted as Posted
from shards.chat.results import ReadMarked as ReadMarked
from shards.chat.results import Rejected as Rejected
from shards.chat.results import Result as Result
from shards.chat.results import RouteDropped as RouteDropped
from shards.chat.results import RouteSet as RouteSet
from shards.chat.results import SessionClosed as SessionClosed
from shards.chat.results import SessionOpened as SessionOpened
from shards.chat.results import UserRegistered as UserRegistered

FORMAT_VERSION: Final = 1

NAME_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,32}")
"""User and channel names (DESIGN.md section 5), matched with ``fullmatch``."""
SESSION_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TOKEN_DIGEST_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
"""A session token's SHA-256 as lowercase hex (``auth.token_digest``); the token never is stored."""
IDEMPOTENCY_KEY_PATTERN: Final = re.compile(r"[\x21-\x7e]{1,64}")
"""1..64 printable ASCII characters without spaces (a UUID, a counter, a ULID …)."""
MAX_TEXT_BYTES: Final = 4096
"""A message's text: 1..4096 bytes of UTF-8, not only whitespace."""
MAX_DISPLAY_NAME: Final = 64
MAX_PASSWORD_HASH: Final = 512
MAX_INT: Final = (1 << 63) - 1
"""SQLite's INTEGER range; larger values are refused before they reach the database."""
MAX_HLC_COUNTER: Final = (1 << 32) - 1
"""Bound on a proposed HLC counter, so the +1 ticks of apply can never overflow an INTEGER."""
DM_PREFIX: Final = "dm:"


class MalformedCommand(ValueError):
    """Bytes that are not a command of this format version."""


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterUser:
    """Create an account. ``password_hash`` is already an scrypt/argon2 hash string."""

    user: str
    display_name: str
    password_hash: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class CreateChannel:
    """Create a channel; its creator becomes its first member."""

    channel: str
    creator: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class JoinChannel:
    channel: str
    user: str
    ms: int


@dataclass(frozen=True, slots=True)
class LeaveChannel:
    channel: str
    user: str
    ms: int


@dataclass(frozen=True, slots=True)
class PostMessage:
    """Append a message to ``conversation`` (a channel name or a DM id, see :func:`dm_id`).
    ``hlc_ms``/``hlc_counter`` are the leader's clock; the stored stamp may be later (see
    ``ChatState``)."""

    conversation: str
    sender: str
    idempotency_key: str
    text: str
    hlc_ms: int
    hlc_counter: int


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Move ``user``'s read marker in ``conversation`` to ``seq`` (never backwards)."""

    user: str
    conversation: str
    seq: int


@dataclass(frozen=True, slots=True)
class SetRoute:
    """Record that ``user``'s session ``session_id`` is served by node ``gateway_node``. Setting
    it again from another node moves it atomically."""

    user: str
    session_id: str
    gateway_node: int
    ms: int


@dataclass(frozen=True, slots=True)
class DropRoute:
    """Forget a session's route. With ``gateway_node`` != 0 only if the route still points
    there, so a gateway cleaning up after a session that already moved cannot drop the route
    the new gateway set."""

    user: str
    session_id: str
    gateway_node: int = 0


@dataclass(frozen=True, slots=True)
class AddDmConversation:
    """The cross-group follow-up of a DM's first message: list DM ``conversation`` (with
    ``peer``) among ``user``'s conversations in the user's own group. Idempotent."""

    user: str
    conversation: str
    peer: str


@dataclass(frozen=True, slots=True)
class AckFollowUp:
    """The follow-up ``outbox_id`` of this group's outbox is done: remove it. Idempotent."""

    outbox_id: int


@dataclass(frozen=True, slots=True)
class OpenSession:
    """Record a login: the session token whose SHA-256 is ``token_digest`` authenticates
    ``user``. Proposed to the user's own group (where the user's record is), so apply can check
    that the user exists. Replaying the identical command is a no-op (a retried proposal)."""

    user: str
    token_digest: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Revoke a session (logout). Only ``user``'s own session is closed: the user part of a
    token names the group, so a digest paired with another user changes nothing. Idempotent."""

    user: str
    token_digest: str


Command = (
    RegisterUser
    | CreateChannel
    | JoinChannel
    | LeaveChannel
    | PostMessage
    | MarkRead
    | SetRoute
    | DropRoute
    | AddDmConversation
    | AckFollowUp
    | OpenSession
    | CloseSession
)


class CommandKind(enum.IntEnum):
    """Byte 1 of an encoded command. Never renumber: these bytes live in Raft logs."""

    REGISTER_USER = 1
    CREATE_CHANNEL = 2
    JOIN_CHANNEL = 3
    LEAVE_CHANNEL = 4
    POST_MESSAGE = 5
    MARK_READ = 6
    SET_ROUTE = 7
    DROP_ROUTE = 8
    ADD_DM_CONVERSATION = 9
    ACK_FOLLOW_UP = 10
    OPEN_SESSION = 11
    CLOSE_SESSION = 12


_CLASSES: Final[dict[CommandKind, type[Command]]] = {
    CommandKind.REGISTER_USER: RegisterUser,
    CommandKind.CREATE_CHANNEL: CreateChannel,
    CommandKind.JOIN_CHANNEL: JoinChannel,
    CommandKind.LEAVE_CHANNEL: LeaveChannel,
    CommandKind.POST_MESSAGE: PostMessage,
    CommandKind.MARK_READ: MarkRead,
    CommandKind.SET_ROUTE: SetRoute,
    CommandKind.DROP_ROUTE: DropRoute,
    CommandKind.ADD_DM_CONVERSATION: AddDmConversation,
    CommandKind.ACK_FOLLOW_UP: AckFollowUp,
    CommandKind.OPEN_SESSION: OpenSession,
    CommandKind.CLOSE_SESSION: CloseSession,
}
_KINDS: Final[dict[type[Command], CommandKind]] = {cls: k for k, cls in _CLASSES.items()}
_BY_BYTE: Final[dict[int, CommandKind]] = {int(k): k for k in CommandKind}
_FIELD_TYPES: Final[dict[str, type]] = {"str": str, "int": int}
_LAYOUT: Final[dict[CommandKind, tuple[type, ...]]] = {
    kind: tuple(_FIELD_TYPES[str(f.type)] for f in fields(cls)) for kind, cls in _CLASSES.items()
}
"""Each kind's field types in declaration order (the JSON array's layout)."""


# ---------------------------------------------------------------------------------------------
# Conversations.
# ---------------------------------------------------------------------------------------------


def is_name(value: str) -> bool:
    return NAME_PATTERN.fullmatch(value) is not None


def dm_id(a: str, b: str) -> str:
    """The DM conversation of users ``a`` and ``b``: ``dm:<smaller>:<larger>``, one id per pair
    whoever writes first. ``ValueError`` for bad names or ``a == b``."""
    if not (is_name(a) and is_name(b)) or a == b:
        raise ValueError(f"no DM between {a!r} and {b!r}")
    lo, hi = sorted((a, b))
    return f"{DM_PREFIX}{lo}:{hi}"


def parse_dm(conversation: str) -> tuple[str, str] | None:
    """The two participants of a well-formed DM id (sorted, distinct, valid names), else None."""
    if not conversation.startswith(DM_PREFIX):
        return None
    parts = conversation[len(DM_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    a, b = parts
    if not (is_name(a) and is_name(b)) or a >= b:
        return None
    return a, b


def is_conversation(value: str) -> bool:
    """A channel name or a well-formed DM id."""
    return is_name(value) or parse_dm(value) is not None


# ---------------------------------------------------------------------------------------------
# Validation: syntax only, the same on every replica.
# ---------------------------------------------------------------------------------------------


def _bad(field: str, reason: str) -> Rejected:
    return Rejected(Code.INVALID_ARGUMENT, field, reason)


def _name(field: str, value: str) -> Rejected | None:
    if is_name(value):
        return None
    return _bad(field, f"{value[:40]!r} is not a name ([a-z0-9_-]{{1,32}})")


def _non_negative(field: str, value: int, upper: int = MAX_INT) -> Rejected | None:
    if 0 <= value <= upper:
        return None
    return _bad(field, f"must be in 0..{upper}, got {value}")


def _conversation(field: str, value: str) -> Rejected | None:
    if is_conversation(value):
        return None
    return _bad(field, f"{value[:80]!r} is neither a channel name nor a DM id dm:<a>:<b> (a < b)")


def _first(*checks: Rejected | None) -> Rejected | None:
    return next((c for c in checks if c is not None), None)


def validate(cmd: Command) -> Rejected | None:
    """The first syntax problem of ``cmd`` as an INVALID_ARGUMENT naming the field, else None.
    State-dependent rules (existence, membership) are checked by ``ChatState``."""
    if type(cmd) is PostMessage and _valid_post(cmd):
        return None  # the common case, without building the checks of the general way
    return _validate_general(cmd)


def _validate_general(cmd: Command) -> Rejected | None:
    match cmd:
        case RegisterUser():
            return _first(
                _name("user", cmd.user),
                None
                if 1 <= len(cmd.display_name) <= MAX_DISPLAY_NAME and cmd.display_name.isprintable()
                else _bad("display_name", f"must be 1..{MAX_DISPLAY_NAME} printable characters"),
                None
                if 1 <= len(cmd.password_hash) <= MAX_PASSWORD_HASH
                and cmd.password_hash.isascii()
                and cmd.password_hash.isprintable()
                else _bad("password_hash", f"must be 1..{MAX_PASSWORD_HASH} printable ASCII"),
                _non_negative("created_ms", cmd.created_ms),
            )
        case CreateChannel():
            return _first(
                _name("channel", cmd.channel),
                _name("creator", cmd.creator),
                _non_negative("created_ms", cmd.created_ms),
            )
        case JoinChannel() | LeaveChannel():
            return _first(
                _name("channel", cmd.channel),
                _name("user", cmd.user),
                _non_negative("ms", cmd.ms),
            )
        case PostMessage():
            return _first(
                _conversation("conversation", cmd.conversation),
                _name("sender", cmd.sender),
                None
                if IDEMPOTENCY_KEY_PATTERN.fullmatch(cmd.idempotency_key)
                else _bad("idempotency_key", "must be 1..64 printable ASCII characters, no space"),
                _text(cmd.text),
                _non_negative("hlc_ms", cmd.hlc_ms),
                _non_negative("hlc_counter", cmd.hlc_counter, MAX_HLC_COUNTER),
            )
        case MarkRead():
            return _first(
                _name("user", cmd.user),
                _conversation("conversation", cmd.conversation),
                _non_negative("seq", cmd.seq),
            )
        case SetRoute():
            return _first(
                _name("user", cmd.user),
                _session("session_id", cmd.session_id),
                None
                if 1 <= cmd.gateway_node <= MAX_INT
                else _bad("gateway_node", f"must be a positive node id, got {cmd.gateway_node}"),
                _non_negative("ms", cmd.ms),
            )
        case DropRoute():
            return _first(
                _name("user", cmd.user),
                _session("session_id", cmd.session_id),
                _non_negative("gateway_node", cmd.gateway_node),
            )
        case AddDmConversation():
            pair = parse_dm(cmd.conversation)
            return _first(
                _name("user", cmd.user),
                _name("peer", cmd.peer),
                None
                if pair is not None and sorted((cmd.user, cmd.peer)) == list(pair)
                else _bad(
                    "conversation", f"{cmd.conversation[:80]!r} is not the DM of user and peer"
                ),
            )
        case AckFollowUp():
            return _non_negative("outbox_id", cmd.outbox_id)
        case OpenSession():
            return _first(
                _name("user", cmd.user),
                _digest(cmd.token_digest),
                _non_negative("created_ms", cmd.created_ms),
            )
        case CloseSession():
            return _first(_name("user", cmd.user), _digest(cmd.token_digest))


def _valid_post(cmd: PostMessage) -> bool:
    """Whether ``cmd`` passes every check of :func:`validate` (which names the first failing
    one): the same rules as a short-circuiting expression, as it runs for every send."""
    conversation = cmd.conversation
    return (
        (_NAME_MATCH(conversation) is not None or parse_dm(conversation) is not None)
        and _NAME_MATCH(cmd.sender) is not None
        and _KEY_MATCH(cmd.idempotency_key) is not None
        and _text(cmd.text) is None
        and 0 <= cmd.hlc_ms <= MAX_INT
        and 0 <= cmd.hlc_counter <= MAX_HLC_COUNTER
    )


_NAME_MATCH: Final = NAME_PATTERN.fullmatch
_KEY_MATCH: Final = IDEMPOTENCY_KEY_PATTERN.fullmatch


def _digest(value: str) -> Rejected | None:
    if TOKEN_DIGEST_PATTERN.fullmatch(value):
        return None
    return _bad("token_digest", "must be a SHA-256 as 64 lowercase hex digits")


def _text(text: str) -> Rejected | None:
    if not text.strip():
        return _bad("text", "must not be empty")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        return _bad("text", f"must be at most {MAX_TEXT_BYTES} bytes of UTF-8")
    return None


def _session(field: str, value: str) -> Rejected | None:
    if SESSION_PATTERN.fullmatch(value):
        return None
    return _bad(field, "must be 1..64 characters of [A-Za-z0-9_.-]")


# ---------------------------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------------------------


def encode_command(cmd: Command) -> bytes:
    """The log entry bytes of ``cmd`` (see the module docstring). ``UnicodeEncodeError`` if a
    string is not encodable as UTF-8 (a lone surrogate); :func:`validate` does not allow those
    to be built from decoded bytes either."""
    values = [getattr(cmd, f.name) for f in fields(cmd)]
    body = json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return bytes((FORMAT_VERSION, _KINDS[type(cmd)])) + body


# typeshed types the scanner's context as a scanner; json itself passes its decoder, as here.
_scan_json: Final = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
"""The JSON scanner at the heart of ``json.loads`` (same settings), without the argument
handling ``json.loads`` does per call: half its cost for a send's small array."""
_POST_BYTE: Final = int(CommandKind.POST_MESSAGE)


def decode_command(data: bytes) -> Command:
    """The command in ``data``; :class:`MalformedCommand` for anything else (never another
    exception, whatever the bytes). Written for speed: it runs for every entry on every
    replica. Sends, most of the log, take a short path for the well-formed case; anything it
    does not accept goes the general way, which gives every verdict and message."""
    if len(data) > 2 and data[1] == _POST_BYTE and data[0] == FORMAT_VERSION:
        post = _decode_post(data)
        if post is not None:
            return post
    return _decode_general(data)


def _decode_post(data: bytes) -> PostMessage | None:
    """A well-formed PostMessage body, else None (then the general path decides)."""
    try:
        body = data[2:].decode("utf-8")
        values, end = _scan_json(body, 0)
    except (ValueError, StopIteration, RecursionError):
        return None
    if type(values) is not list or len(values) != 6 or end != len(body) or b"\\u" in data:
        return None
    conversation, sender, key, text, hlc_ms, hlc_counter = values
    if (
        type(conversation) is str
        and type(sender) is str
        and type(key) is str
        and type(text) is str
        and type(hlc_ms) is int
        and type(hlc_counter) is int
        and -MAX_INT - 1 <= hlc_ms <= MAX_INT
        and -MAX_INT - 1 <= hlc_counter <= MAX_INT
    ):
        return PostMessage(conversation, sender, key, text, hlc_ms, hlc_counter)
    return None


def _decode_general(data: bytes) -> Command:
    if len(data) < 2:
        raise MalformedCommand(f"{len(data)} bytes is too short for a command")
    if data[0] != FORMAT_VERSION:
        raise MalformedCommand(f"format version {data[0]}, expected {FORMAT_VERSION}")
    kind = _BY_BYTE.get(data[1])
    if kind is None:
        raise MalformedCommand(f"unknown command kind {data[1]}")
    try:
        values = json.loads(data[2:].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedCommand(f"{kind.name}: undecodable body: {exc}") from None
    layout = _LAYOUT[kind]
    if type(values) is not list or len(values) != len(layout):
        raise MalformedCommand(f"{kind.name}: expected a JSON array of {len(layout)} fields")
    for i, (value, expected) in enumerate(zip(values, layout, strict=True)):
        if type(value) is not expected:  # exact: a bool is not an int
            raise MalformedCommand(f"{kind.name} field {i}: expected {expected.__name__}")
        if type(value) is int and not -MAX_INT - 1 <= value <= MAX_INT:
            raise MalformedCommand(f"{kind.name} field {i}: integer out of range")
    # Valid UTF-8 holds no surrogate; only a JSON escape (\ud800) can make a lone one.
    if b"\\u" in data:
        for i, value in enumerate(values):
            if type(value) is str and not _encodable(value):
                raise MalformedCommand(f"{kind.name} field {i}: not valid UTF-8")
    return _CLASSES[kind](*values)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
