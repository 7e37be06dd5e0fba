"""What the panes show, as lines of ``(style, text)`` fragments already wrapped to a width.

Why here and not in prompt_toolkit controls: the layout rules — timestamps, a colour per user,
day separators, the read-marker line, pending / confirmed / failed own messages, holes still
loading, local notes — are checked by unit tests on plain lists, and the controls in ``tui``
only slice the lines to the window. Styles are class names (``class:time``), mapped to the 16
ANSI colours by the style sheet in ``tui``; nothing here assumes a colour depth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from prompt_toolkit.utils import get_cwidth

from clients.chat.colors import user_style_class
from clients.chat.mentions import mention_spans
from clients.chat.model import ChatModel, Conversation, Kind, Note, NoteLevel
from clients.chat.outbox import PendingSend, SendState
from clients.chat.status import LinkState
from clients.models import Message

Fragment = tuple[str, str]
Line = list[Fragment]

TIME_WIDTH = 6
"""``12:04 `` — continuation lines are indented this far."""
RETRY_HINT = "^R retry"


@dataclass(frozen=True, slots=True)
class SidebarRow:
    line: Line
    conversation: str | None = None
    """The conversation this row opens (None for headers and users)."""


# ---- the message pane -----------------------------------------------------------------------


def conversation_lines(
    model: ChatModel, conv: Conversation, width: int, tz: dt.tzinfo | None = None
) -> list[Line]:
    """Every line of ``conv`` wrapped to ``width``, oldest first."""
    out: list[Line] = []
    width = max(width, 20)
    if conv.reached_oldest:
        out.append(_rule(f" start of {model.label(conv.id)} ", width, "class:dim"))
    elif conv.seqs or conv.loaded:
        out.append([("class:dim", "⋯ PgUp loads older messages")])
    elif conv.last_seq:
        out.append([("class:dim", "⋯ loading")])
    notes = list(conv.notes)
    previous: Message | None = None
    marker = conv.marker_seq if conv.marker_seq else None
    for seq in conv.seqs:
        while notes and notes[0].after_seq < seq:
            out.extend(_note_lines(notes.pop(0), width))
        message = conv.messages[seq]
        if previous is not None and seq > previous.seq + 1:
            out.append(_hole(seq - previous.seq - 1))
        if marker is not None and seq > marker and message.sender != model.me:
            # The read marker: the first message the reader had not read when they came here.
            out.append(_rule(" new ", width, "class:marker"))
            marker = None
        if previous is None or _day(previous.hlc_ms, tz) != _day(message.hlc_ms, tz):
            out.append(_rule(f" {_day_label(message.hlc_ms, tz)} ", width, "class:day"))
        out.extend(_message_lines(model.me, message, width, tz))
        previous = message
    if conv.loaded and conv.last_seq > conv.newest_held:
        out.append(_hole(conv.last_seq - conv.newest_held))
    for note in notes:
        out.extend(_note_lines(note, width))
    for pending in model.outbox.pending(conv.id):
        out.extend(_pending_lines(model, pending, width, tz))
    return out


def home_lines(model: ChatModel, width: int) -> list[Line]:
    """The view before any conversation is open: the notes (welcome, help)."""
    out: list[Line] = []
    for note in model.home_notes:
        out.extend(_note_lines(note, max(width, 20)))
    return out


@lru_cache(maxsize=20_000)
def _message_lines(me: str, m: Message, width: int, tz: dt.tzinfo | None) -> list[Line]:
    """The lines of one stored message (cached: messages never change, and the pane redraws
    on every event, so a long conversation is wrapped once, not on every redraw)."""
    head: Line = [
        ("class:time", f"{_clock(m.hlc_ms, tz)} "),
        (f"{user_style_class(m.sender)} class:nick", m.sender),
        ("", ": "),
    ]
    body = _highlight(m.text, me) if m.sender != me else [("class:own", m.text)]
    tail: Line = [("class:ok", " ✓")] if m.sender == me else []
    return _wrap_message(head, body, tail, width)


def _pending_lines(
    model: ChatModel, p: PendingSend, width: int, tz: dt.tzinfo | None
) -> list[Line]:
    head: Line = [
        ("class:time", f"{_clock(p.created_ms, tz)} "),
        (f"{user_style_class(model.me)} class:nick", model.me),
        ("", ": "),
    ]
    if p.state is SendState.FAILED:
        body: Line = [("class:failed", p.text)]
        tail: Line = [("class:failed", f" ✗ {p.error} — {RETRY_HINT}")]
    elif model.outbox.held(p):
        body, tail = [("class:pending", p.text)], [("class:pending", " … waiting")]
    else:
        body, tail = [("class:pending", p.text)], [("class:pending", " …")]
    return _wrap_message(head, body, tail, width)


def _wrap_message(head: Line, body: Line, tail: Line, width: int) -> list[Line]:
    lines: list[Line] = []
    text_lines = _split_newlines(body + tail)
    for i, text_line in enumerate(text_lines):
        first = head if i == 0 else [("", " " * TIME_WIDTH)]
        lines.extend(wrap(first + text_line, width, TIME_WIDTH))
    return lines


def _highlight(text: str, me: str) -> Line:
    out: Line = []
    at = 0
    for start, end in mention_spans(text, me):
        if start > at:
            out.append(("", text[at:start]))
        out.append(("class:mention", text[start:end]))
        at = end
    if at < len(text):
        out.append(("", text[at:]))
    return out


def _note_lines(note: Note, width: int) -> list[Line]:
    style = "class:error" if note.level is NoteLevel.ERROR else "class:note"
    mark = "! " if note.level is NoteLevel.ERROR else "* "
    out: list[Line] = []
    for text in note.text.split("\n"):
        out.extend(wrap([(style, mark + text)], width, 2))
        mark = "  "
    return out


def _hole(count: int) -> Line:
    noun = "message" if count == 1 else "messages"
    return [("class:dim", f"⋯ loading {count} {noun} ⋯")]


def _rule(label: str, width: int, style: str) -> Line:
    label_width = get_cwidth(label)
    if label_width >= width:
        return [(style, label)]
    left = (width - label_width) // 2
    return [(style, "─" * left + label + "─" * (width - label_width - left))]


def _local(ms: int, tz: dt.tzinfo | None) -> dt.datetime:
    if tz is None:
        return dt.datetime.fromtimestamp(ms / 1000).astimezone()
    return dt.datetime.fromtimestamp(ms / 1000, tz)


def _clock(ms: int, tz: dt.tzinfo | None) -> str:
    return _local(ms, tz).strftime("%H:%M")


@lru_cache(maxsize=20_000)
def _day(ms: int, tz: dt.tzinfo | None) -> dt.date:
    return _local(ms, tz).date()


def _day_label(ms: int, tz: dt.tzinfo | None) -> str:
    d = _local(ms, tz)
    return f"{d:%a} {d.day} {d:%b %Y}"


# ---- wrapping -------------------------------------------------------------------------------


def _split_newlines(line: Line) -> list[Line]:
    out: list[Line] = [[]]
    for style, text in line:
        parts = text.split("\n")
        for i, part in enumerate(parts):
            if i:
                out.append([])
            if part:
                out[-1].append((style, part))
    return out


def wrap(line: Line, width: int, indent: int) -> list[Line]:
    """``line`` broken into lines of at most ``width`` columns, at a blank where possible;
    continuation lines start with ``indent`` blanks. Wide characters count two columns."""
    cells = [(style, ch) for style, text in line for ch in text]
    out: list[Line] = []
    prefix = 0
    while True:
        used, cut, last_blank = prefix, 0, -1
        while cut < len(cells):
            w = get_cwidth(cells[cut][1])
            if used + w > width:
                break
            if cells[cut][1] == " ":
                last_blank = cut
            used += w
            cut += 1
        if cut >= len(cells):
            out.append(_join([("", " " * prefix)] if prefix else [], cells))
            return out
        if last_blank > 0:
            cut = last_blank  # the blank itself is dropped below
        cut = max(cut, 1)
        out.append(_join([("", " " * prefix)] if prefix else [], cells[:cut]))
        cells = cells[cut:]
        while cells and cells[0][1] == " ":
            cells = cells[1:]
        if not cells:
            return out
        prefix = min(indent, max(0, width - 1))


def _join(start: Line, cells: list[tuple[str, str]]) -> Line:
    out = list(start)
    for style, ch in cells:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
    return out


def plain_text(line: Line) -> str:
    return "".join(text for _, text in line)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns (with ``…`` when cut)."""
    if get_cwidth(text) <= width:
        return text
    out, used = "", 0
    for ch in text:
        w = get_cwidth(ch)
        if used + w > width - 1:
            break
        out += ch
        used += w
    return out + "…"


