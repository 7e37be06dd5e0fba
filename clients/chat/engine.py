"""The chat client's behaviour, between the client library and a view: commands, sends in
order, history on demand, read markers, and the session's events applied to the model.

Why a UI-free engine: the full-screen TUI and the line mode (``--plain``) behave the same way,
and the tests drive this class against a real cluster without a terminal. Nothing here waits
for the network on the caller's behalf — every call runs in a task of the engine and reports
back by changing the model (and calling :class:`Listener`), so a key press is never stuck behind
a dead node. The one exception is :meth:`execute`, which line mode awaits to keep a script's
commands in order.

Sends: each conversation's pending messages go out one at a time in the order typed (see
``outbox`` for why); the client library keeps one send alive through failovers with its
idempotency key, and a send that fails for good holds the ones behind it until ``/retry`` or
``/drop``. A rate-limited send waits the time the server asks and goes again by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from clients import (
    AlreadyExists,
    ChatError,
    Event,
    GapEvent,
    MembershipChange,
    MembershipEvent,
    MessageEvent,
    NotFound,
    PermissionDenied,
    PresenceEvent,
    RateLimited,
)
from clients.chat import commands as cmd
from clients.chat.ids import dm_id, text_problem
from clients.chat.link import LinkWatch
from clients.chat.model import ChatModel, Conversation, Kind, NoteLevel
from clients.chat.outbox import SendState
from clients.chat.ports import Backend, Listener, describe
from clients.chat.status import Leader

__all__ = ["Backend", "ChatEngine", "Listener", "describe"]

log = logging.getLogger(__name__)

PAGE: Final = 100
"""Messages per history read (the server allows 500)."""
MAX_PAGE: Final = 500


class ChatEngine:
    def __init__(
        self,
        client: Backend,
        model: ChatModel,
        listener: Listener,
        *,
        send_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.model = model
        self._listener = listener
        self._send_timeout = send_timeout
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._reading: dict[str, asyncio.Task[None]] = {}
        self._link = LinkWatch(
            client,
            model,
            spawn=self._spawn,
            note=self._note,
            changed=self._changed,
            resumed=self._online_changed,
        )
        self._acked: dict[str, int] = {}
        """Conversation -> the highest seq of the user's own acknowledged sends."""
        self._echoed: dict[str, int] = {}
        """Conversation -> the highest seq the session delivered to the listener."""
        self._progress = asyncio.Event()
        self._closed = False

    @property
    def leaders(self) -> Mapping[int, Leader]:
        """Group -> leader, as last read from the gateway (compared after a failover)."""
        return self._link.leaders

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, *, open_first: bool) -> None:
        """Load the conversation list, open the session, start applying its events."""
        counts, channels, online = await asyncio.gather(
            self.client.unread_counts(), self.client.list_channels(), self.client.who()
        )
        self.model.apply_unread(counts)
        self.model.channels.update(c.name for c in channels)
        for session in online:
            self.model.set_online(session.user, True)
        await self.client.open_session()
        self.model.set_online(self.model.me, True)
        self.model.apply_cursors(self.client.cursors)
        self._spawn(self._pump(), "events")
        if open_first and self.model.ordered():
            self.switch(self.model.ordered()[0].id)
        self._changed()

    async def close(self) -> None:
        """Stop every task and close the client (pending sends are abandoned)."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._guard(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before it ran never started ``coro``: close it quietly.
        task.add_done_callback(lambda _: coro.close())
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except ChatError as exc:
            self._note(f"{what}: {describe(exc)}", NoteLevel.ERROR)
        except Exception as exc:  # a bug: say so on screen instead of dying silently
            log.exception("%s failed", what)
            self._note(f"{what} failed: {exc!r}", NoteLevel.ERROR)

    def _changed(self) -> None:
        self._listener.changed()

    def _note(self, text: str, level: NoteLevel = NoteLevel.INFO, where: str | None = None) -> None:
        self.model.note(text, level, where)
        self._listener.note(text, level)
        self._changed()

    # ---- input -----------------------------------------------------------------------------

    def submit(self, line: str) -> bool:
        """A line the user entered: a message is queued at once, a command runs in the
        background. False if the line was refused (it stays in the input)."""
        parsed = cmd.parse(line)
        if isinstance(parsed, cmd.ParseError):
            self._note(parsed.message, NoteLevel.ERROR)
            return False
        if isinstance(parsed, cmd.Send):
            return self.send(parsed.text)
        self._spawn(self.execute(parsed), f"/{type(parsed).__name__.lower()}")
        return True

    async def execute(self, command: cmd.Command) -> None:
        """Carry out ``command``; returns when it is done (line mode awaits this)."""
        match command:
            case cmd.Send(text):
                self.send(text)
            case cmd.Join(channel):
                await self._join(channel, create=False)
            case cmd.Create(channel):
                await self._join(channel, create=True)
            case cmd.Leave(channel):
                await self._leave(channel)
            case cmd.Msg(user, text):
                self._open_dm(user, text)
            case cmd.Who(channel):
                await self._who(channel)
            case cmd.Channels():
                await self._channels()
            case cmd.Read(everything):
                await self._read(everything)
            case cmd.Retry():
                self.retry()
            case cmd.Drop():
                self.drop()
            case cmd.Help():
                self._note("\n".join(cmd.help_lines()))
            case cmd.Quit():
                self._listener.quit()

    def send(self, text: str, conversation: str | None = None) -> bool:
        """Queue ``text`` for ``conversation`` (default: the current one)."""
        target = conversation if conversation is not None else self.model.current
        conv = None if target is None else self.model.conversations.get(target)
        if conv is None:
            self._note("no conversation open: /join a channel or /msg a user", NoteLevel.ERROR)
            return False
        problem = text_problem(text)
        if problem is not None:
            self._note(problem, NoteLevel.ERROR)
            return False
        to_user = conv.peer if conv.kind is Kind.DM else None
        key = uuid.uuid4().hex
        self.model.outbox.add(conv.id, text, key, int(self._clock() * 1000), to_user)
        self.model.touch()
        self._kick(conv.id)
        self._changed()
        return True

    def switch(self, conversation: str | None) -> None:
        """Open ``conversation``: show it, load what is missing, mark it read."""
        conv = self.model.switch(conversation)
        if conv is not None:
            self._load(conv.id)
            self._want_read(conv.id)
        self._changed()

    def jump_to_unread(self) -> bool:
        conv = self.model.next_unread()
        if conv is None:
            return False
        self.switch(conv.id)
        return True

    def load_older(self) -> None:
        """Fetch the page before the oldest held message of the current conversation."""
        conv = self.model.current_conversation
        if conv is None or conv.reached_oldest or not conv.seqs or conv.id in self._loading:
            return
        before = conv.oldest_held

        async def older() -> None:
            page = await self.client.history(conv.id, before=before, limit=PAGE)
            self.model.apply_page(conv.id, page.messages, page.reached_oldest)
            self._changed()

        self._track_load(conv.id, older())

    def retry(self) -> None:
        current = self.model.current
        if current is None or self.model.outbox.retry(current) is None:
            self._note("nothing to retry here")
            return
        self._kick(current)
        self._changed()

    def drop(self) -> None:
        current = self.model.current
        dropped = None if current is None else self.model.outbox.drop(current)
        if current is None or dropped is None:
            self._note("nothing to drop here")
            return
        self._note(f"dropped: {dropped.text[:40]}")
        self._kick(current)

    # ---- commands --------------------------------------------------------------------------

    async def _join(self, channel: str, *, create: bool) -> None:
        existing = self.model.conversations.get(channel)
        if existing is not None and existing.joined:
            self.switch(channel)
            if create:
                self._note(f"#{channel} exists already, and you are in it")
            return
        conv = self.model.ensure(channel)
        conv.joined = False
        self.switch(channel)
        try:
            if create:
                await self.client.create_channel(channel)
            else:
                await self.client.join_channel(channel)
        except ChatError as exc:
            hint = " (/join it)" if isinstance(exc, AlreadyExists) else ""
            if isinstance(exc, NotFound):
                hint = " (/create it)"
            self._fail_queued(channel, describe(exc))
            self.model.remove(channel)
            verb = "create" if create else "join"
            self._note(f"cannot {verb} #{channel}: {describe(exc)}{hint}", NoteLevel.ERROR)
            return
        conv.joined = True
        self.model.channels.add(channel)
        self._note(f"{'created' if create else 'joined'} #{channel}", where=channel)
        self._load(channel)
        self._want_read(channel)
        self._kick(channel)

    async def _leave(self, channel: str | None) -> None:
        current = self.model.current_conversation
        if channel is None:
            if current is None or current.kind is not Kind.CHANNEL:
                self._note("/leave needs a channel here", NoteLevel.ERROR)
                return
            channel = current.id
        await self.client.leave_channel(channel)
        was_current = self.model.current == channel
        self.model.remove(channel)
        if was_current:
            order = self.model.ordered()
            self.switch(order[0].id if order else None)
        self._note(f"left #{channel}")

    def _open_dm(self, user: str, text: str | None) -> None:
        if user == self.model.me:
            self._note("that is you: pick someone else", NoteLevel.ERROR)
            return
        self.switch(dm_id(self.model.me, user))
        if text:
            self.send(text)

    async def _who(self, channel: str | None) -> None:
        current = self.model.current_conversation
        if channel is None and current is not None and current.kind is Kind.CHANNEL:
            channel = current.id
        sessions = await self.client.who(channel or "")
        users: dict[str, list[int]] = {}
        for s in sessions:
            users.setdefault(s.user, []).append(s.node_id)
            self.model.set_online(s.user, True)
        where = f"in #{channel}" if channel else "in total"
        listing = ", ".join(
            f"{u} (node {','.join(str(n) for n in sorted(set(nodes)))})"
            for u, nodes in sorted(users.items())
        )
        self._note(f"{len(users)} online {where}: {listing or 'nobody'}")

    async def _channels(self) -> None:
        channels = await self.client.list_channels()
        self.model.channels.update(c.name for c in channels)
        if not channels:
            self._note("no channels yet: /create one")
            return
        lines = [f"{len(channels)} channels:"] + [
            f"#{c.name}  {c.member_count} member{'s' if c.member_count != 1 else ''}, "
            f"{c.last_seq} message{'s' if c.last_seq != 1 else ''}"
            + ("  (joined)" if c.joined else "")
            for c in channels
        ]
        self._note("\n".join(lines))

    async def _read(self, everything: bool) -> None:
        targets = (
            list(self.model.conversations.values())
            if everything
            else [c for c in [self.model.current_conversation] if c is not None]
        )
        for conv in targets:
            if conv.last_seq > conv.read_seq:
                marker = await self.client.mark_read(conv.id, conv.last_seq)
                self.model.apply_read(conv.id, marker.read_seq)
        self._note("marked as read")

    # ---- sends -----------------------------------------------------------------------------

    def _kick(self, conversation: str) -> None:
        """Start the conversation's send loop if it has something to send and none runs."""
        running = self._drains.get(conversation)
        if running is not None and not running.done():
            return
        conv = self.model.conversations.get(conversation)
        if conv is None or not conv.joined:
            return
        if self.model.outbox.next_to_send(conversation) is None:
            return
        self._drains[conversation] = self._spawn(self._drain(conversation), "send")

    async def _drain(self, conversation: str) -> None:
        outbox = self.model.outbox
        while (pending := outbox.next_to_send(conversation)) is not None:
            outbox.start(pending)
            self._changed()
            try:
                if pending.to_user is not None:
                    receipt = await self.client.send(
                        pending.text,
                        to_user=pending.to_user,
                        idempotency_key=pending.key,
                        timeout=self._send_timeout,
                    )
                else:
                    receipt = await self.client.send(
                        pending.text,
                        conversation,
                        idempotency_key=pending.key,
                        timeout=self._send_timeout,
                    )
            except RateLimited as exc:
                outbox.requeue(pending.key)
                await asyncio.sleep(max(exc.retry_after_ms, 50) / 1000)  # the server's ask
                continue
            except ChatError as exc:
                outbox.failed(pending.key, describe(exc))
                self._note(
                    f"not sent: {describe(exc)} (/retry or /drop)",
                    NoteLevel.ERROR,
                    where=conversation,
                )
                return
            self.model.apply_receipt(pending, receipt)
            self._acked[receipt.conversation] = max(
                self._acked.get(receipt.conversation, 0), receipt.seq
            )
            self._want_read(receipt.conversation)
            self._changed()

    def _fail_queued(self, conversation: str, error: str) -> None:
        for pending in self.model.outbox.pending(conversation):
            if pending.state is SendState.QUEUED:
                self.model.outbox.failed(pending.key, error)

    async def wait_sent(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until no send is queued or on the wire, and every
        acknowledged one has come back on the session; True if so."""
        deadline = time.monotonic() + timeout
        while True:
            drains = [t for t in self._drains.values() if not t.done()]
            if drains:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                await asyncio.wait(drains, timeout=remaining)
                continue
            if self._all_echoed():
                return not self.model.outbox.busy
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    def _all_echoed(self) -> bool:
        return all(self._echoed.get(conv, 0) >= seq for conv, seq in self._acked.items())

    # ---- history and read markers ----------------------------------------------------------

    def _load(self, conversation: str) -> None:
        """Fetch the first page of ``conversation`` if needed, then fill its holes."""
        if conversation in self._loading:
            return
        self._track_load(conversation, self._fill(conversation))

    def _track_load(self, conversation: str, coro: Coroutine[Any, Any, None]) -> None:
        task = self._spawn(coro, f"history of {self.model.label(conversation)}")
        self._loading[conversation] = task
        task.add_done_callback(lambda _: self._loading.pop(conversation, None))

    async def _fill(self, conversation: str) -> None:
        conv = self.model.conversations.get(conversation)
        if conv is None or (conv.kind is Kind.CHANNEL and not conv.joined):
            return
        if not conv.loaded:
            try:
                page = await self.client.history(conversation, limit=PAGE)
            except (NotFound, PermissionDenied):
                # A DM whose first message is not written yet.
                self.model.apply_page(conversation, (), oldest=True)
                self._changed()
                return
            self.model.apply_page(conversation, page.messages, page.reached_oldest)
            self._changed()
        for _ in range(50):  # each round fills at least one message of the newest hole
            holes = conv.holes()
            if not holes or self.model.current != conversation:
                return
            first, last = holes[-1]
            if last - first + 1 > MAX_PAGE:
                conv.trim_before(last + 1)
                page = await self.client.history(conversation, before=last + 1, limit=PAGE)
            else:
                page = await self.client.history(
                    conversation, after=first - 1, limit=last - first + 1
                )
            if not page.messages:
                return
            self.model.apply_page(conversation, page.messages, page.reached_oldest)
            self._changed()

    def _want_read(self, conversation: str) -> None:
        """Move the read marker of the open conversation up to its newest message."""
        if conversation != self.model.current or conversation in self._reading:
            return
        conv = self.model.conversations.get(conversation)
        if conv is None or conv.last_seq <= conv.read_seq or not conv.joined:
            return

        async def mark(conv: Conversation = conv) -> None:
            try:
                while conv.last_seq > conv.read_seq and self.model.current == conv.id:
                    marker = await self.client.mark_read(conv.id, conv.last_seq)
                    self.model.apply_read(conv.id, marker.read_seq)
                    self._changed()
                    if marker.read_seq < conv.last_seq and marker.unread == 0:
                        return
            except ChatError as exc:
                # Not worth a line on screen: the next message or switch tries again.
                log.info("marking %s read failed: %s", conv.id, exc)
            finally:
                self._reading.pop(conv.id, None)

        self._reading[conversation] = self._spawn(mark(), "read marker")

    # ---- the session's events --------------------------------------------------------------

    async def _pump(self) -> None:
        async for event in self.client.events():
            self._apply(event)
            self._progress.set()
            self._changed()

    def _apply(self, event: Event) -> None:
        model = self.model
        if isinstance(event, MessageEvent):
            message = event.message
            # Every pushed message is new to the listener (the session delivers each seq once),
            # even when the model holds it already from the send's receipt.
            if message.conversation not in model.conversations and message.sender != model.me:
                self._online_changed()  # a new DM: is its sender online?
            model.apply_message(message)
            self._listener.message(message)
            self._echoed[message.conversation] = max(
                self._echoed.get(message.conversation, 0), message.seq
            )
            self._want_read(message.conversation)
            conv = model.conversations.get(message.conversation)
            if conv is not None and conv.id == model.current and conv.holes():
                self._load(conv.id)
        elif isinstance(event, GapEvent):
            gap = event.gap
            self._echoed[gap.conversation] = max(
                self._echoed.get(gap.conversation, 0), gap.last_seq
            )
            conv = model.ensure(gap.conversation)
            conv.last_seq = max(conv.last_seq, gap.last_seq)
            self._note(
                f"{gap.last_seq - gap.first_seq + 1} older messages were skipped while "
                "reconnecting; they load when you scroll to them",
                where=gap.conversation,
            )
            if conv.id == model.current:
                self._load(conv.id)
        elif isinstance(event, PresenceEvent):
            model.set_online(event.user, event.online)
        elif isinstance(event, MembershipEvent):
            self._on_membership(event)
        else:
            self._link.apply(event)

    def _on_membership(self, event: MembershipEvent) -> None:
        model = self.model
        model.users.add(event.user)
        model.channels.add(event.channel)
        joined = event.change is MembershipChange.JOINED
        if event.user == model.me:
            if joined:
                model.ensure(event.channel)
            elif model.current != event.channel:
                model.remove(event.channel)
            return
        if event.channel in model.conversations:
            verb = "joined" if joined else "left"
            self._note(f"{event.user} {verb} #{event.channel}", where=event.channel)
            if joined and event.user not in model.online:
                # Presence is pushed only about users one shares a conversation with, and this
                # one may have come online before: ask.
                self._online_changed()

    def _online_changed(self) -> None:
        """Presence events may have been missed (a reconnect; a new contact): ask who is on."""
        self._spawn(self._refresh_online(), "who")

    async def _refresh_online(self) -> None:
        sessions = await self.client.who()
        self.model.online = {s.user for s in sessions} | {self.model.me}
        self.model.touch()
        self._changed()
