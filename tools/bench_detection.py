"""Detection throughput (not a test): loader vs training step for a config, and R50-FPN inference ours/torchvision.

python tools/bench_detection.py                          # the default run's loader and training step
python tools/bench_detection.py backbone=resnet50 dataset.batch_size=2
python tools/bench_detection.py --r50-fpn --side 800     # inference time ratio ours / torchvision
python tools/bench_detection.py --layouts --steps 20     # training step: contiguous vs channels-last layouts
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.process import prepare_process  # noqa: E402  (imports no torch)

prepare_process()  # as tools/train_net.py (OMP_WAIT_POLICY before torch loads), so the step is timed as it trains

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from detection.benchmark import (  # noqa: E402
    layout_step_times,
    loader_images_per_second,
    r50_fpn_inference_ratio,
    train_step_images_per_second,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/detect.yaml")
    ap.add_argument("--r50-fpn", action="store_true", help="time R50-FPN inference, ours vs torchvision")
    ap.add_argument("--side", type=int, default=800, help="image side for --r50-fpn")
    ap.add_argument("--repeats", type=int, default=5, help="timed inferences per model for --r50-fpn")
    ap.add_argument("--contiguous", action="store_true", help="--r50-fpn with our backbone not channels-last")
    ap.add_argument("--layouts", action="store_true", help="training step time per memory layout, interleaved")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    if args.r50_fpn:
        r = r50_fpn_inference_ratio(args.side, args.repeats, channels_last=not args.contiguous)
        layout = "contiguous" if args.contiguous else "channels-last"
        print(f"R50-FPN {args.side}px, ours {layout}, median of {args.repeats}: wall ours {r['ours_s']:.3f} s, "
              f"torchvision {r['torchvision_s']:.3f} s, ratio ours/torchvision {r['ratio']:.3f}; CPU time ours "
              f"{r['ours_cpu_s']:.3f} s, torchvision {r['torchvision_cpu_s']:.3f} s, ratio {r['cpu_ratio']:.3f} "
              f"({_machine()})")  # fmt: skip
        return 0
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("detect", args.overrides), resolve=True)
    if args.layouts:
        times = layout_step_times(cfg, steps=args.steps)
        ref = times["backbone channels-last"]
        for name, ms in times.items():
            print(f"{name:24s} {ms:7.1f} ms per training step, ratio to backbone channels-last {ms / ref:.3f}")
        print(f"({cfg['backbone']['name']} {cfg['detector']['name']}, median of {args.steps} steps, {_machine()})")
        return 0
    loader = loader_images_per_second(cfg, batches=3 * args.steps)
    step = train_step_images_per_second(cfg, steps=args.steps)
    print(f"{cfg['backbone']['name']} {cfg['detector']['name']}: loader {loader:.1f} images/s "
          f"({cfg['dataset']['workers']} workers), training step {step:.1f} images/s ({_machine()})")  # fmt: skip
    return 0


def _machine() -> str:
    import torch

    return f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
