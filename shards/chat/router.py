"""Where a gateway's writes and reads go: the owning group's leader, here or on another node.

A chat node is the gateway of its clients' calls, and hosts replicas of some groups. For a
group it leads, a write is proposed to the local ``NodeHost``; for any other group it is sent to
the leader over ``ChatInternal.Propose`` on the internal port. A read of a group hosted here runs
on the local replica (after a ReadIndex when it must be linearizable, which works on followers
too); a group not hosted here is read over ``ChatInternal.Query`` on a node that hosts it.

Who leads what: the local replica knows for its own groups; for others the discovery map's last
leader report, corrected by the ``x-leader-id`` hint of every not-leader answer. Every command
is idempotent (idempotency keys, exact-replay detection, set semantics), so a write whose
outcome is unknown (a leader change mid-flight, a timeout) is simply proposed again until the
call's budget runs out; only then does the caller see UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar, cast

import grpc

from cluster.errors import HostStopped, NotLeader, ProposalDropped, ProposalLost
from cluster.host import NodeHost
from cluster.transport import CHANNEL_OPTIONS
from cluster.types import NO_NODE, GroupId, NodeId
from dns.clustermap import ClusterMap
from proto import chat_internal_pb2 as ipb
from proto import chat_internal_pb2_grpc as ipb_grpc
from shards.chat import wire
from shards.chat.api import ApiError
from shards.chat.commands import Command, encode_command
from shards.chat.queries import Query
from shards.chat.state import ChatState

log = logging.getLogger("shards.chat.router")

T = TypeVar("T")

DEFAULT_BUDGET: Final = 5.0
"""Seconds one routed write or read may take in all, across leader changes and retries."""
ATTEMPT_TIMEOUT: Final = 2.0
"""Seconds one attempt may take, so one hung node cannot eat the whole budget."""
RETRY_PAUSE: Final = (0.02, 0.2)
FORWARDS_IN_FLIGHT: Final = 4
"""``ChatInternal.Propose`` calls in flight per (group, leader); proposals arriving while they
are all busy wait and go together in the next one."""
MAX_FORWARD_BATCH: Final = 1024
"""Commands in one forwarded batch (the internal servicer's limit)."""
"""Pause between attempts grows from the first to the second value (an election takes ~0.5 s)."""


class _Retry(Exception):
    """This attempt failed in a way another attempt may not; ``leader`` is a fresh hint."""

    def __init__(self, why: str, leader: NodeId = NO_NODE) -> None:
        super().__init__(why)
        self.leader = leader


def _leader_hint(err: grpc.aio.AioRpcError) -> NodeId:
    # Typed as grpc's sync metadata by grpc-stubs; at run time (key, value) pairs.
    metadata = cast("Iterable[tuple[str, str | bytes]]", err.trailing_metadata() or ())
    for key, value in metadata:
        if key == "x-leader-id" and isinstance(value, str) and value.isdigit():
            return NodeId(int(value))
    return NO_NODE


class ClusterRouter:
    """The ``shards.chat.service.Router`` of a chat node."""

    def __init__(
        self,
        node_id: NodeId,
        host: NodeHost,
        machines: Mapping[GroupId, ChatState],
        cluster_map: Callable[[], ClusterMap | None],
        *,
        budget: float = DEFAULT_BUDGET,
        rng: random.Random | None = None,
    ) -> None:
        self._me = node_id
        self._host = host
        self._machines = machines
        self._map = cluster_map
        self._budget = budget
        self._rng = rng or random.Random(node_id)
        self._hints: dict[GroupId, NodeId] = {}
        self._batchers: dict[tuple[GroupId, NodeId], _ForwardBatcher] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    # ---- Router ------------------------------------------------------------------------------

    def groups(self) -> list[GroupId]:
        cmap = self._map()
        return [GroupId(g) for g in range(cmap.group_count)] if cmap is not None else []

    def hosts(self, group: GroupId) -> bool:
        return group in self._machines

    def leader_hint(self, group: GroupId) -> NodeId:
        """The group's leader as best known here (``NO_NODE``: unknown)."""
        if self.hosts(group):
            leader = self._host.leader(group)
            if leader != NO_NODE:
                return leader
        hint = self._hints.get(group, NO_NODE)
        cmap = self._map()
        if hint == NO_NODE and cmap is not None:
            hint = cmap.group(group).leader
        return hint

    def any_replica(self, group: GroupId) -> NodeId:
        cmap = self._map()
        return self._rng.choice(cmap.group(group).replicas) if cmap is not None else self._me

    async def propose(self, group: GroupId, command: Command) -> object:
        return (await self.propose_many(group, [command]))[0]

    async def propose_many(self, group: GroupId, commands: Sequence[Command]) -> list[object]:
        """Commit ``commands`` in ``group`` in this order; each one's apply result."""
        data = [encode_command(c) for c in commands]
        return await self._with_retries(
            group, lambda target, left: self._propose(group, target, data, left)
        )

    async def query(self, group: GroupId, query: Query[T], *, linearizable: bool) -> T:
        """``query`` run on a replica of ``group`` (caught up with every acknowledged write
        when ``linearizable``)."""
        if self.hosts(group) and not linearizable:
            return query.run(self._machines[group])
        result = await self._with_retries(
            group, lambda target, left: self._query(group, target, query, linearizable, left)
        )
        return cast(T, result)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    # ---- attempts ----------------------------------------------------------------------------

    async def _with_retries(
        self, group: GroupId, attempt: Callable[[NodeId, float], Awaitable[T]]
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        pause = RETRY_PAUSE[0]
        why = "no attempt"
        tried: list[NodeId] = []
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    "",
                    f"group {group} could not serve the call within {self._budget:.1f} s "
                    f"(last: {why}); retry",
                )
            target = self._target(group, tried)
            tried.append(target)
            try:
                return await attempt(target, min(left, ATTEMPT_TIMEOUT))
            except _Retry as exc:
                why = str(exc)
                if exc.leader != NO_NODE:
                    self._hints[group] = exc.leader
                    if exc.leader not in tried[-1:]:
                        continue  # a fresh hint: follow it at once
                else:
                    self._hints.pop(group, None)
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, RETRY_PAUSE[1])

    def _target(self, group: GroupId, tried: Sequence[NodeId]) -> NodeId:
        """The node to try: the leader as best known, else a replica not tried last."""
        hint = self.leader_hint(group)
        if hint != NO_NODE and hint not in tried[-1:]:
            return hint
        cmap = self._map()
        replicas = list(cmap.group(group).replicas) if cmap is not None else [self._me]
        fresh = [r for r in replicas if r not in tried[-len(replicas) + 1 :]] or replicas
        return self._rng.choice(fresh)

    async def _propose(
        self, group: GroupId, target: NodeId, data: Sequence[bytes], timeout: float
    ) -> list[object]:
        if target == self._me and self.hosts(group):
            return await self._propose_here(group, data, timeout)
        batcher = self._batchers.get((group, target))
        if batcher is None:
            batcher = self._batchers[(group, target)] = _ForwardBatcher(self, group, target)
        return await batcher.submit(data, timeout)

    async def _forward(
        self, group: GroupId, target: NodeId, data: Sequence[bytes], timeout: float
    ) -> list[object]:
        """One ``ChatInternal.Propose`` of ``data`` to ``target``."""
        request = ipb.ProposeRequest(group=group, commands=data, timeout_ms=int(timeout * 1000))
        reply = await self._call(target, "Propose", request, timeout)
        assert isinstance(reply, ipb.ProposeResponse)
        if len(reply.results) != len(data):
            raise ApiError(grpc.StatusCode.INTERNAL, "", f"node {target}: wrong result count")
        return [wire.decode(r) for r in reply.results]

    async def _propose_here(
        self, group: GroupId, data: Sequence[bytes], timeout: float
    ) -> list[object]:
        try:
            return await self._host.propose_many(group, data, timeout)
        except NotLeader as exc:
            raise _Retry(f"node {self._me} does not lead group {group}", exc.leader) from exc
        except (ProposalDropped, ProposalLost, TimeoutError) as exc:
            raise _Retry(f"group {group}: {type(exc).__name__} {exc}") from exc
        except HostStopped as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "", f"node stopping: {exc}") from exc

    async def _read_index(self, group: GroupId, timeout: float) -> None:
        try:
            await self._host.read_index(group, timeout)
        except NotLeader as exc:
            raise _Retry(f"group {group} has no known leader", exc.leader) from exc
        except TimeoutError as exc:
            raise _Retry(f"group {group}: read timed out") from exc
        except HostStopped as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "", f"node stopping: {exc}") from exc

    async def _query(
        self,
        group: GroupId,
        target: NodeId,
        query: Query[object],
        linearizable: bool,
        timeout: float,
    ) -> object:
        if self.hosts(group):
            if linearizable:
                await self._read_index(group, timeout)
            return query.run(self._machines[group])
        request = ipb.QueryRequest(
            group=group,
            query=wire.encode(query),
            linearizable=linearizable,
            timeout_ms=int(timeout * 1000),
        )
        reply = await self._call(target, "Query", request, timeout)
        assert isinstance(reply, ipb.QueryResponse)
        return wire.decode(reply.result)

    async def _call(self, target: NodeId, method: str, request: object, timeout: float) -> object:
        stub = self.stub(target)
        if stub is None:
            raise _Retry(f"node {target} has no known address")
        try:
            rpc = getattr(stub, method)
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                raise _Retry(f"node {target}: {err.details()}", _leader_hint(err)) from err
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ):
                raise _Retry(f"node {target}: {code.name} {err.details()}") from err
            raise ApiError(
                grpc.StatusCode.INTERNAL, "", f"node {target} answered {code.name}: {err.details()}"
            ) from err
        except wire.WireError as exc:
            raise ApiError(grpc.StatusCode.INTERNAL, "", f"node {target}: {exc}") from exc

    def stub(self, node: NodeId) -> ipb_grpc.ChatInternalStub | None:
        """A stub for ``node``'s internal port (one channel per node, kept)."""
        cmap = self._map()
        status = cmap.node(node) if cmap is not None else None
        if status is None or not status.internal_addr:
            return None
        channel = self._channels.get(status.internal_addr)
        if channel is None:
            channel = grpc.aio.insecure_channel(status.internal_addr, options=CHANNEL_OPTIONS)
            self._channels[status.internal_addr] = channel
        return ipb_grpc.ChatInternalStub(channel)  # type: ignore[no-untyped-call]


