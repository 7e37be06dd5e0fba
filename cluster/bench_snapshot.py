"""``python -m cluster bench snapshot``: how long a local snapshot of a large state stalls a node.

One node hosts one single-voter group whose log state machine holds ``--mb`` megabytes. A
client commits one small record at a time while a compaction is due; a probe task measures how
late the event loop wakes it. The same is done twice in this process, on the same data:

- **inline**: the state machine hides ``snapshot_job``, so the host copies the database inside
  a loop turn (how every snapshot was taken before ``cluster.snapshotter``);
- **background**: the host pins the state and copies it on a worker thread.

Printed per mode: the worst commit latency and the worst loop lag while the snapshot was taken,
and how long it took until the group compacted. Figures only, never a pass/fail.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.host import NodeHost
from cluster.messages import Entry, Snapshot
from cluster.statemachine import LogStateMachine
from cluster.storage import LogStore
from cluster.transport import GrpcTransport
from cluster.types import GroupId, NodeId

ME = NodeId(1)
GROUP = GroupId(1)
RECORD = 64 * 1024
BATCH = 32


class _Inline:
    """A log state machine without ``snapshot_job``: the host snapshots it inside a turn."""

    def __init__(self, sm: LogStateMachine) -> None:
        self._sm = sm

    def applied_index(self) -> int:
        return self._sm.applied_index()

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        return self._sm.apply(entries)

    def restore(self, snapshot: Snapshot) -> None:
        self._sm.restore(snapshot)

    def snapshot_to(self, path: Path) -> None:
        self._sm.snapshot_to(path)


@dataclass(frozen=True, slots=True)
class SnapshotStall:
    mode: str
    megabytes: float
    worst_commit_ms: float
    worst_lag_ms: float
    commits: int
    compacted_after_s: float


async def _until(check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's node did not get there in time")
        await asyncio.sleep(0.01)  # pacing the polling


async def _measure(root: Path, mb: int, inline: bool) -> SnapshotStall:
    store = LogStore.open(root / "raft", node_id=ME, cluster_id="bench", fsync=False)
    sm = LogStateMachine(root / "sm.sqlite")
    records = max(1, mb * 1024 * 1024 // RECORD)
    host = NodeHost(ME, store, GrpcTransport(ME, {}), tick_interval=0.05, compact_after=records + 2)
    host.add_group(GROUP, (ME,), _Inline(sm) if inline else sm)
    await host.start()
    try:
        host.campaign(GROUP)
        await _until(lambda: host.group_status(GROUP).leader == ME, 10)
        payload = b"x" * RECORD
        for _ in range(0, records, BATCH):
            await host.propose_many(GROUP, [payload] * BATCH, timeout=60)
        lag = 0.0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal lag
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                due = loop.time() + 0.005
                await asyncio.sleep(0.005)  # the probe measures how late this wakes up
                lag = max(lag, loop.time() - due)

        prober = asyncio.create_task(probe())
        began = time.perf_counter()
        worst = 0.0
        commits = 0
        while host.group_status(GROUP).snapshot_index == 0:
            t0 = time.perf_counter()
            await host.propose(GROUP, b"small", timeout=60)
            worst = max(worst, time.perf_counter() - t0)
            commits += 1
        compacted = time.perf_counter() - began
        stop.set()
        await prober
        return SnapshotStall(
            "inline" if inline else "background",
            round(records * RECORD / 2**20, 1),
            round(worst * 1000, 1),
            round(lag * 1000, 1),
            commits,
            round(compacted, 2),
        )
    finally:
        await host.stop()
        sm.close()


def bench_snapshot(mb: int, data_dir: str | None = None) -> list[SnapshotStall]:
    rows = []
    for inline in (True, False):
        with tempfile.TemporaryDirectory(prefix="raftchat-snapbench-", dir=data_dir) as tmp:
            rows.append(asyncio.run(_measure(Path(tmp), mb, inline)))
    print(f"snapshot: one node, one group, a {mb} MiB log state machine, fsync off")
    print(f"{'mode':<11} {'worst commit':>12} {'worst lag':>10} {'commits':>8} {'compacted':>10}")
    for r in rows:
        print(
            f"{r.mode:<11} {r.worst_commit_ms:>10.1f}ms {r.worst_lag_ms:>8.1f}ms "
            f"{r.commits:>8} {r.compacted_after_s:>9.2f}s"
        )
    return rows
