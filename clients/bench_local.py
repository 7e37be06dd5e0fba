"""``python -m clients.bench_local``: the client library's CPU cost per send, against a fake
gateway in a child process (no cluster, no disk).

Why: on the 2-core benchmark box every microsecond the client process spends is taken from the
three node processes, and ``python -m clients bench`` cannot tell the client's share from the
nodes'. Here the server is a small fake ``Chat`` servicer (the generated stubs of
proto/chat.proto) in its own process, so ``time.process_time()`` of this process (every thread,
gRPC's included) over N acknowledged sends is the client's CPU alone.

The fake answers like the real gateway does for the ``clients bench`` layout: channel ``c<i>``
has members ``u<i>`` and ``u<i+1>``; a frame's sends are answered with one ``ServerFrame``
carrying the SendResults *and* the committed messages (the sender is a member, so its own
messages come back to it, with their keys), and each message is also pushed to the other member's
session; frames queued behind each other are merged, as the gateway's writer does.
``--latency-ms`` delays each answer like a commit would (0: at once), which is what decides how
many sends a frame carries.

Rows, each a fresh server, same senders and sends:

- ``raw stub``: the generated stub with the least a session must do (one stream per client, every
  queued send in the next frame, results matched to futures by key, pushed messages read and
  dropped): the floor of gRPC + protobuf cost;
- ``library``: ``AsyncChatClient`` with its session open, one task per client draining
  ``events()``, senders awaiting ``client.send``: what ``python -m clients bench`` runs.

Figures, never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from clients.client import AsyncChatClient, ClientOptions
from clients.endpoints import Endpoints
from clients.models import MessageEvent
from proto import chat_pb2 as pb
from proto import chat_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


# ---- the fake gateway (child process) --------------------------------------------------------


class FakeGateway(pb_grpc.ChatServicer):
    """Login with any password; Session streams answered at once (or after ``latency``)."""

    def __init__(self, clients: int, latency: float) -> None:
        self._clients = clients
        self._latency = latency
        self._seqs: dict[str, int] = {}
        self._outs: dict[str, deque[pb.ServerFrame]] = {}
        self._wakes: dict[str, asyncio.Event] = {}

    async def Login(self, req: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        return pb.LoginResponse(token=f"t-{req.user}", user=req.user, display_name=req.user)

    async def Session(self, request_iterator: object, context: Context) -> None:
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        user = str(auth).removeprefix("Bearer t-")
        await context.read()  # the Resume frame
        resumed = pb.Resumed(user=user, node_id=1, heartbeat_interval_ms=10_000)
        await context.write(pb.ServerFrame(resumed=resumed))
        out: deque[pb.ServerFrame] = deque()
        wake = asyncio.Event()
        self._outs[user], self._wakes[user] = out, wake
        reader = asyncio.create_task(self._read(context, user))
        try:
            while not reader.done():
                await wake.wait()
                wake.clear()
                while out:
                    frame = out.popleft()
                    while out and not out[0].heartbeat and not frame.heartbeat:
                        merged = out.popleft()  # like the gateway's writer
                        frame.results.extend(merged.results)
                        frame.messages.extend(merged.messages)
                    await context.write(frame)
        finally:
            reader.cancel()
            self._outs.pop(user, None)

    async def _read(self, context: Context, user: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await context.read()
            if not isinstance(frame, pb.ClientFrame):
                self._wakes[user].set()
                return
            if frame.heartbeat:
                self._put(user, pb.ServerFrame(heartbeat=frame.heartbeat))
            if not frame.sends:
                continue
            if self._latency > 0:
                loop.call_later(self._latency, self._commit, user, list(frame.sends))
            else:
                self._commit(user, list(frame.sends))

    def _commit(self, user: str, sends: list[pb.SendRequest]) -> None:
        mine = pb.ServerFrame()
        others: dict[str, pb.ServerFrame] = {}
        now_ms = int(time.time() * 1000)
        for req in sends:
            conv = req.conversation
            seq = self._seqs.get(conv, 0) + 1
            self._seqs[conv] = seq
            key = req.idempotency_key
            sent = mine.results.add(idempotency_key=key).sent
            sent.conversation, sent.seq, sent.hlc_ms = conv, seq, now_ms
            fields = {
                "conversation": conv,
                "seq": seq,
                "sender": user,
                "sender_display": user,
                "text": req.text,
                "hlc_ms": now_ms,
            }
            mine.messages.add(idempotency_key=key, **fields)
            member = self._other_member(conv, user)
            if member:
                others.setdefault(member, pb.ServerFrame()).messages.add(**fields)
        self._put(user, mine)
        for member, frame in others.items():
            self._put(member, frame)

    def _other_member(self, conv: str, user: str) -> str:
        i = int(conv.removeprefix("c"))
        other = f"u{(i + 1) % self._clients}" if user == f"u{i}" else f"u{i}"
        return other if other != user else ""

    def _put(self, user: str, frame: pb.ServerFrame) -> None:
        out = self._outs.get(user)
        if out is not None:
            out.append(frame)
            self._wakes[user].set()


async def _serve(clients: int, latency: float) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ChatServicer_to_server(FakeGateway(clients, latency), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes our stdin to stop us
    await server.stop(None)


@contextlib.contextmanager
def fake_gateway(clients: int, latency: float) -> Iterator[str]:
    """A fake gateway in a child process; yields its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.bench_local", "--serve",
         "--clients", str(clients), "--latency-ms", str(latency * 1000)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the measured side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    sends: int
    cpu_us_per_send: float
    per_second: float
    sends_per_frame: float
    send_p50_ms: float


