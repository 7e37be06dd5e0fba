"""``GrpcTransport`` and the ``RaftTransport`` servicer over real gRPC on 127.0.0.1: one batch
per write for many groups, the drop-oldest queue policy, the batch byte cap, rejection of
undecodable batches, reconnection after the peer comes back, and address changes.

Waiting is always for a condition with a deadline; servers and transports are always closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
import pytest

from cluster.messages import AppendRequest, Entry, Heartbeat, Message
from cluster.transport import (
    SERVICE_NAME,
    GrpcTransport,
    TransportServicer,
    add_transport_servicer,
)
from cluster.types import GroupId, NodeId
from proto import raft_pb2

ME, PEER = NodeId(1), NodeId(2)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # paces the polling only


def heartbeat(commit: int, group: int = 1) -> Heartbeat:
    return Heartbeat(group=GroupId(group), sender=ME, to=PEER, term=1, commit=commit)


class Receiver:
    """A real gRPC server with the transport servicer, recording every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[list[Message]] = []
        self.server = grpc.aio.server()
        self.servicer: TransportServicer = add_transport_servicer(self.server, self.deliver)
        self.port = 0

    def deliver(self, messages: Sequence[Message]) -> None:
        self.deliveries.append(list(messages))

    @property
    def messages(self) -> list[Message]:
        return [m for batch in self.deliveries for m in batch]

    async def start(self, port: int = 0) -> str:
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot bind 127.0.0.1:{port}"
        await self.server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(None)


def test_everything_queued_goes_out_as_one_batch() -> None:
    async def body() -> None:
        receiver = Receiver()
        address = await receiver.start()
        transport = GrpcTransport(ME, {PEER: address})
        try:
            # Queued before the sender runs: 1000 messages of 10 groups.
            transport.send(heartbeat(i, group=i % 10) for i in range(1000))
            await transport.start()
            await eventually(lambda: len(receiver.messages) == 1000, "1000 messages")
            assert len(receiver.deliveries) == 1
            assert [m.commit for m in receiver.messages] == list(range(1000))  # type: ignore[union-attr]
            stats = transport.stats()
            assert (stats.sent, stats.batches, stats.dropped, stats.queued) == (1000, 1, 0, 0)
            assert receiver.servicer.stats.batches == 1
        finally:
            await transport.close()
            await receiver.stop()

    run(body())


def test_full_queue_drops_the_oldest() -> None:
    async def body() -> None:
        receiver = Receiver()
        address = await receiver.start()
        transport = GrpcTransport(ME, {PEER: address}, queue_messages=3)
        try:
            transport.send(heartbeat(i) for i in range(1, 6))
            assert transport.peer_stats()[PEER].dropped == 2
            await transport.start()
            await eventually(lambda: len(receiver.messages) == 3, "the 3 newest messages")
            assert [m.commit for m in receiver.messages] == [3, 4, 5]  # type: ignore[union-attr]
            # Messages for a node that is not a peer are dropped and counted too.
            transport.send([Heartbeat(group=GroupId(1), sender=ME, to=NodeId(9), term=1)])
            assert transport.stats().dropped == 3
        finally:
            await transport.close()
            await receiver.stop()

    run(body())


def test_batches_respect_the_byte_cap() -> None:
    async def body() -> None:
        receiver = Receiver()
        address = await receiver.start()
        transport = GrpcTransport(ME, {PEER: address}, batch_bytes=10_000)
        try:
            appends = [
                AppendRequest(
                    group=GroupId(1),
                    sender=ME,
                    to=PEER,
                    term=1,
                    prev_log_index=i,
                    prev_log_term=1,
                    entries=(Entry(1, i + 1, bytes(4000)),),
                )
                for i in range(10)
            ]
            transport.send(appends)
            await transport.start()
            await eventually(lambda: len(receiver.messages) == 10, "10 appends")
            assert receiver.messages == appends
            assert [len(b) for b in receiver.deliveries] == [2, 2, 2, 2, 2]
        finally:
            await transport.close()
            await receiver.stop()

    run(body())


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"\xff\xff\xff", "MessageBatch"),
        (
            raft_pb2.MessageBatch(
                messages=[raft_pb2.RaftMessage(group=1, sender=1, to=2, term=1)]
            ).SerializeToString(),
            "messages[0].body",
        ),
    ],
)
def test_undecodable_batch_ends_the_stream_with_invalid_argument(
    payload: bytes, field: str
) -> None:
    async def body() -> None:
        receiver = Receiver()
        address = await receiver.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.stream_unary(
                    f"/{SERVICE_NAME}/Send", request_serializer=None, response_deserializer=None
                )(None)
                good = raft_pb2.MessageBatch(
                    messages=[
                        raft_pb2.RaftMessage(
                            group=1, sender=1, to=2, term=1, heartbeat=raft_pb2.Heartbeat()
                        )
                    ]
                )
                await call.write(good.SerializeToString())
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.write(payload)
                    await call.done_writing()
                    await call
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert field in (info.value.details() or "")
            stats = receiver.servicer.stats
            assert (stats.batches, stats.rejected_batches, stats.messages) == (1, 1, 1)
        finally:
            await receiver.stop()

    run(body())


def test_reconnects_when_the_peer_comes_back() -> None:
    async def body() -> None:
        first = Receiver()
        address = await first.start()
        port = first.port
        transport = GrpcTransport(ME, {PEER: address})
        second = Receiver()
        try:
            await transport.start()
            transport.send([heartbeat(1)])
            await eventually(lambda: len(first.messages) == 1, "the first message")
            await first.stop()
            # The peer is down: keep sending until the sender has noticed and retried.
            commit = 2
            while transport.stats().reconnects < 2:
                transport.send([heartbeat(commit)])
                commit += 1
                await eventually(lambda: not transport.stats().queued, "the queue drained", 5.0)
            await second.start(port)  # the peer is back on the same address
            transport.send([heartbeat(1000)])
            await eventually(
                lambda: any(m.commit == 1000 for m in second.messages),  # type: ignore[union-attr]
                "delivery after the reconnect",
            )
        finally:
            await transport.close()
            await first.stop()
            await second.stop()

    run(body())


def test_update_peers_moves_a_peer_to_its_new_address() -> None:
    async def body() -> None:
        old, new = Receiver(), Receiver()
        transport = GrpcTransport(ME, {PEER: await old.start()})
        try:
            await transport.start()
            transport.send([heartbeat(1)])
            await eventually(lambda: len(old.messages) == 1, "delivery to the old address")
            await transport.update_peers({PEER: await new.start()})
            transport.send([heartbeat(2)])
            await eventually(lambda: len(new.messages) == 1, "delivery to the new address")
            await transport.update_peers({})
            transport.send([heartbeat(3)])
            assert transport.peers == {} and transport.stats().dropped == 1
        finally:
            await transport.close()
            await old.stop()
            await new.stop()

    run(body())
