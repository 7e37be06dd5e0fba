"""Discovery as real processes (``python -m dns``) on loopback: bootstrap, register, heartbeat,
leader failover, restart from the log, and the command line's error handling.

Every wait polls a condition with a deadline; every process is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cluster.types import GroupId, NodeId
from dns.client import DiscoveryClient, DiscoveryClientError
from dns.clustermap import ClusterMap, NodeAddress
from dns.state import LeaderReport
from proto import discovery_pb2 as pb
from proto import discovery_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
TICK_MS = 25  # elections in 0.25..0.5 s
T = TypeVar("T")

NODES = [
    NodeAddress(NodeId(i), f"127.0.0.1:{9300 + i}", f"127.0.0.1:{9400 + i}") for i in (1, 2, 3)
]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS reports free right now (all held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Replica:
    def __init__(self, replica_id: int, public: str, internal: str, data_dir: Path) -> None:
        self.id = replica_id
        self.public = public
        self.internal = internal
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"dns{replica_id}.log"


class DnsCluster:
    """1 or 3 discovery replicas as child processes of the test."""

    def __init__(self, root: Path, n: int, extra: tuple[str, ...] = ()) -> None:
        ports = free_ports(2 * n)
        self.replicas = [
            Replica(
                i + 1,
                f"127.0.0.1:{ports[2 * i]}",
                f"127.0.0.1:{ports[2 * i + 1]}",
                root / f"dns{i + 1}",
            )
            for i in range(n)
        ]
        self.peers = ",".join(f"{r.id}={r.internal}" for r in self.replicas)
        self.extra = extra

    @property
    def publics(self) -> list[str]:
        return [r.public for r in self.replicas]

    def by_public(self, public: str) -> Replica:
        return next(r for r in self.replicas if r.public == public)

    def start(self, r: Replica) -> None:
        assert r.proc is None or r.proc.poll() is not None
        cmd = [
            sys.executable,
            "-m",
            "dns",
            "--id",
            str(r.id),
            "--listen",
            r.public,
            "--internal-listen",
            r.internal,
            "--peers",
            self.peers,
            "--data-dir",
            str(r.data_dir),
            "--tick-ms",
            str(TICK_MS),
            *self.extra,
        ]
        with open(r.log, "ab") as log:
            r.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, r: Replica) -> None:
        if r.proc is not None and r.proc.poll() is None:
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for r in self.replicas:
            self.kill(r)

    def logs(self) -> str:
        return "\n".join(
            f"--- {r.log.name} ---\n{r.log.read_text(errors='replace')[-3000:]}"
            for r in self.replicas
            if r.log.exists()
        )

    async def wait_serving(self, r: Replica, timeout: float = 20.0) -> None:
        async with grpc.aio.insecure_channel(r.public) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                assert r.proc is not None
                if r.proc.poll() is not None:
                    raise AssertionError(f"replica {r.id} exited:\n{self.logs()}")
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                except grpc.aio.AioRpcError:
                    return False
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

            await eventually(serving, timeout, f"replica {r.id} serving")


@pytest.fixture
def make_dns(tmp_path: Path) -> Iterator[Callable[..., DnsCluster]]:
    made: list[DnsCluster] = []

    def make(n: int, *extra: str) -> DnsCluster:
        c = DnsCluster(tmp_path, n, tuple(extra))
        made.append(c)
        for r in c.replicas:
            c.start(r)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop_all()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


async def raw_register(public: str, node: NodeAddress) -> grpc.aio.AioRpcError | pb.ClusterMap:
    """One Register on exactly one replica (no client retries): the map or the error."""
    async with grpc.aio.insecure_channel(public) as channel:
        stub = pb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
        try:
            result: pb.ClusterMap = await stub.Register(
                pb.RegisterRequest(
                    node_id=node.id, public_addr=node.public_addr, internal_addr=node.internal_addr
                ),
                timeout=2.0,
            )
        except grpc.aio.AioRpcError as err:
            return err
        return result


async def raw_get_map(public: str, min_epoch: int = 0) -> pb.ClusterMap | None:
    async with grpc.aio.insecure_channel(public) as channel:
        stub = pb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
        try:
            result: pb.ClusterMap = await stub.GetMap(
                pb.GetMapRequest(min_epoch=min_epoch), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return None
        return result


def metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    # grpc-stubs types this as the sync API's metadata; at run time it is grpc.aio.Metadata.
    pairs = cast("Iterable[tuple[str, str | bytes]]", err.trailing_metadata() or ())
    return {k: v if isinstance(v, str) else v.decode() for k, v in pairs}


async def find_leader(cluster: DnsCluster, among: list[Replica], node: NodeAddress) -> Replica:
    """The replica that accepts a write, once every other one names it in ``x-leader``."""

    async def probe() -> Replica | None:
        leader = None
        hints = set()
        for r in among:
            result = await raw_register(r.public, node)
            if isinstance(result, pb.ClusterMap):
                leader = r
            elif result.code() is grpc.StatusCode.FAILED_PRECONDITION:
                hints.add(metadata(result).get("x-leader", ""))
            else:
                return None
        if leader is not None and hints <= {leader.public}:
            return leader
        return None

    return await eventually(probe, 20.0, "one discovery leader that the followers name")


def same_map(a: ClusterMap, b: ClusterMap) -> bool:
    """Equal as data, ignoring what depends on the reader's clock."""

    def strip(m: ClusterMap) -> object:
        nodes = [(n.id, n.public_addr, n.internal_addr, n.last_seen_ms) for n in m.nodes]
        return (m.cluster_id, m.group_count, m.rf, m.groups, nodes)

    return strip(a) == strip(b)


