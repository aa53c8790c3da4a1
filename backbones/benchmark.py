"""Side-by-side timing of our models against their timm / torchvision twins, in one process, interleaved, and the
benchmark reports every benchmark of the project writes and the docs render.

Used by ``tools/benchmark.py``. Each repeat times ours and the twin back to back, alternating which goes first, so
machine drift hits both; the table gives medians, images/s, mult-adds/s, the ratio ours/twin and peak memory.

A *report* (:func:`begin_report`, :func:`end_report`) is a JSON-ready dict: the command, its settings, the machine
(CPU model, cores, torch threads and version, device), the date, the load average before and after the run, the
table's columns and every row. :func:`render_report` turns one into Markdown, :func:`render_into` fills the
``<!-- bench:<name>:start -->`` / ``<!-- bench:<name>:end -->`` blocks of a document with stored reports.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import check_choice, check_int
from .profile import count_macs
from .registry import model_card

logger = logging.getLogger(__name__)


MODES = ("forward", "train")


def check_options(
    batch_size: int, repeats: int, warmup: int, modes: tuple[str, ...], input_size: int | None = None
) -> None:
    """Refuse what would time nothing or something else than asked, naming the value and what is valid."""
    check_int("batch_size", batch_size, 1)
    check_int("repeats", repeats, 1, meaning="the median is taken over them")
    check_int("warmup", warmup, 0)
    if input_size is not None:
        check_int("input_size", input_size, 1, meaning="the image side in pixels")
    if not modes:
        raise ValueError(f"modes={modes!r} is not valid; choose one or more of {', '.join(MODES)}")
    for mode in modes:
        check_choice("modes", mode, MODES)


@dataclass
class Timing:
    model: str
    impl: str  # "ours" or "<lib>:<twin name>"
    mode: str  # "forward" or "train"
    batch_size: int
    input_size: int
    median_ms: float
    macs: int
    peak_mb: float | None = None
    times_ms: list[float] = field(default_factory=list)  # every timed repeat, in run order

    @property
    def images_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.median_ms

    @property
    def gmacs_per_s(self) -> float:
        mult = 3 if self.mode == "train" else 1  # backward costs about twice the forward
        return mult * self.macs * self.batch_size / (self.median_ms / 1000.0) / 1e9


def build_twin(name: str, lib: str | None = None) -> tuple[str, nn.Module] | None:
    """The twin of ``name`` from its card (timm preferred), randomly initialised; None when it has none."""
    twins = model_card(name).twins
    if not twins:
        return None
    lib = lib or ("timm" if "timm" in twins else "torchvision")
    if lib not in twins:
        raise ValueError(f"{name!r} has no {lib} twin; its twins are {twins}")
    if lib == "timm":
        import timm

        return f"timm:{twins[lib]}", timm.create_model(twins[lib], pretrained=False)
    import torchvision

    return f"torchvision:{twins[lib]}", torchvision.models.get_model(twins[lib], weights=None)


def _step_fn(model: nn.Module, x: torch.Tensor, mode: str, amp: bool) -> Callable[[], None]:
    device_type = x.device.type
    dtype = torch.bfloat16 if device_type == "cpu" else torch.float16

    def out_tensor(y):
        if isinstance(y, dict):
            return sum(t.float().mean() for t in y.values())
        if isinstance(y, tuple | list):
            return y[0].float().mean()
        return y.float().mean()

    if mode == "forward":
        model.eval()

        def fwd() -> None:
            with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=amp):
                model(x)

        return fwd
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-6)

    def train() -> None:
        with torch.autocast(device_type, dtype=dtype, enabled=amp):
            loss = out_tensor(model(x))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return train


def interleaved(
    fns: list[Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None
) -> tuple[list[list[float]], list[list[float]]]:
    """Run every function once per repeat, the order alternating (forward, then reversed) so none always runs on a
    warmer cache; returns per function its wall times and its process CPU times (all threads), in ms."""
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in range(len(fns)) if r % 2 == 0 else reversed(range(len(fns))):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[i]()
            sync()
            wall[i].append(1000 * (time.perf_counter() - t0))
            cpu[i].append(1000 * (time.process_time() - c0))
    return wall, cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    name: str,
    *,
    batch_size: int = 8,
    input_size: int | None = None,
    device: str = "cpu",
    channels_last: bool = False,
    amp: bool = False,
    repeats: int = 10,
    warmup: int = 2,
    modes: tuple[str, ...] = ("forward", "train"),
    twin_lib: str | None = None,
    baseline: str | None = None,
    options: dict | None = None,
) -> list[Timing]:
    """Time ours and the twin (or ``baseline``, another registered model) in the same process, interleaved."""
    from . import create_model

    check_options(batch_size, repeats, warmup, modes, input_size)
    dev = torch.device(device)
    side = input_size or model_card(name).input_size
    with torch.device("meta"):
        macs = count_macs(create_model(name), side)
    impls: list[tuple[str, str, nn.Module, int]] = [("ours", name, create_model(name, **(options or {})), macs)]
    if baseline is not None:
        with torch.device("meta"):
            bmacs = count_macs(create_model(baseline), side)
        impls.append((f"ours:{baseline}", baseline, create_model(baseline), bmacs))
    else:
        twin = build_twin(name, twin_lib)
        if twin is not None:
            impls.append((twin[0], name, twin[1], macs))
    x = torch.randn(batch_size, 3, side, side, device=dev)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    results = []
    for mode in modes:
        fns = []
        for _, _, model, _ in impls:
            model.to(dev)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            fns.append(_step_fn(model, x, mode, amp))
        for fn in fns:
            for _ in range(warmup):
                fn()
        times, _ = interleaved(fns, repeats, lambda: _sync(dev))
        for (impl, model_name, _, m), ts in zip(impls, times):
            results.append(Timing(model_name, impl, mode, batch_size, side, statistics.median(ts), m, times_ms=ts))
    return results


_PEAK_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
import backbones
from backbones.benchmark import build_twin, _step_fn
name, impl, mode, bs, side, opts = {name!r}, {impl!r}, {mode!r}, {bs}, {side}, {opts!r}
torch.set_num_threads({threads})
model = backbones.create_model(name, **opts) if impl == "ours" else build_twin(name, impl.split(":")[0])[1]
x = torch.randn(bs, 3, side, side)
fn = _step_fn(model, x, mode, False)
import gc; gc.collect()
rss0 = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
fn()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(max(peak - rss0, 0) / 2**20)
"""


