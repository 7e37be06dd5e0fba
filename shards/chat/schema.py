"""The chat state's SQLite tables: schema, whole-database copies (snapshots), row readers, the
records the queries return, and a canonical dump.

Everything a group holds lives in these tables (nothing in memory), so memory stays flat as
history grows and a snapshot is a copy of one database.

Tables (``WITHOUT ROWID`` where rows are small and always found by their key):

- ``meta(applied_index)`` — one row; the last applied log index, written in the same
  transaction as the effects of the entries up to it.
- ``users(name PK, display_name, password_hash, created_ms)``
- ``channels(name PK, creator, created_ms)``
- ``members(channel, user, joined_ms, joined_seq)`` PK (channel, user), index (user, channel);
  ``joined_seq`` is the channel's last seq when the user joined (what a session that missed the
  join pushes from).
- ``conversations(conversation PK, last_seq, hlc_ms, hlc_counter)`` — one row per channel (made
  at creation) and per DM this group holds (made by its first message): the last seq given out
  and the last stamp, which the next message's seq and stamp follow.
- ``messages(conversation, seq, sender, text, hlc_ms, hlc_counter, idempotency_key)``
  PK (conversation, seq). A rowid table: texts of up to 4 KiB are too large for ``WITHOUT ROWID``.
- ``dedup(sender, conversation, key, seq, ord)`` PK (sender, conversation, key), index (sender,
  ord); ``dedup_senders(sender PK, entered)`` — the idempotency window: ``ord`` is the log index
  that wrote the key, ``entered`` how many keys the sender ever entered (it keeps the newest
  ``min(entered, window)``; see ``ChatState``).
- ``read_markers(user, conversation, seq)`` PK (user, conversation) — moved forward by MarkRead
  and by the user's own new messages (no row: nothing read).
- ``routes(user, session_id, gateway_node, ms)`` PK (user, session_id).
- ``user_conversations(user, conversation, peer)`` PK (user, conversation) — the DMs a user is
  in: written for both participants by a DM's first message in the DM's group, and by the
  AddDmConversation follow-up in each participant's own group.
- ``sessions(token_digest PK, user, created_ms)`` — open login sessions, kept in the user's
  group: the SHA-256 of each bearer token (never the token) and the user it authenticates.
- ``outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, user, conversation, peer)`` — follow-up writes
  this group owes other groups (AddDmConversation), kept until acknowledged. AUTOINCREMENT so an
  id is never reused and a late acknowledgement cannot remove a newer follow-up.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from cluster.messages import SnapshotData
from cluster.statemachine import sqlite_restore, sqlite_snapshot_to
from shards.chat.commands import Hlc

_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS meta (applied_index INTEGER NOT NULL)",
    "INSERT INTO meta(applied_index) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta)",
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, display_name TEXT NOT NULL,"
    " password_hash TEXT NOT NULL, created_ms INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, creator TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS members (channel TEXT NOT NULL, user TEXT NOT NULL,"
    " joined_ms INTEGER NOT NULL, joined_seq INTEGER, PRIMARY KEY (channel, user))"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS members_by_user ON members(user, channel)",
    "CREATE TABLE IF NOT EXISTS conversations (conversation TEXT PRIMARY KEY,"
    " last_seq INTEGER NOT NULL, hlc_ms INTEGER NOT NULL, hlc_counter INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS messages (conversation TEXT NOT NULL, seq INTEGER NOT NULL,"
    " sender TEXT NOT NULL, text TEXT NOT NULL, hlc_ms INTEGER NOT NULL,"
    " hlc_counter INTEGER NOT NULL, idempotency_key TEXT NOT NULL,"
    " PRIMARY KEY (conversation, seq))",
    "CREATE TABLE IF NOT EXISTS dedup (sender TEXT NOT NULL, conversation TEXT NOT NULL,"
    " key TEXT NOT NULL, seq INTEGER NOT NULL, ord INTEGER NOT NULL,"
    " PRIMARY KEY (sender, conversation, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS dedup_age ON dedup(sender, ord)",
    "CREATE TABLE IF NOT EXISTS dedup_senders (sender TEXT PRIMARY KEY,"
    " entered INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS read_markers (user TEXT NOT NULL, conversation TEXT NOT NULL,"
    " seq INTEGER NOT NULL, PRIMARY KEY (user, conversation)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS routes (user TEXT NOT NULL, session_id TEXT NOT NULL,"
    " gateway_node INTEGER NOT NULL, ms INTEGER NOT NULL, PRIMARY KEY (user, session_id))"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS user_conversations (user TEXT NOT NULL,"
    " conversation TEXT NOT NULL, peer TEXT NOT NULL, PRIMARY KEY (user, conversation))"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sessions (token_digest TEXT PRIMARY KEY, user TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " user TEXT NOT NULL, conversation TEXT NOT NULL, peer TEXT NOT NULL)",
)

DUMP_ORDER: Final[dict[str, str]] = {
    "meta": "applied_index",
    "users": "name",
    "channels": "name",
    "members": "channel, user",
    "conversations": "conversation",
    "messages": "conversation, seq",
    "dedup": "sender, conversation, key",
    "dedup_senders": "sender",
    "read_markers": "user, conversation",
    "routes": "user, session_id",
    "user_conversations": "user, conversation",
    "sessions": "token_digest",
    "outbox": "id",
    "sqlite_sequence": "name",
}
"""Every table of the state (with ``sqlite_sequence``, which holds the outbox's next id) and
the key that orders its rows in :func:`canonical_dump`."""


MESSAGE_COLUMNS: Final = "conversation, seq, sender, text, hlc_ms, hlc_counter, idempotency_key"


def create_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing (idempotent: also run after a restore), and bring a database of
    an earlier version up to this one: ``members.joined_seq`` came later, NULL for the rows
    written before (their join point is unknown, which readers treat as "now")."""
    for statement in _DDL:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(members)")}
    if "joined_seq" not in columns:
        conn.execute("ALTER TABLE members ADD COLUMN joined_seq INTEGER")


def canonical_dump(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    """All rows of every table in key order: two replicas hold the same state exactly when their
    dumps are equal (used by the determinism and snapshot tests)."""
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return {
        table: [tuple(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
        for table, order in DUMP_ORDER.items()
        if table in present
    }


def copy_database(conn: sqlite3.Connection, path: Path) -> None:
    """A consistent copy of the database of ``conn`` in a new file at ``path`` (the backup API,
    while nothing else writes on this connection): a snapshot, which never passes through
    memory whole."""
    sqlite_snapshot_to(conn, path)


def restore_database(conn: sqlite3.Connection, data: SnapshotData, scratch: Path) -> None:
    """Replace the whole database of ``conn`` by the database file ``data`` holds (empty: a
    database with the empty schema), streamed through ``scratch``; the file stays in WAL mode."""
    sqlite_restore(conn, data, scratch, create_schema)
    create_schema(conn)


# ---------------------------------------------------------------------------------------------
# Records returned by the queries of ``ChatState``.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    display_name: str
    password_hash: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    name: str
    creator: str
    created_ms: int
    member_count: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Message:
    conversation: str
    seq: int
    sender: str
    text: str
    hlc: Hlc
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """A conversation ``user`` is in, as this group knows it. ``peer`` is the other participant
    of a DM (None for a channel). ``last_seq`` is None when the conversation lives in another
    group (a DM this group only knows from an AddDmConversation follow-up)."""

    conversation: str
    peer: str | None
    last_seq: int | None
    read_seq: int
    joined_seq: int | None = None
    """A channel's last seq when the user joined it (None: a DM, or a join written before this
    was recorded)."""


@dataclass(frozen=True, slots=True)
class Route:
    user: str
    session_id: str
    gateway_node: int
    ms: int


@dataclass(frozen=True, slots=True)
class FollowUp:
    """An outbox entry: propose ``AddDmConversation(user, conversation, peer)`` to ``user``'s
    group, then ``AckFollowUp(id)`` here. Safe to repeat: both commands are idempotent."""

    id: int
    user: str
    conversation: str
    peer: str


class HistoryPage(NamedTuple):
    """A page of one conversation in ascending seq order; unpacks as ``(messages,
    reached_oldest, reached_newest)``. ``reached_oldest``: nothing before the page (seq 1 is in
    it or the conversation is empty); ``reached_newest``: nothing after it."""

    messages: list[Message]
    reached_oldest: bool
    reached_newest: bool


class SyncPage(NamedTuple):
    """Messages after the given cursors, grouped by conversation (sorted) and ascending seq.
    ``cursors``: the cursor to ask from next, per conversation asked about that exists here.
    ``limited``: more messages remain after ``cursors``."""

    messages: list[Message]
    cursors: dict[str, int]
    limited: bool


def read_messages(conn: sqlite3.Connection, conversation: str, lo: int, hi: int) -> list[Message]:
    """Messages ``lo..hi`` of ``conversation`` in seq order (one range scan of the key)."""
    if lo > hi:
        return []
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages"
        " WHERE conversation = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (conversation, lo, hi),
    )
    return [Message(c, s, snd, txt, Hlc(hm, hc), key) for c, s, snd, txt, hm, hc, key in rows]


POST_CONTEXT_CHUNK: Final = 64
"""Posts looked up per statement by :func:`read_post_contexts` (so at most this many
statement texts, each prepared once and kept in the connection's statement cache)."""


class PostContext(NamedTuple):
    """What the database says about one PostMessage before a run of posts is applied: the
    conversation's row (``last_seq`` None: no row), whether the sender is a channel member, the
    sender's dedup entry for the key with its message's stamp (``dup_seq`` None: none), and how
    many keys the sender ever entered (None: never). ``position``: the post's place in its
    lookup statement (rows are sorted by it)."""

    position: int
    last_seq: int | None
    hlc_ms: int | None
    hlc_counter: int | None
    member: int
    dup_seq: int | None
    dup_ord: int | None
    dup_hlc_ms: int | None
    dup_hlc_counter: int | None
    entered: int | None


def read_post_contexts(
    conn: sqlite3.Connection, posts: Sequence[tuple[str, str, str]]
) -> list[PostContext]:
    """One :class:`PostContext` per ``(conversation, sender, idempotency_key)``, in order.

    Why one statement for many posts: sends are most of the log and every replica applies
    every one, so the per-statement cost of SQLite and the ``sqlite3`` module is paid once per
    run of posts instead of once per post; each row is still five primary-key lookups."""
    out: list[PostContext] = []
    for lo in range(0, len(posts), POST_CONTEXT_CHUNK):
        chunk = posts[lo : lo + POST_CONTEXT_CHUNK]
        params = [value for post in chunk for value in post]
        rows = conn.execute(_post_context_sql(len(chunk)), params).fetchall()
        rows.sort()  # already in order with SQLite's plan (linear then); not promised by SQL
        out.extend(map(PostContext._make, rows))
    return out


@functools.cache
def _post_context_sql(count: int) -> str:
    values = ",".join(f"({i},?,?,?)" for i in range(count))
    return (
        f"WITH p(i, conv, sender, key) AS (VALUES {values})"
        " SELECT p.i, c.last_seq, c.hlc_ms, c.hlc_counter,"
        " EXISTS (SELECT 1 FROM members WHERE channel = p.conv AND user = p.sender),"
        " d.seq, d.ord, m.hlc_ms, m.hlc_counter, s.entered"
        " FROM p LEFT JOIN conversations c ON c.conversation = p.conv"
        " LEFT JOIN dedup d ON d.sender = p.sender AND d.conversation = p.conv AND d.key = p.key"
        " LEFT JOIN messages m ON m.conversation = d.conversation AND m.seq = d.seq"
        " LEFT JOIN dedup_senders s ON s.sender = p.sender"
    )


def write_posts(
    conn: sqlite3.Connection,
    *,
    evictions: Sequence[tuple[str, int]],
    messages: Sequence[tuple[str, int, str, str, int, int, str]],
    keys: Sequence[tuple[str, str, str, int, int]],
    updated: Sequence[tuple[int, int, int, str]],
    created: Sequence[tuple[str, int, int, int]],
    senders: Sequence[tuple[str, int]],
    read: Sequence[tuple[str, str, int]],
) -> None:
    """The writes of a run of posts, one statement per table: ``evictions`` (sender, n) deletes
    the sender's ``n`` oldest dedup keys by ``ord`` — first, since a key evicted and entered
    again in the same run is among ``keys``; ``messages`` rows in :data:`MESSAGE_COLUMNS`
    order; ``keys`` dedup rows (sender, conversation, key, seq, ord); ``updated`` conversations
    (last_seq, hlc_ms, hlc_counter, conversation); ``created`` conversations rows (a DM's
    first message); ``senders`` (sender, entered); ``read`` (user, conversation, seq) moves
    each sender's read marker forward to their newest message of the run (never back: a
    marker already there or beyond stays)."""
    if evictions:
        conn.executemany(
            "DELETE FROM dedup WHERE sender = ?1 AND ord IN"
            " (SELECT ord FROM dedup WHERE sender = ?1 ORDER BY ord LIMIT ?2)",
            evictions,
        )
    if messages:
        conn.executemany(
            f"INSERT INTO messages({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", messages
        )
    if keys:
        conn.executemany(
            "INSERT INTO dedup(sender, conversation, key, seq, ord) VALUES (?, ?, ?, ?, ?)", keys
        )
    if updated:
        conn.executemany(
            "UPDATE conversations SET last_seq = ?, hlc_ms = ?, hlc_counter = ?"
            " WHERE conversation = ?",
            updated,
        )
    if created:
        conn.executemany(
            "INSERT INTO conversations(conversation, last_seq, hlc_ms, hlc_counter)"
            " VALUES (?, ?, ?, ?)",
            created,
        )
    if senders:
        conn.executemany(
            "INSERT INTO dedup_senders(sender, entered) VALUES (?, ?)"
            " ON CONFLICT(sender) DO UPDATE SET entered = excluded.entered",
            senders,
        )
    if read:
        conn.executemany(
            "INSERT INTO read_markers(user, conversation, seq) VALUES (?, ?, ?)"
            " ON CONFLICT(user, conversation) DO UPDATE SET seq = excluded.seq"
            " WHERE excluded.seq > read_markers.seq",
            read,
        )


def read_channels(
    conn: sqlite3.Connection, where: str, params: tuple[object, ...]
) -> list[ChannelInfo]:
    """Channels (filtered by ``where`` on alias ``c``) by name, with member count and last seq."""
    rows = conn.execute(
        "SELECT c.name, c.creator, c.created_ms,"
        " (SELECT COUNT(*) FROM members m WHERE m.channel = c.name),"
        " COALESCE(v.last_seq, 0)"
        f" FROM channels c LEFT JOIN conversations v ON v.conversation = c.name {where}"
        " ORDER BY c.name",
        params,
    )
    return [ChannelInfo(*row) for row in rows]
