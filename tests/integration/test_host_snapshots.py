"""Local snapshots are copied on a worker thread: the node keeps committing while a copy is
stuck, compacts once it finishes, and ``stop`` waits for it.

One node hosting a one-voter group (no peers, so no network), with a log state machine whose
snapshot job waits on a gate the test controls: a copy that ran on the loop would hold the
loop, and the proposals below would time out.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from cluster.host import NodeHost
from cluster.statemachine import LogStateMachine, SqliteSnapshotJob
from cluster.storage import LogStore
from cluster.transport import GrpcTransport
from cluster.types import GroupId, NodeId
from tests.integration.test_host import eventually

ME = NodeId(1)
G = GroupId(1)
COMPACT_AFTER = 5
DEADLINE = 10.0


class _GatedJob:
    def __init__(self, job: SqliteSnapshotJob, gate: threading.Event) -> None:
        self._job = job
        self._gate = gate

    def write(self, path: Path) -> None:
        if not self._gate.wait(DEADLINE):
            raise TimeoutError("the test never opened the gate")
        self._job.write(path)

    def close(self) -> None:
        self._job.close()


class GatedLog(LogStateMachine):
    """A log state machine whose snapshot copies wait for ``gate``."""

    def __init__(self, path: Path, gate: threading.Event) -> None:
        super().__init__(path)
        self.gate = gate
        self.pinned: list[int] = []

    def snapshot_job(self) -> _GatedJob:  # type: ignore[override]
        self.pinned.append(self.applied_index())
        return _GatedJob(super().snapshot_job(), self.gate)


async def _start(root: Path, sm: LogStateMachine) -> NodeHost:
    store = LogStore.open(root / "raft", node_id=ME, cluster_id="test")
    host = NodeHost(
        ME, store, GrpcTransport(ME, {}), tick_interval=0.02, compact_after=COMPACT_AFTER
    )
    host.add_group(G, (ME,), sm)
    await host.start()
    host.campaign(G)
    await eventually(lambda: host.group_status(G).leader == ME, "the node to lead its group")
    return host


async def _pinned(root: Path, gate: threading.Event) -> tuple[NodeHost, GatedLog]:
    """A node that committed enough to compact, with the snapshot copy stuck at ``gate``."""
    sm = GatedLog(root / "sm.sqlite", gate)
    host = await _start(root, sm)
    for i in range(COMPACT_AFTER + 1):
        await host.propose(G, f"before-{i}".encode(), timeout=DEADLINE)
    await eventually(lambda: sm.pinned, "a snapshot to be pinned")
    return host, sm


def test_a_stuck_snapshot_copy_does_not_stop_commits(tmp_path: Path) -> None:
    async def body() -> None:
        gate = threading.Event()
        host, sm = await _pinned(tmp_path, gate)
        try:
            # The copy is stuck at the gate; commits go on, one at a time (a turn each).
            for i in range(3 * COMPACT_AFTER):
                await host.propose(G, f"during-{i}".encode(), timeout=2.0)
            assert host.group_status(G).snapshot_index == 0, "compacted before the copy ended"
            assert len(sm.pinned) == 1, "a second copy started while one was running"
            gate.set()
            await eventually(lambda: host.group_status(G).snapshot_index > 0, "the compaction")
            assert host.group_status(G).snapshot_index == sm.pinned[0]
            records = sm.read(1, 100)
        finally:
            await host.stop()
            sm.close()
        assert len(records) == 4 * COMPACT_AFTER + 1

        # The stored snapshot is the state at the pinned index: a node whose state machine
        # was lost restores it, replays the log after it, and holds every record again.
        (tmp_path / "sm.sqlite").unlink()
        fresh = LogStateMachine(tmp_path / "sm.sqlite")
        host = await _start(tmp_path, fresh)
        try:
            assert fresh.restores == 1
            await eventually(lambda: fresh.count() == len(records), "the replay after the snapshot")
            assert fresh.read(1, 100) == records
        finally:
            await host.stop()
            fresh.close()

    asyncio.run(body())


def test_stop_waits_for_a_running_copy_and_leaves_no_staged_file(tmp_path: Path) -> None:
    async def body() -> None:
        gate = threading.Event()
        host, sm = await _pinned(tmp_path, gate)
        try:
            stopping = asyncio.ensure_future(host.stop())
            done, _ = await asyncio.wait([stopping], timeout=0.3)
            assert not done, "stop did not wait for the copy on the worker thread"
            gate.set()
            await asyncio.wait_for(stopping, DEADLINE)
        finally:
            gate.set()
            await host.stop()
            sm.close()
        assert not list((tmp_path / "raft").glob("*.tmp")), "a staged file was left behind"

    asyncio.run(body())
