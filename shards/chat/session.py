"""One client's Session stream on its gateway: sends in, results and pushed events out.

The promise (chat.proto, DESIGN.md guarantee 4): each conversation's messages are pushed in seq
order with no gap and no duplicate, from the client's cursors on. How it is kept:

- The session is attached to the hub *before* its cursors are read, so every message committed
  after that read is also an event in its inbox; one already covered is dropped by its cursor.
- One pusher task handles the inbox in order. A message at ``cursor + 1`` is pushed; at or below
  the cursor it is dropped; beyond ``cursor + 1`` (events were missed, e.g. a watch stream broke)
  the conversation is re-read from the cursor with a linearizable ``CatchUp`` first.
- A ``Resync`` (the hub restarted following a group) re-reads every conversation of the group
  and picks up conversations the user entered meanwhile.

A frame's sends become one proposal batch per owning group (the cost is per gRPC message and
per proposal round, not per send); the servicer handles several frames at once, which keeps
order for sends a client awaits one after another (never in two frames at once). The route
(user, session id) -> this node is recorded in the user's group when the session starts; when
the same session id is routed to another node (the client reconnected elsewhere) this stream
ends, so messages go to the new place only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

import grpc

from cluster.types import GroupId, NodeId
from proto import chat_pb2 as pb
from shards.chat import api, queries
from shards.chat.api import ApiError, RejectedSend, SendIntent
from shards.chat.commands import (
    SESSION_PATTERN,
    DropRoute,
    Hlc,
    MarkRead,
    Posted,
    PostMessage,
    ReadMarked,
    Rejected,
    RouteSet,
    SetRoute,
    parse_dm,
)
from shards.chat.feed import MembershipChanged, MessageCommitted, RouteChanged
from shards.chat.hub import Resync, Superseded
from shards.chat.schema import Message
from shards.chat.service import Caller, ChatService

if TYPE_CHECKING:
    from shards.chat.hub import PushHub

log = logging.getLogger("shards.chat.session")

HEARTBEAT_INTERVAL_MS: Final = 10_000
"""How often a client should send a heartbeat; the session ends after three silent intervals."""
CATCH_UP_LIMIT: Final = 500
"""Messages one catch-up read returns; more are read in further rounds."""
SESSION_ID_HEADER: Final = "x-session-id"

Item = MessageCommitted | MembershipChanged | RouteChanged | Resync | Superseded


class SessionEnded(Exception):
    """Ends the stream with ``code``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def session_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The client's stable session id (``x-session-id``), or a fresh random one."""
    for key, value in metadata or ():
        if key == SESSION_ID_HEADER:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            if SESSION_PATTERN.fullmatch(text) is None:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    SESSION_ID_HEADER,
                    "must be 1..64 of [A-Za-z0-9_.-]",
                )
            return text
    return secrets.token_urlsafe(12)