@dataclass(frozen=True, slots=True)
class Load:
    clients: int
    senders: int
    sends: int
    """Measured sends in all (after a warm-up of a tenth as many)."""
    size: int
    rate: float = 0.0
    """Total sends/s the senders are paced at (0: back to back, each awaiting its send)."""


async def _drive(load: Load, send: Any, frames: Any) -> tuple[int, float, float, float, float]:
    """Run ``load.senders`` awaiting senders (sender s uses client s % clients) for a warm-up,
    then the measured sends: (sends, cpu s, wall s, frames written, p50 s)."""
    pad = "x" * load.size
    latencies: list[float] = []
    interval = load.senders / load.rate if load.rate > 0 else 0.0

    async def sender(s: int, count: int, record: bool) -> None:
        c = s % load.clients
        channel = f"c{c}"
        start = time.perf_counter()  # every sender in step, as ``clients bench`` paces them
        for n in range(count):
            if interval:
                delay = start + n * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            t0 = time.perf_counter()
            await send(c, channel, pad)
            if record:
                latencies.append(time.perf_counter() - t0)

    per_sender = max(1, load.sends // load.senders)
    warm = max(1, per_sender // 10)
    await asyncio.gather(*(sender(s, warm, False) for s in range(load.senders)))
    frames0 = frames()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender(s, per_sender, True) for s in range(load.senders)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = per_sender * load.senders
    return n, cpu, wall, frames() - frames0, statistics.median(latencies)


def _row(name: str, result: tuple[int, float, float, float, float]) -> Row:
    n, cpu, wall, frames, p50 = result
    return Row(
        name,
        n,
        round(cpu / n * 1e6, 1),
        round(n / wall, 0),
        round(n / frames, 1) if frames else float("nan"),
        round(p50 * 1000, 2),
    )


async def raw_stub(address: str, load: Load) -> Row:
    """The floor: generated stubs, no failover, no deadlines, no events."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
    futures: dict[str, asyncio.Future[int]] = {}
    queues: list[deque[pb.SendRequest]] = []
    wakes: list[asyncio.Event] = []
    tasks: list[asyncio.Task[None]] = []
    frames = [0]
    counter = [0]

    async def write_loop(call: Any, queue: deque[pb.SendRequest], wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                sends = [queue.popleft() for _ in range(min(len(queue), 256))]
                await call.write(pb.ClientFrame(sends=sends))
                frames[0] += 1

    async def read_loop(call: Any) -> None:
        while True:
            frame = await call.read()
            if not isinstance(frame, pb.ServerFrame):
                return
            for message in frame.messages:
                _ = message.seq
            for result in frame.results:
                future = futures.pop(result.idempotency_key, None)
                if future is not None and not future.done():
                    future.set_result(result.sent.seq)

    try:
        for i in range(load.clients):
            login = await stub.Login(pb.LoginRequest(user=f"u{i}", password="x"))
            call = stub.Session(metadata=(("authorization", f"Bearer {login.token}"),))
            await call.write(pb.ClientFrame(resume=pb.Resume()))
            await call.read()
            queue: deque[pb.SendRequest] = deque()
            wake = asyncio.Event()
            queues.append(queue)
            wakes.append(wake)
            tasks += [
                asyncio.create_task(write_loop(call, queue, wake)),
                asyncio.create_task(read_loop(call)),
            ]
        loop = asyncio.get_running_loop()

        async def send(c: int, conversation: str, text: str) -> None:
            counter[0] += 1
            key = f"r{counter[0]}"
            future: asyncio.Future[int] = loop.create_future()
            futures[key] = future
            queues[c].append(
                pb.SendRequest(conversation=conversation, text=text, idempotency_key=key)
            )
            wakes[c].set()
            await future

        return _row("raw stub", await _drive(load, send, lambda: frames[0]))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close(None)


async def library(address: str, load: Load, options: ClientOptions) -> Row:
    """``AsyncChatClient`` as ``python -m clients bench`` uses it."""
    clients: list[AsyncChatClient] = []
    listeners: list[asyncio.Task[None]] = []
    delivered = [0]

    async def listen(client: AsyncChatClient) -> None:
        batches = getattr(client, "event_batches", None)  # None: a library from before it
        if batches is None:
            async for event in client.events():
                delivered[0] += isinstance(event, MessageEvent)
            return
        async for batch in batches():
            delivered[0] += sum(isinstance(event, MessageEvent) for event in batch)

    def frames() -> int:
        return sum(c.session.send_frames_written for c in clients if c.session is not None)

    try:
        for i in range(load.clients):
            client = AsyncChatClient(Endpoints([address]), options=options)
            clients.append(client)
            await client.login(f"u{i}", "x")
            await client.open_session()
            listeners.append(asyncio.create_task(listen(client)))

        async def send(c: int, conversation: str, text: str) -> None:
            await clients[c].send(text, conversation)

        linger_ms = options.frame_linger * 1000
        name = f"library ({options.max_frames_in_flight} frames, {linger_ms:g} ms)"
        return _row(name, await _drive(load, send, frames))
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        for client in clients:
            await client.close()


async def _measure(address: str, which: str, load: Load, options: ClientOptions) -> Row:
    if which == "raw":
        return await raw_stub(address, load)
    return await library(address, load, options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clients.bench_local",
        description="CPU per send of the client library against a fake gateway process.",
    )
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--senders", type=int, default=64)
    p.add_argument("--sends", type=int, default=20_000, help="measured sends per row")
    p.add_argument("--size", type=int, default=200, help="message bytes")
    p.add_argument(
        "--latency-ms", type=float, action="append",
        help="the fake's answer delay (repeat for several; default 0 and 20)",
    )  # fmt: skip
    p.add_argument(
        "--policy", action="append", metavar="FRAMES:LINGER_MS",
        help="library frame policy rows (repeat; default: the ClientOptions default)",
    )  # fmt: skip
    p.add_argument(
        "--rate", type=float, default=0.0,
        help="pace the senders at this many sends/s in all (default: back to back)",
    )  # fmt: skip
    p.add_argument("--no-raw", action="store_true", help="skip the raw-stub rows")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    latencies = args.latency_ms or [0.0, 20.0]
    if args.serve:
        asyncio.run(_serve(args.clients, latencies[0] / 1000))
        return 0
    load = Load(args.clients, args.senders, args.sends, args.size, args.rate)
    default = ClientOptions()
    policies = [
        (int(f), float(ms) / 1000) for f, ms in (x.split(":") for x in args.policy or [])
    ] or [(default.max_frames_in_flight, default.frame_linger)]
    print(
        f"clients bench_local: {load.clients} clients, {load.senders} awaiting senders, "
        f"{load.sends} sends per row, {load.size} B, "
        + (f"paced at {load.rate:g}/s, " if load.rate else "")
        + "fake gateway in a child process"
    )
    print(
        f"{'row':<34} {'latency':>8} {'CPU us/send':>12} {'sends/s':>8} {'sends/frame':>12} "
        f"{'p50':>8}"
    )
    for latency_ms in latencies:
        rows: list[tuple[str, ClientOptions]] = [] if args.no_raw else [("raw", default)]
        for frames, linger in policies:
            opts = ClientOptions(max_frames_in_flight=frames, frame_linger=linger)
            rows.append(("library", opts))
        for which, opts in rows:
            with fake_gateway(load.clients, latency_ms / 1000) as address:
                row = asyncio.run(_measure(address, which, load, opts))
            print(
                f"{row.name:<34} {latency_ms:>6g}ms {row.cpu_us_per_send:>12.1f} "
                f"{row.per_second:>8.0f} {row.sends_per_frame:>12.1f} {row.send_p50_ms:>6.2f}ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
