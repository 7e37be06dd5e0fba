"""``AsyncChatClient``: the chat API (proto/chat.proto) for asyncio programs, with failover.

Why a library and not the generated stub: every caller would otherwise re-implement the same
hard parts, and get them subtly wrong —

- **Failover.** Any node serves any call, so the client keeps a rotation of node addresses
  (:mod:`clients.endpoints`). A call that fails with UNAVAILABLE (node down, no quorum,
  connection dropped) or a not-leader answer moves to the next node (or the hinted leader) and
  is tried again, after a capped, jittered backoff, until the call's overall deadline (default
  30 s). DEADLINE_EXCEEDED of one attempt is retried only for reads and sends: a send carries an
  idempotency key (generated here unless given) and keeps it across every retry, so the server
  answers a repeat with the first send's seq instead of storing a second message. Other
  statuses are real answers and are raised as typed errors (:mod:`clients.errors`). A
  generated key is a random 96-bit prefix drawn once per client object plus a counter: unique
  across clients and restarts like a UUID, at a seventh of the cost of ``uuid4`` per send.
- **Sessions.** :meth:`open_session` opens the bidirectional stream that pushes messages and
  events and carries sends coalesced into frames (:mod:`clients.session`); it reconnects and
  resumes on its own from the client's cursors.
- **Identity.** :meth:`login` keeps the session token and sends it as ``authorization: Bearer``
  on every later call; the Session stream also carries ``x-session-id``, a random id fixed for
  the client object, so the server moves the user's route atomically when the client roams to
  another node instead of counting a second device.

Everything returned is a frozen dataclass of :mod:`clients.models`; callers never touch protobuf.
Sends awaited one after another by one caller reach the server in that order (one FIFO queue,
and a retried send goes back to its place at the head).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast

import grpc
from google.protobuf.message import Message as ProtoMessage

from clients.endpoints import Backoff, Endpoints, from_cluster_file, from_discovery, static
from clients.errors import (
    ChatError,
    ClientClosed,
    NotLeader,
    Unauthenticated,
    from_rpc_error,
    is_transient,
)
from clients.models import (
    Account,
    Channel,
    Event,
    HistoryPage,
    OnlineSession,
    ReadMarker,
    SendReceipt,
    ServerStatus,
    SyncResult,
    Unread,
)
from clients.session import Session, SessionCall, SessionOptions
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc as pb_grpc

SESSION_ID_KEY: Final = "x-session-id"
CHANNEL_OPTIONS: Final = (
    # Reconnect to a restarted node within about a second (gRPC's default backoff grows to two
    # minutes, which would keep a recovered node out of the rotation that long).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    timeout: float = 30.0
    """Overall budget of one call, across every node and retry."""
    attempt_timeout: float = 5.0
    """Budget of one attempt of a repeatable call (reads, sends) on one node, so a hung node
    cannot eat the whole call; also how long a node may take to resume a session."""
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    max_frames_in_flight: int = 4
    """Session frames of sends awaiting results before further sends wait (and coalesce)."""
    frame_linger: float = 0.0
    """Seconds a session send waits for others to join its frame while an earlier frame
    still awaits its results (``clients.session`` says why). 0 since frames stay whole
    without it: ``python -m clients bench`` gave 1,083-1,138 sends/s with 5 ms and
    1,235-1,573 with 0, interleaved runs."""
    event_buffer: int = 100_000
    """Session events kept for a slow consumer; the oldest beyond are dropped and counted."""


class _Retry(enum.Enum):
    READ = "read"
    """Safe to repeat (a read, a keyed send): retried on DEADLINE_EXCEEDED too."""
    WRITE = "write"
    """Retried only where the server said it did nothing (UNAVAILABLE, not leader)."""


class AsyncChatClient:
    """A chat client for one user at a time (see the module docstring)."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        options: ClientOptions | None = None,
        rng: random.Random | None = None,
        session_id: str | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._options = options or ClientOptions()
        self._rng = rng if rng is not None else random.Random()
        self._backoff = Backoff(
            base=self._options.backoff_base, cap=self._options.backoff_cap, rng=self._rng
        )
        self._session_id = session_id or uuid.uuid4().hex
        self._key_prefix = secrets.token_hex(12)
        self._key_counter = itertools.count(1)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._token = ""
        self._account: Account | None = None
        self._auth: tuple[tuple[str, str], ...] = ()
        self._session: Session | None = None
        self._last_session: Session | None = None
        self._cursors: dict[str, int] = {}
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str] | str | Endpoints | None = None,
        *,
        discovery: Sequence[str] | None = None,
        cluster_file: str | Path | None = None,
        options: ClientOptions | None = None,
        rng: random.Random | None = None,
        session_id: str | None = None,
        spread: bool = False,
    ) -> AsyncChatClient:
        """A client for the nodes given by exactly one of ``endpoints`` (addresses),
        ``discovery`` (discovery replicas to ask for the cluster map) or ``cluster_file`` (a
        local cluster's ``cluster.json`` or data directory). ``spread``: start the rotation at a
        random node (from ``rng``) instead of the first, to spread many clients."""
        given = [endpoints is not None, discovery is not None, cluster_file is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of endpoints, discovery= or cluster_file=")
        rng = rng if rng is not None else random.Random()
        start_rng = rng if spread else None
        if isinstance(endpoints, Endpoints):
            eps = endpoints
        elif endpoints is not None:
            eps = static([endpoints] if isinstance(endpoints, str) else endpoints, rng=start_rng)
        elif discovery is not None:
            eps = await from_discovery(discovery, rng=start_rng)
        else:
            eps = from_cluster_file(cast("str | Path", cluster_file), rng=start_rng)
        return cls(eps, options=options, rng=rng, session_id=session_id)

    # ---- state -------------------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        return self._endpoints

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def account(self) -> Account | None:
        """Who is logged in (None before :meth:`login`)."""
        return self._account

    @property
    def token(self) -> str:
        return self._token

    @property
    def session(self) -> Session | None:
        """The open session, if any (its counters and state)."""
        return self._session if self._session is not None and self._session.is_open else None

    @property
    def cursors(self) -> dict[str, int]:
        """Conversation -> last seq the session delivered (kept after the session closes, and
        used to resume the next one)."""
        if self._session is not None:
            return self._session.cursors
        return dict(self._cursors)

    async def close(self) -> None:
        """Close the session and every connection; waiting calls fail with ClientClosed."""
        if self._closed:
            return
        self._closed = True
        await self.close_session()
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close(None)

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- accounts ----------------------------------------------------------------------------

    async def register(
        self, user: str, password: str, display_name: str = "", *, timeout: float | None = None
    ) -> Account:
        req = pb.RegisterRequest(user=user, password=password, display_name=display_name)
        resp = await self._unary("Register", req, _Retry.WRITE, timeout)
        return Account(resp.user, resp.display_name)

    async def login(self, user: str, password: str, *, timeout: float | None = None) -> Account:
        """Log in; the token is sent on every later call (and session) of this client."""
        req = pb.LoginRequest(user=user, password=password)
        resp = await self._unary("Login", req, _Retry.WRITE, timeout)
        self._token = resp.token
        self._auth = (("authorization", f"Bearer {resp.token}"),)
        self._account = Account(resp.user, resp.display_name)
        return self._account

    async def logout(self, *, timeout: float | None = None) -> None:
        """Close the session, revoke the token on the server, forget it here."""
        await self.close_session()
        try:
            await self._unary("Logout", pb.LogoutRequest(), _Retry.WRITE, timeout)
        finally:
            self._token, self._auth, self._account = "", (), None

    # ---- channels ----------------------------------------------------------------------------

    async def create_channel(self, channel: str, *, timeout: float | None = None) -> Channel:
        """Create ``channel`` (the caller joins it); AlreadyExists if the name is taken."""
        req = pb.CreateChannelRequest(channel=channel)
        resp = await self._unary("CreateChannel", req, _Retry.WRITE, timeout)
        return Channel.from_proto(resp.channel)

    async def join_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        """Join ``channel``; True if the caller was a member already."""
        req = pb.JoinChannelRequest(channel=channel)
        resp = await self._unary("JoinChannel", req, _Retry.WRITE, timeout)
        return bool(resp.already_member)

    async def leave_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        """Leave ``channel``; True if the caller was a member."""
        req = pb.LeaveChannelRequest(channel=channel)
        resp = await self._unary("LeaveChannel", req, _Retry.WRITE, timeout)
        return bool(resp.was_member)

    async def list_channels(
        self, joined_only: bool = False, *, timeout: float | None = None
    ) -> tuple[Channel, ...]:
        req = pb.ListChannelsRequest(joined_only=joined_only)
        resp = await self._unary("ListChannels", req, _Retry.READ, timeout)
        return tuple(Channel.from_proto(c) for c in resp.channels)

    # ---- messages ----------------------------------------------------------------------------

    async def send(
        self,
        text: str,
        conversation: str | None = None,
        *,
        to_user: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> SendReceipt:
        """Send ``text`` to a channel or DM id (``conversation``) or as a DM to ``to_user``;
        returns once it is committed. Over the session stream when one is open (coalesced with
        concurrent sends), else the unary Send RPC; retried with the same key either way."""
        if (conversation is None) == (to_user is None):
            raise ValueError("give exactly one of conversation and to_user")
        key = idempotency_key or f"{self._key_prefix}-{next(self._key_counter):x}"
        if conversation is not None:
            req = pb.SendRequest(conversation=conversation, text=text, idempotency_key=key)
        else:
            req = pb.SendRequest(to_user=to_user, text=text, idempotency_key=key)
        budget = self._options.timeout if timeout is None else timeout
        session = self._session
        if session is not None and session.is_open:
            return await session.send(req, budget)
        resp = await self._unary("Send", req, _Retry.READ, budget)
        return SendReceipt.from_proto(resp, key)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
        stale_ok: bool = False,
        timeout: float | None = None,
    ) -> HistoryPage:
        """One page, ascending by seq: the newest ``limit`` messages, or those just
        ``before`` / ``after`` a seq, or centred ``around`` one (at most one anchor)."""
        anchors = {"before": before, "after": after, "around": around}
        chosen = {k: v for k, v in anchors.items() if v is not None}
        if len(chosen) > 1:
            raise ValueError(f"at most one of before/after/around, got {sorted(chosen)}")
        req = pb.HistoryRequest(conversation=conversation, limit=limit, stale_ok=stale_ok)
        for name, value in chosen.items():
            setattr(req, name, value)
        resp = await self._unary("History", req, _Retry.READ, timeout)
        return HistoryPage.from_proto(resp)

    async def sync(
        self, cursors: Mapping[str, int], limit: int = 0, *, timeout: float | None = None
    ) -> SyncResult:
        """Messages after ``cursors`` (conversation -> last seq the caller has)."""
        req = pb.SyncRequest(cursors=dict(cursors), limit=limit)
        resp = await self._unary("Sync", req, _Retry.READ, timeout)
        return SyncResult.from_proto(resp)

    async def mark_read(
        self, conversation: str, seq: int, *, timeout: float | None = None
    ) -> ReadMarker:
        """Move the read marker (never back); FailedPrecondition beyond the last message."""
        req = pb.MarkReadRequest(conversation=conversation, seq=seq)
        resp = await self._unary("MarkRead", req, _Retry.WRITE, timeout)
        return ReadMarker(resp.conversation, int(resp.read_seq), int(resp.unread))

    async def unread_counts(self, *, timeout: float | None = None) -> tuple[Unread, ...]:
        resp = await self._unary("UnreadCounts", pb.UnreadCountsRequest(), _Retry.READ, timeout)
        return tuple(Unread.from_proto(u) for u in resp.conversations)

    # ---- presence and status -----------------------------------------------------------------

    async def who(
        self, channel: str = "", *, timeout: float | None = None
    ) -> tuple[OnlineSession, ...]:
        """Open sessions: of every online user, or of the members of ``channel``."""
        resp = await self._unary("Who", pb.WhoRequest(channel=channel), _Retry.READ, timeout)
        return tuple(OnlineSession.from_proto(s) for s in resp.sessions)

    async def server_status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> ServerStatus:
        """The status of ``endpoint`` (no failover: that node or an error), or of whichever
        node answers."""
        req = pb.ServerStatusRequest()
        resp = await self._unary("ServerStatus", req, _Retry.READ, timeout, endpoint=endpoint)
        return ServerStatus.from_proto(resp)

    # ---- the session -------------------------------------------------------------------------

    async def open_session(
        self, cursors: Mapping[str, int] | None = None, *, timeout: float | None = None
    ) -> None:
        """Open the Session stream and return once a node resumed it from ``cursors`` (default:
        where the previous session of this client stopped). From then on sends go over it and
        :meth:`events` yields what the server pushes; it reconnects and resumes on its own."""
        if not self._token:
            raise Unauthenticated("log in before opening a session")
        if self._closed:
            raise ClientClosed("the client is closed")
        await self.close_session()
        options = SessionOptions(
            attempt_timeout=self._options.attempt_timeout,
            max_frames_in_flight=self._options.max_frames_in_flight,
            frame_linger=self._options.frame_linger,
            event_buffer=self._options.event_buffer,
        )
        start = dict(self._cursors if cursors is None else cursors)
        session = Session(self._open_stream, self._endpoints, self._backoff, start, options)
        self._session = session
        await session.start(self._options.timeout if timeout is None else timeout)

    async def close_session(self) -> None:
        """Close the session (its pending sends fail with ClientClosed); keep its cursors."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            self._cursors = session.cursors
            self._last_session = session

    async def events(self) -> AsyncIterator[Event]:
        """What the session pushes, in order, until it closes (a CLOSED ConnectionEvent is
        last). Reconnections show up as ConnectionEvents between the messages."""
        session = self._session or self._last_session
        if session is None:
            raise RuntimeError("open_session() first")
        async for event in session.events():
            yield event

    async def event_batches(self) -> AsyncIterator[list[Event]]:
        """The same events as :meth:`events`, as lists of what arrived together (one wake-up
        per list: what a consumer that must keep up with a busy session should use)."""
        session = self._session or self._last_session
        if session is None:
            raise RuntimeError("open_session() first")
        async for batch in session.event_batches():
            yield batch

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event; None after ``timeout`` seconds, or when the session is closed and
        drained."""
        session = self._session or self._last_session
        if session is None:
            raise RuntimeError("open_session() first")
        return await session.next_event(timeout)

    def _open_stream(self, endpoint: str) -> SessionCall:
        metadata = (*self._auth, (SESSION_ID_KEY, self._session_id))
        return cast(SessionCall, self._stub(endpoint).Session(metadata=metadata))

    # ---- unary calls with failover -----------------------------------------------------------

    async def _unary(
        self,
        method: str,
        request: ProtoMessage,
        retry: _Retry,
        timeout: float | None,
        *,
        endpoint: str | None = None,
    ) -> Any:
        if self._closed:
            raise ClientClosed("the client is closed")
        budget = self._options.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        repeatable = retry is _Retry.READ
        failures = 0
        while True:
            address = endpoint or self._endpoints.current
            remaining = max(deadline - time.monotonic(), 0.001)
            attempt = min(remaining, self._options.attempt_timeout) if repeatable else remaining
            rpc = getattr(self._stub(address), method)
            try:
                return await rpc(request, timeout=attempt, metadata=self._auth)
            except grpc.aio.AioRpcError as err:
                error = from_rpc_error(err)
            if endpoint is not None or not is_transient(error, repeatable=repeatable):
                raise error
            self._move_on(address, error)
            failures += 1
            delay = self._backoff.delay(failures)
            if time.monotonic() + delay >= deadline:
                raise error
            if delay > 0:
                await asyncio.sleep(delay)  # the backoff itself, not synchronisation

    def _move_on(self, address: str, error: ChatError) -> None:
        if isinstance(error, NotLeader) and error.leader_address:
            self._endpoints.prefer(error.leader_address)
        else:
            self._endpoints.failed(address)

    def _stub(self, address: str) -> Any:
        if self._closed:
            raise ClientClosed("the client is closed")
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = pb_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
            self._stubs[address] = stub
        return stub
