"""Run or replay simulation seeds: ``python -m tests.sim --seed 1234 [--verbose]``.

``--seeds N`` runs seeds ``seed .. seed+N-1`` and prints one line per seed (or the failure with
its replay command); ``--verbose`` traces every fault, election, proposal and message.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.params import DEFAULT_HEAL_TICKS, DEFAULT_STEPS, SimFailure, SimParams
from tests.sim.world import run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="the (first) seed to run")
    parser.add_argument("--seeds", type=int, default=1, help="how many consecutive seeds")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="chaos ticks per seed")
    parser.add_argument("--heal-ticks", type=int, default=DEFAULT_HEAL_TICKS)
    parser.add_argument("--nodes", type=int, choices=(3, 5, 7), help="override the seed's choice")
    parser.add_argument("--groups", type=int, help="override the seed's choice (2-4)")
    parser.add_argument("--verbose", "-v", action="store_true", help="trace every event")
    parser.add_argument(
        "--keep-going", action="store_true", help="run every seed even after a failure"
    )
    args = parser.parse_args(argv)

    trace = print if args.verbose else None
    failures = 0
    start = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        params = SimParams(
            seed=seed,
            steps=args.steps,
            nodes=args.nodes,
            groups=args.groups,
            heal_ticks=args.heal_ticks,
        )
        t0 = time.perf_counter()
        try:
            result = run_seed(params, trace=trace)
        except SimFailure as exc:
            failures += 1
            print(f"FAIL {exc}", flush=True)
            if not args.keep_going:
                break
            continue
        print(f"ok   {result.summary()} [{time.perf_counter() - t0:.2f}s]", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{args.seeds} seed(s), {failures} failed, {elapsed:.1f}s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
