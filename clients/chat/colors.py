"""A stable colour per user name, chosen from the 16-colour ANSI palette.

Why a hash of the name (CRC-32) and not Python's ``hash()``: the colour must be the same in every
process and on every run (``hash`` of a str is salted per process), so that two people looking at
the same channel, or one person after a restart, see bob in the same colour. Why only ANSI names:
the CLI must work in a 16-colour terminal, and a terminal's own theme decides what "ansiblue"
looks like, which keeps the text readable on dark and light backgrounds. Black, white and the
greys are left out: one of them is always the background or too close to the default text.
"""

from __future__ import annotations

import zlib
from typing import Final

PALETTE: Final[tuple[str, ...]] = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)


def color_index(user: str) -> int:
    """The palette index of ``user``: the same on every machine and every run."""
    return zlib.crc32(user.encode()) % len(PALETTE)


def user_style_class(user: str) -> str:
    """The style class the UI's style sheet maps to the user's colour (``nick.3``)."""
    return f"class:nick.{color_index(user)}"


def style_rules() -> list[tuple[str, str]]:
    """The ``(class, style)`` rules for every ``nick.N`` class."""
    return [(f"nick.{i}", color) for i, color in enumerate(PALETTE)]
