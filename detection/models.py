"""Detectors around any registered backbone, built from torchvision's parts through ONE adapter.

:class:`~detection.adapter.FeatureAdapter` turns a ``features_only`` backbone into what torchvision's detectors expect
(an ordered dict of maps named as torchvision names them and an ``out_channels`` attribute), reading channels and
strides from ``feature_info`` (no dummy forward):

* ``faster_rcnn``: levels c2..c5 (configurable) -> torchvision ``FeaturePyramidNetwork`` with a max-pool level ->
  RPN (one anchor size per map) -> ``MultiScaleRoIAlign`` -> two-FC box head (Lin et al. 2017, FPN).
* ``faster_rcnn_c4``: the NASNet paper's setup (Zoph et al. 2018, arXiv:1707.07012, section 4.3, Table 4; the
  ResNet paper's C4 detector): one stride-16 map, RoIAlign, the backbone's last stage as box head
  (:meth:`backbones.Backbone.make_box_head`), 300 RPN proposals at test time ("300-500 RPN proposals per image").
* ``retinanet`` (Lin et al. 2017, arXiv:1708.02002, section 4: P3-P7, P6 from C5, 3 scales x 3 ratios per level) and
  ``fcos`` (Tian et al. 2019, arXiv:1904.01355, section 3.2: P3-P7, P6 from P5) with torchvision's ``RetinaNet`` /
  ``FCOS`` and their heads, on the adapter's P3-P7 layout (``LastLevelP6P7``).
* ``ssd`` (Liu et al. 2016; SSD300/512 style: levels c3..c5 and plain 1x1 -> 3x3/2 extra layers) and ``ssdlite``
  (Sandler et al. 2018: c4, c5 and depthwise extra layers) with torchvision's ``SSD``/``SSDLite`` heads and
  ``DefaultBoxGenerator``. Default side 320 rather than 300 so every backbone level is exactly ``side / stride``.

``num_classes`` is the number of object classes and dataset labels run 1..num_classes: torchvision's label 0 is the
background, so the softmax heads (Faster R-CNN, SSD) get ``num_classes + 1`` outputs; the sigmoid heads of RetinaNet
and FCOS get ``num_classes`` (:mod:`detection.onestage` moves their labels by one).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import Tensor, nn

import backbones
from backbones import Backbone
from backbones.checks import check, check_choice
from backbones.weights import load_state_dict_checked, read_state_dict
from training.config import plain

from .adapter import P6P7_SOURCES, FeatureAdapter, check_levels

logger = logging.getLogger(__name__)

_FASTER_RCNN_COMMON: dict[str, Any] = {
    "anchor_sizes": [32, 64, 128, 256, 512],
    "aspect_ratios": [0.5, 1.0, 2.0],
    "min_size": 800,
    "max_size": 1333,
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
    "sampling_ratio": 2,
    "rpn_positive_fraction": 0.5,
    "box_positive_fraction": 0.25,
    "box_loss_beta": 1 / 9,  # smooth-L1 beta of the RPN and box losses: torchvision 1/9, detectron2 0 (= L1)
}
_SSD_COMMON: dict[str, Any] = {
    "size": 320,
    "min_ratio": 0.2,
    "max_ratio": 0.9,
    "iou_thresh": 0.5,
    "nms_thresh": 0.45,
    "detections_per_img": 100,
}

#: every detector's options and their defaults: the one source; ``conf/detector/<name>.yaml`` is generated from it
#: (detection.config.detector_conf, ``python tools/model_zoo.py --write-conf``)
DETECTORS: dict[str, dict[str, Any]] = {
    "faster_rcnn": {
        **_FASTER_RCNN_COMMON,
        "levels": ["c2", "c3", "c4", "c5"],
        "fpn_channels": 256,
        "pool_level": True,  # FPN paper: P6 by stride-2 subsampling of P5, used by the RPN only
        "roi_output_size": 7,
        "representation_size": 1024,
        "head_init": "torchvision",  # of the two-FC box head and predictor: torchvision | detectron2
    },
    "faster_rcnn_c4": {
        **_FASTER_RCNN_COMMON,
        "level": "c4",
        "rpn_post_nms_top_n_test": 300,  # NASNet paper 4.3: "300-500 RPN proposals per image"
        "roi_output_size": 14,  # the last stage halves it to 7 x 7 before global pooling
    },
    "retinanet": {
        "levels": ["c3", "c4", "c5"],  # + P6, P7 (LastLevelP6P7): strides 8..128
        "fpn_channels": 256,
        "p6p7_from": "c5",  # RetinaNet paper, section 4 ("P6 is obtained via a 3x3 stride-2 conv on C5")
        "anchor_sizes": [32, 64, 128, 256, 512],  # one octave per map: P3..P7
        "scales_per_octave": 3,  # sizes x 2^(0, 1/3, 2/3) (paper section 4, "Anchors")
        "aspect_ratios": [0.5, 1.0, 2.0],
        "min_size": 800,
        "max_size": 1333,
        "score_thresh": 0.05,
        "nms_thresh": 0.5,
        "detections_per_img": 100,  # COCOeval counts the top 100 per image (torchvision keeps 300)
        "fg_iou_thresh": 0.5,
        "bg_iou_thresh": 0.4,
        "topk_candidates": 1000,
    },
    "fcos": {
        "levels": ["c3", "c4", "c5"],  # + P6, P7: the anchor points of each map are its stride (torchvision)
        "fpn_channels": 256,  # the head's GroupNorm has 32 groups: a multiple of 32
        "p6p7_from": "p5",  # FCOS paper, section 3.2 ("P6 and P7 are produced by ... stride 2 on P5 and P6")
        "num_convs": 4,
        "min_size": 800,
        "max_size": 1333,
        "center_sampling_radius": 1.5,
        "score_thresh": 0.2,
        "nms_thresh": 0.6,
        "detections_per_img": 100,
        "topk_candidates": 1000,
    },
    "ssd": {
        **_SSD_COMMON,
        "levels": ["c3", "c4", "c5"],
        "extra_channels": [512, 256, 256],
        "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],  # SSD300 (torchvision ssd300_vgg16)
        "score_thresh": 0.01,
        "topk_candidates": 400,
    },
    "ssdlite": {
        **_SSD_COMMON,
        "levels": ["c4", "c5"],
        "extra_channels": [512, 256, 256, 128],  # torchvision ssdlite320_mobilenet_v3_large
        "aspect_ratios": [[2, 3]] * 6,
        "max_ratio": 0.95,
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "topk_candidates": 300,
    },
}
#: initialisations of the Faster R-CNN (FPN) box head: torchvision's nn.Linear default, detectron2's
HEAD_INITS = ("torchvision", "detectron2")
#: the valid values of the string options (the config schema checks them: detection.module.check_detector)
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"head_init": HEAD_INITS, "p6p7_from": P6P7_SOURCES}
#: keys a detector config may carry that :func:`build_detector` does not read
_CONFIG_ONLY = ("name",)


def detector_names() -> list[str]:
    return sorted(DETECTORS)


def resolve_config(detector_cfg: Mapping[str, Any] | str) -> dict[str, Any]:
    """Defaults of ``detector_cfg["name"]`` overridden by the given keys; unknown names and keys are errors."""
    if isinstance(detector_cfg, str):
        detector_cfg = {"name": detector_cfg}
    cfg = plain(detector_cfg)
    name = cfg.get("name")
    if name not in DETECTORS:
        close = difflib.get_close_matches(str(name), DETECTORS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown detector {name!r}{hint}; valid detectors: {', '.join(detector_names())}")
    valid = DETECTORS[name]
    for key in cfg:
        if key not in valid and key not in _CONFIG_ONLY:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown option {key!r} for detector {name!r}{hint}; valid: {', '.join(sorted(valid))}")
    out = {**valid, **{k: v for k, v in cfg.items() if k not in _CONFIG_ONLY}, "name": name}
    if "levels" in out:
        _check_level_names("detector.levels", out["levels"])
    return out


def _check_level_names(key: str, levels: Any) -> None:
    """``levels`` must be a non-empty list of distinct ``c<i>`` names in increasing stride (``c<i>``: stride 2**i)."""
    example = "e.g. ['c3', 'c4', 'c5']; level c<i> has stride 2**i"
    check(key, levels, isinstance(levels, list | tuple), f"give a list of level names, {example}")
    check(key, levels, len(levels) > 0, f"give at least one level, {example}")
    for n in levels:
        check(key, levels, isinstance(n, str) and re.fullmatch(r"c[0-9]+", n) is not None,
              f"{n!r} is not a level name; {example}")  # fmt: skip
    idx = [int(n[1:]) for n in levels]
    check(key, levels, idx == sorted(set(idx)), f"list each level once, in increasing stride, {example}")


def backbone_for(
    backbone: str | Backbone, out_features: list[str], options: dict[str, Any]
) -> tuple[Backbone, tuple[float, ...], tuple[float, ...]]:
    """A features_only backbone with ``out_features``, and the image mean/std of its card."""
    if isinstance(backbone, str):
        valid = backbones.list_models(detection_ready=True)
        if backbone not in backbones.list_models():
            close = difflib.get_close_matches(backbone, valid, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown backbone {backbone!r}{hint}; detection-ready backbones: {', '.join(valid)}")
        if not backbones.model_card(backbone).detection_ready:
            raise ValueError(_not_ready(backbone, valid))
        model = backbones.create_model(backbone, features_only=True, out_features=tuple(out_features), **options)
    else:
        if options:
            raise TypeError(f"backbone options {sorted(options)} only apply when the backbone is given by name")
        model = backbone
        if not model.detection_ready:
            raise ValueError(_not_ready(getattr(model, "model_name", type(model).__name__), None))
        if not model.features_only:
            model.configure(features_only=True, out_features=tuple(out_features), norm=model.norm)
        missing = [n for n in out_features if n not in model.out_features]
        if missing:
            raise ValueError(
                f"the backbone returns {', '.join(model.out_features)} but the detector needs {', '.join(missing)}; "
                f"build it with out_features={tuple(out_features)}"
            )
    for n in out_features:
        model.feature(n)  # raises naming the model's levels
    card = getattr(model, "card", None)
    mean = tuple(card.mean) if card is not None else backbones.registry.IMAGENET_MEAN
    std = tuple(card.std) if card is not None else backbones.registry.IMAGENET_STD
    return model, mean, std


def check_backbone_weights(options: Mapping[str, Any], detector_weights: bool = False) -> None:
    """Warn loudly when a backbone with FrozenBN or frozen stages gets no trained weights.

    FrozenBN over a random init normalises nothing (running mean 0, variance 1), so activations grow layer by layer
    and the loss goes NaN within a few steps; frozen random stages never learn. A warning, not an error: a
    deterministic test may freeze BN on purpose, and weights may come later. ``detector_weights``: the run loads a
    detector checkpoint (``checkpoint=`` or ``resume=``).
    """
    frozen = ["backbone.norm=frozen_bn"] if options.get("norm") == "frozen_bn" else []
    if int(options.get("frozen_stages", -1)) >= 0:
        frozen.append(f"backbone.frozen_stages={options['frozen_stages']}")
    if frozen and not options.get("pretrained") and not detector_weights:
        logger.warning(
            "%s without trained weights (no backbone.pretrained, checkpoint or resume): FrozenBN over a random init "
            "normalises nothing and the loss goes NaN within a few steps; frozen random stages never learn. Train "
            "from scratch with backbone.norm=bn (or gn) and backbone.frozen_stages=-1, or give "
            "backbone.pretrained=true|<file> or checkpoint=<detector weights>",
            " and ".join(frozen),
        )


def _not_ready(name: str, valid: list[str] | None) -> str:
    msg = (
        f"backbone {name!r} is not detection-ready: it is a CIFAR classifier without stride 4..32 levels "
        f"(detection needs c2..c5)"
    )
    if valid:
        msg += f"; detection-ready backbones: {', '.join(valid)}"
    return msg


def build_detector(
    backbone: str | Backbone,
    detector_cfg: Mapping[str, Any] | str,
    num_classes: int,
    **backbone_options: Any,
) -> nn.Module:
    """A torchvision ``FasterRCNN`` / ``RetinaNet`` / ``FCOS`` / ``SSD`` around ``backbone``.

    Args:
        backbone: a registered name (built ``features_only`` with ``backbone_options``, e.g. ``norm="frozen_bn"``,
            ``frozen_stages=1``, ``pretrained=...``) or a :class:`~backbones.Backbone` instance.
        detector_cfg: ``{"name": <one of DETECTORS>, ...options}`` (a ``conf/detector`` group) or just the name.
        num_classes: object classes, background excluded.
    """
    cfg = resolve_config(detector_cfg)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1 (object classes, background excluded)")
    build = {"faster_rcnn": _faster_rcnn_fpn, "faster_rcnn_c4": _faster_rcnn_c4, "retinanet": _retinanet}
    build.update(fcos=_fcos, ssd=_ssd, ssdlite=_ssd)
    return build[cfg["name"]](backbone, cfg, num_classes, backbone_options)


def _rcnn_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    own = ("anchor_sizes", "aspect_ratios", "sampling_ratio", "box_loss_beta")
    return {k: cfg[k] for k in _FASTER_RCNN_COMMON if k not in own}


def _rcnn_losses(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    from .rcnn import TORCHVISION_BETA, set_box_loss_beta

    if cfg["box_loss_beta"] != TORCHVISION_BETA:
        set_box_loss_beta(model, cfg["box_loss_beta"])
    return model


def _faster_rcnn_fpn(backbone, cfg, num_classes, options) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    levels = list(cfg["levels"])
    check_levels(levels)
    body, mean, std = backbone_for(backbone, levels, options)
    divisibility = body.size_divisibility
    adapter = FeatureAdapter(body, "fpn", cfg["fpn_channels"], "pool" if cfg["pool_level"] else None)
    sizes = _per_map(cfg["anchor_sizes"], adapter.map_levels, "anchor_sizes")
    anchors = AnchorGenerator(sizes, (tuple(cfg["aspect_ratios"]),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(adapter.fpn_names, cfg["roi_output_size"], cfg["sampling_ratio"])
    model = FasterRCNN(
        adapter,
        num_classes=num_classes + 1,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        size_divisible=divisibility,
        **_rcnn_kwargs(cfg),
    )
    if cfg["representation_size"] != 1024:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        rep = cfg["representation_size"]
        model.roi_heads.box_head = TwoMLPHead(adapter.out_channels * cfg["roi_output_size"] ** 2, rep)
        model.roi_heads.box_predictor = FastRCNNPredictor(rep, num_classes + 1)
    check_choice("head_init", cfg["head_init"], HEAD_INITS)
    if cfg["head_init"] == "detectron2":
        from .rcnn import init_box_head

        init_box_head(model.roi_heads)
    return _rcnn_losses(model, cfg)


def _per_map(sizes: Any, names: list[str], what: str) -> tuple[tuple[int, ...], ...]:
    """One size tuple per feature map: a flat list gives one size per map, a list of lists several."""
    sizes = list(sizes)
    if len(sizes) != len(names):
        raise ValueError(
            f"{what} has {len(sizes)} entries but the detector has {len(names)} feature maps ({', '.join(names)}); "
            f"give one size (or a list of sizes) per map"
        )
    return tuple(tuple(s) if isinstance(s, list | tuple) else (int(s),) for s in sizes)


class _RoIStageHead(nn.Sequential):
    """The backbone's last stage applied to each RoI, then global average pooling: (R, C, h, w) -> (R, C')."""

    def __init__(self, stage: nn.Module, out_channels: int) -> None:
        super().__init__(OrderedDict(stage=stage, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))
        self.out_channels = out_channels


def _faster_rcnn_c4(backbone, cfg, num_classes, options) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    level = cfg["level"]
    if level not in ("c2", "c3", "c4"):
        raise ValueError(f"level={level!r} is not valid for faster_rcnn_c4; use c4 (the paper's stride 16), c3 or c2")
    body, mean, std = backbone_for(backbone, [level, "c5"], options)
    divisibility = body.size_divisibility
    stage = body.make_box_head(level)
    box_head = _RoIStageHead(stage, stage.out_channels)
    adapter = FeatureAdapter(body, "none")
    sizes = cfg["anchor_sizes"]
    sizes = tuple(int(s) for s in (sizes if isinstance(sizes, list | tuple) else [sizes]))
    anchors = AnchorGenerator((sizes,), (tuple(cfg["aspect_ratios"]),))
    roi_pool = MultiScaleRoIAlign(adapter.map_names, cfg["roi_output_size"], cfg["sampling_ratio"])
    model = FasterRCNN(
        adapter,
        num_classes=None,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_channels, num_classes + 1),
        size_divisible=divisibility,
        **_rcnn_kwargs(cfg),
    )
    return _rcnn_losses(model, cfg)


def _ssd(backbone, cfg, num_classes, options) -> nn.Module:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead
    from torchvision.models.detection.ssdlite import SSDLiteHead

    lite = cfg["name"] == "ssdlite"
    levels = list(cfg["levels"])
    body, mean, std = backbone_for(backbone, levels, options)
    adapter = FeatureAdapter(body, "extra", extra_channels=cfg["extra_channels"], depthwise=lite)
    ratios = [list(r) for r in cfg["aspect_ratios"]]
    if len(ratios) != len(adapter.map_names):
        raise ValueError(
            f"aspect_ratios has {len(ratios)} entries but the detector has {len(adapter.map_names)} feature maps "
            f"({', '.join(adapter.map_levels)} = levels + extra_channels); give one list per map"
        )
    anchors = DefaultBoxGenerator(ratios, min_ratio=cfg["min_ratio"], max_ratio=cfg["max_ratio"])
    num_anchors = anchors.num_anchors_per_location()
    if lite:
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision ssdlite320_mobilenet_v3_large
        head: nn.Module = SSDLiteHead(adapter.out_channels, num_anchors, num_classes + 1, norm)
    else:
        head = SSDHead(adapter.out_channels, num_anchors, num_classes + 1)
    size = cfg["size"]
    size = (int(size), int(size)) if isinstance(size, int | float) else tuple(int(s) for s in size)
    return SSD(
        adapter,
        anchors,
        size,
        num_classes + 1,
        image_mean=list(mean),
        image_std=list(std),
        head=head,
        score_thresh=cfg["score_thresh"],
        nms_thresh=cfg["nms_thresh"],
        detections_per_img=cfg["detections_per_img"],
        iou_thresh=cfg["iou_thresh"],
        topk_candidates=cfg["topk_candidates"],
    )


def _p3p7(backbone, cfg, options) -> tuple[FeatureAdapter, tuple[float, ...], tuple[float, ...]]:
    """The adapter's RetinaNet / FCOS layout: FPN over ``levels`` + P6, P7 from ``p6p7_from``."""
    levels = list(cfg["levels"])
    check_levels(levels)
    body, mean, std = backbone_for(backbone, levels, options)
    return FeatureAdapter(body, "fpn", cfg["fpn_channels"], "p6p7", cfg["p6p7_from"]), mean, std


