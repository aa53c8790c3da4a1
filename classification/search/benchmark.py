"""Is a searched cell better than a random one? The comparison ``docs/search.md`` reports (a benchmark, not a test).

For each seed: run the configured search; retrain its best cell from scratch at a fixed budget (``child.steps``, or
``benchmark.steps``) and ``benchmark.random_cells`` cells drawn uniformly from the same space at the same budget;
score all on the proxy's ``test`` split, which the search never sees. The outcome per seed is the best cell's
accuracy minus the median random cell's; the summary gives their mean and spread over seeds. With
``benchmark.noise`` the first seed's random cells are retrained from a second initialisation, which measures how
far one cell's score moves with its initialisation alone -- the yardstick for whether the proxy tells cells apart.

    python tools/search.py "benchmark.seeds=[0,1,2]"     # writes <run dir>/benchmark.json and seed<k>/ search dirs
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from backbones.atomic import write_json_atomic
from backbones.nas.space import build_space, read_genotype
from training.config import plain

from .data import build_search_data
from .module import run
from .strategies import mix_seed, train_from_scratch

logger = logging.getLogger(__name__)


def compare_with_random(cfg: Any, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the comparison described in the module docstring; returns (and writes) ``benchmark.json``'s content."""
    c = plain(cfg)
    bench = dict(c.get("benchmark") or {})
    seeds = [int(s) for s in bench.get("seeds") or []]
    if not seeds:
        raise ValueError("benchmark.seeds is empty; e.g. benchmark.seeds=[0,1,2]")
    n_random = int(bench.get("random_cells", 8))
    child_cfg = dict(c["child"])
    if bench.get("steps"):
        child_cfg["steps"] = int(bench["steps"])
    out = Path(output_dir)
    data = build_search_data(c["data"])
    space = build_space(**c["search"]["space"])
    rows = []
    for seed in seeds:
        search_cfg = copy.deepcopy(c)
        search_cfg.update(seed=seed, benchmark={**bench, "seeds": []})
        summary = run(search_cfg, out / f"seed{seed}")
        best = read_genotype(out / f"seed{seed}" / "best.json")
        t0 = time.process_time()
        best_acc = train_from_scratch(best, data, child_cfg, mix_seed(seed, 100))
        per_child = time.process_time() - t0
        g = torch.Generator().manual_seed(mix_seed(seed, 200))
        cells = [space.decode(space.sample_uniform(g), f"random{i}") for i in range(n_random)]
        accs = [train_from_scratch(cell, data, child_cfg, mix_seed(seed, 300, i)) for i, cell in enumerate(cells)]
        row = {"seed": seed, "best": best_acc, "random": accs, "random_median": statistics.median(accs),
               "gain": best_acc - statistics.median(accs), "search_wall_s": summary.get("wall_s"),
               "search_cpu_s": summary.get("cpu_s"), "scored": summary.get("scored"),
               "search_best_reward": summary.get("best_reward"), "retrain_cpu_s_per_cell": per_child}  # fmt: skip
        if bench.get("noise", True) and seed == seeds[0]:
            again = [train_from_scratch(cell, data, child_cfg, mix_seed(seed, 400, i)) for i, cell in enumerate(cells)]
            row["random_second_init"] = again
        rows.append(row)
        logger.info("seed %d: best %.4f, random median %.4f (gain %+.4f)", seed, best_acc, row["random_median"],
                    row["gain"])  # fmt: skip
    gains = [r["gain"] for r in rows]
    summary = {
        "strategy": c["search"]["strategy"]["name"], "space": space.name, "seeds": seeds, "random_cells": n_random,
        "steps": child_cfg["steps"], "mean_gain": statistics.mean(gains),
        "gain_stdev": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "best_mean": statistics.mean(r["best"] for r in rows),
        "random_median_mean": statistics.mean(r["random_median"] for r in rows),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }  # fmt: skip
    noise = rows[0].get("random_second_init")
    if noise:
        a, b = rows[0]["random"], noise
        summary["init_spread"] = statistics.mean(abs(x - y) for x, y in zip(a, b))  # same cell, another init
        summary["cell_spread"] = statistics.stdev((x + y) / 2 for x, y in zip(a, b))  # between cells
    report = {"summary": summary, "seeds": rows}
    write_json_atomic(out / "benchmark.json", report)
    return report
