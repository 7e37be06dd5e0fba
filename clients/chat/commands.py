"""The input line's language: ``/commands`` and plain text, parsed into frozen values.

Why a parser separate from what the commands do: the TUI, the line mode (``--plain``) and the
tests share one grammar, each error message names what was wrong before any network call, and
``/help`` and tab completion read the same table (:data:`COMMANDS`) the parser uses.

Grammar: a line that does not start with ``/`` is a message to the current conversation; ``//``
at the start sends the rest of the line as text beginning with ``/``. ``#`` before a channel and
``@`` before a user are optional. Names follow the server's rule ``[a-z0-9_-]{1,32}`` (upper case
is folded, since names are lower case anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from clients.chat.ids import is_name


@dataclass(frozen=True, slots=True)
class Send:
    """Text for the current conversation."""

    text: str


@dataclass(frozen=True, slots=True)
class Join:
    channel: str


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str | None
    """None: the current channel."""


@dataclass(frozen=True, slots=True)
class Create:
    channel: str


@dataclass(frozen=True, slots=True)
class Msg:
    """Open the DM with ``user`` (and send ``text`` there, if given)."""

    user: str
    text: str | None


@dataclass(frozen=True, slots=True)
class Who:
    channel: str | None
    """None: the current channel, or everyone when the current conversation is a DM."""


@dataclass(frozen=True, slots=True)
class Channels:
    pass


@dataclass(frozen=True, slots=True)
class Read:
    everything: bool
    """``/read all``: every conversation; else the current one."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the current conversation's failed message again (same idempotency key)."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Give up the current conversation's failed message (later ones go on)."""


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class ParseError:
    message: str


Command = Send | Join | Leave | Create | Msg | Who | Channels | Read | Retry | Drop | Help | Quit
Parsed = Command | ParseError


class ArgKind:
    """What a command's first argument names, for completion."""

    NONE: Final = ""
    CHANNEL: Final = "channel"
    USER: Final = "user"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    arg: str = ArgKind.NONE


COMMANDS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec("join", "/join CHANNEL", "join a channel (and switch to it)", ArgKind.CHANNEL),
    CommandSpec(
        "leave", "/leave [CHANNEL]", "leave a channel (default: this one)", ArgKind.CHANNEL
    ),
    CommandSpec("create", "/create CHANNEL", "create a channel and join it", ArgKind.CHANNEL),
    CommandSpec("msg", "/msg USER [TEXT]", "open a direct message (and send TEXT)", ArgKind.USER),
    CommandSpec("who", "/who [CHANNEL]", "who is online (in a channel)", ArgKind.CHANNEL),
    CommandSpec("channels", "/channels", "list every channel"),
    CommandSpec("read", "/read [all]", "mark this conversation (or all) as read"),
    CommandSpec("retry", "/retry", "send a failed message again"),
    CommandSpec("drop", "/drop", "give up a failed message"),
    CommandSpec("help", "/help", "commands and keys"),
    CommandSpec("quit", "/quit", "leave the program"),
)
SPECS: Final = {spec.name: spec for spec in COMMANDS}


def parse(line: str) -> Parsed:
    """The command or message ``line`` means (surrounding blank lines are not part of it)."""
    stripped = line.strip()
    if not stripped.startswith("/"):
        return Send(line.strip("\n"))
    if stripped.startswith("//"):
        return Send(line.strip("\n").lstrip()[1:])
    head, _, rest = stripped[1:].partition(" ")
    name = head.lower()
    rest = rest.strip()
    spec = SPECS.get(name)
    if spec is None:
        return ParseError(f"unknown command /{head} (try /help)")
    if name == "msg":
        return _msg(rest)
    args = rest.split()
    if name in ("join", "create"):
        if len(args) != 1:
            return ParseError(f"usage: {spec.usage}")
        channel = _name(args[0], "#")
        if channel is None:
            return _bad_name(args[0], "channel")
        return Join(channel) if name == "join" else Create(channel)
    if name in ("leave", "who"):
        if len(args) > 1:
            return ParseError(f"usage: {spec.usage}")
        channel = None
        if args:
            channel = _name(args[0], "#")
            if channel is None:
                return _bad_name(args[0], "channel")
        return Leave(channel) if name == "leave" else Who(channel)
    if name == "read":
        if args not in ([], ["all"]):
            return ParseError(f"usage: {spec.usage}")
        return Read(everything=bool(args))
    if args:
        return ParseError(f"usage: {spec.usage}")
    simple: dict[str, Command] = {
        "channels": Channels(),
        "retry": Retry(),
        "drop": Drop(),
        "help": Help(),
        "quit": Quit(),
    }
    return simple[name]


def _msg(rest: str) -> Parsed:
    user_arg, _, text = rest.partition(" ")
    if not user_arg:
        return ParseError(f"usage: {SPECS['msg'].usage}")
    user = _name(user_arg, "@")
    if user is None:
        return _bad_name(user_arg, "user")
    return Msg(user, text.strip() or None)


def _name(arg: str, sigil: str) -> str | None:
    name = arg[1:] if arg.startswith(sigil) else arg
    name = name.lower()
    return name if is_name(name) else None


def _bad_name(arg: str, what: str) -> ParseError:
    return ParseError(f"{arg!r} is not a {what} name (a-z, 0-9, _ and -, at most 32)")


def help_lines() -> list[str]:
    """The text of ``/help``: every command, then the keys of the full-screen mode."""
    width = max(len(spec.usage) for spec in COMMANDS)
    lines = [f"{spec.usage:<{width}}  {spec.summary}" for spec in COMMANDS]
    keys = [
        ("Enter", "send"),
        ("Alt-Enter/Ctrl-J", "new line"),
        ("Up/Down", "input history"),
        ("Tab", "complete /cmd @user #chan, or next pane"),
        ("Shift-Tab", "previous pane"),
        ("Ctrl-K", "switch conversation"),
        ("Ctrl-N", "new direct message"),
        ("Alt-A", "next unread"),
        ("PgUp/PgDn", "scroll; older messages load at the top"),
        ("Ctrl-R", "retry a failed message"),
        ("Ctrl-C", "leave"),
    ]
    key_width = max(len(k) for k, _ in keys)
    return [*lines, "", *(f"{k:<{key_width}}  {v}" for k, v in keys)]
