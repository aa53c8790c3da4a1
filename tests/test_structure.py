"""The package layout the design promises, read from the source (ast), not from what happens to be imported:
classification/ and detection/ never import each other (and classification imports with detection/ deleted),
training/ imports neither, backbones/ imports none of the three, only */module.py and training/ import Lightning,
every file the project writes goes through the one atomic writer, and files stay small."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbones", "training", "detection", "classification")
MAX_LINES = {"backbones": 600, "training": 600, "detection": 600, "classification": 600}
MAX_TOOL_LINES = 150  # tools/*.py: fewer than this


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The top-level packages ``path`` imports anywhere (module level or inside functions); relative imports resolve
    to the file's own package."""
    own = path.relative_to(ROOT).parts[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(own if node.level else (node.module or "").split(".")[0])
    return out


def offenders(dirs: tuple[str, ...], banned: set[str]) -> dict[str, list[str]]:
    found = {}
    for path in python_files(*dirs):
        bad = sorted(imported(path) & banned)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_imports_parse_and_name_the_packages():
    """The oracle itself: the detection runner imports training and detection, the classification one training."""
    assert {"training", "detection", "lightning"} <= imported(ROOT / "detection" / "module.py")
    assert {"training", "classification", "backbones"} <= imported(ROOT / "classification" / "module.py")


@pytest.mark.parametrize(
    "dirs, banned",
    [
        (("classification",), {"detection"}),
        (("detection",), {"classification"}),
        (("training",), {"detection", "classification"}),
        (("backbones",), {"training", "detection", "classification", "lightning", "pytorch_lightning", "hydra"}),
    ],
    ids=["classification", "detection", "training", "backbones"],
)
def test_packages_do_not_import_each_other(dirs, banned):
    assert offenders(dirs, banned) == {}


def test_only_task_modules_and_training_import_lightning():
    lightning = {"lightning", "pytorch_lightning", "lightning_fabric"}
    found = offenders(("backbones", "detection", "classification", "tools"), lightning)
    assert {f: m for f, m in found.items() if not f.endswith("/module.py")} == {}


def test_classification_imports_without_detection(tmp_path):
    """A copy of the tree without detection/: classification's modules import (``detection`` is also blocked in
    sys.modules, so an installed copy of the project elsewhere cannot stand in for the deleted folder)."""
    for name in ("backbones", "training", "classification"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; sys.modules['detection'] = None\n"
        "import classification, classification.module, classification.data, classification.recipes\n"
        "print('ok', classification.module.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok " + str(tmp_path)), out.stdout


def test_process_start_up_imports_no_torch():
    code = "import sys; import training.process; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_one_atomic_writer():
    """No module writes a text or JSON file, or renames one into place, except backbones/atomic.py (images are PIL's
    ``save`` and the shapes set is renamed as one folder) and training/lock.py (a lock file is locked in place: a
    renamed one would be another file)."""
    writers = {"write_text", "write_bytes", "replace", "dump"}
    found = []
    for path in python_files(*PACKAGES, "tools"):
        if path in (ROOT / "backbones" / "atomic.py", ROOT / "training" / "lock.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writers:
                base = ast.unparse(node.func.value)
                to_stream = (
                    node.func.attr != "dump" or len(node.args) > 1 or any(k.arg == "stream" for k in node.keywords)
                )
                if (node.func.attr != "replace" or base == "os") and to_stream:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {base}.{node.func.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open" and len(node.args) > 1:
                mode = node.args[1]
                if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} open(..., {mode.value!r})")
    assert found == []


def test_files_stay_small():
    """No Python file of the packages over 600 lines, tools under 150 (STYLE.md)."""
    long = {}
    for package, limit in MAX_LINES.items():
        for path in python_files(package):
            n = len(path.read_text().splitlines())
            if n > limit:
                long[str(path.relative_to(ROOT))] = n
    for path in sorted((ROOT / "tools").glob("*.py")):
        n = len(path.read_text().splitlines())
        if n >= MAX_TOOL_LINES:
            long[str(path.relative_to(ROOT))] = n
    assert long == {}
