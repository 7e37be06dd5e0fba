"""The chat CLI's input language and completion (clients/chat/commands.py, complete.py, ids.py):
pure functions, no terminal, no network."""

from __future__ import annotations

import pytest

from clients.chat import commands as cmd
from clients.chat.complete import Candidate, Vocabulary, candidates, completable, fuzzy_filter
from clients.chat.ids import dm_id, dm_peer, label, parse_dm, text_problem


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello", cmd.Send("hello")),
        ("  two words  ", cmd.Send("  two words  ")),
        ("line one\nline two\n", cmd.Send("line one\nline two")),
        ("//not a command", cmd.Send("/not a command")),
        ("/join general", cmd.Join("general")),
        ("/join #General", cmd.Join("general")),
        ("/JOIN dev-ops_2", cmd.Join("dev-ops_2")),
        ("/create #new", cmd.Create("new")),
        ("/leave", cmd.Leave(None)),
        ("/leave #old", cmd.Leave("old")),
        ("/msg bob", cmd.Msg("bob", None)),
        ("/msg @bob  hi there,  you ", cmd.Msg("bob", "hi there,  you")),
        ("/who", cmd.Who(None)),
        ("/who #general", cmd.Who("general")),
        ("/channels", cmd.Channels()),
        ("/read", cmd.Read(everything=False)),
        ("/read all", cmd.Read(everything=True)),
        ("/retry", cmd.Retry()),
        ("/drop", cmd.Drop()),
        ("/help", cmd.Help()),
        ("/quit", cmd.Quit()),
        ("  /quit  ", cmd.Quit()),
    ],
)
def test_parse(line: str, expected: cmd.Parsed) -> None:
    assert cmd.parse(line) == expected


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/join", "usage: /join CHANNEL"),
        ("/join a b", "usage: /join CHANNEL"),
        ("/join Bad!", "is not a channel name"),
        ("/join " + "x" * 33, "is not a channel name"),
        ("/msg", "usage: /msg USER"),
        ("/msg b@d hi", "is not a user name"),
        ("/read some", "usage: /read [all]"),
        ("/quit now", "usage: /quit"),
        ("/leave a b", "usage: /leave"),
    ],
)
def test_parse_errors_name_the_problem(line: str, fragment: str) -> None:
    parsed = cmd.parse(line)
    assert isinstance(parsed, cmd.ParseError)
    assert fragment in parsed.message


def test_help_lists_every_command_and_fits_the_pane() -> None:
    lines = cmd.help_lines()
    for spec in cmd.COMMANDS:
        assert any(line.startswith(spec.usage) for line in lines)
    assert any("Ctrl-K" in line for line in lines)
    assert max(len(line) for line in lines) <= 58  # the message pane at 80 columns


def test_dm_ids_and_labels() -> None:
    assert dm_id("bob", "alice") == dm_id("alice", "bob") == "dm:alice:bob"
    assert parse_dm("dm:alice:bob") == ("alice", "bob")
    assert parse_dm("dm:bob:alice") is None  # not sorted
    assert parse_dm("general") is None
    assert dm_peer("dm:alice:bob", "alice") == "bob"
    assert dm_peer("dm:alice:bob", "carol") is None
    assert label("dm:alice:bob", "bob") == "@alice"
    assert label("general", "bob") == "#general"


def test_text_limits() -> None:
    assert text_problem("hi") is None
    assert text_problem("  \n ") == "empty message"
    assert text_problem("é" * 2048) is None  # 4096 bytes exactly
    problem = text_problem("é" * 2049)
    assert problem is not None and "4098 bytes" in problem


VOCAB = Vocabulary(
    me="alice",
    users=frozenset({"alice", "bob", "bert", "carol"}),
    channels=frozenset({"general", "games", "random"}),
)


def texts(found: list[Candidate]) -> list[str]:
    return [c.text for c in found]


def test_complete_commands_at_the_start_only() -> None:
    assert texts(candidates("/j", VOCAB)) == ["/join"]
    assert texts(candidates("/", VOCAB))[:3] == ["/join", "/leave", "/create"]
    assert candidates("/j", VOCAB)[0].start == -2
    assert candidates("say /j", VOCAB) == []
    assert candidates("/xyz", VOCAB) == []


def test_complete_users_and_channels_by_sigil() -> None:
    assert texts(candidates("hi @b", VOCAB)) == ["@bert", "@bob"]
    assert texts(candidates("hi @", VOCAB)) == ["@bert", "@bob", "@carol"]  # never oneself
    assert texts(candidates("see #g", VOCAB)) == ["#games", "#general"]
    found = candidates("see #ge", VOCAB)
    assert found == [Candidate("#general", -3, "channel")]
    assert candidates("plain words", VOCAB) == []
    assert candidates("hi ", VOCAB) == []


def test_complete_command_arguments_without_sigil() -> None:
    assert texts(candidates("/join r", VOCAB)) == ["random"]
    assert texts(candidates("/join ", VOCAB)) == ["games", "general", "random"]
    assert texts(candidates("/msg c", VOCAB)) == ["carol"]
    assert texts(candidates("/leave #r", VOCAB)) == ["#random"]
    assert candidates("/msg carol hel", VOCAB) == []  # the text of a DM is not completed
    assert candidates("/help x", VOCAB) == []


def test_completable_decides_what_tab_does() -> None:
    assert completable("/jo", VOCAB)
    assert completable("hi @c", VOCAB)
    assert not completable("hi there", VOCAB)
    assert not completable("", VOCAB)
    assert not completable("hi @zed", VOCAB)


def test_fuzzy_filter_ranks_prefix_then_substring_then_scattered() -> None:
    items = ["#general", "@gene", "#engineering", "#green", "@bob"]
    assert fuzzy_filter("gen", items) == ["#general", "@gene", "#engineering", "#green"]
    assert fuzzy_filter("grn", items) == ["#engineering", "#green"]  # both scattered
    assert fuzzy_filter("ree", items) == ["#green"]
    assert fuzzy_filter("", items) == items
    assert fuzzy_filter("#gen", items)[0] == "#general"
    assert fuzzy_filter("zzz", items) == []
