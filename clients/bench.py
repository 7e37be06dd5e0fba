"""``python -m clients bench``: acknowledged sends per second and push delivery latency, measured
through the client library against a real cluster of node processes.

What it does:

1. starts a local cluster (3 nodes, 8 groups, rf 3, fsync on, in a temporary directory) unless
   ``--cluster-file`` names a running one;
2. registers ``--clients`` users, one ``AsyncChatClient`` each with its session open, spread
   over the nodes; channel ``i`` has two members, clients ``i`` and ``i + 1`` (mod clients), so
   every message is pushed to its sender's session and to one listener on (usually) another node;
3. **peak**: ``--senders`` concurrent sender tasks (spread over the clients) send 200-byte
   messages back to back for ``--seconds``: acknowledged sends/s, send latency p50/p99;
4. **half load**: the same senders paced at half the measured peak, their start times spread
   evenly over one period so the sends arrive as a steady stream; each message carries its
   send time, and the listener's receive time minus it is the delivery latency (send → another
   subscribed client has it), p50/p99.

The per-user send rate limit is switched off on a cluster the benchmark starts (``--send-rate
0``): a few benchmark users stand for many real ones. Figures, never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clients.client import AsyncChatClient
from clients.models import MessageEvent

PASSWORD = "bench-password"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    acked: int
    per_second: float
    send_p50_ms: float
    send_p99_ms: float
    delivered: int
    delivery_p50_ms: float
    delivery_p99_ms: float


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Bench:
    def __init__(self, endpoints: list[str], clients: int, senders: int, size: int) -> None:
        self.endpoints = endpoints
        self.n_clients = clients
        self.n_senders = senders
        self.size = size
        self.clients: list[AsyncChatClient] = []
        self.deliveries: list[float] = []
        self._listeners: list[asyncio.Task[None]] = []
        self._measure_delivery = False
        self._tag = f"{time.time_ns():x}"

    async def setup(self) -> None:
        for i in range(self.n_clients):
            ordered = (
                self.endpoints[i % len(self.endpoints) :]
                + self.endpoints[: i % len(self.endpoints)]
            )
            client = await AsyncChatClient.connect(ordered)
            user = f"b{self._tag[-6:]}u{i}"
            await client.register(user, PASSWORD)
            await client.login(user, PASSWORD)
            self.clients.append(client)
        for i, client in enumerate(self.clients):
            await client.create_channel(self.channel(i))
        for i in range(self.n_clients):
            await self.clients[(i + 1) % self.n_clients].join_channel(self.channel(i))
        for client in self.clients:
            await client.open_session()
            self._listeners.append(asyncio.create_task(self._listen(client)))

    def channel(self, i: int) -> str:
        return f"b{self._tag[-6:]}c{i}"

    async def _listen(self, client: AsyncChatClient) -> None:
        me = client.account.user if client.account is not None else ""
        async for batch in client.event_batches():
            if not self._measure_delivery:
                continue
            now = time.perf_counter()
            for event in batch:
                if not isinstance(event, MessageEvent) or event.message.sender == me:
                    continue
                try:
                    sent = float(event.message.text.split(" ", 1)[0])
                except ValueError:
                    continue
                self.deliveries.append(now - sent)

    async def run(self, name: str, seconds: float, rate: float | None) -> Phase:
        """``rate``: total sends/s to pace at (None: as fast as acknowledgements allow)."""
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        per_sender = None if rate is None else rate / self.n_senders
        rate_or_1 = rate or 1.0
        self.deliveries = []
        self._measure_delivery = rate is not None
        pad = "x" * self.size

        async def sender(s: int) -> None:
            c = s % self.n_clients
            client = self.clients[c]
            channel = self.channel(c)
            n = 0
            # Paced senders start evenly spread over one period, so the load arrives as a
            # steady stream; started together they would fire in bursts of --senders sends.
            start = time.perf_counter() + (0.0 if per_sender is None else s / rate_or_1)
            while time.perf_counter() < stop:
                if per_sender is not None:
                    due = start + n / per_sender
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the load, not synchronisation
                t0 = time.perf_counter()
                text = f"{t0:.6f} {pad}"[: max(self.size, 20)]
                await client.send(text, channel)
                latencies.append(time.perf_counter() - t0)
                n += 1

        began = time.perf_counter()
        await asyncio.gather(*(sender(s) for s in range(self.n_senders)))
        elapsed = time.perf_counter() - began
        self._measure_delivery = False
        return Phase(
            name,
            round(elapsed, 2),
            len(latencies),
            round(len(latencies) / elapsed, 1),
            round(_pct(latencies, 0.5), 1),
            round(_pct(latencies, 0.99), 1),
            len(self.deliveries),
            round(_pct(self.deliveries, 0.5), 1),
            round(_pct(self.deliveries, 0.99), 1),
        )

    async def close(self) -> None:
        for task in self._listeners:
            task.cancel()
        for client in self.clients:
            await client.close()


async def _bench(args: argparse.Namespace, endpoints: list[str]) -> list[Phase]:
    bench = Bench(endpoints, args.clients, args.senders, args.size)
    try:
        await bench.setup()
        await bench.run("warm-up", 1.0, None)
        peak = await bench.run("peak", args.seconds, None)
        half = await bench.run("half load", args.seconds, peak.per_second / 2)
        return [peak, half]
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clients bench",
        description="Acknowledged sends/s and delivery latency through the client library "
        "(starts its own 3-node, 8-group cluster unless --cluster-file is given).",
    )
    p.add_argument("--cluster-file", help="use a running cluster (its cluster.json or data dir)")
    p.add_argument("--clients", type=int, default=8, help="users, one client+session each")
    p.add_argument("--senders", type=int, default=64, help="concurrent senders in all")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--size", type=int, default=200, help="message bytes")
    p.add_argument("--fsync", choices=("on", "off"), default="on")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.clients < 2 or args.senders < 1:
        p.error("--clients must be at least 2 and --senders at least 1")
    if args.cluster_file:
        from clients.endpoints import from_cluster_file

        phases = asyncio.run(_bench(args, list(from_cluster_file(args.cluster_file).addresses)))
    else:
        phases = _with_cluster(args)
    if args.json:
        print(json.dumps([asdict(x) for x in phases], indent=2))
    else:
        _print(args, phases)
    return 0


def _with_cluster(args: argparse.Namespace) -> list[Phase]:
    from cluster.launcher import LocalCluster

    with tempfile.TemporaryDirectory(prefix="raftchat-bench-") as tmp:
        cluster = LocalCluster.create_or_load(
            Path(tmp), nodes=3, groups=8, rf=3, discovery_replicas=1, base_port=0,
            fsync=args.fsync == "on",
        )  # fmt: skip
        cluster.node_args = ("--send-rate", "0")
        try:
            cluster.start()
            cluster.wait_for_leaders()
            return asyncio.run(_bench(args, [n.public for n in cluster.spec.nodes]))
        finally:
            cluster.stop()


def _print(args: argparse.Namespace, phases: list[Phase]) -> None:
    print(
        f"clients bench: {args.clients} clients, {args.senders} senders, {args.size} B, "
        f"fsync {args.fsync}, {args.seconds:g} s per phase"
    )
    print(
        f"{'phase':<10} {'sends/s':>9} {'send p50':>9} {'send p99':>9} "
        f"{'delivered':>9} {'deliv p50':>9} {'deliv p99':>9}"
    )
    for x in phases:
        print(
            f"{x.name:<10} {x.per_second:>9.0f} {x.send_p50_ms:>7.1f}ms {x.send_p99_ms:>7.1f}ms "
            f"{x.delivered:>9} {x.delivery_p50_ms:>7.1f}ms {x.delivery_p99_ms:>7.1f}ms"
        )


if __name__ == "__main__":
    sys.exit(main())
