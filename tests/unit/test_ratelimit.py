"""The per-user send rate (``shards.chat.ratelimit``): a token bucket driven by an injected
clock, so every refill and every retry-after below is exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.chat import ratelimit
from shards.chat.ratelimit import SendRateLimiter


class Clock:
    """Monotonic seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float = 10.0, burst: float = 5.0) -> tuple[SendRateLimiter, Clock]:
    clock = Clock()
    return SendRateLimiter(rate, burst, clock), clock


def test_a_fresh_user_may_send_a_burst_then_waits() -> None:
    lim, _ = limiter(rate=10, burst=5)
    assert [lim.take("alice") for _ in range(5)] == [0] * 5
    assert lim.take("alice") == 100  # one token at 10/s: 100 ms
    assert lim.take("alice") == 100  # a refusal takes nothing
    assert lim.take("bob") == 0  # buckets are per user


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    lim, clock = limiter(rate=10, burst=5)
    for _ in range(5):
        lim.take("alice")
    clock.advance(0.1)
    assert lim.take("alice") == 0
    assert lim.take("alice") > 0
    clock.advance(0.35)  # 3.5 tokens
    assert [lim.take("alice") for _ in range(4)] == [0, 0, 0, 50]
    clock.advance(3600)  # idle for an hour: no more than the burst
    assert [lim.take("alice") for _ in range(5)] == [0] * 5
    assert lim.take("alice") == 100


def test_retry_after_is_the_exact_wait_rounded_up_to_a_millisecond() -> None:
    lim, clock = limiter(rate=3, burst=1)
    assert lim.take("alice") == 0
    wait = lim.take("alice")
    assert wait == 334  # 1/3 s = 333.33 ms, rounded up
    clock.advance(0.333)
    assert lim.take("alice") == 1  # 0.999 tokens: still refused, never "retry in 0"
    clock.advance(0.001)
    assert lim.take("alice") == 0
    # Honouring the answer is always enough.
    lim2, clock2 = limiter(rate=7, burst=2)
    for _ in range(50):
        wait = lim2.take("bob")
        if wait:
            clock2.advance(wait / 1000)
            assert lim2.take("bob") == 0


def test_many_sends_at_once_take_n_tokens() -> None:
    lim, clock = limiter(rate=10, burst=5)
    assert lim.take("alice", 3) == 0
    assert lim.take("alice", 3) == 100  # 2 left, 1 missing
    assert lim.take("alice", 2) == 0
    assert lim.take("alice", 5) == 500
    clock.advance(0.5)
    assert lim.take("alice", 5) == 0
    assert lim.take("alice", 0) == 0


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_rate_of_zero_or_less_disables_the_limit(rate: float) -> None:
    lim, _ = limiter(rate=rate, burst=1)
    assert all(lim.take("alice", 1000) == 0 for _ in range(1000))
    assert lim._buckets == {}  # nothing is even remembered


def test_a_burst_below_one_still_allows_one_send() -> None:
    lim, clock = limiter(rate=1, burst=0)
    assert lim.burst == 1.0
    assert lim.take("alice") == 0
    assert lim.take("alice") == 1000
    clock.advance(1)
    assert lim.take("alice") == 0


def test_more_sends_than_the_burst_are_served_in_parts() -> None:
    lim, clock = limiter(rate=100, burst=10)
    assert lim.take_up_to("alice", 20) == (10, 10)  # the burst now; one more in 10 ms
    assert lim.take_up_to("alice", 10) == (0, 10)
    clock.advance(0.05)
    assert lim.take_up_to("alice", 10) == (5, 10)
    clock.advance(1.0)
    assert lim.take_up_to("alice", 3) == (3, 0)


def test_memory_stays_bounded_forgetting_full_buckets_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_USERS", 4)
    lim, clock = limiter(rate=10, burst=5)
    lim.take("idle")  # full again a second later: the first to be forgotten
    clock.advance(1)
    for user in ("a", "b", "c"):
        lim.take(user, 5)  # in debt: worth keeping
        clock.advance(0.001)
    assert len(lim._buckets) == 4
    lim.take("d", 5)
    assert sorted(lim._buckets) == ["a", "b", "c", "d"]
    assert lim.take("a") > 0  # debts survive the eviction (and "a" was just seen)
    # Everyone in debt: the least recently seen ("b") goes, its debt forgotten with it.
    clock.advance(0.001)
    lim.take("e")
    assert sorted(lim._buckets) == ["a", "c", "d", "e"]
    assert lim.take("b", 5) == 0  # a forgotten user starts over with a full bucket
    assert sorted(lim._buckets) == ["a", "b", "d", "e"]
    for i in range(100):
        clock.advance(0.001)
        lim.take(f"user{i}")
        assert len(lim._buckets) <= 4


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(0.5, 1000),
    burst=st.floats(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 8)), max_size=60),
)
def test_sends_granted_never_exceed_the_burst_plus_the_rate_over_time(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    lim, clock = limiter(rate, burst)
    start = clock.now
    granted = 0
    for pause, n in steps:
        clock.advance(pause)
        wait = lim.take("alice", n)
        if wait == 0:
            granted += n
        else:
            assert wait >= 1
        assert granted <= burst + (clock.now - start) * rate + 1e-6