def cpu_peak_mb(name: str, impl: str, mode: str, batch_size: int, input_size: int, **options) -> float:
    """Peak resident memory added by one step, measured in a fresh process (CPU has no allocator statistics)."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _PEAK_CHILD.format(
        root=root,
        name=name,
        impl=impl,
        mode=mode,
        bs=batch_size,
        side=input_size,
        opts=options,
        threads=torch.get_num_threads(),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cuda_peak_mb(fn: Callable[[], None], device: torch.device) -> float:
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


#: columns of the timing table: (row key, header, format spec)
TIMING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", ""),
    ("impl", "impl", ""),
    ("mode", "mode", ""),
    ("batch_size", "batch", ""),
    ("input_size", "px", ""),
    ("median_ms", "median ms", ".1f"),
    ("images_per_s", "img/s", ".1f"),
    ("gmacs_per_s", "GMAC/s", ".1f"),
    ("peak_mb", "peak MB", ".0f"),
    ("ours_over_this", "ours/twin", ".3f"),
)


def timing_rows(results: Sequence[Timing]) -> list[dict[str, Any]]:
    """One JSON-ready dict per timing; ``ours_over_this`` = our median / this row's median for a twin's row of the
    same model and mode (< 1: ours is faster), None for our rows and for another model's (``--baseline``)."""
    ours = {(r.model, r.mode): r.median_ms for r in results if r.impl == "ours"}
    rows = []
    for r in results:
        base = ours.get((r.model, r.mode)) if r.impl != "ours" else None
        rows.append(
            {
                "model": r.model,
                "impl": r.impl,
                "mode": r.mode,
                "batch_size": r.batch_size,
                "input_size": r.input_size,
                "median_ms": r.median_ms,
                "images_per_s": r.images_per_s,
                "gmacs_per_s": r.gmacs_per_s,
                "macs": r.macs,
                "peak_mb": r.peak_mb,
                "ours_over_this": base / r.median_ms if base else None,
                "times_ms": list(r.times_ms),
            }
        )
    return rows


