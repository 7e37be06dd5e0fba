"""The public ``Chat`` gRPC servicer: converts calls to :class:`ChatService` and back.

Nothing here decides anything about chat: a unary call is handed to the service with its
metadata, and an ``ApiError`` becomes the call's status, with ``x-field`` (and
``x-retry-after-ms``) in trailing metadata. The Session stream is run here as three parts: the
reader (client frames, one after another), the session's pusher (``ChatSession.push_forever``),
and the writer (this coroutine, draining ``session.out``); whichever ends first ends the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc

from cluster.host import NodeHost
from cluster.types import NodeId
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc as pb_grpc
from shards.chat import api, queries
from shards.chat.api import ApiError
from shards.chat.hub import PushHub
from shards.chat.service import ChatService, Metadata
from shards.chat.session import HEARTBEAT_INTERVAL_MS, ChatSession, SessionEnded, session_id_from

log = logging.getLogger("shards.chat.servicer")

Context = grpc.aio.ServicerContext[object, object]
EOF: Final[object] = getattr(grpc.aio, "EOF")  # noqa: B009 - missing from grpc-stubs
Req = TypeVar("Req")
Resp = TypeVar("Resp")

FIRST_FRAME_TIMEOUT: Final = 10.0
FRAMES_IN_FLIGHT: Final = 16
"""Client frames of one session handled at once (each waits for its commits)."""
MERGED_FRAME_BYTES: Final = 1 << 20
"""Queued frames are merged into one stream message up to this size (catch-up pages stay
apart: a client's default receive limit is 4 MiB)."""
VERSION: Final = "0.4.0"


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What ServerStatus reports about the node besides its groups."""

    node_id: NodeId
    cluster_id: str
    map_epoch: Callable[[], int]
    fsync: bool
    started: float


async def _answer(
    context: Context, call: Callable[[Req, Metadata], Awaitable[Resp]], request: Req
) -> Resp:
    try:
        return await call(request, context.invocation_metadata())
    except ApiError as exc:
        context.set_trailing_metadata(exc.trailing_metadata())
        await context.abort(exc.code, exc.details)
        raise  # abort raises; this line keeps type checkers honest


class ChatServicer(pb_grpc.ChatServicer):
    def __init__(
        self, service: ChatService, hub: PushHub, host: NodeHost, facts: NodeFacts
    ) -> None:
        self._svc = service
        self._hub = hub
        self._host = host
        self._facts = facts
        self._stopping: set[asyncio.Future[None]] = set()

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        return await _answer(context, self._svc.register, request)

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        return await _answer(context, self._svc.login, request)

    async def Logout(self, request: pb.LogoutRequest, context: Context) -> pb.LogoutResponse:
        return await _answer(context, self._svc.logout, request)

    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Context
    ) -> pb.CreateChannelResponse:
        return await _answer(context, self._svc.create_channel, request)

    async def JoinChannel(
        self, request: pb.JoinChannelRequest, context: Context
    ) -> pb.JoinChannelResponse:
        return await _answer(context, self._svc.join_channel, request)

    async def LeaveChannel(
        self, request: pb.LeaveChannelRequest, context: Context
    ) -> pb.LeaveChannelResponse:
        return await _answer(context, self._svc.leave_channel, request)

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: Context
    ) -> pb.ListChannelsResponse:
        return await _answer(context, self._svc.list_channels, request)

    async def Send(self, request: pb.SendRequest, context: Context) -> pb.SendResponse:
        return await _answer(context, self._svc.send, request)

    async def History(self, request: pb.HistoryRequest, context: Context) -> pb.HistoryResponse:
        return await _answer(context, self._svc.history, request)

    async def Sync(self, request: pb.SyncRequest, context: Context) -> pb.SyncResponse:
        return await _answer(context, self._svc.sync, request)

    async def MarkRead(self, request: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        return await _answer(context, self._svc.mark_read, request)

    async def UnreadCounts(
        self, request: pb.UnreadCountsRequest, context: Context
    ) -> pb.UnreadCountsResponse:
        return await _answer(context, self._svc.unread_counts, request)

    async def Who(self, request: pb.WhoRequest, context: Context) -> pb.WhoResponse:
        return await _answer(context, self._svc.who, request)

    async def ServerStatus(
        self, request: pb.ServerStatusRequest, context: Context
    ) -> pb.ServerStatusResponse:
        return await _answer(context, self._status, request)

    async def _status(
        self, request: pb.ServerStatusRequest, metadata: Metadata
    ) -> pb.ServerStatusResponse:
        await self._svc.authenticate(metadata)
        facts = self._facts
        return pb.ServerStatusResponse(
            node_id=int(facts.node_id),
            cluster_id=facts.cluster_id,
            version=VERSION,
            uptime_ms=int((time.monotonic() - facts.started) * 1000),
            map_epoch=facts.map_epoch(),
            sessions=len(self._hub.sessions),
            groups=[
                pb.GroupState(
                    group=int(s.group),
                    role=s.role.name.lower().replace("_", "-"),
                    leader=int(s.leader),
                    term=s.term,
                    applied=s.applied,
                )
                for s in self._host.status()
            ],
            fsync=facts.fsync,
        )

    # ---- the session stream ------------------------------------------------------------------

    async def Session(self, request_iterator: object, context: Context) -> None:
        metadata: Iterable[tuple[str, str | bytes]] = context.invocation_metadata() or ()
        session: ChatSession | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            caller = await self._svc.authenticate(metadata)
            session_id = session_id_from(metadata)
            first = await self._first_frame(context)
            parsed = api.parse_client_frame(first, caller.user, first=True)
            record = await self._svc.router.query(
                self._svc.user_group(caller.user),
                queries.UserLookup(caller.user),
                linearizable=False,
            )
            display = record.display_name if record is not None else ""
            session = ChatSession(
                caller, display, session_id, self._facts.node_id, self._svc, self._hub
            )
            await session.start(parsed.resume)
            if parsed.sends or parsed.mark_reads or parsed.heartbeat:
                session.out.put_nowait(await session.handle_frame(parsed))
            tasks = [
                asyncio.create_task(session.push_forever()),
                asyncio.create_task(self._read_frames(context, session)),
            ]
            await self._write(context, session, tasks)
        except ApiError as exc:
            context.set_trailing_metadata(exc.trailing_metadata())
            await context.abort(exc.code, exc.details)
        except SessionEnded as exc:
            await context.abort(exc.code, exc.details)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if session is not None:
                # The handler may be ending because its RPC was cancelled: the route's removal
                # must not be cancelled with it (a ghost would stay online), so it runs in a
                # task of its own that the servicer holds until done.
                stopper = asyncio.ensure_future(session.stop())
                self._stopping.add(stopper)
                stopper.add_done_callback(self._stopping.discard)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(stopper)

    async def _first_frame(self, context: Context) -> pb.ClientFrame:
        try:
            async with asyncio.timeout(FIRST_FRAME_TIMEOUT):
                frame = await context.read()
        except TimeoutError as exc:
            raise SessionEnded(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no first frame within 10 s"
            ) from exc
        if frame is EOF:
            raise SessionEnded(grpc.StatusCode.CANCELLED, "the client closed the stream")
        assert isinstance(frame, pb.ClientFrame)
        return frame

    async def _read_frames(self, context: Context, session: ChatSession) -> None:
        """Client frames as they come, up to FRAMES_IN_FLIGHT handled at once (a frame waits
        for its commits; the next one need not wait for it: sends a client awaits one after
        another are never in two frames at once, so their order holds). Silence for three
        heartbeat intervals ends the session."""
        idle = 3 * HEARTBEAT_INTERVAL_MS / 1000
        last_check = time.monotonic()
        slots = asyncio.Semaphore(FRAMES_IN_FLIGHT)
        async with asyncio.TaskGroup() as frames:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        frame = await context.read()
                except TimeoutError as exc:
                    raise SessionEnded(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"no frame for {idle:.0f} s"
                    ) from exc
                if frame is EOF:
                    break
                assert isinstance(frame, pb.ClientFrame)
                parsed = api.parse_client_frame(frame, session.user, first=False)
                if time.monotonic() - last_check > HEARTBEAT_INTERVAL_MS / 1000:
                    last_check = time.monotonic()
                    if not await self._svc.still_valid(session.caller):
                        raise SessionEnded(grpc.StatusCode.UNAUTHENTICATED, "logged out")
                await slots.acquire()
                frames.create_task(self._answer_frame(session, parsed, slots))
        raise SessionEnded(grpc.StatusCode.OK, "the client closed the stream")

    @staticmethod
    async def _answer_frame(
        session: ChatSession, parsed: api.SessionFrame, slots: asyncio.Semaphore
    ) -> None:
        try:
            session.out.put_nowait(await session.handle_frame(parsed))
        finally:
            slots.release()

    async def _write(
        self, context: Context, session: ChatSession, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Write frames until a task ends; its error (if any) ends the stream.

        Frames already queued behind the one taken are merged into it (up to
        MERGED_FRAME_BYTES) when both hold only send results and pushed messages
        (``_merges``): the cost of the stream is per gRPC message, and a frame's answers and
        the pushes of the same commits are usually queued together. Messages keep their order
        (a conversation's seqs stay ascending); results are matched by key; anything else
        (resume, presence, membership, gaps, errors, heartbeat echoes) is written as its own
        frame in queue order."""
        out = session.out
        for task in tasks:  # learnt in queue order, after the frames queued before it ended
            task.add_done_callback(lambda _: out.put_nowait(_TASK_ENDED))
        held: pb.ServerFrame | SessionEnded | None = None
        while True:
            if held is not None:
                item, held = held, None
            else:
                item = await session.out.get()
            if item is _TASK_ENDED:
                await self._end(context, session, tasks)
                return
            if isinstance(item, SessionEnded):
                raise item
            if _merges(item):
                size = item.ByteSize()
                while held is None and not session.out.empty():
                    queued = session.out.get_nowait()
                    more = queued.ByteSize() if isinstance(queued, pb.ServerFrame) else 0
                    if (
                        isinstance(queued, pb.ServerFrame)
                        and _merges(queued)
                        and size + more <= MERGED_FRAME_BYTES
                    ):
                        item.results.extend(queued.results)
                        item.messages.extend(queued.messages)
                        size += more
                    else:
                        held = queued
            await context.write(item)

    @staticmethod
    async def _end(context: Context, session: ChatSession, tasks: list[asyncio.Task[None]]) -> None:
        """A task of the stream ended: if the client closed it cleanly, write what is ready;
        else raise the task's error."""
        for task in tasks:
            if task.done():
                exc = task.exception()
                if isinstance(exc, SessionEnded) and exc.code is grpc.StatusCode.OK:
                    while not session.out.empty():  # flush what is ready
                        item = session.out.get_nowait()
                        if isinstance(item, pb.ServerFrame):
                            await context.write(item)
                    return
                if exc is not None:
                    raise exc
                return


_TASK_ENDED: Final = SessionEnded(grpc.StatusCode.OK, "a task of the stream ended")
"""Queued by a stream task's done-callback: one queue to wait on, not ``asyncio.wait`` over
the queue and the tasks for every frame written (a new future and three callbacks each)."""


def _merges(frame: pb.ServerFrame) -> bool:
    """Whether ``frame`` holds nothing but send results and pushed messages (so it may be
    merged with its neighbours in the queue without reordering anything the client sees)."""
    return not (
        frame.presence
        or frame.membership
        or frame.gaps
        or frame.errors
        or frame.heartbeat
        or frame.HasField("resumed")
    )
