"""Detection throughput (not a test): loader vs training step for a config, and R50-FPN inference ours/torchvision.

python tools/bench_detection.py                          # the default run's loader and training step
python tools/bench_detection.py backbone=resnet50 dataset.batch_size=2
python tools/bench_detection.py --r50-fpn --side 800     # inference time ratio ours / torchvision
python tools/bench_detection.py --r50-fpn --json docs/benchmarks/r50_fpn_cpu.json   # also store the run
python tools/bench_detection.py --layouts --steps 20     # training step: contiguous vs channels-last layouts

``--json FILE`` stores the run (machine, date, load average before and after, settings, the row) for
``python tools/benchmark.py --render ... --write docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.process import prepare_process  # noqa: E402  (imports no torch)

prepare_process()  # as tools/train_net.py (OMP_WAIT_POLICY before torch loads), so the step is timed as it trains

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from backbones.benchmark import begin_report, check_report_path, end_report, write_report  # noqa: E402
from detection.benchmark import (  # noqa: E402
    LAYOUT_COLUMNS,
    LOADER_COLUMNS,
    R50_FPN_COLUMNS,
    layout_rows,
    loader_vs_step,
    r50_fpn_inference_ratio,
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
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the run (machine, load, row) as JSON")
    args = ap.parse_args(argv)
    if args.json:
        check_report_path(args.json)
    command = "python tools/bench_detection.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.r50_fpn:
        settings = {"side": args.side, "repeats": args.repeats, "contiguous": args.contiguous}
        report = begin_report("detection_r50_fpn", command, settings)
        r = r50_fpn_inference_ratio(args.side, args.repeats, channels_last=not args.contiguous)
        report = end_report(report, R50_FPN_COLUMNS, [r])
        print(f"R50-FPN {args.side}px, ours {r['layout']}, median of {args.repeats}: wall ours {r['ours_s']:.3f} s, "
              f"torchvision {r['torchvision_s']:.3f} s, ratio ours/torchvision {r['ratio']:.3f}; CPU time ours "
              f"{r['ours_cpu_s']:.3f} s, torchvision {r['torchvision_cpu_s']:.3f} s, ratio {r['cpu_ratio']:.3f} "
              f"({_machine(report)})")  # fmt: skip
    else:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = OmegaConf.to_container(compose("detect", args.overrides), resolve=True)
    if args.layouts:
        report = begin_report("detection_layouts", command, {"overrides": args.overrides, "steps": args.steps})
        rows = layout_rows(cfg, steps=args.steps)
        report = end_report(report, LAYOUT_COLUMNS, rows)
        for r in rows:
            print(f"{r['layout']:24s} {r['ms_per_step']:7.1f} ms per training step, ratio {r['ratio']:.3f}")
        print(f"({cfg['backbone']['name']} {cfg['detector']['name']}, median of {args.steps}, {_machine(report)})")
    elif not args.r50_fpn:
        report = begin_report("detection_loader", command, {"overrides": args.overrides, "steps": args.steps})
        r = loader_vs_step(cfg, steps=args.steps)
        report = end_report(report, LOADER_COLUMNS, [r])
        print(f"{r['backbone']} {r['detector']}: loader {r['loader_images_per_s']:.1f} images/s ({r['workers']} "
              f"workers), training step {r['train_images_per_s']:.1f} images/s ({_machine(report)})")  # fmt: skip
    if args.json:
        write_report(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _machine(report: dict) -> str:
    m = report["machine"]
    return (
        f"{m['cpu_model']}, {m['cores']} CPUs, {m['torch_threads']} torch threads, load average "
        f"{report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after"
    )


if __name__ == "__main__":
    raise SystemExit(main())
