"""The Python client library of raftchat; the terminal chat client is ``python -m clients.chat``.

Public API (everything a caller needs; nothing here returns protobuf):

- :class:`AsyncChatClient` (asyncio) and :class:`ChatClient` (blocking, its own loop thread):
  accounts, channels, sends, history, sync, read markers, presence, status, and the session
  stream with :meth:`~AsyncChatClient.events`. Both fail over between nodes on their own.
- :class:`ClientOptions` — deadlines, backoff, session coalescing window, event buffer.
- :mod:`clients.endpoints` — where the nodes are: :func:`static`, :func:`from_cluster_file`,
  :func:`from_discovery`, and the :class:`Endpoints` rotation.
- :mod:`clients.models` — the frozen values returned and the session's events.
- :mod:`clients.errors` — one exception per gRPC status (:class:`ChatError` and subclasses).

Why these layers: failover, exactly-once retries and resumable sessions are the hard part of
talking to a replicated service, so they live here once instead of in every caller.
"""

from clients.client import AsyncChatClient, ClientOptions
from clients.endpoints import Backoff, Endpoints, from_cluster_file, from_discovery, static
from clients.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ChatError,
    ClientClosed,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotLeader,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_failure,
    from_rpc_error,
)
from clients.models import (
    Account,
    Channel,
    ConnectionEvent,
    ConnectionState,
    Event,
    Gap,
    GapEvent,
    GroupState,
    HistoryPage,
    MembershipChange,
    MembershipEvent,
    Message,
    MessageEvent,
    OnlineSession,
    PresenceEvent,
    ReadMarker,
    SendReceipt,
    ServerStatus,
    SyncResult,
    Unread,
)
from clients.sync_client import ChatClient

__all__ = [
    "Aborted",
    "Account",
    "AlreadyExists",
    "AsyncChatClient",
    "Backoff",
    "Cancelled",
    "Channel",
    "ChatClient",
    "ChatError",
    "ClientClosed",
    "ClientOptions",
    "ConnectionEvent",
    "ConnectionState",
    "DeadlineExceeded",
    "Endpoints",
    "Event",
    "FailedPrecondition",
    "Gap",
    "GapEvent",
    "GroupState",
    "HistoryPage",
    "Internal",
    "InvalidArgument",
    "MembershipChange",
    "MembershipEvent",
    "Message",
    "MessageEvent",
    "NotFound",
    "NotLeader",
    "OnlineSession",
    "PermissionDenied",
    "PresenceEvent",
    "RateLimited",
    "ReadMarker",
    "ResourceExhausted",
    "SendReceipt",
    "ServerStatus",
    "SyncResult",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unread",
    "from_cluster_file",
    "from_discovery",
    "from_failure",
    "from_rpc_error",
    "static",
]
