"""The connection as the status line tells it: state, gateway, and the leader change behind a
failover.

Why the leader change: when a node dies, the session moves to another gateway and every Raft
group the dead node led elects a new leader on the survivors. Showing *which* groups moved where
("node 1 lost: g0,g2→n2 g5→n3") tells the user the pause they saw was a failover and that it is
over. The engine reads the groups' leaders from the gateway's ``ServerStatus`` before and after;
the comparison and its wording live here, as pure functions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    RESUMED = "resumed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkStatus:
    state: LinkState = LinkState.CONNECTING
    node: str = ""
    """The gateway's address (the one that failed, while reconnecting)."""
    node_id: int = 0
    reason: str = ""
    """Why the last stream ended (RECONNECTING / CLOSED)."""
    retry_at: float = 0.0
    """Monotonic time of the next attempt (RECONNECTING)."""
    lost_node: str = ""
    lost_node_id: int = 0
    """The gateway lost in the last failover."""
    leader_change: str = ""
    """What the last failover changed, once known (see :func:`describe_changes`)."""
    failovers: int = 0

    def describe(self, now: float) -> str:
        """``connected`` / ``reconnecting in 1.2 s`` / ``resumed`` / ``closed: why``."""
        if self.state is LinkState.RECONNECTING:
            return f"reconnecting in {max(0.0, self.retry_at - now):.1f} s"
        if self.state is LinkState.CLOSED:
            return f"closed: {self.reason}" if self.reason else "closed"
        return str(self.state.value)

    @property
    def gateway(self) -> str:
        """``node 2 (127.0.0.1:7122)``, or the address alone before the id is known."""
        if not self.node:
            return "no gateway"
        return f"node {self.node_id} ({self.node})" if self.node_id else self.node


@dataclass(frozen=True, slots=True)
class Leader:
    node: int
    """0: no leader known."""
    term: int


@dataclass(frozen=True, slots=True)
class LeaderChange:
    group: int
    before: int
    after: int
    term: int


def leader_changes(before: Mapping[int, Leader], after: Mapping[int, Leader]) -> list[LeaderChange]:
    """Groups whose leader differs between two views (groups in only one view are skipped)."""
    out: list[LeaderChange] = []
    for group in sorted(before.keys() & after.keys()):
        old, new = before[group], after[group]
        if old.node != new.node:
            out.append(LeaderChange(group, old.node, new.node, new.term))
    return out


def settled(leaders: Mapping[int, Leader], lost_node_id: int) -> bool:
    """Every group has a leader, and none is the lost node (its election is over)."""
    return bool(leaders) and all(
        leader.node and leader.node != lost_node_id for leader in leaders.values()
    )


def describe_changes(changes: list[LeaderChange], lost_node_id: int) -> str:
    """``node 1 lost: g0,g2→n2 g5→n3`` — groups grouped by their new leader."""
    lost = f"node {lost_node_id} lost" if lost_node_id else "gateway lost"
    if not changes:
        return f"{lost}: no group changed leader"
    by_leader: dict[int, list[int]] = {}
    for change in changes:
        by_leader.setdefault(change.after, []).append(change.group)
    moves = " ".join(
        f"{','.join(f'g{g}' for g in groups)}→{f'n{leader}' if leader else '?'}"
        for leader, groups in sorted(by_leader.items())
    )
    return f"{lost}: {moves}"
