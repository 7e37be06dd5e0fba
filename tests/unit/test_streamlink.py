"""Raft batches over the plain TCP link (``cluster.streamlink``), on 127.0.0.1: a peer that has a
link gets every batch there and none on its gRPC stream; bad magic, oversized frames and
undecodable batches close only that connection; a restarted peer with a new link port is asked
again and reached.

Waiting is always for a condition with a deadline; servers and transports are always closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from cluster import streamlink
from cluster.messages import Message
from cluster.streamlink import LinkServer
from cluster.transport import GrpcTransport, TransportServicer, add_transport_servicer
from tests.unit.test_transport_batching import ME, PEER, eventually, heartbeat, run


class LinkedPeer:
    """A peer node's receiving side: the gRPC internal server plus a link listener."""

    def __init__(self, *, with_link: bool = True) -> None:
        self.deliveries: list[list[Message]] = []
        self.link = LinkServer(self.deliver) if with_link else None
        self.server = grpc.aio.server()
        self.servicer: TransportServicer | None = None

    def deliver(self, messages: Sequence[Message]) -> None:
        self.deliveries.append(list(messages))

    @property
    def messages(self) -> list[Message]:
        return [m for batch in self.deliveries for m in batch]

    async def start(self, port: int = 0) -> str:
        link_address = ""
        if self.link is not None:
            link_address = f"127.0.0.1:{await self.link.start('127.0.0.1')}"
        self.servicer = add_transport_servicer(self.server, self.deliver, link_address=link_address)
        bound = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound, f"cannot bind 127.0.0.1:{port}"
        await self.server.start()
        return f"127.0.0.1:{bound}"

    async def stop(self) -> None:
        await self.server.stop(None)
        if self.link is not None:
            await self.link.close()


def test_batches_take_the_link_when_the_peer_has_one() -> None:
    async def body() -> None:
        peer = LinkedPeer()
        transport = GrpcTransport(ME, {PEER: await peer.start()})
        try:
            await transport.start()
            transport.send(heartbeat(i, group=i % 4) for i in range(500))
            await eventually(lambda: len(peer.messages) == 500, "500 messages over the link")
            transport.send([heartbeat(1000)])
            await eventually(lambda: len(peer.messages) == 501, "a later message")
            assert [m.commit for m in peer.messages] == [*range(500), 1000]  # type: ignore[union-attr]
            assert peer.link is not None and peer.servicer is not None
            assert peer.link.stats.batches == len(peer.deliveries)
            assert peer.servicer.stats.streams == 0  # nothing went over gRPC
        finally:
            await transport.close()
            await peer.stop()

    run(body())


def test_a_peer_without_a_link_is_reached_over_grpc() -> None:
    async def body() -> None:
        peer = LinkedPeer(with_link=False)
        transport = GrpcTransport(ME, {PEER: await peer.start()})
        try:
            await transport.start()
            transport.send(heartbeat(i) for i in range(10))
            await eventually(lambda: len(peer.messages) == 10, "10 messages over gRPC")
            assert peer.servicer is not None and peer.servicer.stats.batches >= 1
        finally:
            await transport.close()
            await peer.stop()

    run(body())


async def _raw(port: int, data: bytes) -> bool:
    """Write ``data`` on a fresh connection; True if the server then closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(1) == b""
    finally:
        writer.close()


def test_bad_connections_are_closed_and_change_nothing() -> None:
    async def body() -> None:
        peer = LinkedPeer()
        await peer.start()
        link = peer.link
        assert link is not None
        try:
            assert await _raw(link.port, b"GET / HTTP/1.1\r\n\r\n")  # not a link
            too_big = streamlink.MAX_FRAME_BYTES + 1
            assert await _raw(link.port, streamlink.MAGIC + streamlink.FRAME_HEADER.pack(too_big))
            assert await _raw(link.port, streamlink.MAGIC + streamlink.frame(b"\xff\xff\xff"))
            assert link.stats.rejected == 3
            assert peer.deliveries == []
            # The listener still serves good links.
            _, writer = await streamlink.open_link(f"127.0.0.1:{link.port}")
            from cluster import codec
            from proto import raft_pb2

            batch = raft_pb2.MessageBatch(messages=[codec.encode(heartbeat(7))])
            writer.write(streamlink.frame(batch.SerializeToString()))
            await writer.drain()
            await eventually(lambda: len(peer.messages) == 1, "the good batch")
            writer.close()
        finally:
            await peer.stop()

    run(body())


def test_a_restarted_peer_on_a_new_link_port_is_reached_again() -> None:
    async def body() -> None:
        peer = LinkedPeer()
        address = await peer.start()
        transport = GrpcTransport(ME, {PEER: address})
        try:
            await transport.start()
            transport.send([heartbeat(1)])
            await eventually(lambda: len(peer.messages) == 1, "the first message")
            first_port = peer.link.port if peer.link else 0
            await peer.stop()
            again = LinkedPeer()
            await again.start(port=int(address.rpartition(":")[2]))
            assert again.link is not None and again.link.port != first_port
            # Messages sent while the peer was down may be lost (Raft resends); keep sending
            # until one arrives over the new link.
            n = 1

            def arrived() -> bool:
                nonlocal n
                n += 1
                transport.send([heartbeat(n)])
                return bool(again.messages)

            await eventually(arrived, "a message over the new link")
            assert again.link.stats.batches >= 1
            await again.stop()
        finally:
            await transport.close()

    run(body())
