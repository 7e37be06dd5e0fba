"""A tiny data-driven test runner: scripts of commands with their expected output.

File format (in the style of etcd-io/raft's testdata)::

    # comment lines and blank lines may sit between blocks
    command arg1 key=value key=(v1,v2)
    ----
    expected output line
    expected output line

A block is a command line, a ``----`` line, then the expected output, which ends at the first
blank line (or the end of the file). Output therefore never contains blank lines: handlers must
not produce them (the runner refuses such output rather than write a file it cannot read back).
An empty output is a ``----`` line directly followed by a blank line.

Arguments are separated by whitespace, except inside parentheses: ``key=(a, b)`` is one
argument with two values. An argument without ``=`` is positional (``key`` set, no values).

``run_file(path, handler, rewrite=False)`` replays a file and raises ``ScenarioMismatch`` at the
first block whose actual output differs, naming ``file:line``, the command and a unified diff.
With ``rewrite=True`` every block is run and the file is written back with the actual outputs
(comments and commands kept verbatim) — review the diff before committing it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEPARATOR = "----"


class ScriptError(Exception):
    """The script file (or a handler's output) breaks the format above."""


class ScenarioMismatch(AssertionError):
    """A block's actual output differs from the expected one."""


@dataclass(frozen=True, slots=True)
class CmdArg:
    """``key`` alone (positional), ``key=v`` or ``key=(v1,v2)``."""

    key: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command line, with where it came from for error messages."""

    name: str
    args: tuple[CmdArg, ...]
    line: str
    path: str
    lineno: int

    @property
    def pos(self) -> str:
        return f"{self.path}:{self.lineno}"

    def positional(self) -> list[str]:
        return [a.key for a in self.args if not a.values]

    def has(self, key: str) -> bool:
        return any(a.key == key and a.values for a in self.args)

    def values(self, key: str) -> tuple[str, ...]:
        for arg in self.args:
            if arg.key == key and arg.values:
                return arg.values
        raise ScriptError(f"{self.pos}: {self.name}: missing argument {key}=")

    def get(self, key: str, default: str) -> str:
        if not self.has(key):
            return default
        return self._single(key)

    def get_int(self, key: str, default: int) -> int:
        if not self.has(key):
            return default
        value = self._single(key)
        try:
            return int(value)
        except ValueError:
            raise ScriptError(f"{self.pos}: {key}={value} is not an integer") from None

    def get_bool(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self._single(key)
        if value not in ("true", "false"):
            raise ScriptError(f"{self.pos}: {key}={value} is not true/false")
        return value == "true"

    def _single(self, key: str) -> str:
        values = self.values(key)
        if len(values) != 1:
            raise ScriptError(f"{self.pos}: {key} takes one value, got {values}")
        return values[0]


@dataclass(frozen=True, slots=True)
class Block:
    """A command and its expected output; ``out_start``/``out_end`` are the 0-based line range
    the output occupies in the file (for rewriting)."""

    command: Command
    expected: tuple[str, ...]
    out_start: int
    out_end: int


def _split_args(text: str, where: str) -> list[str]:
    """Split on whitespace outside parentheses."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ScriptError(f"{where}: unbalanced ')'")
        if ch.isspace() and depth == 0:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
    if depth:
        raise ScriptError(f"{where}: unbalanced '('")
    if current:
        tokens.append("".join(current))
    return tokens


def _parse_arg(token: str, where: str) -> CmdArg:
    key, eq, value = token.partition("=")
    if not eq:
        return CmdArg(token)
    if not key or not value:
        raise ScriptError(f"{where}: malformed argument {token!r}")
    if value.startswith("(") and value.endswith(")"):
        values = tuple(v.strip() for v in value[1:-1].split(","))
        if any(not v for v in values):
            raise ScriptError(f"{where}: empty value in {token!r}")
        return CmdArg(key, values)
    return CmdArg(key, (value,))


def parse_command(line: str, path: str = "<string>", lineno: int = 0) -> Command:
    where = f"{path}:{lineno}"
    tokens = _split_args(line, where)
    if not tokens:
        raise ScriptError(f"{where}: empty command")
    args = tuple(_parse_arg(t, where) for t in tokens[1:])
    return Command(tokens[0], args, line.strip(), path, lineno)


def parse(text: str, path: str = "<string>") -> list[Block]:
    """All blocks of a script, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        command = parse_command(stripped, path, i + 1)
        if i + 1 >= len(lines) or lines[i + 1].strip() != SEPARATOR:
            raise ScriptError(f"{command.pos}: expected {SEPARATOR!r} after the command")
        start = i + 2
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        expected = tuple(line.rstrip() for line in lines[start:end])
        blocks.append(Block(command, expected, start, end))
        i = end
    return blocks


def _normalise(output: str, command: Command) -> tuple[str, ...]:
    lines = tuple(line.rstrip() for line in output.rstrip("\n").splitlines())
    if any(not line for line in lines):
        raise ScriptError(f"{command.pos}: {command.name} produced a blank output line")
    return lines


Handler = Callable[[Command], str]


def run_file(path: str | Path, handler: Handler, rewrite: bool = False) -> None:
    """Replay ``path`` through ``handler``; see the module docstring."""
    file = Path(path)
    text = file.read_text()
    blocks = parse(text, str(file))
    lines = text.splitlines()
    rewritten: list[str] = []
    copied_to = 0
    for block in blocks:
        command = block.command
        try:
            actual = _normalise(handler(command), command)
        except ScriptError:
            raise
        except Exception as exc:
            exc.add_note(f"while running {command.pos}: {command.line}")
            raise
        if rewrite:
            rewritten += lines[copied_to : block.out_start]
            rewritten += actual
            copied_to = block.out_end
        elif actual != block.expected:
            diff = difflib.unified_diff(block.expected, actual, "expected", "actual", lineterm="")
            raise ScenarioMismatch(
                f"{command.pos}: output of `{command.line}` differs\n" + "\n".join(diff)
            )
    if rewrite:
        rewritten += lines[copied_to:]
        file.write_text("\n".join(rewritten) + "\n")
