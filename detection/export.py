"""Export a detector of :func:`detection.models.build_detector` to ONNX or TorchScript, verified on shapes images.

The exported graph is :class:`DetectorOutputs`: one image ``(3, H, W)``, float in [0, 1], of any size, in; the
torchvision detector's own resizing, normalisation, backbone, heads and post-processing (NMS included); ``boxes``
``(N, 4)`` in input-image pixels (x1, y1, x2, y2), ``labels`` ``(N,)`` (1..num_classes) and ``scores`` ``(N,)``
out. After writing, the file runs on rendered shapes images of several sizes (:func:`shapes_images`) and its
detections are matched to eager PyTorch's (same label, nearest box): every box within ``box_tol`` pixels and every
score within ``score_tol``, or :class:`~backbones.export.ExportMismatchError` names the largest error and nothing is
left at the final name.

What works with torch 2.14 / torchvision 0.29 (``faster_rcnn``, ``faster_rcnn_c4``, ``ssd``, ``ssdlite``):

* ``onnx`` with the TorchScript-based exporter (``dynamo=False``), run by onnxruntime: torchvision writes its
  detectors for it (``torchvision._is_tracing()`` branches, opset >= 11);
* ``torchscript`` by ``torch.jit.trace`` of :class:`DetectorOutputs` (a list of dicts cannot be a traced output, a
  tuple of tensors can); the trace follows the image size, as the ONNX graph does.

What does not (:data:`UNSUPPORTED`), refused before any work: ``torch.export`` (``exported-program``) and the
dynamo ONNX exporter built on it. torchvision's post-processing has data-dependent sizes -- the number of boxes left
after score filtering decides ``batched_nms``'s algorithm (``torchvision/ops/boxes.py``: ``boxes.numel() > 4000``),
and ``_batched_nms_coordinate_trick`` branches on ``boxes.numel() == 0`` -- so ``torch.export`` stops with
``GuardOnDataDependentSymNode`` for all four detectors. Export the backbone alone for those formats
(:func:`backbones.export.export_model` of ``detector_backbone(model)``); ``tests/test_export_detection.py`` keeps
checking that torch.export still fails, so this note is revisited when torchvision changes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from backbones.atomic import staged_file
from backbones.checks import check, check_choice
from backbones.export import ExportMismatchError, ExportReport, load_runner, trace_notes

logger = logging.getLogger(__name__)

DETECTOR_FORMATS = ("onnx", "torchscript")
OUTPUTS = ("boxes", "labels", "scores")
UNSUPPORTED = {
    "exported-program": (
        "torch.export cannot export torchvision's detectors: their post-processing has data-dependent sizes "
        "(batched_nms branches on the number of boxes left after score filtering, torchvision/ops/boxes.py), so "
        "torch.export stops with GuardOnDataDependentSymNode"
    ),
    "onnx dynamo=True": (
        "the dynamo ONNX exporter runs torch.export first, which cannot export torchvision's detectors (data-dependent "
        "box counts in batched_nms, torchvision/ops/boxes.py)"
    ),
}
BOX_TOL = 1e-3  # pixels
SCORE_TOL = 1e-4


class DetectorOutputs(nn.Module):
    """A torchvision detector as a traceable function of one image: ``image (3, H, W) -> (boxes, labels, scores)``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def shapes_images(n: int = 3, split: str = "val") -> list[Tensor]:
    """The first ``n`` images of different sizes of the default shapes set's ``split``, rendered in memory (no dataset
    folder needed): ``(3, H, W)`` float tensors in [0, 1], sides between 128 and 192."""
    from .data import to_tensor
    from .synthetic import ShapesSpec, render_image

    spec, images, sizes = ShapesSpec(), [], set()
    for i in range(1000):
        image = render_image(spec, split, i)[0]
        if image.size not in sizes:
            sizes.add(image.size)
            images.append(to_tensor(image))
        if len(images) == n:
            break
    return images


@dataclass
class DetectionDiff:
    """How the detections of an exported detector and eager PyTorch differ on one image."""

    matched: int
    unmatched: int  # detections of either side with no partner (same label, box within tolerance)
    max_box_px: float
    max_score: float
    worst_unmatched_score: float  # highest score among the unmatched detections (0 when none)


