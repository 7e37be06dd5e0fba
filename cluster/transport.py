"""Raft messages between nodes over gRPC: one long-lived stream per peer, shared by all groups.

Sending (``GrpcTransport``): ``send(messages)`` never blocks and never fails. Each message goes
into the bounded queue of the node it is addressed to; a sender task per peer drains everything
queued into ONE ``MessageBatch`` per stream write (many groups, many messages), so the number of
writes follows the number of loop turns, not the number of groups. A broken stream is reopened
with exponential backoff (capped at ``MAX_BACKOFF``); what was being written when it broke is
lost, which Raft tolerates (it retransmits from its own state: probes, stall detection, election
timeouts).

Full queue policy: **drop the oldest** message (and count it). A queue fills up when its peer is
down, hung or far slower than we are; by then the oldest messages are the stalest: heartbeats of
past rounds, votes and appends of earlier terms, appends the leader will resend anyway after its
stall detection. Keeping the newest ones means a peer that comes back first hears the current
term and commit index, which is what lets it rejoin. (Dropping the newest, as etcd's rafthttp
does, would deliver a backlog of stale traffic first; either way Raft recovers.)

Receiving (``add_transport_servicer``): a thin servicer decodes each batch with ``cluster.codec``
and hands the messages to a sink (the node host's inbox). A batch that does not decode is
dropped and counted, logged once, and the stream is ended with INVALID_ARGUMENT naming the field:
a peer that sends undecodable data is buggy or foreign, and ending its stream tells it so (it
reconnects; batches already delivered stay delivered) without ever taking the server down.

Keep-alive pings are deliberately not enabled: a gRPC server counts client pings on a stream on
which it sends no data as abuse (``GOAWAY too_many_pings``) unless every server of ours were
configured to allow them. A killed peer is detected by its closed TCP connection; a hung peer
fills its HTTP/2 window, our writes wait, and its queue drops the oldest messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from cluster import codec, streamlink
from cluster.codec import CodecError
from cluster.messages import AppendRequest, Message, SnapshotChunk
from cluster.types import NodeId
from proto import raft_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"].full_name
"""``raftchat.raft.RaftTransport`` (for health and reflection registrations)."""
_SEND_METHOD = f"/{SERVICE_NAME}/Send"
_LINK_METHOD = f"/{SERVICE_NAME}/Link"
LINK_QUERY_TIMEOUT = 2.0
"""Seconds to wait for a peer to say where its plain TCP link listens."""

MAX_MESSAGE_BYTES = 64 << 20
"""What ``CHANNEL_OPTIONS`` and ``SERVER_OPTIONS`` let through in one gRPC message."""
DEFAULT_BATCH_BYTES = 3 << 20
"""Estimated payload per ``MessageBatch``; below gRPC's default 4 MiB receive limit so a server
created without ``SERVER_OPTIONS`` still accepts every batch (a single bigger message is sent
alone)."""
DEFAULT_QUEUE_MESSAGES = 10_000
DEFAULT_QUEUE_BYTES = 64 << 20
INITIAL_BACKOFF = 0.05
MAX_BACKOFF = 1.0

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a restarted peer must be
    # reachable again within our own (capped) backoff.
    ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(INITIAL_BACKOFF * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)),
)
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
"""Recommended for the internal server (not required: batches stay under the default limit)."""


# ---------------------------------------------------------------------------------------------
# Receiving
# ---------------------------------------------------------------------------------------------


class MessageSink(Protocol):
    """Where inbound messages go: ``cluster.host.NodeHost`` is one."""

    def deliver(self, messages: Sequence[Message]) -> None: ...


Deliver = Callable[[Sequence[Message]], None]


@dataclass(frozen=True, slots=True)
class InboundStats:
    messages: int
    batches: int
    rejected_batches: int
    streams: int


class TransportServicer:
    """The server side of ``RaftTransport.Send``: convert, validate, hand off."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._messages = 0
        self._batches = 0
        self._rejected = 0
        self._streams = 0

    @property
    def stats(self) -> InboundStats:
        return InboundStats(self._messages, self._batches, self._rejected, self._streams)

    async def send(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> bytes:
        """One peer's stream: every batch is decoded and delivered in arrival order."""
        self._streams += 1
        accepted = 0
        async for data in request_iterator:
            try:
                messages = codec.decode_batch(data)
            except CodecError as exc:
                self._rejected += 1
                level = logging.WARNING if self._rejected == 1 else logging.DEBUG
                log.log(level, "dropped an undecodable Raft batch from %s: %s", context.peer(), exc)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.problem}")
            self._batches += 1
            self._messages += len(messages)
            accepted += 1
            if messages:
                self._deliver(messages)
        return raft_pb2.SendAck(batches=accepted).SerializeToString()


