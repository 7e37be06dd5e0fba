"""The session's connection as the user sees it: the status line's state, and the notes and
leader change that a failover produces.

Why its own piece: a failover is a story told over several events — the stream breaks
(RECONNECTING: which gateway was lost), a new one resumes (RESUMED: where), and a moment later
the Raft groups the lost node led have new leaders. The last part is not an event at all: it is
read from the new gateway's ``ServerStatus``, polled until the lost node leads nothing, and
compared with the leaders read before (the comparison and its wording are in ``status``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from clients import ChatError, ConnectionEvent, ConnectionState
from clients.chat.model import ChatModel, NoteLevel
from clients.chat.ports import Backend, first_line
from clients.chat.status import Leader, LinkState, describe_changes, leader_changes, settled

LEADER_WAIT: Final = 15.0
"""How long after a failover to watch for the new leaders before saying what changed."""
LEADER_POLL: Final = 0.25

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
Note = Callable[[str, NoteLevel], None]


class LinkWatch:
    def __init__(
        self,
        backend: Backend,
        model: ChatModel,
        *,
        spawn: Spawn,
        note: Note,
        changed: Callable[[], None],
        resumed: Callable[[], None],
    ) -> None:
        self._backend = backend
        self._model = model
        self._spawn = spawn
        self._note = note
        self._changed = changed
        self._resumed = resumed
        self._leaders: dict[int, Leader] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def leaders(self) -> Mapping[int, Leader]:
        """Group -> leader, as last read from the gateway."""
        return dict(self._leaders)

    def apply(self, event: ConnectionEvent) -> None:
        model = self._model
        link = model.link
        if event.state is ConnectionState.RECONNECTING:
            lost, lost_id = link.lost_node, link.lost_node_id
            if link.state in (LinkState.CONNECTED, LinkState.RESUMED):
                lost, lost_id = link.node, link.node_id
                self._note(f"lost {link.gateway}: {first_line(event.reason)}", NoteLevel.INFO)
            model.link = dataclasses.replace(
                link,
                state=LinkState.RECONNECTING,
                node=event.node,
                node_id=0,
                reason=event.reason,
                retry_at=time.monotonic() + event.in_seconds,
                lost_node=lost,
                lost_node_id=lost_id,
            )
        elif event.state in (ConnectionState.CONNECTED, ConnectionState.RESUMED):
            resumed = event.state is ConnectionState.RESUMED
            model.link = dataclasses.replace(
                link,
                state=LinkState.RESUMED if resumed else LinkState.CONNECTED,
                node=event.node,
                node_id=event.node_id,
                reason="",
                failovers=link.failovers + (1 if resumed else 0),
            )
            if resumed:
                self._note(f"resumed on node {event.node_id} ({event.node})", NoteLevel.INFO)
                self._resumed()
            if self._task is not None:
                self._task.cancel()
            self._task = self._spawn(self._read_leaders(event.node, resumed), "leader status")
        elif event.state is ConnectionState.CLOSED:
            model.link = dataclasses.replace(link, state=LinkState.CLOSED, reason=event.reason)
            if event.error is not None:
                self._note(f"session closed: {event.reason}", NoteLevel.ERROR)
        model.touch()

    async def _read_leaders(self, node: str, resumed: bool) -> None:
        """Read the groups' leaders from the gateway; after a failover, wait until the lost
        node leads nothing any more and say which groups moved."""
        lost_id = self._model.link.lost_node_id if resumed else 0
        deadline = time.monotonic() + LEADER_WAIT
        leaders: dict[int, Leader] = {}
        while True:
            try:
                status = await self._backend.server_status(node, timeout=2.0)
                leaders = {g.group: Leader(g.leader, g.term) for g in status.groups}
            except ChatError:
                leaders = {}
            if not resumed or settled(leaders, lost_id) or time.monotonic() > deadline:
                break
            await asyncio.sleep(LEADER_POLL)  # polling the leaders' status, with a deadline
        if resumed and leaders:
            text = describe_changes(leader_changes(self._leaders, leaders), lost_id)
            self._model.link = dataclasses.replace(self._model.link, leader_change=text)
            self._note(text, NoteLevel.INFO)
        if leaders:
            self._leaders = leaders
        self._model.touch()
        self._changed()
