"""Regenerate the committed protobuf/gRPC code: the one way those files are produced.

Run from anywhere: ``python proto/generate.py`` (or ``make proto``). protoc runs from the repo root
with ``-I.`` so the generated modules import each other as ``from proto import raft_pb2``. The
staleness test calls :func:`generate` with a temporary output directory and compares bytes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = tuple(
    sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "proto").glob("*.proto"))
)
"""Sources, relative to the repo root: every ``proto/*.proto``."""


def generated_files() -> list[str]:
    """Paths (relative to the output root) of every file :func:`generate` writes."""
    out: list[str] = []
    for source in PROTO_FILES:
        stem = source.removesuffix(".proto")
        out += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return out


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Run grpc_tools.protoc on every source into ``out_root``; return the files written."""
    out_root = out_root.resolve()
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stderr}")
    return [out_root / name for name in generated_files()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="output root (default: the repo root)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
