"""Chat results: what applying a command returns (``ChatState.apply``, one per entry), and the
hybrid-logical-clock stamp a stored message carries.

Why apart from ``commands``: the commands, their rules and their byte encoding are what goes into
the log; the results are what comes out of applying it, and need none of that. ``commands``
re-exports every name here, so imports from either module work.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Hlc:
    """A hybrid-logical-clock stamp: wall milliseconds, then a counter. Ordered as a tuple."""

    ms: int
    counter: int

    def tick(self) -> Hlc:
        """The smallest stamp strictly after this one."""
        return Hlc(self.ms, self.counter + 1)


class Code(enum.Enum):
    """Why a command was refused; the names are gRPC status codes (``grpc.StatusCode[c.name]``)."""

    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The command changed nothing. ``field`` names the offending command field (``"command"``
    for bytes that did not decode)."""

    code: Code
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class UserRegistered:
    user: str
    duplicate: bool
    """The identical RegisterUser was applied before (a retried proposal): nothing written."""


@dataclass(frozen=True, slots=True)
class ChannelCreated:
    channel: str
    duplicate: bool
    """The identical CreateChannel was applied before (a retried proposal): nothing written."""


@dataclass(frozen=True, slots=True)
class Joined:
    channel: str
    user: str
    already_member: bool


@dataclass(frozen=True, slots=True)
class Left:
    channel: str
    user: str
    was_member: bool


@dataclass(frozen=True, slots=True)
class Posted:
    """The message's place in its conversation. ``duplicate``: the sender's idempotency key was
    seen in this conversation before; ``seq``/``hlc`` are the original message's, nothing was
    written. ``follow_ups``: outbox ids created (a DM's first message), for the service to run."""

    conversation: str
    seq: int
    hlc: Hlc
    duplicate: bool
    follow_ups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadMarked:
    user: str
    conversation: str
    read_seq: int
    """The marker after the command (unchanged when ``seq`` was not ahead of it)."""
    unread: int


@dataclass(frozen=True, slots=True)
class RouteSet:
    user: str
    session_id: str
    gateway_node: int
    previous_node: int
    """Where the session was routed before (0: nowhere), so the old gateway can be told."""


@dataclass(frozen=True, slots=True)
class RouteDropped:
    user: str
    session_id: str
    dropped: bool


@dataclass(frozen=True, slots=True)
class DmAdded:
    user: str
    conversation: str
    added: bool
    """False when the conversation was already listed (a repeated follow-up)."""


@dataclass(frozen=True, slots=True)
class FollowUpAcked:
    outbox_id: int
    existed: bool


@dataclass(frozen=True, slots=True)
class SessionOpened:
    user: str
    duplicate: bool
    """The identical OpenSession was applied before (a retried proposal): nothing written."""


@dataclass(frozen=True, slots=True)
class SessionClosed:
    user: str
    closed: bool
    """False when there was no such open session of ``user`` (a repeated logout)."""


Result = (
    Rejected
    | UserRegistered
    | ChannelCreated
    | Joined
    | Left
    | Posted
    | ReadMarked
    | RouteSet
    | RouteDropped
    | DmAdded
    | FollowUpAcked
    | SessionOpened
    | SessionClosed
)
