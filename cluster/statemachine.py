"""What a Raft group applies its committed entries to, and the simplest useful implementation.

``GroupStateMachine`` is the contract between the node host (``cluster.host``) and one group's
application state. The host hands it committed entries in log order, exactly once per index as
far as the state machine's own ``applied_index`` says, and routes each entry's result back to the
``propose()`` call that created it. It comes in two kinds, told apart by how a snapshot is
taken: ``FileSnapshots`` write it to a file the host names (SQLite states, which grow with
history: their snapshot never exists in memory), ``BytesSnapshots`` return it as bytes (states
small by design, such as discovery's cluster map). Either way the host keeps and sends a file,
and ``restore`` is handed a ``Snapshot`` whose content is read a slice at a time.

``LogStateMachine`` is a replicated append-only log of opaque records kept in SQLite. It is what
the shard node runs until the chat state machine exists, and what the host's tests compare across
replicas: every replica that applied the same prefix holds byte-identical records.

Why ``synchronous=NORMAL`` is safe here: in WAL mode it makes every transaction atomic but not
durable at commit (the WAL is fsynced at checkpoints). After a power loss the database may lose
its newest transactions, never half of one, so ``applied_index`` and the records it covers always
agree. The Raft log is the durable source of truth: the host restarts the replica at the state
machine's own ``applied_index`` and the committed entries after it are applied again. (If a local
snapshot moved the log's start past what the state machine still holds, the host restores the
state machine from that snapshot first.)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeAlias, runtime_checkable

from cluster.messages import Entry, EntryKind, Snapshot, SnapshotData
from cluster.snapshot import iter_chunks

_SQLITE_HEADER_WRITE_VERSION = 18
"""Bytes 18 and 19 of an SQLite file say rollback journal (1) or WAL (2); see ``sqlite_restore``."""


class StateMachineBase(Protocol):
    """What every group state machine does; see ``GroupStateMachine`` for the two ways of
    taking a snapshot. Called only from the host's loop."""

    def applied_index(self) -> int:
        """The last log index whose effects this state machine holds (0 when empty). Durable
        together with those effects: after a restart the host resumes applying right after it."""
        ...

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        """Apply committed ``entries`` (consecutive, in order) and return one result per entry:
        ``None`` for ``EntryKind.NOOP``. Must be deterministic (every replica computes the same
        results from the same entries) and must persist ``applied_index`` atomically with the
        effects. Entries at or below ``applied_index`` may be handed over again after a crash
        and must not be applied twice."""
        ...

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole state by the one ``snapshot.content`` holds (empty content: the
        state before any entry); afterwards ``applied_index()`` is ``snapshot.meta.index``.
        The content is usually a view of a file as large as the state: read it a slice at a
        time (``cluster.snapshot.iter_chunks``), unless the state is small by design
        (``snapshot.data`` reads it whole)."""
        ...


@runtime_checkable
class FileSnapshots(StateMachineBase, Protocol):
    """A state machine whose state lives on disk and may grow without bound (SQLite): its
    snapshot is written to a file, never built in memory."""

    def snapshot_to(self, path: Path) -> None:
        """Write a consistent copy of the whole state at ``applied_index()`` into a new file at
        ``path`` (the caller's: it copies the file into its store, then deletes it). The bytes
        of that file are what ``restore`` is later handed, on this node or another."""
        ...


class BytesSnapshots(StateMachineBase, Protocol):
    """A state machine whose state is small by design (discovery's cluster map)."""

    def snapshot(self) -> bytes:
        """A consistent copy of the whole state at ``applied_index()``, as opaque bytes. It is
        built in memory (the host writes it to a file at once): only for small states."""
        ...


@runtime_checkable
class DeferredCommit(Protocol):
    """A state machine that may leave what ``apply`` did uncommitted across calls (one storage
    transaction for many rounds) until ``flush()``. The host flushes it within
    ``cluster.host.FLUSH_INTERVAL`` of an apply; the state machine flushes itself before a
    snapshot, a restore and closing. Durability is not lost: the log holds every applied entry,
    and ``applied_index()`` is committed with the effects it covers."""

    def flush(self) -> None: ...


GroupStateMachine: TypeAlias = FileSnapshots | BytesSnapshots
"""The contract between the node host and one group's application state: one of the two."""


class SnapshotJob(Protocol):
    """A snapshot pinned at one applied index, to be written out on another thread."""

    def write(self, path: Path) -> None:
        """Write the pinned state into a new file at ``path``, as ``snapshot_to`` would have
        at the moment the job was made. Runs on a worker thread; called at most once."""
        ...

    def close(self) -> None:
        """Release the pinned state (after ``write``, or instead of it). Idempotent."""
        ...


@runtime_checkable
class BackgroundSnapshots(Protocol):
    """A ``FileSnapshots`` state machine that can take its snapshot off the host's loop.

    Why: ``snapshot_to`` copies the whole state while the loop waits. A database of a few
    hundred megabytes takes seconds, during which every group of the node (heartbeats
    included) stands still and the node's leaderships are lost. Pinning the state is cheap
    (an SQLite read transaction in WAL mode); copying it can then run on a thread while
    ``apply`` goes on, because later writes do not disturb a pinned read."""

    def snapshot_job(self) -> SnapshotJob:
        """Pin the state at ``applied_index()`` now (called on the loop, between applies) and
        return the job that writes it out."""
        ...


class SqliteSnapshotJob:
    """A read transaction on a second connection to an SQLite database in WAL mode, opened
    on the loop, whose consistent view the backup API copies on a worker thread."""

    def __init__(self, db_path: Path, pin_query: str) -> None:
        """Open the connection and start the read transaction with ``pin_query`` (the view is
        fixed by the first read, not by BEGIN); ``pinned`` is its first column."""
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            db_path, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute("BEGIN")
            row = self._conn.execute(pin_query).fetchone()
        except BaseException:
            self.close()
            raise
        self.pinned: object = row[0] if row is not None else None

    def write(self, path: Path) -> None:
        if self._conn is None:
            raise RuntimeError("the snapshot job is closed")
        try:
            sqlite_snapshot_to(self._conn, path)
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def pin_sqlite_snapshot(db_path: Path, applied: int) -> SqliteSnapshotJob:
    """A ``SqliteSnapshotJob`` of a database whose one-row ``meta(applied_index)`` table is
    committed together with the effects: the pinned view must be at ``applied`` (the caller
    committed everything it applied), else RuntimeError."""
    job = SqliteSnapshotJob(db_path, "SELECT applied_index FROM meta")
    if job.pinned != applied:
        job.close()
        raise RuntimeError(f"{db_path}: snapshot pinned at {job.pinned}, applied is {applied}")
    return job


def sqlite_snapshot_to(conn: sqlite3.Connection, path: Path) -> None:
    """A consistent copy of ``conn``'s database in a new file at ``path``, made with the backup
    API (pages go through SQLite's page cache, never the whole database through Python; nothing
    else may write on ``conn`` meanwhile, which the host's single loop guarantees). The copy is
    switched to rollback-journal mode, so it is one self-contained file with no ``-wal``."""
    dst = sqlite3.connect(path, isolation_level=None)
    try:
        dst.execute("PRAGMA synchronous=OFF")  # the store fsyncs its own copy of the file
        conn.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()


def sqlite_restore(
    conn: sqlite3.Connection,
    data: SnapshotData,
    scratch: Path,
    create_schema: Callable[[sqlite3.Connection], None],
) -> None:
    """Replace ``conn``'s whole database by the database file ``data`` holds (empty: a
    database with just ``create_schema``'s tables), leaving it in WAL mode. ``data`` is
    written a chunk at a time to ``scratch`` (deleted afterwards), which is opened read-only and
    copied into ``conn`` with the backup API: memory stays one chunk whatever the size.

    A file whose header says WAL is marked rollback first (bytes 18-19): opened without its
    ``-wal`` it is complete, but SQLite would look for one."""
    if len(data) == 0:
        src = sqlite3.connect(":memory:", isolation_level=None)
        create_schema(src)
    else:
        with open(scratch, "wb") as f:
            for chunk in iter_chunks(data):
                f.write(chunk)
            here = _SQLITE_HEADER_WRITE_VERSION
            if data[here : here + 2] == b"\x02\x02":
                f.seek(here)
                f.write(b"\x01\x01")
        src = sqlite3.connect(
            f"{scratch.resolve().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None
        )
    try:
        src.backup(conn)
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    conn.execute("PRAGMA journal_mode=WAL")


class LogStateMachine:
    """A replicated append-only log of records in one SQLite database (WAL mode).

    Each NORMAL entry becomes one record; ``apply`` returns the record's position (1-based count
    of records), NOOP entries return ``None``. ``read(from_pos, limit)`` pages through records.

    Schema: ``records(pos INTEGER PRIMARY KEY, idx UNIQUE, term, data)`` and a one-row
    ``meta(applied_index)``. ``pos`` (not the Raft index) is the key because readers page by
    position and no-op entries leave gaps in the Raft indexes; ``idx`` stays unique so a
    replayed entry is recognised.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()
        self._applied, self._count = self._load_marks()
        self.restores = 0
        """How many snapshots were restored into this state machine (for tests and status)."""

    # ---- GroupStateMachine -------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        results: list[object | None] = []
        if not entries:
            return results
        conn = self._conn
        count = self._count
        conn.execute("BEGIN IMMEDIATE")
        try:
            for entry in entries:
                if entry.index <= self._applied:
                    results.append(self._position_of(entry.index))  # replay after a crash
                elif entry.kind is EntryKind.NOOP:
                    results.append(None)
                else:
                    count += 1
                    conn.execute(
                        "INSERT INTO records(pos, idx, term, data) VALUES (?, ?, ?, ?)",
                        (count, entry.index, entry.term, entry.data),
                    )
                    results.append(count)
            applied = max(self._applied, entries[-1].index)
            conn.execute("UPDATE meta SET applied_index = ?", (applied,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._applied, self._count = applied, count
        return results

    def snapshot_to(self, path: Path) -> None:
        """The database copied to ``path`` with the backup API (see ``sqlite_snapshot_to``)."""
        sqlite_snapshot_to(self._conn, path)

    def snapshot_job(self) -> SqliteSnapshotJob:
        """``BackgroundSnapshots``: every apply is committed when it returns, so a new read
        transaction sees exactly ``applied_index()``."""
        return pin_sqlite_snapshot(self._path, self._applied)

    def restore(self, snapshot: Snapshot) -> None:
        scratch = self._path.with_name(self._path.name + ".restore")
        sqlite_restore(self._conn, snapshot.content, scratch, _create_schema)
        self._create_schema()
        self._conn.execute("UPDATE meta SET applied_index = ?", (snapshot.meta.index,))
        self._applied, self._count = self._load_marks()
        self.restores += 1

    # ---- reading -----------------------------------------------------------------------------

    def read(self, from_pos: int, limit: int) -> list[bytes]:
        """Up to ``limit`` records starting at position ``from_pos`` (1-based)."""
        rows = self._conn.execute(
            "SELECT data FROM records WHERE pos >= ? ORDER BY pos LIMIT ?", (from_pos, limit)
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def count(self) -> int:
        """Records held (NOOP entries make none)."""
        return self._count

    def close(self) -> None:
        """Close the database; the host does not own state machines, their creator closes them."""
        self._conn.close()

    # ---- internals ---------------------------------------------------------------------------

    def _create_schema(self) -> None:
        _create_schema(self._conn)

    def _load_marks(self) -> tuple[int, int]:
        (applied,) = self._conn.execute("SELECT applied_index FROM meta").fetchone()
        (count,) = self._conn.execute("SELECT COALESCE(MAX(pos), 0) FROM records").fetchone()
        return int(applied), int(count)

    def _position_of(self, index: int) -> int | None:
        row = self._conn.execute("SELECT pos FROM records WHERE idx = ?", (index,)).fetchone()
        return None if row is None else int(row[0])


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS records ("
        " pos INTEGER PRIMARY KEY, idx INTEGER NOT NULL UNIQUE,"
        " term INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS meta (applied_index INTEGER NOT NULL)")
    conn.execute("INSERT INTO meta(applied_index) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta)")
