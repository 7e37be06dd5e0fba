"""A small test-only async client of the public ``Chat`` API, and a fixture that runs chat
clusters as real processes.

Why not the client library (``clients/``): these tests check the server's promises
(``proto/chat.proto``, DESIGN.md section 4) from the outside, so they speak the generated stubs
directly and see every status code, trailing metadata item and frame as the wire carries it.

- :class:`ChatCluster` owns the processes of one cluster (``LocalCluster``: discovery + chat
  nodes on free loopback ports) and reads the replicas' chat databases off the disk.
- :class:`ChatKit` holds one ``grpc.aio`` channel per node: accounts, unary calls with the bearer
  token, sends retried with the same idempotency key, history paging, leaders by ServerStatus.
- :class:`SessionProbe` opens a ``Session`` stream on one node, collects every pushed frame in a
  background task, checks each conversation's pushes run cursor+1, cursor+2, ... and lets a test
  await a condition (``wait_for``) instead of sleeping.

Everything that waits does so on an event or by polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.launcher import ClusterSpec, LocalCluster
from cluster.types import NodeId
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc as pb_grpc
from shards.chat.service import conversation_key
from shards.placement import Placement

T = TypeVar("T")

PASSWORD: Final = "correct-horse-battery"
CHANNEL_OPTIONS: Final = (
    # Reach a restarted node within ~a second, not after gRPC's default minutes of backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""What a client retries with the same idempotency key (chat.proto: UNAVAILABLE, and
DEADLINE_EXCEEDED after which the send may still commit). A dead node's connection error is
UNAVAILABLE too."""
CALL_TIMEOUT: Final = 10.0
"""Per attempt; the server's own routing budget is 5 s, so an answer comes before this."""
NO_RATE_LIMIT: Final = ("--send-rate", "0")
EOF: Final[object] = getattr(grpc.aio, "EOF")  # noqa: B009 - missing from grpc-stubs

Metadata = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------------------------
# Waiting.
# ---------------------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something other than None/False, within ``timeout``
    seconds; an exception from ``check`` counts as "not yet" (a node may still be starting)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await check()
            if value is not None and value is not False:
                return value
        except (grpc.RpcError, sqlite3.Error, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last}"
            )
        await asyncio.sleep(interval)  # poll interval


def trailing(err: grpc.RpcError) -> dict[str, str]:
    """An RPC error's trailing metadata as a dict (``x-field``, ``x-retry-after-ms``, ...)."""
    meta: Any = err.trailing_metadata() if isinstance(err, grpc.aio.AioRpcError) else ()
    return {str(k): v if isinstance(v, str) else v.decode() for k, v in (meta or ())}


# ---------------------------------------------------------------------------------------------
# The cluster's processes and disks.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message row as a replica's chat database holds it."""

    seq: int
    sender: str
    text: str
    hlc_ms: int
    hlc_counter: int
    idempotency_key: str