# ---- three replicas: failover ----------------------------------------------------------------


def test_three_replicas_survive_the_loss_of_the_leader(make_dns: Callable[..., DnsCluster]) -> None:
    cluster = make_dns(3)

    async def scenario() -> None:
        for r in cluster.replicas:
            await cluster.wait_serving(r)
        async with DiscoveryClient(cluster.publics, timeout=20.0) as client:
            # Bootstrap through whichever replica; the client follows the leader hint.
            m = await client.bootstrap("it", NODES, groups=8, rf=3)
            assert m.bootstrapped and (m.group_count, m.rf) == (8, 3)
            assert all(len(g.replicas) == 3 for g in m.groups)
            again = await client.bootstrap("it", list(reversed(NODES)), groups=8, rf=3)
            assert again.groups == m.groups, "the same bootstrap again is a no-op"
            with pytest.raises(DiscoveryClientError) as err:
                await client.bootstrap("it", NODES, groups=4, rf=3)
            assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION

            # Status codes of bad requests.
            with pytest.raises(DiscoveryClientError) as err:
                await client.register(NodeAddress(NodeId(9), "127.0.0.1:1", "127.0.0.1:2"))
            assert err.value.code is grpc.StatusCode.NOT_FOUND
            with pytest.raises(DiscoveryClientError) as err:
                await client.register(NodeAddress(NodeId(1), "nowhere", "127.0.0.1:2"))
            assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "public_addr" in err.value.details

            for node in NODES:
                await client.register(node)
            epoch = await client.heartbeat(NodeId(1), [LeaderReport(GroupId(0), NodeId(1), 3)])
            m = await client.get_map(min_epoch=epoch)
            assert m.groups[0].leader == 1 and m.groups[0].term == 3
            assert all(n.up for n in m.nodes)

            leader = await find_leader(cluster, cluster.replicas, NODES[0])
            followers = [r for r in cluster.replicas if r is not leader]

            # A client that knows only a follower is sent to the leader.
            async with DiscoveryClient([followers[0].public]) as lone:
                await lone.register(NODES[1])
                assert leader.public in lone.endpoints

            # Every replica answers GetMap from its own copy, and they converge.
            for r in cluster.replicas:
                copy = await eventually(
                    functools.partial(raw_get_map, r.public, epoch), 10.0, "a fresh map"
                )
                assert copy.epoch >= epoch and copy.cluster_id == "it"

            # Kill the leader: reads keep working at once, writes after a new election.
            cluster.kill(leader)
            m = await client.get_map(timeout=5.0)
            assert m.cluster_id == "it"
            moved = NodeAddress(NodeId(2), "127.0.0.1:9999", NODES[1].internal_addr)
            m = await client.register(moved)
            status = m.node(NodeId(2))
            assert status is not None and status.public_addr == moved.public_addr
            epoch = await client.heartbeat(NodeId(3), [LeaderReport(GroupId(0), NodeId(2), 4)])
            assert epoch > m.epoch

            new_leader = await find_leader(cluster, followers, moved)
            assert new_leader is not leader
            for r in followers:
                copy = await eventually(
                    functools.partial(raw_get_map, r.public, epoch), 10.0, "the survivors agree"
                )
                assert copy.groups[0].leader == 2 and copy.groups[0].term == 4
            # The new leader announced itself, so the map lists it for clients.
            final = await client.get_map(min_epoch=epoch)
            assert new_leader.public in {d.public_addr for d in final.discovery}

    try:
        asyncio.run(scenario())
    except BaseException:
        print(cluster.logs())
        raise


