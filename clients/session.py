"""The client's live connection: one bidirectional ``Session`` stream, kept alive across node
failures, with sends coalesced into frames.

Why the stream and not unary Send: the server's cost is per gRPC message, so the throughput of
many concurrent senders comes from packing their sends into few frames. The writer takes every
send queued so far (at most 256, the proto's limit) into one ``ClientFrame``. While a frame
still waits for SendResults, the next one is held back until ``frame_linger`` has passed since
its oldest send was queued (or 256 sends wait), and never more than ``max_frames_in_flight``
frames are out; a send queued while nothing is out goes at once. Senders that await their sends
come back a frame at a time, so frames keep the size they had: the answers of one frame must
release one whole next frame. That is why the writer is woken only after a whole ServerFrame is
dispatched: woken by the last result, it ran before the last sender and left with 7 of 8,
splitting frames for good (``python -m clients bench``, 8 awaiting senders per session: ~2
sends per frame, 460-550 sends/s; a 5 ms linger mended it to 660-960 sends/s, and the fake
gateway of ``python -m clients.bench_local`` now shows 8 sends per frame with or without
it, so it defaults to 0). The linger bounds what a send can wait behind a slow frame, and the
frame limit still lets a stuck frame (a group in election) be overtaken. Results come back
matched by idempotency key.

Why it survives failover without losing or doubling anything (DESIGN.md guarantees 3 and 4):

- **Cursors.** The session tracks, per conversation, the last seq delivered (from messages and
  from announced gaps). Every (re)connect resumes from them, so the new gateway pushes exactly
  what came after; a message at or below its cursor is dropped anyway (the server promises no
  duplicates; this is the belt to its braces).
- **Sends.** A send written on a stream that broke is put back at the head of the queue, in its
  original order, and written again on the next stream with the *same* idempotency key: the
  server answers a repeat with the first send's seq (``duplicate``). A send whose result is
  UNAVAILABLE / DEADLINE_EXCEEDED is re-queued after a backoff; every send has its own deadline.
- **Liveness.** The client heartbeats every ``Resumed.heartbeat_interval_ms`` and treats three
  intervals without any frame from the server as a dead gateway (a stopped process does not
  close its TCP connections), so failover does not wait for TCP keepalive.

Which errors end the session for good (bad token, malformed frame ...) versus move it to the next
node is :func:`clients.errors.is_transient` plus the connection-level codes a broken transport
shows (CANCELLED, INTERNAL, UNKNOWN, ABORTED). The session reports every state change as a
:class:`~clients.models.ConnectionEvent` in its event buffer, next to the pushed messages.

Why it is written for few objects per send (``python -m clients.bench_local`` measures it): the
benchmark client shares two cores with the nodes, so its CPU is taken from them. A send costs
one future and one small record: no timer handle (one timer armed at the earliest deadline
sweeps them all, :class:`clients.waiters.Deadlines`), no task, no queue item; a pushed message
is one deque append and wakes a waiting consumer once per frame, not per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final, cast

import grpc

from clients.endpoints import Backoff, Endpoints
from clients.errors import (
    Aborted,
    Cancelled,
    ChatError,
    ClientClosed,
    DeadlineExceeded,
    Internal,
    NotLeader,
    Unavailable,
    from_failure,
    from_rpc_error,
    is_transient,
)
from clients.models import (
    ConnectionEvent,
    ConnectionState,
    Event,
    Gap,
    GapEvent,
    MembershipEvent,
    Message,
    MessageEvent,
    PresenceEvent,
    SendReceipt,
)
from clients.waiters import Deadlines, EventBuffer
from proto import chat_pb2 as pb

log = logging.getLogger(__name__)

MAX_SENDS_PER_FRAME: Final = 256
"""The proto's limit (more and the server ends the stream RESOURCE_EXHAUSTED)."""
MISSED_HEARTBEATS: Final = 3
"""Silent intervals after which the gateway counts as dead (the server waits as many)."""
_RESULTS: Final = pb.ServerFrame.RESULTS_FIELD_NUMBER
_MESSAGES: Final = pb.ServerFrame.MESSAGES_FIELD_NUMBER
_RESUMED: Final = pb.ServerFrame.RESUMED_FIELD_NUMBER
_HEARTBEAT: Final = pb.ServerFrame.HEARTBEAT_FIELD_NUMBER

