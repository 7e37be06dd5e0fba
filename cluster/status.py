"""``python -m cluster status``: nodes (up/down) and groups (replicas, leader, term, progress).

It asks discovery for the map and every node for its own view (``NodeAdmin.Status``), so the table
shows what each replica really holds; a node that does not answer within a second is "down".
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field

import grpc

from cluster.launcher import ClusterSpec
from proto import discovery_pb2 as dpb
from proto import discovery_pb2_grpc as dpb_grpc
from proto import node_pb2 as npb
from proto import node_pb2_grpc as npb_grpc

RPC_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    node: int
    role: str
    term: int
    commit: int
    applied: int
    last_index: int


@dataclass(frozen=True, slots=True)
class GroupView:
    group: int
    replicas: list[int]
    leader: int
    term: int
    views: list[ReplicaView] = field(default_factory=list)

    @property
    def max_lag(self) -> int:
        """How far the slowest answering replica's applied index trails the group's commit."""
        if not self.views:
            return 0
        commit = max(v.commit for v in self.views)
        return max(commit - v.applied for v in self.views)


@dataclass(frozen=True, slots=True)
class NodeView:
    node: int
    public: str
    internal: str
    up: bool
    discovery_says_up: bool


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    cluster_id: str
    epoch: int
    discovery: dict[str, bool]
    nodes: list[NodeView]
    groups: list[GroupView]


def collect(spec: ClusterSpec) -> ClusterStatus:
    discovery_up: dict[str, bool] = {}
    cmap: dpb.ClusterMap | None = None
    for target in spec.discovery_targets:
        with grpc.insecure_channel(target) as channel:
            stub = dpb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
            try:
                got: dpb.ClusterMap = stub.GetMap(dpb.GetMapRequest(), timeout=RPC_TIMEOUT)
            except grpc.RpcError:
                discovery_up[target] = False
                continue
        discovery_up[target] = True
        if cmap is None or got.epoch > cmap.epoch:
            cmap = got
    node_status: dict[int, npb.NodeStatus] = {}
    for ep in spec.nodes:
        with grpc.insecure_channel(ep.public) as channel:
            admin = npb_grpc.NodeAdminStub(channel)  # type: ignore[no-untyped-call]
            with contextlib.suppress(grpc.RpcError):  # no answer = down
                node_status[ep.id] = admin.Status(npb.StatusRequest(), timeout=RPC_TIMEOUT)
    map_up = {n.id: n.up for n in cmap.nodes} if cmap else {}
    nodes = [
        NodeView(ep.id, ep.public, ep.internal, ep.id in node_status, map_up.get(ep.id, False))
        for ep in spec.nodes
    ]
    groups: list[GroupView] = []
    for g in cmap.groups if cmap else []:
        views = [
            ReplicaView(n, gs.role, gs.term, gs.commit, gs.applied, gs.last_index)
            for n, st in sorted(node_status.items())
            for gs in st.groups
            if gs.group == g.group
        ]
        groups.append(GroupView(g.group, list(g.replicas), g.leader, g.term, views))
    return ClusterStatus(
        cluster_id=spec.cluster_id,
        epoch=cmap.epoch if cmap else 0,
        discovery=discovery_up,
        nodes=nodes,
        groups=groups,
    )


def render_json(status: ClusterStatus) -> str:
    raw = asdict(status)
    for g, view in zip(raw["groups"], status.groups, strict=True):
        g["max_lag"] = view.max_lag
    return json.dumps(raw, indent=2)


def render_table(status: ClusterStatus) -> str:
    lines = [f"cluster {status.cluster_id}  map epoch {status.epoch}"]
    lines.append("discovery: " + "  ".join(
        f"{t} {'up' if ok else 'DOWN'}" for t, ok in status.discovery.items()
    ))  # fmt: skip
    lines.append("")
    lines.append(f"{'node':>4}  {'public':<21} {'internal':<21} {'state':<5}")
    for n in status.nodes:
        lines.append(f"{n.node:>4}  {n.public:<21} {n.internal:<21} {'up' if n.up else 'DOWN':<5}")
    lines.append("")
    lines.append(
        f"{'group':>5}  {'replicas':<12} {'leader':>6} {'term':>5} {'commit':>8} {'applied':>8}"
        f" {'lag':>5}"
    )
    for g in status.groups:
        commit = max((v.commit for v in g.views), default=0)
        applied = min((v.applied for v in g.views), default=0)
        replicas = ",".join(map(str, g.replicas))
        leader = str(g.leader) if g.leader else "-"
        lines.append(
            f"{g.group:>5}  {replicas:<12} {leader:>6} {g.term:>5} {commit:>8} {applied:>8}"
            f" {g.max_lag:>5}"
        )
    return "\n".join(lines)
