"""A seeded, virtual-time network: latency, loss, duplication, reordering and partitions.

Time is the simulation's tick counter. A message sent at tick ``t`` becomes deliverable at
``t + latency`` (latency drawn per copy, so later messages overtake earlier ones), may be lost or
duplicated, and is dropped at delivery time if a partition then separates its two ends (a cut
link loses what is on the wire). Every choice comes from the ``random.Random`` handed in, so one
seed replays the same schedule.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cluster.messages import Message
from cluster.types import NodeId


@dataclass(frozen=True, slots=True)
class Faults:
    """How unreliable the network is right now."""

    drop: float = 0.0
    duplicate: float = 0.0
    max_latency: int = 0
    """Latency is uniform in ``[0, max_latency]`` ticks, with a bias towards 0."""


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0


class Network:
    """Messages between the ``nodes``; ``deliverable()`` hands out what is due, in random order."""

    def __init__(self, rng: random.Random, nodes: Sequence[NodeId]) -> None:
        self._rng = rng
        self.nodes = tuple(nodes)
        self.now = 0
        self.faults = Faults()
        self.stats = NetStats()
        # (due tick, send sequence, message): tuples compare in C, and seq breaks every tie.
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._blocked: frozenset[tuple[NodeId, NodeId]] = frozenset()
        self.partition_name = "none"

    # ---- sending and delivering ----------------------------------------------------------

    def send(self, msg: Message) -> None:
        self.stats.sent += 1
        if self.faults.drop and self._rng.random() < self.faults.drop:
            self.stats.dropped += 1
            return
        copies = 1
        if self.faults.duplicate and self._rng.random() < self.faults.duplicate:
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._queue, (self.now + self._latency(), self._seq, msg))

    def _latency(self) -> int:
        top = self.faults.max_latency
        if top <= 0:
            return 0
        # Mostly quick, sometimes slow: the slow ones are what reorders traffic.
        if self._rng.random() < 0.7:
            return self._rng.randint(0, min(1, top))
        return self._rng.randint(0, top)

    def deliverable(self) -> list[Message]:
        """Every message due by ``now`` whose link is up, shuffled (messages that are due
        together arrive in any order)."""
        due: list[Message] = []
        while self._queue and self._queue[0][0] <= self.now:
            msg = heapq.heappop(self._queue)[2]
            if (msg.sender, msg.to) in self._blocked:
                self.stats.cut += 1
                continue
            due.append(msg)
        if len(due) > 1:
            self._rng.shuffle(due)
        self.stats.delivered += len(due)
        return due

    def pending(self) -> int:
        return len(self._queue)

    def discard_node(self, node: NodeId) -> None:
        """A node crashed: whatever is on the wire to or from it is gone."""
        kept = [f for f in self._queue if node not in (f[2].sender, f[2].to)]
        if len(kept) != len(self._queue):
            self._queue = kept
            heapq.heapify(self._queue)

    # ---- partitions ----------------------------------------------------------------------

    def can_talk(self, a: NodeId, b: NodeId) -> bool:
        return (a, b) not in self._blocked

    def heal(self) -> None:
        self._blocked = frozenset()
        self.partition_name = "none"

    def split(self, sides: Iterable[Iterable[NodeId]]) -> None:
        """Only nodes on the same side can talk."""
        side_of = {n: i for i, side in enumerate(sides) for n in side}
        self._blocked = frozenset(
            (a, b)
            for a in self.nodes
            for b in self.nodes
            if a != b and side_of.get(a, -1 - a) != side_of.get(b, -1 - b)
        )
        self.partition_name = "split " + " | ".join(
            " ".join(str(n) for n in sorted(side)) for side in _sides(side_of)
        )

    def isolate(self, node: NodeId) -> None:
        self.split([[node], [n for n in self.nodes if n != node]])
        self.partition_name = f"isolate {node}"

    def ring(self, order: Sequence[NodeId]) -> None:
        """Each node talks only to its two neighbours in ``order``: with 5 or 7 nodes every
        node sees a different, overlapping set, and no two of them agree on a majority."""
        n = len(order)
        allowed = set()
        for i, a in enumerate(order):
            for b in (order[(i - 1) % n], order[(i + 1) % n]):
                allowed.add((a, b))
                allowed.add((b, a))
        self._blocked = frozenset(
            (a, b) for a in self.nodes for b in self.nodes if a != b and (a, b) not in allowed
        )
        self.partition_name = "ring " + "-".join(str(n) for n in order)


def _sides(side_of: dict[NodeId, int]) -> list[list[NodeId]]:
    by_side: dict[int, list[NodeId]] = {}
    for node, side in side_of.items():
        by_side.setdefault(side, []).append(node)
    return [by_side[k] for k in sorted(by_side)]