def _one_stage_kwargs(cfg: dict[str, Any], adapter: FeatureAdapter, mean, std) -> dict[str, Any]:
    keys = ("min_size", "max_size", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")
    kw = {k: cfg[k] for k in keys}
    return dict(kw, image_mean=list(mean), image_std=list(std), size_divisible=adapter.body.size_divisibility)


def _retinanet(backbone, cfg, num_classes, options) -> nn.Module:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead

    from .onestage import RetinaNet

    adapter, mean, std = _p3p7(backbone, cfg, options)
    n = int(cfg["scales_per_octave"])
    check("scales_per_octave", n, n >= 1, "give a positive number of anchor scales per octave (paper: 3)")
    base = _per_map(cfg["anchor_sizes"], adapter.map_levels, "anchor_sizes")
    sizes = tuple(tuple(int(s * 2 ** (i / n)) for s in per_map for i in range(n)) for per_map in base)
    anchors = AnchorGenerator(sizes, (tuple(cfg["aspect_ratios"]),) * len(sizes))
    head = RetinaNetHead(adapter.out_channels, anchors.num_anchors_per_location()[0], num_classes)
    return RetinaNet(
        adapter,
        num_classes,
        anchor_generator=anchors,
        head=head,
        fg_iou_thresh=cfg["fg_iou_thresh"],
        bg_iou_thresh=cfg["bg_iou_thresh"],
        **_one_stage_kwargs(cfg, adapter, mean, std),
    )


def _fcos(backbone, cfg, num_classes, options) -> nn.Module:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    from .onestage import FCOS

    width = cfg["fpn_channels"]
    check("fpn_channels", width, width % 32 == 0, "FCOS's head normalises with GroupNorm(32, C): give a multiple of 32")
    adapter, mean, std = _p3p7(backbone, cfg, options)
    # one anchor point per location, its size the map's stride: torchvision's FCOS reads the per-level size ranges
    # ([0, 4s], [4s, 8s], ..., [8s, inf)) from the anchor sizes
    anchors = AnchorGenerator(tuple((s,) for s in adapter.strides), ((1.0,),) * len(adapter.strides))
    head = FCOSHead(adapter.out_channels, 1, num_classes, num_convs=cfg["num_convs"])
    return FCOS(
        adapter,
        num_classes,
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=cfg["center_sampling_radius"],
        **_one_stage_kwargs(cfg, adapter, mean, std),
    )


def convert_torchvision_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision detector's state dict (``backbone.body.<resnet names>``, ``backbone.fpn.*``, ``rpn.*``,
    ``roi_heads.*``) onto ``model``: the backbone keys go through the family's ``remap_state_dict``; the FPN, RPN
    and RoI-head keys are torchvision's own modules and keep their names."""
    body = model.backbone.body
    prefix = "backbone.body."
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in body.remap_state_dict(inner).items()})
    return out


