"""``python -m clients bench``: the client library's benchmark (see :mod:`clients.bench`).
The chat CLI is ``python -m clients.chat``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] != "bench":
        print(
            "usage: python -m clients bench [--help] [options]\n\n"
            "  bench   acknowledged sends/s and delivery latency through the client library\n"
            "          (python -m clients bench --help for its options)\n\n"
            "The chat CLI is python -m clients.chat.",
            file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout,
        )
        return 0 if args and args[0] in ("-h", "--help") else 2
    from clients.bench import main as bench_main

    return bench_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
