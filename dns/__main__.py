"""``python -m dns``: run one discovery replica.

A minimal set-up runs one replica; for high availability run three (each with the same
``--peers`` list), which keep answering while any one of them is down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster.types import NodeId
from dns.service import DEFAULT_LEASE_MS, DEFAULT_WRITE_TIMEOUT

ENV_PREFIX = "RAFTCHAT_DNS_"

EPILOG = f"""\
Every flag falls back to an environment variable ({ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}ID,
{ENV_PREFIX}LISTEN, {ENV_PREFIX}INTERNAL_LISTEN, {ENV_PREFIX}PEERS, {ENV_PREFIX}DATA_DIR).

Three replicas on one machine:
  python -m dns --id 1 --listen 127.0.0.1:7001 --internal-listen 127.0.0.1:7101 \\
      --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --data-dir data/dns1
  (and the same with --id 2 / 3, their own ports and data dirs)

Then bootstrap the cluster map once (through any replica) with dns.client.DiscoveryClient or
`python -m cluster`. Writes go to the discovery leader; a follower answers FAILED_PRECONDITION
with the leader's address in the `x-leader` trailing metadata. Reads (GetMap) are served by any
replica from its own copy, which may lag the leader slightly.

Exit status: 0 after SIGINT/SIGTERM, 1 when the replica cannot start (port in use, a data dir
that belongs to another node), 2 for bad flags.
"""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def parse_peers(text: str) -> dict[NodeId, str]:
    """``1=host:port,2=host:port`` -> {1: "host:port", 2: "host:port"}."""
    peers: dict[NodeId, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, addr = item.partition("=")
        if not sep or not key.strip().isdigit() or ":" not in addr:
            raise argparse.ArgumentTypeError(f"peer {item!r} is not ID=HOST:PORT")
        node = NodeId(int(key))
        if node in peers:
            raise argparse.ArgumentTypeError(f"peer {node} is listed twice")
        peers[node] = addr.strip()
    if not peers:
        raise argparse.ArgumentTypeError("no peers given")
    return peers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dns",
        description="Run one replica of the discovery service: the authoritative, "
        "epoch-numbered cluster map (nodes, placements, group leaders, node health), "
        "replicated by its own Raft group.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--id", type=int, default=_env("ID"), help="this replica's id (positive; one of --peers)"
    )
    p.add_argument(
        "--listen",
        default=_env("LISTEN"),
        help="HOST:PORT of the public Discovery gRPC service (with health and reflection)",
    )
    p.add_argument(
        "--internal-listen",
        default=_env("INTERNAL_LISTEN"),
        help="HOST:PORT for Raft traffic between discovery replicas",
    )
    p.add_argument(
        "--peers",
        type=parse_peers,
        default=_env("PEERS"),
        help="ID=HOST:INTERNAL_PORT of every discovery replica, this one included, comma "
        "separated (default: just this one, at --internal-listen)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=_env("DATA_DIR"), help="the Raft log lives here"
    )
    p.add_argument(
        "--advertise",
        default=_env("ADVERTISE"),
        help="public HOST:PORT clients are sent to (default: --listen)",
    )
    p.add_argument(
        "--lease-ms",
        type=int,
        default=_env("LEASE_MS", str(DEFAULT_LEASE_MS)),
        help="a node is up for this long after its last heartbeat (default %(default)s)",
    )
    p.add_argument(
        "--write-timeout",
        type=float,
        default=_env("WRITE_TIMEOUT", str(DEFAULT_WRITE_TIMEOUT)),
        help="seconds a write may wait to commit before UNAVAILABLE (default %(default)s)",
    )
    p.add_argument(
        "--tick-ms",
        type=int,
        default=_env("TICK_MS", "50"),
        help="Raft tick in milliseconds; elections take 10-20 ticks (default %(default)s)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=_env("SNAPSHOT_EVERY", "1000"),
        help="applied entries between snapshots of the map, which bound the log (default "
        "%(default)s)",
    )
    p.add_argument(
        "--fsync",
        choices=("on", "off"),
        default=_env("FSYNC", "on"),
        help="fsync the Raft log (default on; off only for benchmarks: a crash may lose writes)",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING (default), ERROR",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("id", "listen", "internal_listen", "data_dir"):
        if getattr(args, flag) is None:
            parser.error(f"--{flag.replace('_', '-')} is required (or {ENV_PREFIX}{flag.upper()})")
    # argparse converts string defaults (the environment fallbacks) like flags, so a bad
    # environment value is reported just like a bad flag.
    peers = args.peers
    if peers is None:
        peers = {NodeId(args.id): args.internal_listen}
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Imported late so `--help` works without loading gRPC and the Raft runtime.
    from dns.server import DiscoveryConfig, ReplicaFailed, StartupError, serve

    try:
        config = DiscoveryConfig(
            replica_id=NodeId(args.id),
            listen=args.listen,
            internal_listen=args.internal_listen,
            peers=peers,
            data_dir=args.data_dir,
            advertise=args.advertise,
            lease_ms=args.lease_ms,
            write_timeout=args.write_timeout,
            fsync=args.fsync == "on",
            tick_interval=args.tick_ms / 1000,
            compact_after=args.snapshot_every,
        )
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    try:
        asyncio.run(run())
    except (StartupError, ReplicaFailed) as exc:
        print(f"python -m dns: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