SessionCall = grpc.aio.StreamStreamCall[pb.ClientFrame, pb.ServerFrame]
OpenStream = Callable[[str], SessionCall]
"""Opens a Session stream to a node address (the client adds token and session id)."""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    attempt_timeout: float = 5.0
    """How long to wait for a node to answer the resume with ``Resumed``."""
    max_frames_in_flight: int = 2
    """Frames of sends written but not fully answered; more sends wait and coalesce."""
    frame_linger: float = 0.0
    """Seconds a send may wait for more sends to join its frame while another frame is out
    (none: a frame goes at once when nothing is out)."""
    event_buffer: int = 100_000
    """Events kept for a slow consumer; beyond, the oldest are dropped (and counted)."""


class _SendState(enum.Enum):
    QUEUED = 1
    IN_FLIGHT = 2
    WAITING = 3
    """Answered UNAVAILABLE or similar; re-queued after a backoff."""


@dataclass(eq=False, slots=True)
class _PendingSend:
    request: pb.SendRequest
    key: str
    future: asyncio.Future[SendReceipt]
    order: int
    deadline: float
    """Loop time after which the send fails (DeadlineExceeded, or its last transient error)."""
    queued_at: float
    """Loop time it last joined the queue (for the frame linger)."""
    state: _SendState = _SendState.QUEUED
    frame: int = 0
    failures: int = 0
    last_error: ChatError | None = None


class _Dropped(Exception):
    """The stream ended or went silent without a status worth keeping."""


