"""Train or evaluate a registered backbone as an image classifier (Hydra entry point; the logic lives in
``classification.module.run``).

    python tools/train_cls.py                                   # digits, default backbone, CPU, a few minutes
    python tools/train_cls.py backbone=resnet50 dataset=imagefolder dataset.root=/data/imagenet trainer=ddp
    python tools/train_cls.py backbone=nasnet_a_mobile recipe=nasnet_imagenet dataset=imagefolder dataset.root=...
    python tools/train_cls.py eval_only=true pretrained=/path/to/weights.pth      # ours or a timm/torchvision twin's
    python tools/train_cls.py eval_only=true checkpoint=outputs/.../checkpoints/last.ckpt
    python tools/train_cls.py resume=true hydra.run.dir=outputs/classify/<run>    # continue a killed run

Every rank of a multi-process run uses the one run dir (Lightning passes it to the processes it starts; with
torchrun or SLURM give hydra.run.dir); ranks other than 0 write no Hydra files; logs, checkpoints and
results.json come from rank 0.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.process import prepare_process  # noqa: E402  (imports no torch)

prepare_process()  # before torch loads: OMP_WAIT_POLICY; ranks > 0 write no Hydra files
log = logging.getLogger("train_cls")


@hydra.main(version_base="1.3", config_path="../conf", config_name="classify")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from classification.module import run  # after Hydra's checks and the run-dir lock: no torch import before

    metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    log.info(
        "top-1 %.2f%%, top-5 %.2f%% on %d val images",
        metrics.get("top1", float("nan")),
        metrics.get("top5", float("nan")),
        int(metrics.get("images", 0)),
    )
    return metrics.get("top1", float("nan"))


if __name__ == "__main__":
    main()
