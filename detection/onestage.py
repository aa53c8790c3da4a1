"""torchvision's one-stage detectors with the package's label convention: dataset labels run 1..K, as for the
Faster R-CNN and SSD detectors (whose softmax heads keep column 0 for the background).

RetinaNet and FCOS classify with K sigmoids and no background column. torchvision's COCO models keep the label-0
column anyway (91 outputs); it is never a positive, so an untrained model still ranks boxes as "class 0", which has
no category id. These subclasses give the heads exactly K columns and move the labels at the two documented methods
that see them, ``compute_loss`` (targets 1..K -> 0..K-1) and ``postprocess_detections`` (0..K-1 -> 1..K); every
other part is torchvision's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.detection import fcos, retinanet


class _LabelsFromOne:
    """Mixin: targets and detections carry labels 1..K, the sigmoid head has K columns for labels 0..K-1."""

    def compute_loss(self, targets: list[dict[str, Tensor]], *args: Any) -> dict[str, Tensor]:
        shifted = [{**t, "labels": t["labels"] - 1} for t in targets]
        return super().compute_loss(shifted, *args)  # type: ignore[misc]

    def postprocess_detections(self, *args: Any) -> list[dict[str, Tensor]]:
        detections = super().postprocess_detections(*args)  # type: ignore[misc]
        for d in detections:
            d["labels"] = d["labels"] + 1
        return detections


class RetinaNet(_LabelsFromOne, retinanet.RetinaNet):
    """torchvision ``RetinaNet`` whose ``num_classes`` counts object classes only (labels 1..num_classes)."""


class FCOS(_LabelsFromOne, fcos.FCOS):
    """torchvision ``FCOS`` whose ``num_classes`` counts object classes only (labels 1..num_classes)."""
