"""Reads of one group's chat state, as values: run on the node that holds a replica.

Why queries are objects rather than method calls on ``ChatState``: a gateway often does not host
the group it reads (five nodes, three replicas per group). A query is a small frozen dataclass
that travels to a node that does (``ChatInternal.Query``, encoded by :mod:`shards.chat.wire`),
runs there against that replica, and comes back with its answer; on a node that hosts the group
it simply runs locally. Each query answers everything one service step needs from a group in
one round trip (e.g. a channel *and* whether the caller is a member).

Every query here is read-only and must stay so: ``run`` gets the replica's live connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from shards.chat import wire
from shards.chat.api import Gap, HistoryQuery
from shards.chat.commands import Code, Rejected, parse_dm
from shards.chat.schema import (
    ChannelInfo,
    ConversationRef,
    FollowUp,
    HistoryPage,
    Route,
    SyncPage,
    UserRecord,
)
from shards.chat.state import ChatState

T_co = TypeVar("T_co", covariant=True)


class Query(Protocol[T_co]):
    """A read of one group's state; ``run`` must not write."""

    def run(self, state: ChatState) -> T_co: ...


@dataclass(frozen=True, slots=True)
class UserLookup:
    user: str

    def run(self, state: ChatState) -> UserRecord | None:
        return state.user(self.user)


@dataclass(frozen=True, slots=True)
class SessionLookup:
    """The user an open session's token digest authenticates (None: no such session)."""

    token_digest: str

    def run(self, state: ChatState) -> str | None:
        return state.session_user(self.token_digest)


@dataclass(frozen=True, slots=True)
class ChannelView:
    """A channel and whether the caller is a member of it."""

    info: ChannelInfo
    joined: bool


@dataclass(frozen=True, slots=True)
class ChannelLookup:
    channel: str
    user: str

    def run(self, state: ChatState) -> ChannelView | None:
        info = state.channel(self.channel)
        return None if info is None else ChannelView(info, state.is_member(self.channel, self.user))


@dataclass(frozen=True, slots=True)
class ChannelListing:
    """Every channel of the group with the caller's membership."""

    user: str

    def run(self, state: ChatState) -> list[ChannelView]:
        return [ChannelView(i, state.is_member(i.name, self.user)) for i in state.channels()]


@dataclass(frozen=True, slots=True)
class ReaderHistory:
    """A history page for ``user``: a channel must exist (NOT_FOUND) and have ``user`` as a
    member (PERMISSION_DENIED). A DM's participants were checked from its id by the API
    (``api.history_query``) before the query was made."""

    user: str
    query: HistoryQuery

    def run(self, state: ChatState) -> HistoryPage | Rejected:
        conversation = self.query.conversation
        if parse_dm(conversation) is None:
            if state.channel(conversation) is None:
                return Rejected(Code.NOT_FOUND, "conversation", f"no channel {conversation!r}")
            if not state.is_member(conversation, self.user):
                why = f"{self.user!r} is not a member of channel {conversation!r}"
                return Rejected(Code.PERMISSION_DENIED, "conversation", why)
        return self.query.run(state)


@dataclass(frozen=True, slots=True)
class ConversationsOf:
    user: str

    def run(self, state: ChatState) -> list[ConversationRef]:
        return state.conversations_of(self.user)


@dataclass(frozen=True, slots=True)
class Members:
    """The members of a channel by name; None if there is no such channel here."""

    channel: str

    def run(self, state: ChatState) -> list[str] | None:
        return state.members(self.channel)


@dataclass(frozen=True, slots=True)
class OnlineRoutes:
    """Every session route of the group's users (the online sessions)."""

    def run(self, state: ChatState) -> list[Route]:
        return state.all_routes()


@dataclass(frozen=True, slots=True)
class RoutesOf:
    """Where ``user``'s sessions are served (their online sessions), by session id."""

    user: str

    def run(self, state: ChatState) -> list[Route]:
        return state.routes(self.user)


@dataclass(frozen=True, slots=True)
class PendingFollowUps:
    limit: int = 100

    def run(self, state: ChatState) -> list[FollowUp]:
        return state.outbox(self.limit)


@dataclass(frozen=True, slots=True)
class DisplayNames:
    """Display names of the users of this group among ``users`` (unknown ones left out)."""

    users: tuple[str, ...]

    def run(self, state: ChatState) -> dict[str, str]:
        found = (state.user(u) for u in self.users)
        return {r.name: r.display_name for r in found if r is not None}


MAX_BACKLOG: Final = 1000
"""A conversation more than this many messages behind its cursor is not replayed whole."""
KEEP_AFTER_GAP: Final = 100
"""How many of its newest messages are replayed after the skipped part (see ``Gap``)."""


@dataclass(frozen=True, slots=True)
class CatchUpPage:
    page: SyncPage
    gaps: tuple[Gap, ...]


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Messages after ``cursors`` (conversation -> last seq the client has), at most ``limit``
    in all; a conversation more than ``max_backlog`` behind skips to its newest ``keep``
    messages and reports the skipped seqs as a :class:`Gap` (announced, never silent)."""

    cursors: tuple[tuple[str, int], ...]
    limit: int
    max_backlog: int = MAX_BACKLOG
    keep: int = KEEP_AFTER_GAP

    def run(self, state: ChatState) -> CatchUpPage:
        start: dict[str, int] = {}
        gaps: list[Gap] = []
        for conv, cursor in self.cursors:
            last = state.last_seq(conv)
            if last - cursor > self.max_backlog:
                skip_to = last - self.keep
                gaps.append(Gap(conv, cursor + 1, skip_to))
                cursor = skip_to
            start[conv] = cursor
        return CatchUpPage(state.since(start, self.limit), tuple(gaps))


wire.register(
    UserLookup,
    SessionLookup,
    ChannelView,
    ChannelLookup,
    ChannelListing,
    ReaderHistory,
    ConversationsOf,
    Members,
    OnlineRoutes,
    RoutesOf,
    PendingFollowUps,
    DisplayNames,
    CatchUpPage,
    CatchUp,
    Gap,
    HistoryQuery,  # travels inside ReaderHistory
)
