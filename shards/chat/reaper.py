"""Drops the session routes of a gateway node that died and stayed dead.

A route (``user``, ``session_id`` -> ``gateway_node``, ``ms``) is replicated state in the user's
group, and removing it is what tells the user's contacts "offline": the ``DropRoute`` becomes a
``RouteChanged`` event and the contacts' sessions push a ``PresenceEvent`` when the user's last
route goes. A session that ends drops its own route; a node that restarts drops the routes it
held before it started (``ChatApp``). A node killed for good does neither, so without this
module its users would stay "online" to their contacts forever.

The leader of each group this node hosts drops, with the same conditional ``DropRoute(user,
session_id, gateway_node=N)``, every route of the group whose gateway N discovery has shown
down without a break for longer than a grace period (``--route-grace``, 10 s by default) and
whose ``ms`` is older than the moment this node first saw N down. Each down-episode of N is
reaped once per group, retried until it succeeds or N comes back; a second leader doing the
same work after a leader change only repeats no-ops (the drop is idempotent, and conditional
on the route still pointing at N, so a session that moved to another node keeps its route).

Liveness comes from a fresh read of discovery's map on every poll, NOT from the node's cached
map: ``up`` is computed when discovery answers, and a node refreshes its cached copy only when
the epoch grows, so the cached copy goes on calling a node "up" long after its lease ran out
(a dead node's last leadership change usually bumps the epoch while its lease is still valid).
Discovery out of reach means nothing is known, so nothing is reaped.

Clocks: the grace period runs on this node's monotonic clock. The cut-off that decides which
routes are old is this node's wall clock at the first poll that saw N down, while ``route.ms``
was stamped by the *gateway's* wall clock when the session opened, so the cut-off assumes the
skew between the nodes' clocks is well below the grace period (and below a lease). By true
time, a route N recorded before it died is older than the cut-off by at least about a lease
(discovery calls N down only once its lease ran out), and a route N records after it comes
back is newer by at least the grace period (the reaper reaps only after it, and stops once it
sees N up). A skew larger than the lease with N's clock ahead can keep the route of a session
N opened just before dying (that user stays online to contacts until N restarts and drops its
old routes); a skew larger than the grace period with N's clock behind can drop the route of
a session opened on N after it came back (that user looks offline until they reconnect).

The price of a false "down": a gateway that is alive but cut off from discovery for longer
than the grace period loses the routes it recorded before the cut (its users look offline to
their contacts until their sessions reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cluster.types import GroupId, NodeId
from dns.clustermap import ClusterMap
from shards.chat import queries
from shards.chat.api import ApiError
from shards.chat.commands import DropRoute
from shards.chat.service import Router

log = logging.getLogger("shards.chat.reaper")

DEFAULT_GRACE_SECONDS: Final = 10.0
"""How long a node must be seen down before its routes are dropped: several discovery leases
(3 s by default), so a node that is merely slow to heartbeat keeps its sessions."""
POLL_SECONDS: Final = 1.0
"""How often discovery's map is read (as often as a node heartbeats it)."""
MAP_TIMEOUT_SECONDS: Final = 2.0


async def drop_routes(router: Router, group: GroupId, cutoffs: Mapping[NodeId, int]) -> int:
    """Drop every route of ``group`` whose gateway is a node of ``cutoffs`` and whose ``ms`` is
    older than that node's cut-off; how many drops were proposed. Reads the routes with a
    linearizable query, so a route set before the call is seen. Raises ``ApiError``."""
    routes = await router.query(group, queries.OnlineRoutes(), linearizable=True)
    drops = [
        DropRoute(r.user, r.session_id, r.gateway_node)
        for r in routes
        if r.gateway_node in cutoffs and r.ms < cutoffs[NodeId(r.gateway_node)]
    ]
    if drops:
        await router.propose_many(group, drops)
    return len(drops)


