"""One client's Session stream (``shards.chat.session.ChatSession``) driven directly: a real
``ChatService`` over in-memory ``FeedingChatState`` replicas, a fake hub that records what the
session asks of it, and events taken from what the replicas really published, handed to the
session with ``offer`` while its pusher runs as a task. What it pushes is read from
``session.out``: each conversation in seq order, no gap, no duplicate, from the cursors on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import grpc
import pytest

from cluster.messages import Entry
from cluster.types import GroupId, NodeId
from proto import chat_pb2 as pb
from shards.chat import api, wire
from shards.chat.api import ApiError, Gap
from shards.chat.commands import (
    Command,
    CreateChannel,
    DropRoute,
    JoinChannel,
    LeaveChannel,
    Posted,
    PostMessage,
    RegisterUser,
    SetRoute,
    encode_command,
)
from shards.chat.feed import (
    Event,
    Feed,
    FeedingChatState,
    MembershipChanged,
    MessageCommitted,
    RouteChanged,
)
from shards.chat.hub import PushHub, Resync
from shards.chat.queries import CatchUp, Query
from shards.chat.ratelimit import SendRateLimiter
from shards.chat.schema import Route
from shards.chat.service import Caller, ChatService, conversation_key, user_key
from shards.chat.session import HEARTBEAT_INTERVAL_MS, ChatSession, Item, SessionEnded
from shards.placement import Placement

if TYPE_CHECKING:
    from shards.chat.router import ClusterRouter

T = TypeVar("T")

GROUPS = 4
NODE = NodeId(1)
MS = 1_700_000_000_000
DM = "dm:alice:bob"
OK = grpc.StatusCode.OK


class FeedRouter:
    """One FeedingChatState per group, all publishing to one Feed. ``propose_many`` applies its
    commands as one batch (one proposal round), ``query`` runs after a wire round trip as a
    query to another node would. ``log`` records proposals and queries in order; ``fail``
    makes proposals to a group fail as a lost quorum does; ``on_query`` runs after each query
    (to commit something "just after a read")."""

    def __init__(self, root: Path, groups: int, feed: Feed, log: list[str]) -> None:
        self.states = {
            GroupId(g): FeedingChatState(root / f"group-{g}.db", GroupId(g), feed)
            for g in range(groups)
        }
        self.log = log
        self.proposed: list[tuple[GroupId, Command]] = []
        self.batches: list[tuple[GroupId, int]] = []
        self.fail: dict[GroupId, ApiError] = {}
        self.on_query: Callable[[GroupId, object], None] | None = None

    async def propose(self, group: GroupId, command: Command) -> object:
        (result,) = await self.propose_many(group, [command])
        return result

    async def propose_many(self, group: GroupId, commands: Sequence[Command]) -> list[object]:
        if group in self.fail:
            raise self.fail[group]
        self.log.extend(f"propose {type(c).__name__}" for c in commands)
        self.proposed.extend((group, c) for c in commands)
        self.batches.append((group, len(commands)))
        return self.apply(group, commands)

    def apply(self, group: GroupId, commands: Sequence[Command]) -> list[object]:
        state = self.states[group]
        first = state.applied_index() + 1
        entries = [Entry(1, first + i, encode_command(c)) for i, c in enumerate(commands)]
        return list(state.apply(entries))

    async def query(self, group: GroupId, query: Query[T], *, linearizable: bool) -> T:
        self.log.append(f"query {type(query).__name__}{'' if linearizable else ' (stale)'}")
        sent = cast("Query[T]", wire.decode(wire.encode(query)))
        answer = sent.run(self.states[group])
        assert wire.decode(wire.encode(answer)) == answer
        if self.on_query is not None:
            self.on_query(group, query)
        return answer

    def groups(self) -> list[GroupId]:
        return sorted(self.states)

    def close(self) -> None:
        for state in self.states.values():
            state.close()


class FakeHub:
    """What a session asks of the PushHub, recorded (into the world's log too)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.attached: set[ChatSession] = set()
        self.tracked: set[str] = set()

    def attach(self, session: ChatSession) -> None:
        self.log.append("attach")
        self.attached.add(session)

    def detach(self, session: ChatSession) -> None:
        self.log.append("detach")
        self.attached.discard(session)

    def track(self, session: ChatSession, conversation: str) -> None:
        self.log.append(f"track {conversation}")
        self.tracked.add(conversation)

    def untrack(self, session: ChatSession, conversation: str) -> None:
        self.log.append(f"untrack {conversation}")
        self.tracked.discard(conversation)

    def started(self, session: ChatSession) -> None:
        self.log.append("started")

    def has_session(self, user: str, session_id: str) -> bool:
        return any(s.user == user and s.session_id == session_id for s in self.attached)


class Harness:
    """A ChatSession with its pusher task; ``push`` offers events and returns the frames they
    produced (all of them: a marker offered last is waited for, then removed)."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self._pusher: asyncio.Task[None] | None = None
        self._flushes = 0

    async def start(self, resume: dict[str, int] | None = None) -> list[pb.ServerFrame]:
        cursors = None if resume is None else tuple(sorted(resume.items()))
        await self.session.start(cursors)
        frames = []
        while not self.session.out.empty():
            frame = self.session.out.get_nowait()
            assert isinstance(frame, pb.ServerFrame)
            frames.append(frame)
        self._pusher = asyncio.create_task(self.session.push_forever())
        return frames

    async def push(self, *items: Item) -> list[pb.ServerFrame]:
        assert self._pusher is not None
        for item in items:
            self.session.offer(item)
        self._flushes += 1
        marker = f"flush-{self._flushes}"  # a self-leave of no channel: always answered
        self.session.offer(MembershipChanged(marker, self.session.user, False, 0, 0))
        frames = []
        async with asyncio.timeout(5):
            while True:
                getter = asyncio.ensure_future(self.session.out.get())
                done, _ = await asyncio.wait(
                    {getter, self._pusher}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    self._pusher.result()  # raises what ended it
                    raise AssertionError("the pusher ended")
                frame = getter.result()
                if isinstance(frame, SessionEnded):
                    raise frame
                kept = [m for m in frame.membership if m.channel != marker]
                seen = len(kept) != len(frame.membership)
                del frame.membership[:]
                frame.membership.extend(kept)
                if frame.ByteSize():
                    frames.append(frame)
                if seen:
                    return frames

    async def close(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, SessionEnded):
                await self._pusher


class World:
    def __init__(self, root: Path) -> None:
        self.log: list[str] = []
        self.feed = Feed()
        self.events: list[Event] = []
        self.feed.listen(lambda batch: self.events.extend(batch.events))
        self.router = FeedRouter(root, GROUPS, self.feed, self.log)
        self.placement = Placement([NODE], GROUPS, 1)
        self.svc = ChatService(self.router, self.placement.group_for, lambda: MS)
        self.harnesses: list[Harness] = []
        self._keys = 0

    # ---- state, written through the router --------------------------------------------------

    def user_group(self, user: str) -> GroupId:
        return self.placement.group_for(user_key(user))

    def group_of(self, conversation: str) -> GroupId:
        return self.placement.group_for(conversation_key(conversation))

    async def users(self, *names: str) -> None:
        for name in names:
            cmd = RegisterUser(name, name.capitalize(), "hash", MS)
            await self.router.propose(self.user_group(name), cmd)

    async def create(self, channel: str, creator: str, *members: str) -> None:
        await self.router.propose(self.group_of(channel), CreateChannel(channel, creator, MS))
        for user in members:
            await self.router.propose(self.group_of(channel), JoinChannel(channel, user, MS))

    async def post(self, sender: str, conversation: str, count: int = 1) -> list[Posted]:
        """``count`` messages as one batch: texts ``<sender> <n>``, keys unique."""
        commands: list[Command] = []
        for _ in range(count):
            self._keys += 1
            text = f"{sender} {self._keys}"
            commands.append(PostMessage(conversation, sender, f"k{self._keys}", text, MS, 0))
        results = await self.router.propose_many(self.group_of(conversation), commands)
        assert all(isinstance(r, Posted) and not r.duplicate for r in results), results
        return cast("list[Posted]", results)

    def take(self) -> list[Event]:
        """The events published since the last take (and forget them)."""
        taken, self.events = self.events, []
        return taken

    def routes(self, user: str) -> list[Route]:
        return self.router.states[self.user_group(user)].routes(user)

    # ---- sessions ---------------------------------------------------------------------------

    def session(
        self, user: str, session_id: str = "phone", hub: object = None
    ) -> tuple[Harness, FakeHub]:
        fake = FakeHub(self.log)
        session = ChatSession(
            Caller(user, "0" * 64),
            user.capitalize(),
            session_id,
            NODE,
            self.svc,
            cast(PushHub, fake if hub is None else hub),
        )
        harness = Harness(session)
        self.harnesses.append(harness)
        return harness, fake


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        world = World(tmp_path)
        try:
            await body(world)
        finally:
            for harness in world.harnesses:
                await harness.close()
            world.router.close()

    asyncio.run(main())


def msgs(frames: Sequence[pb.ServerFrame]) -> list[tuple[str, int, str]]:
    return [(m.conversation, m.seq, m.text) for f in frames for m in f.messages]


def seqs(frames: Sequence[pb.ServerFrame], conversation: str) -> list[int]:
    return [m.seq for f in frames for m in f.messages if m.conversation == conversation]


def commits(events: Sequence[Event]) -> list[MessageCommitted]:
    return [e for e in events if isinstance(e, MessageCommitted)]


async def alice_bob_general(w: World) -> None:
    """alice, bob, carol; #general (alice, bob); #random (carol only)."""
    await w.users("alice", "bob", "carol")
    await w.create("general", "alice", "bob")
    await w.create("random", "carol")
    w.take()


# ---- start and resume ----------------------------------------------------------------------------


def test_start_routes_the_session_then_reads_and_resumes_live(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("alice", "general", 3)
        await w.post("bob", DM, 2)
        w.log.clear()
        h, hub = w.session("alice")
        frames = await h.start()
        assert frames[0] == pb.ServerFrame(
            resumed=pb.Resumed(
                user="alice",
                session_id="phone",
                node_id=1,
                cursors={"general": 3, DM: 2},
                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            )
        )
        assert w.routes("alice") == [Route("alice", "phone", 1, MS)]
        assert (w.user_group("alice"), SetRoute("alice", "phone", 1, MS)) in w.router.proposed
        # Attached before the route and the read, so nothing committed after the read is missed.
        first_read = w.log.index("query ConversationsOf")
        assert w.log.index("attach") < w.log.index("propose SetRoute") < first_read
        assert min(w.log.index("track general"), w.log.index(f"track {DM}")) > first_read
        assert hub.tracked == {"general", DM}
        assert msgs(await h.push()) == []  # live only: nothing replayed
        # stop(): detached, and the route is dropped.
        await h.session.stop()
        assert w.log[-2:] == ["detach", "propose DropRoute"]
        assert w.routes("alice") == []

    run(tmp_path, body)


def test_resume_replays_exactly_the_messages_after_the_cursors(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.router.propose(w.group_of("random"), JoinChannel("random", "alice", MS))
        await w.post("alice", "general", 2)
        await w.post("bob", "general", 3)
        await w.post("carol", "random", 2)
        await w.post("bob", DM, 3)
        w.take()
        h, _ = w.session("alice")
        frames = await h.start({"general": 2, DM: 3, "random": 0})
        assert frames[0].resumed.cursors == {"general": 2, DM: 3, "random": 0}
        assert msgs(frames[1:]) == [
            ("general", 3, "bob 3"),
            ("general", 4, "bob 4"),
            ("general", 5, "bob 5"),
            ("random", 1, "carol 6"),
            ("random", 2, "carol 7"),
        ]
        replayed = frames[1].messages[0]
        assert (replayed.sender, replayed.sender_display, replayed.idempotency_key) == (
            "bob",
            "Bob",
            "",
        )
        # Live from there: events already covered by the replay are dropped.
        old = await w.post("bob", "general")  # seq 6
        assert old[0].seq == 6
        frames = await h.push(*commits(w.take()))
        assert msgs(frames) == [("general", 6, "bob 11")]
        own = (await w.post("alice", "general"))[0]
        (pushed,) = (await h.push(*commits(w.take())))[0].messages
        assert (pushed.seq, pushed.idempotency_key) == (own.seq, "k12")  # keys on own messages

    run(tmp_path, body)


def test_resume_of_a_channel_one_is_not_in_is_permission_denied(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        with pytest.raises(ApiError) as info:
            await h.start({"random": 0})
        assert (info.value.code, info.value.field) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "resume.cursors[random]",
        )

    run(tmp_path, body)


def test_a_long_resume_comes_in_rounds_without_gap_or_duplicate(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("bob", "general", 620)
        events = commits(w.take())
        h, _ = w.session("alice")
        frames = await h.start({"general": 0})
        assert len(frames) == 3  # Resumed, then two catch-up rounds (500 + 120)
        assert [len(f.messages) for f in frames] == [0, 500, 120]
        assert seqs(frames, "general") == list(range(1, 621))
        assert msgs(await h.push(*events)) == []  # every live event is already covered

    run(tmp_path, body)


def test_a_backlog_beyond_max_backlog_is_announced_as_a_gap(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("bob", "general", 1150)
        await w.post("bob", DM, 3)
        w.take()
        h, _ = w.session("alice")
        frames = await h.start({"general": 10, DM: 1})
        assert frames[0].resumed.cursors == {"general": 10, DM: 1}
        gaps = [g for f in frames for g in f.gaps]
        assert gaps == [Gap("general", 11, 1050).to_proto()]  # MAX_BACKLOG 1000, keep 100
        assert seqs(frames, "general") == list(range(1051, 1151))
        assert seqs(frames, DM) == [2, 3]

    run(tmp_path, body)


def test_catch_up_queries_skip_over_backlogs_with_a_gap(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("bob", "general", 30)
        state = w.router.states[w.group_of("general")]
        page = CatchUp((("general", 5), ("nope", 0)), limit=50, max_backlog=10, keep=4).run(state)
        assert page.gaps == (Gap("general", 6, 26),)
        assert [m.seq for m in page.page.messages] == [27, 28, 29, 30]
        near = CatchUp((("general", 20),), limit=50, max_backlog=10, keep=4).run(state)
        assert near.gaps == () and [m.seq for m in near.page.messages] == list(range(21, 31))

    run(tmp_path, body)


# ---- live pushing -------------------------------------------------------------------------------


def test_in_order_events_are_pushed_once_and_others_ignored(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        await w.post("bob", "general", 3)
        e1, e2, e3 = commits(w.take())
        assert seqs(await h.push(e1, e2, e3), "general") == [1, 2, 3]
        assert msgs(await h.push(e2, e3, e1)) == []  # duplicates: at or below the cursor
        await w.post("carol", "random")  # a channel alice is not in
        await w.router.propose(w.group_of("general"), JoinChannel("general", "carol", MS))
        await w.post("carol", "dm:bob:carol")  # someone else's DM
        await w.post("carol", "general")
        frames = await h.push(*w.take())
        assert msgs(frames) == [("general", 4, "carol 6")]
        assert [
            (m.user, m.display_name, m.change, m.member_count) for f in frames for m in f.membership
        ] == [("carol", "Carol", pb.MEMBERSHIP_CHANGE_JOINED, 3)]

    run(tmp_path, body)


def test_a_gap_is_filled_by_a_catch_up_in_order(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        await w.post("bob", "general", 5)
        e1, e2, e3, e4, e5 = commits(w.take())
        assert seqs(await h.push(e1), "general") == [1]
        w.log.clear()
        assert seqs(await h.push(e4), "general") == [2, 3, 4, 5]  # read from the cursor
        assert "query CatchUp" in w.log  # linearizable
        assert msgs(await h.push(e2, e5, e3)) == []
        await w.post("bob", "general")
        assert seqs(await h.push(*w.take()), "general") == [6]

    run(tmp_path, body)


def test_a_dm_that_starts_is_tracked_from_seq_1(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.users("alice", "bob", "carol")
        h, hub = w.session("alice")
        frames = await h.start()
        assert frames[0].resumed.cursors == {}
        await w.post("bob", DM, 2)
        frames = await h.push(*w.take())
        assert msgs(frames) == [(DM, 1, "bob 1"), (DM, 2, "bob 2")]
        assert frames[0].messages[0].sender_display == "Bob"
        assert DM in hub.tracked
        # bob is now a contact: his first session opening is announced.
        await w.router.propose(w.user_group("bob"), SetRoute("bob", "b1", 2, MS))
        frames = await h.push(*w.take())
        assert [(p.user, p.online, p.node_id) for f in frames for p in f.presence] == [
            ("bob", True, 2)
        ]
        # A DM that begins with an event beyond seq 1 is read from its start.
        await w.post("carol", "dm:alice:carol", 3)
        late = commits(w.take())[-1]
        assert seqs(await h.push(late), "dm:alice:carol") == [1, 2, 3]

    run(tmp_path, body)


def test_own_join_tracks_from_its_last_seq_and_own_leave_stops_pushing(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("carol", "random", 3)
        h, hub = w.session("alice")
        await h.start()
        w.take()
        await w.router.propose(w.group_of("random"), JoinChannel("random", "alice", MS))
        await w.post("carol", "random")
        joined, message = w.take()
        assert isinstance(joined, MembershipChanged) and joined.last_seq == 3
        frames = await h.push(joined, message)
        assert [(m.channel, m.user, m.change, m.member_count) for m in frames[0].membership] == [
            ("random", "alice", pb.MEMBERSHIP_CHANGE_JOINED, 2)
        ]
        assert msgs(frames) == [("random", 4, "carol 4")]  # not 1..3: history is History's
        assert "random" in hub.tracked
        await w.router.propose(w.group_of("random"), LeaveChannel("random", "alice", MS))
        await w.post("carol", "random")
        frames = await h.push(*w.take())
        assert [(m.channel, m.change) for f in frames for m in f.membership] == [
            ("random", pb.MEMBERSHIP_CHANGE_LEFT)
        ]
        assert msgs(frames) == []
        assert "random" not in hub.tracked
        await w.post("carol", "random")
        assert msgs(await h.push(*w.take())) == []

    run(tmp_path, body)


def test_presence_is_for_contacts_and_only_first_open_and_last_close(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        w.take()
        bob, carol, alice = w.user_group("bob"), w.user_group("carol"), w.user_group("alice")
        steps: list[tuple[GroupId, Command]] = [
            (bob, SetRoute("bob", "b1", 2, MS)),  # first open: online
            (bob, SetRoute("bob", "b2", 3, MS)),  # a second session: nothing
            (bob, SetRoute("bob", "b1", 3, MS)),  # b1 moves: nothing
            (carol, SetRoute("carol", "c1", 2, MS)),  # not a contact: nothing
            (alice, SetRoute("alice", "laptop", 2, MS)),  # alice's other session: nothing
            (bob, DropRoute("bob", "b1")),  # one left: nothing
            (bob, DropRoute("bob", "b2")),  # last close: offline
        ]
        for group, cmd in steps:
            await w.router.propose(group, cmd)
        frames = await h.push(*w.take())
        assert [(p.user, p.online, p.node_id) for f in frames for p in f.presence] == [
            ("bob", True, 2),
            ("bob", False, 0),
        ]

    run(tmp_path, body)


def test_presence_carries_the_contacts_display_name(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        await w.router.propose(w.user_group("bob"), SetRoute("bob", "b1", 2, MS))
        frames = await h.push(*w.take())
        assert [(p.user, p.display_name) for f in frames for p in f.presence] == [("bob", "Bob")]

    run(tmp_path, body)


def test_a_new_contact_who_is_already_online_is_told_at_once(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.router.propose(w.user_group("carol"), SetRoute("carol", "c1", 3, MS))
        h, _ = w.session("alice")
        await h.start()
        w.take()  # carol came online before she was alice's contact: no event for alice
        await w.router.propose(w.group_of("general"), JoinChannel("general", "carol", MS))
        frames = await h.push(*w.take())
        presence = [(p.user, p.online, p.node_id) for f in frames for p in f.presence]
        assert presence == [("carol", True, 3)]

    run(tmp_path, body)


def test_the_same_session_routed_to_another_node_ends_the_stream(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        own = w.take()  # its own route being set, here: not a move
        assert own == [RouteChanged("alice", "phone", 1, True, 1, 0)]
        assert await h.push(*own) == []
        await w.router.propose(w.user_group("alice"), SetRoute("alice", "phone", 2, MS))
        (moved,) = w.take()
        with pytest.raises(SessionEnded) as info:
            await h.push(moved)
        assert info.value.code is grpc.StatusCode.ABORTED
        assert "node 2" in info.value.details
        # The old gateway's clean-up does not drop the route the new one set.
        await h.session.stop()
        assert w.routes("alice") == [Route("alice", "phone", 2, MS)]

    run(tmp_path, body)


def test_a_live_session_whose_route_was_reaped_routes_itself_again(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        await h.push(*w.take())  # its own route being set
        # The reaper of a node that took this one for dead drops the route under the stream.
        await w.router.propose(w.user_group("alice"), DropRoute("alice", "phone", 1))
        (dropped,) = w.take()
        assert dropped == RouteChanged("alice", "phone", 0, False, 0)
        assert w.routes("alice") == []
        await h.push(dropped)
        assert [(r.user, r.session_id, r.gateway_node) for r in w.routes("alice")] == [
            ("alice", "phone", 1)
        ]

    run(tmp_path, body)


def test_an_old_stream_on_the_same_node_does_not_drop_the_new_streams_route(
    tmp_path: Path,
) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        old, hub = w.session("alice", "phone")
        await old.start()
        new, _ = w.session("alice", "phone", hub)  # the client reconnected to the same gateway
        await new.start()
        await old.push(*w.take())  # the new route's event: same node, the old stream goes on
        await old.session.stop()  # later, the old stream ends (e.g. heartbeat timeout)
        assert w.routes("alice") == [Route("alice", "phone", 1, MS)]

    run(tmp_path, body)


# ---- re-reading after a hub restart (Resync) -------------------------------------------------


def test_resync_rereads_the_group_and_picks_up_conversations_entered_meanwhile(
    tmp_path: Path,
) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("carol", "random", 2)
        h, hub = w.session("alice")
        await h.start()
        # Events of these writes are lost (the hub's watch broke):
        await w.post("bob", "general", 2)
        await w.router.propose(w.group_of("random"), JoinChannel("random", "alice", MS))
        w.take()
        frames = await h.push(Resync(w.group_of("general")), Resync(w.group_of("random")))
        assert seqs(frames, "general") == [1, 2]  # re-read from the cursor
        assert seqs(frames, "random") == []  # entered meanwhile: not its history
        assert {"general", "random"} <= hub.tracked
        await w.post("carol", "random")
        assert seqs(await h.push(*w.take()), "random") == [3]

    run(tmp_path, body)


def test_resync_pushes_what_came_after_a_missed_join(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        await w.post("carol", "random", 2)
        h, _ = w.session("alice")
        await h.start()
        await w.router.propose(w.group_of("random"), JoinChannel("random", "alice", MS))
        await w.post("carol", "random")  # after alice joined
        w.take()  # lost
        frames = await h.push(Resync(w.group_of("random")))
        pushed = seqs(frames, "random")
        announced = [g.conversation for f in frames for g in f.gaps]
        assert pushed == [3] or announced == ["random"]

    run(tmp_path, body)


def test_resync_after_a_missed_leave_stops_pushing_that_channel(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, hub = w.session("alice")
        await h.start()
        # alice leaves on another device; this session misses the event (watch broke).
        await w.router.propose(w.group_of("general"), LeaveChannel("general", "alice", MS))
        await w.post("bob", "general")
        w.take()
        frames = await h.push(Resync(w.group_of("general")))
        assert msgs(frames) == []  # not a member anymore: no message of #general
        assert "general" not in hub.tracked

    run(tmp_path, body)


def test_the_creator_of_a_channel_is_pushed_its_messages(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        await w.create("news", "alice", "bob")
        await w.post("bob", "news")
        assert seqs(await h.push(*w.take()), "news") == [1]

    run(tmp_path, body)


def test_a_message_committed_right_after_the_start_read_is_pushed(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        hub = PushHub(NODE, w.feed, cast("ClusterRouter", None), w.placement.group_for)
        w.feed.listen(hub._dispatch)  # the hub gets every batch the moment it is applied
        general = w.group_of("general")

        def commit_after_read(group: GroupId, query: object) -> None:
            if group == general and type(query).__name__ == "ConversationsOf":
                w.router.on_query = None
                cmd = PostMessage("general", "bob", "late", "just after the read", MS, 0)
                w.router.apply(general, [cmd])

        w.router.on_query = commit_after_read
        h, _ = w.session("alice", hub=hub)
        frames = await h.start()
        assert frames[0].resumed.cursors["general"] == 0
        assert seqs(await h.push(), "general") == [1]

    run(tmp_path, body)


# ---- client frames ----------------------------------------------------------------------------


def _send(key: str, conversation: str = "", to: str = "", text: str = "hi") -> pb.SendRequest:
    if to:
        return pb.SendRequest(to_user=to, text=text, idempotency_key=key)
    return pb.SendRequest(conversation=conversation, text=text, idempotency_key=key)


def _frame(user: str, **fields: object) -> api.SessionFrame:
    return api.parse_client_frame(pb.ClientFrame(**fields), user, first=False)  # type: ignore[arg-type]


def _failure(result: pb.SendResult) -> tuple[grpc.StatusCode, str]:
    code = next(c for c in grpc.StatusCode if c.value[0] == result.error.code)
    return code, result.error.field


async def _other_channel(w: World) -> str:
    """A channel alice is in whose group is not #general's."""
    for i in range(50):
        name = f"side{i}"
        if w.group_of(name) != w.group_of("general"):
            await w.create(name, "alice")
            return name
    raise AssertionError("no channel name in another group")


def test_sends_to_several_groups_answer_by_key_in_request_order(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        side = await _other_channel(w)
        h, _ = w.session("alice")
        await h.start()
        w.router.batches.clear()
        sends = [
            _send("k1", "general"),
            _send("k2", side),
            _send("k3", "general"),
            _send("k4", to="bob"),
        ]
        out = await h.session.handle_frame(_frame("alice", sends=sends, heartbeat=7))
        assert out.heartbeat == 7
        assert [(r.idempotency_key, r.sent.conversation, r.sent.seq) for r in out.results] == [
            ("k1", "general", 1),
            ("k2", side, 1),
            ("k3", "general", 2),
            ("k4", DM, 1),
        ]
        assert not any(r.sent.duplicate for r in out.results)
        # One proposal batch per owning group.
        groups = {w.group_of(c) for c in ("general", side, DM)}
        assert sorted(g for g, _ in w.router.batches) == sorted(groups)
        assert sum(n for _, n in w.router.batches) == 4
        # The same frame again (a retry): the same answers, marked duplicate, nothing new.
        again = await h.session.handle_frame(_frame("alice", sends=sends))
        assert [(r.sent.seq, r.sent.duplicate) for r in again.results] == [
            (1, True),
            (1, True),
            (2, True),
            (1, True),
        ]

    run(tmp_path, body)


def test_a_bad_send_fails_alone(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        h, _ = w.session("alice")
        await h.start()
        sends = [
            _send("k1", "general"),
            _send("k2", "general", text=" "),
            _send("k3", "random"),  # not a member
            _send("k4", to="nobody"),  # no such user
            _send("k5", "nope"),  # no such channel
            _send("k1", "general"),  # a key repeated within the frame
            _send("k7", "dm:bob:carol"),  # someone else's DM
            _send("k8", "general"),
        ]
        out = await h.session.handle_frame(_frame("alice", sends=sends))
        assert [r.idempotency_key for r in out.results] == [s.idempotency_key for s in sends]
        failures = [
            (i, *_failure(r))
            for i, r in enumerate(out.results)
            if r.WhichOneof("outcome") == "error"
        ]
        assert failures == [
            (1, grpc.StatusCode.INVALID_ARGUMENT, "sends[1].text"),
            (2, grpc.StatusCode.PERMISSION_DENIED, "sends[2].conversation"),
            (3, grpc.StatusCode.NOT_FOUND, "sends[3].to_user"),
            (4, grpc.StatusCode.NOT_FOUND, "sends[4].conversation"),
            (5, grpc.StatusCode.INVALID_ARGUMENT, "sends[5].idempotency_key"),
            (6, grpc.StatusCode.PERMISSION_DENIED, "sends[6].conversation"),
        ]
        assert [(r.sent.conversation, r.sent.seq) for r in out.results if r.HasField("sent")] == [
            ("general", 1),
            ("general", 2),
        ]

    run(tmp_path, body)


def test_a_group_that_cannot_commit_fails_only_its_sends(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        side = await _other_channel(w)
        h, _ = w.session("alice")
        await h.start()
        w.router.fail[w.group_of(side)] = ApiError(grpc.StatusCode.UNAVAILABLE, "", "no quorum")
        sends = [_send("k1", side), _send("k2", "general"), _send("k3", side)]
        out = await h.session.handle_frame(_frame("alice", sends=sends))
        assert [r.WhichOneof("outcome") for r in out.results] == ["error", "sent", "error"]
        assert out.results[0].error.code == grpc.StatusCode.UNAVAILABLE.value[0]

    run(tmp_path, body)


def test_sends_past_the_rate_are_resource_exhausted_with_retry_after(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        now = [0.0]
        w.svc.limiter = SendRateLimiter(rate=2, burst=2, clock=lambda: now[0])
        h, _ = w.session("alice")
        await h.start()
        sends = [_send(f"k{i}", "general") for i in range(3)]
        before = len(w.router.proposed)
        out = await h.session.handle_frame(_frame("alice", sends=sends))
        # The burst goes through; the send past it fails alone, naming itself.
        assert [r.WhichOneof("outcome") for r in out.results] == ["sent", "sent", "error"]
        assert _failure(out.results[2]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "sends[2]")
        assert out.results[2].error.retry_after_ms == 500  # one token missing at 2/s
        assert len(w.router.proposed) == before + 2  # the two granted, nothing more
        now[0] += 1.0
        # Invalid sends cost nothing: two valid ones fit the refilled burst.
        sends = [_send("a", "general", text=""), _send("b", "general"), _send("c", "general")]
        out = await h.session.handle_frame(_frame("alice", sends=sends))
        assert [r.WhichOneof("outcome") for r in out.results] == ["error", "sent", "sent"]
        out = await h.session.handle_frame(_frame("alice", sends=[_send("d", "general")]))
        assert out.results[0].error.retry_after_ms == 500
        now[0] += 0.5
        out = await h.session.handle_frame(_frame("alice", sends=[_send("d", "general")]))
        assert out.results[0].sent.seq == 5

    run(tmp_path, body)


def test_mark_read_failures_are_named_by_their_index(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await alice_bob_general(w)
        side = await _other_channel(w)
        await w.post("bob", "general", 3)
        await w.post("carol", "random")
        h, _ = w.session("alice")
        await h.start()
        w.router.fail[w.group_of(side)] = ApiError(grpc.StatusCode.UNAVAILABLE, "", "no quorum")
        marks = [
            pb.MarkReadRequest(conversation="general", seq=2),
            pb.MarkReadRequest(conversation="general", seq=99),
            pb.MarkReadRequest(conversation="random", seq=1),
            pb.MarkReadRequest(conversation="general", seq=0),
            pb.MarkReadRequest(conversation=side, seq=1),
            pb.MarkReadRequest(conversation="dm:bob:carol", seq=1),
        ]
        out = await h.session.handle_frame(_frame("alice", mark_reads=marks))
        codes = {c.value[0]: c for c in grpc.StatusCode}
        assert [(codes[e.code], e.field) for e in out.errors] == [
            (grpc.StatusCode.FAILED_PRECONDITION, "mark_reads[1].seq"),
            (grpc.StatusCode.PERMISSION_DENIED, "mark_reads[2].conversation"),
            (grpc.StatusCode.INVALID_ARGUMENT, "mark_reads[3].seq"),
            (grpc.StatusCode.UNAVAILABLE, "mark_reads[4]"),
            (grpc.StatusCode.PERMISSION_DENIED, "mark_reads[5].conversation"),
        ]
        state = w.router.states[w.group_of("general")]
        assert state.unread("alice", "general") == 1  # the good one moved the marker

    run(tmp_path, body)
