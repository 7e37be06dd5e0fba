"""The node host commits deferred state machines: within FLUSH_INTERVAL of an apply, and again
after later applies; never while nothing was applied."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from cluster.host import FLUSH_INTERVAL, NodeHost
from cluster.messages import Entry
from cluster.statemachine import DeferredCommit, LogStateMachine
from cluster.storage import LogStore
from cluster.transport import GrpcTransport
from cluster.types import GroupId, NodeId

ME, GROUP = NodeId(1), GroupId(1)


class FlushCounting(LogStateMachine):
    """A log state machine that records when the host flushes it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.applies: list[float] = []
        self.flushes: list[float] = []

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        self.applies.append(time.monotonic())
        return super().apply(entries)

    def flush(self) -> None:
        self.flushes.append(time.monotonic())


def _more(items: list[float], than: int) -> bool:
    return len(items) > than


async def _until(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)  # paces the polling only


def test_applied_state_is_flushed_soon_after_and_only_after_applies(tmp_path: Path) -> None:
    async def body() -> None:
        sm = FlushCounting(tmp_path / "sm.sqlite")
        assert isinstance(sm, DeferredCommit)
        store = LogStore.open(tmp_path / "raft", node_id=ME, cluster_id="t", fsync=False)
        host = NodeHost(ME, store, GrpcTransport(ME, {}), tick_interval=0.01)
        host.add_group(GROUP, [ME], sm)
        try:
            await host.start()
            host.campaign(GROUP)
            await _until(lambda: host.leader(GROUP) == ME, "a leader")
            await _until(lambda: sm.flushes, "the flush of the leader's first entry")
            for round_ in range(3):
                before = len(sm.flushes)
                await host.propose(GROUP, f"x{round_}".encode(), timeout=5)
                applied_at = sm.applies[-1]
                await _until(partial(_more, sm.flushes, before), "a flush after the apply")
                assert sm.flushes[-1] >= applied_at
            # Idle: no apply, no flush (ticks alone do not commit anything).
            idle = len(sm.flushes)
            await asyncio.sleep(FLUSH_INTERVAL * 5)  # a span of idleness, not synchronisation
            assert len(sm.flushes) == idle
        finally:
            await host.stop()
            sm.close()

    asyncio.run(body())