class _ForwardBatcher:
    """Coalesces the proposals a gateway forwards to one leader for one group. The cost of a
    forwarded proposal is mostly per gRPC call, so while FORWARDS_IN_FLIGHT calls are busy, new
    proposals (of any session) queue and leave together in the next call: under load the calls
    per second stay flat while the commands per call grow; with no load nothing waits."""

    def __init__(self, router: ClusterRouter, group: GroupId, target: NodeId) -> None:
        self._router = router
        self._group = group
        self._target = target
        self._waiting: list[tuple[Sequence[bytes], asyncio.Future[list[object]]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    async def submit(self, data: Sequence[bytes], timeout: float) -> list[object]:
        future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        self._waiting.append((data, future))
        self._send_some(timeout)
        return await future

    def _send_some(self, timeout: float) -> None:
        while self._waiting and self._in_flight < FORWARDS_IN_FLIGHT:
            batch: list[tuple[Sequence[bytes], asyncio.Future[list[object]]]] = []
            size = 0
            while self._waiting and (
                not batch or size + len(self._waiting[0][0]) <= MAX_FORWARD_BATCH
            ):
                item = self._waiting.pop(0)
                if item[1].cancelled():
                    continue
                batch.append(item)
                size += len(item[0])
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch, timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        batch: list[tuple[Sequence[bytes], asyncio.Future[list[object]]]],
        timeout: float,
    ) -> None:
        try:
            flat = [d for data, _ in batch for d in data]
            results = await self._router._forward(self._group, self._target, flat, timeout)
        except BaseException as exc:  # every waiter sees the failure and retries on its own
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            at = 0
            for data, future in batch:
                if not future.done():
                    future.set_result(results[at : at + len(data)])
                at += len(data)
        finally:
            self._in_flight -= 1
            self._send_some(timeout)
