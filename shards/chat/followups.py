"""Drains the outbox of every group this node leads: cross-group effects, retried until done.

A DM's first message is committed in the DM's group, together with one outbox entry per
participant (``ChatState``). The entry must become an ``AddDmConversation`` in that
participant's own group, so the DM shows in their conversation list there. The leader of the
DM's group proposes it, then ``AckFollowUp`` to delete the entry. Both commands are idempotent,
so a crash between them (or a new leader repeating the work) only repeats a no-op: the effect
happens at least once and shows exactly once. Nothing is best effort: an entry stays in the
replicated outbox until acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final

from cluster.host import NodeHost
from cluster.types import GroupId, NodeId
from shards.chat import queries
from shards.chat.api import ApiError
from shards.chat.commands import AckFollowUp, AddDmConversation
from shards.chat.service import Router
from shards.chat.state import ChatState

log = logging.getLogger("shards.chat.followups")

IDLE_SECONDS: Final = 0.5
"""How often the outboxes are looked at when nothing woke the drainer earlier."""


class FollowUpDrainer:
    def __init__(
        self,
        node_id: NodeId,
        host: NodeHost,
        machines: Mapping[GroupId, ChatState],
        router: Router,
        group_of_user: Callable[[str], GroupId],
    ) -> None:
        self._me = node_id
        self._host = host
        self._machines = machines
        self._router = router
        self._group_of_user = group_of_user
        self._wake = asyncio.Event()
        self.done = 0

    def wake(self) -> None:
        """New follow-ups may be waiting (a DM began)."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            for group, state in self._machines.items():
                if self._host.leader(group) != self._me:
                    continue
                try:
                    await self._drain(group, state)
                except ApiError as exc:  # the next round tries again
                    log.info("group %s follow-ups wait: %s", group, exc)

    async def _drain(self, group: GroupId, state: ChatState) -> None:
        for follow in queries.PendingFollowUps().run(state):
            target = self._group_of_user(follow.user)
            add = AddDmConversation(follow.user, follow.conversation, follow.peer)
            await self._router.propose(target, add)
            await self._router.propose(group, AckFollowUp(follow.id))
            self.done += 1
