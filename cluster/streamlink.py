"""Raft traffic over one plain TCP connection per peer: length-prefixed ``MessageBatch`` frames.

Why not gRPC for this hop. Measured on the 2-core VM this project is benchmarked on, one
``grpc.aio`` stream write costs ~104 µs of CPU back to back and ~550 µs when the process was
idle (its poller thread and the event loop both wake for every message), against ~5 µs for an
``asyncio`` stream write of the same 200 bytes. A busy node writes and reads hundreds of Raft
batches a second per peer, and every acknowledged chat message needs several of them, so the
peer hop is worth its own wire. etcd made the same choice (its rafthttp streams are not gRPC).
Nothing else changes: the frames are the ``MessageBatch`` protobuf of ``proto/raft.proto``,
produced and consumed by the same code as on the gRPC stream, and a peer is asked over gRPC
(``RaftTransport.Link``) where its link listens, so a node without one is reached over gRPC.

Framing: the connecting side writes ``MAGIC`` once, then frames of a 4-byte big-endian length and
that many bytes of ``MessageBatch``. The listening side never writes; it closes the connection
on a wrong magic, a frame over ``MAX_FRAME_BYTES`` or a batch that does not decode (counted and
logged once, like the gRPC servicer's INVALID_ARGUMENT), and the sender reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cluster import codec
from cluster.codec import CodecError
from cluster.messages import Message

log = logging.getLogger(__name__)

MAGIC = b"raftlnk1"
"""First bytes of every link: a stray client (or an older peer) is told apart at once."""
FRAME_HEADER = struct.Struct(">I")
Deliver = Callable[[Sequence[Message]], None]
MAX_FRAME_BYTES = 64 << 20
"""Largest frame accepted, the same cap as a gRPC transport message."""


@dataclass(frozen=True, slots=True)
class LinkStats:
    links: int
    batches: int
    messages: int
    rejected: int


class LinkServer:
    """Accepts peers' links and hands every decoded batch to ``deliver`` in arrival order."""

    def __init__(self, deliver: Deliver, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._deliver = deliver
        self._max_frame = max_frame_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._links = self._batches = self._messages = self._rejected = 0
        self.port = 0

    @property
    def stats(self) -> LinkStats:
        return LinkStats(self._links, self._batches, self._messages, self._rejected)

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and end every open link."""
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._links += 1
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, peer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away: it reconnects when it has something to say
        except asyncio.CancelledError:
            # Only close() cancels these. Ending normally instead keeps asyncio's server from
            # logging every link of a stopping node as "Exception in callback" (Python 3.11
            # asks a start_server handler task for its exception, which raises if cancelled).
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, peer: object) -> None:
        if await reader.readexactly(len(MAGIC)) != MAGIC:
            self._reject(peer, "the connection did not start with the link magic")
            return
        deliver = self._deliver
        while True:
            (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
            if size > self._max_frame:
                self._reject(peer, f"frame of {size} bytes is over the {self._max_frame} cap")
                return
            data = await reader.readexactly(size)
            try:
                messages = codec.decode_batch(data)
            except CodecError as exc:
                self._reject(peer, f"{exc.field}: {exc.problem}")
                return
            self._batches += 1
            self._messages += len(messages)
            if messages:
                deliver(messages)

    def _reject(self, peer: object, why: str) -> None:
        self._rejected += 1
        level = logging.WARNING if self._rejected == 1 else logging.DEBUG
        log.log(level, "closed a Raft link from %s: %s", peer, why)


async def open_link(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a peer's link listener and introduce the link."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.write(MAGIC)
    return reader, writer


def frame(data: bytes) -> bytes:
    """``data`` (a serialized ``MessageBatch``) as one link frame."""
    return FRAME_HEADER.pack(len(data)) + data
