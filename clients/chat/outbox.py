"""The user's own messages between Enter and the server's acknowledgement.

Why the CLI keeps its own queue on top of the client library's: the screen must show every
message the user typed at once (pending "…"), turn it into the stored message when it is
acknowledged ("✓"), and keep a failed one visible until the user retries or drops it. And order
must hold: the library sends concurrently and gives up on a send after its deadline, so a later
message could be stored before an earlier one that failed. Here each conversation is a FIFO and
only its head is on the wire: when the head fails, the messages behind it are *held* (shown as
waiting) until it is retried (same idempotency key, so a send that did commit after all is not
stored twice) or dropped.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class SendState(enum.Enum):
    QUEUED = "queued"
    """Waiting for its turn (or for the conversation to be joined)."""
    SENDING = "sending"
    """On the wire; the library retries it through failovers until its deadline."""
    FAILED = "failed"
    """Given up; later sends of the conversation are held until a retry or a drop."""


@dataclass(eq=False, slots=True)
class PendingSend:
    key: str
    conversation: str
    text: str
    created_ms: int
    to_user: str | None = None
    """Set for a DM: sent by recipient name, so the first message creates the conversation."""
    state: SendState = SendState.QUEUED
    error: str = ""
    attempts: int = 0


class Outbox:
    """Pending sends per conversation, in the order they were typed."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[PendingSend]] = {}
        self._by_key: dict[str, PendingSend] = {}

    def add(
        self,
        conversation: str,
        text: str,
        key: str,
        now_ms: int,
        to_user: str | None = None,
    ) -> PendingSend:
        pending = PendingSend(key, conversation, text, now_ms, to_user)
        self._queues.setdefault(conversation, deque()).append(pending)
        self._by_key[key] = pending
        return pending

    def get(self, key: str) -> PendingSend | None:
        return self._by_key.get(key)

    def pending(self, conversation: str) -> list[PendingSend]:
        """Unacknowledged sends of ``conversation``, oldest first."""
        return list(self._queues.get(conversation, ()))

    def head(self, conversation: str) -> PendingSend | None:
        queue = self._queues.get(conversation)
        return queue[0] if queue else None

    def next_to_send(self, conversation: str) -> PendingSend | None:
        """The head, if it is queued (not sending, not failed): the one send to put on the
        wire next."""
        head = self.head(conversation)
        return head if head is not None and head.state is SendState.QUEUED else None

    def start(self, pending: PendingSend) -> None:
        pending.state = SendState.SENDING
        pending.attempts += 1
        pending.error = ""

    def done(self, key: str) -> PendingSend | None:
        """``key`` is stored (acknowledged, or seen pushed back): forget it."""
        pending = self._by_key.pop(key, None)
        if pending is not None:
            queue = self._queues[pending.conversation]
            queue.remove(pending)
            if not queue:
                del self._queues[pending.conversation]
        return pending

    def failed(self, key: str, error: str) -> None:
        pending = self._by_key.get(key)
        if pending is not None:
            pending.state = SendState.FAILED
            pending.error = error

    def requeue(self, key: str) -> None:
        """Back to QUEUED without counting as failed (e.g. after a rate-limit pause)."""
        pending = self._by_key.get(key)
        if pending is not None:
            pending.state = SendState.QUEUED

    def held(self, pending: PendingSend) -> bool:
        """Queued behind a failed send of the same conversation."""
        head = self.head(pending.conversation)
        return head is not None and head is not pending and head.state is SendState.FAILED

    def retry(self, conversation: str) -> PendingSend | None:
        """Queue the failed head again (it keeps its key); returns it, or None if the
        conversation has no failed send."""
        head = self.head(conversation)
        if head is None or head.state is not SendState.FAILED:
            return None
        head.state = SendState.QUEUED
        head.error = ""
        return head

    def drop(self, conversation: str) -> PendingSend | None:
        """Give up the failed head; the sends behind it go on."""
        head = self.head(conversation)
        if head is None or head.state is not SendState.FAILED:
            return None
        return self.done(head.key)

    def conversations(self) -> list[str]:
        """Conversations with pending sends."""
        return list(self._queues)

    def failed_sends(self) -> list[PendingSend]:
        return [p for p in self._by_key.values() if p.state is SendState.FAILED]

    @property
    def busy(self) -> bool:
        """A send is queued or on the wire that is not held behind a failure."""
        return any(
            queue[0].state is not SendState.FAILED for queue in self._queues.values() if queue
        )

    def __len__(self) -> int:
        return len(self._by_key)
