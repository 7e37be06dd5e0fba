"""Three ``NodeHost``s in one process, each with its own ``LogStore`` and a real gRPC server on
127.0.0.1 (port 0), talking over ``GrpcTransport``; every node hosts a replica of every group.

Everything waits for conditions with a deadline (``eventually``); nothing sleeps to synchronise.
Every host and server is stopped in ``finally`` blocks, whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from cluster.errors import HostStopped, NotLeader, ProposalDropped, RaftError
from cluster.host import NodeHost, UnknownGroup
from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from cluster.ready import Role
from cluster.snapshotfile import SnapshotFile
from cluster.statemachine import LogStateMachine
from cluster.storage import LogStore
from cluster.transport import SERVER_OPTIONS, GrpcTransport, add_transport_servicer
from cluster.types import NO_NODE, GroupId, NodeId

NODES = (NodeId(1), NodeId(2), NodeId(3))
GROUPS = (GroupId(1), GroupId(2), GroupId(3))
TICK = 0.02
DEADLINE = 15.0
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def eventually(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something other than None/False, or fail after
    ``timeout`` seconds. (The short pause only paces the polling.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Node:
    id: NodeId
    root: Path
    host: NodeHost
    transport: GrpcTransport
    server: grpc.aio.Server
    address: str
    machines: dict[GroupId, LogStateMachine] = field(default_factory=dict)


@dataclass
class Cluster:
    root: Path
    config: dict[str, int | bool] = field(default_factory=dict)
    compact_after: int = 10_000
    nodes: dict[NodeId, Node] = field(default_factory=dict)

    async def start_all(self) -> None:
        for n in NODES:
            await self.start(n)
        for node in self.nodes.values():  # everyone learns everyone's port
            await node.transport.update_peers(self.peers_of(node.id))

    def peers_of(self, n: NodeId) -> dict[NodeId, str]:
        return {m: node.address for m, node in self.nodes.items() if m != n}

    async def start(self, n: NodeId) -> Node:
        """Start node ``n`` from its directory (fresh or not) on a new port; tell the others."""
        root = self.root / f"node{n}"
        (root / "sm").mkdir(parents=True, exist_ok=True)
        store = LogStore.open(root / "raft", node_id=n, cluster_id="test")
        transport = GrpcTransport(n, self.peers_of(n))
        host = NodeHost(
            n,
            store,
            transport,
            tick_interval=TICK,
            config_defaults=self.config,
            rng_seed=7,
            compact_after=self.compact_after,
        )
        machines = {g: LogStateMachine(root / "sm" / f"group{g}.sqlite") for g in GROUPS}
        for g, sm in machines.items():
            host.add_group(g, NODES, sm)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_transport_servicer(server, host)
        port = server.add_insecure_port("127.0.0.1:0")
        assert port, "could not bind a loopback port"
        node = Node(n, root, host, transport, server, f"127.0.0.1:{port}", machines)
        self.nodes[n] = node
        await host.start()
        await server.start()
        for other in self.nodes.values():
            if other.id != n:
                await other.transport.update_peers(self.peers_of(other.id))
        return node

    async def stop(self, n: NodeId) -> None:
        node = self.nodes.pop(n)
        try:
            await node.server.stop(None)
        finally:
            try:
                await node.host.stop()
            finally:
                for sm in node.machines.values():
                    sm.close()

    async def close(self) -> None:
        for n in list(self.nodes):
            await self.stop(n)

    # ---- queries -------------------------------------------------------------------------

    def leader(self, group: GroupId) -> Node | None:
        """The leader every running node agrees on, if any."""
        seen = {node.host.leader(group) for node in self.nodes.values()}
        if len(seen) != 1 or NO_NODE in seen:
            return None
        (leader,) = seen
        node = self.nodes.get(leader)
        if node is None or node.host.group_status(group).role is not Role.LEADER:
            return None
        return node

    async def elected(self) -> dict[GroupId, Node]:
        leaders: dict[GroupId, Node] = {}
        for g in GROUPS:
            leaders[g] = await eventually(partial(self.leader, g), f"a leader of group {g}")
        return leaders

    def records(self, n: NodeId, group: GroupId) -> list[bytes]:
        sm = self.nodes[n].machines[group]
        return sm.read(1, sm.count() + 1)

    def converged(self, group: GroupId) -> list[bytes] | None:
        """The group's records when every running node applied the same commit index."""
        statuses = [node.host.group_status(group) for node in self.nodes.values()]
        commits = {s.commit for s in statuses}
        applied = {s.applied for s in statuses}
        if len(commits) != 1 or applied != commits:
            return None
        logs = [self.records(n, group) for n in self.nodes]
        return logs[0] if all(log == logs[0] for log in logs) else None


