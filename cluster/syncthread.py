"""``SyncThread``: the node's fsync, run on one thread of its own for the event loop.

Why not ``asyncio.to_thread``: a node syncs its log once per loop round, 100-200 times a second
under load, and ``ThreadPoolExecutor.submit`` plus the future chaining of ``run_in_executor`` cost
~130 µs of CPU per call on the benchmark VM (a py-spy profile put ``submit`` alone at ~4% of a
busy node), against ~55 µs for a queue to a dedicated thread that answers with
``call_soon_threadsafe``. One thread also keeps syncs strictly in order, which the host needs
anyway (it never has two in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the waiter was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class SyncThread:
    """Runs ``sync`` on its own thread, one call at a time, for callers on an event loop."""

    def __init__(self, sync: Callable[[], None], *, name: str) -> None:
        self._sync = sync
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self) -> asyncio.Future[None]:
        """Queue one ``sync()``; the future is done when it returned (or with what it raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, future))
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Let the thread finish what is queued, then end it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future = job
            error: BaseException | None = None
            try:
                self._sync()
            except BaseException as exc:  # handed to the waiter, which stops the node
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, error)
