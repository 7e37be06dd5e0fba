"""The per-user send rate: a token bucket per user, kept by each gateway node.

Why per gateway and not replicated: a limit exists to protect the cluster from one noisy client,
and is checked before anything is proposed; replicating the buckets would cost a Raft write per
send to save one. A user with sessions on several nodes therefore gets the rate once per node,
which is documented and bounded by the node count. The clock is injected (monotonic seconds)
so tests drive it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_RATE: Final = 200.0
"""Sends per second a user may keep up (far above human typing; bounds a runaway script)."""
DEFAULT_BURST: Final = 400.0
"""Sends a user may make at once after being idle (a client's reconnect flushes its backlog)."""
MAX_USERS: Final = 100_000
"""Buckets kept; full buckets are forgotten first when there are more (they hold no debt)."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class SendRateLimiter:
    """``take(user, n)`` -> 0 if ``n`` sends may go now (and takes them), else the milliseconds
    until they may. ``rate`` <= 0 disables the limit."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, user: str, n: int = 1) -> int:
        if self.rate <= 0:
            return 0
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= MAX_USERS:
                self._forget_full(now)
            bucket = self._buckets[user] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= n:
            bucket.tokens -= n
            return 0
        return max(1, math.ceil((n - bucket.tokens) / self.rate * 1000))

    def take_up_to(self, user: str, n: int) -> tuple[int, int]:
        """Take as many of ``n`` sends as the bucket allows now: (granted, milliseconds until
        the next one may go, 0 when all were granted). A frame larger than the burst is thus
        served in parts instead of never."""
        if self.rate <= 0 or n <= 0:
            return max(n, 0), 0
        self.take(user, 0)  # refill
        bucket = self._buckets[user]
        granted = min(n, int(bucket.tokens + 1e-9))  # 4.999999 tokens are 5 (float refill)
        bucket.tokens -= granted
        if granted == n:
            return n, 0
        missing = max(0.0, 1 - bucket.tokens)
        return granted, max(1, math.ceil(missing / self.rate * 1000 - 1e-9))

    def _forget_full(self, now: float) -> None:
        for user, b in list(self._buckets.items()):
            if b.tokens + (now - b.at) * self.rate >= self.burst:
                del self._buckets[user]
        if len(self._buckets) >= MAX_USERS:  # everyone is in debt: drop the oldest
            oldest = min(self._buckets, key=lambda u: self._buckets[u].at)
            del self._buckets[oldest]
