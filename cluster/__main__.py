"""``python -m cluster``: run a local group (``up``) or a benchmark (``bench core``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster", description="raftchat's Raft library: local runs and benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="run a local Raft cluster in this process, data on disk",
        description="Run NODES replicas of GROUPS Raft groups in this process, each node with "
        "its own durable log under --data-dir; elects leaders, commits a heartbeat write every "
        "second, recovers everything when restarted on the same directory. Ctrl-C stops.",
    )
    up.add_argument("--data-dir", default=os.environ.get("RAFTCHAT_DATA_DIR", "./data"),
                    help="where the logs live (env RAFTCHAT_DATA_DIR; default ./data)")
    up.add_argument("--nodes", type=int, default=3, help="replicas per group (default 3)")
    up.add_argument("--groups", type=int, default=8, help="Raft groups (default 8)")
    up.add_argument("--duration", type=float, default=None,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    bench = sub.add_parser("bench", help="print performance figures (never fails on a time)")
    bench.add_argument("target", choices=["core"], help="core: 3 replicas in one process, on disk")
    bench.add_argument("--seconds", type=float, default=2.0, help="run time per row (default 2)")
    bench.add_argument("--size", type=int, default=200, help="proposal size in bytes (default 200)")
    bench.add_argument("--windows", default="64,256,4096",
                       help="comma-separated proposals kept in flight, one row pair each "
                       "(default 64,256,4096)")
    bench.add_argument("--data-dir", default=None,
                       help="directory for the temporary logs (default: the system temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from cluster.local import run_local

        if args.nodes < 1 or args.groups < 1:
            print("error: --nodes and --groups must be at least 1", file=sys.stderr)
            return 2
        run_local(
            data_dir=Path(args.data_dir), nodes=args.nodes, groups=args.groups,
            duration=args.duration,
        )
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
