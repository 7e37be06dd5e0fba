"""Where each Raft group lives and which group owns a key: two consistent-hash rings.

Why a ring and not ``group % nodes``: adding or removing a node must move only the groups that
touch that node (each moved group gains or loses that one node), so a cluster change costs a few
snapshot transfers instead of reshuffling everything.

- **The node ring** holds every node at ``vnodes`` points. Group ``g`` hashes to a point
  (``"group-<g>"``) and lives on the ``rf`` *distinct* nodes met walking clockwise from it.
- **The group ring** holds every group at ``vnodes`` points; a key (channel, DM conversation,
  user) belongs to the group owning the first point at or after the key's hash.

uhashring does the hashing (md5 of the point name, never Python's randomised ``hash``), so the
result is the same in every process and on every machine. The rings are built from the *sorted*
node and group ids, so the placement does not depend on the order the caller lists them in (the
only order effect uhashring has is which node keeps a point on an md5 collision).

This module only computes; the authoritative placement is what discovery recorded at bootstrap
(``dns.state``), so a later change of this algorithm never silently moves a running cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from uhashring import HashRing

from cluster.types import GroupId, NodeId

DEFAULT_VNODES = 160
"""Points per node (and per group) on a ring; uhashring's default. More points even out the load
at the cost of memory and build time (5 nodes x 160 points builds in well under a millisecond)."""


class Placement:
    """The placement of ``groups`` groups (ids ``0..groups-1``), each on ``rf`` of ``nodes``."""

    def __init__(
        self,
        nodes: Sequence[NodeId],
        groups: int,
        rf: int,
        *,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"node ids must be distinct: {list(nodes)}")
        if any(n <= 0 for n in nodes):
            raise ValueError(f"node ids must be positive: {list(nodes)}")
        if groups < 1:
            raise ValueError(f"groups must be at least 1, got {groups}")
        if rf < 1:
            raise ValueError(f"rf must be at least 1, got {rf}")
        if rf > len(nodes):
            raise ValueError(f"rf {rf} exceeds the number of nodes ({len(nodes)})")
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self._nodes = tuple(sorted(nodes))
        self._groups = groups
        self._rf = rf
        # Node names on the ring are the decimal ids; sorted insertion (see module docstring).
        self._node_ring = HashRing(
            nodes={str(n): {"vnodes": vnodes} for n in self._nodes}, hash_fn=None
        )
        self._group_ring = HashRing(
            nodes={str(g): {"vnodes": vnodes} for g in range(groups)}, hash_fn=None
        )
        self._replicas = tuple(self._compute_replicas(GroupId(g)) for g in range(groups))

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """The nodes, in id order."""
        return self._nodes

    @property
    def groups(self) -> int:
        return self._groups

    @property
    def rf(self) -> int:
        return self._rf

    def replicas(self, group: GroupId) -> tuple[NodeId, ...]:
        """The ``rf`` distinct nodes that hold ``group``, in ring order (the first is the
        group's "home" node; callers wanting a preferred leader may use it)."""
        self._check_group(group)
        return self._replicas[group]

    def groups_of(self, node: NodeId) -> tuple[GroupId, ...]:
        """The groups with a replica on ``node``, in id order."""
        return tuple(GroupId(g) for g, reps in enumerate(self._replicas) if node in reps)

    def assignment(self) -> dict[GroupId, tuple[NodeId, ...]]:
        """Every group's replicas: what discovery records at bootstrap."""
        return {GroupId(g): reps for g, reps in enumerate(self._replicas)}

    def group_for(self, key: str) -> GroupId:
        """The group that owns ``key`` (a channel name, a DM conversation id, a user name)."""
        return GroupId(int(self._group_ring.get_node(f"key:{key}")))

    def _compute_replicas(self, group: GroupId) -> tuple[NodeId, ...]:
        names = self._node_ring.iterate_nodes(f"group-{group}", distinct=True)
        replicas: list[NodeId] = []
        for name in names:
            replicas.append(NodeId(int(name)))
            if len(replicas) == self._rf:
                break
        return tuple(replicas)

    def _check_group(self, group: GroupId) -> None:
        if not 0 <= group < self._groups:
            raise ValueError(f"group {group} is out of range 0..{self._groups - 1}")