async def propose_anywhere(
    cluster: Cluster, group: GroupId, data: bytes, timeout: float = DEADLINE
) -> object:
    """What a client does: find the leader, propose, retry on routing errors until a deadline.
    (Only used with distinct payloads, so a retried duplicate would show up in the checks.)"""
    deadline = time.monotonic() + timeout
    while True:
        leader = cluster.leader(group)
        if leader is not None:
            try:
                return await leader.host.propose(group, data, timeout=2.0)
            except (NotLeader, ProposalDropped, HostStopped, TimeoutError):
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group}: could not commit {data!r} in {timeout} s")
        await asyncio.sleep(0.01)  # pacing the retries


async def with_cluster(
    tmp_path: Path,
    body: Callable[[Cluster], Awaitable[None]],
    *,
    config: dict[str, int | bool] | None = None,
    compact_after: int = 10_000,
) -> None:
    cluster = Cluster(tmp_path, dict(config or {}), compact_after)
    try:
        await cluster.start_all()
        await body(cluster)
    finally:
        await cluster.close()


# ---------------------------------------------------------------------------------------------


def test_elect_replicate_route_and_read(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        leaders = await cluster.elected()

        # 500 concurrent proposals across the groups, all submitted before any completes.
        sizes = {GROUPS[0]: 167, GROUPS[1]: 167, GROUPS[2]: 166}
        payloads = {g: [f"g{g}-m{i}".encode() for i in range(sizes[g])] for g in GROUPS}
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                leaders[g].host.propose(g, data, timeout=DEADLINE)
                for g in GROUPS
                for data in payloads[g]
            )
        )
        elapsed = time.monotonic() - started
        total = sum(len(p) for p in payloads.values())
        # Each group's positions are 1..n, one per proposal (in proposal order: one batch).
        offset = 0
        for g in GROUPS:
            n = len(payloads[g])
            assert results[offset : offset + n] == list(range(1, n + 1))
            offset += n
        for g in GROUPS:
            log = await eventually(partial(cluster.converged, g), f"group {g} converged")
            assert log == payloads[g]
        stats = [leaders[g].host.stats() for g in GROUPS]
        assert all(s.proposal_batches < s.proposals for s in stats), "proposals were not batched"
        print(
            f"\n{total} concurrent proposals over {len(GROUPS)} groups committed in "
            f"{elapsed * 1000:.0f} ms ({total / elapsed:.0f}/s); leader stats {stats[0]}; "
            f"transport {leaders[GROUPS[0]].transport.stats()}"
        )

        # A follower refuses at once and names the leader.
        g = GROUPS[0]
        follower = next(node for node in cluster.nodes.values() if node is not leaders[g])
        with pytest.raises(NotLeader) as info:
            await follower.host.propose(g, b"nope", timeout=1.0)
        assert info.value.leader == leaders[g].id
        with pytest.raises(UnknownGroup):
            await follower.host.propose(GroupId(99), b"nope", timeout=1.0)

        # A linearizable read after a write sees it, on the leader and on a follower.
        position = await leaders[g].host.propose(g, b"read-me", timeout=DEADLINE)
        for node in (leaders[g], follower):
            await node.host.read_index(g, timeout=DEADLINE)
            assert isinstance(position, int)
            assert node.machines[g].read(position, 1) == [b"read-me"]

        # Status names the leader and the followers' match on the leader.
        status = leaders[g].host.group_status(g)
        assert status.role is Role.LEADER and status.leader == leaders[g].id
        assert set(status.match) == set(NODES) - {leaders[g].id}

    run(with_cluster(tmp_path, body))


