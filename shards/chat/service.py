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

Not done here yet: the DM follow-ups a first DM message creates (``Posted.follow_ups``, the
outbox of the DM's group) are *not* drained by this service; a background task of the node
must propose ``AddDmConversation`` to each participant's group and then ``AckFollowUp``.
Unread counts do not depend on them (they read every group). Sync, Who, ServerStatus and the
Session stream are also not here. Password hashing runs in a worker thread (about 50 ms of
CPU each), so the event loop keeps serving other calls meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import grpc

from cluster.types import GroupId
from proto import chat_pb2 as pb
from shards.chat import api
from shards.chat.api import ApiError
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
from shards.chat.schema import ChannelInfo, ConversationRef
from shards.chat.state import ChatState

Metadata = Iterable[tuple[str, str | bytes]] | None
"""The call's invocation metadata, as ``grpc.aio.ServicerContext.invocation_metadata()``
returns it (None: no metadata at all)."""


class Router(Protocol):
    """Moves commands and reads to the group that owns them (its leader, for writes and
    linearizable reads). Failures are raised as ``ApiError`` (UNAVAILABLE, FAILED_PRECONDITION
    with a leader hint, DEADLINE_EXCEEDED)."""

    async def propose(self, group: GroupId, command: Command) -> object:
        """Commit ``command`` in ``group`` and return what applying it returned."""
        ...

    async def read(self, group: GroupId, *, linearizable: bool) -> ChatState:
        """``group``'s state, caught up with every write acknowledged before the call when
        ``linearizable`` (ReadIndex), else a replica's applied state as it is. Query it right
        away: it keeps moving as entries are applied."""
        ...

    def groups(self) -> list[GroupId]:
        """Every group of the cluster."""
        ...


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


_CLOSED: Final = "unknown or closed session"


class ChatService:
    """The chat RPCs; each takes the request and the call metadata, returns the response or
    raises :class:`ApiError`. ``clock()`` is the wall clock in unix ms (injected for tests)."""

    def __init__(
        self,
        router: Router,
        placement_groups: Callable[[str], GroupId],
        clock: Callable[[], int],
    ) -> None:
        self._router = router
        self._group_for = placement_groups
        self._clock = clock

    # ---- accounts and sessions ---------------------------------------------------------------

    async def register(self, req: pb.RegisterRequest, metadata: Metadata) -> pb.RegisterResponse:
        reg = api.parse_register(req)
        password_hash = await asyncio.to_thread(hash_password, reg.password)
        cmd = reg.command(password_hash, self._clock())
        result = await self._router.propose(self._user_group(reg.user), cmd)
        return api.registered_to_proto(api.expect(result, cmd, UserRegistered), reg.display_name)

    async def login(self, req: pb.LoginRequest, metadata: Metadata) -> pb.LoginResponse:
        """Verify the password against the user's record, then open a session there. An
        unknown user costs the same hash as a wrong password and gets the same answer."""
        creds = api.parse_login(req)
        group = self._user_group(creds.user)
        record = (await self._router.read(group, linearizable=True)).user(creds.user)
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
        result = await self._router.propose(self._user_group(caller.user), cmd)
        api.expect(result, cmd, SessionClosed)  # closed=False: a concurrent logout won
        return pb.LogoutResponse()

    async def authenticate(self, metadata: Metadata) -> Caller:
        """The caller of a session token, checked by a linearizable read of the user's group
        (so a logout acknowledged anywhere is seen here); UNAUTHENTICATED otherwise."""
        user, token = bearer_token(metadata)
        digest = token_digest(token)
        state = await self._router.read(self._user_group(user), linearizable=True)
        if state.session_user(digest) != user:
            raise _unauthenticated(_CLOSED)
        return Caller(user, digest)

    # ---- channels ----------------------------------------------------------------------------

    async def create_channel(
        self, req: pb.CreateChannelRequest, metadata: Metadata
    ) -> pb.CreateChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.create_channel_command(req, caller.user, self._clock())
        group = self._conversation_group(cmd.channel)
        api.expect(await self._router.propose(group, cmd), cmd, ChannelCreated)
        state = await self._router.read(group, linearizable=True)
        info = state.channel(cmd.channel)
        if info is None:  # channels are never deleted; a committed creation is there
            raise ApiError(grpc.StatusCode.INTERNAL, "channel", "created channel not found")
        joined = state.is_member(cmd.channel, caller.user)
        return pb.CreateChannelResponse(channel=api.channel_to_proto(info, joined))

    async def join_channel(
        self, req: pb.JoinChannelRequest, metadata: Metadata
    ) -> pb.JoinChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.join_command(req, caller.user, self._clock())
        result = await self._router.propose(self._conversation_group(cmd.channel), cmd)
        return api.joined_to_proto(api.expect(result, cmd, Joined))

    async def leave_channel(
        self, req: pb.LeaveChannelRequest, metadata: Metadata
    ) -> pb.LeaveChannelResponse:
        caller = await self.authenticate(metadata)
        cmd = api.leave_command(req, caller.user, self._clock())
        result = await self._router.propose(self._conversation_group(cmd.channel), cmd)
        return api.left_to_proto(api.expect(result, cmd, Left))

    async def list_channels(
        self, req: pb.ListChannelsRequest, metadata: Metadata
    ) -> pb.ListChannelsResponse:
        """Every channel of every group (channels spread over all of them), by name."""
        caller = await self.authenticate(metadata)
        infos: list[ChannelInfo] = []
        joined: list[str] = []
        for state in await self._read_all():
            for info in state.channels():
                member = state.is_member(info.name, caller.user)
                if member:
                    joined.append(info.name)
                if member or not req.joined_only:
                    infos.append(info)
        return api.channels_to_proto(infos, joined)

    # ---- messages ----------------------------------------------------------------------------

    async def send(self, req: pb.SendRequest, metadata: Metadata) -> pb.SendResponse:
        """Commit one message; answered once committed. The stamp is the clock now with counter
        0; apply raises it past the conversation's last stamp, so it is monotonic anyway."""
        caller = await self.authenticate(metadata)
        intent = api.parse_send(req, caller.user)
        pair = parse_dm(intent.conversation)
        if pair is not None:
            peer = pair[0] if pair[1] == caller.user else pair[1]
            await self._require_user(peer, intent.prefix + intent.target_field)
        cmd: PostMessage = intent.command(Hlc(self._clock(), 0))
        result = await self._router.propose(self._conversation_group(cmd.conversation), cmd)
        if isinstance(result, Rejected):
            raise intent.rejection(result)
        # Posted.follow_ups (a DM's first message) are left in the DM group's outbox for the
        # node's follow-up task; see the module docstring.
        return api.posted_to_proto(api.expect(result, cmd, Posted))

    async def history(self, req: pb.HistoryRequest, metadata: Metadata) -> pb.HistoryResponse:
        caller = await self.authenticate(metadata)
        query = api.history_query(req, caller.user)  # others' DMs: PERMISSION_DENIED here
        group = self._conversation_group(query.conversation)
        state = await self._router.read(group, linearizable=not query.stale_ok)
        self._check_reader(state, caller.user, query.conversation)
        page = query.run(state)
        displays = await self._display_names({m.sender for m in page.messages})
        return api.history_to_proto(page, caller.user, displays)

    async def mark_read(self, req: pb.MarkReadRequest, metadata: Metadata) -> pb.MarkReadResponse:
        caller = await self.authenticate(metadata)
        cmd = api.mark_read_command(req, caller.user)
        result = await self._router.propose(self._conversation_group(cmd.conversation), cmd)
        return api.read_marked_to_proto(api.expect(result, cmd, ReadMarked))

    async def unread_counts(
        self, req: pb.UnreadCountsRequest, metadata: Metadata
    ) -> pb.UnreadCountsResponse:
        """Every conversation the caller is in, read from every group: a channel's membership
        and a DM's messages and read markers live in the conversation's own group. A DM known
        only from a follow-up in another group (``last_seq`` None) yields to the DM group's
        own entry."""
        caller = await self.authenticate(metadata)
        refs: dict[str, ConversationRef] = {}
        for state in await self._read_all():
            for ref in state.conversations_of(caller.user):
                held = refs.get(ref.conversation)
                if held is None or held.last_seq is None:
                    refs[ref.conversation] = ref
        return api.unread_to_proto(refs.values())

    # ---- internals ---------------------------------------------------------------------------

    def _user_group(self, user: str) -> GroupId:
        return self._group_for(user_key(user))

    def _conversation_group(self, conversation: str) -> GroupId:
        return self._group_for(conversation_key(conversation))

    async def _read_all(self) -> Sequence[ChatState]:
        """Every group's state, read linearizably and concurrently."""
        groups = self._router.groups()
        return await asyncio.gather(*(self._router.read(g, linearizable=True) for g in groups))

    async def _require_user(self, user: str, field: str) -> None:
        """NOT_FOUND naming ``field`` unless ``user`` exists. Users are never deleted, so a
        stale "exists" is final; only a stale "missing" is confirmed by a linearizable read
        (the user may have just registered)."""
        group = self._user_group(user)
        if (await self._router.read(group, linearizable=False)).user(user) is not None:
            return
        if (await self._router.read(group, linearizable=True)).user(user) is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, field, f"no user {user!r}")

    @staticmethod
    def _check_reader(state: ChatState, user: str, conversation: str) -> None:
        """A channel must exist (NOT_FOUND) and have ``user`` as a member (PERMISSION_DENIED);
        a DM's participants were checked from its id by ``api.history_query``."""
        if parse_dm(conversation) is not None:
            return
        if state.channel(conversation) is None:
            raise ApiError(
                grpc.StatusCode.NOT_FOUND, "conversation", f"no channel {conversation!r}"
            )
        if not state.is_member(conversation, user):
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                "conversation",
                f"{user!r} is not a member of channel {conversation!r}",
            )

    async def _display_names(self, users: Iterable[str]) -> dict[str, str]:
        """Display names of ``users`` from their groups' applied state (stale is fine: a display
        name never changes); a user not found is left out and shown as ""."""
        by_group: dict[GroupId, list[str]] = {}
        for user in sorted(users):
            by_group.setdefault(self._user_group(user), []).append(user)
        displays: dict[str, str] = {}
        for group, names in by_group.items():
            state = await self._router.read(group, linearizable=False)
            for name in names:
                record = state.user(name)
                if record is not None:
                    displays[name] = record.display_name
        return displays
