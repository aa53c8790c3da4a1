"""Export a backbone or a detector and verify the written file against eager PyTorch (docs/deployment.md).

    python tools/export.py mobilenet_v1_x1_0 --format onnx                      # classifier, random weights
    python tools/export.py resnet50 --features-only --format exported-program --input-size 320
    python tools/export.py outputs/classify/<run>/checkpoints/last.ckpt --format torchscript      # train_cls.py run
    python tools/export.py outputs/detect/<run>/checkpoints/last.ckpt --format onnx              # train_net.py run
    python tools/export.py mobilenet_v1_x0_5 --detector ssdlite --num-classes 4 --format onnx
    python tools/export.py weights.pth --model resnet50 --num-classes 10 --format onnx      # a state dict file

Prints where the file went and the largest error found; exits 1, writing nothing, when the file disagrees with
eager PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402
from backbones.export import FORMATS, RTOL, ExportMismatchError, default_path, export_model  # noqa: E402


def _size(text: str) -> int | tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return (int(h), int(w)) if w else int(h)


def _model(args: argparse.Namespace):
    """(module, is_detector, name) from a registered name, a training checkpoint or a state dict file."""
    src = args.source
    if not Path(src).is_file():
        backbones.model_card(src)  # raises on an unknown name, with close matches
        args.model = src
        ckpt = None
    else:
        import torch

        ckpt = torch.load(src, map_location="cpu", weights_only=True)
        hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
        if "cfg" in hp:
            from detection.export import detector_from_checkpoint

            return detector_from_checkpoint(src, args.input_size)[0], True, Path(src).stem
        if "model_name" in hp:
            from classification.export import classifier_from_checkpoint

            model = classifier_from_checkpoint(src)[0]
            return _features(model, args), False, hp["model_name"]
        if not args.model:
            raise ValueError(f"{src} is a state dict: give the architecture with --model <registered name>")
    if args.detector:
        from detection.export import detector_options
        from detection.models import build_detector, load_detector_weights

        cfg = detector_options(args.detector, args.input_size)
        model = build_detector(args.model, cfg, args.num_classes)
        if ckpt is not None:
            load_detector_weights(model, src)
        return model.eval(), True, f"{args.model}_{args.detector}"
    model = backbones.create_model(args.model, num_classes=args.num_classes or 1000)
    if ckpt is not None:
        from backbones.weights import load_pretrained

        load_pretrained(model, src)
    return _features(model, args), False, args.model


def _features(model, args: argparse.Namespace):
    if args.features_only:
        model.configure(features_only=True, out_features=args.out_features, norm=model.norm)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="registered model name, .ckpt of train_cls.py / train_net.py, or a state dict")
    ap.add_argument("--format", choices=FORMATS, default="onnx")
    ap.add_argument("--model", default=None, help="the architecture of a state dict file")
    ap.add_argument("--detector", default=None, help="build this detector around the backbone (faster_rcnn, ssd, ..)")
    ap.add_argument("--num-classes", type=int, default=None, help="classifier size / detector object classes")
    ap.add_argument("--features-only", action="store_true", help="export the feature levels, not the classifier")
    ap.add_argument("--out-features", type=lambda s: tuple(s.split(",")), default=None, help="e.g. c3,c4,c5")
    ap.add_argument("--input-size", type=_size, default=None, help="side or HxW (detectors: the resize target)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--legacy-onnx", action="store_true", help="the TorchScript-based ONNX exporter (dynamo=False)")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--rtol", type=float, default=RTOL, help="bound on max|exported - eager| / max|eager|")
    ap.add_argument("--output", default=None, help="file to write (default: ./<name>.<onnx|pt|pt2>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir"):  # the dynamo exporter's optimiser logs every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.detector and args.num_classes is None and not Path(args.source).is_file():
        ap.error("--detector needs --num-classes (object classes, background excluded)")
    try:
        model, is_detector, name = _model(args)
    except (KeyError, ValueError) as e:
        ap.error(str(e).strip('"'))
    output = args.output or default_path(name, args.format, args.features_only and not is_detector)
    try:
        if is_detector:
            from detection.export import export_detector

            report = export_detector(model, output, args.format, opset=args.opset or 17)
        else:
            report = export_model(
                model,
                output,
                args.format,
                input_size=args.input_size,
                batch_size=args.batch_size,
                dynamic_batch=args.dynamic_batch,
                dynamo=not args.legacy_onnx,
                opset=args.opset,
                bound=args.rtol,
            )
    except ExportMismatchError as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
