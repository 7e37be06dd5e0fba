"""A shard node: one process hosting replicas of many Raft groups (``python -m shards``).

Start-up, in order, each step failing loudly with a clear message and a non-zero exit:

1. learn the cluster map: register with discovery, or — when discovery is unreachable — fall
   back to the map cached in the data dir by an earlier run (nodes keep serving without it);
2. open the node's durable log (``LogStore`` refuses a data dir of another node or cluster);
3. bind the internal (Raft) and public ports (a port in use is an error, not a retry loop);
4. host every group the placement gives this node, each with its own state machine database;
5. serve, heartbeat discovery with the leaders this node sees, re-register when it returns.

A node runs one application on its groups: ``chat`` (the default: ``shards.chat.app``, the
public ``Chat`` API and the internal ``ChatInternal`` calls) or ``log``, the replicated
append-only log of ``cluster.statemachine.LogStateMachine`` served through ``ShardLog``, which
the cluster's own tests and ``cluster bench`` use to exercise Raft without chat on top.
A data dir holds the state of the application it was created with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.errors import DataDirMismatch, StorageError
from cluster.host import NodeHost
from cluster.statemachine import GroupStateMachine, LogStateMachine
from cluster.storage import LogStore
from cluster.streamlink import LinkServer
from cluster.transport import SERVER_OPTIONS as TRANSPORT_SERVER_OPTIONS
from cluster.transport import GrpcTransport, add_transport_servicer
from cluster.types import GroupId, NodeId
from dns.client import DiscoveryClient, DiscoveryClientError
from dns.clustermap import ClusterMap, NodeAddress
from dns.codec import map_from_proto, map_to_proto
from dns.server import AioHealthServicer
from dns.state import LeaderReport
from proto import chat_pb2, discovery_pb2, node_pb2, node_pb2_grpc
from shards.chat.app import ChatApp
from shards.chat.reaper import DEFAULT_GRACE_SECONDS
from shards.log_service import NodeAdminService, ShardLogService

log = logging.getLogger("shards.node")

MAP_CACHE = "cluster-map.pb"
OWN_PORT: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)
"""gRPC sets SO_REUSEPORT by default, letting a second process silently share a port in use."""
HEARTBEAT_SECONDS = 1.0


class NodeStartError(Exception):
    """The node cannot start as configured; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class NodeOptions:
    node_id: NodeId
    listen: str
    internal_listen: str
    advertise: str
    internal_advertise: str
    discovery: tuple[str, ...]
    data_dir: Path
    fsync: bool = True
    tick_ms: int = 50
    election_ticks: int = 6
    """Election timeout in ticks (randomised up to twice that); see ``--election-ticks``."""
    snapshot_entries: int = 10_000
    app: str = "chat"
    """``chat`` or ``log`` (see the module docstring)."""
    send_rate: float = 200.0
    send_burst: float = 400.0
    link_port: int = 0
    """Port of the plain TCP Raft link (cluster.streamlink) on the internal host; 0: any."""
    route_grace: float = DEFAULT_GRACE_SECONDS
    """Seconds a node must be down before its chat session routes are dropped (chat.reaper)."""


async def learn_map(opts: NodeOptions, client: DiscoveryClient) -> ClusterMap:
    """Register with discovery; without it, the map this node cached last time."""
    me = NodeAddress(opts.node_id, opts.advertise, opts.internal_advertise)
    cache = opts.data_dir / MAP_CACHE
    try:
        cmap = await client.register(me, timeout=10.0)
    except DiscoveryClientError as exc:
        if exc.code is grpc.StatusCode.NOT_FOUND:
            raise NodeStartError(f"discovery does not know node {opts.node_id}: {exc}") from exc
        if not cache.exists():
            raise NodeStartError(
                f"discovery unreachable ({exc}) and no cached map in {opts.data_dir}"
            ) from exc
        log.warning("discovery unreachable (%s); starting from the cached map", exc)
        msg = discovery_pb2.ClusterMap()
        msg.ParseFromString(cache.read_bytes())
        return map_from_proto(msg)
    if not cmap.bootstrapped:
        raise NodeStartError("discovery has no cluster yet: bootstrap it first (cluster up does)")
    save_map(opts.data_dir, cmap)
    return cmap


