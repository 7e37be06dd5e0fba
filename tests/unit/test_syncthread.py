"""``SyncThread``: syncs run one at a time, in order, off the loop; errors reach the waiter."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cluster.syncthread import SyncThread


def test_syncs_run_in_order_on_another_thread_and_errors_reach_the_waiter() -> None:
    calls: list[tuple[int, int]] = []
    fail = threading.Event()

    def sync() -> None:
        if fail.is_set():
            raise OSError("disk gone")
        calls.append((len(calls), threading.get_ident()))

    async def body() -> None:
        syncer = SyncThread(sync, name="test-sync")
        try:
            await asyncio.gather(*(syncer.run() for _ in range(20)))
            assert [i for i, _ in calls] == list(range(20))
            assert {t for _, t in calls} != {threading.get_ident()}  # never on the loop
            assert len({t for _, t in calls}) == 1
            fail.set()
            with pytest.raises(OSError, match="disk gone"):
                await syncer.run()
            fail.clear()
            cancelled = syncer.run()
            cancelled.cancel()  # a waiter that gave up must not break the next sync
            await syncer.run()
            assert len(calls) >= 21
        finally:
            syncer.close()

    asyncio.run(body())
