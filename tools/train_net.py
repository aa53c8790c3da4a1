"""Train and evaluate a detector on any registered backbone (Hydra config: conf/detect.yaml).

python tools/train_net.py                                             # default: synthetic shapes on the CPU
python tools/train_net.py backbone=nasnet_a_large detector=faster_rcnn
python tools/train_net.py dataset=coco solver=coco_1x trainer=ddp trainer.devices=8
python tools/train_net.py eval_only=true checkpoint=outputs/.../checkpoints/last.ckpt
python tools/train_net.py resume=true hydra.run.dir=outputs/detect/<earlier run>

Every rank of a multi-process run uses the one run dir (Lightning passes it to the processes it starts; with
torchrun give hydra.run.dir); ranks other than 0 write no Hydra files, and logs and checkpoints come from rank 0.
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
logger = logging.getLogger("train_net")


@hydra.main(config_path="../conf", config_name="detect", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from detection.module import run

    out = HydraConfig.get().runtime.output_dir
    metrics = run(cfg, out)
    if metrics:
        logger.info("final box AP %.4f, AP50 %.4f (run dir %s)", metrics["AP"], metrics["AP50"], out)
        return metrics["AP"]
    return None


if __name__ == "__main__":
    main()