def format_table(results: list[Timing]) -> str:
    """Markdown table with the ratio ours/twin per mode (the first row of each mode is ours)."""
    return markdown_rows(TIMING_COLUMNS, timing_rows(results))


def markdown_rows(columns: Sequence[Sequence[str]], rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of ``rows`` with one column per ``(key, header, format spec)``; None prints empty."""

    def cell(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec) if spec else str(value)

    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: str = "cpu") -> dict[str, Any]:
    """What a timing depends on: CPU model, logical cores (all, and those this process may use), torch's intra-op
    threads, torch / Python versions, the OS and, on CUDA, the GPU's name."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
    }


#: keys every stored report has (``format`` 1)
REPORT_KEYS = ("format", "benchmark", "command", "settings", "date", "machine", "load_before", "load_after")


def begin_report(benchmark: str, command: str, settings: Mapping[str, Any], device: str = "cpu") -> dict[str, Any]:
    """A report before its run: what runs (``benchmark``, the ``command`` line, its ``settings``), the UTC date, the
    machine and the load average (1, 5, 15 min) now. Call after setting torch's thread count."""
    return {
        "format": 1,
        "benchmark": benchmark,
        "command": command,
        "settings": dict(settings),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(device),
        "load_before": list(os.getloadavg()),
    }


def end_report(
    report: Mapping[str, Any], columns: Sequence[Sequence[str]], rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``report`` completed after its run: the load average now, the table's ``(key, header, format)`` columns and
    every row (rows may hold more keys than the columns show)."""
    return {**report, "load_after": list(os.getloadavg()), "columns": [list(c) for c in columns], "rows": list(rows)}


def check_report_path(path: str | os.PathLike) -> None:
    """Before a run: make the folder of its ``--json`` file, and raise ``ValueError`` if ``path`` is a folder."""
    if Path(path).is_dir():
        raise ValueError(f"--json {os.fspath(path)} is a folder; give a file name, e.g. {Path(path) / 'run.json'}")
    Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Store a finished report as JSON (written to a temporary file and renamed)."""
    from .atomic import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=1) + "\n")


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by a benchmark's ``--json``.

    Raises:
        ValueError: the file is not such a report (the missing keys are named).
    """
    with open(path) as f:
        report = json.load(f)
    missing = [k for k in (*REPORT_KEYS, "columns", "rows") if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(
            f"{os.fspath(path)} is not a benchmark report (no {', '.join(missing)}); write one with the --json "
            f"option of tools/benchmark.py or tools/bench_detection.py"
        )
    return report


def render_report(report: Mapping[str, Any]) -> str:
    """One stored report as Markdown: a line with the command, date, machine and load, the settings, the table."""
    m = report["machine"]
    device = m["device"] + (f" ({m['gpu']})" if m.get("gpu") else "")
    load = f"{report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after"
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items() if v not in (None, [], {}))
    return (
        f"`{report['command']}` on {report['date']}: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} "
        f"usable), {m['torch_threads']} torch threads, torch {m['torch']}, device {device}; load average (1 min) "
        f"{load}. Settings: {settings}.\n\n" + markdown_rows(report["columns"], report["rows"])
    )


def render_into(text: str, reports: Mapping[str, Mapping[str, Any]]) -> str:
    """``text`` with each report rendered between ``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``;
    a report whose markers are absent gets a new block just before the ``<!-- bench:new -->`` line.

    Raises:
        ValueError: a report has no markers and ``text`` has no ``<!-- bench:new -->`` line.
    """
    from .zoo import replace_between_markers

    for name, report in reports.items():
        start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
        if start not in text:
            if "<!-- bench:new -->" not in text:
                raise ValueError(f"no {start} ... {end} block and no <!-- bench:new --> line to add one before")
            text = text.replace("<!-- bench:new -->", f"{start}\n{end}\n\n<!-- bench:new -->", 1)
        text = replace_between_markers(text, render_report(report), start, end)
    return text


def render_files(json_paths: Sequence[str | os.PathLike], doc: str | os.PathLike) -> str:
    """The text of ``doc`` with the reports stored in ``json_paths`` rendered into it, each in the block named after
    its file's stem (``docs/benchmarks/twins_cpu.json`` -> ``<!-- bench:twins_cpu:start -->``)."""
    reports = {Path(p).stem: load_report(p) for p in json_paths}
    return render_into(Path(doc).read_text(), reports)
