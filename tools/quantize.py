"""int8 post-training quantisation of a trained classifier; its top-1 in float32, bf16 and int8 (docs/deployment.md).

    python tools/quantize.py outputs/classify/<run>/checkpoints/last.ckpt      # digits, 4 calibration batches
    python tools/quantize.py last.ckpt --output model_int8.pt2 --onnx model_int8.onnx      # also write the int8 model
    python tools/quantize.py last.ckpt --dataset imagefolder --set root=/data/imagenet --set image_size=224
    python tools/quantize.py last.ckpt --no-int8      # float32 and bf16 only (models int8 does not cover)

Calibrates on the first training batches, evaluates the val split three ways (the float32 model, the same under bf16
autocast, the int8 model on oneDNN kernels) and prints each top-1, its per-image agreement with float32 and the
weight sizes. The int8 files are verified against the int8 model before they are kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.export import ExportMismatchError, export_model  # noqa: E402
from backbones.quantize import INT8_RTOL, save_int8  # noqa: E402
from classification.export import classifier_from_checkpoint, compare_precisions, dataset_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a tools/train_cls.py checkpoint (.ckpt)")
    ap.add_argument("--dataset", default="digits", help="conf/dataset/<name>.yaml")
    ap.add_argument("--set", action="append", default=[], help="dataset key=value, YAML values (e.g. image_size=32)")
    ap.add_argument("--calibration-batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--output", default=None, help="write the int8 model as an ExportedProgram (.pt2)")
    ap.add_argument("--onnx", default=None, help="write the int8 model as ONNX (QDQ, dynamo exporter)")
    ap.add_argument("--no-int8", action="store_true", help="float32 and bf16 only (no calibration, no int8 files)")
    args = ap.parse_args(argv)
    if args.no_int8 and (args.output or args.onnx):
        ap.error("--no-int8 writes no int8 model: drop --output / --onnx")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir"):  # the dynamo exporter's optimiser logs every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model, hp = classifier_from_checkpoint(args.checkpoint)
    cfg = dataset_config(args.dataset, args.set)
    figures, quantized = compare_precisions(model, cfg, args.calibration_batches, args.batch_size, not args.no_int8)
    n = int(figures.pop("images")["count"])
    sizes = figures.pop("size")
    calibrated = "" if args.no_int8 else f", int8 calibrated on {args.calibration_batches} batches"
    print(f"{hp['model_name']} on {n} {cfg['name']} val images{calibrated}")
    print("| precision | top-1 % | agreement with fp32 % | weights MB |\n|---|---|---|---|")
    for name, key in (("fp32", "reference"), ("bf16", "bf16"), ("int8", "int8")):
        if key not in figures:
            continue
        f = figures[key]
        agree = f"{f['agreement']:.2f}" if "agreement" in f else "100 (reference)"
        size = sizes["int8" if name == "int8" else "fp32"] / 2**20
        kernels = " (reference graph: oneDNN's lowering refused)" if f.get("lowered") == 0.0 else ""
        print(f"| {name}{kernels} | {f['top1']:.2f} | {agree} | {size:.2f} |")
    side = cfg.get("image_size", model.card.input_size)
    if args.output:
        import torch

        save_int8(quantized, args.output, torch.zeros(2, 3, side, side))
        print(f"int8 ExportedProgram: {args.output} ({Path(args.output).stat().st_size / 2**20:.2f} MB)")
    if args.onnx:
        try:
            report = export_model(quantized, args.onnx, "onnx", input_size=side, bound=INT8_RTOL)
        except ExportMismatchError as e:  # the figures above stand; the file is refused, as tools/export.py does
            print(f"int8 ONNX refused: {e}", file=sys.stderr)
            return 1
        print(f"int8 ONNX: {report.summary()} ({Path(args.onnx).stat().st_size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
