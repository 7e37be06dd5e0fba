"""The chat CLI (``python -m clients.chat``) against a real local cluster (discovery + 3 chat
nodes as processes on loopback).

- The full-screen app runs in-process on prompt_toolkit's pipe input and an 80x24 dummy output:
  the test types keys (login, /create, messages, Ctrl-N, Tab to the sidebar, Alt-A, Ctrl-K,
  PgUp, /quit) while other users talk through the client library, and checks what the app's
  model holds — which is exactly what its panes draw.
- ``--plain`` runs as a real subprocess with piped stdin and stdout.

One cluster serves the whole module (each test uses its own user and channel names). Every wait
polls a condition with a deadline; every process and client is closed at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from clients import AsyncChatClient, MessageEvent
from clients.chat import render
from clients.chat.app import run_tui
from clients.chat.model import Conversation
from clients.chat.options import Options
from clients.chat.tui import ChatTui
from cluster.launcher import LocalCluster

T = TypeVar("T")
PASSWORD = "correct-horse-battery"
ROOT = Path(__file__).resolve().parents[2]

# Keys as a terminal sends them.
ENTER = "\r"
TAB = "\t"
UP = "\x1b[A"
CTRL_N = "\x0e"
CTRL_K = "\x0b"
ALT_A = "\x1ba"
PAGE_UP = "\x1b[5~"


def start_cluster(data_dir: Path, started: list[LocalCluster]) -> LocalCluster:
    """Discovery + 3 chat nodes (4 groups, rf 3) on free ports, every group with a leader.
    ``started`` gets the cluster before anything runs, so the caller can always stop it."""
    cluster = LocalCluster.create_or_load(
        data_dir, nodes=3, groups=4, rf=3, discovery_replicas=1, base_port=0
    )
    cluster.node_args = ("--send-rate", "0")  # tests send bursts; the rate limit is not tested
    started.append(cluster)
    cluster.start()
    cluster.wait_for_leaders()
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started: list[LocalCluster] = []
    try:
        yield start_cluster(tmp_path_factory.mktemp("chat-cli"), started)
    finally:
        for c in started:
            c.stop()


def nodes(cluster: LocalCluster) -> list[str]:
    return [n.public for n in cluster.spec.nodes]


async def eventually(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval


async def user(cluster: LocalCluster, name: str, *, session: bool = True) -> AsyncChatClient:
    """A registered, logged-in library client (with its session open)."""
    client = await AsyncChatClient.connect(nodes(cluster))
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    if session:
        await client.open_session()
    return client


def run(scenario: Coroutine[Any, Any, None], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


class Screen(DummyOutput):
    """An 80x24 terminal that draws nothing (the test reads the model the panes draw)."""

    def get_size(self) -> Size:
        return Size(rows=24, columns=80)


class Inbox:
    """Collects the messages a library client's session pushes."""

    def __init__(self, client: AsyncChatClient) -> None:
        self.texts: list[tuple[str, str, str]] = []
        self._task = asyncio.get_running_loop().create_task(self._collect(client))

    async def _collect(self, client: AsyncChatClient) -> None:
        async for event in client.events():
            if isinstance(event, MessageEvent):
                m = event.message
                self.texts.append((m.conversation, m.sender, m.text))

    def has(self, conversation: str, sender: str, text: str) -> bool:
        return (conversation, sender, text) in self.texts

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def texts(conv: Conversation) -> list[tuple[str, str]]:
    return [(conv.messages[s].sender, conv.messages[s].text) for s in conv.seqs]


