"""``python -m cluster up`` until the multi-process node host exists (issue 3).

Runs the replicas of one or more groups in this process, each node with its own durable
``LogStore`` under ``--data-dir``, driven by a wall-clock tick. It shows that the core, the storage
and the driver work together on disk: leaders get elected, a heartbeat write commits every second,
a restart on the same directory recovers every group. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.config import Config
from cluster.driver import NodeDriver
from cluster.errors import NotLeader, ProposalDropped
from cluster.messages import Entry, EntryKind, Snapshot
from cluster.raft import Replica
from cluster.ready import Role
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId

TICK_SECONDS = 0.05
CLUSTER_ID = "local"


class _LoggingStateMachine:
    def __init__(self) -> None:
        self.applied: dict[GroupId, int] = {}

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        n = sum(1 for e in entries if e.kind is EntryKind.NORMAL)
        self.applied[group] = self.applied.get(group, 0) + n

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        pass


def run_local(*, data_dir: Path, nodes: int, groups: int, duration: float | None) -> None:
    ids = tuple(NodeId(n) for n in range(1, nodes + 1))
    drivers: dict[NodeId, NodeDriver] = {}
    stores: list[LogStore] = []
    for n in ids:
        store = LogStore.open(data_dir / f"node{n}", node_id=n, cluster_id=CLUSTER_ID)
        stores.append(store)
        if store.recovery.truncated_bytes:
            print(f"node {n}: recovered, cut a torn tail: {store.recovery}")
        driver = NodeDriver(n, store, _LoggingStateMachine())
        for g in range(1, groups + 1):
            group = GroupId(g)
            store.ensure_group(group, ids)
            stored = store.load(group)
            config = Config(node_id=n, group=group, voters=ids)
            driver.add(Replica(config, random.Random(n * 1000 + g), stored))
        drivers[n] = driver
    print(f"{nodes} nodes x {groups} groups, data in {data_dir.resolve()}; Ctrl-C stops")
    leaders: dict[GroupId, tuple[NodeId, int]] = {}
    started = time.monotonic()
    next_write = started + 1.0
    try:
        while duration is None or time.monotonic() - started < duration:
            time.sleep(TICK_SECONDS)
            for driver in drivers.values():
                driver.tick()
            now = time.monotonic()
            for driver in drivers.values():
                for group, replica in driver.replicas.items():
                    if replica.role is Role.LEADER:
                        if leaders.get(group) != (driver.node_id, replica.term):
                            leaders[group] = (driver.node_id, replica.term)
                            print(
                                f"group {group}: leader node {driver.node_id} term {replica.term}"
                                f" (commit {replica.commit_index})"
                            )
                        if now >= next_write:
                            with contextlib.suppress(NotLeader, ProposalDropped):
                                replica.propose(f"alive {now - started:.0f}s".encode())
            if now >= next_write:
                next_write = now + 1.0
            _pump(drivers)
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        for store in stores:
            store.close()


def _pump(drivers: dict[NodeId, NodeDriver]) -> None:
    while True:
        messages = []
        for driver in drivers.values():
            messages.extend(driver.process_ready().messages)
        if not messages:
            return
        for msg in messages:
            drivers[msg.to].step(msg)
