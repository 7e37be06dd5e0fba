"""The Raft core stays pure: no I/O, clock, threads, unseeded randomness or protobuf.

Every core module is parsed (never imported) and so is every ``cluster`` module it imports, so a
forbidden import cannot hide one hop away (core -> cluster.codec -> proto). ``random`` may appear
only under ``if TYPE_CHECKING:``: the core is handed a seeded ``random.Random`` and needs the name
for annotations alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER = REPO_ROOT / "cluster"

CORE_MODULES = (
    "types",
    "messages",
    "config",
    "ready",
    "errors",
    "raft",
    "log",
    "progress",
    "quorum",
    "readonly",
)
REQUIRED_CORE_MODULES = ("types", "messages", "config", "ready", "errors")
"""Already written: their absence means the test would check nothing."""

FORBIDDEN = frozenset(
    {"asyncio", "grpc", "socket", "time", "os", "threading", "selectors", "importlib", "proto"}
)
TYPING_ONLY = frozenset({"random"})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
        and isinstance(test.value, ast.Name)
        and test.value.id == "typing"
    )


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the cluster package
        base = "cluster" if node.level == 1 else ""
        name = f"{base}.{node.module}" if node.module else base
        return [name] + [f"{name}.{alias.name}" for alias in node.names]
    assert node.module is not None
    # ``from cluster import codec`` imports cluster.codec: list both spellings.
    return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]


def check_source(source: str, filename: str = "<string>") -> tuple[list[str], set[str]]:
    """Violations in ``source``, and the ``cluster.*`` modules it imports at run time."""
    violations: list[str] = []
    cluster_deps: set[str] = set()

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            flagged: set[str] = set()  # one report per module root and statement
            for name in _imported_modules(node):
                root = name.split(".")[0]
                where = f"{filename}:{node.lineno}"
                if root in flagged:
                    continue
                if root in FORBIDDEN:
                    flagged.add(root)
                    violations.append(f"{where}: imports {name}")
                elif root in TYPING_ONLY and not typing_only:
                    flagged.add(root)
                    violations.append(f"{where}: imports {name} outside `if TYPE_CHECKING:`")
                elif root == "cluster" and not typing_only and name.count(".") >= 1:
                    cluster_deps.add(".".join(name.split(".")[:2]))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            violations.append(f"{filename}:{node.lineno}: calls __import__")
        for sub in ast.iter_child_nodes(node):
            visit(sub, typing_only)

    visit(ast.parse(source, filename), False)
    return violations, cluster_deps


def check_core(cluster_dir: Path, modules: tuple[str, ...]) -> list[str]:
    """Violations in ``modules`` and in every cluster module they reach."""
    pending = [f"cluster.{m}" for m in modules if (cluster_dir / f"{m}.py").exists()]
    pending.append("cluster.__init__")  # runs before any cluster module does
    seen: set[str] = set()
    violations: list[str] = []
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = cluster_dir / f"{module.removeprefix('cluster.')}.py"
        if not path.exists():  # a package attribute (``from cluster.x import Name``), not a file
            continue
        found, deps = check_source(path.read_text(), str(path.relative_to(cluster_dir.parent)))
        violations += found
        pending += sorted(deps - seen)
    return violations


# ---------------------------------------------------------------------------------------------
# The rule, applied to the real core
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", REQUIRED_CORE_MODULES)
def test_required_core_modules_exist(module: str) -> None:
    assert (CLUSTER / f"{module}.py").is_file()


@pytest.mark.parametrize("module", [m for m in CORE_MODULES if (CLUSTER / f"{m}.py").exists()])
def test_core_module_is_pure(module: str) -> None:
    assert check_core(CLUSTER, (module,)) == []


# ---------------------------------------------------------------------------------------------
# The checker itself can fail
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import os.path",
        "from time import monotonic",
        "import asyncio as aio",
        "import grpc",
        "import threading, selectors",
        "from proto import raft_pb2",
        "import proto.raft_pb2",
        "import random",
        "from random import Random",
        "def f():\n    import time\n    return time.time()",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    import random",
        "if not TYPE_CHECKING:\n    import random",
        "x = __import__('socket')",
        "import importlib",
    ],
)
def test_checker_flags_bad_source(source: str) -> None:
    violations, _ = check_source(source)
    assert violations, f"not flagged: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations\nimport enum\nfrom dataclasses import dataclass",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random",
        "import typing\nif typing.TYPE_CHECKING:\n    from random import Random",
        "from cluster.messages import Entry",
        "import bisect, collections, itertools",
    ],
)
def test_checker_accepts_clean_source(source: str) -> None:
    violations, _ = check_source(source)
    assert violations == []


def test_checker_follows_cluster_imports(tmp_path: Path) -> None:
    (tmp_path / "raft.py").write_text("from cluster.helper import thing\n")
    (tmp_path / "helper.py").write_text("from cluster import codec\n")
    (tmp_path / "codec.py").write_text("from proto import raft_pb2\n")
    violations = check_core(tmp_path, ("raft",))
    assert len(violations) == 1
    assert "codec.py:1: imports proto" in violations[0]


def test_checker_ignores_typing_only_cluster_imports(tmp_path: Path) -> None:
    (tmp_path / "raft.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cluster.storage import X\n"
    )
    (tmp_path / "storage.py").write_text("import os\n")
    assert check_core(tmp_path, ("raft",)) == []
