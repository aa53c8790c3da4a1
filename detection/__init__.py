"""Detection on the registry's backbones: torchvision detectors through one adapter (:mod:`detection.models`,
:mod:`detection.adapter`), COCO-format data and evaluation, the Lightning module, the detectron2 plugin
(:mod:`detection.detectron2`, optional).

``detection.fpn_backbone(name, ...)`` is the torchvision-ready backbone (an FPN with ``out_channels`` an int and maps
named ``'0'``, ``'1'``, ..., ``'pool'``) for torchvision's ``FasterRCNN`` / ``RetinaNet`` / ``FCOS`` written by
hand; ``detection.build_detector`` builds the configured detectors of ``conf/detector``.
"""

from .adapter import FeatureAdapter, fpn_backbone
from .models import DETECTORS, build_detector

__all__ = ["DETECTORS", "FeatureAdapter", "build_detector", "fpn_backbone"]