_PREDICTOR = "roi_heads.box_predictor."


def select_classes(state: dict[str, Tensor], label_to_cat: Mapping[int, int]) -> dict[str, Tensor]:
    """Keep the rows of a Faster R-CNN box predictor whose class index is a category id of ``label_to_cat``.

    torchvision's COCO detectors predict the COCO category id itself (91 outputs: background and ids 1..90 with
    gaps); ours predict contiguous labels 1..K. Row 0 (background) and rows ``label_to_cat[1..K]`` of ``cls_score``,
    and the matching 4-row blocks of ``bbox_pred``, become our rows 0..K.
    """
    rows = [0] + [int(label_to_cat[k]) for k in sorted(label_to_cat)]
    cls_key = _PREDICTOR + "cls_score.weight"
    if cls_key not in state:
        raise KeyError(f"select_classes needs a Faster R-CNN state dict; {cls_key!r} is not in it")
    n = state[cls_key].shape[0]
    if max(rows) >= n:
        raise ValueError(
            f"category ids {sorted(r for r in rows if r >= n)[:10]} are beyond the checkpoint's {n} classes: the "
            f"checkpoint does not predict category ids of this dataset"
        )
    box_rows = [4 * r + j for r in rows for j in range(4)]  # bbox_pred: (classes * 4, C), 4 deltas per class
    out = dict(state)
    for name in ("weight", "bias"):
        out[_PREDICTOR + f"cls_score.{name}"] = state[_PREDICTOR + f"cls_score.{name}"][rows]
        out[_PREDICTOR + f"bbox_pred.{name}"] = state[_PREDICTOR + f"bbox_pred.{name}"][box_rows]
    return out


