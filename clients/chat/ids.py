"""Names and conversation ids as the chat API spells them (proto/chat.proto, "Names").

Why a copy of the server's rules here: the CLI checks what the user typed before anything goes
on the wire (``/join Foo!`` is answered at once, even while the network is down), and it needs to
build a DM's id itself to show a conversation the server has not created yet (``/msg bob`` opens
``dm:alice:bob`` before the first message exists).
"""

from __future__ import annotations

import re
from typing import Final

NAME_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,32}")
DM_PREFIX: Final = "dm:"
MAX_TEXT_BYTES: Final = 4096
"""The server's limit on a message's UTF-8 size."""
MIN_PASSWORD_BYTES: Final = 8


def is_name(value: str) -> bool:
    """A valid user or channel name: ``[a-z0-9_-]{1,32}``."""
    return NAME_PATTERN.fullmatch(value) is not None


def dm_id(a: str, b: str) -> str:
    """The one conversation id of the DM between ``a`` and ``b`` (names sorted)."""
    low, high = sorted((a, b))
    return f"{DM_PREFIX}{low}:{high}"


def parse_dm(conversation: str) -> tuple[str, str] | None:
    """The two participants of a well-formed DM id, else None (a channel name)."""
    if not conversation.startswith(DM_PREFIX):
        return None
    parts = conversation[len(DM_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    a, b = parts
    if not (is_name(a) and is_name(b)) or a >= b:
        return None
    return a, b


def dm_peer(conversation: str, me: str) -> str | None:
    """The other participant of a DM ``me`` is part of; None for a channel or someone else's DM."""
    pair = parse_dm(conversation)
    if pair is None or me not in pair:
        return None
    return pair[1] if pair[0] == me else pair[0]


def label(conversation: str, me: str) -> str:
    """How the UI names a conversation: ``#general`` or ``@bob``."""
    peer = dm_peer(conversation, me)
    return f"@{peer}" if peer is not None else f"#{conversation}"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent (empty, too large), or None if it can."""
    if not text.strip():
        return "empty message"
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        return f"message too long: {size} bytes, the limit is {MAX_TEXT_BYTES}"
    return None
