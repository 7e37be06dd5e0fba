"""``python -m cluster bench grpc``: what this machine's loopback gRPC costs before any Raft.

A calibration, so that figures of the other benchmarks can be read against the machine they ran
on: a server process echoes 200-byte messages on one ``grpc.aio`` bidirectional stream (one
message per stream frame), and a client process keeps 1, 8 or 64 of them in flight. A bare
replicated log needs at least three such round trips per write (client -> leader, leader ->
each follower and back), so echoes/s bounds what any log of this shape can commit with one
message per frame on this machine. The same is measured over a plain asyncio TCP stream (what
``cluster.streamlink`` uses between shard nodes) as the baseline, in the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from dataclasses import dataclass

import grpc

PAYLOAD = b"x" * 200
IN_FLIGHT = (1, 8, 64)


def _same(data: bytes) -> bytes:
    return data


async def _echo(request_iterator: object, context: object) -> object:
    async for request in request_iterator:  # type: ignore[attr-defined]
        yield request


async def _serve_grpc(port: multiprocessing.SimpleQueue[int]) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "Echo",
        {
            "Echo": grpc.stream_stream_rpc_method_handler(
                _echo, request_deserializer=_same, response_serializer=_same
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await server.wait_for_termination()


async def _serve_tcp(port: multiprocessing.SimpleQueue[int]) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(await reader.readexactly(len(PAYLOAD)))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port.put(int(server.sockets[0].getsockname()[1]))
    await server.serve_forever()


def _server(kind: str, port: multiprocessing.SimpleQueue[int]) -> None:
    asyncio.run(_serve_grpc(port) if kind == "grpc" else _serve_tcp(port))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class EchoRate:
    transport: str
    in_flight: int
    per_second: float
    client_cpu_us: float


async def _grpc_client(port: int, in_flight: int, seconds: float) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            "/Echo/Echo", request_serializer=_same, response_deserializer=_same
        )
        call = method()  # type: ignore[call-arg]  # no iterator: the call is written to
        for _ in range(in_flight):
            await call.write(PAYLOAD)
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            await call.read()
            done += 1
            await call.write(PAYLOAD)
        elapsed = time.perf_counter() - began
        await call.done_writing()
        return done, elapsed


async def _tcp_client(port: int, in_flight: int, seconds: float) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(in_flight):
        writer.write(PAYLOAD)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        await reader.readexactly(len(PAYLOAD))
        done += 1
        writer.write(PAYLOAD)
    elapsed = time.perf_counter() - began
    writer.close()
    return done, elapsed


def _measure(kind: str, seconds: float) -> list[EchoRate]:
    ports: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    server = multiprocessing.Process(target=_server, args=(kind, ports), daemon=True)
    server.start()
    try:
        port = ports.get()
        rows = []
        for in_flight in IN_FLIGHT:
            client = _grpc_client if kind == "grpc" else _tcp_client
            cpu = _cpu()
            done, elapsed = asyncio.run(client(port, in_flight, seconds))
            used = _cpu() - cpu
            rows.append(EchoRate(kind, in_flight, done / elapsed, used / max(done, 1) * 1e6))
        return rows
    finally:
        server.terminate()
        server.join(5)


def bench_grpc(seconds: float) -> list[EchoRate]:
    rows = _measure("tcp", seconds) + _measure("grpc", seconds)
    print(f"loopback echo of 200 B messages, one per frame, {seconds:g} s per row")
    print(f"{'transport':<10} {'in flight':>9} {'echoes/s':>10} {'client cpu/echo':>16}")
    for r in rows:
        print(
            f"{r.transport:<10} {r.in_flight:>9} {r.per_second:>10,.0f} {r.client_cpu_us:>13.0f} us"
        )
    return rows
