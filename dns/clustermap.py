"""The cluster map as its users see it: frozen values, no protobuf, no Raft.

``dns.state`` keeps the authoritative record (with lease times); a read turns it into a
:class:`ClusterMap`, which adds what only a clock can say (is a node ``up``?). Clients and nodes
receive the same type from ``dns.client``, so code that routes by the map never touches protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.types import NO_NODE, GroupId, NodeId


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A node's id and where to reach it: ``public_addr`` for clients, ``internal_addr`` for
    Raft traffic between nodes."""

    id: NodeId
    public_addr: str
    internal_addr: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    id: NodeId
    public_addr: str
    internal_addr: str
    up: bool
    """The node's lease was valid at the answering replica's clock (``ClusterMap.now_ms``)."""
    last_seen_ms: int
    """Unix ms of its last Register/Heartbeat, by the discovery leader's clock; 0 = never."""


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    group: GroupId
    replicas: tuple[NodeId, ...]
    leader: NodeId = NO_NODE
    term: int = 0
    """The term ``leader`` was reported in; a report with a lower term never replaces it."""


@dataclass(frozen=True, slots=True)
class DiscoveryEndpoint:
    """A discovery replica's public address (each one records it when it becomes leader)."""

    id: NodeId
    public_addr: str


@dataclass(frozen=True, slots=True)
class ClusterMap:
    cluster_id: str
    """"" until the cluster is bootstrapped."""
    epoch: int
    """Grows on every change of nodes, placements, leaders or discovery endpoints; never on a
    mere lease renewal (``up`` is computed at read time, not stored)."""
    group_count: int
    rf: int
    nodes: tuple[NodeStatus, ...]
    groups: tuple[GroupPlacement, ...]
    discovery: tuple[DiscoveryEndpoint, ...] = ()
    lease_ms: int = 0
    now_ms: int = 0

    @property
    def bootstrapped(self) -> bool:
        return self.cluster_id != ""

    def node(self, node_id: NodeId) -> NodeStatus | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None

    def group(self, group: GroupId) -> GroupPlacement:
        """The placement of ``group``; ValueError if the map has no such group."""
        if not 0 <= group < len(self.groups):
            raise ValueError(f"group {group} is not in the map (groups: {len(self.groups)})")
        return self.groups[group]

    def leader_address(self, group: GroupId) -> str | None:
        """Public address of the group's last reported leader, if known."""
        leader = self.group(group).leader
        node = self.node(leader) if leader != NO_NODE else None
        return node.public_addr if node is not None else None


EMPTY_MAP = ClusterMap(cluster_id="", epoch=0, group_count=0, rf=0, nodes=(), groups=())
