"""Put the repo root first on ``sys.path`` so our ``proto`` and ``dns`` packages win over
third-party packages of the same names (proto-plus, dnspython) wherever pytest runs from."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent)

if sys.path[:1] != [_ROOT]:
    if _ROOT in sys.path:
        sys.path.remove(_ROOT)
    sys.path.insert(0, _ROOT)
