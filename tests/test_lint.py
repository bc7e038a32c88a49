"""The lint gate, run with the suite: ruff (pyflakes and import sorting, `[tool.ruff]` in pyproject.toml) is clean,
and no layer imports a layer above it (the README's layout table)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("data_specs", "weight_files", "model", "tasks", "training", "flows")
# What each package must not import (anywhere in it, function-local imports included).
FORBIDDEN = {
    "data_specs": {"weight_files", "model", "tasks", "training", "flows"},  # the contracts: nothing of ours
    "weight_files": {"data_specs", "model", "tasks", "training", "flows"},
    "model": {"tasks", "training", "flows"},
    "tasks": {"training", "flows"},
    "training": {"flows"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(package: str, root: Path = REPO) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {imported}"
            for path in sorted((root / package).rglob("*.py"))
            for line, imported in sorted(imported_packages(path)) if imported in FORBIDDEN[package]]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_upward(package: str):
    assert upward_imports(package) == []


def test_the_contract_sees_an_upward_import(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "net.py").write_text("def f():\n    from tasks.base import ClipProcessor\n")
    assert upward_imports("model", tmp_path) == ["model/net.py:2 imports tasks"]


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
