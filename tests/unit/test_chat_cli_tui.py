"""The full-screen layer (clients/chat/tui.py, picker.py) on prompt_toolkit's pipe input and an
80x24 dummy output, over a real engine and a scripted fake of the client library (no network):
what each key does, that every pane draws at 80x24, and that a crash leaves the full screen
instead of pausing over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from clients import Message, Unread
from clients.chat import render
from clients.chat.engine import ChatEngine
from clients.chat.model import ChatModel
from clients.chat.tui import ChatTui
from tests.unit.test_chat_cli_engine import T0, FakeBackend, eventually

TAB, SHIFT_TAB, UP, ENTER = "\t", "\x1b[Z", "\x1b[A", "\r"
ALT_ENTER, CTRL_K, CTRL_N, PAGE_UP = "\x1b\r", "\x0b", "\x0e", "\x1b[5~"


class Screen(DummyOutput):
    def get_size(self) -> Size:
        return Size(rows=24, columns=80)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


@asynccontextmanager
async def tui_app(
    backend: FakeBackend,
) -> AsyncIterator[tuple[ChatTui, PipeInput, asyncio.Task[int]]]:
    model = ChatModel("alice")
    with create_pipe_input() as keys:
        tui = ChatTui(model, input=keys, output=Screen())
        engine = ChatEngine(backend, model, tui)
        tui.attach(engine)
        await engine.start(open_first=True)
        task = asyncio.get_running_loop().create_task(tui.run())
        try:
            await eventually(lambda: tui.app.is_running, "the app")
            yield tui, keys, task
        finally:
            if not task.done():
                tui.app.exit(result=0)
            await asyncio.gather(task, return_exceptions=True)
            await engine.close()


def backend_with(channels: dict[str, int]) -> FakeBackend:
    backend = FakeBackend()
    backend.unread = tuple(Unread(c, "", n, n, 0) for c, n in channels.items())
    for conv, count in channels.items():
        backend.messages[conv] = [
            Message(conv, s, "bob", "bob", f"{conv} {s}", T0 + s, 0) for s in range(1, count + 1)
        ]
    return backend


def test_enter_sends_alt_enter_breaks_the_line_and_history_recalls() -> None:
    async def scenario() -> None:
        backend = backend_with({"general": 0})
        async with tui_app(backend) as (tui, keys, _):
            keys.send_text("first line" + ALT_ENTER + "second line" + ENTER)
            await eventually(lambda: backend.sent, "the send")
            assert backend.sent[0][1] == "first line\nsecond line"
            assert tui.input.text == ""
            keys.send_text(UP)
            await eventually(lambda: tui.input.text == "first line\nsecond line", "history")

    run(scenario())


def test_tab_completes_or_moves_the_focus_and_shift_tab_goes_back() -> None:
    async def scenario() -> None:
        async with tui_app(backend_with({"general": 0, "games": 0})) as (tui, keys, _):
            layout = tui.app.layout
            keys.send_text("/jo" + TAB)
            await eventually(lambda: tui.input.text == "/join ", "the only completion")
            keys.send_text("#g" + TAB)  # two candidates: a menu, Tab cycles, Enter takes
            await eventually(lambda: tui.input.buffer.complete_state is not None, "the menu")
            keys.send_text(TAB)
            await eventually(lambda: tui.input.text == "/join #games", "the first candidate")
            keys.send_text(ENTER)
            await eventually(lambda: tui.input.buffer.complete_state is None, "menu closed")
            assert tui.input.text == "/join #games"  # Enter took the completion, sent nothing
            tui.input.text = ""
            keys.send_text(TAB)
            await eventually(lambda: layout.has_focus(tui.sidebar_window), "sidebar")
            keys.send_text(TAB)
            await eventually(lambda: layout.has_focus(tui.pane_window), "messages")
            keys.send_text(TAB)
            await eventually(lambda: layout.has_focus(tui.input), "input")
            keys.send_text(SHIFT_TAB)
            await eventually(lambda: layout.has_focus(tui.pane_window), "back to messages")

    run(scenario())


def test_pickers_switch_and_open_direct_messages() -> None:
    async def scenario() -> None:
        backend = backend_with({"general": 2, "games": 1})
        async with tui_app(backend) as (tui, keys, _):
            model = tui.model
            assert model.current == "games"  # the first in the sidebar's order
            keys.send_text(CTRL_K)
            await eventually(lambda: tui.picker.active, "the switcher")
            keys.send_text("genr" + ENTER)  # scattered letters match #general
            await eventually(lambda: model.current == "general", "switched")
            assert not tui.picker.active and tui.app.layout.has_focus(tui.input)
            keys.send_text(CTRL_N)
            await eventually(lambda: tui.picker.active, "the DM picker")
            assert [i.label for i in tui.picker.matches()] == ["@bob"]  # a sender seen
            keys.send_text("zed" + ENTER)  # a name typed that is not in the list
            await eventually(lambda: model.current == "dm:alice:zed", "the DM")
            keys.send_text(CTRL_K + "\x1b")
            await eventually(lambda: tui.picker.active, "open")
            await eventually(lambda: not tui.picker.active, "Esc closes")

    run(scenario())


def test_sidebar_keys_and_scrolling_to_the_oldest_page() -> None:
    async def scenario() -> None:
        backend = backend_with({"big": 130, "small": 1})
        async with tui_app(backend) as (tui, keys, _):
            model = tui.model
            big = model.conversations["big"]
            await eventually(lambda: big.loaded, "the first page")
            assert big.oldest_held == 31
            keys.send_text(TAB + "j" + ENTER)
            await eventually(lambda: model.current == "small", "down and open")
            keys.send_text(TAB + "k" + ENTER)
            await eventually(lambda: model.current == "big", "up and open")
            for _ in range(20):
                if big.reached_oldest:
                    break
                before = (tui.pane.scroll, big.oldest_held)
                keys.send_text(PAGE_UP)
                await eventually(moved(tui, before), "PgUp")
            assert big.reached_oldest and big.seqs == list(range(1, 131))
            assert ("big", 31, None, 100) in backend.history_calls
            assert tui.pane.scroll > 0
            keys.send_text("\x1b[6~" * 200)  # PgDn back to the bottom
            await eventually(lambda: tui.pane.scroll == 0, "the bottom")

    run(scenario())


def moved(tui: ChatTui, before: tuple[int, int]) -> Callable[[], bool]:
    conv = tui.model.conversations["big"]
    return lambda: (tui.pane.scroll, conv.oldest_held) != before or conv.reached_oldest


def test_every_pane_fits_80x24() -> None:
    async def scenario() -> None:
        backend = backend_with({f"channel-{i}": 3 for i in range(30)})
        async with tui_app(backend) as (tui, _, _):
            pane = tui.pane.create_content(59, 21)
            assert pane.line_count == 21
            for i in range(pane.line_count):
                assert len("".join(fragment[1] for fragment in pane.get_line(i))) <= 59
            sidebar = tui.sidebar.create_content(20, 21)
            assert sidebar.line_count > 21  # more than fits: the window scrolls to the cursor
            for i in range(sidebar.line_count):
                assert len("".join(fragment[1] for fragment in sidebar.get_line(i))) <= 20
            status = render.plain_text(render.status_text(tui.model, 0.0))
            assert status.startswith(" alice │ ")

    run(scenario())


def test_a_crash_leaves_the_full_screen_with_the_error() -> None:
    async def scenario() -> None:
        async with tui_app(backend_with({"general": 1})) as (tui, _, task):

            def broken(*args: object) -> list[render.SidebarRow]:
                raise RuntimeError("drawing failed")

            original = render.sidebar_rows
            render.sidebar_rows = broken  # type: ignore[assignment]
            try:
                tui.app.invalidate()
                with pytest.raises(RuntimeError, match="drawing failed"):
                    await asyncio.wait_for(task, 5)
            finally:
                render.sidebar_rows = original

    run(scenario())
