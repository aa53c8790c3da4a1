"""README.md and docs/*.md: every relative link and #anchor resolves, every backticked repository path and
``backbones.`` / ``detection.`` / ``classification.`` / ``training.`` name exists, every ``python`` block runs as is
(CPU, fresh namespace, temporary working directory), and the benchmark tables are what the stored runs hold."""

from __future__ import annotations

import fnmatch
import importlib
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PACKAGES = ("backbones", "detection", "classification", "training")
REPO_DIRS = (*PACKAGES, "tools", "tests", "conf", "docs", ".ci")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """``text`` with its fenced code blocks blanked (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """``(language, first line number, code)`` of each fenced block."""
    text = path.read_text()
    return [(m.group(1), text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text)]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its rendered text (code spans kept literally, link targets and emphasis
    markers dropped) lower-cased, every character but letters, digits, ``_``, ``-`` and spaces removed, each space
    turned into ``-``."""
    parts = re.split(r"(`[^`]*`)", heading.strip())
    text = ""
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            text += part[1:-1]
            continue
        part = re.sub(r"!?\[([^\]]*)\](\([^)]*\)|\[[^\]]*\])?", r"\1", part)
        part = re.sub(r"(?<![\w])_+([^_]+?)_+(?![\w])", r"\1", part.replace("*", ""))
        text += part
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a Markdown file, duplicates numbered ``-1``, ``-2``, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_anchor(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [  # GitHub's rendering, as recorded by the github-slugger and markdown-all-in-one fixtures
        ("foo _italic_ bar", "foo-italic-bar"),
        ("foo_foo_bar", "foo_foo_bar"),
        ("`a.b` c", "ab-c"),
        ("1. not a list", "1-not-a-list"),
        ("heading with a period.txt", "heading-with-a-periodtxt"),
        ("Via [remark-cli][]", "via-remark-cli"),
    ],
)
def test_github_anchor_rules(heading, anchor):
    assert github_anchor(heading) == anchor


def test_duplicate_headings_are_numbered(tmp_path):
    md = tmp_path / "a.md"
    md.write_text("# this is neat\n\n## something else\n\n```\n# not a heading\n```\n\n## this is neat\n")
    assert anchors(md) == {"this-is-neat", "something-else", "this-is-neat-1"}


def test_docs_exist_and_readme_fits_a_screen():
    names = {p.name for p in DOCS}
    assert {"README.md", "families.md", "detection.md", "classification.md", "distributed.md", "benchmarks.md"} <= names
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_and_anchors_resolve(doc):
    bad = []
    for n, line in enumerate(prose(doc.read_text()).splitlines(), 1):
        for _, target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                bad.append(f"line {n}: {target} ({dest} does not exist)")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                bad.append(f"line {n}: {target} (no heading #{anchor} in {dest.name})")
    assert not bad, f"{_rel(doc)}: " + "; ".join(bad)


def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand_braces(path[: m.start()] + alt + path[m.end() :])]


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_repository_paths_and_names_exist(doc):
    """Backticked paths (``tools/x.py``, ``tests/test_y.py::test_z_*``) and dotted names of our packages
    (``detection.models.FeatureAdapter``) name what the tree has today; a rename must update the docs."""
    bad = []
    for span in CODE_SPAN.findall(prose(doc.read_text())):
        span = span.strip()
        if re.match(rf"^(\.\./)?({'|'.join(map(re.escape, REPO_DIRS))})/", span) and not re.search(r"[<*\s]", span):
            file, _, test = span.removeprefix("../").partition("::")
            for path in _expand_braces(file):
                if not (ROOT / path).exists():
                    bad.append(f"{path} does not exist")
                elif test and not fnmatch.filter(re.findall(r"^def (\w+)", (ROOT / path).read_text(), re.M), test):
                    bad.append(f"{path} has no test matching {test}")
        m = re.match(rf"^((?:{'|'.join(PACKAGES)})(?:\.\w+)+)(\(.*\))?$", span)
        if m:
            err = _resolve(m.group(1))
            if err:
                bad.append(err)
    assert not bad, f"{_rel(doc)}: " + "; ".join(sorted(set(bad)))


def _resolve(dotted: str) -> str | None:
    """None when ``dotted`` is an importable module or an attribute of one, else what is missing."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and not e.name.startswith(parts[0]):
                return None  # an optional dependency (detectron2) is absent: nothing to check here
            continue
        except ImportError:
            return None  # e.g. detection.detectron2 without detectron2: its own tests cover the message
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{dotted}: {type(obj).__name__} {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{dotted}: no such module"


PYTHON_BLOCKS = [
    pytest.param(code, id=f"{_rel(doc)}:{line}")
    for doc in DOCS
    for lang, line, code in code_blocks(doc)
    if lang == "python"
]


def test_there_are_python_blocks():
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_block_runs(code, tmp_path, monkeypatch):
    """Each block as a user would paste it: a fresh namespace, the repository importable, a scratch directory."""
    first = code.splitlines()[0]
    if first.startswith("# requires:"):
        for package in first.split(":", 1)[1].replace(",", " ").split():
            pytest.importorskip(package, reason=f"the block needs {package}")
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a block's speed is not under test; one thread stays fast on a shared machine
    try:
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)


def test_benchmark_tables_are_the_stored_runs():
    """docs/benchmarks.md shows exactly what docs/benchmarks/*.json hold (python tools/benchmark.py --render
    docs/benchmarks/*.json --write docs/benchmarks.md), and no table lacks its stored run."""
    from backbones.benchmark import render_files

    doc = ROOT / "docs" / "benchmarks.md"
    stored = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))
    blocks = set(re.findall(r"<!-- bench:(\w+):start -->", doc.read_text()))
    assert blocks == {p.stem for p in stored}, "a bench block without its JSON file, or the reverse"
    assert "<!-- bench:new -->" in doc.read_text()
    assert render_files(stored, doc) == doc.read_text(), "stale: run tools/benchmark.py --render ... --write"


def test_readme_links_every_manual():
    readme = (ROOT / "README.md").read_text()
    linked = {Path(t.partition("#")[0]).name for _, t in LINK.findall(readme) if t.startswith("docs/")}
    manuals = {p.name for p in DOCS if p.parent.name == "docs"}
    assert manuals <= linked, f"README.md does not link {sorted(manuals - linked)}"
