"""The package's shape: subpackages by role, imports running one way between them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a subpackage may import only those before it (and itself).
LAYERS = (
    "core",
    "data",
    "synth",
    "accel",
    "inference",
    "evaluation",
    "training",
    "benchmark",
    "app",
)


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "common" else None


def test_common_holds_only_subpackages():
    loose = sorted(p.name for p in (ROOT / "common").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    folders = {p.name for p in (ROOT / "common").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


def test_imports_run_one_way_between_subpackages():
    wrong = []
    for path in sorted((ROOT / "common").rglob("*.py")):
        here = path.relative_to(ROOT).parts[1]
        if here not in LAYERS:
            continue
        for module in _imported_modules(path):
            there = _subpackage(module)
            if there in LAYERS and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_models_import_nothing_from_common():
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "models").rglob("*.py"))
        for module in _imported_modules(path)
        if module == "common" or module.startswith("common.")
    ]
    assert wrong == []


def test_no_module_edits_the_import_path():
    """Tests run from pytest's ``pythonpath``, benchmarks as ``python -m bench.…``."""
    edits = [
        str(path.relative_to(ROOT))
        for folder in ("tests", "bench", "common", "models")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "test_layout.py" and "sys.path.insert" in path.read_text()
    ]
    assert edits == []
