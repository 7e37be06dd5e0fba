"""Flags of ``python -m clients.chat`` (clients/chat/options.py): environment fallbacks that
never fight a flag, the combinations refused with a message that says what to do, and a
missing cluster file explained."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.chat.options import Options, StartupError, cluster_file, connect, parse


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RAFTCHAT_DISCOVERY",
        "RAFTCHAT_CLUSTER_FILE",
        "RAFTCHAT_ENDPOINTS",
        "RAFTCHAT_USER",
        "RAFTCHAT_DATA_DIR",
        "RAFTCHAT_SEND_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_read_the_local_cluster_file() -> None:
    options = parse([])
    assert options == Options()
    assert cluster_file(options) == Path("data") / "cluster.json"


def test_flags() -> None:
    options = parse(
        ["--endpoints", "127.0.0.1:1, 127.0.0.1:2", "--user", "Alice", "--plain",
         "--password-stdin", "--register", "--send-timeout", "5"]
    )  # fmt: skip
    assert options.endpoints == ("127.0.0.1:1", "127.0.0.1:2")
    assert options.user == "alice"
    assert options.plain and options.password_stdin and options.register
    assert options.send_timeout == 5.0


def test_environment_fallbacks_never_fight_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAFTCHAT_DISCOVERY", "10.0.0.1:7100")
    monkeypatch.setenv("RAFTCHAT_DATA_DIR", "/srv/chat")
    monkeypatch.setenv("RAFTCHAT_SEND_TIMEOUT", "7")
    assert parse([]).discovery == ("10.0.0.1:7100",)
    flagged = parse(["--cluster-file", "elsewhere"])
    assert flagged.discovery == () and flagged.cluster_file == "elsewhere"
    assert parse([]).send_timeout == 7.0
    monkeypatch.delenv("RAFTCHAT_DISCOVERY")
    assert cluster_file(parse([])) == Path("/srv/chat") / "cluster.json"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--plain"], "--plain needs --user"),
        (["--password-stdin", "--user", "a"], "works with --plain only"),
        (["--endpoints", "nohost"], "--endpoints: 'nohost' is not host:port"),
        (["--discovery", "h:99999"], "no port in 1..65535"),
        (["--send-timeout", "0"], "must be positive"),
    ],
)
def test_refused_combinations_say_why(argv: list[str], fragment: str) -> None:
    with pytest.raises(StartupError, match=fragment):
        parse(argv)


def test_two_places_for_the_cluster_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--discovery", "h:1", "--endpoints", "h:2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_missing_cluster_file_says_how_to_start_one(tmp_path: Path) -> None:
    options = Options(cluster_file=str(tmp_path))
    with pytest.raises(StartupError, match="make up"):
        asyncio.run(connect(options))
