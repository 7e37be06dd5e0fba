"""A small pop-up that filters a list as you type: the quick switcher (Ctrl-K) and the
"direct message to…" prompt (Ctrl-N).

Why one widget for both: both are "type a few letters, pick one with Enter", with the same keys
(Up/Down or Tab/Shift-Tab move, Enter picks, Esc closes) and the same fuzzy filter
(:func:`clients.chat.complete.fuzzy_filter`). What the items are and what picking one does is
the caller's business (``tui``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prompt_toolkit.application.current import get_app
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import ConditionalContainer, HSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.widgets import Frame, TextArea

from clients.chat.complete import fuzzy_filter

VISIBLE = 8


@dataclass(frozen=True, slots=True)
class Item:
    label: str
    """What is shown and matched (``#general``, ``@bob``)."""
    value: str
    """What the caller gets back."""
    meta: str = ""


class Picker:
    def __init__(self) -> None:
        self.active = False
        self.title = ""
        self._items: list[Item] = []
        self._on_pick: Callable[[str], None] = _nothing
        self._free: Callable[[str], str | None] = _no_free
        self.selected = 0
        self.query = TextArea(multiline=False, prompt="> ", height=1)
        self.query.buffer.on_text_changed += self._reset_selection
        kb = KeyBindings()
        kb.add("enter")(self._pick)
        kb.add("escape", eager=True)(self._cancel)
        kb.add("c-c")(self._cancel)
        kb.add("c-g")(self._cancel)
        kb.add("down")(self._down)
        kb.add("tab")(self._down)
        kb.add("c-n")(self._down)
        kb.add("up")(self._up)
        kb.add("s-tab")(self._up)
        kb.add("c-p")(self._up)
        body = HSplit(
            [
                self.query,
                Window(
                    FormattedTextControl(self._list_fragments),
                    height=Dimension(min=1, max=VISIBLE),
                ),
            ],
            key_bindings=kb,
        )
        frame = Frame(body, title=lambda: self.title, width=Dimension(preferred=40, max=50))
        self.container = ConditionalContainer(frame, filter=Condition(lambda: self.active))
        self._return_focus: object = None

    def open(
        self,
        title: str,
        items: list[Item],
        on_pick: Callable[[str], None],
        free: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        """Show the picker; ``free`` turns typed text that matches no item into a value (or
        None to refuse it)."""
        app = get_app()
        self._return_focus = app.layout.current_window
        self.title = title
        self._items = items
        self._on_pick = on_pick
        self._free = free
        self.selected = 0
        self.query.text = ""
        self.active = True
        app.layout.focus(self.query)

    def matches(self) -> list[Item]:
        labels = fuzzy_filter(self.query.text, [i.label for i in self._items])
        by_label = {i.label: i for i in self._items}
        return [by_label[label] for label in labels]

    def close(self) -> None:
        self.active = False
        app = get_app()
        target = self._return_focus
        if isinstance(target, Window):
            try:
                app.layout.focus(target)
            except ValueError:
                app.layout.focus_last()

    def _reset_selection(self, _: object) -> None:
        self.selected = 0

    def _list_fragments(self) -> StyleAndTextTuples:
        out: StyleAndTextTuples = []
        matches = self.matches()
        if not matches:
            typed = self.query.text.strip()
            hint = "no match" if not typed or self._free(typed) is None else f"Enter: {typed}"
            return [("class:dim", hint)]
        first = max(0, min(self.selected - VISIBLE + 1, len(matches) - VISIBLE))
        for index, item in enumerate(matches[first : first + VISIBLE], start=first):
            style = "class:picker.selected" if index == self.selected else ""
            out.append((style, f" {item.label} "))
            if item.meta:
                out.append(("class:dim", f" {item.meta}"))
            out.append(("", "\n"))
        if out:
            out.pop()
        return out

    def _pick(self, event: KeyPressEvent) -> None:
        matches = self.matches()
        value: str | None
        if matches:
            value = matches[min(self.selected, len(matches) - 1)].value
        else:
            value = self._free(self.query.text.strip())
        if value is None:
            return
        self.close()
        self._on_pick(value)

    def _cancel(self, event: KeyPressEvent) -> None:
        self.close()

    def _down(self, event: KeyPressEvent) -> None:
        count = len(self.matches())
        if count:
            self.selected = (self.selected + 1) % count

    def _up(self, event: KeyPressEvent) -> None:
        count = len(self.matches())
        if count:
            self.selected = (self.selected - 1) % count


def _nothing(_: str) -> None:
    return None


def _no_free(_: str) -> str | None:
    return None
