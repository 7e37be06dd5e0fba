"""The applied-events feed (``shards.chat.feed``): what a ``FeedingChatState`` publishes for each
applied batch, read against a real SQLite ``ChatState``, and how the ``Feed`` fans batches out
to subscribers, cutting a slow one or all of them after a snapshot restore."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from cluster.types import GroupId
from shards.chat import wire
from shards.chat.commands import (
    Command,
    CreateChannel,
    DropRoute,
    Hlc,
    JoinChannel,
    LeaveChannel,
    PostMessage,
    SetRoute,
    encode_command,
)
from shards.chat.feed import (
    Feed,
    FeedBatch,
    FeedingChatState,
    Lagged,
    MembershipChanged,
    MessageCommitted,
    RouteChanged,
)
from shards.chat.schema import Message

GROUP = GroupId(3)
MS = 1_700_000_000_000


class Replica:
    """A FeedingChatState whose log is appended here, batch by batch, and a record of every
    batch the feed published (through a listener)."""

    def __init__(self, path: Path, feed: Feed | None = None) -> None:
        self.feed = feed or Feed()
        self.state = FeedingChatState(path, GROUP, self.feed)
        self.published: list[FeedBatch] = []
        self.feed.listen(self.published.append)
        self.index = 0

    def apply(self, *commands: Command) -> list[object | None]:
        entries = []
        for cmd in commands:
            self.index += 1
            entries.append(Entry(1, self.index, encode_command(cmd)))
        return self.state.apply(entries)

    def events(self, *commands: Command) -> tuple[object, ...] | None:
        """Apply ``commands`` as one batch; the events published for it (None: no batch)."""
        before = len(self.published)
        self.apply(*commands)
        assert len(self.published) - before <= 1
        if len(self.published) == before:
            return None
        batch = self.published[-1]
        assert (batch.group, batch.applied_index) == (int(GROUP), self.index)
        return batch.events


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path / "group.db")
    try:
        yield r
    finally:
        r.state.close()


def post(sender: str, key: str, conv: str = "general", text: str = "") -> PostMessage:
    return PostMessage(conv, sender, key, text or f"{sender} {key}", MS, 0)


def committed(seq: int, sender: str, key: str, conv: str = "general") -> MessageCommitted:
    return MessageCommitted(Message(conv, seq, sender, f"{sender} {key}", Hlc(MS, seq - 1), key))


# ---- events of a batch -------------------------------------------------------------------------


def test_each_event_states_the_log_position_right_after_its_own_entry(replica: Replica) -> None:
    replica.apply(CreateChannel("general", "carol", MS))
    events = replica.events(
        JoinChannel("general", "alice", MS),
        post("alice", "k1"),
        post("alice", "k2"),
        post("alice", "k3"),
        JoinChannel("general", "bob", MS),
        post("bob", "k1"),
        JoinChannel("general", "dave", MS),
        LeaveChannel("general", "dave", MS),
        post("carol", "k1"),
    )
    assert events == (
        MembershipChanged("general", "alice", True, member_count=2, last_seq=0),
        committed(1, "alice", "k1"),
        committed(2, "alice", "k2"),
        committed(3, "alice", "k3"),
        MembershipChanged("general", "bob", True, member_count=3, last_seq=3),
        committed(4, "bob", "k1"),
        MembershipChanged("general", "dave", True, member_count=4, last_seq=4),
        MembershipChanged("general", "dave", False, member_count=3, last_seq=4),
        committed(5, "carol", "k1"),
    )
    # The next batch starts from the state the last one left.
    assert replica.events(LeaveChannel("general", "alice", MS), post("bob", "k2")) == (
        MembershipChanged("general", "alice", False, member_count=2, last_seq=5),
        committed(6, "bob", "k2"),
    )


def test_counts_are_per_channel_in_a_batch_touching_several(replica: Replica) -> None:
    replica.apply(CreateChannel("general", "carol", MS), CreateChannel("random", "carol", MS))
    events = replica.events(
        JoinChannel("random", "alice", MS),
        post("carol", "r1", conv="random"),
        JoinChannel("general", "alice", MS),
        post("carol", "g1"),
        post("carol", "g2"),
        JoinChannel("random", "bob", MS),
    )
    assert events is not None
    changes = [e for e in events if isinstance(e, MembershipChanged)]
    assert changes == [
        MembershipChanged("random", "alice", True, 2, 0),
        MembershipChanged("general", "alice", True, 2, 0),
        MembershipChanged("random", "bob", True, 3, 1),
    ]


def test_duplicates_no_op_joins_and_refusals_give_no_event(replica: Replica) -> None:
    replica.apply(
        CreateChannel("general", "carol", MS),
        JoinChannel("general", "alice", MS),
        post("alice", "k1"),
    )
    nothing = replica.events(
        JoinChannel("general", "alice", MS),  # already a member
        LeaveChannel("general", "dave", MS),  # never was one
        post("alice", "k1", text="a retry"),  # the same key: a duplicate
        post("dave", "k1"),  # not a member: rejected
        JoinChannel("nope", "alice", MS),  # no such channel
        DropRoute("alice", "never-set"),  # nothing to drop
        CreateChannel("general", "carol", MS),  # an exact replay
    )
    assert nothing is None
    # Entries already applied (a replay after a crash) give nothing either.
    replica.state.apply([Entry(1, 3, encode_command(post("alice", "k9")))])
    noop = replica.state.apply([Entry(2, replica.index + 1, b"", EntryKind.NOOP)])
    assert noop == [None]
    assert len(replica.published) == 1  # only the first batch's events


def test_a_dm_message_is_an_event(replica: Replica) -> None:
    dm = "dm:alice:bob"
    assert replica.events(post("bob", "k1", conv=dm)) == (committed(1, "bob", "k1", conv=dm),)


def test_creating_a_channel_announces_its_creator_as_a_member(replica: Replica) -> None:
    assert replica.events(CreateChannel("general", "carol", MS)) == (
        MembershipChanged("general", "carol", True, member_count=1, last_seq=0),
    )


def test_route_changes_count_sessions_after_each_entry(replica: Replica) -> None:
    events = replica.events(
        SetRoute("alice", "s1", 1, MS),
        SetRoute("alice", "s2", 2, MS),
        SetRoute("bob", "s1", 1, MS),
        SetRoute("alice", "s1", 3, MS),  # s1 moves from node 1 to node 3
        SetRoute("alice", "s1", 3, MS + 1),  # set again where it is
        DropRoute("alice", "s2"),
        DropRoute("alice", "s1", gateway_node=1),  # not there anymore: no-op
        DropRoute("alice", "s9"),  # never set: no-op
    )
    assert events == (
        RouteChanged("alice", "s1", 1, True, sessions=1, previous_node=0),
        RouteChanged("alice", "s2", 2, True, sessions=2, previous_node=0),
        RouteChanged("bob", "s1", 1, True, sessions=1, previous_node=0),
        RouteChanged("alice", "s1", 3, True, sessions=2, previous_node=1),
        RouteChanged("alice", "s1", 3, True, sessions=2, previous_node=3),
        RouteChanged("alice", "s2", 0, False, sessions=1),
    )
    assert replica.events(DropRoute("alice", "s1", gateway_node=3)) == (
        RouteChanged("alice", "s1", 0, False, sessions=0),
    )


def test_batches_go_on_the_wire(replica: Replica) -> None:
    replica.apply(CreateChannel("general", "carol", MS))
    replica.apply(
        JoinChannel("general", "alice", MS), post("alice", "k1"), SetRoute("a", "s", 1, 0)
    )
    for batch in replica.published:
        assert wire.decode_as(wire.encode(batch), FeedBatch) == batch


# ---- the feed ----------------------------------------------------------------------------------


def _batch(index: int, group: GroupId = GROUP) -> FeedBatch:
    return FeedBatch(int(group), index, (RouteChanged("u", "s", 1, True, 1),))


def _publish_all(feed: Feed, batches: Sequence[FeedBatch]) -> None:
    for batch in batches:
        feed.publish(batch)


def test_subscribers_get_every_batch_of_their_group_in_order() -> None:
    async def main() -> None:
        feed = Feed()
        a, b = feed.subscribe(GROUP), feed.subscribe(GROUP)
        other = feed.subscribe(GroupId(4))
        waiting = asyncio.create_task(a.next())
        await asyncio.sleep(0)  # let it block: publish must wake it
        assert not waiting.done()
        feed.publish(_batch(1))
        assert await waiting == [_batch(1)]
        _publish_all(feed, [_batch(2), _batch(3), _batch(7, GroupId(4))])
        assert await a.next() == [_batch(2), _batch(3)]
        assert await b.next() == [_batch(1), _batch(2), _batch(3)]
        assert await other.next() == [_batch(7, GroupId(4))]
        b.close()
        feed.publish(_batch(4))
        assert await a.next() == [_batch(4)]
        assert not b.lagged

    asyncio.run(main())


def test_a_slow_subscriber_over_max_pending_is_cut_and_others_go_on() -> None:
    async def main() -> None:
        feed = Feed(max_pending=2)
        slow, fast = feed.subscribe(GROUP), feed.subscribe(GROUP)
        for i in (1, 2):
            feed.publish(_batch(i))
            assert await fast.next() == [_batch(i)]
        assert not slow.lagged  # exactly max_pending waiting is still fine
        feed.publish(_batch(3))
        assert slow.lagged and not fast.lagged
        with pytest.raises(Lagged) as info:
            await slow.next()  # what it had is gone too: it must re-read
        assert info.value.group == GROUP
        feed.publish(_batch(4))
        assert await fast.next() == [_batch(3), _batch(4)]
        with pytest.raises(Lagged):
            await slow.next()
        slow.close()
        again = feed.subscribe(GROUP)  # re-subscribing after re-reading works
        feed.publish(_batch(5))
        assert await again.next() == [_batch(5)]

    asyncio.run(main())


def test_a_restore_cuts_every_subscriber_of_the_group(tmp_path: Path) -> None:
    async def main() -> None:
        feed = Feed()
        replica = Replica(tmp_path / "group.db", feed)
        try:
            replica.apply(CreateChannel("general", "carol", MS))
            image = replica.state.snapshot()
            idle, queued = feed.subscribe(GROUP), feed.subscribe(GROUP)
            untouched = feed.subscribe(GroupId(4))
            replica.apply(JoinChannel("general", "alice", MS))
            waiting = asyncio.create_task(idle.next())
            assert await waiting == [replica.published[-1]]
            waiting = asyncio.create_task(idle.next())
            await asyncio.sleep(0)
            replica.state.restore(Snapshot(SnapshotMeta(1, 1), image))
            with pytest.raises(Lagged):
                await waiting  # woken by the cut
            with pytest.raises(Lagged):
                await queued.next()  # its queued batch was dropped
            assert idle.lagged and queued.lagged and not untouched.lagged
            # The restored state publishes to new subscribers only.
            fresh = feed.subscribe(GROUP)
            replica.index = 1
            replica.apply(JoinChannel("general", "bob", MS))
            assert [b.events for b in await fresh.next()] == [
                (MembershipChanged("general", "bob", True, 2, 0),)
            ]
            idle.close()
            queued.close()  # closing after the cut is harmless
        finally:
            replica.state.close()

    asyncio.run(main())


def test_listeners_see_every_batch_synchronously() -> None:
    feed = Feed(max_pending=1)
    seen: list[FeedBatch] = []
    also: list[int] = []
    feed.listen(seen.append)
    feed.listen(lambda b: also.append(b.applied_index))
    sub = feed.subscribe(GROUP)
    for i in (1, 2, 3):
        feed.publish(_batch(i, GroupId(i)))
    assert seen == [_batch(1, GroupId(1)), _batch(2, GroupId(2)), _batch(3, GroupId(3))]
    assert also == [1, 2, 3]
    assert sub.lagged is False  # only group 3's batch was its
    feed.reset(GroupId(9))  # a group nobody follows