def test_propose_many_keeps_each_call_contiguous_and_in_order(tmp_path: Path) -> None:
    """``propose_many`` calls and single ``propose`` calls queued in the same turn share one
    batch, yet each call's commands are consecutive entries in its own order, and each call
    gets exactly its own results."""

    async def body(cluster: Cluster) -> None:
        leaders = await cluster.elected()
        g = GROUPS[0]
        host = leaders[g].host
        assert await host.propose_many(g, [], timeout=1.0) == []
        calls = [[f"c{c}-r{r}".encode() for r in range(1 + c % 7)] for c in range(40)]
        singles = [f"single-{i}".encode() for i in range(10)]
        outcomes = await asyncio.gather(
            *(host.propose_many(g, call, timeout=DEADLINE) for call in calls),
            *(host.propose(g, data, timeout=DEADLINE) for data in singles),
        )
        many, one = outcomes[: len(calls)], outcomes[len(calls) :]
        log = await eventually(partial(cluster.converged, g), f"group {g} converged")
        for call, positions in zip(calls, many, strict=True):
            assert isinstance(positions, list) and len(positions) == len(call)
            first = positions[0]
            assert positions == list(range(first, first + len(call))), "not contiguous"
            assert log[first - 1 : first - 1 + len(call)] == call
        for data, position in zip(singles, one, strict=True):
            assert isinstance(position, int) and log[position - 1] == data
        assert len(log) == sum(map(len, calls)) + len(singles)
        stats = host.stats()
        assert stats.proposal_batches < len(calls) + len(singles), "calls were not batched"

        follower = next(node for node in cluster.nodes.values() if node is not leaders[g])
        with pytest.raises(NotLeader):
            await follower.host.propose_many(g, [b"nope"], timeout=1.0)
        assert len(log) == len(cluster.records(follower.id, g))

        # Without a quorum the call times out as a whole (its outcome unknown).
        for n in [n for n in cluster.nodes if n != leaders[g].id]:
            await cluster.stop(n)
        with pytest.raises(TimeoutError):
            await host.propose_many(g, [b"stuck-1", b"stuck-2"], timeout=0.3)

    run(with_cluster(tmp_path, body))


