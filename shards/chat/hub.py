"""The gateway's push hub: follows every group's applied events and hands them to sessions.

One follower task per group. For a group this node hosts it reads the local replica's feed; for
another it holds a ``ChatInternal.Watch`` stream to a node that hosts it (the leader when known),
moving to another replica when the stream breaks. Whenever a follower (re)starts, events may
have been missed, so every session is told to re-read that group (``Resync``): sessions keep
per-conversation cursors and drop what they already pushed, so re-reading is always safe.

The hub routes events only by who may care (the conversation's sessions, a DM's two users, a
user's own sessions); each session decides, in order, what to push (see ``shards.chat.session``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import grpc

from cluster.types import NO_NODE, GroupId, NodeId
from proto import chat_internal_pb2 as ipb
from shards.chat import wire
from shards.chat.commands import parse_dm
from shards.chat.feed import Event, Feed, FeedBatch, Lagged, MembershipChanged, MessageCommitted

if TYPE_CHECKING:
    from shards.chat.router import ClusterRouter
    from shards.chat.session import ChatSession

log = logging.getLogger("shards.chat.hub")

RETRY_PAUSE: Final = (0.05, 1.0)
_NOBODY: Final[frozenset[ChatSession]] = frozenset()


@dataclass(frozen=True, slots=True)
class Superseded:
    """A newer stream of the same session started on this node: this one must end."""


@dataclass(frozen=True, slots=True)
class Resync:
    """Events of ``group`` may have been missed: re-read its conversations."""

    group: GroupId


class PushHub:
    def __init__(
        self,
        node_id: NodeId,
        feed: Feed,
        router: ClusterRouter,
        group_of: Callable[[str], GroupId],
    ) -> None:
        self._me = node_id
        self._feed = feed
        self._router = router
        self._group_of = group_of
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: set[ChatSession] = set()
        self._by_user: dict[str, set[ChatSession]] = {}
        self._by_conv: dict[str, set[ChatSession]] = {}
        self._starting: set[ChatSession] = set()
        """Sessions still reading where they stand: they are offered every message and
        membership event (and filter them once started), so nothing committed between their
        start-up read and their ``track`` calls is missed."""
        self._ready: dict[GroupId, asyncio.Event] = {}

    @property
    def sessions(self) -> frozenset[ChatSession]:
        return frozenset(self._sessions)

    def start(self) -> None:
        for group in self._router.groups():
            self._ready[group] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._follow(group)))

    async def wait_following(self, timeout: float) -> bool:
        """Whether every group is being followed within ``timeout`` seconds (for sessions to
        start with everything after their cursors in view)."""
        try:
            async with asyncio.timeout(timeout):
                for ready in self._ready.values():
                    await ready.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def attach(self, session: ChatSession) -> None:
        """Start offering ``session`` events. An older stream of the same session on this node
        (the client reconnected here before that one ended) is told to end."""
        for older in self._by_user.get(session.user, set()):
            if older.session_id == session.session_id:
                older.offer(Superseded())
        self._sessions.add(session)
        self._starting.add(session)
        self._by_user.setdefault(session.user, set()).add(session)

    def started(self, session: ChatSession) -> None:
        """``session`` tracks its conversations now: route it only what concerns it."""
        self._starting.discard(session)

    def has_session(self, user: str, session_id: str) -> bool:
        return any(s.session_id == session_id for s in self._by_user.get(user, set()))

    def detach(self, session: ChatSession) -> None:
        self._sessions.discard(session)
        self._starting.discard(session)
        _discard(self._by_user, session.user, session)
        for conv in session.tracked():
            _discard(self._by_conv, conv, session)

    def track(self, session: ChatSession, conversation: str) -> None:
        """``session`` now pushes ``conversation``: route its events there."""
        if session in self._sessions:
            self._by_conv.setdefault(conversation, set()).add(session)

    def untrack(self, session: ChatSession, conversation: str) -> None:
        _discard(self._by_conv, conversation, session)

    # ---- following ---------------------------------------------------------------------------

    async def _follow(self, group: GroupId) -> None:
        pause = RETRY_PAUSE[0]
        while True:
            local = self._router.hosts(group)
            try:
                if local:
                    await self._follow_local(group)
                else:
                    await self._follow_remote(group)
            except Lagged as exc:
                log.info("%s; re-reading", exc)
            except grpc.aio.AioRpcError as err:
                log.info("group %s watch ended: %s %s", group, err.code().name, err.details())
            if self._ready[group].is_set():  # it was following: the next attempt starts fresh
                pause = RETRY_PAUSE[0]
            self._ready[group].clear()
            if not local:  # a remote replica may be down: do not hammer the next one
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE[1])

    def _started(self, group: GroupId) -> None:
        self._ready[group].set()
        for session in self._sessions:
            session.offer(Resync(group))

    async def _follow_local(self, group: GroupId) -> None:
        sub = self._feed.subscribe(group)
        try:
            self._started(group)
            while True:
                for batch in await sub.next():
                    self._dispatch(batch)
        finally:
            sub.close()

    async def _follow_remote(self, group: GroupId) -> None:
        target = self._router.leader_hint(group)
        if target == NO_NODE:
            target = self._router.any_replica(group)
        stub = self._router.stub(target)
        if stub is None:
            raise Lagged(group)
        stream = stub.Watch(ipb.WatchRequest(group=group))
        try:
            first = True
            async for event in stream:
                batch = wire.decode_as(event.batch, FeedBatch)
                if first:
                    self._started(group)
                    first = False
                self._dispatch(batch)
        finally:
            stream.cancel()
        raise Lagged(group)  # the stream ended: follow again

    # ---- routing events ----------------------------------------------------------------------

    def _dispatch(self, batch: FeedBatch) -> None:
        for event in batch.events:
            for session in self._interested(event):
                session.offer(event)

    def _interested(self, event: Event) -> Set[ChatSession]:
        """Who may care about ``event``. Per message this is the index's own set (read only,
        not copied) unless a DM or a starting session needs a union."""
        if isinstance(event, MessageCommitted):
            conv = event.message.conversation
            found: Set[ChatSession] = self._by_conv.get(conv, _NOBODY)
            pair = parse_dm(conv)
            if pair is not None:
                for user in pair:
                    found = found | self._by_user.get(user, _NOBODY)
            return found | self._starting if self._starting else found
        if isinstance(event, MembershipChanged):
            found = self._by_conv.get(event.channel, _NOBODY) | self._by_user.get(
                event.user, _NOBODY
            )
            return found | self._starting
        # RouteChanged: the user's own sessions (a moved session ends) and their contacts.
        return {s for s in self._sessions if s.user == event.user or s.knows(event.user)}


def _discard(index: dict[str, set[ChatSession]], key: str, session: ChatSession) -> None:
    held = index.get(key)
    if held is not None:
        held.discard(session)
        if not held:
            del index[key]
