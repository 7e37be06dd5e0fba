"""Start-up and shut-down of ``python -m clients.chat``: find the cluster, log in, run the
full-screen TUI or the line mode, and leave the terminal as it was found.

Why the care about the terminal: the full screen owns it, so anything else written to it —
a library's warning, gRPC's C-core logging, a traceback from a background task — would scribble
over the screen. While the full screen is up, stderr (the file descriptor, so C code is caught
too) goes to ``--log-file`` or nowhere; it is put back before a crash's traceback is printed.
prompt_toolkit restores the terminal modes and leaves the alternate screen on any exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import Callable, Iterator

from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from clients import AlreadyExists, ChatError, Unauthenticated
from clients.chat import options as opts
from clients.chat.engine import ChatEngine
from clients.chat.login import LoginCancelled, login_screen
from clients.chat.model import ChatModel
from clients.chat.plain import LineReader, PlainListener, run_plain
from clients.chat.ports import describe
from clients.chat.tui import ChatTui


async def run_tui(
    options: opts.Options,
    *,
    input: Input | None = None,
    output: Output | None = None,
    on_ready: Callable[[ChatTui], None] | None = None,
) -> int:
    """Log in on the login screen, then run the full-screen chat until the user quits."""
    client = await opts.connect(options)
    try:
        account = await login_screen(client, default_user=options.user, input=input, output=output)
    except LoginCancelled as exc:
        await client.close()
        if str(exc):
            print(f"raftchat: {exc}", file=sys.stderr)
            return 1
        return 0
    model = ChatModel(account.user)
    tui = ChatTui(model, input=input, output=output)
    engine = ChatEngine(client, model, tui, send_timeout=options.send_timeout)
    tui.attach(engine)
    try:
        await engine.start(open_first=True)
        if on_ready is not None:
            on_ready(tui)
        with _signals_quit(tui):
            return await tui.run()
    finally:
        await engine.close()


async def run_line_mode(options: opts.Options) -> int:
    """``--plain``: log in with the flags (and stdin or the terminal for the password)."""
    client = await opts.connect(options)
    try:
        password, lines = await _password(options)
        if options.register:
            with contextlib.suppress(AlreadyExists):
                await client.register(options.user, password)
        try:
            account = await client.login(options.user, password)
        except Unauthenticated:
            print("! wrong user or password", file=sys.stderr)
            return 1
        model = ChatModel(account.user)
        listener = PlainListener(model, sys.stdout, sys.stderr)
        engine = ChatEngine(client, model, listener, send_timeout=options.send_timeout)
        try:
            return await run_plain(engine, listener, lines)
        finally:
            await engine.close()
    finally:
        await client.close()


async def _password(options: opts.Options) -> tuple[str, LineReader]:
    """The password, and the reader of the lines after it. The reader starts only once the
    password is known, so that it does not race ``getpass`` for the terminal."""
    if options.password_stdin:
        lines = LineReader()
        line = await lines.next()
        if line is None:
            raise opts.StartupError("--password-stdin: stdin ended before the password line")
        return line, lines
    password = os.environ.get("RAFTCHAT_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise opts.StartupError("no password: use --password-stdin or set RAFTCHAT_PASSWORD")
        password = getpass.getpass(f"password for {options.user}: ")
    return password, LineReader()


@contextlib.contextmanager
def _signals_quit(tui: ChatTui) -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal went away) end the chat like /quit does."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, tui.quit)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread (tests), or no such signal here
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def stderr_to(path: str) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` (or the null device) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(target, 2)
    finally:
        os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    try:
        options = opts.parse(sys.argv[1:] if argv is None else argv)
        if options.plain:
            return asyncio.run(run_line_mode(options))
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise opts.StartupError(
                "the full-screen chat needs a terminal; use --plain for pipes and scripts"
            )
        return _run_full_screen(options)
    except opts.StartupError as exc:
        print(f"raftchat: {exc}", file=sys.stderr)
        return 2
    except ChatError as exc:
        print(f"raftchat: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run_full_screen(options: opts.Options) -> int:
    # Everything that reaches stderr meanwhile (logs, gRPC) goes to --log-file; the login
    # screen and the full screen write to stdout through prompt_toolkit.
    with stderr_to(options.log_file):
        return asyncio.run(run_tui(options))
