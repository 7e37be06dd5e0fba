"""What the chat CLI's panes show (clients/chat/render.py), as plain lines: timestamps, day
separators, the read-marker line, pending / confirmed / failed own messages, holes, notes,
wrapping at the pane's width, the sidebar's badges, and the status line."""

from __future__ import annotations

import datetime as dt
import time

from prompt_toolkit.utils import get_cwidth

from clients.chat import render
from clients.chat.colors import user_style_class
from clients.chat.model import ChatModel, NoteLevel
from clients.chat.status import LinkState, LinkStatus
from clients.models import Message, Unread

UTC = dt.UTC
DAY1 = int(dt.datetime(2025, 3, 4, 9, 5, tzinfo=UTC).timestamp() * 1000)
DAY2 = int(dt.datetime(2025, 3, 5, 23, 59, tzinfo=UTC).timestamp() * 1000)


def msg(seq: int, sender: str, text: str, at: int = DAY1, conv: str = "general") -> Message:
    return Message(conv, seq, sender, sender, text, at, 0, "")


def lines(model: ChatModel, conv: str = "general", width: int = 60) -> list[str]:
    out = render.conversation_lines(model, model.conversations[conv], width, tz=UTC)
    return render.lines_text(out)


def test_messages_with_time_day_separators_and_the_read_marker() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 4, 2, 2)])
    model.apply_page(
        "general",
        [
            msg(1, "bob", "morning"),
            msg(2, "alice", "hi bob"),
            msg(3, "alice", "still there?", DAY2),
            msg(4, "bob", "yes @alice", DAY2),
        ],
        oldest=True,
    )
    model.switch("general")
    out = lines(model, width=40)
    assert [line.strip("─") for line in out] == [
        " start of #general ",
        " Tue 4 Mar 2025 ",
        "09:05 bob: morning",
        "09:05 alice: hi bob ✓",
        " Wed 5 Mar 2025 ",
        "23:59 alice: still there? ✓",
        " new ",  # the first message of someone else after the read marker (seq 2)
        "23:59 bob: yes @alice",
    ]
    rules = [line for line in out if line.startswith("─")]
    assert len(rules) == 4 and all(get_cwidth(line) == 40 for line in rules)


def test_styles_colour_users_and_highlight_mentions() -> None:
    model = ChatModel("alice")
    model.apply_page("general", [msg(1, "bob", "hey @alice, look")], oldest=True)
    last = render.conversation_lines(model, model.conversations["general"], 60, tz=UTC)[-1]
    assert (f"{user_style_class('bob')} class:nick", "bob") in last
    assert ("class:mention", "@alice") in last


def test_pending_held_and_failed_sends_follow_the_stored_messages() -> None:
    model = ChatModel("alice")
    model.apply_page("general", [msg(1, "bob", "hi")], oldest=True)
    box = model.outbox
    first = box.add("general", "one", "k1", DAY1)
    box.add("general", "two", "k2", DAY1)
    box.start(first)
    text = lines(model)
    assert text[-2:] == ["09:05 alice: one …", "09:05 alice: two …"]
    box.failed("k1", "unavailable: no quorum")
    text = lines(model)
    assert text[-2:] == [
        "09:05 alice: one ✗ unavailable: no quorum — ^R retry",
        "09:05 alice: two … waiting",
    ]


def test_long_and_multiline_messages_wrap_under_the_text() -> None:
    model = ChatModel("alice")
    text = "the quick brown fox jumps over the lazy dog again and again\nsecond line"
    model.apply_page("general", [msg(1, "bob", text)], oldest=True)
    out = lines(model, width=30)[2:]
    assert out == [
        "09:05 bob: the quick brown",
        "      fox jumps over the lazy",
        "      dog again and again",
        "      second line",
    ]
    assert all(get_cwidth(line) <= 30 for line in out)


def test_wrap_counts_wide_characters_and_cuts_long_words() -> None:
    wide = render.wrap([("", "日本語のテキスト")], 7, 0)
    assert render.lines_text(wide) == ["日本語", "のテキ", "スト"]
    word = render.wrap([("", "x" * 25)], 10, 2)
    assert render.lines_text(word) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]


def test_holes_notes_and_the_top_line() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 12, 12, 0)])
    model.apply_page("general", [msg(5, "bob", "five"), msg(6, "bob", "six")], oldest=False)
    model.apply_message(msg(9, "bob", "nine"))
    model.switch("general")
    model.note("bob joined #general")
    model.note("oops", NoteLevel.ERROR)
    assert lines(model)[0] == "⋯ PgUp loads older messages"
    assert lines(model)[2:] == [
        "09:05 bob: five",
        "09:05 bob: six",
        "⋯ loading 2 messages ⋯",
        "09:05 bob: nine",
        "⋯ loading 3 messages ⋯",
        "* bob joined #general",
        "! oops",
    ]


def test_sidebar_badges_mentions_current_and_online() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 3, 1, 2), Unread("quiet", "", 0, 0, 0)])
    model.apply_message(msg(1, "bob", "psst", conv="dm:alice:bob"))
    model.apply_message(msg(4, "carol", "@alice ping"))
    model.switch("quiet")
    model.set_online("bob", True)
    model.set_online("alice", True)
    failed = model.outbox.add("quiet", "x", "k", DAY1)
    model.outbox.failed(failed.key, "nope")
    rows = render.sidebar_rows(model, 20)
    text = [render.plain_text(r.line) for r in rows]
    assert text == [
        "Channels",
        " #general          3",
        "▸#quiet            ✗",
        "Direct",
        " @bob              1",
        "Online (2)",
        " ○ alice",
        " ● bob",
    ]
    assert [r.conversation for r in rows][:5] == [None, "general", "quiet", None, "dm:alice:bob"]
    general = rows[1].line
    assert "class:mentioned" in general[0][0] and general[1][0] == "class:badge.mention"
    assert rows[2].line[0][0].startswith("class:current")
    assert all(get_cwidth(t) <= 20 for t in text)


def test_sidebar_hints_when_empty_and_cuts_long_names() -> None:
    model = ChatModel("alice")
    assert render.lines_text([r.line for r in render.sidebar_rows(model, 20)])[:4] == [
        "Channels",
        " /join or /create",
        "Direct",
        " Ctrl-N: new",
    ]
    model.ensure("a-very-long-channel-name-indeed")
    row = render.sidebar_rows(model, 20)[1]
    assert render.plain_text(row.line).rstrip() == " #a-very-long-chan…"


def test_status_line_tells_the_failover() -> None:
    model = ChatModel("alice")
    now = time.monotonic()
    model.link = LinkStatus(
        LinkState.RECONNECTING,
        "127.0.0.1:7120",
        reason="UNAVAILABLE: Socket closed",
        retry_at=now + 0.5,
    )
    text = render.plain_text(render.status_text(model, now))
    assert text == " alice │ 127.0.0.1:7120 │ reconnecting in 0.5 s (UNAVAILABLE: Socket closed)"
    model.link = LinkStatus(
        LinkState.RESUMED, "127.0.0.1:7122", 2, leader_change="node 1 lost: g0→n2"
    )
    model.outbox.add("general", "x", "k", DAY1)
    text = render.plain_text(render.status_text(model, now))
    assert text == " alice │ node 2 (127.0.0.1:7122) │ resumed │ node 1 lost: g0→n2 │ 1 unsent"
