"""Waiting without an asyncio object per item, for :mod:`clients.session`: every pending send's
deadline behind one timer (:class:`Deadlines`), and the session's events for its consumers, who
are woken once per batch (:class:`EventBuffer`).

Why: the benchmark client shares two cores with the nodes, and a timer handle, a queue hand-off
or a task per send or per event is a visible share of its CPU per send (``python -m
clients.bench_local`` measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("clients.session")


class Expiring(Protocol):
    """What :class:`Deadlines` keeps: a send with its deadline (loop time), a tie-breaking
    order, and the future that is done once the send is answered, failed or given up."""

    @property
    def deadline(self) -> float: ...

    @property
    def order(self) -> int: ...

    @property
    def future(self) -> asyncio.Future[Any]: ...


T = TypeVar("T", bound=Expiring)
E = TypeVar("E")


class Deadlines(Generic[T]):
    """Every pending send's deadline behind one timer, instead of a timer handle per send
    (``call_later`` and ``cancel`` cost about as much as the rest of queueing a send).

    Sends nearly always share a timeout, so their deadlines arrive in order: they go on a FIFO
    whose head is the earliest (answered sends are dropped from its head as new ones come, so
    it stays about as long as the sends in flight). A deadline earlier than the FIFO's tail
    (a shorter timeout) goes on a heap instead. One ``call_at`` is armed at the earliest of
    the two heads; when it fires, every expired send is failed and it is armed again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[T], None]):
        self._loop = loop
        self._expire = expire
        self._fifo: deque[T] = deque()
        self._odd: list[tuple[float, int, T]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def add(self, pending: T) -> None:
        fifo = self._fifo
        while fifo and fifo[0].future.done():
            fifo.popleft()
        deadline = pending.deadline
        if not fifo or fifo[-1].deadline <= deadline:
            fifo.append(pending)
        else:
            heapq.heappush(self._odd, (deadline, pending.order, pending))
        if self._timer is None or deadline < self._armed_at:
            self._arm(deadline)

    def clear(self) -> None:
        self._fifo.clear()
        self._odd.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._sweep)
        self._armed_at = when

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        fifo, odd = self._fifo, self._odd
        expired: list[T] = []
        while fifo and (fifo[0].future.done() or fifo[0].deadline <= now):
            expired.append(fifo.popleft())
        while odd and (odd[0][2].future.done() or odd[0][0] <= now):
            expired.append(heapq.heappop(odd)[2])
        for pending in expired:
            if not pending.future.done():
                self._expire(pending)
        heads = [fifo[0].deadline] if fifo else []
        if odd:
            heads.append(odd[0][0])
        if heads and self._timer is None:
            self._arm(min(heads))


class EventBuffer(Generic[E]):
    """The session's events for its consumers: a bounded deque (the oldest dropped beyond
    ``limit``) and the futures of consumers waiting for the next one, woken together once per
    batch rather than one queue hand-off per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self.buffer: deque[E] = deque(maxlen=limit if limit > 0 else None)
        self._waiters: list[asyncio.Future[bool]] = []
        self.dropped = 0

    def put(self, event: E) -> None:
        buffer = self.buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("session event buffer full: dropping the oldest events")
        buffer.append(event)
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(True)
            self._waiters.clear()

    async def wait(self, timeout: float | None) -> None:
        """Until an event is put (or ``timeout`` seconds pass)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else self._loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter.cancelled() or not waiter.result():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


def _release(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
