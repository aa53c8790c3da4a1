"""Benchmark reports: ``--json`` of tools/benchmark.py and tools/bench_detection.py on tiny real runs, and their
rendering into a document's ``<!-- bench:<name> -->`` blocks (``--render --write``)."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import statistics
from pathlib import Path

import pytest
import torch

from backbones.benchmark import begin_report, end_report, load_report, render_into, render_report

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_machine_and_date(report: dict) -> None:
    m = report["machine"]
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert m["cores"] == os.cpu_count() and 1 <= m["usable_cores"] <= m["cores"]
    assert m["torch"] == torch.__version__ and m["torch_threads"] >= 1 and m["device"] == "cpu"
    for key in ("load_before", "load_after"):
        assert len(report[key]) == 3 and all(isinstance(v, float) and v >= 0 for v in report[key])
    when = datetime.datetime.fromisoformat(report["date"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - when) < datetime.timedelta(minutes=30)


@pytest.fixture(scope="module")
def twins_json(tmp_path_factory):
    """A real run: squeezenet1_1 and its torchvision twin, 32 px, batch 1, 1 repeat, forward and train."""
    path = tmp_path_factory.mktemp("bench") / "sub" / "tiny.json"  # the folder is created
    threads = torch.get_num_threads()
    argv = ["squeezenet1_1", "--input-size", "32", "--batch-size", "1", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--json", str(path)]  # fmt: skip
    try:
        assert _tool("benchmark").main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return path


def test_benchmark_json_holds_the_machine_and_every_row(twins_json):
    report = load_report(twins_json)
    _check_machine_and_date(report)
    assert report["machine"]["torch_threads"] == 1
    assert report["command"].startswith("python tools/benchmark.py squeezenet1_1 --input-size 32")
    assert report["settings"]["input_size"] == 32 and report["settings"]["models"] == ["squeezenet1_1"]
    rows = report["rows"]
    assert [(r["impl"], r["mode"]) for r in rows] == [
        ("ours", "forward"), ("torchvision:squeezenet1_1", "forward"),
        ("ours", "train"), ("torchvision:squeezenet1_1", "train"),
    ]  # fmt: skip
    for r in rows:
        assert len(r["times_ms"]) == 1 and r["median_ms"] == statistics.median(r["times_ms"]) > 0
        assert r["batch_size"] == 1 and r["input_size"] == 32
        assert r["images_per_s"] == pytest.approx(1000 / r["median_ms"])
    for ours, twin in (rows[0:2], rows[2:4]):
        assert ours["ours_over_this"] is None
        assert twin["ours_over_this"] == pytest.approx(ours["median_ms"] / twin["median_ms"])
    assert [c[0] for c in report["columns"]][:3] == ["model", "impl", "mode"]


def test_render_fills_the_named_block_and_adds_new_ones(twins_json, tmp_path):
    report = load_report(twins_json)
    doc = tmp_path / "bench.md"
    doc.write_text("# B\n\n<!-- bench:tiny:start -->\nold table\n<!-- bench:tiny:end -->\n\n<!-- bench:new -->\n")
    assert _tool("benchmark").main(["--render", str(twins_json), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text and text.count("<!-- bench:tiny:start -->") == 1
    block = text.split("<!-- bench:tiny:start -->")[1].split("<!-- bench:tiny:end -->")[0]
    table = [line for line in block.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(report["rows"])  # header, rule, one line per row
    assert table[0] == "| " + " | ".join(c[1] for c in report["columns"]) + " |"
    m = report["machine"]
    assert m["cpu_model"] in block and f"torch {m['torch']}" in block and report["date"] in block
    assert f"{report['load_before'][0]:.2f} before" in block
    assert render_into(text, {"tiny": report}) == text  # rendering again changes nothing
    added = render_into(text, {"other": report})
    assert added.index("<!-- bench:other:end -->") < added.index("<!-- bench:new -->")
    with pytest.raises(ValueError, match="bench:new"):
        render_into("# no blocks\n", {"tiny": report})


def test_render_names_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r"x.json is not a benchmark report \(no format, benchmark"):
        load_report(bad)


def test_json_path_that_is_a_folder_is_refused_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        _tool("benchmark").main(["squeezenet1_1", "--json", str(tmp_path)])


def test_report_columns_render_with_their_formats():
    report = end_report(begin_report("t", "cmd", {"a": 1, "b": None}), [("x", "X", ".2f"), ("s", "S", "")],
                        [{"x": 1.234, "s": "n"}, {"x": None, "s": 3}])  # fmt: skip
    text = render_report(report)
    assert text.endswith("| X | S |\n|---|---|\n| 1.23 | n |\n|  | 3 |")
    assert "Settings: a=1." in text  # unset settings are left out


def test_detection_benchmark_json(tmp_path):
    """tools/bench_detection.py --json on a run of seconds: 16 shapes images at 64 px, one step."""
    from tiny_runs import tiny

    path = tmp_path / "det.json"
    overrides = [o for o in tiny(tmp_path) if not o.startswith(("trainer.", "solver."))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _tool("bench_detection").main([*overrides, "--steps", "1", "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = load_report(path)
    _check_machine_and_date(report)
    assert report["benchmark"] == "detection_loader" and report["settings"]["steps"] == 1
    (row,) = report["rows"]
    assert row["backbone"] == "mobilenet_v1_x0_25" and row["detector"] == "faster_rcnn"
    assert row["batch_size"] == 4 and row["loader_images_per_s"] > 0 and row["train_images_per_s"] > 0
    assert [c[0] for c in report["columns"]] == list(row)
