"""What the client library hands back: frozen dataclasses and enums, never protobuf.

Why a copy of the proto messages: callers (the CLI, load tests, applications) should depend on
this package alone, read typed attributes, hash and compare values, and not break when the wire
format grows a field. Each type has a ``from_proto`` used by the client and nothing else; the
session's events (:data:`Event`) are values of the same kind.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from proto import chat_pb2 as pb

if TYPE_CHECKING:
    from clients.errors import ChatError


def _frozen_map(items: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({str(k): int(v) for k, v in items.items()})


_new = object.__new__


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen slots dataclass, for the ``from_proto`` of the types made
    once per send or pushed message: the generated ``__init__`` of a frozen dataclass calls
    ``object.__setattr__`` per field, which costs twice the rest of the conversion. The value
    built is the same (a test compares it with the ``__init__``'s)."""
    return tuple(cls.__dict__[name].__set__ for name in names)


# ---- accounts and channels ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    creator: str
    created_ms: int
    member_count: int
    last_seq: int
    """Seq of the newest message; 0 = none yet."""
    joined: bool
    """The caller is a member."""

    @classmethod
    def from_proto(cls, c: pb.ChannelInfo) -> Channel:
        return cls(
            c.name, c.creator, int(c.created_ms), int(c.member_count), int(c.last_seq), c.joined
        )


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message: ``seq`` runs 1, 2, 3, ... per conversation with no gap."""

    conversation: str
    seq: int
    sender: str
    sender_display: str
    text: str
    hlc_ms: int
    hlc_counter: int
    idempotency_key: str = ""
    """Set only on the reader's own messages."""

    @classmethod
    def from_proto(cls, m: pb.ChatMessage) -> Message:
        conversation, seq, sender, display, text, hlc_ms, hlc_counter, key = _MESSAGE_SLOTS
        message: Message = _new(cls)
        conversation(message, m.conversation)
        seq(message, m.seq)  # protobuf integer fields are ints already
        sender(message, m.sender)
        display(message, m.sender_display)
        text(message, m.text)
        hlc_ms(message, m.hlc_ms)
        hlc_counter(message, m.hlc_counter)
        key(message, m.idempotency_key)
        return message


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """Where an acknowledged (committed, durable) send landed."""

    conversation: str
    """The conversation id (the DM id when the send named ``to_user``)."""
    seq: int
    hlc_ms: int
    hlc_counter: int
    duplicate: bool
    """The key had been seen: this is the first send's seq (a retry made no second message)."""
    idempotency_key: str

    @classmethod
    def from_proto(cls, r: pb.SendResponse, key: str) -> SendReceipt:
        conversation, seq, hlc_ms, hlc_counter, duplicate, idempotency_key = _RECEIPT_SLOTS
        receipt: SendReceipt = _new(cls)
        conversation(receipt, r.conversation)
        seq(receipt, r.seq)
        hlc_ms(receipt, r.hlc_ms)
        hlc_counter(receipt, r.hlc_counter)
        duplicate(receipt, r.duplicate)
        idempotency_key(receipt, key)
        return receipt


