from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MembershipChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBERSHIP_CHANGE_UNSPECIFIED: _ClassVar[MembershipChange]
    MEMBERSHIP_CHANGE_JOINED: _ClassVar[MembershipChange]
    MEMBERSHIP_CHANGE_LEFT: _ClassVar[MembershipChange]
MEMBERSHIP_CHANGE_UNSPECIFIED: MembershipChange
MEMBERSHIP_CHANGE_JOINED: MembershipChange
MEMBERSHIP_CHANGE_LEFT: MembershipChange

class RegisterRequest(_message.Message):
    __slots__ = ("user", "display_name", "password")
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user: str
    display_name: str
    password: str
    def __init__(self, user: _Optional[str] = ..., display_name: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("user", "display_name")
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    user: str
    display_name: str
    def __init__(self, user: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("user", "password")
    USER_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user: str
    password: str
    def __init__(self, user: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("token", "user", "display_name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    user: str
    display_name: str
    def __init__(self, token: _Optional[str] = ..., user: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChannelInfo(_message.Message):
    __slots__ = ("name", "creator", "created_ms", "member_count", "last_seq", "joined")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    name: str
    creator: str
    created_ms: int
    member_count: int
    last_seq: int
    joined: bool
    def __init__(self, name: _Optional[str] = ..., creator: _Optional[str] = ..., created_ms: _Optional[int] = ..., member_count: _Optional[int] = ..., last_seq: _Optional[int] = ..., joined: _Optional[bool] = ...) -> None: ...

class CreateChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class CreateChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: ChannelInfo
    def __init__(self, channel: _Optional[_Union[ChannelInfo, _Mapping]] = ...) -> None: ...

class JoinChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class JoinChannelResponse(_message.Message):
    __slots__ = ("channel", "already_member")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_MEMBER_FIELD_NUMBER: _ClassVar[int]
    channel: str
    already_member: bool
    def __init__(self, channel: _Optional[str] = ..., already_member: _Optional[bool] = ...) -> None: ...

class LeaveChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class LeaveChannelResponse(_message.Message):
    __slots__ = ("channel", "was_member")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    WAS_MEMBER_FIELD_NUMBER: _ClassVar[int]
    channel: str
    was_member: bool
    def __init__(self, channel: _Optional[str] = ..., was_member: _Optional[bool] = ...) -> None: ...

class ListChannelsRequest(_message.Message):
    __slots__ = ("joined_only",)
    JOINED_ONLY_FIELD_NUMBER: _ClassVar[int]
    joined_only: bool
    def __init__(self, joined_only: _Optional[bool] = ...) -> None: ...

class ListChannelsResponse(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[ChannelInfo]
    def __init__(self, channels: _Optional[_Iterable[_Union[ChannelInfo, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("conversation", "seq", "sender", "sender_display", "text", "hlc_ms", "hlc_counter", "idempotency_key")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HLC_MS_FIELD_NUMBER: _ClassVar[int]
    HLC_COUNTER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    seq: int
    sender: str
    sender_display: str
    text: str
    hlc_ms: int
    hlc_counter: int
    idempotency_key: str
    def __init__(self, conversation: _Optional[str] = ..., seq: _Optional[int] = ..., sender: _Optional[str] = ..., sender_display: _Optional[str] = ..., text: _Optional[str] = ..., hlc_ms: _Optional[int] = ..., hlc_counter: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("conversation", "to_user", "text", "idempotency_key")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    to_user: str
    text: str
    idempotency_key: str
    def __init__(self, conversation: _Optional[str] = ..., to_user: _Optional[str] = ..., text: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("conversation", "seq", "hlc_ms", "hlc_counter", "duplicate")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HLC_MS_FIELD_NUMBER: _ClassVar[int]
    HLC_COUNTER_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    seq: int
    hlc_ms: int
    hlc_counter: int
    duplicate: bool
    def __init__(self, conversation: _Optional[str] = ..., seq: _Optional[int] = ..., hlc_ms: _Optional[int] = ..., hlc_counter: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("conversation", "before", "after", "around", "limit", "stale_ok")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    AROUND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    before: int
    after: int
    around: int
    limit: int
    stale_ok: bool
    def __init__(self, conversation: _Optional[str] = ..., before: _Optional[int] = ..., after: _Optional[int] = ..., around: _Optional[int] = ..., limit: _Optional[int] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("messages", "reached_oldest", "reached_newest")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    REACHED_OLDEST_FIELD_NUMBER: _ClassVar[int]
    REACHED_NEWEST_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    reached_oldest: bool
    reached_newest: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., reached_oldest: _Optional[bool] = ..., reached_newest: _Optional[bool] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("conversation", "first_seq", "last_seq")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    first_seq: int
    last_seq: int
    def __init__(self, conversation: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("cursors", "limit")
    class CursorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.ScalarMap[str, int]
    limit: int
    def __init__(self, cursors: _Optional[_Mapping[str, int]] = ..., limit: _Optional[int] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("messages", "cursors", "limited", "gaps")
    class CursorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    cursors: _containers.ScalarMap[str, int]
    limited: bool
    gaps: _containers.RepeatedCompositeFieldContainer[Gap]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., cursors: _Optional[_Mapping[str, int]] = ..., limited: _Optional[bool] = ..., gaps: _Optional[_Iterable[_Union[Gap, _Mapping]]] = ...) -> None: ...

class MarkReadRequest(_message.Message):
    __slots__ = ("conversation", "seq")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    seq: int
    def __init__(self, conversation: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class MarkReadResponse(_message.Message):
    __slots__ = ("conversation", "read_seq", "unread")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    read_seq: int
    unread: int
    def __init__(self, conversation: _Optional[str] = ..., read_seq: _Optional[int] = ..., unread: _Optional[int] = ...) -> None: ...

class UnreadCountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConversationUnread(_message.Message):
    __slots__ = ("conversation", "peer", "last_seq", "read_seq", "unread")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    peer: str
    last_seq: int
    read_seq: int
    unread: int
    def __init__(self, conversation: _Optional[str] = ..., peer: _Optional[str] = ..., last_seq: _Optional[int] = ..., read_seq: _Optional[int] = ..., unread: _Optional[int] = ...) -> None: ...

class UnreadCountsResponse(_message.Message):
    __slots__ = ("conversations",)
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[ConversationUnread]
    def __init__(self, conversations: _Optional[_Iterable[_Union[ConversationUnread, _Mapping]]] = ...) -> None: ...

class WhoRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class OnlineSession(_message.Message):
    __slots__ = ("user", "display_name", "node_id", "node_address", "since_ms")
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    user: str
    display_name: str
    node_id: int
    node_address: str
    since_ms: int
    def __init__(self, user: _Optional[str] = ..., display_name: _Optional[str] = ..., node_id: _Optional[int] = ..., node_address: _Optional[str] = ..., since_ms: _Optional[int] = ...) -> None: ...

class WhoResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[OnlineSession]
    def __init__(self, sessions: _Optional[_Iterable[_Union[OnlineSession, _Mapping]]] = ...) -> None: ...

class ServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupState(_message.Message):
    __slots__ = ("group", "role", "leader", "term", "applied")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    group: int
    role: str
    leader: int
    term: int
    applied: int
    def __init__(self, group: _Optional[int] = ..., role: _Optional[str] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ..., applied: _Optional[int] = ...) -> None: ...

class ServerStatusResponse(_message.Message):
    __slots__ = ("node_id", "cluster_id", "version", "uptime_ms", "map_epoch", "sessions", "groups", "fsync")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FSYNC_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    cluster_id: str
    version: str
    uptime_ms: int
    map_epoch: int
    sessions: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupState]
    fsync: bool
    def __init__(self, node_id: _Optional[int] = ..., cluster_id: _Optional[str] = ..., version: _Optional[str] = ..., uptime_ms: _Optional[int] = ..., map_epoch: _Optional[int] = ..., sessions: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupState, _Mapping]]] = ..., fsync: _Optional[bool] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("sends", "resume", "mark_reads", "heartbeat")
    SENDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    MARK_READS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    sends: _containers.RepeatedCompositeFieldContainer[SendRequest]
    resume: Resume
    mark_reads: _containers.RepeatedCompositeFieldContainer[MarkReadRequest]
    heartbeat: int
    def __init__(self, sends: _Optional[_Iterable[_Union[SendRequest, _Mapping]]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ..., mark_reads: _Optional[_Iterable[_Union[MarkReadRequest, _Mapping]]] = ..., heartbeat: _Optional[int] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("cursors",)
    class CursorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.ScalarMap[str, int]
    def __init__(self, cursors: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("code", "field", "message", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    field: str
    message: str
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class SendResult(_message.Message):
    __slots__ = ("idempotency_key", "sent", "error")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    sent: SendResponse
    error: Failure
    def __init__(self, idempotency_key: _Optional[str] = ..., sent: _Optional[_Union[SendResponse, _Mapping]] = ..., error: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class PresenceEvent(_message.Message):
    __slots__ = ("user", "display_name", "online", "node_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    display_name: str
    online: bool
    node_id: int
    def __init__(self, user: _Optional[str] = ..., display_name: _Optional[str] = ..., online: _Optional[bool] = ..., node_id: _Optional[int] = ...) -> None: ...

class MembershipEvent(_message.Message):
    __slots__ = ("channel", "user", "display_name", "change", "member_count")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    user: str
    display_name: str
    change: MembershipChange
    member_count: int
    def __init__(self, channel: _Optional[str] = ..., user: _Optional[str] = ..., display_name: _Optional[str] = ..., change: _Optional[_Union[MembershipChange, str]] = ..., member_count: _Optional[int] = ...) -> None: ...

class Resumed(_message.Message):
    __slots__ = ("user", "session_id", "node_id", "cursors", "heartbeat_interval_ms")
    class CursorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    user: str
    session_id: str
    node_id: int
    cursors: _containers.ScalarMap[str, int]
    heartbeat_interval_ms: int
    def __init__(self, user: _Optional[str] = ..., session_id: _Optional[str] = ..., node_id: _Optional[int] = ..., cursors: _Optional[_Mapping[str, int]] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("results", "messages", "presence", "membership", "resumed", "gaps", "errors", "heartbeat")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendResult]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    presence: _containers.RepeatedCompositeFieldContainer[PresenceEvent]
    membership: _containers.RepeatedCompositeFieldContainer[MembershipEvent]
    resumed: Resumed
    gaps: _containers.RepeatedCompositeFieldContainer[Gap]
    errors: _containers.RepeatedCompositeFieldContainer[Failure]
    heartbeat: int
    def __init__(self, results: _Optional[_Iterable[_Union[SendResult, _Mapping]]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., presence: _Optional[_Iterable[_Union[PresenceEvent, _Mapping]]] = ..., membership: _Optional[_Iterable[_Union[MembershipEvent, _Mapping]]] = ..., resumed: _Optional[_Union[Resumed, _Mapping]] = ..., gaps: _Optional[_Iterable[_Union[Gap, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., heartbeat: _Optional[int] = ...) -> None: ...
