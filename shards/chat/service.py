"""The chat service: the unary RPCs of ``proto/chat.proto`` as async methods over a router.

Why a separate layer between the servicer and Raft: the servicer only converts gRPC calls
(request + metadata in, response or status out), and the router only moves commands and reads
to the right group's leader. What is left is the chat logic itself, which is here and runs the
same over a real multi-node router and over an in-memory one in tests:

- **Routing.** Every key lives in one group, ``placement_groups(key)``: a user's record and
  sessions in ``user:<name>``, a channel in ``channel:<name>``, a DM in its conversation id
  ``dm:<a>:<b>`` (``dm:`` + the sorted pair). :func:`user_key`, :func:`conversation_key` are the
  only places these keys are spelled. Channel listings and unread counts are not keyed by one
  name, so they read every group.
- **Identity (guarantee 8).** Every call but Register and Login carries ``authorization: Bearer
  <user>.<random>``. The user part names the group holding the session, so one linearizable
  read there decides; only the SHA-256 of the whole token is stored. The user of the session is
  the sender, owner of the read markers, creator of channels: never a request field. A missing,
  malformed, unknown or closed token is UNAUTHENTICATED, all with the same answer.
- **Reads** are linearizable unless the request opts out (``HistoryRequest.stale_ok``), so a
  logout, a send or a join is seen by the very next call, on any node.
- **Errors.** Input errors come from :mod:`shards.chat.api` (INVALID_ARGUMENT /
  RESOURCE_EXHAUSTED / PERMISSION_DENIED naming the field) before anything is proposed; state
  answers (NOT_FOUND, ALREADY_EXISTS, not a member, FAILED_PRECONDITION) are the state
  machine's ``Rejected`` mapped by ``api.rejection_error``. The router raises ``ApiError`` itself
  for UNAVAILABLE (no quorum), FAILED_PRECONDITION + leader hint (not leader) and
  DEADLINE_EXCEEDED; they pass through unchanged.
- **Channel history is for members**, like sending and marking read (PERMISSION_DENIED
  otherwise; joining is open to everyone, so a reader joins first). DM history is for its two
  participants, decided from the id alone.

- **Reads go through queries** (:mod:`shards.chat.queries`): each step asks one group one
  question, answered by the local replica or, for a group this node does not host, by a node
  that does. That is why a listing asks for channels *with* the caller's membership at once.
- **Send rate.** Sends pass a per-user token bucket first (RESOURCE_EXHAUSTED with
  ``x-retry-after-ms``, nothing proposed).

The DM follow-ups a first DM message creates (``Posted.follow_ups``) are drained by the node's
:mod:`shards.chat.followups` task, not here. Password hashing runs in a worker thread (about
50 ms of CPU each), so the event loop keeps serving other calls meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import grpc

from cluster.types import GroupId
from proto import chat_pb2 as pb
from shards.chat import api, queries
from shards.chat.api import ApiError, Gap
from shards.chat.auth import (
    bearer_token,
    hash_password,
    login_failed,
    new_session_token,
    token_digest,
    verify_password,
)
from shards.chat.commands import (
    ChannelCreated,
    CloseSession,
    Command,
    Hlc,
    Joined,
    Left,
    OpenSession,
    Posted,
    PostMessage,
    ReadMarked,
    Rejected,
    SessionClosed,
    SessionOpened,
    UserRegistered,
    parse_dm,
)
from shards.chat.queries import Query
from shards.chat.ratelimit import SendRateLimiter
from shards.chat.schema import ConversationRef, Message, Route, SyncPage

T = TypeVar("T")

Metadata = Iterable[tuple[str, str | bytes]] | None
"""The call's invocation metadata, as ``grpc.aio.ServicerContext.invocation_metadata()``
returns it (None: no metadata at all)."""


class Router(Protocol):
    """Moves commands and reads to the group that owns them (its leader, for writes and
    linearizable reads). Failures are raised as ``ApiError`` (UNAVAILABLE after retrying
    through leader changes until the call's budget is spent)."""

    async def propose(self, group: GroupId, command: Command) -> object:
        """Commit ``command`` in ``group`` and return what applying it returned."""
        ...

    async def propose_many(self, group: GroupId, commands: Sequence[Command]) -> list[object]:
        """Commit ``commands`` in ``group`` in this order; what applying each returned."""
        ...

    async def query(self, group: GroupId, query: Query[T], *, linearizable: bool) -> T:
        """``query`` run on a replica of ``group``: caught up with every write acknowledged
        before the call when ``linearizable`` (ReadIndex), else as that replica has it."""
        ...

    def groups(self) -> list[GroupId]:
        """Every group of the cluster."""
        ...


class Directory(Protocol):
    """What the service knows of the cluster's nodes (the discovery map)."""

    def node_address(self, node: int) -> str:
        """The node's public host:port, "" if unknown."""
        ...

    def node_up(self, node: int) -> bool:
        """Whether the node's lease is valid (a route to a dead gateway is not online)."""
        ...


class _EveryNodeUp:
    def node_address(self, node: int) -> str:
        return ""

    def node_up(self, node: int) -> bool:
        return True


def user_key(user: str) -> str:
    """The placement key of a user's record and sessions."""
    return f"user:{user}"


def conversation_key(conversation: str) -> str:
    """The placement key of a channel (``channel:<name>``) or DM (its id ``dm:<a>:<b>``)."""
    return conversation if parse_dm(conversation) is not None else f"channel:{conversation}"


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller: the session's user and its token's digest."""

    user: str
    token_digest: str


def _unauthenticated(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "authorization", message)


def rejected_error(rejected: Rejected) -> ApiError:
    """A query's ``Rejected`` as the API error of the same name."""
    return ApiError(grpc.StatusCode[rejected.code.name], rejected.field, rejected.reason)


_CLOSED: Final = "unknown or closed session"


class ChatService:
    """The chat RPCs; each takes the request and the call metadata, returns the response or
    raises :class:`ApiError`. ``clock()`` is the wall clock in unix ms (injected for tests)."""

    def __init__(
        self,
        router: Router,
        placement_groups: Callable[[str], GroupId],
        clock: Callable[[], int],
        *,
        limiter: SendRateLimiter | None = None,
        directory: Directory | None = None,
    ) -> None:
        self._router = router
        self._group_for = placement_groups
        self._clock = clock
        self.limiter = limiter or SendRateLimiter()
        self._directory = directory or _EveryNodeUp()

    @property
    def router(self) -> Router:
        return self._router

    def clock(self) -> int:
        return self._clock()

    # ---- accounts and sessions ---------------------------------------------------------------

    async def register(self, req: pb.RegisterRequest, metadata: Metadata) -> pb.RegisterResponse:
        reg = api.parse_register(req)
        password_hash = await asyncio.to_thread(hash_password, reg.password)
        cmd = reg.command(password_hash, self._clock())
        result = await self._router.propose(self.user_group(reg.user), cmd)
        return api.registered_to_proto(api.expect(result, cmd, UserRegistered), reg.display_name)

    async def login(self, req: pb.LoginRequest, metadata: Metadata) -> pb.LoginResponse:
        """Verify the password against the user's record, then open a session there. An
        unknown user costs the same hash as a wrong password and gets the same answer."""
        creds = api.parse_login(req)
        group = self.user_group(creds.user)
        record = await self._router.query(group, queries.UserLookup(creds.user), linearizable=True)
        stored = None if record is None else record.password_hash
        if not await asyncio.to_thread(verify_password, creds.password, stored):
            raise login_failed()
        assert record is not None  # verify_password is False without a stored hash
        token = new_session_token(creds.user)
        cmd = OpenSession(creds.user, token_digest(token), self._clock())
        api.expect(await self._router.propose(group, cmd), cmd, SessionOpened)
        return pb.LoginResponse(token=token, user=record.name, display_name=record.display_name)

    async def logout(self, req: pb.LogoutRequest, metadata: Metadata) -> pb.LogoutResponse:
        caller = await self.authenticate(metadata)
        cmd = CloseSession(caller.user, caller.token_digest)
        result = await self._router.propose(self.user_group(caller.user), cmd)
        api.expect(result, cmd, SessionClosed)  # closed=False: a concurrent logout won
        return pb.LogoutResponse()

    async def authenticate(self, metadata: Metadata) -> Caller:
        """The caller of a session token, checked by a linearizable read of the user's group
        (so a logout acknowledged anywhere is seen here); UNAUTHENTICATED otherwise."""
        user, token = bearer_token(metadata)
        digest = token_digest(token)
        query = queries.SessionLookup(digest)
        if await self._router.query(self.user_group(user), query, linearizable=True) != user:
            raise _unauthenticated(_CLOSED)
        return Caller(user, digest)

    async def still_valid(self, caller: Caller) -> bool:
        """Whether the caller's session is still open (a stream re-checks after a logout)."""
        query = queries.SessionLookup(caller.token_digest)
        group = self.user_group(caller.user)
        return await self._router.query(group, query, linearizable=True) == caller.user

    # ---- channels ----------------------------------------------------------------------------

    async def create_channel(
        self, req: pb.CreateChannelRequest, metadata: Metadata
    ) -> pb.CreateChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.create_channel_command(req, caller.user, self._clock())
        group = self.conversation_group(cmd.channel)
        api.expect(await self._router.propose(group, cmd), cmd, ChannelCreated)
        query = queries.ChannelLookup(cmd.channel, caller.user)
        view = await self._router.query(group, query, linearizable=True)
        if view is None:  # channels are never deleted; a committed creation is there
            raise ApiError(grpc.StatusCode.INTERNAL, "channel", "created channel not found")
        return pb.CreateChannelResponse(channel=api.channel_to_proto(view.info, view.joined))

    async def join_channel(
        self, req: pb.JoinChannelRequest, metadata: Metadata
    ) -> pb.JoinChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.join_command(req, caller.user, self._clock())
        result = await self._router.propose(self.conversation_group(cmd.channel), cmd)
        return api.joined_to_proto(api.expect(result, cmd, Joined))

    async def leave_channel(
        self, req: pb.LeaveChannelRequest, metadata: Metadata
    ) -> pb.LeaveChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.leave_command(req, caller.user, self._clock())
        result = await self._router.propose(self.conversation_group(cmd.channel), cmd)
        return api.left_to_proto(api.expect(result, cmd, Left))

    async def list_channels(
        self, req: pb.ListChannelsRequest, metadata: Metadata
    ) -> pb.ListChannelsResponse:
        """Every channel of every group (channels spread over all of them), by name."""
        caller = await self.authenticate(metadata)
        views = await self._ask_all(queries.ChannelListing(caller.user))
        flat = [v for group_views in views for v in group_views]
        shown = [v.info for v in flat if v.joined or not req.joined_only]
        return api.channels_to_proto(shown, [v.info.name for v in flat if v.joined])

    # ---- messages ----------------------------------------------------------------------------

    async def send(self, req: pb.SendRequest, metadata: Metadata) -> pb.SendResponse:
        """Commit one message; answered once committed. The stamp is the clock now with counter
        0; apply raises it past the conversation's last stamp, so it is monotonic anyway."""
        caller = await self.authenticate(metadata)
        intent = api.parse_send(req, caller.user)
        self.check_rate(caller.user, 1, "")
        await self.check_dm_peer(intent)
        cmd: PostMessage = intent.command(Hlc(self._clock(), 0))
        result = await self._router.propose(self.conversation_group(cmd.conversation), cmd)
        if isinstance(result, Rejected):
            raise intent.rejection(result)
        return api.posted_to_proto(api.expect(result, cmd, Posted))

    def check_rate(self, user: str, n: int, field: str) -> None:
        """RESOURCE_EXHAUSTED with the wait in ``x-retry-after-ms`` past the user's rate."""
        wait_ms = self.limiter.take(user, n)
        if wait_ms:
            raise self.rate_error(wait_ms, field)

    def rate_error(self, wait_ms: int, field: str) -> ApiError:
        return ApiError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            field or "text",
            f"sends faster than {self.limiter.rate:g}/s; retry in {wait_ms} ms",
            retry_after_ms=wait_ms,
        )

    async def check_dm_peer(self, intent: api.SendIntent) -> None:
        """A DM's other participant must exist (NOT_FOUND naming the request field)."""
        pair = parse_dm(intent.conversation)
        if pair is not None:
            peer = pair[0] if pair[1] == intent.sender else pair[1]
            await self.require_user(peer, intent.prefix + intent.target_field)

    async def history(self, req: pb.HistoryRequest, metadata: Metadata) -> pb.HistoryResponse:
        caller = await self.authenticate(metadata)
        query = api.history_query(req, caller.user)  # others' DMs: PERMISSION_DENIED here
        group = self.conversation_group(query.conversation)
        page = await self._router.query(
            group, queries.ReaderHistory(caller.user, query), linearizable=not query.stale_ok
        )
        if isinstance(page, Rejected):
            raise rejected_error(page)
        displays = await self.display_names({m.sender for m in page.messages})
        return api.history_to_proto(page, caller.user, displays)

    async def sync(self, req: pb.SyncRequest, metadata: Metadata) -> pb.SyncResponse:
        """Everything after the cursors, from every group they touch, at most ``limit``."""
        caller = await self.authenticate(metadata)
        query = api.sync_query(req, caller.user)
        await self.check_members(caller.user, [c for c, _ in query.cursors], "cursors")
        page, gaps = await self.catch_up(dict(query.cursors), query.limit)
        displays = await self.display_names({m.sender for m in page.messages})
        return api.sync_to_proto(page, caller.user, displays, gaps)

    async def catch_up(self, cursors: dict[str, int], limit: int) -> tuple[SyncPage, list[Gap]]:
        """Messages after ``cursors`` from every group concerned, read linearizably, merged by
        conversation then seq and cut at ``limit``; large backlogs become gaps."""
        by_group: dict[GroupId, list[tuple[str, int]]] = {}
        for conv in sorted(cursors):
            by_group.setdefault(self.conversation_group(conv), []).append((conv, cursors[conv]))
        answers = await asyncio.gather(
            *(
                self._router.query(g, queries.CatchUp(tuple(cs), limit), linearizable=True)
                for g, cs in by_group.items()
            )
        )
        messages: list[Message] = []
        next_cursors: dict[str, int] = dict(cursors)
        gaps: list[Gap] = []
        limited = False
        for answer in answers:
            messages.extend(answer.page.messages)
            next_cursors.update(answer.page.cursors)
            gaps.extend(answer.gaps)
            limited = limited or answer.page.limited
        messages.sort(key=lambda m: (m.conversation, m.seq))
        if len(messages) > limit:
            limited = True
            for m in messages[limit:]:  # give back the cursor just before the first cut one
                next_cursors[m.conversation] = min(next_cursors[m.conversation], m.seq - 1)
            messages = messages[:limit]
        return SyncPage(messages, next_cursors, limited), gaps

    async def check_members(self, user: str, conversations: Iterable[str], field: str) -> None:
        """PERMISSION_DENIED naming ``field[conv]`` unless ``user`` is in every channel named
        (DM participation was checked from the ids by the API)."""
        by_group: dict[GroupId, list[str]] = {}
        for conv in conversations:
            if parse_dm(conv) is None:
                by_group.setdefault(self.conversation_group(conv), []).append(conv)
        if not by_group:
            return
        answers = await asyncio.gather(
            *(
                self._router.query(g, queries.ConversationsOf(user), linearizable=True)
                for g in by_group
            )
        )
        for (group, convs), refs in zip(by_group.items(), answers, strict=True):
            mine = {r.conversation for r in refs}
            for conv in convs:
                if conv not in mine:
                    raise ApiError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{field}[{conv}]",
                        f"{user!r} is not a member of channel {conv!r} (group {group})",
                    )

    async def mark_read(self, req: pb.MarkReadRequest, metadata: Metadata) -> pb.MarkReadResponse:
        caller = await self.authenticate(metadata)
        cmd = api.mark_read_command(req, caller.user)
        result = await self._router.propose(self.conversation_group(cmd.conversation), cmd)
        return api.read_marked_to_proto(api.expect(result, cmd, ReadMarked))

    async def unread_counts(
        self, req: pb.UnreadCountsRequest, metadata: Metadata
    ) -> pb.UnreadCountsResponse:
        caller = await self.authenticate(metadata)
        return api.unread_to_proto(await self.conversations_of(caller.user))

    async def conversations_of(self, user: str) -> list[ConversationRef]:
        """Every conversation ``user`` is in, read from every group: a channel's membership
        and a DM's messages and read markers live in the conversation's own group. A DM known
        only from a follow-up in another group (``last_seq`` None) yields to the DM group's
        own entry."""
        refs: dict[str, ConversationRef] = {}
        for found in await self._ask_all(queries.ConversationsOf(user)):
            for ref in found:
                held = refs.get(ref.conversation)
                if held is None or held.last_seq is None:
                    refs[ref.conversation] = ref
        return [refs[c] for c in sorted(refs)]

    # ---- presence ----------------------------------------------------------------------------

    async def who(self, req: pb.WhoRequest, metadata: Metadata) -> pb.WhoResponse:
        """Online sessions: routes whose gateway node is up, of everyone or of a channel's
        members (the caller must be one)."""
        caller = await self.authenticate(metadata)
        channel = api.who_channel(req)
        members: set[str] | None = None
        if channel is not None:
            group = self.conversation_group(channel)
            listed = await self._router.query(group, queries.Members(channel), linearizable=True)
            if listed is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, "channel", f"no channel {channel!r}")
            if caller.user not in listed:
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "channel",
                    f"{caller.user!r} is not a member of channel {channel!r}",
                )
            members = set(listed)
        routes = await self.online_routes()
        routes = [r for r in routes if members is None or r.user in members]
        displays = await self.display_names({r.user for r in routes})
        sessions = [
            api.route_to_proto(
                r, displays.get(r.user, ""), self._directory.node_address(r.gateway_node)
            )
            for r in sorted(routes, key=lambda r: (r.user, r.gateway_node, r.session_id))
        ]
        return pb.WhoResponse(sessions=sessions)

    async def online_routes(self) -> list[Route]:
        found = await self._ask_all(queries.OnlineRoutes(), linearizable=False)
        return [r for rs in found for r in rs if self._directory.node_up(r.gateway_node)]

    # ---- internals ---------------------------------------------------------------------------

    def user_group(self, user: str) -> GroupId:
        return self._group_for(user_key(user))

    def conversation_group(self, conversation: str) -> GroupId:
        return self._group_for(conversation_key(conversation))

    async def _ask_all(self, query: Query[T], *, linearizable: bool = True) -> Sequence[T]:
        """``query`` asked of every group, concurrently."""
        groups = self._router.groups()
        return await asyncio.gather(
            *(self._router.query(g, query, linearizable=linearizable) for g in groups)
        )

    async def require_user(self, user: str, field: str) -> None:
        """NOT_FOUND naming ``field`` unless ``user`` exists. Users are never deleted, so a
        stale "exists" is final; only a stale "missing" is confirmed by a linearizable read
        (the user may have just registered)."""
        group = self.user_group(user)
        query = queries.UserLookup(user)
        if await self._router.query(group, query, linearizable=False) is not None:
            return
        if await self._router.query(group, query, linearizable=True) is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, field, f"no user {user!r}")

    async def display_names(self, users: Iterable[str]) -> dict[str, str]:
        """Display names of ``users`` from their groups' applied state (stale is fine: a display
        name never changes); a user not found is left out and shown as ""."""
        by_group: dict[GroupId, list[str]] = {}
        for user in sorted(users):
            by_group.setdefault(self.user_group(user), []).append(user)
        answers = await asyncio.gather(
            *(
                self._router.query(g, queries.DisplayNames(tuple(names)), linearizable=False)
                for g, names in by_group.items()
            )
        )
        displays: dict[str, str] = {}
        for found in answers:
            displays.update(found)
        return displays