class Session:
    """One logical session over a succession of streams (see the module docstring)."""

    def __init__(
        self,
        open_stream: OpenStream,
        endpoints: Endpoints,
        backoff: Backoff,
        cursors: Mapping[str, int],
        options: SessionOptions,
    ) -> None:
        self._open_stream = open_stream
        self._endpoints = endpoints
        self._backoff = backoff
        self._options = options
        self._cursors: dict[str, int] = {str(k): int(v) for k, v in cursors.items()}
        self._loop = asyncio.get_running_loop()
        self._events: EventBuffer[Event] = EventBuffer(self._loop, options.event_buffer)
        self._pending: dict[str, _PendingSend] = {}
        self._deadlines: Deadlines[_PendingSend] = Deadlines(self._loop, self._expire)
        self._queue: deque[_PendingSend] = deque()
        self._frames: dict[int, int] = {}
        """Frame id -> sends written in it and not answered yet."""
        self._dispatching = False
        self._next_frame_id = 1
        self._next_order = 0
        self._wake = asyncio.Event()
        self._linger_handle: asyncio.TimerHandle | None = None
        self._heartbeat_due = 0
        self._last_rx = 0.0
        self._connected = False
        self._closed = False
        self._ever_connected = False
        self._connected_once_this_run = False
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._task: asyncio.Task[None] | None = None
        self._last_error: ChatError | None = None
        self.error: ChatError | None = None
        """Why the session ended, if an error ended it."""
        self.node = ""
        """Address of the current gateway ("" while not connected)."""
        self.node_id = 0
        self.user = ""
        self.heartbeat_interval = 0.0
        # Counters for tests, benchmarks and the CLI's status line.
        self.frames_written = 0
        self.send_frames_written = 0
        self.duplicates_dropped = 0
        self.reconnects = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Open the first stream; return once it is resumed. Raises the error that ended the
        session, or the last transient one (or DeadlineExceeded) after ``timeout``."""
        self._task = asyncio.create_task(self._run(), name="raftchat-session")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            error = self._last_error or DeadlineExceeded(f"no node resumed within {timeout}s")
            await self.close(error)
            raise error from None
        except BaseException:
            await self.close()
            raise

    @property
    def is_open(self) -> bool:
        """Not closed: connected, or reconnecting in the background."""
        return not self._closed

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def events_dropped(self) -> int:
        """Events dropped because the buffer was full (a consumer too slow)."""
        return self._events.dropped

    @property
    def cursors(self) -> dict[str, int]:
        """Conversation -> last seq delivered (a copy)."""
        return dict(self._cursors)

    async def close(self, error: ChatError | None = None) -> None:
        """End the session: stop the stream, fail waiting sends, emit CLOSED. Idempotent."""
        if self._closed:
            return
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(error)

    def _finish(self, error: ChatError | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected = False
        self.error = error
        failure = error or ClientClosed("the session was closed")
        for pending in list(self._pending.values()):
            self._fail(pending, failure)
        self._deadlines.clear()
        self._queue.clear()
        self._frames.clear()
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        if not self._ready.done():
            self._ready.set_exception(failure)
            self._ready.exception()  # retrieved: start() may be gone already
        reason = "closed by the client" if error is None else str(error)
        self._emit(ConnectionEvent(ConnectionState.CLOSED, self.node, reason, error=error))

    # ---- events ------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    async def next_event(self, timeout: float | None) -> Event | None:
        """The next event; None after ``timeout`` seconds or once the session is closed and
        every event was taken."""
        buffer = self._events.buffer
        if not buffer:
            deadline = None if timeout is None else self._loop.time() + timeout
            while not buffer:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - self._loop.time()
                if left is not None and left <= 0:
                    return None
                await self._events.wait(left)  # woken with others: another may take it
        return buffer.popleft()

    async def events(self) -> AsyncIterator[Event]:
        """Every event until the session closes (the CLOSED event is the last one)."""
        buffer = self._events.buffer
        while True:
            while buffer:
                event = buffer.popleft()
                yield event
                if isinstance(event, ConnectionEvent) and event.state is ConnectionState.CLOSED:
                    return
            if self._closed:
                return
            await self._events.wait(None)

    async def event_batches(self) -> AsyncIterator[list[Event]]:
        """The same events as :meth:`events`, as lists of what arrived together: one wake-up
        and one list per batch, the cheapest way to keep up with a busy session."""
        buffer = self._events.buffer
        while True:
            if buffer:
                batch = list(buffer)
                buffer.clear()
                yield batch
            elif self._closed:
                return  # the CLOSED event was the last of the last batch
            else:
                await self._events.wait(None)

    # ---- sends -------------------------------------------------------------------------------

    async def send(self, request: pb.SendRequest, timeout: float) -> SendReceipt:
        """Queue ``request`` for the next frame and wait for its SendResult (retried on this or
        the next stream until ``timeout``)."""
        if self._closed:
            raise self.error or ClientClosed("the session is closed")
        key = request.idempotency_key
        pending = self._pending.get(key)
        if pending is None:
            now = self._loop.time()
            order = self._next_order
            self._next_order = order + 1
            future: asyncio.Future[SendReceipt] = self._loop.create_future()
            pending = _PendingSend(request, key, future, order, now + timeout, now)
            self._pending[key] = pending
            self._deadlines.add(pending)
            self._queue.append(pending)
            self._wake.set()
        # A second send with a key already pending is the same send: it shares the answer.
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller gave up: forget the send (its key may be retried later).
            self._forget(pending)
            raise

    def _expire(self, pending: _PendingSend) -> None:
        if not pending.future.done():
            error = pending.last_error or DeadlineExceeded(
                f"send {pending.key} not acknowledged in time"
            )
            self._fail(pending, error)

    def _fail(self, pending: _PendingSend, error: ChatError) -> None:
        self._forget(pending)
        if not pending.future.done():
            pending.future.set_exception(error)
            pending.future.exception()  # mark retrieved: a cancelled caller never reads it

    def _forget(self, pending: _PendingSend) -> None:
        """Drop the send from every table (its deadline goes once its future is done)."""
        if self._pending.get(pending.key) is pending:
            del self._pending[pending.key]
        self._unframe(pending)

    def _unframe(self, pending: _PendingSend) -> None:
        if pending.state is _SendState.IN_FLIGHT:
            left = self._frames.get(pending.frame)
            if left is not None:
                if left > 1:
                    self._frames[pending.frame] = left - 1
                else:
                    del self._frames[pending.frame]
                    if not self._dispatching:  # else once the whole frame is dispatched
                        self._wake.set()
        pending.state = _SendState.QUEUED
        pending.frame = 0

    def _enqueue(self, pending: _PendingSend) -> None:
        pending.queued_at = self._loop.time()
        self._queue.append(pending)
        self._wake.set()

    def _may_frame(self) -> bool:
        """Whether queued sends may go out as a frame now (see the module docstring): nothing
        is out, or the oldest has lingered long enough, or a full frame is waiting. When the
        linger holds them back, the writer is woken once it is over."""
        if not self._frames or len(self._queue) >= MAX_SENDS_PER_FRAME:
            return True
        due = self._queue[0].queued_at + self._options.frame_linger
        if self._loop.time() >= due:
            return True
        if self._linger_handle is None or self._linger_handle.when() > due:
            if self._linger_handle is not None:
                self._linger_handle.cancel()
            self._linger_handle = self._loop.call_at(due, self._linger_over)
        return False

    def _linger_over(self) -> None:
        self._linger_handle = None
        self._wake.set()

    def _next_frame(self) -> pb.ClientFrame | None:
        sends: list[pb.SendRequest] = []
        queue = self._queue
        if queue and len(self._frames) < self._options.max_frames_in_flight and self._may_frame():
            frame_id = self._next_frame_id
            pending_by_key = self._pending
            while queue and len(sends) < MAX_SENDS_PER_FRAME:
                pending = queue.popleft()
                if (
                    pending.state is not _SendState.QUEUED
                    or pending.future.done()
                    or pending_by_key.get(pending.key) is not pending
                ):
                    continue
                pending.state = _SendState.IN_FLIGHT
                pending.frame = frame_id
                sends.append(pending.request)
            if sends:
                self._next_frame_id = frame_id + 1
                self._frames[frame_id] = len(sends)
        heartbeat, self._heartbeat_due = self._heartbeat_due, 0
        if not sends and not heartbeat:
            return None
        return pb.ClientFrame(sends=sends, heartbeat=heartbeat)

    def _requeue_in_flight(self) -> None:
        """The stream broke: everything written on it goes back to the head of the queue, in
        the order it was first sent."""
        for pending in self._pending.values():
            if pending.state is _SendState.IN_FLIGHT:
                pending.state = _SendState.QUEUED
                pending.frame = 0
        self._frames.clear()
        queued = [p for p in self._pending.values() if p.state is _SendState.QUEUED]
        self._queue = deque(sorted(queued, key=lambda p: p.order))

    def _on_result(self, result: pb.SendResult) -> None:
        key = result.idempotency_key
        pending = self._pending.get(key)
        if pending is None or pending.state is not _SendState.IN_FLIGHT:
            return  # a late answer for a send that timed out, or a result from an old stream
        if result.HasField("sent"):
            self._forget(pending)
            if not pending.future.done():
                pending.future.set_result(SendReceipt.from_proto(result.sent, key))
            return
        error = from_failure(result.error)
        if not is_transient(error, repeatable=True):
            self._fail(pending, error)
            return
        self._unframe(pending)
        pending.state = _SendState.WAITING
        pending.failures += 1
        pending.last_error = error
        delay = self._backoff.delay(pending.failures + 1)
        self._loop.call_later(delay, self._retry, pending)

    def _retry(self, pending: _PendingSend) -> None:
        if pending.state is _SendState.WAITING and self._pending.get(pending.key) is pending:
            pending.state = _SendState.QUEUED
            self._enqueue(pending)

    # ---- the stream --------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            endpoint = self._endpoints.current
            try:
                await self._connection(endpoint)
                error: ChatError = Unavailable("the server ended the session stream")
            except grpc.aio.AioRpcError as err:
                error = from_rpc_error(err)
            except _Dropped as err:
                error = Unavailable(str(err))
            except (asyncio.InvalidStateError, grpc.aio.UsageError, TimeoutError) as err:
                error = Unavailable(f"stream failed: {err!r}")
            finally:
                self._connected = False
                self._requeue_in_flight()
            if self._closed:
                return
            if not _session_transient(error):
                self._finish(error)
                return
            self._last_error = error
            failures = 1 if self._connected_once_this_run else failures + 1
            self._connected_once_this_run = False
            if isinstance(error, NotLeader) and error.leader_address:
                self._endpoints.prefer(error.leader_address)
            else:
                self._endpoints.failed(endpoint)
            delay = self._backoff.delay(failures)
            self.node, self.node_id = "", 0
            self._emit(
                ConnectionEvent(
                    ConnectionState.RECONNECTING, endpoint, str(error), in_seconds=delay
                )
            )
            log.info("session to %s ended (%s); reconnecting in %.2fs", endpoint, error, delay)
            if delay > 0:
                await asyncio.sleep(delay)  # the backoff itself, not synchronisation

    async def _connection(self, endpoint: str) -> None:
        """One stream: resume, then read, write and heartbeat until one of them ends."""
        call = self._open_stream(endpoint)
        try:
            first = pb.ClientFrame(resume=pb.Resume(cursors=self._cursors))
            timeout = self._options.attempt_timeout
            await asyncio.wait_for(call.write(first), timeout)
            self.frames_written += 1
            reply = await asyncio.wait_for(call.read(), timeout)
            if not isinstance(reply, pb.ServerFrame):  # grpc.aio.EOF
                raise _Dropped(f"{endpoint} ended the stream before resuming it")
            if not reply.HasField("resumed"):
                raise _Dropped(f"{endpoint} answered the resume without Resumed")
            self._on_resumed(reply.resumed, endpoint)
            self._dispatch(reply)
            await self._pump(call)
        finally:
            call.cancel()

    def _on_resumed(self, resumed: pb.Resumed, endpoint: str) -> None:
        for conversation, seq in resumed.cursors.items():
            self._cursors.setdefault(conversation, int(seq))
        self.node, self.node_id, self.user = endpoint, int(resumed.node_id), resumed.user
        self.heartbeat_interval = resumed.heartbeat_interval_ms / 1000
        self._last_rx = self._loop.time()
        self._connected = True
        self._connected_once_this_run = True
        state = ConnectionState.RESUMED if self._ever_connected else ConnectionState.CONNECTED
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._emit(ConnectionEvent(state, endpoint, node_id=self.node_id))
        if not self._ready.done():
            self._ready.set_result(None)
        self._wake.set()  # sends queued while disconnected go out now

    async def _pump(self, call: SessionCall) -> None:
        tasks = [
            asyncio.create_task(self._read_loop(call)),
            asyncio.create_task(self._write_loop(call)),
        ]
        if self.heartbeat_interval > 0:
            tasks.append(asyncio.create_task(self._heartbeat_loop(self.heartbeat_interval)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # the reader first: its status says most about why it ended
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise cast("BaseException", task.exception())

    async def _read_loop(self, call: SessionCall) -> None:
        while True:
            frame = await call.read()
            if not isinstance(frame, pb.ServerFrame):  # grpc.aio.EOF
                raise _Dropped("the server ended the session stream")
            self._last_rx = self._loop.time()
            self._dispatch(frame)

    async def _write_loop(self, call: SessionCall) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (frame := self._next_frame()) is not None:
                await call.write(frame)
                self.frames_written += 1
                if frame.sends:
                    self.send_frames_written += 1

    async def _heartbeat_loop(self, interval: float) -> None:
        beat = 0
        while True:
            await asyncio.sleep(interval)  # the heartbeat period, not synchronisation
            silent = self._loop.time() - self._last_rx
            if silent > MISSED_HEARTBEATS * interval:
                raise _Dropped(f"no frame from {self.node} for {silent:.1f}s")
            beat += 1
            self._heartbeat_due = beat
            self._wake.set()

    # ---- what the server pushes --------------------------------------------------------------

    def _dispatch(self, frame: pb.ServerFrame) -> None:
        """Hand a frame's contents on. ``ListFields`` names the few fields a frame has (results
        and messages, nearly always): touching each empty repeated field costs as much. A send
        frame freed by these results wakes the writer only after the whole frame, so the
        senders the results released are all queued by then and share the next frame."""
        results = messages = None
        rare = False
        for descriptor, value in frame.ListFields():
            number = descriptor.number
            if number == _RESULTS:
                results = value
            elif number == _MESSAGES:
                messages = value
            elif number != _RESUMED and number != _HEARTBEAT:
                rare = True
        gaps = [Gap.from_proto(g) for g in frame.gaps] if rare else []
        if messages is not None:
            on_message = self._on_message
            for message in messages:
                if gaps:
                    # A gap before this message's seq comes first, so a skipped range and the
                    # messages after it arrive (and move the cursor) in order.
                    for gap in [g for g in gaps if g.conversation == message.conversation]:
                        if gap.first_seq < message.seq:
                            gaps.remove(gap)
                            self._on_gap(gap)
                on_message(message)
        for gap in gaps:
            self._on_gap(gap)
        if results is not None:
            self._dispatching = True
            frames = len(self._frames)
            try:
                on_result = self._on_result
                for result in results:
                    on_result(result)
            finally:
                self._dispatching = False
            if len(self._frames) < frames:
                self._wake.set()
        if rare:
            for presence in frame.presence:
                self._emit(PresenceEvent.from_proto(presence))
            for membership in frame.membership:
                self._emit(MembershipEvent.from_proto(membership))
            for failure in frame.errors:
                log.warning("session frame item failed: %s", from_failure(failure))

    def _on_message(self, proto: pb.ChatMessage) -> None:
        seq = proto.seq
        conversation = proto.conversation
        cursors = self._cursors
        if seq <= cursors.get(conversation, 0):
            self.duplicates_dropped += 1
            return
        cursors[conversation] = seq
        self._events.put(MessageEvent(Message.from_proto(proto)))

    def _on_gap(self, gap: Gap) -> None:
        if gap.last_seq > self._cursors.get(gap.conversation, 0):
            self._cursors[gap.conversation] = gap.last_seq
        self._emit(GapEvent(gap))


def _session_transient(error: ChatError) -> bool:
    """A stream that broke for one of these moves to the next node; others end the session.
    Besides :func:`is_transient`, a broken transport shows as CANCELLED (by the server), INTERNAL
    (RST_STREAM), ABORTED or UNKNOWN, and the session resumes either way."""
    if is_transient(error, repeatable=True):
        return True
    if isinstance(error, ClientClosed):
        return False
    return isinstance(error, Cancelled | Internal | Aborted) or (
        error.code is grpc.StatusCode.UNKNOWN
    )
