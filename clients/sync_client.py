"""``ChatClient``: the client library for code that is not asyncio (scripts, the REPL, Locust
users, tests of other tools).

Why a thread and not ``asyncio.run`` per call: the session stream, its heartbeats and its
reconnects must keep running *between* the caller's calls, and grpc.aio channels belong to one
event loop. So the wrapper owns an event loop in a daemon thread for its whole life, and each
method submits the matching :class:`~clients.client.AsyncChatClient` coroutine to it and blocks
on the answer. Same arguments, same return values, same typed errors.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from clients.client import AsyncChatClient, ClientOptions
from clients.endpoints import Endpoints
from clients.models import (
    Account,
    Channel,
    ConnectionEvent,
    ConnectionState,
    Event,
    HistoryPage,
    OnlineSession,
    ReadMarker,
    SendReceipt,
    ServerStatus,
    SyncResult,
    Unread,
)
from clients.session import Session

T = TypeVar("T")


class ChatClient:
    """A blocking chat client; see :class:`~clients.client.AsyncChatClient` for each method."""

    def __init__(
        self,
        endpoints: Sequence[str] | str | Endpoints | None = None,
        *,
        discovery: Sequence[str] | None = None,
        cluster_file: str | Path | None = None,
        options: ClientOptions | None = None,
        rng: random.Random | None = None,
        session_id: str | None = None,
        spread: bool = False,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftchat-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client = self._run(
                AsyncChatClient.connect(
                    endpoints,
                    discovery=discovery,
                    cluster_file=cluster_file,
                    options=options,
                    rng=rng,
                    session_id=session_id,
                    spread=spread,
                )
            )
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a ChatClient method was called from its own event loop")
        if self._closed:
            coro.close()
            raise RuntimeError("the ChatClient is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    # ---- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client, then stop and join its thread. Idempotent."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def async_client(self) -> AsyncChatClient:
        """The wrapped client (use only from coroutines run on its loop)."""
        return self._client

    @property
    def account(self) -> Account | None:
        return self._client.account

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def session(self) -> Session | None:
        return self._client.session

    @property
    def cursors(self) -> dict[str, int]:
        return self._run(_value(lambda: self._client.cursors))

    # ---- the API -----------------------------------------------------------------------------

    def register(
        self, user: str, password: str, display_name: str = "", *, timeout: float | None = None
    ) -> Account:
        return self._run(self._client.register(user, password, display_name, timeout=timeout))

    def login(self, user: str, password: str, *, timeout: float | None = None) -> Account:
        return self._run(self._client.login(user, password, timeout=timeout))

    def logout(self, *, timeout: float | None = None) -> None:
        self._run(self._client.logout(timeout=timeout))

    def create_channel(self, channel: str, *, timeout: float | None = None) -> Channel:
        return self._run(self._client.create_channel(channel, timeout=timeout))

    def join_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        return self._run(self._client.join_channel(channel, timeout=timeout))

    def leave_channel(self, channel: str, *, timeout: float | None = None) -> bool:
        return self._run(self._client.leave_channel(channel, timeout=timeout))

    def list_channels(
        self, joined_only: bool = False, *, timeout: float | None = None
    ) -> tuple[Channel, ...]:
        return self._run(self._client.list_channels(joined_only, timeout=timeout))

    def send(
        self,
        text: str,
        conversation: str | None = None,
        *,
        to_user: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> SendReceipt:
        return self._run(
            self._client.send(
                text,
                conversation,
                to_user=to_user,
                idempotency_key=idempotency_key,
                timeout=timeout,
            )
        )

    def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
        stale_ok: bool = False,
        timeout: float | None = None,
    ) -> HistoryPage:
        return self._run(
            self._client.history(
                conversation,
                before=before,
                after=after,
                around=around,
                limit=limit,
                stale_ok=stale_ok,
                timeout=timeout,
            )
        )

    def sync(
        self, cursors: Mapping[str, int], limit: int = 0, *, timeout: float | None = None
    ) -> SyncResult:
        return self._run(self._client.sync(cursors, limit, timeout=timeout))

    def mark_read(self, conversation: str, seq: int, *, timeout: float | None = None) -> ReadMarker:
        return self._run(self._client.mark_read(conversation, seq, timeout=timeout))

    def unread_counts(self, *, timeout: float | None = None) -> tuple[Unread, ...]:
        return self._run(self._client.unread_counts(timeout=timeout))

    def who(self, channel: str = "", *, timeout: float | None = None) -> tuple[OnlineSession, ...]:
        return self._run(self._client.who(channel, timeout=timeout))

    def server_status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> ServerStatus:
        return self._run(self._client.server_status(endpoint, timeout=timeout))

    # ---- the session -------------------------------------------------------------------------

    def open_session(
        self, cursors: Mapping[str, int] | None = None, *, timeout: float | None = None
    ) -> None:
        self._run(self._client.open_session(cursors, timeout=timeout))

    def close_session(self) -> None:
        self._run(self._client.close_session())

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event; None after ``timeout`` seconds (None: wait as long as it takes), or
        once the session is closed and drained."""
        return self._run(self._client.next_event(timeout))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come; ends when none arrives for ``timeout`` seconds (None: never)
        or after the session's CLOSED event."""
        while True:
            event = self.next_event(timeout)
            if event is None:
                return
            yield event
            if isinstance(event, ConnectionEvent) and event.state is ConnectionState.CLOSED:
                return


async def _value(read: Callable[[], T]) -> T:
    """Read loop-owned state on the loop's thread."""
    return read()
