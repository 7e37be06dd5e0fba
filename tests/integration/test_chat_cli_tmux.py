"""The chat CLI in a real terminal: two full-screen clients in tmux (80x24, 16 colours), keys
typed with ``send-keys``, screens read with ``capture-pane``, against a real local cluster.

Alice's gateway is node 1 and Bob's node 2. They chat in a channel; node 1 is SIGKILLed; Alice's
status line shows the reconnect and the leader change it caused, and the conversation goes on
with nothing lost and nothing shown twice. Then the surviving nodes are frozen (SIGSTOP): a
message waits visibly ("…") while the screen still answers keys, and is confirmed ("✓") once
they run again. Both clients quit and leave the terminal as they found it (no alternate screen,
cursor visible).

Skipped only when ``tmux`` is not installed. Every wait polls the screen with a deadline; the
tmux server (on its own socket) and the cluster are always stopped.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.launcher import LocalCluster
from tests.integration.test_chat_cli import PASSWORD, ROOT, start_cluster

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (CI installs it for this test)"
)


class Tmux:
    """A private tmux server (its own socket, no user config)."""

    def __init__(self) -> None:
        self.socket = f"raftchat-test-{uuid.uuid4().hex[:8]}"
        self.socket_path = ""

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return done.stdout

    def start(self, name: str, command: str) -> None:
        self.run("new-session", "-d", "-s", name, "-x", "80", "-y", "24", command)
        self.socket_path = self.pane(name, "#{socket_path}")

    def type(self, name: str, text: str, *, enter: bool = True) -> None:
        self.run("send-keys", "-t", name, "-l", text)
        if enter:
            self.run("send-keys", "-t", name, "Enter")

    def key(self, name: str, key: str) -> None:
        self.run("send-keys", "-t", name, key)

    def screen(self, name: str, *, escapes: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if escapes else []), "-t", name)

    def pane(self, name: str, fmt: str) -> str:
        return self.run("display-message", "-p", "-t", name, fmt).strip()

    def wait(
        self, name: str, check: Callable[[str], bool], what: str, timeout: float = 20.0
    ) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name)
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: timed out waiting for {what}; screen:\n{text}")
            time.sleep(0.1)  # poll interval

    def wait_for(self, name: str, needle: str, timeout: float = 20.0) -> str:
        return self.wait(name, lambda text: needle in text, repr(needle), timeout)

    def kill(self) -> None:
        """Stop the server and every process in its panes; remove its socket file."""
        tmux = ["tmux", "-L", self.socket, "kill-server"]
        subprocess.run(tmux, capture_output=True, check=False)
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    started: list[LocalCluster] = []
    try:
        yield start_cluster(tmp_path / "cluster", started)
    finally:
        for c in started:
            c.stop()


def chat_command(user: str, endpoints: list[str], log: Path) -> str:
    """The shell command of a pane: the chat in 16 colours, then its exit status."""
    return (
        f"cd {ROOT} && PROMPT_TOOLKIT_COLOR_DEPTH=DEPTH_4_BIT {sys.executable} -m clients.chat "
        f"--endpoints {','.join(endpoints)} --user {user} --log-file {log}; "
        "echo EXIT=$?; exec cat"
    )


def register(tmux: Tmux, name: str) -> None:
    """The login screen: the pre-filled user name, a password twice, register."""
    tmux.wait_for(name, f"user: {name}")
    tmux.key(name, "Enter")
    tmux.wait_for(name, "password:")
    tmux.type(name, PASSWORD)
    tmux.wait_for(name, "[r]egister?")
    tmux.type(name, "r")
    tmux.wait_for(name, "password again:")
    tmux.type(name, PASSWORD)
    tmux.wait(name, lambda s: "│ connected" in s, "the chat screen")
    assert PASSWORD not in tmux.screen(name)


def in_order(screen: str, lines: list[str]) -> bool:
    """Each line appears exactly once, in this order."""
    if any(screen.count(line) != 1 for line in lines):
        return False
    positions = [screen.index(line) for line in lines]
    return positions == sorted(positions)


def test_two_terminals_chat_through_a_gateway_crash(
    tmux: Tmux, cluster: LocalCluster, tmp_path: Path
) -> None:
    node = {n.id: n.public for n in cluster.spec.nodes}
    tmux.start("alice", chat_command("alice", [node[1], node[2], node[3]], tmp_path / "a.log"))
    tmux.start("bob", chat_command("bob", [node[2], node[3], node[1]], tmp_path / "b.log"))
    register(tmux, "alice")
    register(tmux, "bob")
    assert f"node 1 ({node[1]})" in tmux.screen("alice")
    assert f"node 2 ({node[2]})" in tmux.screen("bob")

    tmux.type("alice", "/create lounge")
    tmux.wait_for("alice", "created #lounge")
    tmux.type("bob", "/join lounge")
    tmux.wait_for("bob", "joined #lounge")

    said = ["alice: 1 hello from alice", "bob: 2 hi alice, bob here"]
    tmux.type("alice", "1 hello from alice")
    tmux.wait_for("bob", said[0])
    tmux.type("bob", "2 hi alice, bob here")
    for name in ("alice", "bob"):
        tmux.wait(name, lambda s: in_order(s, said), "the first two messages")
    tmux.wait_for("alice", "alice: 1 hello from alice ✓")

    # Alice's gateway dies without a goodbye; she types on regardless.
    cluster.node(1).signal(signal.SIGKILL)
    tmux.type("alice", "3 sent across the failover")
    screen = tmux.wait(
        "alice", lambda s: "│ resumed │ node 1 lost:" in s, "the status line after failover"
    )
    assert "lost node 1" in screen and "resumed on node" in screen
    tmux.wait_for("bob", "alice: 3 sent across the failover")
    tmux.type("bob", "4 still here")
    said += ["alice: 3 sent across the failover", "bob: 4 still here"]
    for name in ("alice", "bob"):
        tmux.wait(name, lambda s: in_order(s, said), "all four messages, once each, in order")
    tmux.wait_for("alice", "alice: 3 sent across the failover ✓")

    # With the surviving nodes frozen a message waits, visibly, and the screen stays live.
    survivors = [cluster.node(2), cluster.node(3)]
    for child in survivors:
        child.signal(signal.SIGSTOP)
    try:
        tmux.type("alice", "5 while the cluster is frozen")
        tmux.wait_for("alice", "alice: 5 while the cluster is frozen …")
        tmux.type("alice", "typing still works", enter=False)
        tmux.wait_for("alice", "> typing still works")
        tmux.key("alice", "C-u")
        tmux.key("alice", "C-k")
        tmux.wait_for("alice", "switch to …")
        tmux.key("alice", "Escape")
        tmux.wait("alice", lambda s: "switch to …" not in s, "the switcher closed")
    finally:
        for child in survivors:
            child.signal(signal.SIGCONT)
    said.append("alice: 5 while the cluster is frozen")
    for name in ("alice", "bob"):
        tmux.wait(name, lambda s: in_order(s, said), "the frozen message, delivered", 40.0)
    tmux.wait_for("alice", "alice: 5 while the cluster is frozen ✓", 40.0)

    # 16 colours only: no 256-colour or true-colour escapes on the screen.
    coloured = tmux.screen("alice", escapes=True)
    assert re.search(r"\x1b\[[0-9;]*m", coloured)
    assert "38;5;" not in coloured and "38;2;" not in coloured

    # Leaving: /quit and Ctrl-C both restore the terminal.
    tmux.type("alice", "/quit")
    tmux.key("bob", "C-c")
    for name in ("alice", "bob"):
        tmux.wait_for(name, "EXIT=0")
        assert "Channels" not in tmux.screen(name)
        assert tmux.pane(name, "#{alternate_on}") == "0"
        assert tmux.pane(name, "#{cursor_flag}") == "1"