def load_detector_weights(
    model: nn.Module,
    source: str | os.PathLike | dict[str, Tensor],
    label_to_cat: Mapping[int, int] | None = None,
) -> None:
    """Load our detector state dict, a Lightning checkpoint of one, or a torchvision detector's state dict.

    Files are read with ``torch.load(weights_only=True)``. Mismatched keys are named
    (:class:`backbones.CheckpointMismatchError`).

    Args:
        label_to_cat: the dataset's label -> category id mapping. When the checkpoint's box predictor has another
            number of classes than ``model`` (torchvision's COCO detectors: one output per category id, 91), its
            rows are picked by category id (:func:`select_classes`), so torchvision's COCO weights evaluate on a
            COCO-format dataset with contiguous labels.
    """
    state = source if isinstance(source, dict) else read_state_dict(source)
    origin = "state dict" if isinstance(source, dict) else repr(os.fspath(source))
    own = model.state_dict()
    if not set(own) <= set(state):
        state = convert_torchvision_state_dict(model, state)
    cls_key = _PREDICTOR + "cls_score.weight"
    if label_to_cat is not None and cls_key in own and cls_key in state and own[cls_key].shape != state[cls_key].shape:
        n = state[cls_key].shape[0]
        state = select_classes(state, label_to_cat)
        logger.info(
            "%s: box predictor rows of %d category ids picked from its %d outputs", origin, len(label_to_cat), n
        )
    for k, v in own.items():  # BN counters are absent from FrozenBN checkpoints (torchvision's detectors)
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    load_state_dict_checked(model, state, origin)
    logger.info("loaded detector weights from %s", origin)


def detector_backbone(model: nn.Module) -> Backbone:
    """The :class:`~backbones.Backbone` inside a detector built by :func:`build_detector`."""
    return model.backbone.body
