"""One discovery replica as a process: its Raft group, its two gRPC ports, its data directory.

Wiring only (the decisions live in ``dns.service`` and ``dns.state``):

- a ``LogStore`` in ``data_dir`` (its identity file ties the directory to this replica id and to
  discovery, so pointing a replica at another node's or a shard node's directory fails loudly);
- a ``NodeHost`` hosting discovery's Raft group (group 0, voters = every ``--peers`` id), whose
  messages travel over the gRPC transport on the **internal** port;
- the **public** port serving Discovery, grpc.health.v1 and reflection.

On restart the replica rebuilds the map from its own log: the state machine is in memory, so
Raft hands it the latest snapshot and replays the entries after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.errors import StorageError
from cluster.host import NodeHost
from cluster.storage import LogStore
from cluster.transport import SERVER_OPTIONS as TRANSPORT_SERVER_OPTIONS
from cluster.transport import GrpcTransport, add_transport_servicer
from cluster.types import NodeId
from dns.service import (
    DEFAULT_LEASE_MS,
    DEFAULT_WRITE_TIMEOUT,
    DISCOVERY_GROUP,
    DiscoveryService,
    DiscoveryServicer,
)
from dns.state import DiscoveryState
from proto import discovery_pb2, discovery_pb2_grpc

log = logging.getLogger(__name__)

# grpc-stubs knows only the synchronous health servicer; the asyncio one lives in ``health.aio``.
AioHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

STORE_CLUSTER_ID = "raftchat-discovery"
"""The identity written into a discovery data directory (shard nodes use their cluster's id)."""
SERVICE_NAME = discovery_pb2.DESCRIPTOR.services_by_name["Discovery"].full_name
SERVER_OPTIONS = (
    # gRPC sets SO_REUSEPORT by default, which lets a second process "bind" a port already in
    # use and silently share it. A replica must own its ports: fail instead.
    ("grpc.so_reuseport", 0),
)


class StartupError(Exception):
    """The replica cannot start; the message says why in terms an operator can act on."""


@dataclass(frozen=True)
class DiscoveryConfig:
    replica_id: NodeId
    listen: str
    """host:port of the public Discovery service (port 0: any free port)."""
    internal_listen: str
    """host:port of the Raft transport between discovery replicas."""
    peers: Mapping[NodeId, str]
    """Internal address of every discovery replica, this one included (1 or 3 replicas)."""
    data_dir: Path
    advertise: str | None = None
    """Public address clients are sent to (default: ``listen`` with the bound port)."""
    lease_ms: int = DEFAULT_LEASE_MS
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    fsync: bool = True
    tick_interval: float = 0.05
    compact_after: int = 1000
    """Applied entries between snapshots. The map is small, so snapshots are cheap and a low
    threshold keeps the log (mostly heartbeats) and a restart's replay short."""
    raft_config: Mapping[str, int | bool] = field(default_factory=dict)
    """Overrides of ``cluster.config.Config`` fields (e.g. election_ticks) for the group."""

    def __post_init__(self) -> None:
        if self.replica_id <= 0:
            raise ValueError(f"replica id must be positive, got {self.replica_id}")
        if self.replica_id not in self.peers:
            raise ValueError(
                f"replica {self.replica_id} is not among the peers {sorted(self.peers)}"
            )
        if any(p <= 0 for p in self.peers):
            raise ValueError(f"peer ids must be positive: {sorted(self.peers)}")
        if (
            self.lease_ms < 1
            or self.write_timeout <= 0
            or self.tick_interval <= 0
            or self.compact_after < 1
        ):
            raise ValueError(
                "lease_ms, write_timeout, tick_interval and compact_after must be positive"
            )


class DiscoveryServer:
    """Start with :meth:`start`, stop with :meth:`stop` (both idempotent-safe to await once)."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self.state = DiscoveryState()
        self._store: LogStore | None = None
        self._host: NodeHost | None = None
        self._service: DiscoveryService | None = None
        self._internal: grpc.aio.Server | None = None
        self._public: grpc.aio.Server | None = None
        self._health: Any = None
        self.public_addr = ""
        self.internal_addr = ""

    @property
    def service(self) -> DiscoveryService:
        assert self._service is not None, "not started"
        return self._service

    @property
    def host(self) -> NodeHost:
        assert self._host is not None, "not started"
        return self._host

    async def start(self) -> None:
        cfg = self.config
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "discovery replica %s serving on %s (internal %s), data in %s",
            cfg.replica_id,
            self.public_addr,
            self.internal_addr,
            cfg.data_dir,
        )

    async def _start(self) -> None:
        cfg = self.config
        try:
            self._store = LogStore.open(
                cfg.data_dir,
                node_id=cfg.replica_id,
                cluster_id=STORE_CLUSTER_ID,
                fsync=cfg.fsync,
            )
        except (StorageError, OSError) as exc:
            raise StartupError(f"cannot use data dir {cfg.data_dir}: {exc}") from exc
        others = {n: a for n, a in cfg.peers.items() if n != cfg.replica_id}
        transport = GrpcTransport(cfg.replica_id, others)
        # From here on the host owns the store (and the transport): host.stop() closes both.
        self._host = host = NodeHost(
            cfg.replica_id,
            self._store,
            transport,
            tick_interval=cfg.tick_interval,
            config_defaults=cfg.raft_config,
            compact_after=cfg.compact_after,
        )
        host.add_group(DISCOVERY_GROUP, tuple(sorted(cfg.peers)), self.state)

        self._internal = grpc.aio.server(options=SERVER_OPTIONS + TRANSPORT_SERVER_OPTIONS)
        add_transport_servicer(self._internal, host)
        self.internal_addr = _bind(self._internal, cfg.internal_listen, "--internal-listen")

        self._public = grpc.aio.server(options=SERVER_OPTIONS)
        self.public_addr = _bind(self._public, cfg.listen, "--listen")
        self._service = service = DiscoveryService(
            cfg.replica_id,
            host,
            self.state,
            public_addr=cfg.advertise or self.public_addr,
            lease_ms=cfg.lease_ms,
            write_timeout=cfg.write_timeout,
        )
        discovery_pb2_grpc.add_DiscoveryServicer_to_server(  # type: ignore[no-untyped-call]
            DiscoveryServicer(service), self._public
        )
        self._health = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._public)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._public
        )
        host.on_leadership(service.on_leadership)

        await host.start()
        await self._internal.start()
        await self._public.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 0.5) -> None:
        """Stop serving, then stop Raft and close the store (which syncs it)."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for server in (self._public, self._internal):
            if server is not None:
                await server.stop(grace)
        self._public = self._internal = None
        if self._service is not None:
            await self._service.close()
        store, self._store = self._store, None
        if self._host is not None:
            host, self._host = self._host, None
            await host.stop()  # closes the transport and the store
        elif store is not None:
            with contextlib.suppress(StorageError):
                store.close()

    async def wait_for_termination(self) -> None:
        if self._public is not None:
            await self._public.wait_for_termination()


def _bind(server: grpc.aio.Server, address: str, flag: str) -> str:
    """Bind ``address``; the address actually bound (port 0 becomes the chosen port)."""
    host, _, _ = address.rpartition(":")
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(
            f"{flag} {address}: cannot listen there (port in use, or not a local address)"
        ) from exc
    if port == 0:
        raise StartupError(f"{flag} {address}: cannot listen there")
    return f"{host}:{port}"


HOST_CHECK_SECONDS = 0.5


class ReplicaFailed(Exception):
    """The replica's Raft host stopped on an error while serving."""


async def serve(config: DiscoveryConfig, stop: asyncio.Event) -> None:
    """Run a replica until ``stop`` is set (used by ``python -m dns``)."""
    server = DiscoveryServer(config)
    await server.start()
    try:
        print(
            f"discovery replica {config.replica_id} serving on {server.public_addr} "
            f"(internal {server.internal_addr}, {len(config.peers)} replica(s)), "
            f"data in {config.data_dir}",
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOST_CHECK_SECONDS)
            if not server.host.running:
                # A failed fsync or state machine stopped the host: a replica that kept
                # answering from frozen state would mislead everyone. Exit so it is restarted.
                raise ReplicaFailed(f"discovery replica {config.replica_id}: its Raft host stopped")
    finally:
        await server.stop()