_MESSAGE_SLOTS: Final = _slot_setters(
    Message,
    "conversation",
    "seq",
    "sender",
    "sender_display",
    "text",
    "hlc_ms",
    "hlc_counter",
    "idempotency_key",
)
_RECEIPT_SLOTS: Final = _slot_setters(
    SendReceipt, "conversation", "seq", "hlc_ms", "hlc_counter", "duplicate", "idempotency_key"
)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: tuple[Message, ...]
    """Ascending seq, no gap."""
    reached_oldest: bool
    reached_newest: bool

    @classmethod
    def from_proto(cls, r: pb.HistoryResponse) -> HistoryPage:
        return cls(
            tuple(Message.from_proto(m) for m in r.messages), r.reached_oldest, r.reached_newest
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first_seq..last_seq`` of ``conversation`` exist but were skipped (the backlog was
    too large to replay); fetch them with ``history(conversation, after=first_seq - 1)``."""

    conversation: str
    first_seq: int
    last_seq: int

    @classmethod
    def from_proto(cls, g: pb.Gap) -> Gap:
        return cls(g.conversation, int(g.first_seq), int(g.last_seq))


@dataclass(frozen=True, slots=True)
class SyncResult:
    messages: tuple[Message, ...]
    cursors: Mapping[str, int]
    """The cursor to ask from next, per conversation asked."""
    limited: bool
    """More messages remain after ``cursors``: call again."""
    gaps: tuple[Gap, ...]

    @classmethod
    def from_proto(cls, r: pb.SyncResponse) -> SyncResult:
        return cls(
            tuple(Message.from_proto(m) for m in r.messages),
            _frozen_map(r.cursors),
            r.limited,
            tuple(Gap.from_proto(g) for g in r.gaps),
        )


@dataclass(frozen=True, slots=True)
class ReadMarker:
    conversation: str
    read_seq: int
    unread: int


@dataclass(frozen=True, slots=True)
class Unread:
    conversation: str
    peer: str
    """The other participant of a DM; "" for a channel."""
    last_seq: int
    read_seq: int
    unread: int

    @classmethod
    def from_proto(cls, u: pb.ConversationUnread) -> Unread:
        return cls(u.conversation, u.peer, int(u.last_seq), int(u.read_seq), int(u.unread))


# ---- presence and status --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnlineSession:
    user: str
    display_name: str
    node_id: int
    node_address: str
    since_ms: int

    @classmethod
    def from_proto(cls, s: pb.OnlineSession) -> OnlineSession:
        return cls(s.user, s.display_name, int(s.node_id), s.node_address, int(s.since_ms))


@dataclass(frozen=True, slots=True)
class GroupState:
    group: int
    role: str
    leader: int
    term: int
    applied: int


@dataclass(frozen=True, slots=True)
class ServerStatus:
    node_id: int
    cluster_id: str
    version: str
    uptime_ms: int
    map_epoch: int
    sessions: int
    groups: tuple[GroupState, ...]
    fsync: bool

    @classmethod
    def from_proto(cls, r: pb.ServerStatusResponse) -> ServerStatus:
        groups = tuple(
            GroupState(int(g.group), g.role, int(g.leader), int(g.term), int(g.applied))
            for g in r.groups
        )
        return cls(
            int(r.node_id),
            r.cluster_id,
            r.version,
            int(r.uptime_ms),
            int(r.map_epoch),
            int(r.sessions),
            groups,
            r.fsync,
        )


# ---- session events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A committed message of a conversation the user is in (each seq once, in order)."""

    message: Message


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    user: str
    display_name: str
    online: bool
    """True: the user's first session opened; False: its last one closed."""
    node_id: int

    @classmethod
    def from_proto(cls, p: pb.PresenceEvent) -> PresenceEvent:
        return cls(p.user, p.display_name, p.online, int(p.node_id))


class MembershipChange(enum.Enum):
    JOINED = "joined"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    channel: str
    user: str
    display_name: str
    change: MembershipChange
    member_count: int

    @classmethod
    def from_proto(cls, m: pb.MembershipEvent) -> MembershipEvent:
        change = (
            MembershipChange.LEFT
            if m.change == pb.MEMBERSHIP_CHANGE_LEFT
            else MembershipChange.JOINED
        )
        return cls(m.channel, m.user, m.display_name, change, int(m.member_count))


@dataclass(frozen=True, slots=True)
class GapEvent:
    """Messages skipped while resuming (see :class:`Gap`); the cursor is already past them."""

    gap: Gap


class ConnectionState(enum.Enum):
    CONNECTED = "connected"
    """The session's first stream is established."""
    RECONNECTING = "reconnecting"
    """The stream broke; the next attempt starts in ``in_seconds`` (on another node)."""
    RESUMED = "resumed"
    """A new stream is established and resumed from the client's cursors."""
    CLOSED = "closed"
    """The session is over: closed by the client, or ended by an error it cannot retry."""


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    state: ConnectionState
    node: str
    """The node address the state is about (the new gateway, or the one that failed)."""
    reason: str = ""
    in_seconds: float = 0.0
    node_id: int = 0
    """The gateway's node id (CONNECTED / RESUMED); 0 otherwise."""
    error: ChatError | None = None
    """CLOSED by an error: which one (None when closed by the client)."""


Event = MessageEvent | PresenceEvent | MembershipEvent | GapEvent | ConnectionEvent
"""Everything :meth:`clients.AsyncChatClient.events` yields."""
