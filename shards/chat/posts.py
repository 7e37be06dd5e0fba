"""Applying a run of consecutive PostMessages at once: ``ChatState.apply``'s path for sends.

Why a module of its own: sends are most of the log and every replica applies every one, so a
run of consecutive PostMessages is applied with one lookup statement for all of them and one
write statement per table, keeping the run's own effects (each conversation's last seq and
stamp, each sender's dedup window) in memory in between. That bookkeeping is a concept apart
from the one-statement-per-rule commands in ``state``; :func:`apply_posts` explains it. The
rules are the ones the ``state`` module docstring states; the SQL is in ``schema``
(``read_post_contexts``, ``write_posts``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from shards.chat.commands import PostMessage, parse_dm
from shards.chat.results import Code, Hlc, Posted, Rejected, Result
from shards.chat.schema import Message, read_post_contexts, write_posts


def apply_posts(
    conn: sqlite3.Connection,
    posts: Sequence[tuple[PostMessage, int]],
    *,
    window_size: int,
    capture: list[Message] | None,
) -> list[Result]:
    """Apply valid PostMessages, each the entry at its log index, as if one by one (inside the
    caller's transaction on ``conn``), with dedup windows of ``window_size`` keys per sender;
    each stored message is appended to ``capture`` when it is a list.

    Sends are most of the log and every replica applies every one, so a run costs one
    lookup statement for all its posts (``read_post_contexts``: each conversation's row,
    membership, the key's dedup entry, the sender's count) and one write statement per
    table (``write_posts``), instead of five or six statements per post. In between, the
    run's own effects are kept here: each conversation's last seq and stamp, each sender's
    newest seq per conversation (their read marker moves there, as one's own message is
    read: one upsert row per pair however many sends, since a marker that moves forward
    only ends at the largest), and each sender's window — the keys the run entered, oldest
    first, and how many of the keys the table held before the run it has evicted. Those are
    always the oldest by ``ord``, as every key of the run is newer than any key already in
    the table; and the table holds ``min(entered, window_size)`` keys of the sender (the
    window's invariant, see :class:`_Window`), so the run knows when only its own keys are
    left to evict."""
    contexts = read_post_contexts(
        conn, [(cmd.conversation, cmd.sender, cmd.idempotency_key) for cmd, _ in posts]
    )
    convs: dict[str, _Conversation] = {}
    windows: dict[str, _Window] = {}
    messages: list[tuple[str, int, str, str, int, int, str]] = []
    read: dict[tuple[str, str], int] = {}  # (sender, conversation) -> seq of its newest send
    results: list[Result] = []
    for (cmd, index), ctx in zip(posts, contexts, strict=True):
        conv, sender = cmd.conversation, cmd.sender
        state = convs.get(conv)
        if state is None:
            pair = parse_dm(conv)
            if ctx.last_seq is not None:
                state = _Conversation(pair, ctx.last_seq, ctx.hlc_ms or 0, ctx.hlc_counter or 0)
            elif pair is not None:  # a DM's first message: its row is made by it
                state = _Conversation(pair, 0, 0, 0, stored=False)
            else:
                results.append(no_channel("conversation", conv))
                continue
            convs[conv] = state
        pair = state.pair
        window = windows.get(sender)
        if window is None:
            window = windows[sender] = _Window(ctx.entered or 0, window_size)
        key = (conv, cmd.idempotency_key)
        mine = window.fresh.get(key)
        if mine is not None:
            results.append(Posted(conv, mine[0], Hlc(mine[2], mine[3]), duplicate=True))
            continue
        if ctx.dup_seq is not None and not _evicted(conn, sender, window, ctx.dup_ord):
            hlc = Hlc(ctx.dup_hlc_ms or 0, ctx.dup_hlc_counter or 0)
            results.append(Posted(conv, ctx.dup_seq, hlc, duplicate=True))
            continue
        if not (sender in pair if pair is not None else ctx.member):
            results.append(not_in(sender, conv, pair is None, "sender"))
            continue
        if state.last_seq == 0:
            seq, ms, counter = 1, cmd.hlc_ms, cmd.hlc_counter
        else:
            seq = state.last_seq + 1
            ms, counter = max((cmd.hlc_ms, cmd.hlc_counter), (state.ms, state.counter + 1))
        state.last_seq, state.ms, state.counter, state.changed = seq, ms, counter, True
        messages.append((conv, seq, sender, cmd.text, ms, counter, cmd.idempotency_key))
        read[sender, conv] = seq  # seqs rise along the run: the last is the largest
        window.enter(key, (seq, index, ms, counter), window_size)
        hlc = Hlc(ms, counter)
        if capture is not None:
            capture.append(Message(conv, seq, sender, cmd.text, hlc, cmd.idempotency_key))
        follow_ups: tuple[int, ...] = ()
        if pair is not None and seq == 1 and not state.stored:
            follow_ups = _open_dm(conn, conv, pair)
        results.append(Posted(conv, seq, hlc, duplicate=False, follow_ups=follow_ups))
    write_posts(
        conn,
        evictions=[(s, w.evicted) for s, w in windows.items() if w.evicted],
        messages=messages,
        keys=[
            (s, conv, key, seq, ord_)
            for s, w in windows.items()
            for (conv, key), (seq, ord_, _, _) in w.fresh.items()
        ],
        updated=[
            (c.last_seq, c.ms, c.counter, conv)
            for conv, c in convs.items()
            if c.changed and c.stored
        ],
        created=[
            (conv, c.last_seq, c.ms, c.counter)
            for conv, c in convs.items()
            if c.changed and not c.stored
        ],
        senders=[(s, w.entered) for s, w in windows.items() if w.changed],
        read=[(s, conv, seq) for (s, conv), seq in read.items()],
    )
    return results


def not_in(user: str, conv: str, channel: bool, field: str) -> Rejected:
    """PERMISSION_DENIED: ``user`` is not a member of channel / participant of DM ``conv``."""
    where = f"a member of channel {conv!r}" if channel else f"a participant of {conv!r}"
    return Rejected(Code.PERMISSION_DENIED, field, f"{user!r} is not {where}")


def no_channel(field: str, name: str) -> Rejected:
    return Rejected(Code.NOT_FOUND, field, f"no channel {name!r}")


@dataclass(slots=True)
class _Conversation:
    """A conversation's counters while a run of posts is applied (written back at its end)."""

    pair: tuple[str, str] | None
    """The two users of a DM (None: a channel)."""
    last_seq: int
    ms: int
    counter: int
    stored: bool = True
    """It has a ``conversations`` row (a channel always; a DM from its first message on)."""
    changed: bool = False


class _Window:
    """A sender's dedup window while a run of posts is applied.

    The rule: ``ord`` is the log index that entered a key (unique and increasing on every
    replica); ``entered`` counts the sender's keys ever entered; once it passes the window
    size, each new key evicts exactly the oldest by ``ord``. So the table always holds
    ``min(entered, size)`` keys of the sender: exactly the newest ``size`` (the property
    tests check this invariant on random logs)."""

    __slots__ = ("changed", "entered", "evicted", "fresh", "stored")

    def __init__(self, entered: int, size: int) -> None:
        self.entered = entered
        self.stored = min(entered, size)
        """Keys of the sender in the table when the run began."""
        self.evicted = 0
        """How many of those (the oldest by ``ord``) the run has evicted."""
        self.fresh: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        """Keys the run entered and still holds, oldest first: (conversation, key) -> (seq,
        ord, hlc_ms, hlc_counter)."""
        self.changed = False

    def enter(self, key: tuple[str, str], entry: tuple[int, int, int, int], size: int) -> None:
        """Enter a new key; past the window size, evict the oldest key (the table's first)."""
        self.fresh[key] = entry
        self.entered += 1
        self.changed = True
        if self.entered > size:
            if self.evicted < self.stored:
                self.evicted += 1
            else:
                del self.fresh[next(iter(self.fresh))]


def _evicted(conn: sqlite3.Connection, sender: str, window: _Window, ord_: int | None) -> bool:
    """Whether the run evicted the sender's key entered at ``ord_`` from the table (it
    evicted the table's ``window.evicted`` oldest keys of the sender). Read only for a
    retried send found in the table, so it costs nothing on the common path."""
    if window.evicted == 0 or ord_ is None:
        return False
    row: tuple[int] | None = conn.execute(
        "SELECT ord FROM dedup WHERE sender = ? ORDER BY ord LIMIT 1 OFFSET ?",
        (sender, window.evicted - 1),
    ).fetchone()
    return row is None or ord_ <= row[0]


def _open_dm(conn: sqlite3.Connection, conv: str, pair: tuple[str, str]) -> tuple[int, ...]:
    """A DM's first message: list it for both participants and owe each a follow-up."""
    ids = []
    for user, peer in (pair, pair[::-1]):
        conn.execute(
            "INSERT OR IGNORE INTO user_conversations(user, conversation, peer) VALUES (?, ?, ?)",
            (user, conv, peer),
        )
        cur = conn.execute(
            "INSERT INTO outbox(user, conversation, peer) VALUES (?, ?, ?)", (user, conv, peer)
        )
        assert cur.lastrowid is not None
        ids.append(cur.lastrowid)
    return tuple(ids)