class ChatSession:
    def __init__(
        self,
        caller: Caller,
        display_name: str,
        session_id: str,
        node_id: NodeId,
        service: ChatService,
        hub: PushHub,
    ) -> None:
        self.user = caller.user
        self.caller = caller
        self.display_name = display_name
        self.session_id = session_id
        self.node_id = node_id
        self._svc = service
        self._hub = hub
        self._cursors: dict[str, int] = {}
        self._contacts: set[str] = set()
        self._inbox: deque[Item] = deque()
        self._wake = asyncio.Event()
        self.out: asyncio.Queue[pb.ServerFrame | SessionEnded] = asyncio.Queue()
        self._displays: dict[str, str] = {caller.user: display_name}

    # ---- what the hub asks -------------------------------------------------------------------

    def tracked(self) -> list[str]:
        return list(self._cursors)

    def knows(self, user: str) -> bool:
        return user in self._contacts

    def offer(self, item: Item) -> None:
        self._inbox.append(item)
        self._wake.set()

    # ---- start -------------------------------------------------------------------------------

    async def start(self, resume: api.Cursors | None) -> None:
        """Route the session here, read where each conversation stands, and queue the Resumed
        frame and the replay of everything after the resume cursors."""
        self._hub.attach(self)
        user_group = self._svc.user_group(self.user)
        route = SetRoute(self.user, self.session_id, int(self.node_id), self._svc.clock())
        api.expect(await self._svc.router.propose(user_group, route), route, RouteSet)
        refs = await self._svc.conversations_of(self.user)
        lasts = {r.conversation: r.last_seq or 0 for r in refs}
        for ref in refs:
            if ref.peer:
                self._contacts.add(ref.peer)
        replay: dict[str, int] = {}
        for conv, cursor in resume or ():
            if conv not in lasts and parse_dm(conv) is None:
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"resume.cursors[{conv}]",
                    f"{self.user!r} is not a member of channel {conv!r}",
                )
            if cursor < lasts.get(conv, 0):
                replay[conv] = cursor
            lasts[conv] = cursor if conv in replay else lasts.get(conv, cursor)
        for conv, last in lasts.items():
            self._track(conv, last)
        await self._learn_members([c for c in lasts if parse_dm(c) is None])
        self.out.put_nowait(
            pb.ServerFrame(
                resumed=pb.Resumed(
                    user=self.user,
                    session_id=self.session_id,
                    node_id=int(self.node_id),
                    cursors=dict(self._cursors),
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                )
            )
        )
        self._hub.started(self)
        if replay:
            frame = pb.ServerFrame()
            await self._catch_up(replay, frame)
            self._emit(frame)

    async def stop(self) -> None:
        """Detach and drop the route (only if it still points here: it may have moved)."""
        self._hub.detach(self)
        if self._hub.has_session(self.user, self.session_id):
            return  # a newer stream of this session on this node owns the route now
        drop = DropRoute(self.user, self.session_id, int(self.node_id))
        try:
            await self._svc.router.propose(self._svc.user_group(self.user), drop)
        except ApiError as exc:
            log.warning("could not drop the route of %s/%s: %s", self.user, self.session_id, exc)

    # ---- pushing -----------------------------------------------------------------------------

    async def push_forever(self) -> None:
        """Handle the inbox in order until cancelled or the session must end."""
        while True:
            while not self._inbox:
                self._wake.clear()
                await self._wake.wait()
            frame = pb.ServerFrame()
            while self._inbox:
                await self._handle(self._inbox.popleft(), frame)
            self._emit(frame)

    async def _handle(self, item: Item, frame: pb.ServerFrame) -> None:
        if isinstance(item, MessageCommitted):
            await self._on_message(item.message, frame)
        elif isinstance(item, MembershipChanged):
            await self._on_membership(item, frame)
        elif isinstance(item, RouteChanged):
            await self._on_route(item, frame)
        elif isinstance(item, Superseded):
            raise SessionEnded(
                grpc.StatusCode.ABORTED,
                f"session {self.session_id} reconnected to this node on a newer stream",
            )
        else:
            await self._resync(item.group, frame)

    async def _on_message(self, m: Message, frame: pb.ServerFrame) -> None:
        conv = m.conversation
        if conv not in self._cursors:
            pair = parse_dm(conv)
            if pair is None or self.user not in pair:
                return  # a channel this session does not follow (anymore)
            self._track(conv, 0)  # a DM that just began: everything in it is new
            peer = pair[0] if pair[1] == self.user else pair[1]
            if peer not in self._contacts:
                self._contacts.add(peer)
                await self._tell_presence(peer, frame)
        cursor = self._cursors[conv]
        if m.seq <= cursor:
            return
        if m.seq > cursor + 1:
            await self._catch_up({conv: cursor}, frame)
            return
        await self._push(frame, [m])

    async def _on_membership(self, ev: MembershipChanged, frame: pb.ServerFrame) -> None:
        if ev.user == self.user:
            if ev.joined:
                if ev.channel not in self._cursors:
                    self._track(ev.channel, ev.last_seq)
                    await self._learn_members([ev.channel])
            else:
                self._untrack(ev.channel)
        elif ev.joined and ev.user not in self._contacts:
            self._contacts.add(ev.user)
            await self._tell_presence(ev.user, frame)
        if ev.channel in self._cursors or ev.user == self.user:
            change = pb.MEMBERSHIP_CHANGE_JOINED if ev.joined else pb.MEMBERSHIP_CHANGE_LEFT
            frame.membership.append(
                pb.MembershipEvent(
                    channel=ev.channel,
                    user=ev.user,
                    display_name=await self._display(ev.user),
                    change=change,
                    member_count=ev.member_count,
                )
            )

    async def _on_route(self, ev: RouteChanged, frame: pb.ServerFrame) -> None:
        if ev.user == self.user and ev.session_id == self.session_id:
            if ev.online and ev.gateway_node != int(self.node_id):
                raise SessionEnded(
                    grpc.StatusCode.ABORTED,
                    f"session {self.session_id} moved to node {ev.gateway_node}",
                )
            if not ev.online:
                await self._route_again()
            return
        if ev.user == self.user or ev.user not in self._contacts:
            return
        first_open = ev.online and ev.sessions == 1 and ev.previous_node == 0
        last_closed = not ev.online and ev.sessions == 0
        if first_open or last_closed:
            frame.presence.append(
                pb.PresenceEvent(
                    user=ev.user,
                    display_name=await self._display(ev.user),
                    online=ev.online,
                    node_id=ev.gateway_node,
                )
            )

    async def _route_again(self) -> None:
        """This live stream's route was dropped under it: by the route reaper of a node that
        took this one for dead (cut off from discovery for longer than ``--route-grace``, see
        ``shards.chat.reaper``). Set it again, so DMs and presence find the session (its
        contacts see it go offline and come back). A drop this session made itself is never
        seen here: ``stop`` detaches first."""
        route = SetRoute(self.user, self.session_id, int(self.node_id), self._svc.clock())
        try:
            await self._svc.router.propose(self._svc.user_group(self.user), route)
        except ApiError as exc:
            log.warning("could not route %s/%s again: %s", self.user, self.session_id, exc)

    async def _tell_presence(self, user: str, frame: pb.ServerFrame) -> None:
        """A new contact: say whether they are online now (their earlier presence events
        were not for this session)."""
        group = self._svc.user_group(user)
        routes = await self._svc.router.query(group, queries.RoutesOf(user), linearizable=False)
        if routes:
            frame.presence.append(
                pb.PresenceEvent(
                    user=user,
                    display_name=await self._display(user),
                    online=True,
                    node_id=routes[0].gateway_node,
                )
            )

    async def _resync(self, group: GroupId, frame: pb.ServerFrame) -> None:
        """Events of ``group`` may be lost: pick up conversations entered meanwhile and
        re-read each one of the group from its cursor."""
        found = await self._svc.router.query(
            group, queries.ConversationsOf(self.user), linearizable=True
        )
        held_here = {r.conversation for r in found}
        for conv in list(self._cursors):  # channels left while events were missed
            channel_here = parse_dm(conv) is None and self._svc.conversation_group(conv) == group
            if channel_here and conv not in held_here:
                self._untrack(conv)
        for ref in found:
            if ref.last_seq is None or ref.conversation in self._cursors:
                continue
            # Entered while events were missed. A DM is new: all of it. A channel from where
            # the user joined it (from now for a join recorded before joined_seq existed).
            if ref.peer:
                self._track(ref.conversation, 0)
            else:
                joined = ref.joined_seq
                self._track(ref.conversation, ref.last_seq if joined is None else joined)
        mine = {
            c: cur for c, cur in self._cursors.items() if self._svc.conversation_group(c) == group
        }
        if mine:
            await self._catch_up(mine, frame)

    async def _catch_up(self, cursors: dict[str, int], frame: pb.ServerFrame) -> None:
        """Push everything after ``cursors`` (read linearizably), in rounds of CATCH_UP_LIMIT."""
        pending = dict(cursors)
        while pending:
            page, gaps = await self._svc.catch_up(pending, CATCH_UP_LIMIT)
            for gap in gaps:
                if gap.conversation in self._cursors:
                    self._cursors[gap.conversation] = max(
                        self._cursors[gap.conversation], gap.last_seq
                    )
                    frame.gaps.append(gap.to_proto())
            fresh = [m for m in page.messages if m.seq > self._cursors.get(m.conversation, -1)]
            await self._push(frame, fresh)
            if not page.limited:
                return
            pending = {c: s for c, s in page.cursors.items() if c in self._cursors}
            if pending == cursors:
                return  # no progress: never spin
            cursors = dict(pending)
            sent = pb.ServerFrame()
            sent.CopyFrom(frame)
            self._emit(sent)
            frame.Clear()

    async def _push(self, frame: pb.ServerFrame, messages: Sequence[Message]) -> None:
        for m in messages:
            if m.conversation not in self._cursors or m.seq != self._cursors[m.conversation] + 1:
                continue  # left meanwhile, or not the next one (a later catch-up fills it)
            frame.messages.append(
                api.message_to_proto(m, self.user, {m.sender: await self._display(m.sender)})
            )
            self._cursors[m.conversation] = m.seq

    async def _display(self, user: str) -> str:
        held = self._displays.get(user)
        if held is None:
            held = (await self._svc.display_names([user])).get(user, "")
            self._displays[user] = held
        return held

    async def _learn_members(self, channels: Sequence[str]) -> None:
        if not channels:
            return
        answers = await asyncio.gather(
            *(
                self._svc.router.query(
                    self._svc.conversation_group(c), queries.Members(c), linearizable=False
                )
                for c in channels
            )
        )
        for members in answers:
            self._contacts.update(members or ())
        self._contacts.discard(self.user)

    def _track(self, conv: str, cursor: int) -> None:
        self._cursors[conv] = max(cursor, self._cursors.get(conv, 0))
        self._hub.track(self, conv)

    def _untrack(self, conv: str) -> None:
        self._cursors.pop(conv, None)
        self._hub.untrack(self, conv)

    def _emit(self, frame: pb.ServerFrame) -> None:
        if frame.ByteSize():
            self.out.put_nowait(frame)

    # ---- client frames -----------------------------------------------------------------------

    async def handle_frame(self, frame: api.SessionFrame) -> pb.ServerFrame:
        """Answer one client frame: its sends (one proposal batch per group), its read
        markers, its heartbeat."""
        out = pb.ServerFrame(heartbeat=frame.heartbeat)
        results = await self._sends(frame.sends)
        out.results.extend(results)
        for i, mark in enumerate(frame.mark_reads):
            if isinstance(mark, ApiError):
                out.errors.append(mark.to_failure())
                continue
            out.errors.extend(await self._mark_read(i, mark))
        return out

    async def _sends(self, sends: Sequence[SendIntent | RejectedSend]) -> list[pb.SendResult]:
        outcome: dict[int, Posted | ApiError] = {}
        valid: list[tuple[int, SendIntent]] = []
        for i, send in enumerate(sends):
            if isinstance(send, RejectedSend):
                outcome[i] = send.error
            else:
                valid.append((i, send))
        if valid:
            granted, wait_ms = self._svc.limiter.take_up_to(self.user, len(valid))
            for i, _ in valid[granted:]:  # over the rate: these fail alone, the rest go
                outcome[i] = self._svc.rate_error(wait_ms, f"sends[{i}]")
            valid = valid[:granted]
        by_group: dict[GroupId, list[tuple[int, SendIntent]]] = {}
        now = self._svc.clock()
        for i, intent in valid:
            try:
                await self._svc.check_dm_peer(intent)
            except ApiError as exc:
                outcome[i] = exc
                continue
            group = self._svc.conversation_group(intent.conversation)
            by_group.setdefault(group, []).append((i, intent))
        batches: list[tuple[list[tuple[int, SendIntent]], list[PostMessage]]] = []
        for items in by_group.values():
            kept, commands = [], []
            for i, intent in items:
                try:
                    commands.append(intent.command(Hlc(now, 0)))
                    kept.append((i, intent))
                except ApiError as exc:
                    outcome[i] = exc
            if kept:
                batches.append((kept, commands))
        answers = await asyncio.gather(
            *(
                self._svc.router.propose_many(
                    self._svc.conversation_group(cmds[0].conversation), cmds
                )
                for _, cmds in batches
            ),
            return_exceptions=True,
        )
        for (items, _), answer in zip(batches, answers, strict=True):
            for n, (i, intent) in enumerate(items):
                if isinstance(answer, ApiError):
                    outcome[i] = answer
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    result = answer[n]
                    if isinstance(result, Rejected):
                        outcome[i] = intent.rejection(result)
                    elif isinstance(result, Posted):
                        outcome[i] = result
                    else:
                        outcome[i] = ApiError(
                            grpc.StatusCode.INTERNAL, "", f"unexpected result {result!r}"
                        )
        return [api.send_result(send.idempotency_key, outcome[i]) for i, send in enumerate(sends)]

    async def _mark_read(self, i: int, mark: MarkRead) -> list[pb.Failure]:
        group = self._svc.conversation_group(mark.conversation)
        try:
            result = await self._svc.router.propose(group, mark)
            api.expect(result, mark, ReadMarked)
        except ApiError as exc:
            exc.field = f"mark_reads[{i}].{exc.field}" if exc.field else f"mark_reads[{i}]"
            return [exc.to_failure()]
        return []