def match_detections(ref: Sequence[Tensor], got: Sequence[Tensor], box_tol: float = BOX_TOL) -> DetectionDiff:
    """Pair the detections ``got = (boxes, labels, scores)`` with ``ref``'s: in decreasing score order, each takes the
    unpaired ``ref`` detection of the same label whose box is nearest (largest coordinate difference), if within
    ``box_tol`` pixels. The order of equal scores is the runtime's, so detections are matched, not compared by index."""
    rb, rl, rs = (t.detach().double() for t in ref)
    gb, gl, gs = (t.detach().double() for t in got)
    free = torch.ones(len(rb), dtype=torch.bool)
    max_box = max_score = 0.0
    unmatched_scores: list[float] = []
    for i in torch.argsort(gs, descending=True, stable=True).tolist():
        dist = (rb - gb[i]).abs().amax(dim=1) if len(rb) else rb.new_zeros(0)
        dist[(rl != gl[i]) | ~free] = float("inf")
        j = int(dist.argmin()) if len(dist) else -1
        if j < 0 or not dist[j] <= box_tol:
            unmatched_scores.append(float(gs[i]))
            continue
        free[j] = False
        max_box = max(max_box, float(dist[j]))
        max_score = max(max_score, float((rs[j] - gs[i]).abs()))
    unmatched_scores += rs[free].tolist()
    matched = len(gb) - (len(unmatched_scores) - int(free.sum()))
    worst = max(unmatched_scores, default=0.0)
    return DetectionDiff(matched, len(unmatched_scores), max_box, max_score, worst)


def compare_detections(
    ref: Sequence[Tensor], got: Sequence[Tensor], what: str, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL
) -> DetectionDiff:
    """:func:`match_detections`, raising :class:`ExportMismatchError` unless every detection has a partner with a box
    within ``box_tol`` pixels and a score within ``score_tol``."""
    diff = match_detections(ref, got, box_tol)
    if diff.unmatched:
        raise ExportMismatchError(
            f"{what}: {diff.unmatched} detection(s) have no partner with the same label and a box within {box_tol} px "
            f"(eager PyTorch {len(ref[0])}, exported {len(got[0])} detections; highest unmatched score "
            f"{diff.worst_unmatched_score:.4f}; largest matched box error {diff.max_box_px:.3g} px)",
            "boxes",
            float("inf"),
            box_tol,
        )
    if diff.max_score > score_tol:
        raise ExportMismatchError(
            f"{what}: output 'scores' disagrees with eager PyTorch: largest score difference {diff.max_score:.3g} > "
            f"bound {score_tol:.3g}",
            "scores",
            diff.max_score,
            score_tol,
        )
    return diff


def verify_detector_export(
    path: str | os.PathLike,
    format: str,
    detector: nn.Module,
    images: Sequence[Tensor],
    box_tol: float = BOX_TOL,
    score_tol: float = SCORE_TOL,
    label: str | None = None,
) -> dict[str, float]:
    """Run the exported file and the eager ``detector`` on each image; the largest box (px) and score errors.
    ``label`` names the file in messages (default: its format and path)."""
    run = load_runner(path, format)
    detector.eval()
    worst = {"boxes": 0.0, "scores": 0.0}
    for k, image in enumerate(images):
        with torch.no_grad():
            out = detector([image])[0]
        ref = [out[n] for n in OUTPUTS]
        what = f"{label or f'{format} file {os.fspath(path)!r}'} on image {k} ({tuple(image.shape[1:])})"
        diff = compare_detections(ref, run(image), what, box_tol, score_tol)
        worst["boxes"] = max(worst["boxes"], diff.max_box_px)
        worst["scores"] = max(worst["scores"], diff.max_score)
    return worst


