"""Mention detection: does a message call the reader by name?

Why a word-boundary rule and not a substring search: ``@al`` must not light up for alice, and
``bob@example.com`` must not ping ``example``. A mention is ``@name`` where the character before
the ``@`` is not part of a name and the name is not followed by a name character. DMs are not
decided here: every unread DM counts as addressed to the reader (see ``model``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

_NAME_CHARS = r"a-z0-9_\-"


@lru_cache(maxsize=64)
def _pattern(user: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![{_NAME_CHARS}@])@{re.escape(user)}(?![{_NAME_CHARS}])")


def mentions(text: str, user: str) -> bool:
    """``text`` contains ``@user`` as a whole word."""
    return bool(user) and _pattern(user).search(text) is not None


def mention_spans(text: str, user: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every ``@user`` in ``text``, for highlighting."""
    if not user:
        return
    for match in _pattern(user).finditer(text):
        yield match.start(), match.end()
