"""What the chat engine talks to: the client library (:class:`Backend`) and a view
(:class:`Listener`), as protocols.

Why protocols: the engine is tested against a scripted fake of the client library (fast, and
failures on demand), and the full-screen TUI and the line mode are two listeners of the same
engine. :class:`clients.AsyncChatClient` satisfies :class:`Backend` as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from clients import (
    Channel,
    ChatError,
    Event,
    HistoryPage,
    Message,
    OnlineSession,
    ReadMarker,
    SendReceipt,
    ServerStatus,
    Unread,
)
from clients.chat.model import NoteLevel


class Backend(Protocol):
    """The part of :class:`clients.AsyncChatClient` the engine uses (tests pass a fake)."""

    @property
    def cursors(self) -> dict[str, int]: ...

    async def unread_counts(self, *, timeout: float | None = None) -> tuple[Unread, ...]: ...

    async def list_channels(
        self, joined_only: bool = False, *, timeout: float | None = None
    ) -> tuple[Channel, ...]: ...

    async def who(
        self, channel: str = "", *, timeout: float | None = None
    ) -> tuple[OnlineSession, ...]: ...

    async def open_session(
        self, cursors: Mapping[str, int] | None = None, *, timeout: float | None = None
    ) -> None: ...

    def events(self) -> AsyncIterator[Event]: ...

    async def send(
        self,
        text: str,
        conversation: str | None = None,
        *,
        to_user: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> SendReceipt: ...

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage: ...

    async def mark_read(
        self, conversation: str, seq: int, *, timeout: float | None = None
    ) -> ReadMarker: ...

    async def create_channel(self, channel: str, *, timeout: float | None = None) -> Channel: ...

    async def join_channel(self, channel: str, *, timeout: float | None = None) -> bool: ...

    async def leave_channel(self, channel: str, *, timeout: float | None = None) -> bool: ...

    async def server_status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> ServerStatus: ...

    async def close(self) -> None: ...


class Listener(Protocol):
    """What a view learns besides the model changing."""

    def changed(self) -> None:
        """The model changed: redraw."""

    def message(self, message: Message) -> None:
        """A new message arrived (each conversation's in seq order, each once)."""

    def note(self, text: str, level: NoteLevel) -> None:
        """A local line was added (command output, errors, connection news)."""

    def quit(self) -> None:
        """The user asked to leave."""


def describe(error: ChatError) -> str:
    """A one-line, human description of a refused call (``not found: no such channel``)."""
    text = error.details or error.code.name
    return f"{error.code.name.lower().replace('_', ' ')}: {first_line(text)}"


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
