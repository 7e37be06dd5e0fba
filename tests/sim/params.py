"""What one seed decides about a simulated world, and what a run reports back.

Everything is drawn from ``random.Random(seed)`` in a fixed order, so ``--seed N`` (plus the same
overrides) rebuilds the same world; separate sub-seeds feed the network, the replicas and the
fault/workload schedule, so a change in one stream does not reshuffle the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cluster.config import Config
from cluster.types import GroupId, NodeId
from tests.sim.network import Faults

DEFAULT_STEPS = 250
DEFAULT_HEAL_TICKS = 600


@dataclass(frozen=True, slots=True)
class SimParams:
    seed: int
    steps: int = DEFAULT_STEPS
    nodes: int | None = None
    groups: int | None = None
    heal_ticks: int = DEFAULT_HEAL_TICKS

    def replay_command(self) -> str:
        cmd = f"python -m tests.sim --seed {self.seed}"
        if self.steps != DEFAULT_STEPS:
            cmd += f" --steps {self.steps}"
        if self.nodes is not None:
            cmd += f" --nodes {self.nodes}"
        if self.groups is not None:
            cmd += f" --groups {self.groups}"
        if self.heal_ticks != DEFAULT_HEAL_TICKS:
            cmd += f" --heal-ticks {self.heal_ticks}"
        return cmd


class SimFailure(AssertionError):
    """A seed failed; the first line is the replay command."""

    def __init__(self, params: SimParams, tick: int, phase: str, reason: str) -> None:
        super().__init__(
            f"seed {params.seed} failed at tick {tick} ({phase}); replay: "
            f"{params.replay_command()} --verbose\n{reason}"
        )
        self.params = params
        self.tick = tick
        self.reason = reason


@dataclass
class SimResult:
    seed: int
    nodes: int
    groups: int
    ticks: int = 0
    heal_ticks: int = 0
    proposals: int = 0
    acked: int = 0
    elections: int = 0
    crashes: int = 0
    torn_crashes: int = 0
    partitions: int = 0
    snapshots: int = 0
    snapshot_installs: int = 0
    transfers: int = 0
    reads_served: int = 0
    reads_dropped: int = 0
    messages: int = 0
    recoveries_cut: int = 0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.nodes} nodes x {self.groups} groups, {self.ticks}+"
            f"{self.heal_ticks} ticks, {self.acked}/{self.proposals} proposals acked, "
            f"{self.elections} elections, {self.crashes} crashes ({self.torn_crashes} mid-write, "
            f"{self.recoveries_cut} torn tails cut), {self.partitions} partitions, "
            f"{self.snapshots} snapshots, {self.snapshot_installs} installs, "
            f"{self.transfers} transfers, {self.reads_served} reads ok/{self.reads_dropped} "
            f"dropped, {self.messages} messages"
        )


@dataclass(frozen=True, slots=True)
class Profile:
    """How hostile this seed's world is; drawn once from the seed."""

    faults: Faults
    p_partition: float
    p_crash: float
    p_torn_crash: float
    p_propose: float
    p_snapshot: float
    p_transfer: float
    p_read: float
    p_skip_tick: float


@dataclass(frozen=True, slots=True)
class World:
    """The shape of one run: who, how configured, how hostile, and the sub-seeds."""

    nodes: tuple[NodeId, ...]
    groups: tuple[GroupId, ...]
    configs: dict[GroupId, Config]
    """One config per group (node_id is the first node's; replace it per replica)."""
    profile: Profile
    workload_seed: int
    replica_seed: int
    network_seed: int


def draw_world(params: SimParams) -> World:
    master = random.Random(params.seed)
    n_nodes = master.choice((3, 3, 5, 5, 7))
    n_groups = master.randint(2, 4)
    n_nodes = params.nodes or n_nodes
    n_groups = params.groups or n_groups
    workload_seed = master.getrandbits(64)
    replica_seed = master.getrandbits(64)
    network_seed = master.getrandbits(64)
    nodes = tuple(NodeId(i) for i in range(1, n_nodes + 1))
    groups = tuple(GroupId(g) for g in range(1, n_groups + 1))
    configs = {g: _group_config(master, nodes, g) for g in groups}
    profile = _profile(master)
    return World(nodes, groups, configs, profile, workload_seed, replica_seed, network_seed)


def _group_config(master: random.Random, nodes: tuple[NodeId, ...], group: GroupId) -> Config:
    """One draw of the knobs per group, shared by its replicas."""
    return Config(
        node_id=nodes[0],
        group=group,
        voters=nodes,
        election_ticks=10,
        heartbeat_ticks=master.choice((1, 1, 2, 3)),
        pre_vote=master.random() < 0.8,
        check_quorum=master.random() < 0.8,
        max_msg_bytes=master.choice((64, 256, 4096)),
        max_inflight_msgs=master.choice((1, 2, 4, 32)),
        max_uncommitted_bytes=master.choice((0, 1024, 1 << 20)),
        snapshot_chunk_bytes=master.choice((128, 512, 2048)),
    )


def _profile(master: random.Random) -> Profile:
    calm = master.random() < 0.15  # some seeds are gentle, to reach deep logs
    return Profile(
        faults=Faults(
            drop=0.0 if calm else master.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=0.0 if calm else master.choice((0.0, 0.01, 0.05)),
            max_latency=master.choice((0, 1, 2, 4, 8)),
        ),
        p_partition=0.0 if calm else master.choice((0.01, 0.03, 0.06)),
        p_crash=0.0 if calm else master.choice((0.005, 0.015, 0.04)),
        p_torn_crash=master.random(),
        p_propose=master.choice((0.2, 0.5, 0.9)),
        p_snapshot=master.choice((0.01, 0.03, 0.08)),
        p_transfer=master.choice((0.0, 0.01, 0.03)),
        p_read=master.choice((0.02, 0.1)),
        p_skip_tick=master.choice((0.0, 0.02)),
    )
