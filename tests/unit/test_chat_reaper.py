"""The route reaper (``shards.chat.reaper``) over an in-memory router, a scripted discovery map
and hand-driven clocks: a node seen down for longer than the grace period loses, in the groups
this node leads, exactly the routes it served before it was first seen down; one episode is
reaped once per group; coming back up starts a new episode. Also the helper that a restarting
node uses for its own stale routes, and the choice of the fresher map for ``Who``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from cluster.types import GroupId, NodeId
from dns.clustermap import ClusterMap, NodeStatus
from shards.chat.api import ApiError
from shards.chat.app import freshest
from shards.chat.commands import Command, DropRoute, SetRoute
from shards.chat.queries import Query
from shards.chat.reaper import RouteReaper, drop_routes
from shards.chat.schema import Route
from tests.unit.test_chat_service import MemoryRouter

T = TypeVar("T")

ME, DEAD, OTHER = NodeId(1), NodeId(2), NodeId(3)
GROUPS = 4
GRACE = 10.0
T0_MS = 1_700_000_000_000
LED = (GroupId(0), GroupId(1))
"""The groups this node leads in these tests; 2 and 3 are led elsewhere."""


def cluster_map(down: Sequence[NodeId] = (), epoch: int = 5, now_ms: int = T0_MS) -> ClusterMap:
    nodes = tuple(
        NodeStatus(n, f"127.0.0.1:{7000 + n}", f"127.0.0.1:{8000 + n}", n not in down, now_ms)
        for n in (ME, DEAD, OTHER)
    )
    return ClusterMap("c", epoch, GROUPS, 3, nodes, (), lease_ms=3000, now_ms=now_ms)


class Clocks:
    """Both clocks of the reaper, moved together by the test."""

    def __init__(self) -> None:
        self.seconds = 100.0
        self.ms = T0_MS

    def monotonic(self) -> float:
        return self.seconds

    def wall_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.ms += int(seconds * 1000)


class Router(MemoryRouter):
    """A MemoryRouter that counts queries and can fail the next calls on chosen groups."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, GROUPS)
        self.queries = 0
        self.failing: set[GroupId] = set()

    async def query(self, group: GroupId, query: Query[T], *, linearizable: bool) -> T:
        if group in self.failing:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "", f"group {group} has no quorum")
        assert linearizable, "the reaper must see every route set before it asks"
        self.queries += 1
        return await super().query(group, query, linearizable=linearizable)


class World:
    def __init__(self, root: Path) -> None:
        self.router = Router(root)
        self.clocks = Clocks()
        self.map = cluster_map()
        self.discovery_up = True
        self.reaper = RouteReaper(
            ME,
            self.router,
            lambda: LED,
            self._fresh_map,
            self.clocks.wall_ms,
            grace=GRACE,
            monotonic=self.clocks.monotonic,
        )

    async def _fresh_map(self) -> ClusterMap:
        if not self.discovery_up:
            raise ConnectionError("discovery unreachable")
        return self.map

    def run(self, command: Command, group: int) -> None:
        asyncio.run(self.router.propose(GroupId(group), command))

    def route(self, user: str, node: NodeId, group: int, ms: int, session: str = "s1") -> None:
        self.run(SetRoute(user, session, node, ms), group)

    def poll(self) -> list[tuple[GroupId, Command]]:
        """One reaper round; what it proposed."""
        before = len(self.router.proposed)
        asyncio.run(self.reaper.poll())
        return self.router.proposed[before:]

    def routes(self, group: int) -> list[Route]:
        return self.router.states[GroupId(group)].all_routes()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.router.close()


def old_routes(world: World) -> None:
    """Routes recorded before DEAD dies: two on DEAD in a led group, one on DEAD in a group led
    elsewhere, one on another node."""
    world.route("ann", DEAD, 0, T0_MS - 5000)
    world.route("ann", DEAD, 0, T0_MS - 4000, session="s2")
    world.route("bob", DEAD, 2, T0_MS - 5000)
    world.route("cat", OTHER, 1, T0_MS - 5000)


def test_a_node_down_for_less_than_the_grace_period_keeps_its_routes(world: World) -> None:
    old_routes(world)
    world.map = cluster_map(down=[DEAD])
    assert world.poll() == []
    assert list(world.reaper.down) == [DEAD]
    world.clocks.advance(GRACE)  # exactly the grace period: not longer
    assert world.poll() == []
    assert world.router.queries == 0
    assert len(world.routes(0)) == 2


def test_after_the_grace_period_the_leader_drops_exactly_the_dead_nodes_old_routes(
    world: World,
) -> None:
    old_routes(world)
    world.map = cluster_map(down=[DEAD])
    world.poll()  # first seen down: the cut-off is T0_MS
    world.clocks.advance(3)
    # Recorded on DEAD after it was first seen down (by a clock of DEAD's, say it came back
    # for a moment): not a session that died with it.
    world.route("dan", DEAD, 1, T0_MS + 1000)
    world.clocks.advance(GRACE)
    proposed = world.poll()
    assert proposed == [
        (GroupId(0), DropRoute("ann", "s1", DEAD)),
        (GroupId(0), DropRoute("ann", "s2", DEAD)),
    ]
    assert world.routes(0) == []
    assert [r.user for r in world.routes(1)] == ["cat", "dan"]
    assert [r.user for r in world.routes(2)] == ["bob"]  # group 2 is led by another node
    assert world.reaper.dropped == 2


