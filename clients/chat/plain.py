"""``--plain``: the chat as lines, for scripts and screen readers.

Why a line mode at all: a full-screen UI is opaque to a screen reader and to a script. Here
stdout carries only the conversation — one ``[#channel] user: text`` line per message (``[@bob]``
for a DM), each conversation's messages in seq order, each once — and stderr carries everything
else (``* joined #general``, ``! not sent: ...``, connection news), so ``2>/dev/null`` leaves a
clean transcript.

Input: each stdin line is a ``/command`` or a message for the current conversation (``/join x``
or ``/msg bob`` switches it). Commands run one after another, in order; messages are queued at
once and sent in order behind them. At end of input the program waits until every message was
acknowledged (and has come back on the session, so the transcript holds it), then exits 0 — or
1 if a message could not be delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import TextIO

from clients.chat import commands as cmd
from clients.chat.engine import ChatEngine
from clients.chat.model import ChatModel, NoteLevel
from clients.models import Message

DRAIN_TIMEOUT = 60.0
"""How long end of input waits for the last messages to be acknowledged."""


def format_message(model: ChatModel, message: Message) -> str:
    """``[#general] alice: hello`` (later lines of a multi-line text indented)."""
    head = f"[{model.label(message.conversation)}] {message.sender}: "
    return head + message.text.replace("\n", "\n" + " " * 4)


class PlainListener:
    def __init__(self, model: ChatModel, out: TextIO, err: TextIO) -> None:
        self._model = model
        self._out = out
        self._err = err
        self.quit_requested = False

    def changed(self) -> None:
        return None

    def message(self, message: Message) -> None:
        print(format_message(self._model, message), file=self._out, flush=True)

    def note(self, text: str, level: NoteLevel) -> None:
        mark = "!" if level is NoteLevel.ERROR else "*"
        for line in text.splitlines() or [""]:
            print(f"{mark} {line}", file=self._err, flush=True)
            mark = " "

    def quit(self) -> None:
        self.quit_requested = True


class LineReader:
    """stdin lines as an asyncio queue, read by a daemon thread: works for pipes, files and
    terminals alike, and a blocked read never keeps the program from exiting."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._read, name="stdin-lines", daemon=True)
        thread.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the program exits
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def next(self) -> str | None:
        """The next line, or None at end of input."""
        return await self._queue.get()


async def run_plain(engine: ChatEngine, listener: PlainListener, lines: LineReader) -> int:
    """Read commands and messages until end of input or ``/quit``; see the module docstring."""
    await engine.start(open_first=False)
    while not listener.quit_requested:
        line = await lines.next()
        if line is None:
            break
        if not line.strip():
            continue
        parsed = cmd.parse(line)
        if isinstance(parsed, cmd.ParseError):
            listener.note(parsed.message, NoteLevel.ERROR)
        elif isinstance(parsed, cmd.Send):
            engine.send(parsed.text)
        else:
            await engine.execute(parsed)
    delivered = await engine.wait_sent(DRAIN_TIMEOUT)
    unsent = len(engine.model.outbox)
    if unsent or not delivered:
        listener.note(f"{unsent} message(s) not delivered", NoteLevel.ERROR)
        return 1
    return 0
