"""Fixtures that start real clusters (discovery + shard nodes as processes) on free loopback
ports in a temporary directory, and always stop every process afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.launcher import LocalCluster
from tests.integration.logclient import LogClient

ClusterFactory = Callable[..., tuple[LocalCluster, LogClient]]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    made: list[tuple[LocalCluster, LogClient]] = []

    def make(
        *,
        nodes: int = 3,
        groups: int = 4,
        rf: int = 3,
        discovery_replicas: int = 1,
        node_args: tuple[str, ...] = (),
    ) -> tuple[LocalCluster, LogClient]:
        cluster = LocalCluster.create_or_load(
            tmp_path / f"cluster{len(made)}",
            nodes=nodes,
            groups=groups,
            rf=rf,
            discovery_replicas=discovery_replicas,
            base_port=0,
        )
        cluster.node_args = ("--app", "log", *node_args)  # these tests drive Raft via ShardLog
        client = LogClient(cluster.spec)
        made.append((cluster, client))
        cluster.start()
        return cluster, client

    try:
        yield make
    finally:
        for cluster, client in made:
            client.close()
            cluster.stop()
