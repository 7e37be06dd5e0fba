"""``python -m shards.chat.bench_apply``: what ``ChatState.apply`` costs per PostMessage entry.

Why: every replica applies every send (rf 3), so apply's CPU is paid three times per send, and
a profile at peak load puts it at a sixth of each node's samples. This benchmark isolates it:
one ``ChatState`` in a temporary directory (WAL, ``synchronous=NORMAL``, as on a node), a few
users in a few channels, then the same realistic stream of sends (8 senders, 8 channels, 200 B
texts, distinct idempotency keys made as ``clients.client`` makes them — a random prefix per
client and a counter — one in eight a DM, whose first message makes follow-ups)
applied in batches of 1, 8 and 64 entries per ``apply`` call. The state's ``capture`` list is
on, as the push feed has it on a node.

Figures depend on the machine, so the same run measures a baseline: a bare ``executemany``
INSERT of the same message rows into a table of the messages table's shape, 64 rows per
transaction. Ratios to it are comparable across machines; the absolute microseconds are not.
A second set of rows uses a dedup window small enough that every send evicts a key, the steady
state of a long-lived group (the default window holds each sender's newest 10,000 keys).
Each figure is the best of ``--rounds`` runs (the one with the least CPU), each on a fresh
database; CPU time is the figure that matters on a CPU-bound node, wall time is shown beside it.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.messages import Entry
from shards.chat.commands import (
    Command,
    CreateChannel,
    JoinChannel,
    PostMessage,
    RegisterUser,
    decode_command,
    dm_id,
    encode_command,
)
from shards.chat.state import DEDUP_WINDOW, ChatState

SENDERS = tuple(f"user{i}" for i in range(8))
CHANNELS = tuple(f"chan{i}" for i in range(8))
TEXT_BYTES = 200
DM_EVERY = 8
"""One send in this many is a DM (the rest go to channels)."""
BATCH_SIZES = (1, 8, 64)
BASELINE_BATCH = 64


@dataclass(frozen=True, slots=True, order=True)
class Timing:
    """CPU seconds (this process, user + system: the box is CPU-bound, and SQLite's writes to
    its WAL are system time) and wall-clock seconds of one run. Ordered by CPU."""

    cpu: float
    wall: float

    @staticmethod
    def start() -> Timing:
        return Timing(time.process_time(), time.perf_counter())

    def since(self) -> Timing:
        return Timing(time.process_time() - self.cpu, time.perf_counter() - self.wall)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured configuration: microseconds per entry (the run with the least CPU)."""

    label: str
    cpu_us: float
    wall_us: float


def setup_entries() -> list[Entry]:
    """Users, channels and memberships every send of :func:`post_entries` needs."""
    commands: list[Command] = [
        *(RegisterUser(u, u.title(), "scrypt$hash", 1) for u in SENDERS),
        *(CreateChannel(c, SENDERS[0], 1) for c in CHANNELS),
        *(JoinChannel(c, u, 2) for c in CHANNELS for u in SENDERS[1:]),
    ]
    return [Entry(1, i, encode_command(cmd)) for i, cmd in enumerate(commands, start=1)]


def post_entries(count: int, first_index: int, seed: int = 7) -> list[Entry]:
    """``count`` sends as log entries from ``first_index`` on: rotating senders, random
    channels, a DM every :data:`DM_EVERY` sends, a leader clock that advances about a
    millisecond per few sends (so some stamps are bumped by the conversation's previous one)."""
    rng = random.Random(seed)
    prefixes = {sender: f"{rng.getrandbits(96):024x}" for sender in SENDERS}
    entries = []
    ms = 1_700_000_000_000
    for n in range(count):
        sender = SENDERS[n % len(SENDERS)]
        if n % DM_EVERY == DM_EVERY - 1:
            peer = rng.choice([u for u in SENDERS if u != sender])
            conversation = dm_id(sender, peer)
        else:
            conversation = rng.choice(CHANNELS)
        ms += rng.choice((0, 0, 1))
        text = "".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=TEXT_BYTES))
        key = f"{prefixes[sender]}-{n + 1:x}"
        cmd = PostMessage(conversation, sender, key, text, ms, rng.randrange(3))
        entries.append(Entry(1, first_index + n, encode_command(cmd)))
    return entries


