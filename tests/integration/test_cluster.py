"""Real processes on loopback: discovery + shard nodes started by the launcher, then faults.

Every test polls for conditions with deadlines; none sleeps to synchronise. Processes are always
stopped by the ``make_cluster`` fixture.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from cluster.launcher import LocalCluster
from proto import discovery_pb2, discovery_pb2_grpc, node_pb2
from tests.integration.conftest import ClusterFactory
from tests.integration.logclient import LogClient, WriteFailed, wait_for


def leader_of(client: LogClient, group: int, *, not_: int = 0) -> int:
    def find() -> int:
        cmap = client.cluster_map()
        leader = int(cmap.groups[group].leader)
        return leader if leader and leader != not_ else 0

    return wait_for(find, 15.0, f"a leader of group {group} other than {not_}")


def replica_logs(client: LogClient, group: int, node_ids: list[int]) -> dict[int, list[bytes]]:
    publics = {n.id: n.public for n in client.spec.nodes}
    return {n: client.read_all(publics[n], group) for n in node_ids}


def converged(client: LogClient, group: int, node_ids: list[int]) -> dict[int, list[bytes]]:
    """Every replica's log when they are all equal, else {} (keep polling)."""
    try:
        logs = replica_logs(client, group, node_ids)
    except grpc.RpcError:
        return {}  # a replica is still starting
    first = next(iter(logs.values()))
    return logs if all(log == first for log in logs.values()) else {}


def acked_more_than(acked: list[bytes], count: int, what: str) -> None:
    wait_for(lambda: len(acked) > count, 15.0, what)


def discovery_leader(cluster: LocalCluster) -> int:
    """The discovery replica that accepts writes (Bootstrap is idempotent; followers refuse)."""

    def find() -> int:
        for d in cluster.spec.discovery:
            with grpc.insecure_channel(d.public) as channel:
                stub = discovery_pb2_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
                try:
                    stub.Register(
                        discovery_pb2.RegisterRequest(
                            node_id=cluster.spec.nodes[0].id,
                            public_addr=cluster.spec.nodes[0].public,
                            internal_addr=cluster.spec.nodes[0].internal,
                        ),
                        timeout=1.0,
                    )
                    return d.id
                except grpc.RpcError:
                    continue
        return 0

    return wait_for(find, 10.0, "a discovery leader")


