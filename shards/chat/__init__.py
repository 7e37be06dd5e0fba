"""The replicated chat state machine of one Raft group (no I/O but its own SQLite file).

Public API:

- ``ChatState`` — implements ``cluster.statemachine.GroupStateMachine``; applies committed
  entries into SQLite and answers the read-only queries the chat service needs
  (``user``, ``channel``, ``channels``, ``members``, ``conversations_of``, ``history``,
  ``since``, ``unread``, ``unread_counts``, ``routes``, ``outbox``, ``last_seq``).
- Commands (``RegisterUser`` … ``AckFollowUp``), ``encode_command`` / ``decode_command`` (the
  log entry bytes), ``validate`` (the input rules, shared by the service and apply).
- Results (``Posted``, ``Rejected`` with a gRPC-named ``Code``, …) and query records.
- ``dm_id`` / ``parse_dm`` — the one DM conversation id of a pair of users.
"""

from shards.chat.commands import (
    AckFollowUp,
    AddDmConversation,
    ChannelCreated,
    Code,
    Command,
    CommandKind,
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
    Result,
    RouteDropped,
    RouteSet,
    SetRoute,
    UserRegistered,
    decode_command,
    dm_id,
    encode_command,
    is_conversation,
    is_name,
    parse_dm,
    validate,
)
from shards.chat.schema import (
    ChannelInfo,
    ConversationRef,
    FollowUp,
    HistoryPage,
    Message,
    Route,
    SyncPage,
    UserRecord,
)
from shards.chat.state import DEDUP_WINDOW, MAX_PAGE, ChatState

__all__ = [
    "DEDUP_WINDOW",
    "MAX_PAGE",
    "AckFollowUp",
    "AddDmConversation",
    "ChannelCreated",
    "ChannelInfo",
    "ChatState",
    "Code",
    "Command",
    "CommandKind",
    "ConversationRef",
    "CreateChannel",
    "DmAdded",
    "DropRoute",
    "FollowUp",
    "FollowUpAcked",
    "HistoryPage",
    "Hlc",
    "JoinChannel",
    "Joined",
    "LeaveChannel",
    "Left",
    "MalformedCommand",
    "MarkRead",
    "Message",
    "PostMessage",
    "Posted",
    "ReadMarked",
    "RegisterUser",
    "Rejected",
    "Result",
    "Route",
    "RouteDropped",
    "RouteSet",
    "SetRoute",
    "SyncPage",
    "UserRecord",
    "UserRegistered",
    "decode_command",
    "dm_id",
    "encode_command",
    "is_conversation",
    "is_name",
    "parse_dm",
    "validate",
]
