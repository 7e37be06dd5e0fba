"""The replicated chat state of one Raft group: commands applied into SQLite, and its queries.

``ChatState`` implements ``cluster.statemachine.GroupStateMachine``. Like ``LogStateMachine`` it
keeps everything in one SQLite database in WAL mode with ``synchronous=NORMAL`` (each applied
batch is one atomic transaction that also writes ``applied_index``; the Raft log, fsynced, is the
durable source and re-applies whatever a power loss took), skips entries at or below
``applied_index``, and snapshots with the backup API. Apply is deterministic: it reads no clock
and no randomness, only the entries and the database.

The rules applied (every one yields the same result on every replica):

- **Sequence numbers.** Each conversation's messages are numbered 1, 2, 3 … with no gap: the
  next seq is ``conversations.last_seq + 1``, in the same transaction as the insert.
- **Stamps.** The stored HLC stamp is ``max(given, previous stamp of the conversation + 1
  tick)``, a tick being ``(ms, counter + 1)``; the first message keeps the given stamp. So
  stamps rise strictly along seq, even when a new leader's clock is behind the old one's.
- **Exactly once.** A PostMessage whose (sender, conversation, idempotency_key) is in the dedup
  window answers the original seq and stamp with ``duplicate=True`` and writes nothing, even if
  the sender has since left the channel (the message was accepted then). The window is
  count-based and per sender: each sender's newest ``dedup_window`` keys (default 10,000,
  across the conversations of this group) are kept; the oldest is evicted when a new one comes.
  Count, not age, because it bounds the table by senders and needs no clock; a client retries
  only its in-flight sends, far fewer than 10,000. The window size is part of the replicated
  rules: every replica of a group must use the same value.
- **Membership.** Posting to a channel needs membership (PERMISSION_DENIED otherwise), posting
  to a DM being one of its two participants. Joining twice and leaving twice are no-ops.
- **Read markers** move forward only; ``unread = last_seq - read_seq``. Marking beyond the last
  message is FAILED_PRECONDITION. A new message moves its sender's marker forward to it, in
  the same apply (messages and markers are in the conversation's group): one's own message is
  never unread, and writing in a conversation means one has caught up with it. An exact
  replay of a send moves nothing; other users' markers never move but by their MarkRead.
- **Exact replays** of RegisterUser/CreateChannel (same fields, times included: a proposal the
  gateway retried) answer ``duplicate=True``; any other clash is ALREADY_EXISTS.
- **Sessions** (in the user's group): OpenSession needs the user to exist here (NOT_FOUND
  otherwise); an identical replay is ``duplicate=True``, a digest already held with other fields
  ALREADY_EXISTS. CloseSession removes only that user's session and is idempotent.
- **Follow-ups.** A DM's first message lists the DM for both participants here and puts one
  outbox entry per participant, which the service turns into AddDmConversation in the
  participant's group and then acknowledges with AckFollowUp (both idempotent).

Queries are plain read-only methods on the same connection; the caller (the service) checks who
may read what (DM history only for its participants) and enforces request limits.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cluster.messages import Entry, EntryKind, Snapshot
from cluster.statemachine import SqliteSnapshotJob, pin_sqlite_snapshot
from shards.chat.commands import (
    AckFollowUp,
    AddDmConversation,
    CloseSession,
    Command,
    CreateChannel,
    DropRoute,
    JoinChannel,
    LeaveChannel,
    MalformedCommand,
    MarkRead,
    OpenSession,
    PostMessage,
    RegisterUser,
    SetRoute,
    decode_command,
    parse_dm,
    validate,
)
from shards.chat.posts import apply_posts, no_channel, not_in
from shards.chat.results import (
    ChannelCreated,
    Code,
    DmAdded,
    FollowUpAcked,
    Joined,
    Left,
    ReadMarked,
    Rejected,
    Result,
    RouteDropped,
    RouteSet,
    SessionClosed,
    SessionOpened,
    UserRegistered,
)
from shards.chat.schema import (
    ChannelInfo,
    ConversationRef,
    FollowUp,
    HistoryPage,
    Message,
    Route,
    SyncPage,
    UserRecord,
    canonical_dump,
    copy_database,
    create_schema,
    read_channels,
    read_messages,
    restore_database,
)

DEDUP_WINDOW: Final = 10_000
"""Idempotency keys kept per sender (see the module docstring)."""
MAX_PAGE: Final = 500
"""Most messages one history or sync query returns; larger limits are clamped."""


class ChatState:
    """One group's chat state in the SQLite database at ``path`` (created if missing)."""

    def __init__(
        self, path: str | Path, *, dedup_window: int = DEDUP_WINDOW, defer_commit: bool = False
    ) -> None:
        """``defer_commit``: leave each ``apply``'s transaction open for the next ones until
        ``flush()`` (the node host flushes within ``cluster.host.FLUSH_INTERVAL`` and before it
        idles). A commit writes every page the transaction dirtied to the WAL, which was most
        of the cost of applying a send (1 send per call: ~140 µs of CPU, almost all commit),
        and every replica pays it. Safe because the Raft log is the durable record: after a
        crash the state resumes from the committed ``applied_index``, as it always could."""
        if dedup_window < 1:
            raise ValueError("dedup_window must be at least 1")
        self._dedup_window = dedup_window
        self._defer_commit = defer_commit
        self._in_transaction = False
        self._path = Path(path)
        # Room for the lookup statements of runs of every length (``read_post_contexts``)
        # beside the others, so none is prepared again after being pushed out.
        self._conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=True, cached_statements=256
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        create_schema(self._conn)
        self._applied = self._load_applied()
        self.restores = 0
        """How many snapshots were restored into this state (for tests and status)."""
        self.capture: list[Message] | None = None
        """When a list, every message stored by ``apply`` is appended to it (the push feed
        reads them from here instead of reading them back from the database)."""

    # ---- GroupStateMachine -------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        """One result per entry: None for a NOOP entry or one already applied (a replay after a
        crash is never applied twice), else a :data:`Result`. All entries commit together.

        Consecutive PostMessages (entries that write nothing in between: NOOPs, skipped and
        refused entries, do not interrupt them) are applied as one run by
        :meth:`_apply_posts`; any other command first writes out the run before it, so it sees
        the database exactly as after the previous entry."""
        results: list[object | None] = []
        if not entries:
            return results
        conn = self._conn
        if not self._in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
        try:
            run: list[tuple[int, PostMessage, int]] = []  # (place in results, command, index)
            for entry in entries:
                if entry.index <= self._applied or entry.kind is EntryKind.NOOP:
                    results.append(None)
                    continue
                try:
                    cmd = decode_command(entry.data)
                except MalformedCommand as exc:
                    results.append(Rejected(Code.INVALID_ARGUMENT, "command", str(exc)))
                    continue
                bad = validate(cmd)
                if bad is not None:
                    results.append(bad)
                elif type(cmd) is PostMessage:
                    run.append((len(results), cmd, entry.index))
                    results.append(None)  # filled in when the run is applied
                else:
                    if run:
                        self._apply_run(run, results)
                        run = []
                    results.append(self._execute(cmd, entry.index))
            if run:
                self._apply_run(run, results)
            applied = max(self._applied, entries[-1].index)
            conn.execute("UPDATE meta SET applied_index = ?", (applied,))
        except BaseException:
            # Everything since the last commit goes, earlier calls' effects included; the
            # host stops on an apply error, and a restart replays from the committed index.
            conn.execute("ROLLBACK")
            self._in_transaction = False
            self._applied = self._load_applied()
            raise
        self._applied = applied
        if not self._defer_commit:
            self.flush()
        return results

    def flush(self) -> None:
        """Commit what ``apply`` left open (``defer_commit``); a no-op otherwise."""
        if self._in_transaction:
            self._conn.execute("COMMIT")
            self._in_transaction = False

    def snapshot_to(self, path: Path) -> None:
        """The database copied into a new file at ``path`` with the backup API (a consistent
        read; it never passes through memory whole)."""
        self.flush()
        copy_database(self._conn, path)

    def snapshot_job(self) -> SqliteSnapshotJob:
        """``BackgroundSnapshots``: commit what is open, then pin a read of the database at
        ``applied_index()`` on a second connection, for the host to copy on a thread."""
        self.flush()
        return pin_sqlite_snapshot(self._path, self._applied)

    def snapshot(self) -> bytes:
        """The whole database as bytes, in memory: a convenience for tests and tools. The host
        never calls it (it takes ``snapshot_to`` from any state machine that has one), so the
        size of a group's history never turns into memory."""
        with tempfile.TemporaryDirectory(dir=self._path.parent) as tmp:
            copy = Path(tmp) / "snapshot.sqlite"
            self.snapshot_to(copy)
            return copy.read_bytes()

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole state by the database ``snapshot.content`` holds (empty: the state
        before any entry), streamed through a scratch file next to this one; afterwards
        ``applied_index()`` is ``snapshot.meta.index``."""
        self.flush()
        scratch = self._path.with_name(self._path.name + ".restore")
        restore_database(self._conn, snapshot.content, scratch)
        self._conn.execute("UPDATE meta SET applied_index = ?", (snapshot.meta.index,))
        self._applied = self._load_applied()
        self.restores += 1

    def close(self) -> None:
        """Commit what is open and close the database (the creator of a state machine closes
        it, not the host)."""
        self.flush()
        self._conn.close()

    # ---- applying one command ----------------------------------------------------------------

    def _apply_run(
        self, run: Sequence[tuple[int, PostMessage, int]], results: list[object | None]
    ) -> None:
        posted = self._apply_posts([(cmd, index) for _, cmd, index in run])
        for (place, _, _), result in zip(run, posted, strict=True):
            results[place] = result

    def _execute(self, cmd: Command, index: int) -> Result:
        """Apply the valid ``cmd`` as the entry at log ``index`` (inside ``apply``'s
        transaction)."""
        match cmd:
            case RegisterUser():
                return self._register(cmd)
            case CreateChannel():
                return self._create_channel(cmd)
            case JoinChannel():
                return self._join(cmd)
            case LeaveChannel():
                return self._leave(cmd)
            case PostMessage():
                return self._apply_posts([(cmd, index)])[0]
            case MarkRead():
                return self._mark_read(cmd)
            case SetRoute():
                return self._set_route(cmd)
            case DropRoute():
                return self._drop_route(cmd)
            case AddDmConversation():
                return self._add_dm(cmd)
            case AckFollowUp():
                existed = self._write("DELETE FROM outbox WHERE id = ?", (cmd.outbox_id,))
                return FollowUpAcked(cmd.outbox_id, existed)
            case OpenSession():
                return self._open_session(cmd)
            case CloseSession():
                closed = self._write(
                    "DELETE FROM sessions WHERE token_digest = ? AND user = ?",
                    (cmd.token_digest, cmd.user),
                )
                return SessionClosed(cmd.user, closed)

    def _register(self, cmd: RegisterUser) -> Result:
        row = self._one(
            "SELECT display_name, password_hash, created_ms FROM users WHERE name = ?", (cmd.user,)
        )
        if row is not None:
            if tuple(row) == (cmd.display_name, cmd.password_hash, cmd.created_ms):
                return UserRegistered(cmd.user, duplicate=True)
            return Rejected(Code.ALREADY_EXISTS, "user", f"user {cmd.user!r} already exists")
        self._conn.execute(
            "INSERT INTO users(name, display_name, password_hash, created_ms) VALUES (?, ?, ?, ?)",
            (cmd.user, cmd.display_name, cmd.password_hash, cmd.created_ms),
        )
        return UserRegistered(cmd.user, duplicate=False)

    def _open_session(self, cmd: OpenSession) -> Result:
        if self._one("SELECT 1 FROM users WHERE name = ?", (cmd.user,)) is None:
            return Rejected(Code.NOT_FOUND, "user", f"no user {cmd.user!r}")
        row = self._one(
            "SELECT user, created_ms FROM sessions WHERE token_digest = ?", (cmd.token_digest,)
        )
        if row is not None:
            if tuple(row) == (cmd.user, cmd.created_ms):
                return SessionOpened(cmd.user, duplicate=True)
            return Rejected(Code.ALREADY_EXISTS, "token_digest", "a session with this token exists")
        self._conn.execute(
            "INSERT INTO sessions(token_digest, user, created_ms) VALUES (?, ?, ?)",
            (cmd.token_digest, cmd.user, cmd.created_ms),
        )
        return SessionOpened(cmd.user, duplicate=False)

    def _create_channel(self, cmd: CreateChannel) -> Result:
        row = self._one("SELECT creator, created_ms FROM channels WHERE name = ?", (cmd.channel,))
        if row is not None:
            if tuple(row) == (cmd.creator, cmd.created_ms):
                return ChannelCreated(cmd.channel, duplicate=True)
            return Rejected(
                Code.ALREADY_EXISTS, "channel", f"channel {cmd.channel!r} already exists"
            )
        conn = self._conn
        conn.execute(
            "INSERT INTO channels(name, creator, created_ms) VALUES (?, ?, ?)",
            (cmd.channel, cmd.creator, cmd.created_ms),
        )
        conn.execute(
            "INSERT INTO conversations(conversation, last_seq, hlc_ms, hlc_counter)"
            " VALUES (?, 0, 0, 0)",
            (cmd.channel,),
        )
        conn.execute(
            "INSERT INTO members(channel, user, joined_ms, joined_seq) VALUES (?, ?, ?, 0)",
            (cmd.channel, cmd.creator, cmd.created_ms),
        )
        return ChannelCreated(cmd.channel, duplicate=False)

    def _join(self, cmd: JoinChannel) -> Result:
        if not self._channel_exists(cmd.channel):
            return no_channel("channel", cmd.channel)
        added = self._write(
            "INSERT OR IGNORE INTO members(channel, user, joined_ms, joined_seq)"
            " SELECT ?1, ?2, ?3, last_seq FROM conversations WHERE conversation = ?1",
            (cmd.channel, cmd.user, cmd.ms),
        )
        return Joined(cmd.channel, cmd.user, already_member=not added)

    def _leave(self, cmd: LeaveChannel) -> Result:
        if not self._channel_exists(cmd.channel):
            return no_channel("channel", cmd.channel)
        removed = self._write(
            "DELETE FROM members WHERE channel = ? AND user = ?", (cmd.channel, cmd.user)
        )
        return Left(cmd.channel, cmd.user, was_member=removed)

    def _apply_posts(self, posts: Sequence[tuple[PostMessage, int]]) -> list[Result]:
        """Apply valid PostMessages, each the entry at its log index, as if one by one: as one
        run, with one lookup and one write statement per table (see ``posts.apply_posts``)."""
        return apply_posts(self._conn, posts, window_size=self._dedup_window, capture=self.capture)

    def _mark_read(self, cmd: MarkRead) -> Result:
        conv = cmd.conversation
        pair = parse_dm(conv)
        if pair is None and not self._channel_exists(conv):
            return no_channel("conversation", conv)
        denied = self._may_write(cmd.user, conv, pair, "user")
        if denied is not None:
            return denied
        last = self._last_seq(conv)
        if cmd.seq > last:
            return Rejected(
                Code.FAILED_PRECONDITION, "seq", f"seq {cmd.seq} is beyond the last message {last}"
            )
        current = self._read_seq(cmd.user, conv)
        if cmd.seq > current:
            self._conn.execute(
                "INSERT INTO read_markers(user, conversation, seq) VALUES (?, ?, ?)"
                " ON CONFLICT(user, conversation) DO UPDATE SET seq = excluded.seq",
                (cmd.user, conv, cmd.seq),
            )
            current = cmd.seq
        return ReadMarked(cmd.user, conv, current, last - current)

    def _set_route(self, cmd: SetRoute) -> Result:
        row = self._one(
            "SELECT gateway_node FROM routes WHERE user = ? AND session_id = ?",
            (cmd.user, cmd.session_id),
        )
        self._conn.execute(
            "INSERT INTO routes(user, session_id, gateway_node, ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(user, session_id) DO UPDATE SET"
            " gateway_node = excluded.gateway_node, ms = excluded.ms",
            (cmd.user, cmd.session_id, cmd.gateway_node, cmd.ms),
        )
        return RouteSet(cmd.user, cmd.session_id, cmd.gateway_node, 0 if row is None else row[0])

    def _drop_route(self, cmd: DropRoute) -> Result:
        sql = "DELETE FROM routes WHERE user = ? AND session_id = ?"
        params: tuple[object, ...] = (cmd.user, cmd.session_id)
        if cmd.gateway_node:
            sql += " AND gateway_node = ?"
            params = (*params, cmd.gateway_node)
        return RouteDropped(cmd.user, cmd.session_id, dropped=self._write(sql, params))

    def _add_dm(self, cmd: AddDmConversation) -> Result:
        added = self._write(
            "INSERT OR IGNORE INTO user_conversations(user, conversation, peer) VALUES (?, ?, ?)",
            (cmd.user, cmd.conversation, cmd.peer),
        )
        return DmAdded(cmd.user, cmd.conversation, added)

    def _may_write(
        self, user: str, conv: str, pair: tuple[str, str] | None, field: str
    ) -> Rejected | None:
        """PERMISSION_DENIED unless ``user`` is a member of channel ``conv`` / in DM ``pair``."""
        if user in pair if pair is not None else self._is_member(conv, user):
            return None
        return not_in(user, conv, pair is None, field)

    # ---- queries -----------------------------------------------------------------------------

    def user(self, name: str) -> UserRecord | None:
        row = self._one(
            "SELECT name, display_name, password_hash, created_ms FROM users WHERE name = ?",
            (name,),
        )
        return None if row is None else UserRecord(*row)

    def channel(self, name: str) -> ChannelInfo | None:
        found = self._channels("WHERE c.name = ?", (name,))
        return found[0] if found else None

    def channels(self) -> list[ChannelInfo]:
        """Every channel of this group, by name, with its member count."""
        return self._channels("", ())

    def members(self, channel: str) -> list[str] | None:
        """The members of ``channel`` by name; None if there is no such channel."""
        if not self._channel_exists(channel):
            return None
        rows = self._conn.execute(
            "SELECT user FROM members WHERE channel = ? ORDER BY user", (channel,)
        )
        return [str(row[0]) for row in rows]

    def is_member(self, channel: str, user: str) -> bool:
        return self._is_member(channel, user)

    def is_participant(self, user: str, conversation: str) -> bool:
        """Whether ``user`` may post to ``conversation``: a member of the channel, or one of
        the two users of the DM (the service's check before it serves DM history)."""
        pair = parse_dm(conversation)
        return user in pair if pair is not None else self._is_member(conversation, user)

    def last_seq(self, conversation: str) -> int:
        """The seq of the conversation's newest message (0: none, or not held here)."""
        return self._last_seq(conversation)

    def conversations_of(self, user: str) -> list[ConversationRef]:
        """The channels of this group ``user`` is a member of and the DMs this group lists for
        them, by conversation id."""
        rows = self._conn.execute(
            "SELECT u.conversation, u.peer, c.last_seq, COALESCE(r.seq, 0), u.joined_seq FROM"
            " (SELECT channel AS conversation, NULL AS peer, joined_seq FROM members"
            "  WHERE user = ?1"
            "  UNION ALL SELECT conversation, peer, NULL FROM user_conversations WHERE user = ?1) u"
            " LEFT JOIN conversations c ON c.conversation = u.conversation"
            " LEFT JOIN read_markers r ON r.user = ?1 AND r.conversation = u.conversation"
            " ORDER BY u.conversation",
            (user,),
        )
        return [ConversationRef(*row) for row in rows]

    def unread(self, user: str, conversation: str) -> int:
        """``last_seq - read_seq`` of ``user`` in ``conversation`` (as held by this group)."""
        return max(0, self._last_seq(conversation) - self._read_seq(user, conversation))

    def unread_counts(self, user: str) -> dict[str, int]:
        """Unread messages per conversation held here that ``user`` is in (zeros included)."""
        return {
            ref.conversation: ref.last_seq - ref.read_seq
            for ref in self.conversations_of(user)
            if ref.last_seq is not None
        }

    def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """One page of ``conversation``, ascending: the newest ``limit`` messages, or those just
        before seq ``before``, just after seq ``after``, or centred on seq ``around`` (at most
        one of the three). ``limit`` is clamped to 1..500. Seqs are dense (1..last), so the page
        is a seq range computed first and read with one range scan."""
        if sum(x is not None for x in (before, after, around)) > 1:
            raise ValueError("give at most one of before, after, around")
        limit = min(max(limit, 1), MAX_PAGE)
        last = self._last_seq(conversation)
        if before is not None:
            hi = min(before - 1, last)
            lo = max(1, hi - limit + 1)
        elif after is not None:
            lo = max(after + 1, 1)
            hi = min(last, lo + limit - 1)
        elif around is not None:
            centre = min(max(around, 1), max(last, 1))
            hi = min(last, max(centre - (limit - 1) // 2, 1) + limit - 1)
            lo = max(1, hi - limit + 1)
        else:
            hi, lo = last, max(1, last - limit + 1)
        return HistoryPage(self._range(conversation, lo, hi), lo <= 1, hi >= last)

    def since(self, cursors: Mapping[str, int], limit: int = MAX_PAGE) -> SyncPage:
        """Messages after ``cursors[conversation]`` (the last seq the client has) for every
        conversation named, in conversation order, at most ``limit`` (clamped to 1..500) in all.
        Conversations not held here are left out of the answer's cursors."""
        budget = min(max(limit, 1), MAX_PAGE)
        messages: list[Message] = []
        next_cursors: dict[str, int] = {}
        limited = False
        for conv in sorted(cursors):
            row = self._one("SELECT last_seq FROM conversations WHERE conversation = ?", (conv,))
            if row is None:
                continue
            last, cursor = int(row[0]), max(cursors[conv], 0)
            hi = min(last, cursor + budget)
            page = self._range(conv, cursor + 1, hi)
            messages.extend(page)
            budget -= len(page)
            next_cursors[conv] = max(cursor, hi)
            if hi < last:
                limited = True
        return SyncPage(messages, next_cursors, limited)

    def routes(self, user: str) -> list[Route]:
        """Where ``user``'s sessions are served, by session id."""
        rows = self._conn.execute(
            "SELECT user, session_id, gateway_node, ms FROM routes WHERE user = ?"
            " ORDER BY session_id",
            (user,),
        )
        return [Route(*row) for row in rows]

    def all_routes(self) -> list[Route]:
        """Every session route held here, by user then session id (the online sessions)."""
        rows = self._conn.execute(
            "SELECT user, session_id, gateway_node, ms FROM routes ORDER BY user, session_id"
        )
        return [Route(*row) for row in rows]

    def session_user(self, token_digest: str) -> str | None:
        """The user an open session authenticates, by its token's digest; None if there is no
        such session here (never opened, closed, or held by another group)."""
        row = self._one("SELECT user FROM sessions WHERE token_digest = ?", (token_digest,))
        return None if row is None else str(row[0])

    def outbox(self, limit: int = 100) -> list[FollowUp]:
        """The oldest follow-ups this group still owes other groups."""
        rows = self._conn.execute(
            "SELECT id, user, conversation, peer FROM outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [FollowUp(*row) for row in rows]

    def dump(self) -> dict[str, list[tuple[object, ...]]]:
        """Every row of every table in key order (see ``schema.canonical_dump``)."""
        return canonical_dump(self._conn)

    # ---- internals ---------------------------------------------------------------------------

    def _one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def _write(self, sql: str, params: tuple[object, ...]) -> bool:
        """Run a write; whether it changed a row."""
        return self._conn.execute(sql, params).rowcount > 0

    def _load_applied(self) -> int:
        (applied,) = self._conn.execute("SELECT applied_index FROM meta").fetchone()
        return int(applied)

    def _channel_exists(self, name: str) -> bool:
        return self._one("SELECT 1 FROM channels WHERE name = ?", (name,)) is not None

    def _is_member(self, channel: str, user: str) -> bool:
        sql = "SELECT 1 FROM members WHERE channel = ? AND user = ?"
        return self._one(sql, (channel, user)) is not None

    def _last_seq(self, conversation: str) -> int:
        row = self._one(
            "SELECT last_seq FROM conversations WHERE conversation = ?", (conversation,)
        )
        return 0 if row is None else int(row[0])

    def _read_seq(self, user: str, conversation: str) -> int:
        row = self._one(
            "SELECT seq FROM read_markers WHERE user = ? AND conversation = ?", (user, conversation)
        )
        return 0 if row is None else int(row[0])

    def _range(self, conversation: str, lo: int, hi: int) -> list[Message]:
        return read_messages(self._conn, conversation, lo, hi)

    def _channels(self, where: str, params: tuple[object, ...]) -> list[ChannelInfo]:
        return read_channels(self._conn, where, params)
