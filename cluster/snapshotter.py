"""Local snapshots copied on a worker thread, so a large state never stalls the node's loop.

A snapshot used to be taken inside a loop turn: the state machine copied its whole database,
then the store copied that file into a staged snapshot file. With a few hundred megabytes of
chat history that is seconds during which no group of the node ticks, sends a heartbeat or
answers a vote, and the node's leaderships are lost — once every ``compact_after`` entries of
every group, growing with history.

Now the loop only pins the state (``BackgroundSnapshots.snapshot_job``: an SQLite read
transaction on a second connection, milliseconds) and opens the staged file
(``LogStore.start_snapshot_copy``). A worker thread writes the pinned state to a scratch file and
copies it into the staged file. The finished copy is handed back to the loop, which compacts the
group at its next turn, exactly as before (``NodeDriver.compact``). What the thread touches is
its own: the pinned connection, the scratch file and the staged file. The store's books, the
replica and the driver are only touched on the loop.

A copy is never cancelled halfway: the thread cannot be interrupted and owns its file
descriptors, so ``close`` waits for running copies and then drops what no one compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cluster.messages import Snapshot, SnapshotMeta
from cluster.snapshotfile import SnapshotFile, StagedCopy
from cluster.statemachine import BackgroundSnapshots, FileSnapshots, GroupStateMachine, SnapshotJob
from cluster.storage import LogStore
from cluster.types import GroupId

log = logging.getLogger("cluster.snapshotter")


def take_snapshot(
    store: LogStore, group: GroupId, sm: GroupStateMachine, meta: SnapshotMeta
) -> Snapshot:
    """``sm``'s snapshot at ``meta.index`` (its applied index), staged in ``store``: the
    returned snapshot is a view of a file whatever kind of state machine ``sm`` is, ready for
    ``NodeDriver.compact``. A file-writing state machine writes into a scratch file of the
    store's directory, which the store copies and this deletes."""
    if not isinstance(sm, FileSnapshots):
        return store.stage_snapshot(group, meta, sm.snapshot())  # small by design
    scratch = store.scratch_path(group)
    try:
        sm.snapshot_to(scratch)
        written = SnapshotFile.open(scratch)
        try:
            return store.stage_snapshot(group, meta, written)
        finally:
            written.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


class TakenSnapshot:
    """A copy finished on the worker thread, waiting for the loop to compact with it."""

    __slots__ = ("_copy", "_written", "group")

    def __init__(self, group: GroupId, copy: StagedCopy, written: SnapshotFile) -> None:
        self.group = group
        self._copy = copy
        self._written = written

    @property
    def meta(self) -> SnapshotMeta:
        return self._copy.staged.meta

    def snapshot(self) -> Snapshot:
        """The staged snapshot, for ``NodeDriver.compact`` (on the loop)."""
        return self._copy.complete(self._written)

    def discard(self) -> None:
        """Not needed after all (a newer snapshot got there first): drop the staged file."""
        self._written.close()
        self._copy.abort()


def _write(job: SnapshotJob, copy: StagedCopy, scratch: Path) -> SnapshotFile:
    """The worker thread's part: the pinned state into ``scratch``, then into the staged file."""
    try:
        job.write(scratch)
        data = SnapshotFile.open(scratch)
        try:
            return copy.write(data)
        finally:
            data.close()
    finally:
        job.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


class BackgroundSnapshotter:
    """At most one copy per group at a time; finished copies wait in ``take_done``."""

    def __init__(self, store: LogStore, wake: Callable[[], None]) -> None:
        self._store = store
        self._wake = wake
        self._running: dict[GroupId, asyncio.Task[None]] = {}
        self._done: list[TakenSnapshot] = []
        self.failures = 0

    def busy(self, group: GroupId) -> bool:
        return group in self._running

    def start(self, group: GroupId, sm: BackgroundSnapshots, meta: SnapshotMeta) -> None:
        """On the loop, between applies: pin ``sm`` at ``meta.index`` (its applied index) and
        start copying it on a worker thread."""
        if group in self._running:
            raise RuntimeError(f"group {group}: a snapshot is already being taken")
        job = sm.snapshot_job()
        try:
            copy = self._store.start_snapshot_copy(group, meta)
            scratch = self._store.scratch_path(group)
        except BaseException:
            job.close()
            raise
        self._running[group] = asyncio.create_task(self._run(group, job, copy, scratch))

    async def _run(self, group: GroupId, job: SnapshotJob, copy: StagedCopy, scratch: Path) -> None:
        try:
            written = await asyncio.to_thread(_write, job, copy, scratch)
        except Exception:
            # The state machine and the log are untouched: the next apply tries again.
            self.failures += 1
            log.exception("group %s: taking a snapshot failed", group)
            copy.abort()
        else:
            self._done.append(TakenSnapshot(group, copy, written))
            self._wake()
        finally:
            del self._running[group]

    def take_done(self) -> list[TakenSnapshot]:
        """The copies finished since the last call (on the loop)."""
        done, self._done = self._done, []
        return done

    async def close(self) -> None:
        """Wait for the copies still running, then drop every copy no one compacted."""
        while self._running:
            with contextlib.suppress(BaseException):
                await asyncio.wait(list(self._running.values()))
        for taken in self.take_done():
            taken.discard()
