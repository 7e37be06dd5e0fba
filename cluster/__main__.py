"""``python -m cluster``: start a local cluster (``up``), inspect it (``status``), benchmark."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster",
        description="raftchat's multi-group Raft cluster: start it, inspect it, measure it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    default_dir = os.environ.get("RAFTCHAT_DATA_DIR", "./data")

    up = sub.add_parser(
        "up",
        help="start discovery and shard nodes as child processes, data on disk",
        description="Start a whole local cluster in the foreground: discovery replicas and shard "
        "nodes as child processes, each with its data under --data-dir. Prints when every group "
        "has a leader and writes DATA_DIR/cluster.json with every endpoint. Ctrl-C stops it "
        "cleanly; the same command on the same --data-dir restarts it with all data intact "
        "(the shape flags must then match what cluster.json says).",
    )
    up.add_argument(
        "--data-dir",
        default=default_dir,
        help="where every process keeps its data (env RAFTCHAT_DATA_DIR; ./data)",
    )
    up.add_argument(
        "--nodes",
        type=int,
        default=_env_int("RAFTCHAT_NODES", 3),
        help="shard nodes (env RAFTCHAT_NODES; default 3)",
    )
    up.add_argument(
        "--groups",
        type=int,
        default=_env_int("RAFTCHAT_GROUPS", 8),
        help="Raft groups, fixed at creation (env RAFTCHAT_GROUPS; default 8)",
    )
    up.add_argument(
        "--rf",
        type=int,
        default=_env_int("RAFTCHAT_RF", 3),
        help="replicas per group (env RAFTCHAT_RF; default 3)",
    )
    up.add_argument(
        "--discovery-replicas",
        type=int,
        choices=(1, 3),
        default=_env_int("RAFTCHAT_DISCOVERY_REPLICAS", 1),
        help="discovery Raft group size: 1 (dev) or 3 (HA); default 1",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=_env_int("RAFTCHAT_BASE_PORT", 7100),
        help="first port; discovery uses base.., nodes base+20.. (default 7100; "
        "0 picks free ports)",
    )
    up.add_argument(
        "--host",
        default=os.environ.get("RAFTCHAT_HOST", "127.0.0.1"),
        help="address every process listens on (default 127.0.0.1)",
    )
    up.add_argument(
        "--fsync",
        choices=("on", "off"),
        default="on",
        help="off skips fsync: for benchmarks only, acknowledged data may be lost",
    )

    status = sub.add_parser(
        "status",
        help="table of nodes and groups of the cluster in --data-dir",
        description="Ask discovery and every node of the cluster recorded in "
        "DATA_DIR/cluster.json: nodes up/down, groups with replicas, leader, term, commit and "
        "applied index and follower lag.",
    )
    status.add_argument(
        "--data-dir",
        default=default_dir,
        help="the cluster's data dir (env RAFTCHAT_DATA_DIR; default ./data)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    down = sub.add_parser(
        "down",
        help="stop the cluster that `up` started on --data-dir",
        description="Stop the cluster running on --data-dir: ask its launcher to stop (which "
        "stops every process cleanly), then stop any process it left behind (if the launcher "
        "itself was killed). Data stays on disk; `up` restarts the same cluster.",
    )
    down.add_argument(
        "--data-dir",
        default=default_dir,
        help="the cluster's data dir (env RAFTCHAT_DATA_DIR; default ./data)",
    )

    boot = sub.add_parser(
        "bootstrap",
        help="fix a cluster's nodes, group count and rf in discovery (multi-machine set-ups)",
        description="One Bootstrap call to discovery: which node ids exist and where, how many "
        "groups, how many replicas each. Idempotent; a different existing bootstrap is refused. "
        "`cluster up` does this itself for local clusters.",
    )
    boot.add_argument(
        "--discovery", required=True, help="comma-separated discovery public addresses"
    )
    boot.add_argument(
        "--nodes",
        required=True,
        help="ID=PUBLIC/INTERNAL,... e.g. 1=10.0.0.1:7120/10.0.0.1:7121,...",
    )
    boot.add_argument("--groups", type=int, default=8, help="Raft groups (default 8)")
    boot.add_argument("--rf", type=int, default=3, help="replicas per group (default 3)")
    boot.add_argument("--cluster-id", default="", help="default: a random id")

    bench = sub.add_parser("bench", help="print performance figures (never fails on a time)")
    bench.add_argument(
        "target",
        choices=["core", "cluster", "snapshot", "grpc"],
        help="core: 3 replicas in one process, on disk; cluster: 3 node processes over gRPC; "
        "snapshot: how long a local snapshot of a large state stalls a node; grpc: this "
        "machine's loopback gRPC and TCP echo rates, to read the other figures against",
    )
    bench.add_argument(
        "--in-flight", type=int, default=64, help="cluster: concurrent Append calls (default 64)"
    )
    bench.add_argument(
        "--batches",
        default="1,16",
        help="cluster: comma-separated records per Append call (default 1,16)",
    )
    bench.add_argument("--seconds", type=float, default=2.0, help="run time per row (default 2)")
    bench.add_argument("--size", type=int, default=200, help="proposal size in bytes (default 200)")
    bench.add_argument(
        "--windows",
        default="64,256,4096",
        help="comma-separated proposals kept in flight, one row pair each (default 64,256,4096)",
    )
    bench.add_argument(
        "--mb", type=int, default=200, help="snapshot: megabytes of state (default 200)"
    )
    bench.add_argument(
        "--data-dir",
        default=None,
        help="directory for the temporary logs (default: the system temp dir)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from cluster.launcher import run_up

        return run_up(
            data_dir=Path(args.data_dir),
            nodes=args.nodes,
            groups=args.groups,
            rf=args.rf,
            discovery_replicas=args.discovery_replicas,
            base_port=args.base_port,
            host=args.host,
            fsync=args.fsync == "on",
        )
    if args.command == "down":
        from cluster.launcher import run_down

        return run_down(Path(args.data_dir))
    if args.command == "bootstrap":
        from cluster.launcher import LaunchError, bootstrap_remote

        try:
            print(
                bootstrap_remote(
                    discovery=[a.strip() for a in args.discovery.split(",") if a.strip()],
                    nodes=args.nodes,
                    groups=args.groups,
                    rf=args.rf,
                    cluster_id=args.cluster_id,
                )
            )
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "status":
        from cluster.launcher import LaunchError, load_spec
        from cluster.status import collect, render_json, render_table

        try:
            spec = load_spec(Path(args.data_dir))
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result = collect(spec)
        print(render_json(result) if args.json else render_table(result))
        return 0 if all(n.up for n in result.nodes) else 1
    if args.target == "cluster":
        from cluster.bench_cluster import bench_cluster

        batches = [int(b) for b in args.batches.split(",")]
        bench_cluster(
            seconds=args.seconds, size=args.size, in_flight=args.in_flight, batches=batches
        )
        return 0
    if args.target == "grpc":
        from cluster.bench_grpc import bench_grpc

        bench_grpc(args.seconds)
        return 0
    if args.target == "snapshot":
        from cluster.bench_snapshot import bench_snapshot

        if args.mb < 1:
            print("error: --mb must be at least 1", file=sys.stderr)
            return 2
        bench_snapshot(args.mb, args.data_dir)
        return 0
    from cluster.bench import bench_core

    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        print(f"error: --windows must be integers, got {args.windows!r}", file=sys.stderr)
        return 2
    if args.size < 0 or args.seconds <= 0 or any(w < 1 for w in windows):
        print("error: --size >= 0, --seconds > 0 and every window >= 1 please", file=sys.stderr)
        return 2
    bench_core(seconds=args.seconds, size=args.size, windows=windows, data_dir=args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
