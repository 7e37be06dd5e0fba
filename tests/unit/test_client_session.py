"""The client session's cheap-per-send machinery (clients/session.py, clients/models.py) against
the fake servers of test_client_lib: one deadline timer for every send, frames freed only once a
whole ServerFrame is dispatched, a lone send at idle never lingers, counter-based idempotency
keys, the deque event buffer and its batches, and the slot-setting ``from_proto``.

Each test states behaviour the old per-send machinery also had to show, or that the natural
batching depends on; none measures time beyond "well before a deadline that would show a bug".
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest

from clients import (
    AsyncChatClient,
    ConnectionEvent,
    ConnectionState,
    DeadlineExceeded,
    Endpoints,
    MessageEvent,
)
from clients.models import Message, SendReceipt
from proto import chat_pb2 as pb
from tests.unit.test_client_lib import (
    FAST,
    Backend,
    cluster_and_client,
    eventually,
    run,
    start_cluster,
)


def test_deadlines_of_mixed_timeouts_expire_in_deadline_order_and_never_early() -> None:
    async def scenario() -> None:
        async with cluster_and_client(1, Backend(hold_results=True)) as (_, client):
            await client.open_session()
            failed: list[tuple[str, float]] = []
            started = time.monotonic()

            async def send(name: str, timeout: float) -> None:
                with pytest.raises(DeadlineExceeded):
                    await client.send(name, "general", timeout=timeout)
                failed.append((name, time.monotonic() - started))

            # 0.6 first, then shorter ones: the later deadlines come out of send order.
            await asyncio.gather(send("a", 0.6), send("b", 0.2), send("c", 0.4), send("d", 0.6))
            assert [name for name, _ in failed] == ["b", "c", "a", "d"]
            timeouts = {"a": 0.6, "b": 0.2, "c": 0.4, "d": 0.6}
            assert all(elapsed >= timeouts[name] for name, elapsed in failed), failed

            session = client.session
            assert session is not None and not session._pending  # all forgotten

    run(scenario())


def test_answered_sends_never_expire_and_the_sweep_keeps_up() -> None:
    async def scenario() -> None:
        async with cluster_and_client(1) as (cluster, client):
            await client.open_session()
            # Short deadlines that pass after the answers: the timer fires on answered sends
            # and must neither fail them nor stop arming for later ones.
            for round_ in range(3):
                receipts = await asyncio.gather(
                    *(client.send(f"r{round_}m{i}", "general", timeout=0.15) for i in range(20))
                )
                assert all(not r.duplicate for r in receipts)
                await asyncio.sleep(0.2)  # let the deadlines pass: the thing under test
            cluster.backend.hold_results = True
            with pytest.raises(DeadlineExceeded):
                await client.send("unanswered", "general", timeout=0.1)
            session = client.session
            assert session is not None and not session._deadlines._fifo  # swept

    run(scenario())


def test_results_of_one_frame_release_senders_into_one_next_frame() -> None:
    async def scenario() -> None:
        options = dataclasses.replace(FAST, max_frames_in_flight=4, frame_linger=0.005)
        cluster = await start_cluster(1)
        client = AsyncChatClient(Endpoints(cluster.addresses), options=options, session_id="s")
        try:
            await client.register("alice", "password1")
            await client.login("alice", "password1")
            await client.open_session()

            async def sender(s: int) -> None:
                for n in range(10):
                    await client.send(f"s{s}n{n}", "general")

            await asyncio.gather(*(sender(s) for s in range(8)))
            # Every frame carries all eight senders: none leaves alone ahead of the others
            # because the frame its result freed woke the writer first.
            assert cluster.backend.send_frames == [8] * 10
        finally:
            await client.close()
            for node in cluster.nodes:
                await node.stop()

    run(scenario())


def test_a_lone_send_at_idle_goes_at_once_whatever_the_linger() -> None:
    async def scenario() -> None:
        options = dataclasses.replace(FAST, max_frames_in_flight=1, frame_linger=30.0)
        cluster = await start_cluster(1)
        client = AsyncChatClient(Endpoints(cluster.addresses), options=options, session_id="s")
        try:
            await client.register("alice", "password1")
            await client.login("alice", "password1")
            await client.open_session()
            for i in range(3):
                receipt = await asyncio.wait_for(client.send(f"m{i}", "general"), 5.0)
                assert receipt.seq == i + 1
            assert cluster.backend.send_frames == [1, 1, 1]
        finally:
            await client.close()
            for node in cluster.nodes:
                await node.stop()

    run(scenario())


def test_a_cancelled_send_frees_its_frame_for_the_queued_ones() -> None:
    async def scenario() -> None:
        backend = Backend(hold_results=True)
        options = dataclasses.replace(FAST, max_frames_in_flight=1, frame_linger=0.0)
        cluster = await start_cluster(1, backend)
        client = AsyncChatClient(Endpoints(cluster.addresses), options=options, session_id="s")
        try:
            await client.register("alice", "password1")
            await client.login("alice", "password1")
            await client.open_session()
            first = asyncio.ensure_future(client.send("first", "general"))
            await eventually(lambda: backend.send_frames == [1], "the first frame written")
            second = asyncio.ensure_future(client.send("second", "general"))
            session = client.session
            assert session is not None
            await eventually(lambda: len(session._pending) == 2, "the second send queued")
            await eventually(lambda: not session._wake.is_set(), "the writer woken")
            assert len(session._queue) == 1  # held back: one frame in flight at most
            first.cancel()
            await eventually(lambda: backend.send_frames == [1, 1], "the second frame written")
            backend.hold_results = False
            assert not second.done()  # its result was held: still pending, not lost
            second.cancel()
        finally:
            await client.close()
            for node in cluster.nodes:
                await node.stop()

    run(scenario())


def test_generated_keys_are_distinct_within_and_across_clients() -> None:
    async def scenario() -> None:
        backend = Backend()
        async with cluster_and_client(1, backend, user="alice") as (cluster, alice):
            bob = AsyncChatClient(Endpoints(cluster.addresses), options=FAST, rng=random.Random(7))
            try:
                await bob.register("bob", "password1")
                await bob.login("bob", "password1")
                await alice.open_session()
                sent = await asyncio.gather(
                    *(alice.send(f"a{i}", "general") for i in range(50)),
                    *(bob.send(f"b{i}", "general") for i in range(50)),  # unary Send
                )
            finally:
                await bob.close()
        keys = [r.idempotency_key for r in sent]
        assert len(set(keys)) == 100
        assert set(keys) == set(backend.commits)
        assert all(1 <= len(k) <= 64 and k.isascii() and k.isprintable() for k in keys)
        assert " " not in "".join(keys)
        assert len({k.rsplit("-", 1)[0] for k in keys}) == 2  # one prefix per client

    run(scenario())


def test_event_batches_deliver_every_event_once_and_end_after_closed() -> None:
    async def scenario() -> None:
        async with cluster_and_client(1) as (_, client):
            await client.open_session()
            for i in range(30):
                await client.send(f"m{i}", "general")
            await client.close_session()
            batches = [batch async for batch in client.event_batches()]
            events = [event for batch in batches for event in batch]
            texts = [e.message.text for e in events if isinstance(e, MessageEvent)]
            assert texts == [f"m{i}" for i in range(30)]
            states = [e.state for e in events if isinstance(e, ConnectionEvent)]
            assert states == [ConnectionState.CONNECTED, ConnectionState.CLOSED]
            last = events[-1]
            assert isinstance(last, ConnectionEvent) and last.reason == "closed by the client"
            assert len(batches) < len(events)  # what arrived together came together
            assert [e async for e in client.events()] == []  # drained and closed: ends
            assert await client.next_event(0.01) is None

    run(scenario())


def test_waiting_consumers_time_out_share_events_and_the_buffer_drops_the_oldest() -> None:
    async def scenario() -> None:
        options = dataclasses.replace(FAST, event_buffer=5)
        cluster = await start_cluster(1)
        client = AsyncChatClient(Endpoints(cluster.addresses), options=options, session_id="s")
        try:
            await client.register("alice", "password1")
            await client.login("alice", "password1")
            await client.open_session()
            connected = await client.next_event(1.0)
            assert isinstance(connected, ConnectionEvent)
            assert await client.next_event(0.01) is None  # times out: no event
            session = client.session
            assert session is not None and not session._events._waiters  # none left behind

            # Two consumers wait; one send's message wakes both, exactly one gets it.
            waiting = [asyncio.ensure_future(client.next_event(5.0)) for _ in range(2)]
            await asyncio.sleep(0)
            await client.send("one", "general")
            await eventually(lambda: any(w.done() for w in waiting), "a consumer woken")
            got = [w.result() for w in waiting if w.done()]
            assert [e.message.text for e in got if isinstance(e, MessageEvent)] == ["one"]
            for w in waiting:
                w.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

            # Nobody consumes: beyond five, the oldest go and are counted.
            for i in range(8):
                await client.send(f"x{i}", "general")
            await eventually(lambda: session.cursors.get("general") == 9, "all pushed")
            left = [await client.next_event(0.01) for _ in range(5)]
            texts = [e.message.text for e in left if isinstance(e, MessageEvent)]
            assert texts == ["x3", "x4", "x5", "x6", "x7"]
            assert session.events_dropped == 3
        finally:
            await client.close()
            for node in cluster.nodes:
                await node.stop()

    run(scenario())


def test_from_proto_builds_the_same_frozen_values_as_the_constructor() -> None:
    m = pb.ChatMessage(
        conversation="room",
        seq=7,
        sender="alice",
        sender_display="Alice",
        text="hi",
        hlc_ms=123,
        hlc_counter=4,
        idempotency_key="k-1",
    )
    built = Message.from_proto(m)
    expected = Message("room", 7, "alice", "Alice", "hi", 123, 4, "k-1")
    assert built == expected and hash(built) == hash(expected) and repr(built) == repr(expected)
    assert type(built.seq) is int and type(built.hlc_counter) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seq = 8  # type: ignore[misc]
    assert Message.from_proto(pb.ChatMessage()) == Message("", 0, "", "", "", 0, 0, "")

    r = pb.SendResponse(conversation="room", seq=3, hlc_ms=9, hlc_counter=1, duplicate=True)
    receipt = SendReceipt.from_proto(r, "k-2")
    assert receipt == SendReceipt("room", 3, 9, 1, True, "k-2")
    assert type(receipt.duplicate) is bool
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.seq = 4  # type: ignore[misc]