@dataclass(frozen=True, slots=True)
class DownEpisode:
    """Node ``node`` has been down in every map read since this node first saw it down."""

    node: NodeId
    since: float
    """This node's monotonic clock at that first read (the grace period runs from it)."""
    cutoff_ms: int
    """This node's wall clock at that first read: routes of ``node`` older than this belong to
    sessions that died with it."""


class RouteReaper:
    """Polls discovery's map; in the groups this node leads, drops the routes of nodes down for
    longer than ``grace`` seconds (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        router: Router,
        led_groups: Callable[[], Iterable[GroupId]],
        fresh_map: Callable[[], Awaitable[ClusterMap]],
        wall_ms: Callable[[], int],
        *,
        grace: float = DEFAULT_GRACE_SECONDS,
        interval: float = POLL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if grace <= 0 or interval <= 0:
            raise ValueError("the route grace period and the poll interval must be positive")
        self._me = me
        self._router = router
        self._led_groups = led_groups
        self._fresh_map = fresh_map
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self.grace = grace
        self._interval = interval
        self._down: dict[NodeId, DownEpisode] = {}
        self._reaped: set[tuple[NodeId, GroupId]] = set()
        """(node, group) pairs done in the node's current episode."""
        self.latest: ClusterMap | None = None
        """The last map discovery answered (fresher liveness than the node's cached map)."""
        self.dropped = 0
        """Routes dropped so far (for logs and tests)."""

    @property
    def down(self) -> dict[NodeId, DownEpisode]:
        """The current down-episodes, by node."""
        return dict(self._down)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # a bug must not stop reaping for the life of the process
                log.exception("route reaper round failed; trying again next round")
            await asyncio.sleep(self._interval)  # the poll period, not synchronisation

    async def poll(self) -> None:
        """One round: read the map (nothing happens if discovery does not answer), then reap
        what is due."""
        try:
            cmap = await asyncio.wait_for(self._fresh_map(), MAP_TIMEOUT_SECONDS)
        except Exception as exc:  # whatever failed, liveness is unknown this round
            log.debug("no fresh cluster map (%s); reaping nothing this round", exc)
            return
        self.observe(cmap)
        await self.reap()

    def observe(self, cmap: ClusterMap) -> None:
        """Start an episode for each node newly seen down; end the episode of each node seen up
        (or gone from the map), so its next failure is reaped again. This node never counts
        itself down: its own sessions are alive whatever discovery says."""
        self.latest = cmap
        down = {n.id for n in cmap.nodes if not n.up and n.id != self._me}
        for node in [n for n in self._down if n not in down]:
            del self._down[node]
            self._reaped = {(n, g) for n, g in self._reaped if n != node}
            log.info("node %s is up again", node)
        for node in sorted(down - self._down.keys()):
            self._down[node] = DownEpisode(node, self._monotonic(), self._wall_ms())
            log.info("node %s is down; its routes go after %.1f s", node, self.grace)

    def due(self) -> dict[GroupId, dict[NodeId, int]]:
        """What to reap now: for each group this node leads, the cut-off of each node down for
        longer than the grace period whose episode is not reaped there yet."""
        now = self._monotonic()
        expired = {n: ep.cutoff_ms for n, ep in self._down.items() if now - ep.since > self.grace}
        out: dict[GroupId, dict[NodeId, int]] = {}
        if not expired:
            return out
        for group in self._led_groups():
            todo = {n: c for n, c in expired.items() if (n, group) not in self._reaped}
            if todo:
                out[group] = todo
        return out

    async def reap(self) -> None:
        """Drop what ``due`` says; a group that fails (no quorum, leader change) is retried on
        the next poll."""
        for group, cutoffs in sorted(self.due().items()):
            try:
                dropped = await drop_routes(self._router, group, cutoffs)
            except ApiError as exc:
                log.info("routes of down nodes %s in group %s: %s; retrying", cutoffs, group, exc)
                continue
            self._reaped.update((node, group) for node in cutoffs)
            self.dropped += dropped
            if dropped:
                log.info("dropped %d routes of down nodes %s in group %s", dropped, cutoffs, group)
