"""``python -m cluster bench core``: how fast the core commits with real storage on disk.

Three replicas of one group live in this process, each with its own ``LogStore`` in its own
directory and its own ``NodeDriver``; messages are handed over in memory (no codec, no network:
the cluster benchmark of the node host measures those). The leader keeps a window of proposals
in flight, so every loop turn persists a batch per replica with ONE fsync each — the group commit
the real host relies on. The same run with fsync off is printed next to it as the baseline.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.config import Config
from cluster.driver import NodeDriver
from cluster.messages import Entry, Snapshot
from cluster.raft import Replica
from cluster.ready import Role
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId

GROUP = GroupId(1)


class _CountingStateMachine:
    """Applies by counting: the benchmark measures Raft and the log, not an application."""

    def __init__(self) -> None:
        self.applied = 0

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        self.applied += len(entries)

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        pass


@dataclass(frozen=True, slots=True)
class CoreBenchResult:
    fsync: bool
    seconds: float
    commits: int
    fsyncs: int

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds

    @property
    def fsyncs_per_s(self) -> float:
        return self.fsyncs / self.seconds

    @property
    def entries_per_fsync(self) -> float:
        # Every replica persists every entry, so entries written = 3 x commits.
        return 3 * self.commits / self.fsyncs if self.fsyncs else 0.0


def run_core(
    *, fsync: bool, seconds: float, size: int, window: int, data_dir: Path
) -> CoreBenchResult:
    ids = (NodeId(1), NodeId(2), NodeId(3))
    stores = [
        LogStore.open(data_dir / f"node{n}", node_id=n, cluster_id="bench", fsync=fsync)
        for n in ids
    ]
    drivers: dict[NodeId, NodeDriver] = {}
    for n, store in zip(ids, stores, strict=True):
        store.ensure_group(GROUP, ids)
        driver = NodeDriver(n, store, _CountingStateMachine())
        config = Config(node_id=n, group=GROUP, voters=ids, max_inflight_msgs=64)
        driver.add(Replica(config, random.Random(n), store.load(GROUP)))
        drivers[n] = driver
    leader = drivers[ids[0]].replicas[GROUP]
    leader.campaign()
    _turn(drivers)
    while leader.role is not Role.LEADER:
        if not _turn(drivers):
            raise RuntimeError("the benchmark group failed to elect node 1")
    payload = bytes(size)
    fsyncs_before = sum(s.stats.fsyncs for s in stores)
    commit_before = leader.commit_index
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        room = window - (leader.last_index - leader.commit_index)
        if room > 0:
            leader.propose_batch([payload] * room)
        _turn(drivers)
    elapsed = time.perf_counter() - start
    result = CoreBenchResult(
        fsync=fsync,
        seconds=elapsed,
        commits=leader.commit_index - commit_before,
        fsyncs=sum(s.stats.fsyncs for s in stores) - fsyncs_before,
    )
    for store in stores:
        store.close()
    return result


def _turn(drivers: dict[NodeId, NodeDriver]) -> bool:
    """One loop turn of every node: persist + sync + apply, then deliver what they sent."""
    messages = []
    for driver in drivers.values():
        messages.extend(driver.process_ready().messages)
    for msg in messages:
        drivers[msg.to].step(msg)
    return bool(messages)


def bench_core(*, seconds: float, size: int, windows: Sequence[int], data_dir: str | None) -> None:
    """Run every window with fsync on and off and print one table (figures, never a verdict)."""
    print(f"core: 3 replicas of 1 group in one process, {size} B proposals, {seconds:g} s per row")
    print(
        f"{'window':>7} {'fsync':>6} {'commits/s':>11} {'fsyncs/s':>10} {'entries/fsync':>14}"
        f" {'on/off':>7}"
    )
    for window in windows:
        rows: list[CoreBenchResult] = []
        for fsync in (False, True):
            with tempfile.TemporaryDirectory(dir=data_dir, prefix="raftchat-bench-") as tmp:
                rows.append(
                    run_core(
                        fsync=fsync, seconds=seconds, size=size, window=window, data_dir=Path(tmp)
                    )
                )
        off = rows[0]
        for r in rows:
            ratio = r.commits_per_s / off.commits_per_s if off.commits_per_s else 0.0
            print(
                f"{window:>7} {'on' if r.fsync else 'off':>6} {r.commits_per_s:>11,.0f}"
                f" {r.fsyncs_per_s:>10,.0f} {r.entries_per_fsync:>14.1f} {ratio:>7.2f}"
            )
