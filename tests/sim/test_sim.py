"""Deterministic simulation: seeds 0..SIM_SEEDS-1 (default 1000) in parallelizable chunks.

Replay a failing seed with the command its failure prints, e.g.
``python -m tests.sim --seed 1234 --verbose``. ``SIM_SEEDS=50 pytest tests/sim`` runs fewer.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cluster.messages import VoteResponse
from cluster.raft import Replica
from cluster.ready import Ready
from cluster.types import NO_NODE
from tests.sim.checkers import Checkers
from tests.sim.params import SimFailure, SimParams
from tests.sim.world import run_seed

SIM_SEEDS = int(os.environ.get("SIM_SEEDS", "1000"))
CHUNKS = 20
_PER_CHUNK = -(-SIM_SEEDS // CHUNKS)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeds(chunk: int, tmp_path: Path) -> None:
    lo, hi = chunk * _PER_CHUNK, min(SIM_SEEDS, (chunk + 1) * _PER_CHUNK)
    failures = []
    for seed in range(lo, hi):
        try:
            run_seed(SimParams(seed=seed), workdir=tmp_path)
        except SimFailure as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} of seeds {lo}..{hi - 1} failed:\n" + "\n".join(failures)


def test_a_seed_replays_exactly(tmp_path: Path) -> None:
    first = run_seed(SimParams(seed=7, steps=150), workdir=tmp_path)
    second = run_seed(SimParams(seed=7, steps=150), workdir=tmp_path)
    assert first == second
    assert first.acked > 0 and first.elections > 0


def _first_failure(seeds: range, tmp_path: Path) -> SimFailure:
    for seed in seeds:
        try:
            run_seed(SimParams(seed=seed, steps=150), workdir=tmp_path)
        except SimFailure as exc:
            return exc
    raise AssertionError(f"the checkers missed a broken replica over seeds {seeds}")


def test_checkers_catch_a_follower_that_grants_every_vote(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    honest = Replica.ready

    def grant_everything(self: Replica) -> Ready:
        rd = honest(self)
        msgs = tuple(
            dataclasses.replace(m, granted=True) if isinstance(m, VoteResponse) else m
            for m in rd.messages
        )
        return dataclasses.replace(rd, messages=msgs)

    monkeypatch.setattr(Replica, "ready", grant_everything)
    # The bug also sends votes it never persisted; silence that (cheapest) checker to show
    # that the end-to-end ones catch a double vote on their own.
    monkeypatch.setattr(Checkers, "on_send", lambda self, node, msg: None)
    failure = _first_failure(range(20), tmp_path)
    assert "python -m tests.sim --seed" in str(failure)
    assert failure.reason.startswith("Violation: "), failure.reason
    assert any(
        what in failure.reason
        for what in ("election safety", "leader completeness", "log matching", "state machine")
    ), failure.reason


def test_checkers_catch_a_vote_that_is_not_persisted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    honest = Replica.ready

    def forget_vote(self: Replica) -> Ready:
        rd = honest(self)
        hs = rd.hard_state
        if hs is not None and hs.voted_for != NO_NODE:
            rd = dataclasses.replace(rd, hard_state=dataclasses.replace(hs, voted_for=NO_NODE))
        return rd

    monkeypatch.setattr(Replica, "ready", forget_vote)
    failure = _first_failure(range(5), tmp_path)
    assert "persist before send" in failure.reason, failure.reason
