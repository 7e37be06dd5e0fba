"""``python -m cluster bench cluster``: committed writes through real processes and the real
transport — 3 shard nodes, fsync on, a closed-loop client keeping a fixed number of Append calls
in flight against the group leaders.

Figures printed per configuration: committed writes/s, p50/p99 commit latency (client-side, one
Append call), CPU-µs per write per replica (utime+stime of the node processes from /proc), and
entries per fsync (applied entries over real fsyncs, both counted by the nodes). The client runs
on the same two cores, so its CPU competes with the nodes' — the figures are conservative.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from cluster.launcher import LocalCluster
from proto import node_pb2 as npb
from proto import node_pb2_grpc as npb_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ClusterBenchResult:
    groups: int
    in_flight: int
    batch: int
    seconds: float
    writes: int
    latencies: list[float]
    cpu_seconds: float
    applied_entries: int
    fsyncs: int

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    @property
    def cpu_us_per_write_per_replica(self) -> float:
        return self.cpu_seconds * 1e6 / max(1, self.writes) / 3

    @property
    def entries_per_fsync(self) -> float:
        return self.applied_entries / self.fsyncs if self.fsyncs else 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def _status(target: str) -> npb.NodeStatus:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = npb_grpc.NodeAdminStub(channel)  # type: ignore[no-untyped-call]
        reply: npb.NodeStatus = await stub.Status(npb.StatusRequest(), timeout=5.0)
        return reply


async def _load(
    cluster: LocalCluster, *, seconds: float, in_flight: int, batch: int, size: int
) -> tuple[int, list[float]]:
    cmap = cluster.get_map()
    publics = {n.id: n.public for n in cluster.spec.nodes}
    leaders = {g.group: publics[g.leader] for g in cmap.groups}
    channels = {t: grpc.aio.insecure_channel(t) for t in set(leaders.values())}
    stubs = {t: npb_grpc.ShardLogStub(c) for t, c in channels.items()}  # type: ignore[no-untyped-call]
    payload = [bytes(size)] * batch
    groups = sorted(leaders)
    latencies: list[float] = []
    writes = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal writes
        n = k
        while time.monotonic() < deadline:
            group = groups[n % len(groups)]
            n += in_flight
            start = time.perf_counter()
            await stubs[leaders[group]].Append(
                npb.AppendRequest(group=group, records=payload), timeout=10.0
            )
            latencies.append(time.perf_counter() - start)
            writes += batch

    try:
        await asyncio.gather(*(worker(k) for k in range(in_flight)))
    finally:
        for channel in channels.values():
            await channel.close(None)
    return writes, latencies


def run_one(
    *, groups: int, in_flight: int, batch: int, size: int, seconds: float, data_dir: Path
) -> ClusterBenchResult:
    cluster = LocalCluster.create_or_load(
        data_dir, nodes=3, groups=groups, rf=3, discovery_replicas=1, base_port=0
    )
    cluster.node_args = ("--app", "log")  # the bare replicated log, no chat on top
    try:
        cluster.start()
        cluster.wait_for_leaders()
        nodes = [cluster.node(n.id) for n in cluster.spec.nodes]
        pids = [c.process.pid for c in nodes if c.process is not None]
        targets = [n.public for n in cluster.spec.nodes]
        # Warm up (connections, first elections' no-ops), then measure.
        asyncio.run(_load(cluster, seconds=0.5, in_flight=in_flight, batch=batch, size=size))
        before = asyncio.run(_gather_status(targets))
        cpu_before = sum(_cpu_seconds(p) for p in pids)
        started = time.monotonic()
        writes, latencies = asyncio.run(
            _load(cluster, seconds=seconds, in_flight=in_flight, batch=batch, size=size)
        )
        elapsed = time.monotonic() - started
        cpu = sum(_cpu_seconds(p) for p in pids) - cpu_before
        after = asyncio.run(_gather_status(targets))
    finally:
        cluster.stop()
    return ClusterBenchResult(
        groups=groups,
        in_flight=in_flight,
        batch=batch,
        seconds=elapsed,
        writes=writes,
        latencies=latencies,
        cpu_seconds=cpu,
        applied_entries=sum(a.applied_entries for a in after)
        - sum(b.applied_entries for b in before),
        fsyncs=sum(a.fsyncs for a in after) - sum(b.fsyncs for b in before),
    )


async def _gather_status(targets: list[str]) -> list[npb.NodeStatus]:
    return list(await asyncio.gather(*(_status(t) for t in targets)))


def bench_cluster(*, seconds: float, size: int, in_flight: int, batches: list[int]) -> None:
    print(
        f"cluster: 3 node processes, rf 3, fsync on, {size} B records, {in_flight} Append calls"
        f" in flight, {seconds:g} s per row"
    )
    print(
        f"{'groups':>6} {'rec/call':>8} {'writes/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'cpu-us/w/rep':>12} {'entries/fsync':>13}"
    )
    for groups in (1, 8):
        for batch in batches:
            with tempfile.TemporaryDirectory(prefix="raftchat-bench-") as tmp:
                r = run_one(
                    groups=groups,
                    in_flight=in_flight,
                    batch=batch,
                    size=size,
                    seconds=seconds,
                    data_dir=Path(tmp),
                )
            print(
                f"{r.groups:>6} {r.batch:>8} {r.writes_per_s:>10,.0f}"
                f" {r.percentile(0.5) * 1000:>7.1f} {r.percentile(0.99) * 1000:>7.1f}"
                f" {r.cpu_us_per_write_per_replica:>12.0f} {r.entries_per_fsync:>13.1f}"
            )
