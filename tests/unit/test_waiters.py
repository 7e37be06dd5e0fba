"""A node host's waiting callers (``cluster.waiters``): each call gets the results of its own
entries, at the index AND term they were appended with, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cluster.errors import HostStopped, NotLeader, ProposalDropped, ProposalLost
from cluster.messages import Entry
from cluster.types import GroupId, NodeId
from cluster.waiters import GroupWaiters


class _Replica:
    """What ``GroupWaiters`` asks of a replica: the next index, the term, refusals, reads."""

    def __init__(self, next_index: int = 1, term: int = 3) -> None:
        self.next_index = next_index
        self.term = term
        self.refuse: Exception | None = None
        self.batches: list[list[bytes]] = []
        self.reads: list[bytes] = []

    def propose_batch(self, data: list[bytes]) -> int:
        if self.refuse is not None:
            raise self.refuse
        first = self.next_index
        self.next_index += len(data)
        self.batches.append(list(data))
        return first

    def read_index(self, context: bytes) -> None:
        self.reads.append(context)


def _entries(first: int, n: int, term: int) -> list[Entry]:
    return [Entry(term, i, b"") for i in range(first, first + n)]


def test_calls_queued_together_share_one_batch_and_get_their_own_results() -> None:
    async def main() -> None:
        w, replica = GroupWaiters(GroupId(1)), _Replica(next_index=10)
        a = w.add_proposal([b"a1", b"a2"])
        b = w.add_proposal([b"b1"])
        dropped = w.add_proposal([b"gone"])
        dropped.cancel()  # its caller gave up before the flush: never proposed
        assert w.flush_proposals(cast(Any, replica)) == 3
        assert replica.batches == [[b"a1", b"a2", b"b1"]]
        w.applied(_entries(10, 2, term=3), ["r10", "r11"])
        assert a.result() == ["r10", "r11"] and not b.done()
        w.applied(_entries(12, 1, term=3), ["r12"])
        assert b.result() == ["r12"] and not w.has_pending

    asyncio.run(main())


def test_an_entry_overwritten_by_another_term_loses_the_call() -> None:
    async def main() -> None:
        w, replica = GroupWaiters(GroupId(1)), _Replica(next_index=5, term=3)
        call = w.add_proposal([b"x", b"y"])
        w.flush_proposals(cast(Any, replica))
        w.applied([Entry(3, 5, b"x"), Entry(4, 6, b"other leader's")], ["ok", "not ours"])
        with pytest.raises(ProposalLost):
            call.result()

    asyncio.run(main())


def test_refusals_leadership_loss_and_stop_answer_every_caller() -> None:
    async def main() -> None:
        w, replica = GroupWaiters(GroupId(1)), _Replica()
        replica.refuse = NotLeader(NodeId(2))
        refused = w.add_proposal([b"a"])
        assert w.flush_proposals(cast(Any, replica)) == 0
        with pytest.raises(NotLeader):
            refused.result()
        replica.refuse = ProposalDropped("too many bytes in flight")
        dropped = w.add_proposal([b"a"])
        w.flush_proposals(cast(Any, replica))
        with pytest.raises(ProposalDropped):
            dropped.result()

        replica.refuse = None
        appended = w.add_proposal([b"a"])
        w.flush_proposals(cast(Any, replica))
        w.fail_pending("no longer the leader")
        with pytest.raises(ProposalLost):
            appended.result()

        queued, read = w.add_proposal([b"q"]), w.add_read()
        w.fail_all("stopped")
        for future in (queued, read):
            with pytest.raises(HostStopped):
                future.result()

    asyncio.run(main())


def test_one_read_round_serves_every_queued_read() -> None:
    async def main() -> None:
        w, replica = GroupWaiters(GroupId(1)), _Replica()
        first, second = w.add_read(), w.add_read()
        assert w.start_reads(cast(Any, replica), b"ctx-1")
        assert replica.reads == [b"ctx-1"]
        assert not w.start_reads(cast(Any, replica), b"ctx-2"), "nothing was queued"
        w.read_ready(b"ctx-1")
        assert first.done() and second.done()
        third = w.add_read()
        w.start_reads(cast(Any, replica), b"ctx-3")
        w.read_dropped(b"ctx-3", NodeId(2))
        with pytest.raises(NotLeader):
            third.result()

    asyncio.run(main())
