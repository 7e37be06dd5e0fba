"""What Tab offers, and the fuzzy filter of the pickers (Ctrl-K, Ctrl-N).

Why pure functions over a vocabulary: the candidates depend only on the text before the cursor
and on who and what the client knows (users, channels), so they are tested without a terminal;
the prompt_toolkit ``Completer`` in ``tui`` only turns them into ``Completion`` objects.

Rules (the word is the text after the last blank before the cursor):

- ``/jo`` as the first word: command names;
- ``@al``: user names (not the reader's own), ``#ge``: channel names;
- the first argument of a command that takes a channel (``/join ge``) or a user (``/msg al``):
  names without a sigil.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clients.chat.commands import COMMANDS, SPECS, ArgKind


@dataclass(frozen=True, slots=True)
class Vocabulary:
    me: str
    users: frozenset[str]
    channels: frozenset[str]


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    """Replaces the word before the cursor."""
    start: int
    """Where the word starts, relative to the cursor (0 or negative)."""
    meta: str = ""


def candidates(before_cursor: str, vocab: Vocabulary) -> list[Candidate]:
    """Completions of the word before the cursor; [] when there is nothing to complete."""
    if not before_cursor or (before_cursor[-1].isspace() and not _at_first_arg(before_cursor)):
        return []
    words = before_cursor.split()
    word = "" if before_cursor[-1].isspace() else words[-1]
    start = -len(word)
    lower = word.lower()
    if len(words) == 1 and word and before_cursor.lstrip() == word and word.startswith("/"):
        return [
            Candidate(f"/{spec.name}", start, spec.summary)
            for spec in COMMANDS
            if spec.name.startswith(lower[1:])
        ]
    if word.startswith("@"):
        return _names(vocab.users - {vocab.me}, lower[1:], "@", start, "user")
    if word.startswith("#"):
        return _names(vocab.channels, lower[1:], "#", start, "channel")
    kind = _first_arg_kind(before_cursor)
    if kind == ArgKind.CHANNEL:
        return _names(vocab.channels, lower, "", start, "channel")
    if kind == ArgKind.USER:
        return _names(vocab.users - {vocab.me}, lower, "", start, "user")
    return []


def completable(before_cursor: str, vocab: Vocabulary) -> bool:
    """Tab completes here (else Tab moves the focus)."""
    return bool(candidates(before_cursor, vocab))


def _names(pool: Iterable[str], prefix: str, sigil: str, start: int, meta: str) -> list[Candidate]:
    return [Candidate(f"{sigil}{n}", start, meta) for n in sorted(pool) if n.startswith(prefix)]


def _first_arg_kind(before_cursor: str) -> str:
    """The argument kind when the cursor is in (or right before) a command's first argument."""
    if not before_cursor.startswith("/"):
        return ArgKind.NONE
    words = before_cursor.split()
    typing_first = len(words) == 2 and not before_cursor[-1].isspace()
    if not (typing_first or _at_first_arg(before_cursor)):
        return ArgKind.NONE
    spec = SPECS.get(words[0][1:].lower())
    return spec.arg if spec is not None else ArgKind.NONE


def _at_first_arg(before_cursor: str) -> bool:
    """``/join `` — a command word and one blank: its first argument starts here."""
    words = before_cursor.split()
    return before_cursor.startswith("/") and len(words) == 1 and before_cursor[-1].isspace()


def fuzzy_filter(query: str, items: Sequence[str]) -> list[str]:
    """``items`` that contain the letters of ``query`` in order, best first: prefix matches
    (ignoring a leading ``#``/``@``), then substrings, then scattered letters; ties keep the
    order of ``items``."""
    q = query.lower().strip()
    if not q:
        return list(items)
    scored: list[tuple[int, int, str]] = []
    for index, item in enumerate(items):
        low = item.lower()
        bare = low.lstrip("#@")
        if bare.startswith(q.lstrip("#@")) or low.startswith(q):
            rank = 0
        elif q in low:
            rank = 1
        elif _subsequence(q, low):
            rank = 2
        else:
            continue
        scored.append((rank, index, item))
    return [item for _, _, item in sorted(scored)]


def _subsequence(needle: str, hay: str) -> bool:
    it = iter(hay)
    return all(ch in it for ch in needle)
