"""The scenario runner itself: parsing, mismatch reporting and rewriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.datadriven import (
    CmdArg,
    Command,
    ScenarioMismatch,
    ScriptError,
    parse,
    parse_command,
    run_file,
)

SCRIPT = """\
# a comment
echo a b
----
args a b

echo key=value list=(x, y) flag=true
----
args key=value list=x,y flag=true

# empty output
nothing
----

echo last
----
args last
"""


def _echo(cmd: Command) -> str:
    if cmd.name == "nothing":
        return ""
    return "args " + " ".join(
        a.key + ("=" + ",".join(a.values) if a.values else "") for a in cmd.args
    )


def test_parse_command_arguments() -> None:
    cmd = parse_command("deliver-msgs 1 2 drop=true set=(a, b,c)", "f.txt", 7)
    assert cmd.name == "deliver-msgs"
    assert cmd.positional() == ["1", "2"]
    assert cmd.get_bool("drop", False) is True
    assert cmd.values("set") == ("a", "b", "c")
    assert cmd.get_int("missing", 5) == 5
    assert cmd.args[0] == CmdArg("1")
    assert cmd.pos == "f.txt:7"
    with pytest.raises(ScriptError, match=r"f\.txt:7"):
        cmd.get_int("drop", 0)
    with pytest.raises(ScriptError):
        cmd.get("set", "")


def test_parse_command_rejects_malformed() -> None:
    for bad in ("x key=(a", "x key=a)", "x =v", "x key=(a,,b)"):
        with pytest.raises(ScriptError):
            parse_command(bad)


def test_parse_blocks() -> None:
    text = "# c\necho a\n----\nline 1\nline 2\n\n\nnothing\n----\n"
    blocks = parse(text, "t.txt")
    assert [b.command.name for b in blocks] == ["echo", "nothing"]
    assert blocks[0].expected == ("line 1", "line 2")
    assert blocks[0].command.lineno == 2
    assert blocks[1].expected == ()


def test_missing_separator_is_an_error() -> None:
    with pytest.raises(ScriptError, match=r"t\.txt:1"):
        parse("echo a\nno separator\n", "t.txt")


def test_matching_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    run_file(path, _echo)


def test_mismatch_fails_with_location_and_diff(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("echo a\n----\nargs a\n\necho b\n----\nargs WRONG\n")
    with pytest.raises(ScenarioMismatch) as info:
        run_file(path, _echo)
    message = str(info.value)
    assert f"{path}:5" in message
    assert "echo b" in message
    assert "-args WRONG" in message
    assert "+args b" in message


def test_rewrite_fills_in_outputs_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "rw.txt"
    path.write_text("# keep me\necho a\n----\nstale\nstale\n\necho b\n----\n")
    run_file(path, _echo, rewrite=True)
    assert path.read_text() == "# keep me\necho a\n----\nargs a\n\necho b\n----\nargs b\n"
    run_file(path, _echo)  # and the rewritten file now passes


def test_blank_output_lines_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("echo a\n----\n")
    with pytest.raises(ScriptError, match="blank"):
        run_file(path, lambda cmd: "one\n\ntwo", rewrite=True)


def test_handler_errors_name_the_command(tmp_path: Path) -> None:
    path = tmp_path / "boom.txt"
    path.write_text("echo a\n----\n")

    def boom(cmd: Command) -> str:
        raise KeyError("x")

    with pytest.raises(KeyError) as info:
        run_file(path, boom)
    assert any(f"{path}:1" in note for note in info.value.__notes__)