# ---- the sidebar ----------------------------------------------------------------------------


def sidebar_rows(model: ChatModel, width: int) -> list[SidebarRow]:
    """Channels, direct messages (with unread counts; mentions highlighted), online users."""
    rows: list[SidebarRow] = []
    ordered = model.ordered()
    channels = [c for c in ordered if c.kind is Kind.CHANNEL]
    dms = [c for c in ordered if c.kind is Kind.DM]
    rows.append(SidebarRow([("class:header", "Channels")]))
    rows.extend(_conversation_row(model, c, width) for c in channels)
    if not channels:
        rows.append(SidebarRow([("class:dim", " /join or /create")]))
    rows.append(SidebarRow([("class:header", "Direct")]))
    rows.extend(_conversation_row(model, c, width) for c in dms)
    if not dms:
        rows.append(SidebarRow([("class:dim", " Ctrl-N: new")]))
    online = sorted(model.online)
    rows.append(SidebarRow([("class:header", f"Online ({len(online)})")]))
    for user in online:
        mark = "●" if user != model.me else "○"
        name = fit(user, width - 3)
        rows.append(SidebarRow([("class:online", f" {mark} "), (user_style_class(user), name)]))
    return rows


def _conversation_row(model: ChatModel, conv: Conversation, width: int) -> SidebarRow:
    unread = conv.unread(model.me)
    mentioned = conv.mention_count(model.me)
    failed = any(p.state is SendState.FAILED for p in model.outbox.pending(conv.id))
    badge = "✗" if failed else (str(unread) if unread else "")
    if not conv.joined:
        badge = "…"
    name = fit(model.label(conv.id), max(1, width - 2 - len(badge)))
    gap = max(1, width - 1 - get_cwidth(name) - len(badge))
    current = conv.id == model.current
    style = "class:current" if current else ("class:unread" if unread else "")
    if mentioned:
        style += " class:mentioned"
    badge_style = "class:badge.mention" if mentioned else "class:badge"
    marker = "▸" if current else " "
    line: Line = [(style, f"{marker}{name}{' ' * gap}"), (badge_style, badge)]
    return SidebarRow(line, conv.id)


