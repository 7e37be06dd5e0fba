"""The discovery service: the logic behind the Discovery RPCs, and the thin gRPC servicer.

:class:`DiscoveryService` knows nothing of gRPC: it turns requests into commands, proposes them
to the discovery Raft group through a :class:`ReplicatedLog` (the node host, or a fake in unit
tests), and raises named errors. :class:`DiscoveryServicer` converts protobuf (``dns.codec``),
hands off, and maps each error to the status code that means it.

Reads are local: any replica answers GetMap from the state it has applied. A follower's copy may
lag the leader by a heartbeat; that is fine for a map, whose users refresh it when a node answers
NOT_LEADER / WRONG_GROUP, and whose ``epoch`` tells them how fresh a copy is (``min_epoch``
asks for at least a given freshness).

Writes are idempotent (Bootstrap with the same spec, Register with the same addresses, a
Heartbeat), so a client may retry one whose outcome it did not learn: a proposal that timed out
may still commit, and committing it twice changes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

import grpc

from cluster.errors import NotLeader, ProposalDropped, RaftError
from cluster.types import NO_NODE, GroupId, NodeId
from dns import codec
from dns.clustermap import ClusterMap, NodeAddress
from dns.state import (
    Announce,
    Applied,
    Bootstrap,
    BootstrapSpec,
    ClusterState,
    Command,
    DiscoveryState,
    Heartbeat,
    LeaderReport,
    Register,
    Rejected,
    Rejection,
    encode_command,
)
from proto import discovery_pb2 as pb
from proto import discovery_pb2_grpc as pb_grpc
from shards.placement import Placement

log = logging.getLogger(__name__)

DISCOVERY_GROUP = GroupId(0)
"""The discovery replicas form one Raft group, always group 0 of their own node hosts."""
LEADER_METADATA_KEY = "x-leader"
"""Trailing metadata of a not-leader FAILED_PRECONDITION: the discovery leader's public address,
or "" when this replica does not know it."""
DEFAULT_LEASE_MS = 3000
DEFAULT_WRITE_TIMEOUT = 5.0
MIN_EPOCH_WAIT = 1.0
"""How long a replica whose map is older than a GetMap's ``min_epoch`` waits to catch up."""


def wall_ms() -> int:
    return int(time.time() * 1000)


class ReplicatedLog(Protocol):
    """What the service needs of the Raft runtime (``cluster.host.NodeHost`` fits)."""

    async def propose(self, group: GroupId, data: bytes, timeout: float) -> object: ...

    async def read_index(self, group: GroupId, timeout: float) -> None: ...

    def leader(self, group: GroupId) -> NodeId: ...


# ---- errors ----------------------------------------------------------------------------------


class DiscoveryError(Exception):
    """Base of the errors the service raises on purpose."""


class NotDiscoveryLeader(DiscoveryError):
    """A write reached a follower. ``hint`` is the leader's public address, if known."""

    def __init__(self, hint: str | None) -> None:
        super().__init__(
            f"not the discovery leader; try {hint}"
            if hint
            else "not the discovery leader (leader unknown: try another discovery replica)"
        )
        self.hint = hint


class CommandRefused(DiscoveryError):
    """The state machine refused the command (same answer on every replica)."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(rejected.detail)
        self.reason = rejected.reason


class NoQuorum(DiscoveryError):
    """The write did not commit in time: the discovery group has no working majority, or lost
    its leader mid-write. The write may still commit later; retrying is safe."""


class DeadlineExceeded(DiscoveryError):
    """The caller's deadline ran out first."""


class EpochNotReached(DiscoveryError):
    """The leader itself has no map as new as the requested ``min_epoch``."""


# ---- the service -----------------------------------------------------------------------------


