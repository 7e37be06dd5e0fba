"""Discovery messages ⇄ ``proto.discovery_pb2``: the only place that converts between them.

Decoding a request validates it and names the offending field (:class:`InvalidField`), so the
servicer can answer INVALID_ARGUMENT without knowing any rule itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.types import NO_NODE, GroupId, NodeId
from dns.clustermap import (
    ClusterMap,
    DiscoveryEndpoint,
    GroupPlacement,
    NodeAddress,
    NodeStatus,
)
from dns.state import BootstrapSpec, LeaderReport
from proto import discovery_pb2 as pb

MAX_GROUPS = 4096
"""Upper bound on a cluster's group count (the map lists every group)."""
MAX_ID = (1 << 63) - 1
MAX_ADDR_LEN = 255


class InvalidField(ValueError):
    """A request field is invalid; ``field`` names it (dotted path, with list indices)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def check_address(field: str, addr: str) -> str:
    """``host:port`` with a non-empty host and a port in 1..65535 (IPv6 as ``[::1]:port``)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or len(addr) > MAX_ADDR_LEN or any(c.isspace() for c in addr):
        raise InvalidField(field, f"{addr!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidField(field, f"{addr!r} has no port in 1..65535")
    return addr


def _check_id(field: str, value: int) -> NodeId:
    if not 1 <= value <= MAX_ID:
        raise InvalidField(field, f"must be a positive node id, got {value}")
    return NodeId(value)


# ---- requests --------------------------------------------------------------------------------


def bootstrap_from_proto(req: pb.BootstrapRequest) -> BootstrapSpec:
    if not req.cluster_id or len(req.cluster_id) > 64 or not req.cluster_id.isprintable():
        raise InvalidField("cluster_id", "must be 1..64 printable characters")
    if not req.nodes:
        raise InvalidField("nodes", "at least one node is required")
    nodes = [node_address_from_proto(n, f"nodes[{i}]") for i, n in enumerate(req.nodes)]
    seen: set[NodeId] = set()
    for i, n in enumerate(nodes):
        if n.id in seen:
            raise InvalidField(f"nodes[{i}].id", f"node {n.id} is listed twice")
        seen.add(n.id)
    if not 1 <= req.groups <= MAX_GROUPS:
        raise InvalidField("groups", f"must be in 1..{MAX_GROUPS}, got {req.groups}")
    if not 1 <= req.rf <= len(nodes):
        raise InvalidField("rf", f"must be in 1..{len(nodes)} (the number of nodes), got {req.rf}")
    return BootstrapSpec(req.cluster_id, tuple(nodes), req.groups, req.rf)


def bootstrap_to_proto(spec: BootstrapSpec) -> pb.BootstrapRequest:
    return pb.BootstrapRequest(
        cluster_id=spec.cluster_id,
        nodes=[node_address_to_proto(n) for n in spec.nodes],
        groups=spec.groups,
        rf=spec.rf,
    )


def node_address_from_proto(msg: pb.NodeAddress | pb.RegisterRequest, field: str) -> NodeAddress:
    """Validate an address triple; ``field`` prefixes the names of bad fields ("" for none)."""
    prefix = f"{field}." if field else ""
    node_id = msg.id if isinstance(msg, pb.NodeAddress) else msg.node_id
    id_field = "id" if isinstance(msg, pb.NodeAddress) else "node_id"
    return NodeAddress(
        _check_id(prefix + id_field, node_id),
        check_address(prefix + "public_addr", msg.public_addr),
        check_address(prefix + "internal_addr", msg.internal_addr),
    )


def node_address_to_proto(a: NodeAddress) -> pb.NodeAddress:
    return pb.NodeAddress(id=a.id, public_addr=a.public_addr, internal_addr=a.internal_addr)


def register_from_proto(req: pb.RegisterRequest) -> NodeAddress:
    return node_address_from_proto(req, "")


def heartbeat_from_proto(req: pb.HeartbeatRequest) -> tuple[NodeId, tuple[LeaderReport, ...]]:
    node_id = _check_id("node_id", req.node_id)
    reports: list[LeaderReport] = []
    for i, r in enumerate(req.leaders):
        if r.group >= MAX_GROUPS:
            raise InvalidField(f"leaders[{i}].group", f"group {r.group} is out of range")
        if r.leader > MAX_ID:
            raise InvalidField(f"leaders[{i}].leader", f"{r.leader} is not a node id")
        reports.append(LeaderReport(GroupId(r.group), NodeId(r.leader), r.term))
    return node_id, tuple(reports)


def leader_reports_to_proto(reports: Iterable[LeaderReport]) -> list[pb.LeaderReport]:
    return [pb.LeaderReport(group=r.group, leader=r.leader, term=r.term) for r in reports]


# ---- the map ---------------------------------------------------------------------------------


def map_to_proto(m: ClusterMap) -> pb.ClusterMap:
    return pb.ClusterMap(
        cluster_id=m.cluster_id,
        epoch=m.epoch,
        group_count=m.group_count,
        rf=m.rf,
        nodes=[
            pb.NodeInfo(
                id=n.id,
                public_addr=n.public_addr,
                internal_addr=n.internal_addr,
                up=n.up,
                last_seen_ms=n.last_seen_ms,
            )
            for n in m.nodes
        ],
        groups=[
            pb.GroupInfo(group=g.group, replicas=list(g.replicas), leader=g.leader, term=g.term)
            for g in m.groups
        ],
        discovery=[pb.DiscoveryReplica(id=d.id, public_addr=d.public_addr) for d in m.discovery],
        lease_ms=m.lease_ms,
        now_ms=m.now_ms,
    )


def map_from_proto(msg: pb.ClusterMap) -> ClusterMap:
    """Trusting conversion of a map a discovery replica sent (its own encoder made it)."""
    return ClusterMap(
        cluster_id=msg.cluster_id,
        epoch=msg.epoch,
        group_count=msg.group_count,
        rf=msg.rf,
        nodes=tuple(
            NodeStatus(
                id=NodeId(n.id),
                public_addr=n.public_addr,
                internal_addr=n.internal_addr,
                up=n.up,
                last_seen_ms=n.last_seen_ms,
            )
            for n in msg.nodes
        ),
        groups=tuple(
            GroupPlacement(
                group=GroupId(g.group),
                replicas=tuple(NodeId(r) for r in g.replicas),
                leader=NodeId(g.leader) if g.leader else NO_NODE,
                term=g.term,
            )
            for g in msg.groups
        ),
        discovery=tuple(DiscoveryEndpoint(NodeId(d.id), d.public_addr) for d in msg.discovery),
        lease_ms=msg.lease_ms,
        now_ms=msg.now_ms,
    )
