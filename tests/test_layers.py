"""The layers are a contract, not only prose: import-linter checks the contracts in
pyproject.toml ([tool.importlinter]), and this file checks what import-linter cannot see (it
reads imports inside functions too, so it cannot tell a lazy import from a module-level one)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the core may import when a module is loaded: the standard library and its three light
# dependencies. Everything else (llama_cpp, pyexiv2, matplotlib, ...) only inside functions.
CORE_MODULE_LEVEL = {"PIL", "pillow_heif", "geographiclib", "geolocsft"}
NOT_PARTS = {"tests", "bench", "scripts", "packaging", "docs", "models", "samples"}


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level package) of imports run when the module loads: not inside a function,
    not under `if TYPE_CHECKING:`; relative imports are the core's own."""
    found: list[tuple[int, str]] = []

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.append((node.lineno, node.module.split(".")[0]))
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def test_the_core_loads_only_light_dependencies():
    allowed = CORE_MODULE_LEVEL | set(sys.stdlib_module_names)
    wrong = []
    for path in sorted((ROOT / "geolocsft").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        wrong += [f"{path.relative_to(ROOT)}:{line}: {name}"
                  for line, name in _module_level_imports(tree) if name not in allowed]
    assert not wrong, "module-level imports the core must make lazily:\n" + "\n".join(wrong)


def test_the_checker_sees_a_module_level_import():
    """The walker above is not vacuous: it finds imports at module level, in classes and in
    try blocks, and skips function bodies and TYPE_CHECKING blocks."""
    tree = ast.parse("import os\ntry:\n    import numpy\nexcept ImportError:\n    pass\n"
                     "class A:\n    from PySide6 import QtCore\n"
                     "def f():\n    import torch\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n")
    assert [n for _, n in _module_level_imports(tree)] == ["os", "numpy", "PySide6", "typing"]


def test_every_part_is_under_contract():
    """A new top-level package (a `cluster/` runner, say) must join the contracts."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    named = set(config["tool"]["importlinter"]["root_packages"])
    parts = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_PARTS
    assert parts <= named, f"add {sorted(parts - named)} to [tool.importlinter] in pyproject.toml"
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{p}*" for p in parts} <= set(include)
