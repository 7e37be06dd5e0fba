"""``python -m clients.chat``: see :mod:`clients.chat` and ``--help``."""

from __future__ import annotations

import sys

from clients.chat.app import main

if __name__ == "__main__":
    sys.exit(main())