def export_detector(
    detector: nn.Module,
    path: str | os.PathLike,
    format: str = "onnx",
    *,
    images: Sequence[Tensor] | None = None,
    dynamo: bool = False,
    opset: int | None = 17,
    box_tol: float = BOX_TOL,
    score_tol: float = SCORE_TOL,
) -> ExportReport:
    """Export a detector of :func:`~detection.models.build_detector` (put in eval mode) as :class:`DetectorOutputs` and
    verify the written file against eager PyTorch on ``images`` (default: three shapes images of different sizes; the
    first is the example input).

    Raises:
        ValueError: a format torchvision's detectors cannot be exported to (:data:`UNSUPPORTED`, the reason given).
        ExportMismatchError: the file's detections disagree with eager PyTorch; nothing is left at ``path``.
    """
    if format in UNSUPPORTED:
        raise ValueError(f"format={format!r} is not available for detectors: {UNSUPPORTED[format]}. {_SUPPORTED}")
    check_choice("format", format, DETECTOR_FORMATS)
    if format == "onnx" and dynamo:
        raise ValueError(f"dynamo=True is not available for detectors: {UNSUPPORTED['onnx dynamo=True']}. {_SUPPORTED}")
    images = list(images) if images is not None else shapes_images()
    check("images", f"{len(images)} images", bool(images), "give at least one (3, H, W) image")
    for k, im in enumerate(images):
        check(f"images[{k}]", tuple(im.shape), im.ndim == 3 and im.shape[0] == 3, "give (3, H, W) float images")
    wrapper = DetectorOutputs(detector).eval()
    start = time.perf_counter()
    final = Path(path)
    with staged_file(final) as tmp:
        with torch.no_grad():
            if format == "onnx":
                _write_onnx(wrapper, images[0], tmp, opset)
            else:
                _write_torchscript(wrapper, images[0], tmp)
        label = f"{format} export to {os.fspath(final)!r}"
        try:
            errors = verify_detector_export(tmp, format, detector, images, box_tol, score_tol, label)
        except ExportMismatchError as e:
            raise ExportMismatchError(f"{e}; nothing was written", e.output, e.error, e.bound) from e
        notes = trace_notes(tmp, final) if format == "torchscript" else []
    shapes = [tuple(im.shape) for im in images]
    bounds = {"boxes": box_tol, "scores": score_tol}
    notes.append("errors after matching detections: boxes in pixels, scores absolute")
    report = ExportReport(final, format, list(OUTPUTS), errors, bounds, shapes, time.perf_counter() - start, notes)
    logger.info("%s", report.summary())
    return report


_SUPPORTED = "Detectors export with format='onnx' (dynamo=False) or format='torchscript'"


def _write_onnx(wrapper: nn.Module, image: Tensor, path: Path, opset: int | None) -> None:
    import warnings

    axes = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in OUTPUTS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of torchvision's tracing branches
        torch.onnx.export(
            wrapper,
            (image,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
        )


def _write_torchscript(wrapper: nn.Module, image: Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of torchvision's tracing branches; trace deprecation
        traced = torch.jit.trace(wrapper, (image,), check_trace=False)
    traced.save(str(path))


def detector_options(name: str, input_size: int | Sequence[int] | None = None) -> dict[str, Any]:
    """A detector config ``{"name": name, ...}`` whose input resolution is ``input_size`` (None: the defaults): SSD's
    ``size``; Faster R-CNN's ``min_size`` (the shorter side) with ``max_size`` in torchvision's ratio 1333 / 800."""
    from .models import resolve_config

    cfg = resolve_config(name)
    if input_size is None:
        return {"name": name}
    sides = [input_size] if isinstance(input_size, int) else list(input_size)
    check("input_size", input_size, len(sides) in (1, 2) and all(int(s) > 0 for s in sides), "give a side or (h, w)")
    if "size" in cfg:
        return {"name": name, "size": sides[0] if len(sides) == 1 else sides}
    side = min(sides)
    return {"name": name, "min_size": side, "max_size": max(max(sides), round(side * 1333 / 800))}


def detector_from_checkpoint(
    path: str | os.PathLike, input_size: int | Sequence[int] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of a ``tools/train_net.py`` checkpoint (``.ckpt``), rebuilt from its hyper-parameters (backbone,
    detector and ``num_classes``) with its trained weights; ``input_size`` replaces the trained resize target
    (:func:`detector_options`). Returns ``(detector in eval mode, config)``."""
    from training.config import backbone_spec

    from .models import build_detector, load_detector_weights

    path = os.fspath(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    cfg = hp.get("cfg")
    if not isinstance(cfg, dict) or "detector" not in cfg or "num_classes" not in hp:
        raise ValueError(
            f"{path!r} is not a tools/train_net.py checkpoint (no hyper_parameters.cfg.detector / num_classes); for a "
            f"state dict give the backbone and --detector/--num-classes"
        )
    name, options = backbone_spec(cfg["backbone"])
    options.pop("pretrained", None)  # the checkpoint holds the trained weights
    det_cfg = dict(cfg["detector"])
    if input_size is not None:
        det_cfg.update(detector_options(det_cfg["name"], input_size))
    detector = build_detector(name, det_cfg, int(hp["num_classes"]), **options)
    load_detector_weights(detector, path)
    return detector.eval(), cfg