def test_minority_down_then_restart_catches_up(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        leaders = await cluster.elected()
        victim = leaders[GROUPS[0]].id  # stop a leader: its groups must fail over
        reported: list[tuple[GroupId, NodeId, int]] = []
        for node in cluster.nodes.values():
            node.host.on_leadership(lambda g, leader, term: reported.append((g, leader, term)))
        for g in GROUPS:
            await propose_anywhere(cluster, g, f"before-{g}".encode())
        await cluster.stop(victim)

        for i in range(30):
            for g in GROUPS:
                await propose_anywhere(cluster, g, f"during-{g}-{i}".encode())
        new_leader = cluster.leader(GROUPS[0])
        assert new_leader is not None and new_leader.id != victim
        assert any(g == GROUPS[0] and leader == new_leader.id for g, leader, _ in reported)

        await cluster.start(victim)
        for g in GROUPS:
            log = await eventually(partial(cluster.converged, g), f"group {g} caught up")
            assert log[0] == f"before-{g}".encode() and len(log) == 31
        await propose_anywhere(cluster, GROUPS[0], b"after")  # the restarted node takes part

    run(with_cluster(tmp_path, body))


def test_lagging_node_receives_snapshot_over_grpc(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        await cluster.elected()
        lagging = NODES[2]
        await cluster.stop(lagging)
        for i in range(120):
            await asyncio.gather(
                *(propose_anywhere(cluster, g, f"{g}-{i}".encode() * 20) for g in GROUPS)
            )
        for g in GROUPS:
            leader = cluster.leader(g)
            assert leader is not None
            assert leader.host.group_status(g).snapshot_index > 0, "leader never compacted"

        node = await cluster.start(lagging)
        for g in GROUPS:
            log = await eventually(partial(cluster.converged, g), f"group {g} installed")
            assert len(log) == 120
            assert node.machines[g].restores >= 1, "caught up without a snapshot"

    # Small chunks: the snapshot (an SQLite image of ~30 KiB) travels in many messages.
    run(with_cluster(tmp_path, body, config={"snapshot_chunk_bytes": 4096}, compact_after=40))


def test_stop_fails_waiting_requests(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        leaders = await cluster.elected()
        g = GROUPS[0]
        leader = leaders[g]
        # Cut the leader off, so its proposal cannot commit, then stop it while it waits.
        for n in [n for n in cluster.nodes if n != leader.id]:
            await cluster.stop(n)
        waiting = asyncio.ensure_future(leader.host.propose(g, b"stuck", timeout=DEADLINE))
        await eventually(lambda: leader.host.stats().proposals >= 1, "the proposal in the log")
        await cluster.stop(leader.id)
        with pytest.raises(RaftError):
            await waiting
        with pytest.raises(HostStopped):
            await leader.host.propose(g, b"late", timeout=1.0)

    run(with_cluster(tmp_path, body))


def test_log_state_machine_apply_replay_snapshot_restore(tmp_path: Path) -> None:
    sm = LogStateMachine(tmp_path / "a.sqlite")
    try:
        entries = [Entry(1, 1, b"", EntryKind.NOOP), Entry(1, 2, b"x"), Entry(1, 3, b"y")]
        assert sm.apply(entries) == [None, 1, 2]
        assert sm.apply(entries[1:]) == [1, 2]  # a replay after a crash changes nothing
        assert (sm.applied_index(), sm.count(), sm.read(1, 10)) == (3, 2, [b"x", b"y"])
        sm.snapshot_to(tmp_path / "snap")
        assert sm.apply([Entry(2, 4, b"z")]) == [3]
    finally:
        sm.close()
    other = LogStateMachine(tmp_path / "b.sqlite")
    image = SnapshotFile.open(tmp_path / "snap")
    try:
        other.apply([Entry(1, 1, b"old")])
        other.restore(Snapshot(SnapshotMeta(3, 1, NODES), image))
        assert (other.applied_index(), other.read(1, 10)) == (3, [b"x", b"y"])
        assert not (tmp_path / "b.sqlite.restore").exists()  # the scratch copy is gone
        other.restore(Snapshot(SnapshotMeta(3, 1, NODES), image[0 : len(image)]))  # as bytes
        assert (other.applied_index(), other.read(1, 10)) == (3, [b"x", b"y"])
    finally:
        image.close()
        other.close()
    reopened = LogStateMachine(tmp_path / "a.sqlite")  # durable across a reopen
    try:
        assert (reopened.applied_index(), reopened.read(2, 10)) == (4, [b"y", b"z"])
    finally:
        reopened.close()


def test_restart_restores_a_lost_state_machine_from_the_stored_snapshot(tmp_path: Path) -> None:
    """One voter, no peers: the state machine's database is lost while the log was compacted
    past its start, so the host must restore the stored snapshot before replaying the log."""
    me, g = NodeId(1), GroupId(1)

    async def start() -> tuple[NodeHost, LogStateMachine]:
        store = LogStore.open(tmp_path / "raft", node_id=me, cluster_id="solo")
        host = NodeHost(me, store, GrpcTransport(me, {}), tick_interval=TICK, compact_after=10)
        sm = LogStateMachine(tmp_path / "sm.sqlite")
        host.add_group(g, (me,), sm)
        await host.start()
        await eventually(lambda: host.leader(g) == me, "the single voter leads")
        return host, sm

    async def body() -> None:
        host, sm = await start()
        try:
            for i in range(25):
                assert await host.propose(g, f"r{i}".encode(), timeout=DEADLINE) == i + 1
            assert host.group_status(g).snapshot_index > 0
        finally:
            await host.stop()
            sm.close()
        for path in tmp_path.glob("sm.sqlite*"):
            path.unlink()
        host, sm = await start()
        try:
            await host.read_index(g, timeout=DEADLINE)
            assert sm.restores == 1
            assert sm.read(1, 100) == [f"r{i}".encode() for i in range(25)]
        finally:
            await host.stop()
            sm.close()

    run(body())
