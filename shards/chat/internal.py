"""``ChatInternal``: what one chat node serves other nodes on its internal port.

``Propose`` commits commands in a group this node leads; ``Query`` runs a read on this node's
replica (after a ReadIndex when asked); ``Watch`` streams the replica's applied events. Bytes
come from peers of the same cluster but are still decoded strictly: a command through
``decode_command`` inside apply (garbage is ``Rejected`` on every replica alike), a query only
into the registered query types (:data:`QUERY_TYPES`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, NoReturn

import grpc

from cluster.errors import HostStopped, NotLeader, ProposalDropped, ProposalLost
from cluster.host import NodeHost
from cluster.types import NO_NODE, GroupId, NodeId
from proto import chat_internal_pb2 as ipb
from proto import chat_internal_pb2_grpc as ipb_grpc
from shards.chat import queries, wire
from shards.chat.feed import Feed, FeedBatch, Lagged
from shards.chat.state import ChatState

Context = grpc.aio.ServicerContext[object, object]

QUERY_TYPES: Final = (
    queries.UserLookup,
    queries.SessionLookup,
    queries.ChannelLookup,
    queries.ChannelListing,
    queries.ReaderHistory,
    queries.ConversationsOf,
    queries.Members,
    queries.OnlineRoutes,
    queries.RoutesOf,
    queries.PendingFollowUps,
    queries.DisplayNames,
    queries.CatchUp,
)
MAX_COMMANDS: Final = 1024
DEFAULT_TIMEOUT: Final = 2.0


def _timeout(ms: int) -> float:
    return DEFAULT_TIMEOUT if ms == 0 else min(ms / 1000, 10.0)


class ChatInternalService(ipb_grpc.ChatInternalServicer):
    def __init__(
        self,
        node_id: NodeId,
        host: NodeHost,
        machines: Mapping[GroupId, ChatState],
        feed: Feed,
        leader_of: Callable[[GroupId], NodeId],
    ) -> None:
        self._me = node_id
        self._host = host
        self._machines = machines
        self._feed = feed
        self._leader_of = leader_of

    async def _not_here(self, context: Context, group: GroupId, leader: NodeId) -> NoReturn:
        hosted = group in self._machines
        if leader == NO_NODE:
            leader = self._leader_of(group)
        meta = [("x-leader-id", str(int(leader)))]
        if not hosted:
            meta.append(("x-wrong-group", "1"))
        context.set_trailing_metadata(tuple(meta))
        what = "does not lead" if hosted else "does not host"
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, f"node {self._me} {what} group {group}"
        )

    async def _hosted(self, context: Context, raw: int) -> GroupId:
        group = GroupId(raw)
        if group not in self._machines:
            await self._not_here(context, group, NO_NODE)
        return group

    async def Propose(self, request: ipb.ProposeRequest, context: Context) -> ipb.ProposeResponse:
        group = await self._hosted(context, request.group)
        if len(request.commands) > MAX_COMMANDS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"commands: at most {MAX_COMMANDS}"
            )
        timeout = _timeout(request.timeout_ms)
        try:
            results = await self._host.propose_many(group, request.commands, timeout)
        except NotLeader as exc:
            await self._not_here(context, group, exc.leader)
        except (ProposalDropped, ProposalLost, TimeoutError, HostStopped) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"group {group}: {exc!r}")
        return ipb.ProposeResponse(results=[wire.encode(r) for r in results])

    async def Query(self, request: ipb.QueryRequest, context: Context) -> ipb.QueryResponse:
        group = await self._hosted(context, request.group)
        try:
            query = wire.decode(request.query)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"query: {exc}")
        if not isinstance(query, QUERY_TYPES):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"query: {type(query).__name__} is not a query"
            )
        if request.linearizable:
            try:
                await self._host.read_index(group, _timeout(request.timeout_ms))
            except NotLeader as exc:
                await self._not_here(context, group, exc.leader)
            except (TimeoutError, HostStopped) as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"group {group}: {exc!r}")
        return ipb.QueryResponse(result=wire.encode(query.run(self._machines[group])))

    async def Watch(
        self, request: ipb.WatchRequest, context: Context
    ) -> AsyncIterator[ipb.WatchEvent]:
        group = await self._hosted(context, request.group)
        sub = self._feed.subscribe(group)
        try:
            # An empty first batch says the subscription is in place: whatever the watcher
            # reads after receiving it, later events are in the stream.
            applied = self._machines[group].applied_index()
            yield ipb.WatchEvent(batch=wire.encode(FeedBatch(int(group), applied, ())))
            while True:
                try:
                    batches = await sub.next()
                except Lagged as exc:
                    await context.abort(grpc.StatusCode.ABORTED, str(exc))
                for batch in batches:
                    yield ipb.WatchEvent(batch=wire.encode(batch))
        finally:
            sub.close()