def add_transport_servicer(
    server: grpc.aio.Server, sink: MessageSink | Deliver, *, link_address: str = ""
) -> TransportServicer:
    """Serve ``RaftTransport`` on ``server``, handing inbound messages to ``sink`` (an object
    with ``deliver(messages)``, such as a ``NodeHost``, or that method itself).
    ``link_address`` is where this node's ``streamlink.LinkServer`` listens (peers asking
    ``Link`` are told; empty: they stay on the gRPC stream).

    Batches travel as raw bytes and are decoded by ``codec.decode_batch``, so even bytes that
    are not a ``MessageBatch`` at all end the stream with INVALID_ARGUMENT, not INTERNAL."""
    deliver: Deliver = sink.deliver if not callable(sink) else sink
    servicer = TransportServicer(deliver)
    info = raft_pb2.LinkInfo(stream_address=link_address).SerializeToString()

    async def link(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return info

    handlers = {
        "Send": grpc.stream_unary_rpc_method_handler(servicer.send),
        "Link": grpc.unary_unary_rpc_method_handler(link),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return servicer


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------


class Transport(Protocol):
    """What the node host needs to reach its peers (``GrpcTransport``; test doubles too)."""

    def send(self, messages: Iterable[Message]) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters for status pages and benchmarks (totals over all peers, or one peer's)."""

    sent: int
    """Messages written to a stream."""
    dropped: int
    """Messages lost on purpose or by accident: full queue, unknown peer, encoding bug, or in
    the batch that was being written when its stream broke."""
    batches: int
    """Stream writes (one MessageBatch each)."""
    reconnects: int
    """Streams opened again after one broke."""
    queued: int
    """Messages waiting right now."""


def _estimate_bytes(msg: Message) -> int:
    """A cheap upper-ish estimate of a message's encoded size: payload plus framing."""
    if isinstance(msg, AppendRequest):
        return 48 + sum(len(e.data) + 16 for e in msg.entries)
    if isinstance(msg, SnapshotChunk):
        return 64 + len(msg.data) + 8 * len(msg.meta.voters)
    return 48


class _Peer:
    """One destination node: its queue, its sender task and its counters."""

    def __init__(self, node: NodeId, address: str) -> None:
        self.node = node
        self.address = address
        self.queue: deque[tuple[Message, int]] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.batches = 0
        self.reconnects = 0

    def stats(self) -> TransportStats:
        return TransportStats(
            self.sent, self.dropped, self.batches, self.reconnects, len(self.queue)
        )


class GrpcTransport:
    """Client side: bounded per-peer queues drained by one sender task and stream per peer.

    ``peers`` maps every OTHER node to its internal ``host:port``. Create, then ``await
    start()`` inside the event loop (the node host does it); ``send`` may be called before
    ``start`` (messages wait in the queues). Before each connect the peer is asked where its
    plain TCP link listens (``cluster.streamlink``); batches go there when it has one (and
    ``use_links``), else over the gRPC stream."""

    def __init__(
        self,
        node_id: NodeId,
        peers: Mapping[NodeId, str],
        *,
        queue_messages: int = DEFAULT_QUEUE_MESSAGES,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        use_links: bool = True,
    ) -> None:
        if queue_messages < 1 or queue_bytes < 1 or batch_bytes < 1:
            raise ValueError("queue_messages, queue_bytes and batch_bytes must be positive")
        if node_id in peers:
            raise ValueError(f"node {node_id} lists itself among its peers")
        self.node_id = node_id
        self._queue_messages = queue_messages
        self._queue_bytes = queue_bytes
        self._batch_bytes = batch_bytes
        self._use_links = use_links
        self._peers: dict[NodeId, _Peer] = {n: _Peer(n, a) for n, a in peers.items()}
        self._unknown_peer = 0
        self._encode_errors = 0
        self._started = False
        self._closed = False

    # ---- the Transport protocol ------------------------------------------------------------

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` for their destinations; never blocks, never raises."""
        for msg in messages:
            peer = self._peers.get(msg.to)
            if peer is None or self._closed:
                self._unknown_peer += 1
                continue
            size = _estimate_bytes(msg)
            queue = peer.queue
            queue.append((msg, size))
            peer.queued_bytes += size
            while len(queue) > self._queue_messages or (
                peer.queued_bytes > self._queue_bytes and len(queue) > 1
            ):
                _, old = queue.popleft()
                peer.queued_bytes -= old
                peer.dropped += 1
            peer.wake.set()

    async def start(self) -> None:
        """Start one sender task per peer (idempotent)."""
        if self._started or self._closed:
            return
        self._started = True
        for peer in self._peers.values():
            self._spawn(peer)

    async def close(self) -> None:
        """Stop every sender; queued messages are discarded. Idempotent."""
        self._closed = True
        peers = list(self._peers.values())
        for peer in peers:
            await self._stop_sender(peer)

    # ---- management ----------------------------------------------------------------------

    async def update_peers(self, peers: Mapping[NodeId, str]) -> None:
        """Adopt a new peer table: new peers get a sender, removed peers lose theirs (and their
        queue), peers whose address changed reconnect to the new address keeping their queue."""
        if self.node_id in peers:
            raise ValueError(f"node {self.node_id} lists itself among its peers")
        for node in [n for n in self._peers if n not in peers]:
            await self._stop_sender(self._peers.pop(node))
        for node, address in peers.items():
            peer = self._peers.get(node)
            if peer is None:
                peer = self._peers[node] = _Peer(node, address)
            elif peer.address == address:
                continue
            else:
                await self._stop_sender(peer)
                peer.address = address
            if self._started and not self._closed:
                self._spawn(peer)

    @property
    def peers(self) -> dict[NodeId, str]:
        return {n: p.address for n, p in self._peers.items()}

    def stats(self) -> TransportStats:
        """Totals over all peers; drops include messages for unknown peers and encoding bugs."""
        sent = dropped = batches = reconnects = queued = 0
        for peer in self._peers.values():
            sent += peer.sent
            dropped += peer.dropped
            batches += peer.batches
            reconnects += peer.reconnects
            queued += len(peer.queue)
        dropped += self._unknown_peer + self._encode_errors
        return TransportStats(sent, dropped, batches, reconnects, queued)

    def peer_stats(self) -> dict[NodeId, TransportStats]:
        return {n: p.stats() for n, p in self._peers.items()}

    # ---- sender tasks ----------------------------------------------------------------------

    def _spawn(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(
            self._run_sender(peer), name=f"raft-send-{self.node_id}->{peer.node}"
        )

    async def _stop_sender(self, peer: _Peer) -> None:
        task, peer.task = peer.task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run_sender(self, peer: _Peer) -> None:
        """Keep one stream open to ``peer`` and pour its queue into it, forever."""
        backoff = INITIAL_BACKOFF
        broken = False
        while True:
            if not peer.queue:
                peer.wake.clear()
                await peer.wake.wait()  # no stream is opened while there is nothing to send
            if broken:
                peer.reconnects += 1
            batches_before = peer.batches
            channel = grpc.aio.insecure_channel(peer.address, options=CHANNEL_OPTIONS)
            try:
                link = await self._ask_link(peer, channel) if self._use_links else ""
                if link:
                    await self._link(peer, link, announce=broken)
                else:
                    await self._stream(peer, channel, announce=broken)
                broken = False
            except Exception as exc:  # any failure of the link means: reconnect
                if not broken:
                    log.info(
                        "node %s: link to node %s (%s) broke: %s",
                        self.node_id,
                        peer.node,
                        peer.address,
                        _describe(exc),
                    )
                broken = True
            finally:
                await channel.close(None)
            if peer.batches > batches_before:
                backoff = INITIAL_BACKOFF
            if broken:
                await asyncio.sleep(backoff)  # pacing reconnects, not synchronising anything
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _stream(self, peer: _Peer, channel: grpc.aio.Channel, *, announce: bool) -> None:
        """Write batches until the stream ends (returns if the server ended it cleanly, raises
        if it broke)."""
        call = channel.stream_unary(
            _SEND_METHOD, request_serializer=None, response_deserializer=None
        )(None)
        call.add_done_callback(lambda _: peer.wake.set())
        await self._pour(peer, call.write, call.done, announce=announce, address=peer.address)
        await call  # raises AioRpcError unless the server ended the stream cleanly

    async def _ask_link(self, peer: _Peer, channel: grpc.aio.Channel) -> str:
        """Where the peer takes a plain TCP link ("" if it has none or predates links). An
        unreachable peer costs what a broken stream costs: the batch due is dropped."""
        call = channel.unary_unary(
            _LINK_METHOD, request_serializer=None, response_deserializer=None
        )
        try:
            data = await call(b"", timeout=LINK_QUERY_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return ""
            _, count = self._take_batch(peer)
            peer.dropped += count
            raise
        return str(raft_pb2.LinkInfo.FromString(data).stream_address)

    async def _link(self, peer: _Peer, address: str, *, announce: bool) -> None:
        """``_stream`` over a plain TCP link (cluster.streamlink): the same batches, written as
        frames. The listener never writes, so a read that returns means the link is over."""
        reader, writer = await streamlink.open_link(address)
        closed = asyncio.ensure_future(reader.read(1))
        closed.add_done_callback(lambda _: peer.wake.set())

        async def write(data: bytes) -> None:
            writer.write(streamlink.frame(data))
            await writer.drain()

        try:
            await self._pour(peer, write, closed.done, announce=announce, address=address)
            raise ConnectionError(f"node {peer.node} closed the link")
        finally:
            closed.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pour(
        self,
        peer: _Peer,
        write: Callable[[bytes], Awaitable[None]],
        ended: Callable[[], bool],
        *,
        announce: bool,
        address: str,
    ) -> None:
        """Write everything queued for ``peer``, batch by batch, until ``ended()`` (the link is
        over; the caller tells how). A batch whose write fails is dropped and counted."""
        while not ended():
            if not peer.queue:
                peer.wake.clear()
                await peer.wake.wait()
                continue
            data, count = self._take_batch(peer)
            if not count:
                continue
            try:
                await write(data)
            except BaseException:
                peer.dropped += count
                raise
            if announce:
                announce = False
                log.info("node %s: link to node %s (%s) is back", self.node_id, peer.node, address)
            peer.sent += count
            peer.batches += 1

    def _take_batch(self, peer: _Peer) -> tuple[bytes, int]:
        """Everything queued for ``peer`` (up to the batch byte cap) as one serialized batch."""
        batch = raft_pb2.MessageBatch()
        queue = peer.queue
        budget = self._batch_bytes
        count = 0
        while queue:
            msg, size = queue[0]
            if count and size > budget:
                break
            queue.popleft()
            peer.queued_bytes -= size
            budget -= size
            try:
                batch.messages.append(codec.encode(msg))
            except CodecError as exc:  # our own bug: fail loudly in the log, keep the link
                self._encode_errors += 1
                log.error(
                    "node %s: cannot encode %s for node %s: %s",
                    self.node_id,
                    type(msg).__name__,
                    peer.node,
                    exc,
                )
                continue
            count += 1
        return batch.SerializeToString(), count


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
