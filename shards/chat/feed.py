"""What a group's replica applies, as events for pushing: the source of the Session stream.

Why events come from apply: a message is pushed only once it is committed and applied, so a
pushed message is always one that History returns, with its final seq. Every replica applies the
same log, so a gateway may follow any replica of a group (the leader's is the freshest).

``FeedingChatState`` is a ``ChatState`` that turns each applied batch's results into a
:class:`FeedBatch` and hands it to the node's :class:`Feed`, which fans it out to subscribers
(the local gateway hub, and peers' ``ChatInternal.Watch`` streams). A subscriber that falls more
than ``max_pending`` batches behind is cut off (``Subscription.lagged``) rather than letting
memory grow: it re-reads what it needs (``ChatState.since``) and subscribes again. A snapshot
restore also cuts every subscriber of the group, since the events between are never seen.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster.messages import Entry, Snapshot
from cluster.types import GroupId
from shards.chat import wire
from shards.chat.commands import ChannelCreated, Joined, Left, Posted, RouteDropped, RouteSet
from shards.chat.schema import Message
from shards.chat.state import ChatState

MAX_PENDING: Final = 4096
"""Batches a subscriber may have waiting before it is cut off as lagged."""


@dataclass(frozen=True, slots=True)
class MessageCommitted:
    message: Message


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """``user`` joined (``joined``) or left ``channel``; ``last_seq`` is the channel's newest
    seq at that point of the log: a member who just joined is pushed what comes after it."""

    channel: str
    user: str
    joined: bool
    member_count: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class RouteChanged:
    """A session route of ``user`` was set (``online``) or dropped; ``sessions`` is how many
    routes the user has after it. ``gateway_node`` is where the session is now (set), 0 for a
    drop (the drop does not say where the session was)."""

    user: str
    session_id: str
    gateway_node: int
    online: bool
    sessions: int
    previous_node: int = 0
    """For a set route: where the session was served before (0: it is a new session)."""


Event = MessageCommitted | MembershipChanged | RouteChanged


@dataclass(frozen=True, slots=True)
class FeedBatch:
    group: int
    applied_index: int
    events: tuple[Event, ...]


wire.register(MessageCommitted, MembershipChanged, RouteChanged, FeedBatch)


class Subscription:
    """One subscriber's queue of batches of one group."""

    def __init__(self, feed: Feed, group: GroupId, max_pending: int) -> None:
        self._feed = feed
        self.group = group
        self._max = max_pending
        self._queue: deque[FeedBatch] = deque()
        self._ready = asyncio.Event()
        self.lagged = False
        """Cut off: batches were lost (too slow, or a snapshot replaced the state)."""

    def _offer(self, batch: FeedBatch) -> None:
        if self.lagged:
            return
        if len(self._queue) >= self._max:
            self._cut()
            return
        self._queue.append(batch)
        self._ready.set()

    def _cut(self) -> None:
        self.lagged = True
        self._queue.clear()
        self._ready.set()

    async def next(self) -> list[FeedBatch]:
        """Every batch waiting (at least one); raises :class:`Lagged` once cut off."""
        while not self._queue:
            if self.lagged:
                raise Lagged(self.group)
            self._ready.clear()
            await self._ready.wait()
        batches = list(self._queue)
        self._queue.clear()
        return batches

    def close(self) -> None:
        self._feed._drop(self)


class Lagged(Exception):
    """The subscription lost batches; re-read and subscribe again."""

    def __init__(self, group: GroupId) -> None:
        super().__init__(f"group {group}: subscriber fell behind or the replica was restored")
        self.group = group


class Feed:
    """The node's fan-out of applied events to subscribers, per group."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._max = max_pending
        self._subs: dict[GroupId, set[Subscription]] = {}
        self._listeners: list[Callable[[FeedBatch], None]] = []

    def listen(self, callback: Callable[[FeedBatch], None]) -> None:
        """Call ``callback(batch)`` on every batch, synchronously (keep it cheap)."""
        self._listeners.append(callback)

    def subscribe(self, group: GroupId) -> Subscription:
        sub = Subscription(self, group, self._max)
        self._subs.setdefault(group, set()).add(sub)
        return sub

    def publish(self, batch: FeedBatch) -> None:
        for callback in self._listeners:
            callback(batch)
        for sub in self._subs.get(GroupId(batch.group), ()):
            sub._offer(batch)

    def reset(self, group: GroupId) -> None:
        """The group's state was replaced: every subscriber has missed events."""
        for sub in self._subs.pop(group, set()):
            sub._cut()

    def _drop(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.group)
        if subs is not None:
            subs.discard(sub)


class FeedingChatState(ChatState):
    """A ChatState that publishes what each applied batch did."""

    def __init__(
        self, path: str | Path, group: GroupId, feed: Feed, *, defer_commit: bool = False
    ) -> None:
        super().__init__(path, defer_commit=defer_commit)
        self._group = group
        self._feed = feed

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        self.capture = []
        try:
            results = super().apply(entries)
            stored = {(m.conversation, m.seq): m for m in self.capture}
        finally:
            self.capture = None
        if entries:
            events = self._events(results, stored)
            if events:
                self._feed.publish(FeedBatch(int(self._group), entries[-1].index, events))
        return results

    def restore(self, snapshot: Snapshot) -> None:
        super().restore(snapshot)
        self._feed.reset(self._group)

    def _events(
        self, results: Sequence[object], stored: dict[tuple[str, int], Message]
    ) -> tuple[Event, ...]:
        """The events of one applied batch: messages as ``apply`` stored them, the rest read
        back from the state just written. Counts read
        now include the whole batch, so walking it backwards takes off what later entries of
        the batch added: each event states the log position right after its own entry."""
        later_posts: dict[str, int] = {}
        later_members: dict[str, int] = {}
        later_routes: dict[str, int] = {}
        out: list[Event] = []
        for result in reversed(results):
            if isinstance(result, Posted) and not result.duplicate:
                message = stored.get((result.conversation, result.seq))
                if message is not None:
                    out.append(MessageCommitted(message))
                conv = result.conversation
                later_posts[conv] = later_posts.get(conv, 0) + 1
            elif isinstance(result, Joined | Left | ChannelCreated):
                info = self.channel(result.channel)
                if isinstance(result, ChannelCreated):  # its creator is its first member
                    changed, joined = not result.duplicate, True
                    user = info.creator if info is not None else ""
                elif isinstance(result, Joined):
                    changed, joined, user = not result.already_member, True, result.user
                else:
                    changed, joined, user = result.was_member, False, result.user
                if not changed or info is None:
                    continue
                name = info.name
                count = info.member_count - later_members.get(name, 0)
                last = info.last_seq - later_posts.get(name, 0)
                out.append(MembershipChanged(name, user, joined, count, last))
                later_members[name] = later_members.get(name, 0) + (1 if joined else -1)
            elif isinstance(result, RouteSet | RouteDropped):
                if isinstance(result, RouteDropped) and not result.dropped:
                    continue
                user = result.user
                count = len(self.routes(user)) - later_routes.get(user, 0)
                if isinstance(result, RouteSet):
                    node = result.gateway_node
                    prev = result.previous_node
                    out.append(RouteChanged(user, result.session_id, node, True, count, prev))
                    added = 1 if result.previous_node == 0 else 0
                else:
                    out.append(RouteChanged(user, result.session_id, 0, False, count))
                    added = -1
                later_routes[user] = later_routes.get(user, 0) + added
        out.reverse()
        return tuple(out)