def time_apply(
    directory: Path, posts: Sequence[Entry], batch: int, window: int, setup: Sequence[Entry]
) -> Timing:
    """Time to apply ``posts`` in calls of ``batch`` entries to a fresh state."""
    state = ChatState(directory / f"state-{batch}-{window}.db", dedup_window=window)
    try:
        state.apply(setup)
        state.capture = []
        start = Timing.start()
        for lo in range(0, len(posts), batch):
            state.apply(posts[lo : lo + batch])
            state.capture.clear()
        return start.since()
    finally:
        state.close()


def time_baseline(directory: Path, posts: Sequence[Entry], name: str) -> Timing:
    """Time to insert the same message rows with bare ``executemany``, 64 per transaction,
    into a table of the messages table's shape on a connection set up as the state's is."""
    rows = []
    last: dict[str, int] = {}
    for entry in posts:
        cmd = _decode_post(entry)
        seq = last[cmd.conversation] = last.get(cmd.conversation, 0) + 1
        c = cmd
        rows.append(
            (c.conversation, seq, c.sender, c.text, c.hlc_ms, c.hlc_counter, c.idempotency_key)
        )
    conn = sqlite3.connect(directory / name, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE messages (conversation TEXT NOT NULL, seq INTEGER NOT NULL,"
            " sender TEXT NOT NULL, text TEXT NOT NULL, hlc_ms INTEGER NOT NULL,"
            " hlc_counter INTEGER NOT NULL, idempotency_key TEXT NOT NULL,"
            " PRIMARY KEY (conversation, seq))"
        )
        start = Timing.start()
        for lo in range(0, len(rows), BASELINE_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", rows[lo : lo + BASELINE_BATCH]
            )
            conn.execute("COMMIT")
        return start.since()
    finally:
        conn.close()


def _decode_post(entry: Entry) -> PostMessage:
    cmd = decode_command(entry.data)
    assert isinstance(cmd, PostMessage)
    return cmd


def run(
    count: int, rounds: int, evicting_window: int, batch_sizes: Sequence[int] = BATCH_SIZES
) -> list[Row]:
    """Every configuration, best of ``rounds``; the baseline first."""
    setup = setup_entries()
    posts = post_entries(count, len(setup) + 1)
    configs = [(b, DEDUP_WINDOW) for b in batch_sizes]
    configs += [(b, evicting_window) for b in batch_sizes]
    best: dict[tuple[int, int], Timing] = {}
    baseline: Timing | None = None
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
            directory = Path(tmp)
            timing = time_baseline(directory, posts, f"baseline-{r}.db")
            baseline = timing if baseline is None else min(baseline, timing)
            for batch, window in configs:
                timing = time_apply(directory, posts, batch, window, setup)
                best[batch, window] = min(best.get((batch, window), timing), timing)
    assert baseline is not None
    rows = [_row(f"baseline executemany x{BASELINE_BATCH}", baseline, count)]
    for (batch, window), timing in best.items():
        rows.append(_row(f"apply x{batch:<3} window {window}", timing, count))
    return rows


def _row(label: str, timing: Timing, count: int) -> Row:
    return Row(label, timing.cpu / count * 1e6, timing.wall / count * 1e6)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shards.chat.bench_apply", description=__doc__)
    p.add_argument("--entries", type=int, default=4096, help="sends applied per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per figure (the best is shown)")
    p.add_argument(
        "--evicting-window",
        type=int,
        default=64,
        help="dedup window of the second set of rows (small: every send evicts a key)",
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=list(BATCH_SIZES),
        help="entries per apply call to measure",
    )
    args = p.parse_args(argv)
    rows = run(args.entries, args.rounds, args.evicting_window, args.batch_sizes)
    base = rows[0].cpu_us
    print(f"{args.entries} PostMessage entries, best of {args.rounds} rounds (least CPU)")
    print(f"{'configuration':<30}{'cpu us/entry':>14}{'x baseline':>12}{'wall us/entry':>15}")
    for row in rows:
        ratio = row.cpu_us / base
        print(f"{row.label:<30}{row.cpu_us:>14.1f}{ratio:>12.2f}{row.wall_us:>15.1f}")


if __name__ == "__main__":
    main()
