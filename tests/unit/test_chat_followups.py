"""The DM follow-up drainer (``shards.chat.followups``) over an in-memory router: a DM's first
message leaves one outbox entry per participant in the DM's group; draining turns each into an
``AddDmConversation`` in the participant's own group and then acknowledges it, and repeating
any of that (a crash between the two, a second leader) changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from cluster.host import NodeHost
from cluster.types import GroupId, NodeId
from shards.chat.api import ApiError
from shards.chat.commands import (
    AckFollowUp,
    AddDmConversation,
    Command,
    Posted,
    PostMessage,
    RegisterUser,
)
from shards.chat.followups import FollowUpDrainer
from shards.chat.schema import ConversationRef, FollowUp
from shards.chat.service import conversation_key, user_key
from shards.placement import Placement
from tests.unit.test_chat_service import MemoryRouter

ME = NodeId(1)
GROUPS = 4
DM = "dm:alice:bob"
MS = 1_700_000_000_000


class FakeHost:
    """Only what the drainer asks a NodeHost: who leads a group. Records each question."""

    def __init__(self, leaders: dict[GroupId, NodeId] | None = None) -> None:
        self.leaders = leaders or {}
        self.asked: list[GroupId] = []

    def leader(self, group: GroupId) -> NodeId:
        self.asked.append(group)
        return self.leaders.get(group, ME)


class FlakyRouter(MemoryRouter):
    """A MemoryRouter whose next proposals of the given kinds fail as a lost quorum would."""

    def __init__(self, root: Path, groups: int) -> None:
        super().__init__(root, groups)
        self.fail_next: list[type[Command]] = []

    async def propose(self, group: GroupId, command: Command) -> object:
        if self.fail_next and isinstance(command, self.fail_next[0]):
            self.fail_next.pop(0)
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "", "no quorum")
        return await super().propose(group, command)


class World:
    def __init__(self, root: Path) -> None:
        self.placement = Placement([ME], GROUPS, 1)
        self.router = FlakyRouter(root, GROUPS)
        self.host = FakeHost()
        self.drainer = FollowUpDrainer(
            ME,
            cast(NodeHost, self.host),
            self.router.states,
            self.router,
            lambda user: self.placement.group_for(user_key(user)),
        )
        self.dm_group = self.placement.group_for(conversation_key(DM))

    def user_group(self, user: str) -> GroupId:
        return self.placement.group_for(user_key(user))

    async def start_dm(self) -> Posted:
        for user in ("alice", "bob"):
            await self.router.propose(
                self.user_group(user), RegisterUser(user, user.capitalize(), "hash", MS)
            )
        posted = await self.router.propose(
            self.dm_group, PostMessage(DM, "alice", "k1", "psst", MS, 0)
        )
        assert isinstance(posted, Posted)
        self.router.proposed.clear()
        return posted

    def listed_in_own_group(self, user: str) -> list[ConversationRef]:
        return [
            r
            for r in self.router.states[self.user_group(user)].conversations_of(user)
            if r.conversation == DM
        ]

    async def drain(self) -> None:
        await self.drainer._drain(self.dm_group, self.router.states[self.dm_group])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.router.close()


def test_a_dms_first_message_owes_each_participant_a_follow_up(world: World) -> None:
    posted = asyncio.run(world.start_dm())
    outbox = world.router.states[world.dm_group].outbox()
    assert len(posted.follow_ups) == 2
    assert outbox == [
        FollowUp(posted.follow_ups[0], "alice", DM, "bob"),
        FollowUp(posted.follow_ups[1], "bob", DM, "alice"),
    ]
    # A second message owes nothing more.
    again = asyncio.run(
        world.router.propose(world.dm_group, PostMessage(DM, "bob", "k1", "yes?", MS, 0))
    )
    assert isinstance(again, Posted) and again.follow_ups == ()
    assert world.router.states[world.dm_group].outbox() == outbox


def test_draining_adds_the_dm_in_each_users_group_then_acknowledges(world: World) -> None:
    async def main() -> None:
        posted = await world.start_dm()
        first, second = posted.follow_ups
        await world.drain()
        assert world.router.proposed == [
            (world.user_group("alice"), AddDmConversation("alice", DM, "bob")),
            (world.dm_group, AckFollowUp(first)),
            (world.user_group("bob"), AddDmConversation("bob", DM, "alice")),
            (world.dm_group, AckFollowUp(second)),
        ]
        assert world.drainer.done == 2
        assert world.router.states[world.dm_group].outbox() == []
        for user, peer in (("alice", "bob"), ("bob", "alice")):
            (ref,) = world.listed_in_own_group(user)
            assert ref.peer == peer
        # Draining again: nothing left, nothing proposed.
        world.router.proposed.clear()
        await world.drain()
        assert world.router.proposed == []
        assert world.drainer.done == 2

    asyncio.run(main())


def test_a_crash_between_add_and_ack_only_repeats_a_no_op(world: World) -> None:
    async def main() -> None:
        await world.start_dm()
        before = world.router.dumps()
        world.router.fail_next = [AckFollowUp]  # the add commits, its ack is lost
        with pytest.raises(ApiError):
            await world.drain()
        assert len(world.router.states[world.dm_group].outbox()) == 2  # nothing acknowledged
        await world.drain()  # a new round (or another leader) repeats the add: a no-op
        await world.drain()
        after = world.router.dumps()
        assert world.router.states[world.dm_group].outbox() == []
        for user in ("alice", "bob"):
            assert len(world.listed_in_own_group(user)) == 1
        changed = {g for g in after if after[g] != before[g]}
        assert changed <= {world.dm_group, world.user_group("alice"), world.user_group("bob")}
        adds = [c for _, c in world.router.proposed if isinstance(c, AddDmConversation)]
        assert adds.count(AddDmConversation("alice", DM, "bob")) == 2
        assert adds.count(AddDmConversation("bob", DM, "alice")) == 1

    asyncio.run(main())


def test_the_background_task_drains_groups_it_leads_and_retries_failures(
    world: World,
) -> None:
    async def main() -> None:
        await world.start_dm()
        world.router.fail_next = [AddDmConversation]  # the first round fails
        task = asyncio.create_task(world.drainer.run_forever())
        try:
            world.drainer.wake()
            async with asyncio.timeout(5):
                while world.drainer.done < 2:
                    if len(world.host.asked) >= GROUPS and not world.router.fail_next:
                        world.drainer.wake()  # a later round; no waiting for the idle timer
                    await asyncio.sleep(0.01)  # poll interval, under the 5 s deadline
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert world.router.states[world.dm_group].outbox() == []

    asyncio.run(main())


def test_groups_led_by_another_node_are_left_alone(world: World) -> None:
    async def main() -> None:
        await world.start_dm()
        world.host.leaders = {world.dm_group: NodeId(2)}
        task = asyncio.create_task(world.drainer.run_forever())
        try:
            world.drainer.wake()
            async with asyncio.timeout(5):
                while len(world.host.asked) < GROUPS:  # one whole round (no await in it)
                    await asyncio.sleep(0.01)  # poll interval, under the 5 s deadline
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert world.router.proposed == []
        assert len(world.router.states[world.dm_group].outbox()) == 2

    asyncio.run(main())
