"""Command-line flags of ``python -m clients.chat``, each with an environment fallback.

Why a frozen value: the TUI, the line mode and the tests all start from one ``Options``, and
the rules about which flags go together (one way to find the cluster; ``--plain`` needs
``--user``) are checked here once, with a message that says what to do.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from clients import AsyncChatClient
from clients.endpoints import check_address

DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True, slots=True)
class Options:
    discovery: tuple[str, ...] = ()
    cluster_file: str = ""
    endpoints: tuple[str, ...] = ()
    user: str = ""
    plain: bool = False
    password_stdin: bool = False
    register: bool = False
    send_timeout: float = 30.0
    log_file: str = ""


class StartupError(Exception):
    """Cannot start as asked; the message says why and what to do."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.chat",
        description="The raftchat terminal client: a full-screen chat (log in or register, "
        "channels, direct messages, unread counts, failover shown in the status line), or "
        "with --plain a line mode for scripts and screen readers. Without a flag saying where "
        "the cluster is it reads DATA_DIR/cluster.json as written by `make up`.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--discovery",
        default="",
        metavar="HOST:PORT,...",
        help="discovery replicas to ask for the nodes (env RAFTCHAT_DISCOVERY)",
    )
    where.add_argument(
        "--cluster-file",
        default="",
        metavar="PATH",
        help="a local cluster's cluster.json or data directory (env RAFTCHAT_CLUSTER_FILE; "
        "default $RAFTCHAT_DATA_DIR/cluster.json, else data/cluster.json)",
    )
    where.add_argument(
        "--endpoints",
        default="",
        metavar="HOST:PORT,...",
        help="chat nodes to use directly, tried in this order (env RAFTCHAT_ENDPOINTS)",
    )
    p.add_argument(
        "--user",
        default=os.environ.get("RAFTCHAT_USER", ""),
        help="user name (pre-filled on the login screen; required with --plain) "
        "(env RAFTCHAT_USER)",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="line mode: print messages as '[#channel] user: text' on stdout, read commands "
        "and messages from stdin, notices on stderr",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="--plain: the first line of stdin is the password (else env RAFTCHAT_PASSWORD, "
        "else it is asked on the terminal)",
    )
    p.add_argument(
        "--register",
        action="store_true",
        help="--plain: create the account first if it does not exist",
    )
    p.add_argument(
        "--send-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up on a message after this long (it then shows as failed, with retry); "
        "default 30 (env RAFTCHAT_SEND_TIMEOUT)",
    )
    p.add_argument(
        "--log-file",
        default=os.environ.get("RAFTCHAT_CHAT_LOG", ""),
        metavar="PATH",
        help="full-screen mode: write logs and stderr here instead of discarding them "
        "(env RAFTCHAT_CHAT_LOG)",
    )
    return p


def parse(argv: list[str]) -> Options:
    args = parser().parse_args(argv)
    if not (args.discovery or args.cluster_file or args.endpoints):
        # No flag says where the cluster is: the first of the environment variables that does
        # (a flag always wins over the environment, so they never conflict).
        args.discovery = os.environ.get("RAFTCHAT_DISCOVERY", "")
        if not args.discovery:
            args.cluster_file = os.environ.get("RAFTCHAT_CLUSTER_FILE", "")
            if not args.cluster_file:
                args.endpoints = os.environ.get("RAFTCHAT_ENDPOINTS", "")
    if args.send_timeout is None:
        raw = os.environ.get("RAFTCHAT_SEND_TIMEOUT", "30")
        try:
            args.send_timeout = float(raw)
        except ValueError:
            raise StartupError(f"RAFTCHAT_SEND_TIMEOUT={raw!r} is not a number") from None
    options = Options(
        discovery=_addresses(args.discovery, "--discovery"),
        cluster_file=args.cluster_file,
        endpoints=_addresses(args.endpoints, "--endpoints"),
        user=args.user.strip().lower(),
        plain=args.plain,
        password_stdin=args.password_stdin,
        register=args.register,
        send_timeout=args.send_timeout,
        log_file=args.log_file,
    )
    given = sum(bool(x) for x in (options.discovery, options.cluster_file, options.endpoints))
    if given > 1:
        raise StartupError("give one of --discovery, --cluster-file and --endpoints")
    if options.plain and not options.user:
        raise StartupError("--plain needs --user NAME")
    if options.password_stdin and not options.plain:
        raise StartupError(
            "--password-stdin works with --plain only (the full-screen mode reads the "
            "terminal, so it asks for the password on its login screen)"
        )
    if options.send_timeout <= 0:
        raise StartupError("--send-timeout must be positive")
    return options


def _addresses(raw: str, flag: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(check_address(item))
        except ValueError as exc:
            raise StartupError(f"{flag}: {exc}") from None
    return tuple(out)


def cluster_file(options: Options) -> Path:
    if options.cluster_file:
        return Path(options.cluster_file)
    return Path(os.environ.get("RAFTCHAT_DATA_DIR", DEFAULT_DATA_DIR)) / "cluster.json"


async def connect(options: Options) -> AsyncChatClient:
    """A client for the cluster the options name (discovery, endpoints, or the cluster file).
    With discovery or a cluster file the first gateway is picked at random, so the users of a
    cluster spread over its nodes; ``--endpoints`` are tried in the order given."""
    if options.discovery:
        try:
            return await AsyncChatClient.connect(discovery=list(options.discovery), spread=True)
        except Exception as exc:
            raise StartupError(
                f"discovery at {','.join(options.discovery)} did not answer: {exc}"
            ) from None
    if options.endpoints:
        return await AsyncChatClient.connect(list(options.endpoints))
    path = cluster_file(options)
    file = path / "cluster.json" if path.is_dir() else path
    if not file.exists():
        raise StartupError(
            f"no cluster file at {file}: start a cluster with `make up` (it writes "
            "data/cluster.json), or pass --cluster-file, --discovery or --endpoints"
        )
    try:
        return await AsyncChatClient.connect(cluster_file=path, spread=True)
    except (ValueError, KeyError, OSError) as exc:
        raise StartupError(f"cannot read {file}: {exc}") from None
