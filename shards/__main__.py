"""``python -m shards``: run one shard node (see ``shards.node`` for what start-up does)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from cluster.types import NodeId


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m shards",
        description="Run a shard node: registers with discovery, hosts its Raft groups from "
        "--data-dir, serves the public API on --listen and Raft traffic on --internal-listen. "
        "Every flag falls back to the environment variable named in its help.",
    )
    p.add_argument(
        "--node-id",
        type=int,
        default=int(env("RAFTCHAT_NODE_ID", "0")),
        help="this node's id, as bootstrapped in discovery (RAFTCHAT_NODE_ID)",
    )
    p.add_argument(
        "--listen",
        default=env("RAFTCHAT_LISTEN", ""),
        help="public address to bind, host:port (RAFTCHAT_LISTEN)",
    )
    p.add_argument(
        "--internal-listen",
        default=env("RAFTCHAT_INTERNAL_LISTEN", ""),
        help="node-to-node Raft address to bind (RAFTCHAT_INTERNAL_LISTEN)",
    )
    p.add_argument(
        "--advertise",
        default=env("RAFTCHAT_ADVERTISE", ""),
        help="public address others should use (default: --listen; RAFTCHAT_ADVERTISE)",
    )
    p.add_argument(
        "--internal-advertise",
        default=env("RAFTCHAT_INTERNAL_ADVERTISE", ""),
        help="Raft address peers should use (default: --internal-listen; "
        "RAFTCHAT_INTERNAL_ADVERTISE)",
    )
    p.add_argument(
        "--link-port",
        type=int,
        default=int(env("RAFTCHAT_LINK_PORT", "0")),
        help="port of the plain TCP link that carries Raft batches between nodes, on the host "
        "of --internal-listen (peers learn it through the internal port; default 0: any free "
        "port; RAFTCHAT_LINK_PORT)",
    )
    p.add_argument(
        "--discovery",
        default=env("RAFTCHAT_DISCOVERY", ""),
        help="comma-separated discovery public addresses (RAFTCHAT_DISCOVERY)",
    )
    p.add_argument(
        "--data-dir",
        default=env("RAFTCHAT_DATA_DIR", ""),
        help="this node's data directory (RAFTCHAT_DATA_DIR)",
    )
    p.add_argument(
        "--fsync",
        choices=("on", "off"),
        default=env("RAFTCHAT_FSYNC", "on"),
        help="off: skip fsync (benchmarks only; acknowledged writes may be lost)",
    )
    p.add_argument(
        "--tick-ms",
        type=int,
        default=int(env("RAFTCHAT_TICK_MS", "50")),
        help="Raft tick in milliseconds; a leader heartbeats every tick (default 50)",
    )
    p.add_argument(
        "--election-ticks",
        type=int,
        default=int(env("RAFTCHAT_ELECTION_TICKS", "6")),
        help="a follower that hears no leader for a random 1-2x this many ticks starts an "
        "election, and a leader that hears no quorum for this long steps down: with 50 ms "
        "ticks, 0.3-0.6 s, so sends resume within about a second of a leader's death "
        "(default 6; RAFTCHAT_ELECTION_TICKS)",
    )
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=int(env("RAFTCHAT_SNAPSHOT_ENTRIES", "10000")),
        help="snapshot a group and compact its log after this many applied entries",
    )
    p.add_argument(
        "--app",
        choices=("chat", "log"),
        default=env("RAFTCHAT_APP", "chat"),
        help="what the groups hold: chat (the Chat API, default) or log (a bare replicated log "
        "served as ShardLog, for Raft tests and benchmarks) (RAFTCHAT_APP)",
    )
    p.add_argument(
        "--send-rate",
        type=float,
        default=float(env("RAFTCHAT_SEND_RATE", "200")),
        help="sends per second per user at this gateway; 0 = unlimited (RAFTCHAT_SEND_RATE)",
    )
    p.add_argument(
        "--send-burst",
        type=float,
        default=float(env("RAFTCHAT_SEND_BURST", "400")),
        help="sends a user may make at once after being idle (RAFTCHAT_SEND_BURST)",
    )
    p.add_argument(
        "--route-grace",
        type=float,
        default=float(env("RAFTCHAT_ROUTE_GRACE", "10")),
        help="seconds a node must stay down in discovery's map before the chat session routes "
        "it served are dropped and its users' contacts see them go offline (default 10; "
        "RAFTCHAT_ROUTE_GRACE)",
    )
    p.add_argument("--log-level", default=env("RAFTCHAT_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    missing = [
        flag
        for flag, value in (
            ("--node-id", args.node_id),
            ("--listen", args.listen),
            ("--internal-listen", args.internal_listen),
            ("--discovery", args.discovery),
            ("--data-dir", args.data_dir),
        )
        if not value
    ]
    if missing:
        parser.error(f"missing {', '.join(missing)} (or their environment variables)")
    if args.node_id < 1 or args.tick_ms < 1 or args.snapshot_entries < 1:
        parser.error("--node-id, --tick-ms and --snapshot-entries must be positive")
    if args.election_ticks < 2:
        parser.error("--election-ticks must be at least 2 (a leader heartbeats every tick)")
    if not args.route_grace > 0:
        parser.error("--route-grace must be positive")
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s node-{args.node_id} %(levelname)s %(name)s: %(message)s",
    )
    from shards.node import NodeOptions, serve

    opts = NodeOptions(
        node_id=NodeId(args.node_id),
        listen=args.listen,
        internal_listen=args.internal_listen,
        advertise=args.advertise or args.listen,
        internal_advertise=args.internal_advertise or args.internal_listen,
        discovery=tuple(a.strip() for a in args.discovery.split(",") if a.strip()),
        data_dir=Path(args.data_dir),
        fsync=args.fsync == "on",
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        snapshot_entries=args.snapshot_entries,
        app=args.app,
        send_rate=args.send_rate,
        send_burst=args.send_burst,
        link_port=args.link_port,
        route_grace=args.route_grace,
    )
    return asyncio.run(serve(opts))


if __name__ == "__main__":
    sys.exit(main())
