"""Typed errors of the chat API: one exception class per gRPC status the API answers with.

Why classes and not a status code to compare: a caller writes ``except NotFound`` or ``except
RateLimited as e: await asyncio.sleep(e.retry_after_ms / 1000)`` and never imports grpc. The
same classes come from both places an error can arrive: a unary call's status
(:func:`from_rpc_error`, reading the trailing metadata ``x-field``, ``x-retry-after-ms``,
``x-leader-id`` / ``x-leader``) and a failed item of a session frame (:func:`from_failure`, a
``Failure`` proto with the same information in fields).

Which errors the client retries by itself is decided here too, once (:func:`is_transient`), so
unary calls, session sends and the session stream follow one rule:

- UNAVAILABLE (no quorum, node down, connection dropped) and a *not-leader* answer
  (FAILED_PRECONDITION carrying ``x-leader-id``, :class:`NotLeader`) are retried for every call;
- DEADLINE_EXCEEDED only for calls that are safe to repeat: reads, and sends (which carry an
  idempotency key, so a repeat never doubles a message);
- everything else (INVALID_ARGUMENT, UNAUTHENTICATED, FAILED_PRECONDITION *without* a leader
  hint, which is a real answer such as MarkRead beyond the end, ...) is raised to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

import grpc

from proto import chat_pb2 as pb

FIELD_KEY: Final = "x-field"
RETRY_AFTER_KEY: Final = "x-retry-after-ms"
LEADER_ID_KEY: Final = "x-leader-id"
LEADER_ADDRESS_KEY: Final = "x-leader"


class ChatError(Exception):
    """A refused or failed chat call.

    ``code`` is the gRPC status, ``field`` the request field at fault (``sends[2].text``; "" if
    none was named), ``details`` the server's text, ``retry_after_ms`` when a rate-limited call
    may be repeated (0: not said). ``leader_id`` / ``leader_address`` are the not-leader hint
    (0 / "" when absent or unknown).
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        field: str = "",
        retry_after_ms: int = 0,
        leader_id: int = 0,
        leader_address: str = "",
    ) -> None:
        self.code: grpc.StatusCode = self.default_code if code is None else code
        self.details = details
        self.field = field
        self.retry_after_ms = retry_after_ms
        self.leader_id = leader_id
        self.leader_address = leader_address
        super().__init__(f"{self.code.name}: {details}" if details else self.code.name)


class InvalidArgument(ChatError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ChatError):
    """Over a size limit (text, sends per frame, cursors) or the send rate."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """The per-user send rate: retry after ``retry_after_ms``."""


class Unauthenticated(ChatError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ChatError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ChatError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ChatError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ChatError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class NotLeader(FailedPrecondition):
    """The node is not the leader of the group the call needs (it named ``x-leader-id``): the
    client moves to another node, to ``leader_address`` if the node knew it."""


class Unavailable(ChatError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ChatError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ChatError):
    default_code = grpc.StatusCode.INTERNAL


class Unimplemented(ChatError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class Aborted(ChatError):
    default_code = grpc.StatusCode.ABORTED


class Cancelled(ChatError):
    default_code = grpc.StatusCode.CANCELLED


class ClientClosed(Cancelled):
    """The client (or its session) was closed while the call was waiting."""


_BY_CODE: Final[dict[grpc.StatusCode, type[ChatError]]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Internal,
        Unimplemented,
        Aborted,
        Cancelled,
    )
}
_CODE_BY_NUMBER: Final[dict[int, grpc.StatusCode]] = {
    cast("tuple[int, str]", c.value)[0]: c for c in grpc.StatusCode
}


def make_error(
    code: grpc.StatusCode,
    details: str,
    *,
    field: str = "",
    retry_after_ms: int = 0,
    leader_id: int | None = None,
    leader_address: str = "",
) -> ChatError:
    """The typed error for ``code``; ``leader_id`` not None marks a not-leader answer."""
    cls = _BY_CODE.get(code, ChatError)
    if cls is ResourceExhausted and retry_after_ms > 0:
        cls = RateLimited
    if cls is FailedPrecondition and leader_id is not None:
        cls = NotLeader
    return cls(
        details,
        code=code,
        field=field,
        retry_after_ms=retry_after_ms,
        leader_id=leader_id or 0,
        leader_address=leader_address,
    )


def from_rpc_error(err: grpc.aio.AioRpcError) -> ChatError:
    """The typed error for a failed call, with the hints of its trailing metadata."""
    meta = _metadata(err.trailing_metadata())
    leader = meta.get(LEADER_ID_KEY)
    chat_error = make_error(
        err.code(),
        err.details() or "",
        field=meta.get(FIELD_KEY, ""),
        retry_after_ms=_int(meta.get(RETRY_AFTER_KEY, "")),
        leader_id=None if leader is None else _int(leader),
        leader_address=meta.get(LEADER_ADDRESS_KEY, ""),
    )
    chat_error.__cause__ = err
    return chat_error


def from_failure(failure: pb.Failure) -> ChatError:
    """The typed error for a failed item of a session frame (a SendResult's ``error``, an entry
    of ``ServerFrame.errors``)."""
    code = _CODE_BY_NUMBER.get(failure.code, grpc.StatusCode.UNKNOWN)
    details = f"{failure.field}: {failure.message}" if failure.field else failure.message
    return make_error(
        code, details, field=failure.field, retry_after_ms=int(failure.retry_after_ms)
    )


def is_transient(error: ChatError, *, repeatable: bool) -> bool:
    """Whether the client should retry ``error`` elsewhere or later by itself. ``repeatable``:
    the call may run twice without harm (a read, or a send with its idempotency key)."""
    if isinstance(error, Unavailable | NotLeader):
        return True
    return repeatable and isinstance(error, DeadlineExceeded)


def _metadata(raw: object) -> dict[str, str]:
    # grpc-stubs types trailing metadata as grpc's sync metadata; at run time it is
    # grpc.aio.Metadata (or None), which iterates as (key, value) pairs.
    pairs = cast("Iterable[tuple[str, str | bytes]]", raw or ())
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value if isinstance(value, str) else value.decode(errors="replace"))
    return out


def _int(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0
