"""detectron2 plugin: every detection-ready backbone of the registry in detectron2's ``BACKBONE_REGISTRY``.

Importing this module registers, for each detection-ready model ``<name>``:

* ``build_<name>_backbone``: the bare backbone (levels ``cfg.MODEL.CNN_BACKBONE.OUT_FEATURES``);
* ``build_<name>_fpn_backbone``: the same under detectron2's ``FPN`` with ``LastLevelMaxPool`` (p2..p6).

Both honour ``MODEL.BACKBONE.FREEZE_AT`` (0 none, 1 stem, k stem and k-1 stages) and the norm in
``MODEL.CNN_BACKBONE.NORM`` (``FrozenBN``, ``BN``, ``SyncBN``, ``GN``). :func:`configure_backbone` fills a config
for one model, including the card's pixel mean/std (RGB, 0-255) that its weights expect::

    from detectron2.config import get_cfg
    from detection.detectron2 import configure_backbone
    cfg = get_cfg()
    configure_backbone(cfg, "nasnet_a_mobile", fpn=True, weights="nasnetamobile.pth")

detectron2 is not on PyPI: without it, importing this module raises ImportError saying how to install it.
"""

from __future__ import annotations

from typing import Any

try:
    from detectron2.config import CfgNode
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY
    from detectron2.modeling import Backbone as D2Backbone
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "detection.detectron2 needs detectron2, which is not on PyPI. Install it from its source repository "
        "(facebookresearch/detectron2) after torch: `pip install --no-build-isolation <path or VCS URL of "
        f"detectron2>`. Original error: {e}"
    ) from e

from torch import Tensor

import backbones

NORMS = {"": "bn", "BN": "bn", "FrozenBN": "frozen_bn", "SyncBN": "sync_bn", "nnSyncBN": "sync_bn", "GN": "gn"}


class CNNBackbone(D2Backbone):
    """A registered backbone as a detectron2 ``Backbone``: ordered ``c<i>`` features, ``output_shape()``,
    ``size_divisibility`` and ``padding_constraints`` from the backbone's own feature metadata."""

    def __init__(
        self,
        name: str,
        out_features: tuple[str, ...] | list[str] = ("c2", "c3", "c4", "c5"),
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        weights: str = "",
        in_chans: int = 3,
        **options: Any,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not valid; choose one of {', '.join(repr(n) for n in NORMS)}")
        if not backbones.model_card(name).detection_ready:
            raise ValueError(f"{name!r} is a CIFAR classification model, not a detection backbone")
        if freeze_at < 0:
            raise ValueError(f"FREEZE_AT={freeze_at} must be >= 0")
        self.body = backbones.create_model(
            name,
            features_only=True,
            out_features=tuple(out_features),
            norm=NORMS[norm],
            frozen_stages=freeze_at - 1,
            pretrained=weights or False,
            in_chans=in_chans,
            **options,
        )
        self._out_features = list(self.body.out_features)
        self._out_feature_channels = dict(self.body.out_channels)
        self._out_feature_strides = dict(self.body.out_strides)

    @classmethod
    def from_config(cls, cfg: CfgNode, name: str, input_shape: ShapeSpec) -> CNNBackbone:
        node = cfg.MODEL.CNN_BACKBONE
        return cls(
            name,
            out_features=tuple(node.OUT_FEATURES),
            norm=node.NORM,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            weights=node.WEIGHTS,
            in_chans=input_shape.channels,
            drop_path_rate=node.DROP_PATH_RATE,
        )

    @property
    def size_divisibility(self) -> int:
        return self.body.size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.body.size_divisibility}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(self.body(x))


def add_backbone_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.CNN_BACKBONE`` (OUT_FEATURES, NORM, WEIGHTS, DROP_PATH_RATE) to a detectron2 config."""
    if "CNN_BACKBONE" not in cfg.MODEL:
        cfg.MODEL.CNN_BACKBONE = CfgNode(
            {"OUT_FEATURES": ["c2", "c3", "c4", "c5"], "NORM": "FrozenBN", "WEIGHTS": "", "DROP_PATH_RATE": 0.0}
        )
    return cfg


def configure_backbone(cfg: CfgNode, name: str, fpn: bool = True, weights: str = "") -> CfgNode:
    """Point ``cfg`` at backbone ``name``: builder name, feature names, RGB input with the card's mean/std (0-255).

    With ``fpn=False`` the detector runs RPN and RoI heads on the single stride-16 level ``c4``.
    """
    card = backbones.model_card(name)
    if not card.detection_ready:
        valid = ", ".join(backbones.list_models(detection_ready=True))
        raise ValueError(f"{name!r} is not detection-ready (CIFAR model); detection-ready models: {valid}")
    add_backbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = f"build_{name}_fpn_backbone" if fpn else f"build_{name}_backbone"
    cfg.MODEL.CNN_BACKBONE.WEIGHTS = weights
    cfg.MODEL.PIXEL_MEAN = [255.0 * m for m in card.mean]
    cfg.MODEL.PIXEL_STD = [255.0 * s for s in card.std]
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    if fpn:  # detectron2's Base-RCNN-FPN layout, on our level names
        cfg.MODEL.CNN_BACKBONE.OUT_FEATURES = ["c2", "c3", "c4", "c5"]
        cfg.MODEL.FPN.IN_FEATURES = ["c2", "c3", "c4", "c5"]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    else:
        cfg.MODEL.CNN_BACKBONE.OUT_FEATURES = ["c4"]
        cfg.MODEL.RPN.IN_FEATURES = ["c4"]
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["c4"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
    return cfg


def _register(name: str) -> None:
    def build_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> CNNBackbone:
        add_backbone_config(cfg)
        return CNNBackbone.from_config(cfg, name, input_shape)

    def build_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
        return FPN(
            bottom_up=build_backbone(cfg, input_shape),
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=LastLevelMaxPool(),
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )

    for fn, fn_name in ((build_backbone, f"build_{name}_backbone"), (build_fpn_backbone, f"build_{name}_fpn_backbone")):
        fn.__name__ = fn.__qualname__ = fn_name
        if fn_name not in BACKBONE_REGISTRY:
            BACKBONE_REGISTRY.register(fn)


for _name in backbones.list_models(detection_ready=True):
    _register(_name)