def test_up_elects_every_group_and_status_agrees(make_cluster: ClusterFactory) -> None:
    started = time.monotonic()
    cluster, _ = make_cluster(nodes=3, groups=8)
    nodes_spawned = time.monotonic()  # discovery is up and bootstrapped; nodes just started
    cmap = cluster.wait_for_leaders(timeout=10.0)
    done = time.monotonic()
    print(
        f"\nevery group had a leader {done - nodes_spawned:.2f} s after the node processes"
        f" started ({done - started:.2f} s after up, discovery start-up included)"
    )
    assert all(g.leader for g in cmap.groups)
    # The target is 3 s (1.7-2.1 s measured on an idle 2-core machine); CI runs this next to
    # the simulation on the same two cores, so the bound leaves room for that.
    assert done - nodes_spawned < 5.0
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "status", "--json", "--data-dir", str(cluster.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert [n["up"] for n in status["nodes"]] == [True, True, True]
    for group in status["groups"]:
        leaders = {v["node"] for v in group["views"] if v["role"] == "leader"}
        assert len(leaders) <= 1
        # Each node's own view agrees with the map once leadership is reported.
        if leaders:
            assert leaders == {group["leader"]}, group
        assert len(group["views"]) == 3


def test_up_again_on_the_same_data_dir_keeps_every_record(make_cluster: ClusterFactory) -> None:
    cluster, client = make_cluster(nodes=3, groups=2)
    cluster.wait_for_leaders()
    for group in range(2):
        client.append(group, [b"g%d-r%d" % (group, i) for i in range(50)])
    cluster.stop()
    again = LocalCluster.create_or_load(
        cluster.data_dir, nodes=3, groups=2, rf=3, discovery_replicas=1, base_port=0
    )
    assert again.spec == cluster.spec  # same identity and ports, from cluster.json
    again.node_args = cluster.node_args
    cluster.children.clear()
    try:
        again.start()
        again.wait_for_leaders()
        ids = [n.id for n in again.spec.nodes]
        for group in range(2):

            def same(group: int = group) -> dict[int, list[bytes]]:
                return converged(client, group, ids)

            logs = wait_for(same, 15.0, "the old records")
            assert next(iter(logs.values())) == [b"g%d-r%d" % (group, i) for i in range(50)]
        client.append(0, [b"after-restart"])
    finally:
        again.stop()


def test_writes_survive_sigkill_of_the_leader_twenty_times(make_cluster: ClusterFactory) -> None:
    cluster, client = make_cluster(nodes=3, groups=2)
    cluster.wait_for_leaders()
    acked: list[bytes] = []
    stop = threading.Event()
    writer_client = LogClient(cluster.spec)
    failures: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            record = b"w%d" % n
            n += 1
            try:
                writer_client.append(0, [record], timeout=3.0)
                acked.append(record)
            except WriteFailed as exc:
                failures.append(exc.code.name)

    thread = threading.Thread(target=writer)
    thread.start()
    failover: list[float] = []
    try:
        for _ in range(20):
            acked_more_than(acked, len(acked) + 5, "writes flowing")
            old = leader_of(client, 0)
            killed_at = time.monotonic()
            cluster.node(old).signal(signal.SIGKILL)
            acked_more_than(acked, len(acked), "writes resuming after the kill")
            failover.append(time.monotonic() - killed_at)
            cluster.restart(f"node-{old}")
    finally:
        stop.set()
        thread.join()
        writer_client.close()
    failover.sort()
    p99 = failover[min(len(failover) - 1, int(len(failover) * 0.99))]
    print(
        f"\nfailover after SIGKILL of the leader: p50 {statistics.median(failover) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {failover[-1] * 1000:.0f} ms; "
        f"{len(acked)} writes acked, {len(failures)} failed attempts"
    )
    ids = [n.id for n in cluster.spec.nodes]
    logs = wait_for(lambda: converged(client, 0, ids), 20.0, "replicas converging")
    log = next(iter(logs.values()))
    present = set(log)
    lost = [r for r in acked if r not in present]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    assert len(set(acked)) == len(acked)


def test_sigstopped_leader_steps_down_and_its_unacked_writes_never_appear(
    make_cluster: ClusterFactory,
) -> None:
    cluster, client = make_cluster(nodes=3, groups=1)
    cluster.wait_for_leaders()
    client.append(0, [b"before"])
    old = leader_of(client, 0)
    old_public = next(n.public for n in cluster.spec.nodes if n.id == old)
    cluster.node(old).signal(signal.SIGSTOP)
    try:
        # Writes sent to the frozen leader cannot be acknowledged by it.
        stale = LogClient(cluster.spec)
        results: list[str] = []

        def write_to_frozen() -> None:
            try:
                request = node_pb2.AppendRequest(group=0, records=[b"frozen-1", b"frozen-2"])
                stale.log(old_public).Append(request, timeout=6.0)
                results.append("acked")
            except grpc.RpcError as exc:
                results.append(exc.code().name)

        frozen_writer = threading.Thread(target=write_to_frozen)
        frozen_writer.start()
        new = leader_of(client, 0, not_=old)
        client.append(0, [b"after"])
        wait_for(lambda: client.cluster_map().groups[0].leader == new, 5.0, "map names it")
    finally:
        cluster.node(old).signal(signal.SIGCONT)
    frozen_writer.join()
    stale.close()
    assert results != ["acked"], "a frozen, deposed leader acknowledged a write"

    def old_is_follower() -> bool:
        groups = client.status(old_public).groups
        return bool(groups) and groups[0].role == "follower" and groups[0].leader == new

    wait_for(old_is_follower, 10.0, "the old leader stepping down")
    client.append(0, [b"later"])
    ids = [n.id for n in cluster.spec.nodes]
    logs = wait_for(lambda: converged(client, 0, ids), 10.0, "replicas converging")
    log = next(iter(logs.values()))
    assert b"before" in log and b"after" in log and b"later" in log
    assert b"frozen-1" not in log and b"frozen-2" not in log


def test_a_node_down_during_10000_writes_catches_up_after_restart(
    make_cluster: ClusterFactory,
) -> None:
    cluster, client = make_cluster(nodes=3, groups=1, node_args=("--snapshot-entries", "2000"))
    cluster.wait_for_leaders()
    leader = leader_of(client, 0)
    victim = next(n.id for n in cluster.spec.nodes if n.id != leader)
    cluster.node(victim).signal(signal.SIGKILL)
    for batch in range(10):
        client.append(0, [b"r%d-%d" % (batch, i) for i in range(1000)], timeout=20.0)
    cluster.restart(f"node-{victim}")
    ids = [n.id for n in cluster.spec.nodes]
    logs = wait_for(lambda: converged(client, 0, ids), 30.0, "the restarted node catching up")
    assert len(logs[victim]) == 10_000
    victim_public = next(n.public for n in cluster.spec.nodes if n.id == victim)
    group = client.status(victim_public).groups[0]
    assert group.applied >= 10_000
    # It must have caught up by snapshot: the leader compacted its log meanwhile.
    assert group.snapshot_index > 0, group
    # ... and from then on by the log.
    client.append(0, [b"after-catch-up-%d" % i for i in range(10)])
    logs = wait_for(lambda: converged(client, 0, ids), 15.0, "the log tail replicating")
    assert logs[victim][-10:] == [b"after-catch-up-%d" % i for i in range(10)]


def test_five_nodes_rf5_survive_two_kills_and_stop_on_the_third(
    make_cluster: ClusterFactory,
) -> None:
    cluster, client = make_cluster(nodes=5, groups=2, rf=5)
    cluster.wait_for_leaders()
    order = [leader_of(client, 0)] + [n.id for n in cluster.spec.nodes]
    victims = list(dict.fromkeys(order))[:3]
    for v in victims[:2]:
        cluster.node(v).signal(signal.SIGKILL)
    for group in range(2):
        client.append(group, [b"two-down-%d" % group], timeout=15.0)
    cluster.node(victims[2]).signal(signal.SIGKILL)
    for group in range(2):
        try:
            client.append(group, [b"three-down"], timeout=4.0)
            raise AssertionError("a group with 2 of 5 replicas accepted a write")
        except WriteFailed as exc:
            assert exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    cluster.restart(f"node-{victims[2]}")
    for group in range(2):
        client.append(group, [b"three-back-%d" % group], timeout=20.0)


def test_discovery_leader_loss_with_three_replicas(make_cluster: ClusterFactory) -> None:
    cluster, client = make_cluster(nodes=3, groups=2, discovery_replicas=3)
    cluster.wait_for_leaders()
    epoch = client.cluster_map().epoch
    cluster.children[f"discovery-{discovery_leader(cluster)}"].signal(signal.SIGKILL)
    wait_for(lambda: client.cluster_map().epoch >= epoch, 10.0, "the map from another replica")
    client.append(0, [b"while-discovery-degraded"], timeout=10.0)
    cluster.node(leader_of(client, 1)).signal(signal.SIGKILL)
    wait_for(lambda: client.cluster_map().groups[1].leader != 0, 15.0, "new leader in map")
    client.append(1, [b"after-failover"], timeout=15.0)


def test_single_discovery_down_writes_continue_and_map_catches_up(
    make_cluster: ClusterFactory,
) -> None:
    cluster, client = make_cluster(nodes=3, groups=2, discovery_replicas=1)
    cluster.wait_for_leaders()
    client.append(0, [b"warm"])
    discovery = cluster.children["discovery-1"]
    discovery.signal(signal.SIGSTOP)
    try:
        for i in range(20):
            client.append(0, [b"no-discovery-%d" % i], timeout=5.0)
    finally:
        discovery.signal(signal.SIGCONT)
    old = leader_of(client, 0)
    cluster.node(old).signal(signal.SIGKILL)
    new = leader_of(client, 0, not_=old)
    assert new != old


def _run_node(
    argv: list[str], timeout: float = 30.0, app: str = "log"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shards", "--app", app, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bad_node_configurations_exit_with_a_clear_message(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster, _ = make_cluster(nodes=3, groups=2)
    cluster.wait_for_leaders()
    spec = cluster.spec
    n1, n2 = spec.nodes[0], spec.nodes[1]
    discovery = ",".join(spec.discovery_targets)
    spare = LocalCluster.create_or_load(
        tmp_path / "spare", nodes=1, groups=1, rf=1, discovery_replicas=1, base_port=0
    ).spec.nodes[0]
    # Node 2 pointed at node 1's data dir (node 1 is stopped first so the dir is free).
    cluster.node(n1.id).stop()
    out = _run_node(
        ["--node-id", str(n2.id), "--listen", spare.public, "--internal-listen", spare.internal,
         "--discovery", discovery, "--data-dir", str(cluster.data_dir / f"node-{n1.id}")]
    )  # fmt: skip
    assert out.returncode != 0
    assert "node" in out.stderr.lower() and "data dir" in out.stderr.lower(), out.stderr
    # A port already in use (node 2's own public port).
    out = _run_node(
        ["--node-id", str(n1.id), "--listen", n2.public, "--internal-listen", spare.internal,
         "--discovery", discovery, "--data-dir", str(cluster.data_dir / f"node-{n1.id}")]
    )  # fmt: skip
    assert out.returncode != 0
    assert n2.public in out.stderr, out.stderr
    # A chat node on a data dir made by a log node (the application's data is not interchangeable).
    out = _run_node(
        ["--node-id", str(n1.id), "--listen", spare.public, "--internal-listen", spare.internal,
         "--discovery", discovery, "--data-dir", str(cluster.data_dir / f"node-{n1.id}")],
        app="chat",
    )  # fmt: skip
    assert out.returncode != 0
    assert "--app log" in out.stderr, out.stderr
    # A data dir of another cluster: a second cluster's node dir used with this discovery.
    other_cluster, _ = make_cluster(nodes=1, groups=1, rf=1)
    other_cluster.wait_for_leaders()
    other_cluster.node(1).stop()
    out = _run_node(
        ["--node-id", "1", "--listen", spare.public, "--internal-listen", spare.internal,
         "--discovery", discovery, "--data-dir", str(other_cluster.data_dir / "node-1")]
    )  # fmt: skip
    assert out.returncode != 0
    assert "cluster" in out.stderr.lower(), out.stderr