def save_map(data_dir: Path, cmap: ClusterMap) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (MAP_CACHE + ".tmp")
    tmp.write_bytes(map_to_proto(cmap).SerializeToString())
    tmp.replace(data_dir / MAP_CACHE)


APP_FILE = "app"


def check_app(data_dir: Path, app: str) -> None:
    """A data dir serves the application it was created with: a chat node on a ``log`` data
    dir (or the reverse) would apply the other's entries as garbage, so it is refused."""
    marker = data_dir / APP_FILE
    if marker.exists():
        held = marker.read_text().strip()
        if held != app:
            raise NodeStartError(
                f"data dir {data_dir} holds a {held!r} node's data; start it with --app {held}"
            )
        return
    marker.write_text(app + "\n")


def _host_of(address: str) -> str:
    """The host part of ``host:port`` (brackets of an IPv6 literal removed)."""
    return address.rpartition(":")[0].strip("[]")


def _bind(server: grpc.aio.Server, address: str, what: str) -> None:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise NodeStartError(f"cannot listen on {address} ({what}): {exc}") from exc
    if port == 0:
        raise NodeStartError(f"cannot listen on {address} ({what}): port in use?")


class ShardNode:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.client = DiscoveryClient(list(opts.discovery))
        self.cmap: ClusterMap | None = None
        self.host: NodeHost | None = None
        self.store: LogStore | None = None
        self._servers: list[grpc.aio.Server] = []
        self.link: LinkServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._leaders_changed = asyncio.Event()
        self.failed = asyncio.Event()
        """Set when the host stopped on an error (e.g. a failed fsync): the node must not go
        on looking healthy, so ``serve`` exits non-zero and a supervisor restarts it."""
        self.machines: dict[GroupId, LogStateMachine] = {}
        """The groups' state machines in ``log`` mode (ShardLog reads them)."""
        self.chat: ChatApp | None = None

    async def start(self) -> None:
        opts = self.opts
        cmap = self.cmap = await learn_map(opts, self.client)
        if cmap.node(opts.node_id) is None:
            raise NodeStartError(f"node {opts.node_id} is not in cluster {cmap.cluster_id}")
        try:
            self.store = LogStore.open(
                opts.data_dir / "raft",
                node_id=opts.node_id,
                cluster_id=cmap.cluster_id,
                fsync=opts.fsync,
            )
        except (DataDirMismatch, StorageError) as exc:
            raise NodeStartError(f"data dir {opts.data_dir}: {exc}") from exc
        check_app(opts.data_dir, opts.app)
        if self.store.recovery.reason:
            log.warning("log recovery cut a damaged tail: %s", self.store.recovery)
        peers = {n.id: n.internal_addr for n in cmap.nodes if n.id != opts.node_id}
        transport = GrpcTransport(opts.node_id, peers)
        host = self.host = NodeHost(
            opts.node_id,
            self.store,
            transport,
            tick_interval=opts.tick_ms / 1000,
            compact_after=opts.snapshot_entries,
            config_defaults={"election_ticks": opts.election_ticks},
        )
        # Peers send Raft batches over a plain TCP link (cluster.streamlink) on a free port of
        # the internal host; they learn it from RaftTransport.Link on the internal port.
        self.link = LinkServer(host.deliver)
        try:
            link_port = await self.link.start(_host_of(opts.internal_listen), opts.link_port)
        except OSError as exc:
            raise NodeStartError(
                f"cannot listen for the Raft link on {_host_of(opts.internal_listen)}:"
                f"{opts.link_port} (--link-port): {exc.strerror or exc}"
            ) from exc
        link_address = f"{_host_of(opts.internal_advertise)}:{link_port}"
        internal = grpc.aio.server(options=OWN_PORT + TRANSPORT_SERVER_OPTIONS)
        add_transport_servicer(internal, host.deliver, link_address=link_address)
        _bind(internal, opts.internal_listen, "internal Raft port")
        public = grpc.aio.server(options=OWN_PORT)
        _bind(public, opts.listen, "public port")
        hosted: list[GroupId] = []
        db_dir = opts.data_dir / "groups"
        db_dir.mkdir(parents=True, exist_ok=True)
        if opts.app == "chat":
            self.chat = ChatApp(
                opts.node_id,
                host,
                lambda: self.cmap,
                fresh_map=lambda: self.client.get_map(timeout=2.0),
                fsync=opts.fsync,
                send_rate=opts.send_rate,
                send_burst=opts.send_burst,
                route_grace=opts.route_grace,
            )
        for placement in cmap.groups:
            if opts.node_id in placement.replicas:
                sm: GroupStateMachine
                if self.chat is not None:
                    sm = self.chat.state_machine(
                        placement.group, db_dir / f"chat-{placement.group}.sqlite"
                    )
                else:
                    log_sm = LogStateMachine(db_dir / f"group-{placement.group}.sqlite")
                    self.machines[placement.group] = sm = log_sm
                try:
                    host.add_group(placement.group, placement.replicas, sm)
                except DataDirMismatch as exc:
                    raise NodeStartError(f"data dir {opts.data_dir}: {exc}") from exc
                hosted.append(placement.group)
                fresh = host.group_status(placement.group).term == 0
                if fresh and placement.replicas[0] == opts.node_id:
                    # A new group: its first replica in ring order stands at once, so the first
                    # elections take one round trip and leaders spread like the placement.
                    host.campaign(placement.group)
        services = [node_pb2.DESCRIPTOR.services_by_name["NodeAdmin"].full_name]
        if self.chat is not None:
            self.chat.add_servicers(public, internal)
            services.append(chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name)
        else:
            node_pb2_grpc.add_ShardLogServicer_to_server(ShardLogService(self), public)  # type: ignore[no-untyped-call]
            services.append(node_pb2.DESCRIPTOR.services_by_name["ShardLog"].full_name)
        node_pb2_grpc.add_NodeAdminServicer_to_server(NodeAdminService(self), public)  # type: ignore[no-untyped-call]
        health_servicer = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, public)
        names = (*services, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, public)
        host.on_leadership(lambda group, leader, term: self._leaders_changed.set())
        await host.start()
        await internal.start()
        await public.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._servers = [public, internal]
        if self.chat is not None:
            self.chat.start()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        log.info(
            "node %s serving %s (internal %s), groups %s",
            opts.node_id,
            opts.listen,
            opts.internal_listen,
            hosted,
        )

    async def _heartbeat_loop(self) -> None:
        """Renew the lease and report leaders; on a newer epoch refresh the cached map."""
        assert self.host is not None
        me = NodeAddress(self.opts.node_id, self.opts.advertise, self.opts.internal_advertise)
        registered = True
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leaders_changed.wait(), HEARTBEAT_SECONDS)
            self._leaders_changed.clear()
            if not self.host.running:
                log.error("the node host stopped on an error; shutting the node down")
                self.failed.set()
                return
            reports = [
                LeaderReport(GroupId(s.group), NodeId(s.leader), s.term)
                for s in self.host.status()
                if s.leader
            ]
            try:
                if not registered:
                    self.cmap = await self.client.register(me, timeout=2.0)
                    registered = True
                epoch = await self.client.heartbeat(self.opts.node_id, reports, timeout=2.0)
                if self.cmap is None or epoch > self.cmap.epoch:
                    self.cmap = await self.client.get_map(timeout=2.0)
                    save_map(self.opts.data_dir, self.cmap)
            except DiscoveryClientError as exc:
                if registered:
                    log.warning("discovery unreachable (%s); serving from the cached map", exc)
                registered = False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            await server.stop(grace=0.5)
        if self.link is not None:
            await self.link.close()
        if self.chat is not None:
            await self.chat.stop()
        if self.host is not None:
            await self.host.stop()
        await self.client.close()


async def serve(opts: NodeOptions) -> int:
    node = ShardNode(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except NodeStartError as exc:
        log.error("%s", exc)
        await node.stop()
        return 2
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(node.failed.wait())
    await asyncio.wait((stopped, failed), return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, failed):
        task.cancel()
    log.info("node %s stopping", opts.node_id)
    await node.stop()
    return 1 if node.failed.is_set() else 0