# ---- one replica: restart from its log --------------------------------------------------------


def test_single_replica_restart_keeps_the_map(make_dns: Callable[..., DnsCluster]) -> None:
    # Snapshots every 5 entries: the restart restores a snapshot AND replays the log after it.
    cluster = make_dns(1, "--snapshot-every", "5")
    (replica,) = cluster.replicas

    async def scenario() -> None:
        await cluster.wait_serving(replica)
        async with DiscoveryClient(cluster.publics, timeout=20.0) as client:
            await client.bootstrap("solo", NODES, groups=4, rf=2)
            for node in NODES:
                await client.register(node)
            booted = await client.get_map()
            for term in range(1, 9):
                reports = [
                    LeaderReport(g.group, g.replicas[term % len(g.replicas)], term)
                    for g in booted.groups
                ]
                await client.heartbeat(NodeId(1 + term % 3), reports)
            before = await client.get_map()
            assert any(g.leader for g in before.groups)
            assert len(list(replica.data_dir.glob("snap-*"))) >= 1, "a snapshot was taken"

            cluster.kill(replica)  # SIGKILL: only what was fsynced survives
            cluster.start(replica)
            await cluster.wait_serving(replica)
            after = await client.get_map(min_epoch=before.epoch, timeout=10.0)
            assert after.epoch == before.epoch
            assert same_map(after, before)
            # And it takes writes again.
            await client.heartbeat(NodeId(1))

    try:
        asyncio.run(scenario())
    except BaseException:
        print(cluster.logs())
        raise


def test_health_and_reflection(make_dns: Callable[..., DnsCluster]) -> None:
    cluster = make_dns(1)
    (replica,) = cluster.replicas

    async def scenario() -> None:
        await cluster.wait_serving(replica)
        async with grpc.aio.insecure_channel(replica.public) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            resp = await health.Check(
                health_pb2.HealthCheckRequest(service="raftchat.discovery.Discovery"), timeout=2
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = refl.ServerReflectionInfo(timeout=2)
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            answer = await call.read()
            await call.done_writing()
            assert isinstance(answer, reflection_pb2.ServerReflectionResponse)
            names = {s.name for s in answer.list_services_response.service}
            assert {"raftchat.discovery.Discovery", "grpc.health.v1.Health"} <= names
        # Before a bootstrap the map is empty but served (once a leader confirms it is empty).
        m = await eventually(lambda: raw_get_map(replica.public), 10.0, "an empty map")
        assert m.cluster_id == "" and m.epoch <= 1

    try:
        asyncio.run(scenario())
    except BaseException:
        print(cluster.logs())
        raise


# ---- the command line ------------------------------------------------------------------------


def _run_dns(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCHAT_DNS_")}
    return subprocess.run(
        [sys.executable, "-m", "dns", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_refuses_a_port_in_use_and_a_foreign_data_dir(tmp_path: Path) -> None:
    busy = socket.socket()
    with contextlib.closing(busy):
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        internal = free_ports(1)[0]
        out = _run_dns(
            "--id", "1", "--listen", f"127.0.0.1:{port}",
            "--internal-listen", f"127.0.0.1:{internal}", "--data-dir", str(tmp_path / "d1"),
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"--listen 127.0.0.1:{port}: cannot listen there" in out.stderr

    # The data dir now belongs to replica 1: replica 2 must not use it.
    out = _run_dns(
        "--id", "2", "--listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "d1"),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "cannot use data dir" in out.stderr and "belongs to node 1" in out.stderr


def test_cli_usage_errors_and_help() -> None:
    out = _run_dns("--help")
    assert out.returncode == 0
    assert "--peers" in out.stdout and "RAFTCHAT_DNS_" in out.stdout
    out = _run_dns("--id", "1", "--listen", "127.0.0.1:0")
    assert out.returncode == 2 and "--internal-listen is required" in out.stderr
    out = _run_dns(
        "--id", "4", "--listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0",
        "--data-dir", "x", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2",
    )  # fmt: skip
    assert out.returncode == 2 and "not among the peers" in out.stderr
