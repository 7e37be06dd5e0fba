"""The chat CLI's engine (clients/chat/engine.py) against a scripted fake of the client
library: the order of sends and what a failure does to the ones behind it, retry with the same
idempotency key, rate limits, messages typed while a join is on its way, read markers, holes
filled from history, and what the status line learns from a failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from clients import (
    Channel,
    ConnectionEvent,
    ConnectionState,
    Event,
    Gap,
    GapEvent,
    GroupState,
    HistoryPage,
    Message,
    MessageEvent,
    NotFound,
    OnlineSession,
    RateLimited,
    ReadMarker,
    SendReceipt,
    ServerStatus,
    Unavailable,
    Unread,
)
from clients.chat.engine import ChatEngine
from clients.chat.model import ChatModel, NoteLevel
from clients.chat.outbox import SendState
from clients.chat.status import LinkState

T = TypeVar("T")
T0 = 1_700_000_000_000


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


async def eventually(check: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + 5
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # poll interval


class FakeBackend:
    """Scripted answers; sends block until the test releases them (``gate``)."""

    def __init__(self) -> None:
        self.unread: tuple[Unread, ...] = ()
        self.messages: dict[str, list[Message]] = {}
        self.sent: list[tuple[str, str, str]] = []
        """(conversation or @user, text, idempotency key) of every attempt, in order."""
        self.fail_next: list[Exception] = []
        self.gate: asyncio.Event = asyncio.Event()
        self.gate.set()
        self.join_gate = asyncio.Event()
        self.join_gate.set()
        self.join_error: Exception | None = None
        self.reads: list[tuple[str, int]] = []
        self.history_calls: list[tuple[str, int | None, int | None, int]] = []
        self.statuses: list[dict[int, int]] = []
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = False
        self._cursors: dict[str, int] = {}

    @property
    def cursors(self) -> dict[str, int]:
        return dict(self._cursors)

    async def unread_counts(self, *, timeout: float | None = None) -> tuple[Unread, ...]:
        return self.unread

    async def list_channels(
        self, joined_only: bool = False, *, timeout: float | None = None
    ) -> tuple[Channel, ...]:
        return ()

    async def who(
        self, channel: str = "", *, timeout: float | None = None
    ) -> tuple[OnlineSession, ...]:
        return (OnlineSession("bob", "bob", 1, "n1", T0),)

    async def open_session(
        self, cursors: Mapping[str, int] | None = None, *, timeout: float | None = None
    ) -> None:
        self._cursors = {u.conversation: u.last_seq for u in self.unread}

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            yield event
            if isinstance(event, ConnectionEvent) and event.state is ConnectionState.CLOSED:
                return

    async def send(
        self,
        text: str,
        conversation: str | None = None,
        *,
        to_user: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> SendReceipt:
        assert idempotency_key
        self.sent.append((conversation or f"@{to_user}", text, idempotency_key))
        await self.gate.wait()
        if self.fail_next:
            raise self.fail_next.pop(0)
        conv = conversation or "dm:alice:" + str(to_user)
        stored = self.messages.setdefault(conv, [])
        for m in stored:
            if m.idempotency_key == idempotency_key:  # the server's dedup
                return SendReceipt(conv, m.seq, m.hlc_ms, 0, True, idempotency_key)
        seq = len(stored) + 1
        stored.append(Message(conv, seq, "alice", "alice", text, T0 + seq, 0, idempotency_key))
        return SendReceipt(conv, seq, T0 + seq, 0, False, idempotency_key)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        self.history_calls.append((conversation, before, after, limit))
        stored = self.messages.get(conversation, [])
        if after is not None:
            page = [m for m in stored if m.seq > after][:limit]
        else:
            upto = [m for m in stored if before is None or m.seq < before]
            page = upto[-limit:]
        oldest = not page or page[0].seq == 1
        return HistoryPage(tuple(page), oldest, True)

    async def mark_read(
        self, conversation: str, seq: int, *, timeout: float | None = None
    ) -> ReadMarker:
        self.reads.append((conversation, seq))
        return ReadMarker(conversation, seq, 0)

    async def create_channel(self, channel: str, *, timeout: float | None = None) -> Channel:
        return Channel(channel, "alice", T0, 1, 0, True)

    async def join_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        await self.join_gate.wait()
        if self.join_error is not None:
            raise self.join_error
        return False

    async def leave_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        return True

    async def server_status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> ServerStatus:
        leaders = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        groups = tuple(GroupState(g, "follower", n, 2, 0) for g, n in sorted(leaders.items()))
        return ServerStatus(2, "c", "v", 0, 1, 1, groups, True)

    async def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.notes: list[tuple[str, NoteLevel]] = []
        self.quits = 0

    def changed(self) -> None:
        return None

    def message(self, message: Message) -> None:
        self.messages.append(message)

    def note(self, text: str, level: NoteLevel) -> None:
        self.notes.append((text, level))

    def quit(self) -> None:
        self.quits += 1


async def started(backend: FakeBackend) -> tuple[ChatEngine, ChatModel, Recorder]:
    model = ChatModel("alice")
    recorder = Recorder()
    engine = ChatEngine(backend, model, recorder)
    await engine.start(open_first=True)
    return engine, model, recorder


def test_sends_go_one_at_a_time_and_a_failure_holds_the_rest() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.unread = (Unread("general", "", 0, 0, 0),)
        engine, model, recorder = await started(backend)
        assert model.current == "general"
        backend.gate.clear()
        for text in ("one", "two", "three"):
            assert engine.submit(text)
        await eventually(lambda: backend.sent, "the first send")
        assert [s[1] for s in backend.sent] == ["one"]  # the others wait their turn
        backend.fail_next = [Unavailable("no quorum")]
        backend.gate.set()
        failed = await eventually(lambda: model.outbox.failed_sends(), "the failure")
        assert [p.text for p in failed] == ["one"]
        assert [model.outbox.held(p) for p in model.outbox.pending("general")] == [
            False,
            True,
            True,
        ]
        assert any("not sent: unavailable" in text for text, _ in recorder.notes)
        engine.submit("/retry")
        await eventually(lambda: not model.outbox.pending("general"), "every send")
        keys = [key for _, _, key in backend.sent]
        assert [s[1] for s in backend.sent] == ["one", "one", "two", "three"]
        assert keys[0] == keys[1]  # the retry reuses the key: never a second message
        conv = model.conversations["general"]
        assert [conv.messages[s].text for s in conv.seqs] == ["one", "two", "three"]
        assert await engine.wait_sent(0.01) is False  # the pushes have not come back yet
        for m in backend.messages["general"]:
            await backend.queue.put(MessageEvent(m))
        assert await engine.wait_sent(5)
        assert [m.text for m in recorder.messages] == ["one", "two", "three"]
        await engine.close()
        assert backend.closed

    run(scenario())


def test_drop_gives_up_a_failed_send_and_the_next_goes() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.unread = (Unread("general", "", 0, 0, 0),)
        engine, model, _ = await started(backend)
        backend.fail_next = [NotFound("gone")]
        engine.submit("doomed")
        engine.submit("fine")
        await eventually(lambda: model.outbox.failed_sends(), "the failure")
        engine.submit("/drop")
        await eventually(lambda: not model.outbox.pending("general"), "the next send")
        assert [s[1] for s in backend.sent] == ["doomed", "fine"]
        await engine.close()

    run(scenario())


def test_a_rate_limited_send_waits_and_goes_again_by_itself() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.unread = (Unread("general", "", 0, 0, 0),)
        engine, model, _ = await started(backend)
        backend.fail_next = [RateLimited("slow down", retry_after_ms=1)]
        engine.submit("hello")
        await eventually(lambda: not model.outbox.pending("general"), "the send")
        assert [s[1] for s in backend.sent] == ["hello", "hello"]
        await engine.close()

    run(scenario())


def test_messages_typed_during_a_join_wait_for_it_or_fail_with_it() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        engine, model, recorder = await started(backend)
        assert model.current is None
        backend.join_gate.clear()
        engine.submit("/join games")
        await eventually(lambda: model.current == "games", "the switch")
        engine.submit("first!")
        assert backend.sent == []  # not a member yet
        assert model.outbox.pending("games")[0].state is SendState.QUEUED
        backend.join_gate.set()
        await eventually(lambda: backend.sent, "the send after the join")
        assert backend.sent[0][:2] == ("games", "first!")
        # A join that fails takes the queued messages with it, visibly.
        backend.join_gate.clear()
        backend.join_error = NotFound("no such channel")
        engine.submit("/join nowhere")
        await eventually(lambda: model.current == "nowhere", "the switch")
        engine.submit("hello?")
        backend.join_gate.set()
        await eventually(lambda: "nowhere" not in model.conversations, "the failed join")
        errors = [t for t, level in recorder.notes if level is NoteLevel.ERROR]
        assert any("cannot join #nowhere" in t and "(/create it)" in t for t in errors)
        assert [p.error for p in model.outbox.failed_sends()] == ["not found: no such channel"]
        await engine.close()

    run(scenario())


def test_direct_messages_go_by_user_name() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        engine, model, _ = await started(backend)
        engine.submit("/msg bob hi there")
        await eventually(lambda: backend.sent, "the DM")
        assert backend.sent[0][:2] == ("@bob", "hi there")
        assert model.current == "dm:alice:bob"
        engine.submit("/msg alice")
        await eventually(lambda: model.home_notes or model.current_conversation, "a note")
        await engine.close()

    run(scenario())


def test_the_open_conversation_is_loaded_read_and_its_holes_filled() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.unread = (Unread("general", "", 3, 1, 2),)
        backend.messages["general"] = [
            Message("general", s, "bob", "bob", f"m{s}", T0 + s, 0) for s in range(1, 4)
        ]
        engine, model, _ = await started(backend)
        conv = model.conversations["general"]
        await eventually(lambda: conv.seqs == [1, 2, 3], "the first page")
        await eventually(lambda: ("general", 3) in backend.reads, "marked read")
        assert conv.marker_seq == 1
        # A gap announced by the session becomes a hole, filled from history.
        backend.messages["general"] += [
            Message("general", s, "bob", "bob", f"m{s}", T0 + s, 0) for s in range(4, 10)
        ]
        await backend.queue.put(GapEvent(Gap("general", 4, 8)))
        await backend.queue.put(MessageEvent(backend.messages["general"][8]))
        await eventually(lambda: conv.seqs == list(range(1, 10)), "the hole filled")
        assert ("general", None, 3, 5) in backend.history_calls  # after seq 3, the 5 missing
        await eventually(lambda: ("general", 9) in backend.reads, "marked read again")
        await engine.close()

    run(scenario())


def test_a_failover_shows_in_the_status_and_names_the_new_leaders() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.statuses = [{0: 1, 1: 2}]
        engine, model, recorder = await started(backend)
        await backend.queue.put(ConnectionEvent(ConnectionState.CONNECTED, "n1", node_id=1))
        await eventually(lambda: model.link.state is LinkState.CONNECTED, "connected")
        await eventually(lambda: engine.leaders, "the leaders before")
        assert {g: leader.node for g, leader in engine.leaders.items()} == {0: 1, 1: 2}
        backend.statuses = [{0: 0, 1: 2}, {0: 1, 1: 2}, {0: 3, 1: 2}]
        await backend.queue.put(
            ConnectionEvent(ConnectionState.RECONNECTING, "n1", "UNAVAILABLE: gone", 0.2)
        )
        await eventually(lambda: model.link.state is LinkState.RECONNECTING, "reconnecting")
        assert model.link.lost_node_id == 1
        await backend.queue.put(ConnectionEvent(ConnectionState.RESUMED, "n3", node_id=3))
        await eventually(lambda: model.link.leader_change, "the leader change")
        assert model.link.state is LinkState.RESUMED and model.link.node_id == 3
        assert model.link.leader_change == "node 1 lost: g0→n3"
        notes = [t for t, _ in recorder.notes]
        assert "lost node 1 (n1): UNAVAILABLE: gone" in notes
        assert "resumed on node 3 (n3)" in notes
        await backend.queue.put(ConnectionEvent(ConnectionState.CLOSED, "n3", "bye"))
        await eventually(lambda: model.link.state is LinkState.CLOSED, "closed")
        engine.submit("/quit")
        await eventually(lambda: recorder.quits, "quit")
        await engine.close()

    run(scenario())
