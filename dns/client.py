"""``DiscoveryClient``: how nodes and clients talk to discovery (asyncio, grpc.aio).

Any discovery replica answers reads; writes must reach the leader. The client therefore keeps a
list of endpoints, starts with the one that answered last, follows the ``x-leader`` hint of a
FAILED_PRECONDITION answer, and moves on to the next endpoint when one is down (UNAVAILABLE), too
slow (its per-attempt deadline), or a follower that does not know the leader. Endpoints it learns
from a map's ``discovery`` list join the rotation, so one seed address is enough.

Every write is idempotent (see ``dns.service``), which is what makes retrying one on another
replica after an unclear outcome safe. The last map seen is cached (``cached_map``): a caller that
only needs *a* map, e.g. to route a request, reads it without a round trip and refreshes it when a
node says NOT_LEADER / WRONG_GROUP or a heartbeat reports a newer epoch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar, cast

import grpc

from cluster.types import NodeId
from dns import codec
from dns.clustermap import ClusterMap, NodeAddress
from dns.service import LEADER_METADATA_KEY
from dns.state import BootstrapSpec, LeaderReport
from proto import discovery_pb2 as pb
from proto import discovery_pb2_grpc as pb_grpc

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Overall budget of one client call, across every endpoint and retry."""
ATTEMPT_TIMEOUT = 3.0
"""Budget of one attempt on one endpoint, so a hung replica cannot eat the whole call."""
CHANNEL_OPTIONS = (
    # Reconnect to a restarted replica within about a second (gRPC's default backoff grows to
    # two minutes, which would keep a recovered replica out of the rotation that long).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class DiscoveryClientError(Exception):
    """Discovery answered with an error that retrying elsewhere would not fix."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class DiscoveryUnavailable(DiscoveryClientError):
    """No discovery replica could serve the call within its deadline."""


class DiscoveryClient:
    """Talks to a discovery service given one or more of its replicas' public addresses."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one discovery endpoint is required")
        self._endpoints: list[str] = []
        for ep in endpoints:
            self._add_endpoint(codec.check_address("endpoints", ep))
        self._preferred = 0
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.DiscoveryStub] = {}
        self._cached: ClusterMap | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint known so far (seeds first, then those learned from maps)."""
        return tuple(self._endpoints)

    @property
    def cached_map(self) -> ClusterMap | None:
        """The newest map any call returned (None before the first)."""
        return self._cached

    # ---- the API -----------------------------------------------------------------------------

    async def get_map(self, min_epoch: int = 0, *, timeout: float | None = None) -> ClusterMap:
        """A map at least as new as ``min_epoch`` and as the cached one, from any replica (it
        may lag the leader, but this client never sees the map go back in time)."""
        if self._cached is not None:
            min_epoch = max(min_epoch, self._cached.epoch)
        req = pb.GetMapRequest(min_epoch=min_epoch)
        msg = await self._call(lambda stub, t: stub.GetMap(req, timeout=t), timeout)
        return self._remember(codec.map_from_proto(msg))

    async def bootstrap(
        self,
        cluster_id: str,
        nodes: Sequence[NodeAddress],
        groups: int,
        rf: int,
        *,
        timeout: float | None = None,
    ) -> ClusterMap:
        """Create the cluster map (idempotent; a different existing bootstrap is an error)."""
        spec = BootstrapSpec(cluster_id, tuple(nodes), groups, rf)
        req = codec.bootstrap_to_proto(spec)
        msg = await self._call(lambda stub, t: stub.Bootstrap(req, timeout=t), timeout)
        return self._remember(codec.map_from_proto(msg))

    async def register(self, node: NodeAddress, *, timeout: float | None = None) -> ClusterMap:
        """Announce ``node``'s current addresses (and renew its lease)."""
        req = pb.RegisterRequest(
            node_id=node.id, public_addr=node.public_addr, internal_addr=node.internal_addr
        )
        msg = await self._call(lambda stub, t: stub.Register(req, timeout=t), timeout)
        return self._remember(codec.map_from_proto(msg))

    async def heartbeat(
        self,
        node_id: NodeId,
        leaders: Sequence[LeaderReport] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        """Renew ``node_id``'s lease and report the leaders it sees; the map's epoch after it
        (refresh the cached map when that is newer)."""
        req = pb.HeartbeatRequest(node_id=node_id, leaders=codec.leader_reports_to_proto(leaders))
        msg = await self._call(lambda stub, t: stub.Heartbeat(req, timeout=t), timeout)
        return int(msg.epoch)

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close(None)

    async def __aenter__(self) -> DiscoveryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- the retry loop ----------------------------------------------------------------------

    async def _call(
        self,
        attempt: Callable[[pb_grpc.DiscoveryStub, float], Awaitable[T]],
        timeout: float | None,
    ) -> T:
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        last = "no attempt made"
        backoff = 0.05
        while True:
            # One pass over every endpoint, starting with the preferred one. A leader hint jumps
            # the queue: it is tried next, within the same pass.
            order = self._rotation()
            tried: set[str] = set()
            while order:
                endpoint = order.pop(0)
                if endpoint in tried:
                    continue
                tried.add(endpoint)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DiscoveryUnavailable(grpc.StatusCode.DEADLINE_EXCEEDED, last)
                try:
                    result = await attempt(
                        self._stub(endpoint), min(remaining, self._attempt_timeout)
                    )
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    last = f"{endpoint}: {code.name}: {err.details()}"
                    hint = _leader_hint(err)
                    if code is grpc.StatusCode.FAILED_PRECONDITION and hint is not None:
                        if hint and hint not in tried:
                            self._add_endpoint(hint)
                            order.insert(0, hint)
                        continue
                    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        continue
                    raise DiscoveryClientError(code, err.details() or "") from None
                self._preferred = self._endpoints.index(endpoint)
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DiscoveryUnavailable(grpc.StatusCode.UNAVAILABLE, last)
            # Every replica failed this pass (e.g. mid-election): back off, then try again.
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.5)

    def _rotation(self) -> list[str]:
        n = len(self._endpoints)
        return [self._endpoints[(self._preferred + i) % n] for i in range(n)]

    def _add_endpoint(self, endpoint: str) -> None:
        if endpoint not in self._endpoints:
            self._endpoints.append(endpoint)

    def _stub(self, endpoint: str) -> pb_grpc.DiscoveryStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
            self._channels[endpoint] = channel
            stub = pb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
            self._stubs[endpoint] = stub
        return stub

    def _remember(self, m: ClusterMap) -> ClusterMap:
        for ep in m.discovery:
            self._add_endpoint(ep.public_addr)
        if self._cached is None or m.epoch >= self._cached.epoch:
            self._cached = m
        return m


def _leader_hint(err: grpc.aio.AioRpcError) -> str | None:
    """The ``x-leader`` trailing metadata: None if absent (not a not-leader answer), "" if the
    replica is not the leader but does not know who is."""
    # grpc-stubs types this as grpc's sync metadata; at run time it is grpc.aio.Metadata, which
    # iterates as (key, value) pairs.
    metadata = cast("Iterable[tuple[str, str | bytes]]", err.trailing_metadata() or ())
    for key, value in metadata:
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return None
