"""The chat application of a shard node: every chat part wired to the node's Raft host.

``ShardNode`` owns the process (map, store, host, ports); this module owns what runs on top when
the node serves chat: one ``FeedingChatState`` per hosted group, the router, the service, the
push hub, the follow-up drainer, and the two servicers (public ``Chat``, internal
``ChatInternal``), and the reaper that drops the routes of gateway nodes that died for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from cluster.host import NodeHost
from cluster.types import GroupId, NodeId
from dns.clustermap import ClusterMap
from proto import chat_internal_pb2_grpc as ipb_grpc
from proto import chat_pb2_grpc as pb_grpc
from shards.chat.api import ApiError
from shards.chat.commands import parse_dm
from shards.chat.feed import Feed, FeedBatch, FeedingChatState, MessageCommitted
from shards.chat.followups import FollowUpDrainer
from shards.chat.hub import PushHub
from shards.chat.internal import ChatInternalService
from shards.chat.ratelimit import SendRateLimiter
from shards.chat.reaper import DEFAULT_GRACE_SECONDS, RouteReaper, drop_routes
from shards.chat.router import ClusterRouter
from shards.chat.service import ChatService, user_key
from shards.chat.servicer import ChatServicer, NodeFacts
from shards.placement import Placement

log = logging.getLogger("shards.chat.app")


class MapDirectory:
    """Node addresses and liveness from the freshest cluster map at hand (``freshest``)."""

    def __init__(self, cluster_map: Callable[[], ClusterMap | None]) -> None:
        self._map = cluster_map

    def node_address(self, node: int) -> str:
        cmap = self._map()
        status = cmap.node(NodeId(node)) if cmap is not None else None
        return status.public_addr if status is not None else ""

    def node_up(self, node: int) -> bool:
        cmap = self._map()
        status = cmap.node(NodeId(node)) if cmap is not None else None
        return status is not None and status.up


def wall_ms() -> int:
    return int(time.time() * 1000)


def freshest(cached: ClusterMap | None, polled: ClusterMap | None) -> ClusterMap | None:
    """The newer of two maps, by epoch and then by when discovery computed ``up``: the node's
    cached map is refreshed only when the epoch grows, so its ``up`` flags can be far older
    than those of the map the route reaper reads every second."""
    if cached is None or polled is None:
        return cached if polled is None else polled
    return polled if (polled.epoch, polled.now_ms) > (cached.epoch, cached.now_ms) else cached


class ChatApp:
    def __init__(
        self,
        node_id: NodeId,
        host: NodeHost,
        cluster_map: Callable[[], ClusterMap | None],
        *,
        fresh_map: Callable[[], Awaitable[ClusterMap]],
        fsync: bool,
        send_rate: float,
        send_burst: float,
        route_grace: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        """``fresh_map`` reads discovery's map now (the reaper's liveness source)."""
        cmap = cluster_map()
        assert cmap is not None
        self.node_id = node_id
        self.host = host
        self.feed = Feed()
        self.machines: dict[GroupId, FeedingChatState] = {}
        placement = Placement([n.id for n in cmap.nodes], cmap.group_count, cmap.rf)
        self.group_for: Callable[[str], GroupId] = functools.lru_cache(maxsize=65536)(
            placement.group_for
        )
        self.router = ClusterRouter(node_id, host, self.machines, cluster_map)
        self.reaper = RouteReaper(
            node_id, self.router, self._led_groups, fresh_map, wall_ms, grace=route_grace
        )
        self.service = ChatService(
            self.router,
            self.group_for,
            wall_ms,
            limiter=SendRateLimiter(send_rate, send_burst),
            directory=MapDirectory(lambda: freshest(cluster_map(), self.reaper.latest)),
        )
        self.hub = PushHub(node_id, self.feed, self.router, self.group_for)
        self.drainer = FollowUpDrainer(
            node_id, host, self.machines, self.router, lambda u: self.group_for(user_key(u))
        )
        self.feed.listen(self._on_batch)
        self.facts = NodeFacts(
            node_id, cmap.cluster_id, lambda: _epoch(cluster_map), fsync, time.monotonic()
        )
        self._tasks: list[asyncio.Task[None]] = []

    def state_machine(self, group: GroupId, path: Path) -> FeedingChatState:
        """The state machine for a hosted group (call before the host starts)."""
        sm = FeedingChatState(path, group, self.feed, defer_commit=True)
        self.machines[group] = sm
        return sm

    def add_servicers(self, public: grpc.aio.Server, internal: grpc.aio.Server) -> None:
        servicer = ChatServicer(self.service, self.hub, self.host, self.facts)
        pb_grpc.add_ChatServicer_to_server(servicer, public)  # type: ignore[no-untyped-call]
        inner = ChatInternalService(
            self.node_id, self.host, self.machines, self.feed, self.router.leader_hint
        )
        ipb_grpc.add_ChatInternalServicer_to_server(inner, internal)  # type: ignore[no-untyped-call]

    def start(self) -> None:
        self.hub.start()
        self._tasks.append(asyncio.create_task(self.drainer.run_forever()))
        self._tasks.append(asyncio.create_task(self._drop_stale_routes(wall_ms())))
        self._tasks.append(asyncio.create_task(self.reaper.run_forever()))

    def _led_groups(self) -> list[GroupId]:
        return [g for g in self.machines if self.host.leader(g) == self.node_id]

    async def _drop_stale_routes(self, started_ms: int) -> None:
        """Routes to this node recorded before this process started belong to sessions that
        died with the previous process: drop them, so Who does not show ghosts. Retried until
        every group answered (a group may have no quorum yet)."""
        pending = set(self.router.groups())
        while pending:
            for group in sorted(pending):
                try:
                    await drop_routes(self.router, group, {self.node_id: started_ms})
                    pending.discard(group)
                except ApiError as exc:
                    log.info("stale routes of group %s: %s; retrying", group, exc)
            if pending:
                await asyncio.sleep(1.0)  # a retry pause, not synchronisation

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hub.stop()
        await self.router.close()

    def _on_batch(self, batch: FeedBatch) -> None:
        for event in batch.events:
            if (
                isinstance(event, MessageCommitted)
                and event.message.seq == 1
                and parse_dm(event.message.conversation) is not None
            ):
                self.drainer.wake()
                return


def _epoch(cluster_map: Callable[[], ClusterMap | None]) -> int:
    cmap = cluster_map()
    return cmap.epoch if cmap is not None else 0
