"""The committed generated protobuf code is exactly what proto/generate.py produces today."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from proto import generate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpc_tools (grpcio-tools, a dev dependency) is not installed: run `make venv`",
)


def test_generated_files_are_current(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert len(written) == len(generate.generated_files()) == 3 * len(generate.PROTO_FILES)
    stale: list[str] = []
    for fresh in written:
        name = str(fresh.relative_to(tmp_path))
        committed = generate.REPO_ROOT / name
        if not committed.exists():
            stale.append(f"{name}: missing (run `make proto`)")
            continue
        old, new = committed.read_bytes(), fresh.read_bytes()
        if old != new:
            diff = difflib.unified_diff(
                old.decode(errors="replace").splitlines(),
                new.decode(errors="replace").splitlines(),
                f"committed/{name}",
                f"generated/{name}",
                lineterm="",
                n=1,
            )
            stale.append("\n".join(list(diff)[:40]))
    assert not stale, "generated protobuf code is stale; run `make proto`:\n" + "\n".join(stale)


def test_generator_writes_only_under_the_output_root(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    produced = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert produced == sorted(written)
