"""The callers waiting on one group of a ``NodeHost``: proposals and linearizable reads.

Why this bookkeeping exists: a caller's future must be answered exactly once, with the result of
*its* entry. An entry is the caller's only if it is applied at the index AND term it was
appended with: another leader may overwrite the index with its own entry, whose result belongs
to someone else (``ProposalLost``, outcome unknown). Everything here runs on the host's loop;
futures a caller abandoned (timeout, cancellation) are skipped, never answered.

- **Proposals.** ``add_proposal`` queues a call (its commands stay consecutive entries, in
  order); ``flush_proposals`` turns every call queued this turn into ONE ``propose_batch`` and
  remembers index -> (call, slot); ``applied`` fills in results as entries apply and answers a
  call once its last entry is in.
- **Reads.** ``add_read`` queues a read; the host starts one ReadIndex round for all of them
  under a fresh context (``start_reads``); ``read_ready`` / ``read_dropped`` answer them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cluster.errors import HostStopped, NotLeader, ProposalDropped, ProposalLost
from cluster.messages import Entry
from cluster.raft import Replica
from cluster.types import GroupId, NodeId


class _Proposal:
    """One ``propose``/``propose_many`` call: its commands become consecutive entries of one
    batch, and its single future gets every entry's result once the last one is applied."""

    __slots__ = ("data", "future", "left", "results", "term")

    def __init__(self, data: list[bytes], future: asyncio.Future[list[object]]) -> None:
        self.data = data
        self.future = future
        self.results: list[object] = [None] * len(data)
        self.left = len(data)
        self.term = 0


class GroupWaiters:
    """The waiting callers of one group (see the module docstring)."""

    __slots__ = ("_group", "_pending", "_queued", "_read_queue", "_reads")

    def __init__(self, group: GroupId) -> None:
        self._group = group
        self._queued: list[_Proposal] = []
        self._pending: dict[int, tuple[_Proposal, int]] = {}  # index -> (call, its slot)
        self._read_queue: list[asyncio.Future[None]] = []
        self._reads: dict[bytes, list[asyncio.Future[None]]] = {}  # read context -> waiters

    # ---- proposals ---------------------------------------------------------------------------

    def add_proposal(self, data: list[bytes]) -> asyncio.Future[list[object]]:
        future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        self._queued.append(_Proposal(data, future))
        return future

    def flush_proposals(self, replica: Replica) -> int:
        """Propose every call still waiting in the queue as one batch; how many entries were
        appended (0 if none, or if the replica refused them: their callers got the error)."""
        live = [p for p in self._queued if not p.future.done()]
        self._queued = []
        if not live:
            return 0
        data = live[0].data if len(live) == 1 else [d for p in live for d in p.data]
        try:
            index = replica.propose_batch(data)
        except NotLeader as exc:
            for p in live:
                p.future.set_exception(NotLeader(exc.leader))
            return 0
        except ProposalDropped as exc:
            for p in live:
                p.future.set_exception(ProposalDropped(str(exc)))
            return 0
        term = replica.term
        pending = self._pending
        for p in live:
            p.term = term
            for slot in range(len(p.data)):
                pending[index] = (p, slot)
                index += 1
        return len(data)

    @property
    def has_pending(self) -> bool:
        """Whether appended proposals wait for their entries to apply."""
        return bool(self._pending)

    def applied(self, entries: Sequence[Entry], results: Sequence[object]) -> None:
        """Entries just applied here, with what the state machine made of each."""
        pending = self._pending
        if not pending:
            return
        for entry, result in zip(entries, results, strict=True):
            held = pending.pop(entry.index, None)
            if held is None:
                continue
            p, slot = held
            if p.future.done():
                continue
            if p.term == entry.term:
                p.results[slot] = result
                p.left -= 1
                if p.left == 0:
                    p.future.set_result(p.results)
            else:
                p.future.set_exception(
                    ProposalLost(
                        f"group {self._group}: entry {entry.index} was overwritten by term "
                        f"{entry.term}"
                    )
                )

    def fail_pending(self, why: str) -> None:
        """Appended proposals will not be confirmed here (leadership lost, log replaced)."""
        pending, self._pending = self._pending, {}
        for p, _ in pending.values():
            if not p.future.done():
                p.future.set_exception(ProposalLost(f"{why}; the outcome is unknown"))

    # ---- reads -------------------------------------------------------------------------------

    def add_read(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._read_queue.append(future)
        return future

    def start_reads(self, replica: Replica, context: bytes) -> bool:
        """Start one ReadIndex round under ``context`` for every read still waiting in the
        queue; False if none was (then ``context`` is unused). Forgets the contexts whose
        callers all gave up."""
        waiting = [f for f in self._read_queue if not f.done()]
        self._read_queue = []
        for ctx in [c for c, fs in self._reads.items() if all(f.done() for f in fs)]:
            del self._reads[ctx]
        if not waiting:
            return False
        self._reads[context] = waiting
        replica.read_index(context)
        return True

    def read_ready(self, context: bytes) -> None:
        for f in self._reads.pop(context, ()):
            if not f.done():
                f.set_result(None)

    def read_dropped(self, context: bytes, leader: NodeId) -> None:
        for f in self._reads.pop(context, ()):
            if not f.done():
                f.set_exception(NotLeader(leader))

    # ---- everything --------------------------------------------------------------------------

    def fail_all(self, why: str) -> None:
        """The host stopped: every waiting caller gets HostStopped."""
        futures: list[asyncio.Future[list[object]] | asyncio.Future[None]] = []
        futures.extend(p.future for p in self._queued)
        futures.extend(p.future for p, _ in self._pending.values())
        futures.extend(self._read_queue)
        for waiting in self._reads.values():
            futures.extend(waiting)
        self._queued, self._pending, self._read_queue, self._reads = [], {}, [], {}
        for f in futures:
            if not f.done():
                f.set_exception(HostStopped(why))