def test_tui_chats_switches_and_counts_unread(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        bob = await user(cluster, "tui-bob")
        carol = await user(cluster, "tui-carol")
        bob_inbox, carol_inbox = Inbox(bob), Inbox(carol)
        ready: list[ChatTui] = []
        with create_pipe_input() as keys:
            app = asyncio.get_running_loop().create_task(
                run_tui(
                    Options(endpoints=tuple(nodes(cluster))),
                    input=keys,
                    output=Screen(),
                    on_ready=ready.append,
                )
            )
            try:
                # The login screen: user, password (not echoed), register, password again.
                keys.send_text(f"tui-alice{ENTER}{PASSWORD}{ENTER}r{ENTER}{PASSWORD}{ENTER}")
                await eventually(lambda: ready and ready[0].app.is_running, "the login")
                tui = ready[0]
                model = tui.model
                assert model.me == "tui-alice"

                def conv(conversation: str) -> Conversation:
                    return model.conversations[conversation]

                # /create switches to the channel; a message from bob shows up in it.
                keys.send_text(f"/create tui-room{ENTER}")
                await eventually(
                    lambda: model.current == "tui-room" and conv("tui-room").joined, "/create"
                )
                await bob.join_channel("tui-room")
                await bob.send("hi alice", "tui-room")
                await eventually(
                    lambda: ("tui-bob", "hi alice") in texts(conv("tui-room")), "bob's message"
                )

                # Alice's own message: pending, then confirmed at its seq; bob receives it.
                keys.send_text(f"hello bob{ENTER}")
                await eventually(
                    lambda: bob_inbox.has("tui-room", "tui-alice", "hello bob"), "send"
                )
                await eventually(lambda: not model.outbox.pending("tui-room"), "the ack")
                assert texts(conv("tui-room"))[-2:] == [
                    ("tui-bob", "hi alice"),
                    ("tui-alice", "hello bob"),
                ]
                await eventually(lambda: conv("tui-room").read_seq == 2, "marked read")

                # Ctrl-N: a DM to carol; the first message creates the conversation.
                keys.send_text(CTRL_N)
                await eventually(lambda: tui.picker.active, "the DM picker")
                keys.send_text(f"tui-carol{ENTER}")
                dm = "dm:tui-alice:tui-carol"
                await eventually(lambda: model.current == dm, "the DM opened")
                keys.send_text(f"hey carol{ENTER}")
                await eventually(lambda: carol_inbox.has(dm, "tui-alice", "hey carol"), "the DM")

                # While alice is in the DM, the channel counts unread messages and mentions.
                await bob.send("anyone?", "tui-room")
                await bob.send("@tui-alice ping", "tui-room")
                await eventually(lambda: conv("tui-room").unread("tui-alice") == 2, "unread 2")
                assert conv("tui-room").mention_count("tui-alice") == 1
                row = next(
                    r for r in render.sidebar_rows(model, 20) if r.conversation == "tui-room"
                )
                assert render.plain_text(row.line).split() == ["#tui-room", "2"]
                assert row.line[-1][0] == "class:badge.mention"

                # Tab to the sidebar, Up to the channel, Enter: it opens, and reads.
                keys.send_text(TAB)
                await eventually(
                    lambda: tui.app.layout.has_focus(tui.sidebar_window), "sidebar focus"
                )
                keys.send_text(UP + ENTER)
                await eventually(lambda: model.current == "tui-room", "switched by the sidebar")
                assert conv("tui-room").marker_seq == 2  # the "new" line above bob's two
                await eventually(lambda: conv("tui-room").unread("tui-alice") == 0, "read")
                await eventually(lambda: conv("tui-room").read_seq == 4, "marker on the server")
                counts = {u.conversation: u for u in await tui.engine.client.unread_counts()}
                assert counts["tui-room"].unread == 0

                # A DM reply counts on the DM; Alt-A jumps there.
                await carol.send("hi alice!", to_user="tui-alice")
                await eventually(lambda: conv(dm).unread("tui-alice") == 1, "DM unread")
                keys.send_text(ALT_A)
                await eventually(lambda: model.current == dm, "Alt-A to the next unread")
                await eventually(lambda: conv(dm).unread("tui-alice") == 0, "DM read")

                # Ctrl-K: the quick switcher, filtered by what is typed.
                keys.send_text(CTRL_K)
                await eventually(lambda: tui.picker.active, "the switcher")
                keys.send_text(f"room{ENTER}")
                await eventually(lambda: model.current == "tui-room", "switched by Ctrl-K")

                # A long channel: the first page, then PgUp fetches older history at the top.
                await bob.create_channel("tui-busy")
                await asyncio.gather(*(bob.send(f"n{i}", "tui-busy") for i in range(150)))
                keys.send_text(f"/join tui-busy{ENTER}")
                await eventually(
                    lambda: model.current == "tui-busy" and conv("tui-busy").loaded, "/join"
                )
                assert conv("tui-busy").oldest_held > 1
                busy_conv = conv("tui-busy")

                def moved(before: tuple[int, int]) -> Callable[[], bool]:
                    def check() -> bool:
                        now = (tui.pane.scroll, busy_conv.oldest_held)
                        return now != before or busy_conv.reached_oldest

                    return check

                for _ in range(30):
                    if busy_conv.reached_oldest:
                        break
                    # Each PgUp scrolls a page, or at the top fetches the page before.
                    keys.send_text(PAGE_UP)
                    await eventually(moved((tui.pane.scroll, busy_conv.oldest_held)), "PgUp")
                assert busy_conv.reached_oldest
                assert conv("tui-busy").seqs == list(range(1, 151))
                assert conv("tui-busy").holes() == []

                # Tab completes a #channel in the input.
                keys.send_text("see #tui-b" + TAB)
                await eventually(lambda: tui.input.text == "see #tui-busy ", "completion")

                keys.send_text("\x15/quit" + ENTER)  # Ctrl-U clears the line first
                assert await asyncio.wait_for(app, 10) == 0
            finally:
                if not app.done():
                    app.cancel()
                    await asyncio.gather(app, return_exceptions=True)
                await bob_inbox.close()
                await carol_inbox.close()
                await bob.close()
                await carol.close()

    run(scenario())


async def read_line(stream: asyncio.StreamReader, timeout: float = 20.0) -> str:
    line = await asyncio.wait_for(stream.readline(), timeout)
    return line.decode().rstrip("\n")


def test_plain_mode_sends_and_prints_in_order(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        bob = await user(cluster, "plain-bob")
        await bob.create_channel("plain-room")
        inbox = Inbox(bob)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clients.chat",
            "--plain",
            "--endpoints",
            ",".join(nodes(cluster)),
            "--user",
            "plain-alice",
            "--password-stdin",
            "--register",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            lines = [PASSWORD, "/join plain-room", *(f"line {i}" for i in range(1, 21))]
            lines += ["/msg plain-bob a direct one", "/nonsense"]
            process.stdin.write(("\n".join(lines) + "\n").encode())
            await process.stdin.drain()
            printed = [await read_line(process.stdout) for _ in range(21)]
            room = [line for line in printed if line.startswith("[#plain-room]")]
            assert room == [f"[#plain-room] plain-alice: line {i}" for i in range(1, 21)]
            assert "[@plain-bob] plain-alice: a direct one" in printed
            await eventually(lambda: inbox.has("plain-room", "plain-alice", "line 20"), "bob")
            assert [t for c, _, t in inbox.texts if c == "plain-room"] == [
                f"line {i}" for i in range(1, 21)
            ]
            # Incoming messages are printed as they come.
            await bob.send("welcome, alice", "plain-room")
            assert await read_line(process.stdout) == "[#plain-room] plain-bob: welcome, alice"
            # End of input: the last sends are acknowledged, then a clean exit.
            process.stdin.write(b"/join plain-room\nlast one\n")  # /msg switched to the DM
            process.stdin.close()
            assert await read_line(process.stdout) == "[#plain-room] plain-alice: last one"
            assert await asyncio.wait_for(process.wait(), 20) == 0
            assert await process.stdout.read() == b""
            assert process.stderr is not None
            err = (await process.stderr.read()).decode()
            assert "* joined #plain-room" in err
            assert "! unknown command /nonsense (try /help)" in err
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await inbox.close()
            await bob.close()

    run(scenario())


def test_plain_mode_reports_undeliverable_messages(cluster: LocalCluster) -> None:
    """A message that cannot be delivered (here: a DM to nobody) fails, holds the one behind
    it, and the exit status says so."""

    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clients.chat",
            "--plain",
            "--endpoints",
            ",".join(nodes(cluster)),
            "--user",
            "plain-eve",
            "--password-stdin",
            "--register",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(f"{PASSWORD}\n/msg nobody-here hello\nsecond\n".encode()), 30
        )
        assert process.returncode == 1
        assert out == b""
        text = err.decode()
        assert "! not sent: not found" in text
        assert "! 2 message(s) not delivered" in text

    run(scenario())
