"""The shape of the package (docs/ARCHITECTURE.md): layers, sizes, one run lifecycle, docs.

The layer contracts themselves are import-linter's (pyproject.toml ``[tool.importlinter]``,
run by ``make lint``); the first test runs them too, so a plain ``pytest`` sees a broken one.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "astrocurate"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
MAX_TRACKING_NAMES = 5
#: Modules kept at their old path for one release; each one only re-exports.
SHIMS = {"cutout_store.py", "survey.py"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        _name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_longer_than_the_limit() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{_name(path)}:{node.name}"] = lines
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _tracking_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "astrocurate.tracking"
        ):
            names.update(alias.name for alias in node.names)
    return names


def test_a_stage_module_uses_the_run_lifecycle_through_a_few_names() -> None:
    many = {
        _name(p): sorted(names)
        for p in sorted((PACKAGE / "stages").rglob("*.py"))
        if len(names := _tracking_names(p)) > MAX_TRACKING_NAMES
    }
    assert many == {}, f"stage modules importing over {MAX_TRACKING_NAMES} tracking names"


def test_the_shims_at_old_paths_only_point_to_the_new_modules() -> None:
    import importlib

    for shim in SHIMS:
        text = (PACKAGE / shim).read_text()
        assert "sys.modules[__name__] = _moved" in text, shim
        with pytest.warns(DeprecationWarning, match="moved to"):
            sys.modules.pop(f"astrocurate.{shim[:-3]}", None)
            old = importlib.import_module(f"astrocurate.{shim[:-3]}")
        assert old.__name__.startswith(("astrocurate.io.", "astrocurate.synthetic."))


#: ``docs/<page>.md`` and ``<FILE>.md`` references in docstrings and comments.
DOC_REFERENCE = re.compile(r"\b((?:docs/)?[\w./-]+\.md)\b(?: section (\d+))?")


def _design_sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    return set(re.findall(r"^#+ (\d+)[.) ]", text, flags=re.M))


def test_every_document_a_docstring_cites_is_in_the_repository() -> None:
    sections = _design_sections()
    missing = []
    for path in _modules():
        for reference, section in DOC_REFERENCE.findall(path.read_text()):
            target = ROOT / reference if "/" in reference else ROOT / "docs" / reference
            if not (target.is_file() or (ROOT / reference).is_file()):
                missing.append(f"{_name(path)}: {reference}")
            elif section and target.name == "design.md" and section not in sections:
                missing.append(f"{_name(path)}: {reference} section {section}")
    assert missing == []
