"""The conversation model: everything the screen shows, as plain data, with no I/O.

Why one model shared by the TUI, the line mode and the tests: the rules that decide what the
user sees — messages per conversation ordered by seq with no duplicate, which ones are unread,
which mention the reader, where the read marker sits, what is still missing — are the part most
worth testing, and they are easiest to test as a value that events are applied to. The engine
(``engine``) applies server answers and pushed events; the views (``render``) only read.

Seq numbers make merging simple: a conversation holds ``seq -> Message``; a history page, a
pushed message and a send receipt for the same seq are the same message, whichever comes
first. What is known to exist but not held (a gap announced by the session, the tail before the
first page loads) is a *hole* the engine fills with history reads when the conversation is seen.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from clients.chat.ids import dm_peer, label, parse_dm
from clients.chat.mentions import mentions
from clients.chat.outbox import Outbox, PendingSend
from clients.chat.status import LinkStatus
from clients.models import Message, SendReceipt, Unread


class Kind(enum.Enum):
    CHANNEL = "channel"
    DM = "dm"


class NoteLevel(enum.Enum):
    INFO = "info"
    """Output of a command, a join or leave."""
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Note:
    """A local line between messages (command output, errors): not part of the conversation
    on the server, shown after the message ``after_seq``."""

    after_seq: int
    text: str
    level: NoteLevel = NoteLevel.INFO


@dataclass(eq=False)
class Conversation:
    id: str
    kind: Kind
    peer: str = ""
    """The other participant of a DM."""
    joined: bool = True
    """False while ``/join`` or ``/create`` is on its way."""
    last_seq: int = 0
    """The newest seq known to exist (from the server's counts, pushes and receipts)."""
    read_seq: int = 0
    reached_oldest: bool = False
    """Seq 1 is held, or there is nothing before the oldest held message."""
    loaded: bool = False
    """The first history page has arrived."""
    marker_seq: int | None = None
    """Where the "new" line is drawn while the conversation is open: the read marker as it
    was when the user switched here, if anything was unread then (None: no line). It stays
    while the user reads on, and goes when they write here (they have caught up)."""
    messages: dict[int, Message] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    """``messages``' keys, ascending."""
    notes: list[Note] = field(default_factory=list)

    @property
    def newest_held(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    @property
    def oldest_held(self) -> int:
        return self.seqs[0] if self.seqs else 0

    def add(self, message: Message) -> bool:
        """Hold ``message``; False if its seq was held already."""
        if message.seq in self.messages:
            return False
        self.messages[message.seq] = message
        bisect.insort(self.seqs, message.seq)
        self.last_seq = max(self.last_seq, message.seq)
        if message.seq == 1:
            self.reached_oldest = True
        return True

    def trim_before(self, seq: int) -> None:
        """Forget held messages before ``seq``: they are not contiguous with the newest ones
        (a gap too large to fill at once); they load again on scrolling up."""
        cut = bisect.bisect_left(self.seqs, seq)
        for old in self.seqs[:cut]:
            del self.messages[old]
        del self.seqs[:cut]
        self.reached_oldest = seq <= 1

    def holes(self) -> list[tuple[int, int]]:
        """Ranges ``(first, last)`` of seqs that exist but are not held, between the oldest
        held message and ``last_seq`` (older history is not a hole: it loads on scrolling)."""
        out: list[tuple[int, int]] = []
        previous = self.oldest_held if self.seqs else 0
        for seq in self.seqs[1:]:
            if seq > previous + 1:
                out.append((previous + 1, seq - 1))
            previous = seq
        if self.last_seq > previous and (self.seqs or self.loaded):
            out.append((previous + 1, self.last_seq))
        return out

    def unread(self, me: str) -> int:
        """Messages after the read marker, not counting the reader's own."""
        if self.last_seq <= self.read_seq:
            return 0
        own = sum(1 for s in self._after(self.read_seq) if self.messages[s].sender == me)
        return max(0, self.last_seq - self.read_seq - own)

    def mention_count(self, me: str) -> int:
        """Unread messages addressed to the reader: every unread one of a DM, the ``@me`` ones
        of a channel."""
        if self.kind is Kind.DM:
            return self.unread(me)
        return sum(
            1
            for s in self._after(self.read_seq)
            if self.messages[s].sender != me and mentions(self.messages[s].text, me)
        )

    def _after(self, seq: int) -> list[int]:
        return self.seqs[bisect.bisect_right(self.seqs, seq) :]


class ChatModel:
    """Every conversation of the logged-in user, the current one, who is online, the outbox
    and the connection; ``version`` grows with every change (views cache on it)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.conversations: dict[str, Conversation] = {}
        self.current: str | None = None
        self.online: set[str] = set()
        self.users: set[str] = {me}
        self.channels: set[str] = set()
        """Every channel name seen (for completion and the switcher), joined or not."""
        self.home_notes: list[Note] = []
        self.outbox = Outbox()
        self.link = LinkStatus()
        self.version = 0

    def touch(self) -> None:
        self.version += 1

    # ---- conversations ---------------------------------------------------------------------

    def ensure(self, conversation: str) -> Conversation:
        """The conversation with this id, created (empty) if new."""
        conv = self.conversations.get(conversation)
        if conv is None:
            peer = dm_peer(conversation, self.me)
            if peer is not None:
                conv = Conversation(conversation, Kind.DM, peer=peer)
                self.users.add(peer)
            else:
                conv = Conversation(conversation, Kind.CHANNEL)
                self.channels.add(conversation)
            self.conversations[conversation] = conv
            self.touch()
        return conv

    def remove(self, conversation: str) -> None:
        if self.conversations.pop(conversation, None) is not None:
            if self.current == conversation:
                self.switch(None)
            self.touch()

    def ordered(self) -> list[Conversation]:
        """The sidebar's order: channels by name, then DMs by peer."""
        channels = sorted(
            (c for c in self.conversations.values() if c.kind is Kind.CHANNEL), key=_by_id
        )
        dms = sorted((c for c in self.conversations.values() if c.kind is Kind.DM), key=_by_peer)
        return channels + dms

    def label(self, conversation: str) -> str:
        return label(conversation, self.me)

    @property
    def current_conversation(self) -> Conversation | None:
        return None if self.current is None else self.conversations.get(self.current)

    def switch(self, conversation: str | None) -> Conversation | None:
        """Make ``conversation`` current (None: the home view); the read marker line is placed
        where the reader had read up to."""
        old = self.current_conversation
        if old is not None:
            old.marker_seq = None
        self.current = conversation
        conv = None if conversation is None else self.ensure(conversation)
        if conv is not None:
            conv.marker_seq = conv.read_seq if conv.unread(self.me) else None
        self.touch()
        return conv

    def next_unread(self) -> Conversation | None:
        """Where Alt-A goes: the next conversation (after the current one, wrapping) with a
        mention, else the next with anything unread."""
        order = self.ordered()
        if not order:
            return None
        ids = [c.id for c in order]
        start = ids.index(self.current) + 1 if self.current in ids else 0
        rotated = order[start:] + order[:start]
        rotated = [c for c in rotated if c.id != self.current]
        for conv in rotated:
            if conv.mention_count(self.me):
                return conv
        for conv in rotated:
            if conv.unread(self.me):
                return conv
        return None

    # ---- what the server says --------------------------------------------------------------

    def apply_unread(self, counts: Iterable[Unread]) -> None:
        """The server's conversation list: every conversation the user is in, with its last
        seq and read marker."""
        for u in counts:
            conv = self.ensure(u.conversation)
            conv.last_seq = max(conv.last_seq, u.last_seq)
            conv.read_seq = max(conv.read_seq, u.read_seq)
        self.touch()

    def apply_cursors(self, cursors: dict[str, int]) -> None:
        """Where the session started pushing: everything up to there exists."""
        for conversation, seq in cursors.items():
            if conversation in self.conversations or parse_dm(conversation) is not None:
                conv = self.ensure(conversation)
                conv.last_seq = max(conv.last_seq, seq)
        self.touch()

    def apply_message(self, message: Message) -> bool:
        """A message pushed or read; False if already held. Confirms the matching pending send
        (by idempotency key) when it is the reader's own. One's own message (from this device
        or another) moved the read marker to it on the server, so it does here too."""
        conv = self.ensure(message.conversation)
        added = conv.add(message)
        self.users.add(message.sender)
        if message.sender == self.me:
            conv.read_seq = max(conv.read_seq, message.seq)
        if message.idempotency_key:
            self.outbox.done(message.idempotency_key)
        if added or message.idempotency_key:
            self.touch()
        return added

    def apply_page(self, conversation: str, messages: Iterable[Message], oldest: bool) -> None:
        """A history page; ``oldest``: nothing exists before its first message."""
        conv = self.ensure(conversation)
        for message in messages:
            conv.add(message)
            self.users.add(message.sender)
        conv.loaded = True
        if oldest:
            conv.reached_oldest = True
        self.touch()

    def apply_receipt(self, pending: PendingSend, receipt: SendReceipt) -> None:
        """An acknowledged send: it is stored at ``receipt.seq``, and the server moved the
        reader's read marker there when it stored it (one's own message is read, and writing
        means one has caught up), so the marker here follows without a MarkRead."""
        message = Message(
            receipt.conversation,
            receipt.seq,
            self.me,
            self.me,
            pending.text,
            receipt.hlc_ms,
            receipt.hlc_counter,
            pending.key,
        )
        conv = self.ensure(receipt.conversation)
        conv.add(message)
        conv.read_seq = max(conv.read_seq, receipt.seq)
        if conv.id == self.current:
            conv.marker_seq = None
        self.outbox.done(pending.key)
        self.touch()

    def apply_read(self, conversation: str, read_seq: int) -> None:
        conv = self.conversations.get(conversation)
        if conv is not None and read_seq > conv.read_seq:
            conv.read_seq = read_seq
            self.touch()

    def set_online(self, user: str, online: bool) -> None:
        self.users.add(user)
        if online:
            self.online.add(user)
        else:
            self.online.discard(user)
        self.touch()

    # ---- notes -----------------------------------------------------------------------------

    def note(self, text: str, level: NoteLevel = NoteLevel.INFO, where: str | None = None) -> None:
        """A local line in conversation ``where`` (default: the current one, or home)."""
        target = where if where is not None else self.current
        conv = None if target is None else self.conversations.get(target)
        if conv is None:
            self.home_notes.append(Note(0, text, level))
        else:
            conv.notes.append(Note(conv.newest_held, text, level))
        self.touch()

    def users_known(self) -> frozenset[str]:
        return frozenset(self.users | self.online)


def _by_id(conv: Conversation) -> str:
    return conv.id


def _by_peer(conv: Conversation) -> str:
    return conv.peer
