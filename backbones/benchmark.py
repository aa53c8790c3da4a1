"""Side-by-side timing of our models against their timm / torchvision twins, in one process, interleaved.

Used by ``tools/benchmark.py``. Each repeat times ours and the twin back to back, alternating which goes first, so
machine drift hits both; the report gives medians, images/s, mult-adds/s, the ratio ours/twin and peak memory.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

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
            results.append(Timing(model_name, impl, mode, batch_size, side, statistics.median(ts), m))
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


def format_table(results: list[Timing]) -> str:
    """Markdown table with the ratio ours/twin per mode (the first row of each mode is ours)."""
    lines = [
        "| model | impl | mode | batch | px | median ms | img/s | GMAC/s | peak MB | ours/twin |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ours = {(r.model, r.mode): r.median_ms for r in results if r.impl == "ours"}
    for r in results:
        base = ours.get((r.model, r.mode)) if r.impl != "ours" else None
        ratio = f"{base / r.median_ms:.3f}" if base else ""
        peak = "" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        lines.append(
            f"| {r.model} | {r.impl} | {r.mode} | {r.batch_size} | {r.input_size} | {r.median_ms:.1f} "
            f"| {r.images_per_s:.1f} | {r.gmacs_per_s:.1f} | {peak} | {ratio} |"
        )
    return "\n".join(lines)
