"""The shard node's public servicers: thin — validate, convert, hand off to the host.

Errors follow the API conventions: INVALID_ARGUMENT names the field; a group this node does not
host or does not lead answers FAILED_PRECONDITION with the leader hint in trailing metadata
(``x-leader-id``, ``x-leader``; ``x-wrong-group: 1`` when the group is not hosted here);
UNAVAILABLE when the group has no leader or cannot commit (no quorum) before the deadline — after
a timeout the write's outcome is unknown, and a retry may append it twice (the chat layer's
idempotency keys exist for that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import grpc

from cluster.errors import NotLeader, ProposalDropped, RaftError
from cluster.types import NO_NODE, GroupId, NodeId
from proto import node_pb2 as npb
from proto import node_pb2_grpc as npb_grpc

if TYPE_CHECKING:
    from cluster.statemachine import LogStateMachine
    from shards.node import ShardNode

Context = grpc.aio.ServicerContext[object, object]
MAX_RECORDS = 1000
MAX_RECORD_BYTES = 64 * 1024
MAX_READ = 1000
DEFAULT_TIMEOUT = 5.0


def _budget(context: Context) -> float:
    remaining = context.time_remaining()
    return DEFAULT_TIMEOUT if remaining is None else max(0.05, min(remaining, DEFAULT_TIMEOUT))


class _Base:
    def __init__(self, node: ShardNode) -> None:
        self._node = node

    async def _abort_not_leader(
        self, context: Context, group: GroupId, leader: NodeId, *, hosted: bool
    ) -> NoReturn:
        cmap = self._node.cmap
        address = ""
        if leader == NO_NODE and cmap is not None:
            leader = cmap.group(group).leader
        if leader != NO_NODE and cmap is not None:
            status = cmap.node(leader)
            address = status.public_addr if status is not None else ""
        metadata: list[tuple[str, str]] = [("x-leader-id", str(int(leader))), ("x-leader", address)]
        if not hosted:
            metadata.append(("x-wrong-group", "1"))
        context.set_trailing_metadata(tuple(metadata))
        what = "not hosted on" if not hosted else "not led by"
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"group {group} is {what} node {self._node.opts.node_id}; leader hint: "
            f"{int(leader) or 'unknown'} {address}".rstrip(),
        )

    async def _group(self, context: Context, raw: int) -> GroupId:
        cmap = self._node.cmap
        count = cmap.group_count if cmap is not None else 0
        if not 0 <= raw < count:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"group: {raw} is not in 0..{count - 1}"
            )
        group = GroupId(raw)
        if group not in self._node.machines:
            await self._abort_not_leader(context, group, NO_NODE, hosted=False)
        return group


class ShardLogService(_Base, npb_grpc.ShardLogServicer):
    async def Append(self, request: npb.AppendRequest, context: Context) -> npb.AppendResponse:
        group = await self._group(context, request.group)
        if not 1 <= len(request.records) <= MAX_RECORDS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"records: {len(request.records)} given, 1..{MAX_RECORDS} allowed",
            )
        for i, record in enumerate(request.records):
            if len(record) > MAX_RECORD_BYTES:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"records[{i}]: {len(record)} bytes, at most {MAX_RECORD_BYTES}",
                )
        host = self._node.host
        assert host is not None
        timeout = _budget(context)
        try:
            results = await host.propose_many(group, request.records, timeout)
        except NotLeader as exc:
            if exc.leader == NO_NODE:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"group {group} has no leader right now (election under way, or no quorum);"
                    " retry",
                )
            await self._abort_not_leader(context, group, exc.leader, hosted=True)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"group {group} did not commit within {timeout:.1f} s (no quorum?); "
                "the outcome is unknown",
            )
        except (ProposalDropped, RaftError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"group {group}: {exc}; retry")
        return npb.AppendResponse(positions=[int(p) for p in results])  # type: ignore[call-overload]

    async def Read(self, request: npb.ReadRequest, context: Context) -> npb.ReadResponse:
        group = await self._group(context, request.group)
        if not 1 <= request.limit <= MAX_READ:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: {request.limit}, 1..{MAX_READ} allowed"
            )
        host = self._node.host
        assert host is not None
        if not request.stale_ok:
            timeout = _budget(context)
            try:
                await host.read_index(group, timeout)
            except NotLeader as exc:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"group {group} has no known leader ({exc}); retry or read with stale_ok",
                )
            except RaftError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"group {group}: {exc}")
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"group {group}: no linearizable read point within {timeout:.1f} s",
                )
        sm: LogStateMachine = self._node.machines[group]
        start = max(1, request.from_position)
        return npb.ReadResponse(records=sm.read(start, request.limit), count=sm.count())


class NodeAdminService(_Base, npb_grpc.NodeAdminServicer):
    async def Status(self, request: npb.StatusRequest, context: Context) -> npb.NodeStatus:
        host = self._node.host
        cmap = self._node.cmap
        groups = []
        for s in host.status() if host is not None else []:
            groups.append(
                npb.GroupStatus(
                    group=s.group,
                    role=s.role.value,
                    term=s.term,
                    leader=s.leader,
                    commit=s.commit,
                    applied=s.applied,
                    last_index=s.last_index,
                    snapshot_index=s.snapshot_index,
                    progress=[
                        npb.FollowerProgress(node=n, match=m) for n, m in sorted(s.match.items())
                    ],
                )
            )
        stats = host.stats() if host is not None else None
        store = self._node.store
        return npb.NodeStatus(
            node_id=self._node.opts.node_id,
            cluster_id=cmap.cluster_id if cmap is not None else "",
            groups=groups,
            fsyncs=store.stats.fsyncs if store is not None else 0,
            applied_entries=stats.applied_entries if stats is not None else 0,
            ready_rounds=stats.ready_rounds if stats is not None else 0,
        )