class DiscoveryService:
    """One discovery replica's request handling. Runs in the node host's event loop."""

    def __init__(
        self,
        replica_id: NodeId,
        log: ReplicatedLog,
        state: DiscoveryState,
        *,
        public_addr: str,
        lease_ms: int = DEFAULT_LEASE_MS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.replica_id = replica_id
        self.public_addr = public_addr
        self.lease_ms = lease_ms
        self.write_timeout = write_timeout
        self._log = log
        self._sm = state
        self._clock = clock
        self._changed = asyncio.Event()
        self._announcing: asyncio.Task[None] | None = None
        state.set_listener(self._on_change)

    @property
    def state(self) -> ClusterState:
        return self._sm.state

    def current_map(self) -> ClusterMap:
        """This replica's map, with ``up`` computed now by this replica's clock."""
        return self._sm.state.view(self._clock(), self.lease_ms)

    def leader_hint(self) -> str | None:
        """The discovery leader's public address as far as this replica knows."""
        leader = self._log.leader(DISCOVERY_GROUP)
        if leader == NO_NODE:
            return None
        if leader == self.replica_id:
            return self.public_addr
        return self._sm.state.endpoint(leader)

    # ---- writes ------------------------------------------------------------------------------

    async def bootstrap(self, spec: BootstrapSpec, timeout: float | None = None) -> ClusterMap:
        placement = Placement([n.id for n in spec.nodes], spec.groups, spec.rf)
        placements = tuple(placement.replicas(GroupId(g)) for g in range(spec.groups))
        await self._write(Bootstrap(spec, placements), timeout)
        return self.current_map()

    async def register(self, node: NodeAddress, timeout: float | None = None) -> ClusterMap:
        await self._write(Register(node, self._clock()), timeout)
        return self.current_map()

    async def heartbeat(
        self,
        node_id: NodeId,
        leaders: Sequence[LeaderReport] = (),
        timeout: float | None = None,
    ) -> int:
        """Renew ``node_id``'s lease, record its leader reports; the epoch afterwards."""
        applied = await self._write(Heartbeat(node_id, self._clock(), tuple(leaders)), timeout)
        return applied.epoch

    async def _write(self, cmd: Command, timeout: float | None) -> Applied:
        limit = self.write_timeout if timeout is None else min(timeout, self.write_timeout)
        try:
            result = await self._log.propose(DISCOVERY_GROUP, encode_command(cmd), limit)
        except NotLeader as exc:
            hint = None
            if exc.leader != NO_NODE:
                hint = self._sm.state.endpoint(exc.leader)
            raise NotDiscoveryLeader(hint) from None
        except TimeoutError:
            if timeout is not None and timeout <= self.write_timeout:
                raise DeadlineExceeded("the deadline expired before the write committed") from None
            raise NoQuorum(
                f"the write did not commit within {limit:.1f}s (no quorum?); retrying is safe"
            ) from None
        except ProposalDropped as exc:
            raise NoQuorum(f"the leader refused the write for now ({exc}); retry") from None
        except RaftError as exc:  # ProposalLost and the like: leadership changed mid-write
            raise NoQuorum(f"the write was lost to a leader change ({exc}); retry") from None
        if isinstance(result, Rejected):
            raise CommandRefused(result)
        if not isinstance(result, Applied):
            raise TypeError(f"discovery state machine returned {result!r}")
        return result

    # ---- reads -------------------------------------------------------------------------------

    async def get_map(self, min_epoch: int = 0, timeout: float | None = None) -> ClusterMap:
        """The local map, once it is at least at ``min_epoch`` (waiting briefly for it).

        One answer is never stale: "not bootstrapped". A replica that restarted or lagged may
        not have applied the bootstrap yet, and acting on an empty map hurts (a node refusing to
        start, an operator bootstrapping again), so that answer comes only after a
        linearizable read (ReadIndex) confirmed it."""
        if self._sm.state.epoch < min_epoch:
            wait = MIN_EPOCH_WAIT if timeout is None else min(timeout, MIN_EPOCH_WAIT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while self._sm.state.epoch < min_epoch:
                        self._changed.clear()
                        await self._changed.wait()
        epoch = self._sm.state.epoch
        if epoch < min_epoch:
            leader = self._log.leader(DISCOVERY_GROUP)
            if leader == self.replica_id:
                raise EpochNotReached(f"epoch {min_epoch} does not exist yet (current: {epoch})")
            raise NotDiscoveryLeader(self.leader_hint())
        if self._sm.state.bootstrap is None:
            await self._confirm(timeout)
        return self.current_map()

    async def _confirm(self, timeout: float | None) -> None:
        """Wait until this replica has applied everything committed before now (ReadIndex)."""
        limit = self.write_timeout if timeout is None else min(timeout, self.write_timeout)
        try:
            await self._log.read_index(DISCOVERY_GROUP, limit)
        except NotLeader:
            raise NotDiscoveryLeader(self.leader_hint()) from None
        except TimeoutError:
            if timeout is not None and timeout <= self.write_timeout:
                raise DeadlineExceeded("the deadline expired before the read") from None
            raise NoQuorum(f"no quorum confirmed the read within {limit:.1f}s") from None
        except RaftError as exc:
            raise NoQuorum(f"the read failed ({exc}); retry") from None

    def _on_change(self, state: ClusterState) -> None:
        del state
        self._changed.set()

    # ---- leadership of the discovery group ---------------------------------------------------

    def on_leadership(self, group: GroupId, leader: NodeId, term: int) -> None:
        """Host callback: when this replica becomes the discovery leader it records its public
        address in the map, so followers can point clients at it."""
        del term
        if group != DISCOVERY_GROUP or leader != self.replica_id:
            return
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        delay = 0.05
        while (
            self._log.leader(DISCOVERY_GROUP) == self.replica_id
            and self._sm.state.endpoint(self.replica_id) != self.public_addr
        ):
            try:
                await self._write(Announce(self.replica_id, self.public_addr), None)
            except NotDiscoveryLeader:
                return
            except DiscoveryError as exc:
                log.warning("announcing discovery replica %s failed: %s", self.replica_id, exc)
                await asyncio.sleep(delay)  # back-off before retrying, not synchronisation
                delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        task, self._announcing = self._announcing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- the gRPC servicer -----------------------------------------------------------------------

_REJECTION_STATUS = {
    Rejection.NOT_BOOTSTRAPPED: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.BOOTSTRAP_CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.UNKNOWN_NODE: grpc.StatusCode.NOT_FOUND,
    Rejection.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
}

Context = grpc.aio.ServicerContext[object, object]


class DiscoveryServicer(pb_grpc.DiscoveryServicer):
    """Convert, validate, hand off; every decision is the service's."""

    def __init__(self, service: DiscoveryService) -> None:
        self._service = service

    async def Bootstrap(self, request: pb.BootstrapRequest, context: Context) -> pb.ClusterMap:
        try:
            spec = codec.bootstrap_from_proto(request)
            result = await self._service.bootstrap(spec, context.time_remaining())
        except (codec.InvalidField, DiscoveryError) as exc:
            await self._abort(context, exc)
        return codec.map_to_proto(result)

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.ClusterMap:
        try:
            node = codec.register_from_proto(request)
            result = await self._service.register(node, context.time_remaining())
        except (codec.InvalidField, DiscoveryError) as exc:
            await self._abort(context, exc)
        return codec.map_to_proto(result)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        try:
            node_id, leaders = codec.heartbeat_from_proto(request)
            epoch = await self._service.heartbeat(node_id, leaders, context.time_remaining())
        except (codec.InvalidField, DiscoveryError) as exc:
            await self._abort(context, exc)
        return pb.HeartbeatResponse(epoch=epoch)

    async def GetMap(self, request: pb.GetMapRequest, context: Context) -> pb.ClusterMap:
        try:
            result = await self._service.get_map(request.min_epoch, context.time_remaining())
        except DiscoveryError as exc:
            await self._abort(context, exc)
        return codec.map_to_proto(result)

    async def _abort(self, context: Context, exc: Exception) -> NoReturn:
        code, metadata = status_of(exc)
        await context.abort(code, str(exc), trailing_metadata=metadata)


def status_of(exc: Exception) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The gRPC status (and trailing metadata) that says what ``exc`` means."""
    if isinstance(exc, codec.InvalidField):
        return grpc.StatusCode.INVALID_ARGUMENT, ()
    if isinstance(exc, NotDiscoveryLeader):
        # Always present on a not-leader answer (empty when the leader is unknown), so a client
        # tells it apart from the other FAILED_PRECONDITIONs (e.g. a conflicting bootstrap).
        return grpc.StatusCode.FAILED_PRECONDITION, ((LEADER_METADATA_KEY, exc.hint or ""),)
    if isinstance(exc, CommandRefused):
        return _REJECTION_STATUS[exc.reason], ()
    if isinstance(exc, NoQuorum):
        return grpc.StatusCode.UNAVAILABLE, ()
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, ()
    if isinstance(exc, EpochNotReached):
        return grpc.StatusCode.OUT_OF_RANGE, ()
    return grpc.StatusCode.INTERNAL, ()