# ---- the status line ------------------------------------------------------------------------


def status_text(model: ChatModel, now: float) -> Line:
    """``alice │ node 2 (127.0.0.1:7122) │ resumed │ node 1 lost: g0,g2→n2``."""
    link = model.link
    state_style = {
        LinkState.CONNECTED: "class:status.ok",
        LinkState.RESUMED: "class:status.ok",
        LinkState.RECONNECTING: "class:status.bad",
        LinkState.CLOSED: "class:status.bad",
        LinkState.CONNECTING: "class:status.warn",
    }[link.state]
    parts: Line = [("class:status.user", f" {model.me} "), ("", "│ ")]
    parts.append(("", f"{link.gateway} │ "))
    parts.append((state_style, link.describe(now)))
    if link.state is LinkState.RECONNECTING and link.reason:
        parts.append(("", f" ({_short(link.reason)})"))
    if link.leader_change and link.state is not LinkState.RECONNECTING:
        parts.append(("", f" │ {link.leader_change}"))
    unsent = len(model.outbox)
    if unsent:
        parts.append(("class:status.warn", f" │ {unsent} unsent"))
    return parts


def _short(reason: str) -> str:
    return reason.splitlines()[0][:60] if reason else reason


def lines_text(lines: Iterator[Line] | list[Line]) -> list[str]:
    """The plain text of rendered lines (tests, ``--plain``)."""
    return [plain_text(line) for line in lines]
