"""Pure pieces of the core checked against brute-force definitions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cluster.log import RaftLog
from cluster.messages import Entry, HardState, Snapshot, SnapshotMeta, StoredState
from cluster.progress import Progress, ProgressState
from cluster.quorum import VoteResult, committed_index, vote_result
from cluster.types import NodeId

VOTERS = st.lists(st.integers(1, 9), min_size=1, max_size=7, unique=True).map(
    lambda xs: tuple(NodeId(x) for x in xs)
)


@given(VOTERS, st.data())
def test_committed_index_is_the_largest_index_a_majority_holds(
    voters: tuple[NodeId, ...], data: st.DataObject
) -> None:
    match = {v: data.draw(st.integers(0, 20)) for v in voters}
    got = committed_index(voters, match)
    brute = max(i for i in range(21) if sum(m >= i for m in match.values()) * 2 > len(voters))
    assert got == brute


@given(VOTERS, st.data())
def test_vote_result_matches_counting(voters: tuple[NodeId, ...], data: st.DataObject) -> None:
    votes = {v: data.draw(st.sampled_from([True, False, None])) for v in voters}
    cast = {v: b for v, b in votes.items() if b is not None}
    need = len(voters) // 2 + 1
    granted = sum(cast.values())
    undecided = len(voters) - len(cast)
    expected = (
        VoteResult.WON
        if granted >= need
        else VoteResult.LOST
        if granted + undecided < need
        else VoteResult.PENDING
    )
    assert vote_result(voters, cast) is expected


def _log(terms: list[int], snapshot_at: int = 0) -> RaftLog:
    entries = [Entry(t, i + 1) for i, t in enumerate(terms)]
    snap = None
    if snapshot_at:
        snap = Snapshot(SnapshotMeta(snapshot_at, terms[snapshot_at - 1]), b"s")
        entries = entries[snapshot_at:]
    return RaftLog(StoredState(HardState(), snap, tuple(entries)))


TERMS = st.lists(st.integers(1, 5), min_size=1, max_size=30).map(sorted)


@given(TERMS, st.data())
def test_find_conflict_by_term_is_the_last_index_with_a_term_not_above(
    terms: list[int], data: st.DataObject
) -> None:
    snapshot_at = data.draw(st.integers(0, len(terms) - 1))
    log = _log(terms, snapshot_at)
    index = data.draw(st.integers(0, len(terms) + 3))
    term = data.draw(st.integers(0, 6))
    got = log.find_conflict_by_term(index, term)
    top = min(index, len(terms))
    if top <= snapshot_at:
        expected = top
    else:
        below = [i for i in range(snapshot_at + 1, top + 1) if terms[i - 1] <= term]
        expected = max(below) if below else snapshot_at
    assert got == expected


def test_append_replaces_the_suffix_and_marks_it_unstable() -> None:
    log = _log([1, 1, 2, 2])
    log.stable_to(4, 2)
    assert log.unstable_entries() == []
    log.append([Entry(3, 3), Entry(3, 4), Entry(3, 5)])
    assert [e.term for e in log.entries(1, 6)] == [1, 1, 3, 3, 3]
    assert [e.index for e in log.unstable_entries()] == [3, 4, 5]
    log.stable_to(4, 2)  # a stale acknowledgement for the replaced entry changes nothing
    assert [e.index for e in log.unstable_entries()] == [3, 4, 5]
    log.stable_to(5, 3)
    assert log.unstable_entries() == []


def test_entries_respects_the_byte_cap_but_always_returns_one() -> None:
    log = RaftLog(StoredState(entries=tuple(Entry(1, i, b"x" * 10) for i in range(1, 6))))
    assert len(log.entries(1, 6, max_bytes=25)) == 2
    assert len(log.entries(1, 6, max_bytes=5)) == 1
    assert len(log.entries(1, 6)) == 5


def test_progress_pipelines_until_the_window_is_full_and_frees_on_ack() -> None:
    pr = Progress(next_index=1, max_inflight=2)
    pr.become_replicate()
    pr.sent_entries(3)
    assert not pr.paused
    pr.sent_entries(5)
    assert pr.paused and pr.next == 6
    assert pr.maybe_update(3)
    assert not pr.paused and list(pr.inflight) == [5]
    assert not pr.maybe_update(2)  # stale


def test_progress_ignores_stale_rejections() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    assert pr.state is ProgressState.PROBE
    assert not pr.maybe_decrease(rejected=5, hint=3)  # not the probe we sent (prev was 9)
    assert pr.maybe_decrease(rejected=9, hint=3)
    assert pr.next == 4