def test_a_route_that_moved_to_another_node_is_kept(world: World) -> None:
    world.route("ann", DEAD, 0, T0_MS - 5000)
    world.route("ann", OTHER, 0, T0_MS - 100)  # the client reconnected elsewhere: moved
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.clocks.advance(GRACE + 1)
    assert world.poll() == []
    assert world.routes(0) == [Route("ann", "s1", OTHER, T0_MS - 100)]


def test_a_move_between_the_read_and_the_drop_keeps_the_route(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop is conditional on the gateway, so a session that moves after the reaper read
    the routes keeps its new route."""
    world.route("ann", DEAD, 0, T0_MS - 5000)
    query = world.router.query

    async def read_then_move(group: GroupId, q: Query[T], *, linearizable: bool) -> T:
        answer = await query(group, q, linearizable=linearizable)
        if group == 0:
            await world.router.propose(group, SetRoute("ann", "s1", OTHER, T0_MS + 50))
        return answer

    monkeypatch.setattr(world.router, "query", read_then_move)
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.clocks.advance(GRACE + 1)
    assert world.poll() == [
        (GroupId(0), SetRoute("ann", "s1", OTHER, T0_MS + 50)),
        (GroupId(0), DropRoute("ann", "s1", DEAD)),
    ]
    assert world.routes(0) == [Route("ann", "s1", OTHER, T0_MS + 50)]


def test_an_episode_is_reaped_once_per_group(world: World) -> None:
    old_routes(world)
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.clocks.advance(GRACE + 1)
    assert len(world.poll()) == 2
    queries = world.router.queries
    world.route("ann", DEAD, 0, T0_MS - 3000, session="s3")  # even an old route now
    for _ in range(3):
        world.clocks.advance(1)
        assert world.poll() == []
    assert world.router.queries == queries, "a reaped episode is not read again"


def test_coming_back_up_starts_a_new_episode(world: World) -> None:
    old_routes(world)
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.clocks.advance(GRACE + 1)
    world.poll()
    world.map = cluster_map()  # DEAD is back
    world.clocks.advance(1)
    assert world.poll() == []
    assert world.reaper.down == {}
    world.route("ann", DEAD, 0, world.clocks.ms - 10)  # a session on the restarted node
    world.clocks.advance(5)
    world.map = cluster_map(down=[DEAD])  # and it dies again
    world.poll()
    assert world.reaper.down[DEAD].cutoff_ms == world.clocks.ms
    world.clocks.advance(GRACE / 2)
    assert world.poll() == []
    world.clocks.advance(GRACE / 2 + 1)
    assert world.poll() == [(GroupId(0), DropRoute("ann", "s1", DEAD))]


def test_a_failing_group_is_retried_until_done(world: World) -> None:
    old_routes(world)
    world.route("eve", DEAD, 1, T0_MS - 5000)
    world.router.failing = {GroupId(0)}
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.clocks.advance(GRACE + 1)
    assert world.poll() == [(GroupId(1), DropRoute("eve", "s1", DEAD))]
    world.clocks.advance(1)
    assert world.poll() == []  # group 0 still fails; group 1 is done
    world.router.failing = set()
    world.clocks.advance(1)
    assert [g for g, _ in world.poll()] == [GroupId(0), GroupId(0)]
    assert world.routes(0) == []


def test_no_answer_from_discovery_changes_nothing(world: World) -> None:
    old_routes(world)
    world.map = cluster_map(down=[DEAD])
    world.poll()
    world.discovery_up = False
    world.clocks.advance(GRACE + 1)
    assert world.poll() == []  # liveness unknown: nothing reaped, the episode goes on
    assert list(world.reaper.down) == [DEAD]
    world.discovery_up = True
    assert len(world.poll()) == 2


def test_this_node_never_reaps_its_own_routes(world: World) -> None:
    world.route("ann", ME, 0, T0_MS - 5000)
    world.map = cluster_map(down=[ME])  # e.g. its heartbeats are late, its sessions are not
    world.poll()
    world.clocks.advance(GRACE + 1)
    assert world.poll() == []
    assert world.reaper.down == {}
    assert len(world.routes(0)) == 1


def test_drop_routes_drops_each_named_nodes_routes_older_than_its_cut_off(world: World) -> None:
    """The helper a restarting node also uses for the routes it held before it started."""
    world.route("ann", ME, 0, T0_MS - 1)
    world.route("bob", ME, 0, T0_MS)  # recorded by the new process: kept
    world.route("cat", DEAD, 0, T0_MS - 1)
    world.route("dan", OTHER, 0, T0_MS - 1)
    n = asyncio.run(drop_routes(world.router, GroupId(0), {ME: T0_MS, OTHER: T0_MS}))
    assert n == 2
    assert [r.user for r in world.routes(0)] == ["bob", "cat"]


def test_who_uses_the_fresher_map() -> None:
    cached = cluster_map(epoch=5, now_ms=T0_MS)
    polled = cluster_map(down=[DEAD], epoch=5, now_ms=T0_MS + 4000)
    assert freshest(cached, polled) is polled
    newer = cluster_map(epoch=6)
    assert freshest(newer, polled) is newer
    assert freshest(cached, None) is cached
    assert freshest(None, polled) is polled


def test_a_grace_period_must_be_positive(world: World) -> None:
    with pytest.raises(ValueError, match="positive"):
        RouteReaper(ME, world.router, lambda: LED, world._fresh_map, int, grace=0)
