"""COCO box mAP on the dataset's own annotation file (pycocotools ``COCOeval``; ``faster_coco_eval`` optional).

Predictions are converted to COCO results (``[x, y, w, h]`` in original-image pixels, category ids mapped back
from contiguous labels), gathered from every rank and de-duplicated by image id, so each val image counts exactly
once under DDP. The evaluated image ids are the images the loader covered (an image that failed to decode counts
as one with no detections). No detections at all gives AP 0 rather than pycocotools' ``loadRes([])`` crash.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backbones.atomic import write_json_atomic

logger = logging.getLogger(__name__)

#: names of COCOeval.stats[0:12] (pycocotools ``_summarizeDets``)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")


def to_coco_results(
    image_id: int, output: Mapping[str, Tensor], label_to_cat: Mapping[int, int], scale: float = 1.0
) -> list[dict[str, Any]]:
    """One detector output (xyxy boxes in the model's input pixels) as COCO results in original-image pixels."""
    boxes = output["boxes"].detach().float().cpu() / scale
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label_to_cat[lab]), "bbox": [round(v, 3) for v in b],
         "score": round(float(s), 5)}
        for b, s, lab in zip(xywh, scores, labels)
    ]  # fmt: skip


def _all_gather(obj: Any) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class CocoEvaluator:
    """Collects predictions of one evaluation pass and scores them against ``ann_file``.

    Args:
        ann_file: the dataset's COCO annotation JSON (the ground truth, crowd regions included).
        label_to_cat: contiguous label -> category id.
        backend: ``"pycocotools"`` or ``"faster_coco_eval"`` (same 12 numbers, faster on large sets).
    """

    def __init__(self, ann_file: str | os.PathLike, label_to_cat: Mapping[int, int], backend: str = "pycocotools"):
        if backend not in BACKENDS:
            raise ValueError(f"evaluation backend {backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
        self.ann_file = os.fspath(ann_file)
        self.label_to_cat = dict(label_to_cat)
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self.results: dict[int, list[dict[str, Any]]] = {}
        self.seen: set[int] = set()
        self.decoded = 0  # images with predictions, all ranks (set by gather)

    def update(self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Tensor]]) -> None:
        for target, output in zip(targets, outputs):
            image_id = int(target["image_id"])
            self.seen.add(image_id)
            self.results[image_id] = to_coco_results(image_id, output, self.label_to_cat, float(target["scale"]))

    def mark_seen(self, image_ids: Iterable[int]) -> None:
        """Images the loader covered without predictions (e.g. undecodable): scored as having no detections."""
        self.seen.update(int(i) for i in image_ids)

    def gather(self) -> tuple[list[dict[str, Any]], list[int]]:
        """All ranks' results, each image once (a padded sampler may repeat one), and the image ids covered;
        :attr:`decoded` becomes the number of images that had predictions (the others did not decode)."""
        per_rank = _all_gather((self.results, sorted(self.seen)))
        merged: dict[int, list[dict[str, Any]]] = {}
        seen: set[int] = set()
        for results, ids in per_rank:
            merged.update(results)
            seen.update(ids)
        flat = [r for image_id in sorted(merged) for r in merged[image_id]]
        self.decoded = len(merged)
        undecoded = sorted(seen - set(merged))
        if undecoded and _rank() == 0:
            logger.warning(
                "%d evaluated image(s) could not be decoded and count as images with no detections (ids %s%s)",
                len(undecoded),
                undecoded[:10],
                ", ..." if len(undecoded) > 10 else "",
            )
        return flat, sorted(seen)

    def evaluate(self, results_file: str | os.PathLike | None = None) -> dict[str, float]:
        """Gather (collective: call on every rank) and score; returns the 12 COCO stats by name."""
        results, image_ids = self.gather()
        if results_file is not None:
            write_json_atomic(results_file, results)
        return evaluate_results(self.ann_file, results, image_ids, self.backend)


def evaluate_results(
    ann_file: str | os.PathLike,
    results: list[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
) -> dict[str, float]:
    """COCOeval (iouType bbox) of COCO-format ``results`` on ``image_ids`` (None: every image of ``ann_file``).

    Returns:
        ``{name: value}`` for the 12 stats of :data:`STAT_NAMES` (-1 where a bucket has no ground truth).
    """
    if backend not in BACKENDS:
        raise ValueError(f"evaluation backend {backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval as Eval
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as Eval
        gt = COCO(os.fspath(ann_file))
        gt.dataset.setdefault("info", {})  # pycocotools >= 2.0.9 copies it into the results
        gt.dataset.setdefault("licenses", [])
        known = set(gt.getImgIds())
        ids = sorted(known if image_ids is None else set(image_ids))
        unknown = sorted(set(ids) - known)
        if unknown:
            raise ValueError(f"image ids {unknown[:10]} are not in {os.fspath(ann_file)}")
        if results:
            dt = gt.loadRes(results)
        else:
            logger.warning("no detections at all: every AP is 0")
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = Eval(gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary = "\n".join(line for line in buf.getvalue().splitlines() if "Average" in line)
    if summary:
        logger.info("COCO box evaluation (%s, %d images):\n%s", backend, len(ids), summary)
    stats = np.asarray(ev.stats, dtype=np.float64)[: len(STAT_NAMES)]  # faster_coco_eval appends AR50, AR75
    return {name: float(v) for name, v in zip(STAT_NAMES, stats)}
