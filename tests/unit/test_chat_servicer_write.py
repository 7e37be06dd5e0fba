"""The Session writer merges queued result/message frames into one stream message, and never
merges (or reorders) anything else: the cost of the stream is per gRPC message, but the
client's view of order must not change."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from proto import chat_pb2 as pb
from shards.chat.servicer import ChatServicer, _merges
from shards.chat.session import SessionEnded


class _Context:
    def __init__(self) -> None:
        self.written: list[pb.ServerFrame] = []
        self.done = asyncio.Event()
        self.expect = 0

    async def write(self, frame: pb.ServerFrame) -> None:
        self.written.append(frame)
        if len(self.written) >= self.expect:
            self.done.set()


class _Session:
    def __init__(self) -> None:
        self.out: asyncio.Queue[pb.ServerFrame] = asyncio.Queue()


def _msg(conv: str, seq: int) -> pb.ServerFrame:
    return pb.ServerFrame(messages=[pb.ChatMessage(conversation=conv, seq=seq, text="x")])


def _result(key: str) -> pb.ServerFrame:
    return pb.ServerFrame(results=[pb.SendResult(idempotency_key=key)])


def _written(frames: list[pb.ServerFrame], expect: int) -> list[pb.ServerFrame]:
    async def main() -> list[pb.ServerFrame]:
        context, session = _Context(), _Session()
        context.expect = expect
        for frame in frames:
            session.out.put_nowait(frame)

        async def idle() -> None:
            await asyncio.Event().wait()

        forever = asyncio.create_task(idle())  # the reader and pusher, still running
        servicer = object.__new__(ChatServicer)  # _write uses no state of the servicer
        writer = asyncio.create_task(
            servicer._write(cast(Any, context), cast(Any, session), [forever])
        )
        async with asyncio.timeout(5):
            await context.done.wait()
        writer.cancel()
        forever.cancel()
        return context.written

    return asyncio.run(main())


def test_results_and_messages_queued_together_go_as_one_frame_in_order() -> None:
    frames = [_result("k1"), _msg("general", 1), _msg("general", 2), _result("k2")]
    (only,) = _written(frames, 1)
    assert [m.seq for m in only.messages] == [1, 2]
    assert [r.idempotency_key for r in only.results] == ["k1", "k2"]


def test_other_kinds_are_never_merged_and_keep_their_place() -> None:
    presence = pb.ServerFrame(presence=[pb.PresenceEvent(user="bob", online=True)])
    gap = pb.ServerFrame(gaps=[pb.Gap(conversation="general", first_seq=3, last_seq=9)])
    frames = [_msg("general", 1), presence, _msg("general", 2), gap, _msg("general", 10)]
    written = _written(frames, 5)
    assert [bool(f.presence) for f in written] == [False, True, False, False, False]
    assert [bool(f.gaps) for f in written] == [False, False, False, True, False]
    assert [[m.seq for m in f.messages] for f in written] == [[1], [], [2], [], [10]]
    assert not _merges(presence) and not _merges(gap) and _merges(_msg("x", 1))


def test_a_cleanly_ended_reader_flushes_what_is_queued_and_an_error_ends_the_stream() -> None:
    async def main() -> None:
        servicer = object.__new__(ChatServicer)

        async def ends_cleanly() -> None:
            await asyncio.sleep(0)
            raise SessionEnded(grpc.StatusCode.OK, "the client closed the stream")

        context, session = _Context(), _Session()
        for i in range(3):
            session.out.put_nowait(_msg("c", i + 1))
        async with asyncio.timeout(5):
            await servicer._write(
                cast(Any, context), cast(Any, session), [asyncio.create_task(ends_cleanly())]
            )
        assert [m.seq for f in context.written for m in f.messages] == [1, 2, 3]

        async def fails() -> None:
            raise SessionEnded(grpc.StatusCode.UNAUTHENTICATED, "logged out")

        context, session = _Context(), _Session()
        with pytest.raises(SessionEnded) as info:
            async with asyncio.timeout(5):
                await servicer._write(
                    cast(Any, context), cast(Any, session), [asyncio.create_task(fails())]
                )
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())