@dataclass
class ChatCluster:
    """One chat cluster (discovery + nodes as processes) in ``local.data_dir``."""

    local: LocalCluster

    @property
    def spec(self) -> ClusterSpec:
        return self.local.spec

    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.spec.nodes]

    def public(self, node: int) -> str:
        return next(n.public for n in self.spec.nodes if n.id == node)

    @property
    def placement(self) -> Placement:
        return Placement([NodeId(n) for n in self.node_ids], self.spec.groups, self.spec.rf)

    def group_of(self, conversation: str) -> int:
        """The group that owns a channel name or DM id (as the nodes compute it)."""
        return int(self.placement.group_for(conversation_key(conversation)))

    def replicas(self, group: int) -> list[int]:
        """The nodes hosting ``group``, as discovery recorded them at bootstrap."""
        cmap = self.local.get_map()
        return [int(n) for n in cmap.groups[group].replicas]

    def alive(self, node: int) -> bool:
        return self.local.node(node).alive

    def kill(self, node: int) -> None:
        """SIGKILL: no shutdown path runs, like a crash."""
        child = self.local.node(node)
        child.signal(signal.SIGKILL)
        if child.process is not None:
            child.process.wait(10)

    def restart_node(self, node: int) -> None:
        self.local.restart(f"node-{node}")

    def restart_all(self) -> None:
        """Stop every process, then start the cluster again from ``cluster.json`` in the same
        data dir (same identity and ports, all data kept)."""
        self.local.stop()
        again = LocalCluster.create_or_load(
            self.local.data_dir,
            nodes=len(self.spec.nodes),
            groups=self.spec.groups,
            rf=self.spec.rf,
            discovery_replicas=len(self.spec.discovery),
            base_port=0,
        )
        assert again.spec == self.spec, "cluster.json changed across a restart"
        again.node_args = self.local.node_args
        self.local = again  # the fixture stops whatever ``local`` is at the end
        again.start()
        again.wait_for_leaders()
        self.wait_serving()

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Until every live node answers its health check (discovery's map may name leaders
        before a restarted node listens again)."""
        deadline = time.monotonic() + timeout
        for ep in self.spec.nodes:
            if not self.alive(ep.id):
                continue
            with grpc.insecure_channel(ep.public) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    try:
                        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"node {ep.id} is not serving after {timeout:.0f} s")
                    time.sleep(0.05)  # poll interval

    def stop(self) -> None:
        self.local.stop()

    def database(self, node: int, group: int) -> Path:
        """Where node ``node`` keeps the applied chat state of ``group`` (shards/node.py)."""
        return self.local.data_dir / f"node-{node}" / "groups" / f"chat-{group}.sqlite"

    def stored_messages(self, node: int, conversation: str) -> list[StoredMessage]:
        """Every message of ``conversation`` in node ``node``'s replica, by seq, read from its
        database file, opened read-only."""
        path = self.database(node, self.group_of(conversation))
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute(
                "SELECT seq, sender, text, hlc_ms, hlc_counter, idempotency_key FROM messages"
                " WHERE conversation = ? ORDER BY seq",
                (conversation,),
            ).fetchall()
        finally:
            conn.close()
        return [StoredMessage(*row) for row in rows]


def start_chat_cluster(
    data_dir: Path,
    *,
    nodes: int = 3,
    groups: int = 4,
    rf: int = 3,
    node_args: tuple[str, ...] = NO_RATE_LIMIT,
    started: list[ChatCluster] | None = None,
) -> ChatCluster:
    """Start a chat cluster (chat is the nodes' default app) on free ports and wait until every
    group has a leader. ``started`` gets the cluster before anything starts, so the caller can
    stop it even when start-up fails half way."""
    local = LocalCluster.create_or_load(
        data_dir, nodes=nodes, groups=groups, rf=rf, discovery_replicas=1, base_port=0
    )
    local.node_args = node_args
    cluster = ChatCluster(local)
    if started is not None:
        started.append(cluster)
    local.start()
    local.wait_for_leaders()
    cluster.wait_serving()
    return cluster


ChatClusterFactory = Callable[..., ChatCluster]


@pytest.fixture
def chat_cluster(tmp_path: Path) -> Iterator[ChatClusterFactory]:
    """``chat_cluster(nodes=3, groups=4, rf=3, node_args=NO_RATE_LIMIT)`` starts a cluster in
    ``tmp_path``; every cluster made is stopped when the test ends, whatever happened."""
    made: list[ChatCluster] = []

    def make(
        *,
        nodes: int = 3,
        groups: int = 4,
        rf: int = 3,
        node_args: tuple[str, ...] = NO_RATE_LIMIT,
    ) -> ChatCluster:
        return start_chat_cluster(
            tmp_path / f"chat{len(made)}",
            nodes=nodes,
            groups=groups,
            rf=rf,
            node_args=node_args,
            started=made,
        )

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


# ---------------------------------------------------------------------------------------------
# The client.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    token: str
    password: str = PASSWORD

    @property
    def metadata(self) -> Metadata:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass(frozen=True, slots=True)
class Sent:
    """An acknowledged send: the answer and how it was reached."""

    key: str
    response: pb.SendResponse
    attempts: int
    gateways: tuple[int, ...]
    """The nodes tried, in order (the last one answered)."""


class ChatKit:
    """One ``grpc.aio`` channel per node of a cluster; create inside the test's event loop."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._channels: dict[int, grpc.aio.Channel] = {}

    async def __aenter__(self) -> ChatKit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.spec.nodes]

    def stub(self, node: int) -> Any:
        channel = self._channels.get(node)
        if channel is None:
            target = next(n.public for n in self.spec.nodes if n.id == node)
            channel = self._channels[node] = grpc.aio.insecure_channel(
                target, options=CHANNEL_OPTIONS
            )
        return pb_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]

    async def call(
        self,
        node: int,
        method: str,
        request: object,
        account: Account | None = None,
        *,
        metadata: Metadata | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """One unary call of ``Chat.<method>`` on ``node``, as ``account`` (or with
        ``metadata`` as given)."""
        meta = metadata if metadata is not None else (account.metadata if account else ())
        rpc = getattr(self.stub(node), method)
        return await rpc(request, metadata=meta, timeout=timeout)

    async def retrying(
        self,
        nodes: Sequence[int],
        method: str,
        request: object,
        account: Account | None = None,
        *,
        timeout: float = 30.0,
    ) -> Any:
        """The call, retried on RETRYABLE codes on the next node of ``nodes`` (for calls that
        are safe to repeat: reads, joins, logins)."""
        deadline = time.monotonic() + timeout
        for attempt, node in enumerate(itertools.cycle(nodes)):
            try:
                return await self.call(node, method, request, account)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(min(0.5, 0.05 * 2 ** min(attempt, 4)))  # retry backoff
        raise AssertionError("unreachable")

    # ---- accounts ----------------------------------------------------------------------------

    async def register(self, user: str, node: int, *, display_name: str = "") -> None:
        request = pb.RegisterRequest(user=user, display_name=display_name, password=PASSWORD)
        await self.retrying([node, *self.node_ids], "Register", request)

    async def login(self, user: str, node: int, password: str = PASSWORD) -> Account:
        request = pb.LoginRequest(user=user, password=password)
        answer = await self.retrying([node, *self.node_ids], "Login", request)
        return Account(user, answer.token, password)

    async def account(self, user: str, node: int, *, display_name: str = "") -> Account:
        """Register ``user`` and log in, both through ``node``."""
        await self.register(user, node, display_name=display_name)
        return await self.login(user, node)

    # ---- messages ----------------------------------------------------------------------------

    async def send(
        self,
        account: Account,
        request: pb.SendRequest,
        nodes: Sequence[int],
        *,
        timeout: float = 30.0,
        attempt_timeout: float = CALL_TIMEOUT,
    ) -> Sent:
        """Send until acknowledged: on a RETRYABLE answer (or a dead node) the *same* request,
        idempotency key included, goes to the next node of ``nodes``. Any other status is the
        answer and is raised."""
        deadline = time.monotonic() + timeout
        tried: list[int] = []
        for attempt, node in enumerate(itertools.cycle(nodes)):
            tried.append(node)
            try:
                answer = await self.call(node, "Send", request, account, timeout=attempt_timeout)
                return Sent(request.idempotency_key, answer, attempt + 1, tuple(tried))
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(min(0.2, 0.02 * 2 ** min(attempt, 4)))  # retry backoff
        raise AssertionError("unreachable")

    async def history(
        self,
        account: Account,
        conversation: str,
        node: int,
        *,
        page: int = 100,
        stale_ok: bool = False,
    ) -> list[pb.ChatMessage]:
        """The whole history of ``conversation``, read page by page forward with ``after``
        through ``node``; checks each page continues the last with no gap."""
        out: list[pb.ChatMessage] = []
        while True:
            request = pb.HistoryRequest(
                conversation=conversation, after=len(out), limit=page, stale_ok=stale_ok
            )
            answer = await self.retrying([node], "History", request, account)
            seqs = [m.seq for m in answer.messages]
            assert seqs == list(range(len(out) + 1, len(out) + 1 + len(seqs))), (
                f"history page after {len(out)} of {conversation} is not contiguous: {seqs}"
            )
            assert answer.reached_oldest == (not out), (len(out), answer.reached_oldest)
            out.extend(answer.messages)
            if answer.reached_newest:
                return out
            assert seqs, f"an empty page after {len(out)} of {conversation} that is not the end"

    async def unread(self, account: Account, node: int) -> dict[str, tuple[int, int, int]]:
        """UnreadCounts as ``{conversation: (last_seq, read_seq, unread)}``."""
        answer = await self.retrying([node], "UnreadCounts", pb.UnreadCountsRequest(), account)
        return {c.conversation: (c.last_seq, c.read_seq, c.unread) for c in answer.conversations}

    # ---- cluster ----------------------------------------------------------------------------

    async def status(self, node: int, account: Account) -> pb.ServerStatusResponse:
        answer: pb.ServerStatusResponse = await self.call(
            node, "ServerStatus", pb.ServerStatusRequest(), account, timeout=3.0
        )
        return answer

    async def leader_of(
        self, group: int, account: Account, nodes: Sequence[int], *, not_: int = 0
    ) -> int:
        """The node of ``nodes`` that says it leads ``group`` (not ``not_``), polled."""

        async def find() -> int | None:
            for node in nodes:
                with contextlib.suppress(grpc.RpcError):
                    status = await self.status(node, account)
                    for g in status.groups:
                        if g.group == group and g.role == "leader" and node != not_:
                            return node
            return None

        return await eventually(find, 20.0, f"a leader of group {group} other than {not_}")


# ---------------------------------------------------------------------------------------------
# The session stream.
# ---------------------------------------------------------------------------------------------


@dataclass
class Pushed:
    """Everything a session stream has pushed so far."""

    messages: dict[str, list[pb.ChatMessage]] = field(default_factory=dict)
    results: dict[str, pb.SendResult] = field(default_factory=dict)
    gaps: list[pb.Gap] = field(default_factory=list)
    presence: list[pb.PresenceEvent] = field(default_factory=list)
    membership: list[pb.MembershipEvent] = field(default_factory=list)
    errors: list[pb.Failure] = field(default_factory=list)
    heartbeats: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    """Pushes that broke "cursor + 1, no gap, no duplicate" (a Gap frame excuses a jump)."""


class SessionProbe:
    """One ``Session`` stream of ``account`` on ``node``, read by a background task.

    ``cursors`` starts from the ``Resumed`` frame (what the server says pushing starts from)
    and follows every pushed message, so after a crash it is what a client reconnects with.
    """

    def __init__(
        self,
        kit: ChatKit,
        node: int,
        account: Account,
        *,
        session_id: str | None = None,
        cursors: Mapping[str, int] | None = None,
        heartbeat_every: float = 5.0,
    ) -> None:
        self.kit = kit
        self.node = node
        self.account = account
        self.session_id = session_id
        self.resume_from = dict(cursors) if cursors is not None else None
        self.pushed = Pushed()
        self.cursors: dict[str, int] = {}
        self.resumed: pb.Resumed | None = None
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: dict[str, str] = {}
        self._heartbeat_every = heartbeat_every
        self._call: Any = None
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._beat = itertools.count(1)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def open(self, timeout: float = 15.0) -> pb.Resumed:
        """Open the stream, send the first frame (with ``resume`` if cursors were given) and
        wait for the ``Resumed`` frame; raises AssertionError if the stream ends first."""
        meta = list(self.account.metadata)
        if self.session_id is not None:
            meta.append(("x-session-id", self.session_id))
        self._call = self.kit.stub(self.node).Session(metadata=tuple(meta))
        first = pb.ClientFrame()
        if self.resume_from is not None:
            first.resume.cursors.update(self.resume_from)
        else:
            first.heartbeat = next(self._beat)  # some first frame; it asks for no replay
        await self._call.write(first)
        self._tasks.append(asyncio.create_task(self._read()))
        await self.wait_for(lambda: self.resumed is not None or self.ended, timeout, "Resumed")
        if self.resumed is None:
            raise AssertionError(
                f"session on node {self.node} ended {self.code} before Resumed: {self.details}"
            )
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        return self.resumed

    @property
    def ended(self) -> bool:
        return self.code is not None

    async def close(self) -> None:
        """Half-close and wait briefly for the server's end; cancel whatever is left."""
        if self._call is not None and not self.ended:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
            with contextlib.suppress(AssertionError):
                await self.wait_for(lambda: self.ended, 5.0, "the stream to end")
        if self._call is not None and not self.ended:
            self._call.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> SessionProbe:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- waiting -----------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``predicate()`` holds, re-checked on every frame (and on the stream's end)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"session of {self.account.user} on node {self.node}: no {what} within "
                f"{timeout:.0f} s (ended: {self.code} {self.details!r}; cursors {self.cursors})"
            ) from None

    async def wait_messages(self, conversation: str, seq: int, timeout: float = 15.0) -> None:
        """Until message ``seq`` of ``conversation`` has been pushed."""
        await self.wait_for(
            lambda: self.cursors.get(conversation, 0) >= seq,
            timeout,
            f"{conversation} up to seq {seq}",
        )

    async def wait_ended(self, timeout: float = 15.0) -> grpc.StatusCode:
        await self.wait_for(lambda: self.ended, timeout, "end of the stream")
        assert self.code is not None
        return self.code

    def messages(self, conversation: str) -> list[pb.ChatMessage]:
        return self.pushed.messages.get(conversation, [])

    # ---- writing -----------------------------------------------------------------------------

    async def write(self, frame: pb.ClientFrame) -> None:
        await self._call.write(frame)

    async def send(
        self, sends: Sequence[pb.SendRequest], timeout: float = 15.0
    ) -> list[pb.SendResult]:
        """Send one frame of ``sends`` and wait for a result of each (matched by key)."""
        keys = [s.idempotency_key for s in sends]
        for key in keys:
            self.pushed.results.pop(key, None)
        await self.write(pb.ClientFrame(sends=sends))
        await self.wait_for(
            lambda: all(k in self.pushed.results for k in keys), timeout, f"results of {keys}"
        )
        return [self.pushed.results[k] for k in keys]

    # ---- the background tasks ----------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._call.read()
                if frame is EOF:
                    break
                self._absorb(frame)
                async with self._changed:
                    self._changed.notify_all()
            code, details = await self._call.code(), await self._call.details()
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
            self.trailers = trailing(err)
        except asyncio.CancelledError:
            self.code, self.details = grpc.StatusCode.CANCELLED, "cancelled by the test"
            raise
        async with self._changed:
            self.code, self.details = code, details
            self._changed.notify_all()

    async def _heartbeats(self) -> None:
        """Keep the session alive (the server closes it after three silent intervals)."""
        while not self.ended:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_every), self._changed:
                    await self._changed.wait_for(lambda: self.ended)
            if not self.ended:
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await self._call.write(pb.ClientFrame(heartbeat=next(self._beat)))

    def _absorb(self, frame: pb.ServerFrame) -> None:
        got = self.pushed
        if frame.HasField("resumed"):
            if self.resumed is not None:
                got.violations.append("a second Resumed frame")
            self.resumed = frame.resumed
            self.cursors.update(frame.resumed.cursors)
        for gap in frame.gaps:
            got.gaps.append(gap)
            self.cursors[gap.conversation] = max(
                self.cursors.get(gap.conversation, 0), gap.last_seq
            )
        for m in frame.messages:
            cursor = self.cursors.get(m.conversation, 0)
            if m.seq != cursor + 1:
                got.violations.append(f"{m.conversation}: pushed seq {m.seq} after {cursor}")
            self.cursors[m.conversation] = max(cursor, m.seq)
            got.messages.setdefault(m.conversation, []).append(m)
        for result in frame.results:
            got.results[result.idempotency_key] = result
        got.presence.extend(frame.presence)
        got.membership.extend(frame.membership)
        got.errors.extend(frame.errors)
        if frame.heartbeat:
            got.heartbeats.append(frame.heartbeat)
