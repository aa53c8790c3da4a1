"""Search a cell in the NASNet space (Hydra entry point; the logic lives in ``classification.search``).

    python tools/search.py                                       # ENAS on digits, CPU, a few minutes
    python tools/search.py search/strategy=random search/space=nasnet_a
    python tools/search.py search/strategy=rl search.strategy.policy.algorithm=ppo
    python tools/search.py resume=true hydra.run.dir=outputs/search/<run>     # continue a killed run
    python tools/search.py "benchmark.seeds=[0,1,2]"             # best found vs random cells, retrained (docs)

The run dir receives samples.json (every sampled genotype and its reward), best.json and top/<rank>.json (genotype
files: create_model("nasnet", genotype="<run>/best.json"), tools/train_net.py backbone=nasnet
backbone.options.genotype=<run>/best.json) and search.json (cost and outcome).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.process import prepare_process  # noqa: E402  (imports no torch)

prepare_process()  # before torch loads: OMP_WAIT_POLICY; ranks > 0 write no Hydra files

log = logging.getLogger("search")


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    if cfg.benchmark.seeds:
        from classification.search.benchmark import compare_with_random

        report = compare_with_random(cfg, out)
        log.info("benchmark (%s/benchmark.json):\n%s", out, json.dumps(report["summary"], indent=1))
        return report["summary"]["mean_gain"]
    from classification.search.module import run

    summary = run(cfg, out)
    return summary.get("best_reward")


if __name__ == "__main__":
    main()
