"""The full-screen chat: prompt_toolkit layout, controls and keys over the engine and model.

Why so thin: everything with rules in it (what a line shows, what is unread, what Tab offers,
what a command does) lives in ``render``, ``model``, ``complete`` and ``engine``; this module
only places it on the screen and maps keys to engine calls. The engine runs on the
Application's own asyncio loop (``run_async``), and every key handler returns at once — network
work is a task of the engine — so the screen never freezes while a node is down.

Layout (80x24 is enough)::

    ┌ sidebar (20) ┬ title ──────────────────────────────┐
    │ Channels     │ messages, bottom-aligned, scrolled │
    │ Direct       │ with PgUp/PgDn                     │
    │ Online       │                                    │
    ├──────────────┴────────────────────────────────────┤
    │ status: user │ gateway │ connection │ leaders     │
    │ > input (1-5 lines)                               │
    └───────────────────────────────────────────────────┘

Colours are ANSI names only (``ansiblue``), so a 16-colour terminal shows them exactly; with
``NO_COLOR`` set prompt_toolkit drops them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.data_structures import Point
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition, has_completions
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import (
    Float,
    FloatContainer,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.layout.controls import FormattedTextControl, UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import TextArea

from clients.chat import render
from clients.chat.colors import style_rules
from clients.chat.commands import help_lines
from clients.chat.complete import Vocabulary, candidates
from clients.chat.engine import ChatEngine
from clients.chat.ids import is_name
from clients.chat.model import ChatModel, Kind, NoteLevel
from clients.chat.picker import Item, Picker
from clients.models import Message

log = logging.getLogger(__name__)

SIDEBAR_WIDTH = 20
STYLE = Style(
    [
        ("statusbar", "bg:ansiblue fg:ansiwhite"),
        ("status.user", "bold"),
        ("status.ok", "fg:ansibrightgreen bold"),
        ("status.warn", "fg:ansibrightyellow bold"),
        ("status.bad", "bg:ansired fg:ansiwhite bold"),
        ("title", "bold underline"),
        ("time", "fg:ansibrightblack"),
        ("nick", "bold"),
        ("ok", "fg:ansigreen"),
        ("pending", "fg:ansibrightblack"),
        ("failed", "fg:ansired bold"),
        ("mention", "bg:ansiyellow fg:ansiblack"),
        ("day", "fg:ansicyan"),
        ("marker", "fg:ansired"),
        ("note", "fg:ansicyan"),
        ("error", "fg:ansired bold"),
        ("dim", "fg:ansibrightblack"),
        ("header", "bold underline"),
        ("current", "bold reverse"),
        ("unread", "bold"),
        ("mentioned", "fg:ansiyellow bold"),
        ("badge", "bold"),
        ("badge.mention", "bg:ansiyellow fg:ansiblack bold"),
        ("selected", "bg:ansiblue fg:ansiwhite"),
        ("online", "fg:ansigreen"),
        ("separator", "fg:ansibrightblack"),
        ("picker.selected", "reverse"),
        ("frame.border", "fg:ansicyan"),
        *style_rules(),
    ]
)


class PaneControl(UIControl):
    """The messages of the current conversation, bottom-aligned; ``scroll`` lines up from the
    bottom. Wrapping is done by ``render`` (the window does not wrap)."""

    def __init__(self, tui: ChatTui) -> None:
        self._tui = tui
        self.scroll = 0
        self.height = 20
        self.total = 0
        self._cache_key: tuple[int, str | None, int] | None = None
        self._cache: list[render.Line] = []
        self._shown: str | None = None

    def is_focusable(self) -> bool:
        return True

    def lines(self, width: int) -> list[render.Line]:
        model = self._tui.model
        key = (model.version, model.current, width)
        if key != self._cache_key:
            conv = model.current_conversation
            if conv is None:
                self._cache = render.home_lines(model, width)
            else:
                self._cache = render.conversation_lines(model, conv, width)
            self._cache_key = key
        return self._cache

    def create_content(self, width: int, height: int) -> UIContent:
        model = self._tui.model
        if model.current != self._shown:
            self._shown, self.scroll = model.current, 0
        lines = self.lines(width)
        self.height, self.total = height, len(lines)
        self.scroll = max(0, min(self.scroll, len(lines) - height))
        end = len(lines) - self.scroll
        visible = lines[max(0, end - height) : end]
        visible = [[] for _ in range(height - len(visible))] + visible

        def get_line(i: int) -> StyleAndTextTuples:
            return list(visible[i])

        return UIContent(get_line, len(visible), show_cursor=False)

    def page(self, direction: int, amount: int | None = None) -> None:
        """Scroll up (direction 1) or down (-1); at the top, ask for older history."""
        step = amount if amount is not None else max(1, self.height - 2)
        top = max(0, self.total - self.height)
        self.scroll = max(0, min(self.scroll + direction * step, top))
        if direction > 0 and self.scroll >= top:
            self._tui.engine.load_older()


class SidebarControl(UIControl):
    """Conversations with unread badges, then who is online. Up/Down move the selection
    while it has the focus; Enter opens the selected conversation."""

    def __init__(self, tui: ChatTui) -> None:
        self._tui = tui
        self.selected: str | None = None

    def is_focusable(self) -> bool:
        return True

    def conversation_ids(self) -> list[str]:
        return [c.id for c in self._tui.model.ordered()]

    def move(self, step: int) -> None:
        ids = self.conversation_ids()
        if not ids:
            return
        start = self.selected if self.selected in ids else self._tui.model.current
        at = ids.index(start) if start in ids else -1
        self.selected = ids[(at + step) % len(ids)]

    def create_content(self, width: int, height: int) -> UIContent:
        tui = self._tui
        rows = render.sidebar_rows(tui.model, width)
        focused = tui.app.layout.has_focus(tui.sidebar_window)
        if not focused or self.selected not in self.conversation_ids():
            self.selected = tui.model.current  # the selection starts where the user is
        cursor = 0
        lines: list[render.Line] = []
        for i, row in enumerate(rows):
            line = row.line
            if focused and row.conversation is not None and row.conversation == self.selected:
                line = [("class:selected", render.plain_text(line))]
                cursor = i
            elif row.conversation is not None and row.conversation == tui.model.current:
                cursor = i
            lines.append(line)

        def get_line(i: int) -> StyleAndTextTuples:
            return list(lines[i])

        return UIContent(get_line, len(lines), cursor_position=Point(0, cursor), show_cursor=False)


class ChatCompleter(Completer):
    def __init__(self, model: ChatModel) -> None:
        self._model = model

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(
            self._model.me, self._model.users_known(), frozenset(self._model.channels)
        )

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        for c in candidates(document.text_before_cursor, self.vocabulary()):
            yield Completion(c.text, start_position=c.start, display_meta=c.meta)


class ChatTui:
    """The Application and its engine listener."""

    def __init__(
        self,
        model: ChatModel,
        *,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.model = model
        self.engine: ChatEngine  # set by attach() before run()
        self.completer = ChatCompleter(model)
        self.input = TextArea(
            multiline=True,
            prompt="> ",
            height=Dimension(min=1, max=5),
            completer=self.completer,
            complete_while_typing=False,
            history=InMemoryHistory(),
            wrap_lines=True,
            dont_extend_height=True,
        )
        self.pane = PaneControl(self)
        self.sidebar = SidebarControl(self)
        self.pane_window = Window(self.pane, wrap_lines=False)
        self.sidebar_window = Window(self.sidebar, width=SIDEBAR_WIDTH, wrap_lines=False)
        self.picker = Picker()
        title = Window(
            FormattedTextControl(self._title), height=1, style="class:title", wrap_lines=False
        )
        status = Window(FormattedTextControl(self._status), height=1, style="class:statusbar")
        body = VSplit(
            [
                self.sidebar_window,
                Window(width=1, char="│", style="class:separator"),
                HSplit([title, self.pane_window]),
            ]
        )
        root = FloatContainer(
            HSplit([body, status, self.input]),
            floats=[
                Float(
                    xcursor=True,
                    ycursor=True,
                    content=CompletionsMenu(max_height=8, scroll_offset=1),
                ),
                Float(content=self.picker.container, top=3),
            ],
        )
        self.focus_order = [self.input.window, self.sidebar_window, self.pane_window]
        self.app: Application[int] = Application(
            layout=Layout(root, focused_element=self.input),
            key_bindings=self._bindings(),
            style=STYLE,
            full_screen=True,
            mouse_support=False,
            refresh_interval=0.5,
            input=input,
            output=output,
        )

    def attach(self, engine: ChatEngine) -> None:
        self.engine = engine

    async def run(self) -> int:
        if not self.model.conversations:
            for line in [
                "Welcome to raftchat.",
                "/join a channel (Tab completes #names), /create one, or Ctrl-N for a "
                "direct message.",
                *help_lines(),
            ]:
                self.model.note(line)
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(self._crash)
        try:
            result = await self.app.run_async(set_exception_handler=False)
        finally:
            loop.set_exception_handler(previous)
        return result if result is not None else 0

    def _crash(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A bug in a callback (a redraw, a key handler): leave the full screen, restoring the
        terminal, and let ``run`` raise it — instead of prompt_toolkit's "Press ENTER" pause
        over a half-drawn screen."""
        exc = context.get("exception")
        if not isinstance(exc, Exception) or isinstance(exc, asyncio.CancelledError):
            loop.default_exception_handler(context)
            return
        log.error("crash: %s", context.get("message"), exc_info=exc)
        if self.app.is_running and not self.app.is_done:
            self.app.exit(exception=exc)

    # ---- the engine's listener -------------------------------------------------------------

    def changed(self) -> None:
        self.app.invalidate()

    def message(self, message: Message) -> None:
        return None

    def note(self, text: str, level: NoteLevel) -> None:
        return None

    def quit(self) -> None:
        if self.app.is_running and not self.app.is_done:
            self.app.exit(result=0)

    # ---- pieces ----------------------------------------------------------------------------

    def _title(self) -> StyleAndTextTuples:
        conv = self.model.current_conversation
        if conv is None:
            return [("class:title", " raftchat")]
        text = f" {self.model.label(conv.id)}"
        if not conv.joined:
            text += " (joining …)"
        elif conv.kind is Kind.DM:
            text += " — online" if conv.peer in self.model.online else ""
        pending = len(self.model.outbox.pending(conv.id))
        if pending:
            text += f" · {pending} pending"
        if self.pane.scroll:
            text += f" · scrolled ({self.pane.scroll} lines up, PgDn)"
        return [("class:title", text)]

    def _status(self) -> StyleAndTextTuples:
        return list(render.status_text(self.model, time.monotonic()))

    def _focus(self, step: int) -> None:
        layout = self.app.layout
        current = layout.current_window
        order = self.focus_order
        at = order.index(current) if current in order else 0
        layout.focus(order[(at + step) % len(order)])

    # ---- keys ------------------------------------------------------------------------------

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        picker_closed = Condition(lambda: not self.picker.active)
        in_input = Condition(lambda: self.app.layout.has_focus(self.input))
        in_sidebar = Condition(lambda: self.app.layout.has_focus(self.sidebar_window))
        in_pane = Condition(lambda: self.app.layout.has_focus(self.pane_window))

        @kb.add("c-c")
        @kb.add("c-q")
        def _(event: KeyPressEvent) -> None:
            event.app.exit(result=0)

        @kb.add("c-d", filter=in_input & picker_closed)
        def _(event: KeyPressEvent) -> None:
            if self.input.text:
                self.input.buffer.delete()
            else:
                event.app.exit(result=0)

        @kb.add("enter", filter=in_input & picker_closed)
        def _(event: KeyPressEvent) -> None:
            buffer = self.input.buffer
            if buffer.complete_state is not None:
                buffer.complete_state = None  # the chosen completion is already in the text
                return
            text = buffer.text
            if not text.strip():
                return
            if self.engine.submit(text):
                buffer.append_to_history()
                buffer.reset()
                buffer.load_history_if_not_yet_loaded()  # Up recalls it even before a redraw
            self.pane.scroll = 0

        @kb.add("escape", "enter", filter=in_input & picker_closed)
        @kb.add("c-j", filter=in_input & picker_closed)
        def _(event: KeyPressEvent) -> None:
            self.input.buffer.insert_text("\n")

        @kb.add("tab", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            buffer = self.input.buffer
            if self.app.layout.has_focus(self.input):
                if buffer.complete_state is not None:
                    buffer.complete_next()
                    return
                found = candidates(buffer.document.text_before_cursor, self.completer.vocabulary())
                if len(found) == 1:
                    buffer.delete_before_cursor(-found[0].start)
                    buffer.insert_text(found[0].text + " ")
                    return
                if found:
                    buffer.start_completion(select_first=False)
                    return
            self._focus(1)

        @kb.add("s-tab", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            buffer = self.input.buffer
            if self.app.layout.has_focus(self.input) and buffer.complete_state is not None:
                buffer.complete_previous()
                return
            self._focus(-1)

        @kb.add("escape", filter=in_input & has_completions & picker_closed)
        def _(event: KeyPressEvent) -> None:
            self.input.buffer.cancel_completion()

        @kb.add("c-n", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            self._open_dm_picker()

        @kb.add("c-k", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            self._open_switcher()

        @kb.add("escape", "a", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            if not self.engine.jump_to_unread():
                self.model.note("nothing unread")

        @kb.add("pageup", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            self.pane.page(1)

        @kb.add("pagedown", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            self.pane.page(-1)

        @kb.add("c-r", filter=picker_closed)
        def _(event: KeyPressEvent) -> None:
            self.engine.retry()

        # The message pane.
        @kb.add("up", filter=in_pane)
        @kb.add("k", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.pane.page(1, 1)

        @kb.add("down", filter=in_pane)
        @kb.add("j", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.pane.page(-1, 1)

        @kb.add("home", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.pane.page(1, 1 << 30)

        @kb.add("end", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.pane.scroll = 0

        @kb.add("r", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.engine.retry()

        @kb.add("enter", filter=in_pane)
        def _(event: KeyPressEvent) -> None:
            self.app.layout.focus(self.input)

        # The sidebar.
        @kb.add("up", filter=in_sidebar)
        @kb.add("k", filter=in_sidebar)
        def _(event: KeyPressEvent) -> None:
            self.sidebar.move(-1)

        @kb.add("down", filter=in_sidebar)
        @kb.add("j", filter=in_sidebar)
        def _(event: KeyPressEvent) -> None:
            self.sidebar.move(1)

        @kb.add("enter", filter=in_sidebar)
        def _(event: KeyPressEvent) -> None:
            if self.sidebar.selected is not None:
                self.engine.switch(self.sidebar.selected)
            self.app.layout.focus(self.input)

        return kb

    # ---- pickers ---------------------------------------------------------------------------

    def _open_dm_picker(self) -> None:
        me = self.model.me
        online = self.model.online
        users = sorted(self.model.users_known() - {me}, key=lambda u: (u not in online, u))
        items = [Item(f"@{u}", u, "online" if u in self.model.online else "") for u in users]

        def free(text: str) -> str | None:
            name = text.lstrip("@").lower()
            return name if is_name(name) and name != me else None

        def pick(user: str) -> None:
            self.engine.submit(f"/msg {user}")

        self.picker.open("direct message to …", items, pick, free)

    def _open_switcher(self) -> None:
        items = []
        for conv in self.model.ordered():
            unread = conv.unread(self.model.me)
            meta = f"{unread} unread" if unread else ""
            items.append(Item(self.model.label(conv.id), conv.id, meta))
        for channel in sorted(self.model.channels - set(self.model.conversations)):
            items.append(Item(f"#{channel}", f"join:{channel}", "join"))

        def free(text: str) -> str | None:
            name = text.lstrip("#").lower()
            return f"join:{name}" if is_name(name) else None

        def pick(value: str) -> None:
            if value.startswith("join:"):
                self.engine.submit(f"/join {value[5:]}")
            else:
                self.engine.switch(value)

        self.picker.open("switch to …", items, pick, free)
