"""The client library (clients/) against fake in-process chat servers on 127.0.0.1.

The fake is a small in-memory Chat servicer (generated stubs of proto/chat.proto) shared by
several gRPC servers, so stopping one server is a node failure the client must survive while the
state lives on. It dedups sends by idempotency key and counts attempts, commits and frames, so
the tests can say exactly what crossed the wire: typed errors with ``x-field`` /
``x-retry-after-ms``; failover of unary calls and of the session (same keys, resume from the
right cursors, no duplicate events); coalescing of concurrent sends into few frames;
FAILED_PRECONDITION with and without a leader hint; the blocking wrapper.

Waiting is always for a condition with a deadline; servers and clients are always closed.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import pytest

from clients import (
    AlreadyExists,
    AsyncChatClient,
    Backoff,
    ChatClient,
    ChatError,
    ClientOptions,
    ConnectionEvent,
    ConnectionState,
    DeadlineExceeded,
    Endpoints,
    FailedPrecondition,
    InvalidArgument,
    MessageEvent,
    NotFound,
    NotLeader,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_cluster_file,
    from_discovery,
    from_failure,
    from_rpc_error,
    static,
)
from clients.models import Event
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc as pb_grpc
from proto import discovery_pb2 as dpb
from proto import discovery_pb2_grpc as dpb_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
FAST = ClientOptions(timeout=5.0, attempt_timeout=2.0, backoff_base=0.01, backoff_cap=0.05)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # paces the polling only


# ---------------------------------------------------------------------------------------------
# The fake cluster.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scripted:
    """One scripted answer of a unary method: abort with ``code``; ``commit_first`` runs the
    real Send before aborting (the answer of a committed send is lost)."""

    code: grpc.StatusCode
    details: str
    metadata: tuple[tuple[str, str], ...] = ()
    commit_first: bool = False


@dataclass(frozen=True)
class ResumeSeen:
    server: str
    cursors: dict[str, int]
    session_id: str


@dataclass
class Backend:
    """The state every fake server serves (one 'cluster')."""

    hold_results: bool = False
    """Commit session sends but never answer them (a gateway about to die)."""
    replay_overlap: int = 0
    """Resume from ``cursor - overlap``: a buggy server that repeats messages."""
    heartbeat_ms: int = 0
    users: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    conversations: dict[str, list[pb.ChatMessage]] = field(default_factory=dict)
    receipts: dict[str, pb.SendResponse] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)
    commits: Counter[str] = field(default_factory=Counter)
    send_frames: list[int] = field(default_factory=list)
    resumes: list[ResumeSeen] = field(default_factory=list)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    scripts: dict[tuple[str, str], list[Scripted]] = field(default_factory=dict)
    sessions: dict[int, tuple[str, asyncio.Queue[pb.ServerFrame | None]]] = field(
        default_factory=dict
    )

    def script(self, server: str, method: str, *answers: Scripted) -> None:
        self.scripts.setdefault((server, method), []).extend(answers)

    def send(self, user: str, req: pb.SendRequest, field_prefix: str) -> pb.SendResponse:
        """Commit one send, or raise ChatError naming the field (dedup by key first)."""
        key = req.idempotency_key
        self.attempts[key] += 1
        if key in self.receipts:
            first = self.receipts[key]
            return pb.SendResponse(
                conversation=first.conversation, seq=first.seq, hlc_ms=first.hlc_ms, duplicate=True
            )
        if not req.text.strip():
            raise InvalidArgument("must not be empty", field=f"{field_prefix}text")
        if req.text == "flaky" and self.attempts[key] == 1:
            raise Unavailable("the group has no leader right now")
        if req.text == "slow down":
            raise RateLimited("send rate", field=f"{field_prefix}text", retry_after_ms=250)
        if req.HasField("to_user"):
            conversation = "dm:" + ":".join(sorted((user, req.to_user)))
        else:
            conversation = req.conversation
        if conversation not in self.conversations:
            raise NotFound("no such channel", field=f"{field_prefix}conversation")
        log = self.conversations[conversation]
        msg = pb.ChatMessage(
            conversation=conversation,
            seq=len(log) + 1,
            sender=user,
            text=req.text,
            hlc_ms=1000 + len(log),
            idempotency_key=key,
        )
        log.append(msg)
        self.commits[key] += 1
        self.receipts[key] = pb.SendResponse(conversation=conversation, seq=msg.seq, hlc_ms=1000)
        for _, queue in self.sessions.values():
            queue.put_nowait(pb.ServerFrame(messages=[msg]))
        return self.receipts[key]

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)
        for tok, queue in self.sessions.values():
            if tok == token:
                queue.put_nowait(None)


def _failure(err: ChatError) -> pb.Failure:
    code = int(err.code.value[0])
    return pb.Failure(
        code=code, field=err.field, message=err.details, retry_after_ms=err.retry_after_ms
    )


def _metadata(context: Context) -> dict[str, str]:
    return {k: str(v) for k, v in (context.invocation_metadata() or ())}


class FakeChat(pb_grpc.ChatServicer):
    """The servicer of one fake node."""

    def __init__(self, name: str, node_id: int, backend: Backend) -> None:
        self.name = name
        self.node_id = node_id
        self.backend = backend
        self.frozen = False
        """Stop writing anything on session streams (a stopped process keeps its sockets)."""

    async def _enter(self, method: str, context: Context, *, auth: bool = True) -> str:
        """Count the call, play a scripted answer if any, and return the caller's user."""
        self.backend.calls[(self.name, method)] += 1
        scripted = self.backend.scripts.get((self.name, method))
        if scripted:
            answer = scripted.pop(0)
            if not answer.commit_first:
                await context.abort(answer.code, answer.details, answer.metadata)
        if not auth:
            return ""
        value = _metadata(context).get("authorization", "")
        user = self.backend.tokens.get(value.removeprefix("Bearer "))
        if not value.startswith("Bearer ") or user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid session token")
        return user

    async def _abort(self, context: Context, err: ChatError) -> NoReturn:
        meta = [("x-field", err.field)]
        if err.retry_after_ms:
            meta.append(("x-retry-after-ms", str(err.retry_after_ms)))
        await context.abort(err.code, f"{err.field}: {err.details}", tuple(meta))

    async def Register(self, req: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        await self._enter("Register", context, auth=False)
        if req.user in self.backend.users:
            await self._abort(context, AlreadyExists("taken", field="user"))
        if len(req.password) < 8:
            await self._abort(context, InvalidArgument("too short", field="password"))
        self.backend.users[req.user] = req.password
        return pb.RegisterResponse(user=req.user, display_name=req.display_name or req.user)

    async def Login(self, req: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        await self._enter("Login", context, auth=False)
        if self.backend.users.get(req.user) != req.password:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong user or password")
        token = secrets.token_urlsafe(32)
        self.backend.tokens[token] = req.user
        return pb.LoginResponse(token=token, user=req.user, display_name=req.user)

    async def Logout(self, req: pb.LogoutRequest, context: Context) -> pb.LogoutResponse:
        await self._enter("Logout", context)
        self.backend.revoke(_metadata(context)["authorization"].removeprefix("Bearer "))
        return pb.LogoutResponse()

    async def CreateChannel(
        self, req: pb.CreateChannelRequest, context: Context
    ) -> pb.CreateChannelResponse:
        user = await self._enter("CreateChannel", context)
        if req.channel in self.backend.conversations:
            await self._abort(context, AlreadyExists("taken", field="channel"))
        self.backend.conversations[req.channel] = []
        info = pb.ChannelInfo(name=req.channel, creator=user, member_count=1, joined=True)
        return pb.CreateChannelResponse(channel=info)

    async def JoinChannel(
        self, req: pb.JoinChannelRequest, context: Context
    ) -> pb.JoinChannelResponse:
        await self._enter("JoinChannel", context)
        if req.channel not in self.backend.conversations:
            await self._abort(context, NotFound("no such channel", field="channel"))
        return pb.JoinChannelResponse(channel=req.channel, already_member=True)

    async def ListChannels(
        self, req: pb.ListChannelsRequest, context: Context
    ) -> pb.ListChannelsResponse:
        await self._enter("ListChannels", context)
        infos = [
            pb.ChannelInfo(name=name, last_seq=len(log), joined=True)
            for name, log in sorted(self.backend.conversations.items())
        ]
        return pb.ListChannelsResponse(channels=infos)

    async def Send(self, req: pb.SendRequest, context: Context) -> pb.SendResponse:
        user = await self._enter("Send", context)
        try:
            resp = self.backend.send(user, req, "")
        except ChatError as err:
            await self._abort(context, err)
        scripted = self.backend.scripts.get((self.name, "Send:after"))
        if scripted:  # committed, then the answer is lost
            answer = scripted.pop(0)
            await context.abort(answer.code, answer.details, answer.metadata)
        return resp

    async def History(self, req: pb.HistoryRequest, context: Context) -> pb.HistoryResponse:
        await self._enter("History", context)
        log = self.backend.conversations.get(req.conversation)
        if log is None:
            await self._abort(context, PermissionDenied("not a member", field="conversation"))
        page = log[req.after : req.after + (req.limit or 50)]
        return pb.HistoryResponse(messages=page, reached_newest=req.after + len(page) >= len(log))

    async def MarkRead(self, req: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        await self._enter("MarkRead", context)
        last = len(self.backend.conversations.get(req.conversation, []))
        if req.seq > last:
            await self._abort(context, FailedPrecondition("beyond the last message", field="seq"))
        return pb.MarkReadResponse(conversation=req.conversation, read_seq=req.seq)

    async def ServerStatus(
        self, req: pb.ServerStatusRequest, context: Context
    ) -> pb.ServerStatusResponse:
        await self._enter("ServerStatus", context, auth=False)
        group = pb.GroupState(group=0, role="leader", leader=self.node_id, term=3, applied=9)
        return pb.ServerStatusResponse(node_id=self.node_id, groups=[group], fsync=True)

    async def Session(
        self, request_iterator: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        user = await self._enter("Session", context)
        token = _metadata(context)["authorization"].removeprefix("Bearer ")
        session_id = _metadata(context).get("x-session-id", "")
        first = await context.read()
        cursors = {k: int(v) for k, v in first.resume.cursors.items()}
        self.backend.resumes.append(ResumeSeen(self.name, cursors, session_id))
        out: asyncio.Queue[pb.ServerFrame | None] = asyncio.Queue()
        self.backend.sessions[id(out)] = (token, out)
        reader = asyncio.create_task(self._session_reader(context, user, out))
        try:
            backlog: list[pb.ChatMessage] = []
            for conversation, seq in sorted(cursors.items()):
                log = self.backend.conversations.get(conversation, [])
                backlog += log[max(0, seq - self.backend.replay_overlap) :]
            known = self.backend.conversations
            resumed = pb.Resumed(
                user=user,
                session_id=session_id,
                node_id=self.node_id,
                cursors={c: cursors.get(c, len(log)) for c, log in known.items()},
                heartbeat_interval_ms=self.backend.heartbeat_ms,
            )
            await context.write(pb.ServerFrame(resumed=resumed, messages=backlog))
            while True:
                frame = await out.get()
                if frame is None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token revoked")
                if not self.frozen:
                    await context.write(frame)
        finally:
            del self.backend.sessions[id(out)]
            reader.cancel()

    async def _session_reader(
        self, context: Context, user: str, out: asyncio.Queue[pb.ServerFrame | None]
    ) -> None:
        while True:
            frame = await context.read()
            if not isinstance(frame, pb.ClientFrame):
                return
            results = []
            if frame.sends:
                self.backend.send_frames.append(len(frame.sends))
            for i, req in enumerate(frame.sends):
                key = req.idempotency_key
                try:
                    sent = self.backend.send(user, req, f"sends[{i}].")
                    results.append(pb.SendResult(idempotency_key=key, sent=sent))
                except ChatError as err:
                    results.append(pb.SendResult(idempotency_key=key, error=_failure(err)))
            if self.backend.hold_results:
                results = []
            if results or frame.heartbeat:
                out.put_nowait(pb.ServerFrame(results=results, heartbeat=frame.heartbeat))


@dataclass
class FakeNode:
    servicer: FakeChat
    server: grpc.aio.Server
    address: str

    async def stop(self) -> None:
        await self.server.stop(None)


@dataclass
class FakeCluster:
    backend: Backend
    nodes: list[FakeNode]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def calls(self, method: str) -> list[int]:
        return [self.backend.calls[(n.servicer.name, method)] for n in self.nodes]


async def start_cluster(nodes: int = 2, backend: Backend | None = None) -> FakeCluster:
    backend = backend or Backend()
    backend.conversations.setdefault("general", [])
    started: list[FakeNode] = []
    for i in range(1, nodes + 1):
        servicer = FakeChat(f"n{i}", i, backend)
        server = grpc.aio.server()
        pb_grpc.add_ChatServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.append(FakeNode(servicer, server, f"127.0.0.1:{port}"))
    return FakeCluster(backend, started)


@asynccontextmanager
async def cluster_and_client(
    nodes: int = 2, backend: Backend | None = None, *, user: str = "alice"
) -> AsyncIterator[tuple[FakeCluster, AsyncChatClient]]:
    """A fake cluster and a client logged in as ``user`` (registered first)."""
    cluster = await start_cluster(nodes, backend)
    client = AsyncChatClient(
        Endpoints(cluster.addresses), options=FAST, rng=random.Random(7), session_id="s-1"
    )
    try:
        await client.register(user, "password1")
        await client.login(user, "password1")
        yield cluster, client
    finally:
        await client.close()
        for node in cluster.nodes:
            await node.stop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def _events_of(client: AsyncChatClient) -> list[Event]:
    session = client.session
    assert session is not None
    drained = list(session._events.buffer)
    session._events.buffer.clear()
    return drained


# ---------------------------------------------------------------------------------------------
# Errors, endpoints, backoff: pure.
# ---------------------------------------------------------------------------------------------


def _rpc_error(code: grpc.StatusCode, *meta: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*meta), "field: reason", None
    )


@pytest.mark.parametrize(
    ("code", "meta", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, [("x-field", "sends[2].text")], InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, [("x-field", "text")], ResourceExhausted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, [("x-retry-after-ms", "250")], RateLimited),
        (grpc.StatusCode.UNAUTHENTICATED, [], Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, [], PermissionDenied),
        (grpc.StatusCode.NOT_FOUND, [], NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, [], AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, [("x-field", "seq")], FailedPrecondition),
        (grpc.StatusCode.FAILED_PRECONDITION, [("x-leader-id", "2")], NotLeader),
        (grpc.StatusCode.UNAVAILABLE, [], Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, [], DeadlineExceeded),
        (grpc.StatusCode.DATA_LOSS, [], ChatError),
    ],
)
def test_rpc_errors_map_to_typed_exceptions(
    code: grpc.StatusCode, meta: list[tuple[str, str]], cls: type[ChatError]
) -> None:
    err = from_rpc_error(_rpc_error(code, *meta))
    assert type(err) is cls
    assert err.code is code
    assert err.details == "field: reason"
    expected = dict(meta)
    assert err.field == expected.get("x-field", "")
    assert err.retry_after_ms == int(expected.get("x-retry-after-ms", "0"))
    assert err.leader_id == int(expected.get("x-leader-id", "0"))
    if cls is not NotLeader:
        assert not isinstance(err, NotLeader)


def test_failures_map_to_the_same_classes() -> None:
    err = from_failure(pb.Failure(code=3, field="sends[1].text", message="must not be empty"))
    assert type(err) is InvalidArgument and err.field == "sends[1].text"
    assert "sends[1].text" in str(err)
    limited = from_failure(pb.Failure(code=8, field="sends[0]", message="rate", retry_after_ms=9))
    assert type(limited) is RateLimited and limited.retry_after_ms == 9
    assert type(from_failure(pb.Failure(code=8, message="too big"))) is ResourceExhausted
    assert type(from_failure(pb.Failure(code=14, message="no quorum"))) is Unavailable


def test_rotation_moves_once_per_failed_node_and_follows_hints(tmp_path: Path) -> None:
    eps = Endpoints(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    assert eps.current == "127.0.0.1:1"
    assert eps.failed("127.0.0.1:1") == "127.0.0.1:2"
    assert eps.failed("127.0.0.1:1") == "127.0.0.1:2"  # a second report of the same node
    eps.prefer("127.0.0.1:9")  # a leader hint for a node not in the list
    assert eps.current == "127.0.0.1:9" and len(eps) == 4
    assert eps.failed("127.0.0.1:9") == "127.0.0.1:1"
    for bad in ([], ["nohost"], ["h:0"], ["h:x"]):
        with pytest.raises(ValueError):
            Endpoints(bad)
    assert static(["a:1", "b:2", "c:3"], rng=random.Random(1)).current in {"a:1", "b:2", "c:3"}

    spec = {
        "format": 1,
        "cluster_id": "c1",
        "groups": 8,
        "rf": 3,
        "discovery": [{"id": 1, "public": "127.0.0.1:7000", "internal": "127.0.0.1:7001"}],
        "nodes": [
            {"id": n, "public": f"127.0.0.1:{7020 + 2 * n}", "internal": "127.0.0.1:1"}
            for n in (1, 2)
        ],
    }
    (tmp_path / "cluster.json").write_text(json.dumps(spec))
    assert from_cluster_file(tmp_path).addresses == ("127.0.0.1:7022", "127.0.0.1:7024")


class FakeDiscovery(dpb_grpc.DiscoveryServicer):
    async def GetMap(self, req: dpb.GetMapRequest, context: Context) -> dpb.ClusterMap:
        nodes = [
            dpb.NodeInfo(id=1, public_addr="127.0.0.1:7001", up=False),
            dpb.NodeInfo(id=2, public_addr="127.0.0.1:7002", up=True),
            dpb.NodeInfo(id=3, public_addr="127.0.0.1:7003", up=True),
        ]
        return dpb.ClusterMap(cluster_id="c1", epoch=4, nodes=nodes)


def test_endpoints_from_discovery_put_nodes_that_are_up_first() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        dpb_grpc.add_DiscoveryServicer_to_server(FakeDiscovery(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            eps = await from_discovery([f"127.0.0.1:{port}"], timeout=5.0)
        finally:
            await server.stop(None)
        assert eps.addresses == ("127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7001")

    run(scenario())


def test_backoff_is_immediate_first_then_capped_and_seeded() -> None:
    a = Backoff(base=0.1, cap=1.0, rng=random.Random(3))
    b = Backoff(base=0.1, cap=1.0, rng=random.Random(3))
    delays = [a.delay(k) for k in range(1, 12)]
    assert delays == [b.delay(k) for k in range(1, 12)]
    assert delays[0] == 0.0
    assert 0.05 <= delays[1] < 0.1
    assert all(0.5 <= d < 1.0 for d in delays[6:])  # capped at 1.0, jittered down to half


# ---------------------------------------------------------------------------------------------
# Unary calls.
# ---------------------------------------------------------------------------------------------


def test_unary_calls_return_values_and_typed_errors() -> None:
    async def scenario() -> None:
        async with cluster_and_client() as (cluster, client):
            assert client.account is not None and client.account.user == "alice"
            channel = await client.create_channel("room")
            assert channel.name == "room" and channel.joined
            assert await client.join_channel("room") is True
            receipt = await client.send("hello", "room", idempotency_key="k-1")
            assert (receipt.conversation, receipt.seq, receipt.duplicate) == ("room", 1, False)
            again = await client.send("hello", "room", idempotency_key="k-1")
            assert (again.seq, again.duplicate) == (1, True)
            page = await client.history("room", after=0)
            assert [m.text for m in page.messages] == ["hello"] and page.reached_newest
            assert [c.name for c in await client.list_channels()] == ["general", "room"]
            status = await client.server_status(cluster.addresses[1])
            assert status.node_id == 2 and status.groups[0].role == "leader"

            with pytest.raises(AlreadyExists) as exists:
                await client.register("alice", "password1")
            assert exists.value.field == "user"
            with pytest.raises(InvalidArgument) as invalid:
                await client.send("   ", "room")
            assert invalid.value.field == "text"
            with pytest.raises(RateLimited) as limited:
                await client.send("slow down", "room")
            assert limited.value.retry_after_ms == 250
            with pytest.raises(NotFound):
                await client.join_channel("nope")
            with pytest.raises(ValueError):
                await client.history("room", before=3, after=1)

            await client.logout()
            before = sum(cluster.calls("History"))
            with pytest.raises(Unauthenticated):
                await client.history("room")
            assert sum(cluster.calls("History")) == before + 1  # raised, never retried

    run(scenario())


def test_unary_send_fails_over_with_the_same_key() -> None:
    async def scenario() -> None:
        async with cluster_and_client() as (cluster, client):
            lost = Scripted(grpc.StatusCode.UNAVAILABLE, "connection reset")
            cluster.backend.script("n1", "Send:after", lost)  # n1 commits, the answer is lost
            receipt = await client.send("once", "general", idempotency_key="key-1")
            assert receipt.duplicate and receipt.seq == 1
            assert cluster.backend.attempts["key-1"] == 2
            assert cluster.backend.commits["key-1"] == 1
            assert cluster.calls("Send") == [1, 1]
            assert client.endpoints.current == cluster.addresses[1]

            # The node dies: reads and sends move on by themselves.
            await cluster.nodes[1].stop()
            page = await client.history("general", after=0)
            assert [m.seq for m in page.messages] == [1]
            assert client.endpoints.current == cluster.addresses[0]

    run(scenario())


def test_failed_precondition_is_retried_only_with_a_leader_hint() -> None:
    async def scenario() -> None:
        async with cluster_and_client(3) as (cluster, client):
            await client.send("one", "general")
            hint = Scripted(
                grpc.StatusCode.FAILED_PRECONDITION,
                "not the leader",
                (("x-leader-id", "3"), ("x-leader", cluster.addresses[2])),
            )
            cluster.backend.script("n1", "MarkRead", hint)
            marker = await client.mark_read("general", 1)
            assert marker.read_seq == 1
            assert cluster.calls("MarkRead") == [1, 0, 1]  # straight to the hinted leader
            assert client.endpoints.current == cluster.addresses[2]

            with pytest.raises(FailedPrecondition) as beyond:
                await client.mark_read("general", 5)
            assert not isinstance(beyond.value, NotLeader)
            assert beyond.value.field == "seq"
            assert cluster.calls("MarkRead") == [1, 0, 2]  # a real answer: not retried

    run(scenario())


def test_no_node_answers_within_the_deadline() -> None:
    async def scenario() -> None:
        dead = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                dead.append(f"127.0.0.1:{probe.getsockname()[1]}")
        options = ClientOptions(timeout=0.5, attempt_timeout=0.2, backoff_base=0.02)
        async with AsyncChatClient(Endpoints(dead), options=options) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.history("general")
            assert time.monotonic() - started < 2.0

    run(scenario())


# ---------------------------------------------------------------------------------------------
# The session.
# ---------------------------------------------------------------------------------------------


def test_concurrent_sends_are_coalesced_into_few_frames() -> None:
    async def scenario() -> None:
        async with cluster_and_client() as (cluster, client):
            await client.open_session()
            receipts = await asyncio.gather(*(client.send(f"m{i}", "general") for i in range(64)))
            assert sorted(r.seq for r in receipts) == list(range(1, 65))
            assert sum(cluster.backend.send_frames) == 64
            assert len(cluster.backend.send_frames) <= 4, cluster.backend.send_frames
            assert cluster.calls("Send") == [0, 0]  # all over the stream

            cluster.backend.send_frames.clear()
            await asyncio.gather(*(client.send(f"x{i}", "general") for i in range(600)))
            assert max(cluster.backend.send_frames) <= 256
            assert sum(cluster.backend.send_frames) == 600
            assert len(cluster.backend.send_frames) <= 8, cluster.backend.send_frames

            # One caller's sends, awaited one after another, land in that order.
            async def sequential(tag: str) -> list[int]:
                return [(await client.send(f"{tag}{i}", "general")).seq for i in range(10)]

            a, b = await asyncio.gather(sequential("a"), sequential("b"))
            assert a == sorted(a) and b == sorted(b)

            with pytest.raises(InvalidArgument) as invalid:
                await client.send(" ", "general")
            assert invalid.value.field == "sends[0].text"
            with pytest.raises(RateLimited) as limited:
                await client.send("slow down", "general")
            assert limited.value.retry_after_ms == 250

    run(scenario())


def test_session_sends_retry_transient_failures_and_keep_their_deadline() -> None:
    async def scenario() -> None:
        async with cluster_and_client() as (cluster, client):
            await client.open_session()
            receipt = await client.send("flaky", "general", idempotency_key="f-1")
            assert (receipt.seq, receipt.duplicate) == (1, False)
            assert cluster.backend.attempts["f-1"] == 2 and cluster.backend.commits["f-1"] == 1

            cluster.backend.hold_results = True
            with pytest.raises(DeadlineExceeded):
                await client.send("unanswered", "general", timeout=0.2)
            cluster.backend.hold_results = False
            assert (await client.send("next", "general")).seq == 3  # the window is free again

    run(scenario())


def test_session_failover_resends_with_same_keys_and_resumes_without_duplicates() -> None:
    async def scenario() -> None:
        backend = Backend(hold_results=True, replay_overlap=3)
        async with cluster_and_client(2, backend) as (cluster, client):
            await client.open_session()
            keys = [f"key-{i}" for i in range(20)]
            sends = asyncio.gather(
                *(client.send(f"m{i}", "general", idempotency_key=k) for i, k in enumerate(keys))
            )
            # n1 commits and pushes every message but answers none of the sends.
            await eventually(lambda: client.cursors.get("general") == 20, "20 messages pushed")
            assert not sends.done()
            backend.hold_results = False
            await cluster.nodes[0].stop()

            receipts = await asyncio.wait_for(sends, 5.0)
            assert [r.seq for r in receipts] == list(range(1, 21))
            assert all(r.duplicate for r in receipts)  # answered by n2 from the dedup table
            assert all(backend.attempts[k] == 2 and backend.commits[k] == 1 for k in keys)

            first, second = backend.resumes
            assert (first.server, first.cursors) == ("n1", {})
            assert (second.server, second.cursors) == ("n2", {"general": 20})
            assert first.session_id == second.session_id == client.session_id == "s-1"

            after = await client.send("after failover", "general")
            assert (after.seq, after.duplicate) == (21, False)
            await eventually(lambda: client.cursors.get("general") == 21, "message 21 pushed")

            events = _events_of(client)
            seqs = [e.message.seq for e in events if isinstance(e, MessageEvent)]
            assert seqs == list(range(1, 22))  # n2 replayed 18..20 again: dropped
            session = client.session
            assert session is not None and session.duplicates_dropped == 3
            states = [e.state for e in events if isinstance(e, ConnectionEvent)]
            assert states == [
                ConnectionState.CONNECTED,
                ConnectionState.RECONNECTING,
                ConnectionState.RESUMED,
            ]
            resumed = [e for e in events if isinstance(e, ConnectionEvent)][-1]
            assert (resumed.node, resumed.node_id) == (cluster.addresses[1], 2)

    run(scenario())


def test_a_silent_gateway_is_detected_by_heartbeats() -> None:
    async def scenario() -> None:
        async with cluster_and_client(2, Backend(heartbeat_ms=50)) as (cluster, client):
            await client.open_session()
            cluster.nodes[0].servicer.frozen = True  # like SIGSTOP: sockets open, no answers
            await eventually(
                lambda: [r.server for r in cluster.backend.resumes] == ["n1", "n2"],
                "the session moved to n2",
            )
            receipt = await client.send("still here", "general")
            assert receipt.seq == 1

    run(scenario())


def test_session_ends_for_good_when_the_token_is_revoked() -> None:
    async def scenario() -> None:
        async with cluster_and_client() as (cluster, client):
            await client.open_session()
            cluster.backend.revoke(client.token)
            events = [e async for e in client.events()]
            last = events[-1]
            assert isinstance(last, ConnectionEvent) and last.state is ConnectionState.CLOSED
            assert isinstance(last.error, Unauthenticated)
            assert len(cluster.backend.resumes) == 1  # not retried elsewhere
            assert client.session is None
            assert await client.next_event(0.01) is None
            with pytest.raises(Unauthenticated):
                await client.open_session()
            assert len(cluster.backend.resumes) == 1  # refused at the door: Session counted
            assert cluster.calls("Session") == [2, 0]

    run(scenario())


# ---------------------------------------------------------------------------------------------
# The blocking wrapper.
# ---------------------------------------------------------------------------------------------


@contextmanager
def cluster_in_thread(nodes: int = 2) -> Iterator[FakeCluster]:
    """Fake servers on their own loop thread, for callers that block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    try:
        cluster = call(start_cluster(nodes))
        try:
            yield cluster
        finally:
            for node in cluster.nodes:
                call(node.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_sync_client_wraps_every_call_and_the_session() -> None:
    with cluster_in_thread() as cluster, ChatClient(cluster.addresses, options=FAST) as client:
        client.register("bob", "password1")
        client.login("bob", "password1")
        client.open_session()
        first = client.next_event(5)
        assert isinstance(first, ConnectionEvent) and first.state is ConnectionState.CONNECTED
        assert client.send("hi", "general").seq == 1
        events = list(client.events(timeout=0.2))
        assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["hi"]
        assert client.cursors == {"general": 1}
        assert [m.text for m in client.history("general", after=0).messages] == ["hi"]
        with pytest.raises(NotFound):
            client.join_channel("nope")
        thread = client._thread
    assert not thread.is_alive()
