"""detectron2 plugin: every detection-ready backbone of the registry in detectron2's ``BACKBONE_REGISTRY``.

Importing this module registers, for each detection-ready model ``<name>``:

* ``build_<name>_backbone``: the bare backbone (levels ``cfg.MODEL.CNN_BACKBONE.OUT_FEATURES``);
* ``build_<name>_fpn_backbone``: the same under detectron2's ``FPN`` with ``LastLevelMaxPool`` (p2..p6).

Both honour ``MODEL.BACKBONE.FREEZE_AT`` (0 none, 1 stem, k stem and k-1 stages) and the norm in
``MODEL.CNN_BACKBONE.NORM`` (``FrozenBN``, ``BN``, ``SyncBN``, ``GN``); FrozenBN or frozen stages without trained
weights are refused (they cannot train). :func:`configure_backbone` points a config at one model and changes only what
the backbone determines (builder name, feature names, the card's RGB pixel mean/std); heads, anchors and the solver
stay as the config has them::

    from detectron2.config import get_cfg
    from detection.detectron2 import add_backbone_config, configure_backbone
    cfg = add_backbone_config(get_cfg())
    cfg.merge_from_file("detection/configs/faster_rcnn_cnn_fpn.yaml")   # or any FPN config of detectron2
    configure_backbone(cfg, "nasnet_a_mobile", fpn=True, weights="nasnetamobile.pth")

detectron2 is not on PyPI: without it, importing this module raises ImportError saying how to install it.
"""

from __future__ import annotations

import logging
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
from backbones.checks import check, check_choice

NORMS = {"": "bn", "BN": "bn", "FrozenBN": "frozen_bn", "SyncBN": "sync_bn", "nnSyncBN": "sync_bn", "GN": "gn"}


#: what ``FREEZE_AT`` means (detectron2's key; the package's ``frozen_stages`` is ``FREEZE_AT - 1``)
FREEZE_AT_MEANING = "0 (nothing frozen), 1 (the stem) or k (the stem and the first k - 1 stages)"
#: detectron2's ResNet feature names, which a config written for detectron2's own backbones carries
_RESNET_NAMES = {f"res{i}": f"c{i}" for i in range(2, 6)}
#: the levels every detection-ready backbone has (DESIGN.md, the backbone contract)
DETECTION_LEVELS = ("c2", "c3", "c4", "c5")

logger = logging.getLogger(__name__)


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
        check_choice("MODEL.CNN_BACKBONE.NORM", norm, NORMS)
        if not backbones.model_card(name).detection_ready:
            raise ValueError(f"{name!r} is a CIFAR classification model, not a detection backbone")
        if not weights and (norm == "FrozenBN" or freeze_at > 0):
            logger.warning("%s", _untrained_frozen(name, norm, freeze_at))
        try:
            self.body = backbones.create_model(
                name,
                features_only=True,
                out_features=tuple(out_features),
                norm=NORMS[norm],
                frozen_stages=freeze_at - 1 if isinstance(freeze_at, int) else freeze_at,
                pretrained=weights or False,
                in_chans=in_chans,
                **options,
            )
        except ValueError as e:
            if "frozen_stages" not in str(e):
                raise
            # the package counts frozen_stages = FREEZE_AT - 1; name detectron2's key and its range instead
            n = _num_stages(name, out_features) + 1
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT={freeze_at!r} is not valid for {name}; use {FREEZE_AT_MEANING}: 0..{n}"
            ) from e
        self._out_features = list(self.body.out_features)
        self._out_feature_channels = dict(self.body.out_channels)
        self._out_feature_strides = dict(self.body.out_strides)

    @classmethod
    def from_config(cls, cfg: CfgNode, name: str, input_shape: ShapeSpec) -> CNNBackbone:
        """Build from ``MODEL.CNN_BACKBONE`` / ``MODEL.BACKBONE.FREEZE_AT``; refuses FrozenBN or frozen stages when
        neither ``MODEL.CNN_BACKBONE.WEIGHTS`` nor ``MODEL.WEIGHTS`` gives trained weights."""
        check_pretrained(cfg)
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


def _num_stages(name: str, out_features: tuple[str, ...] | list[str]) -> int:
    """Stages after the stem up to the deepest requested level (what ``frozen_stages`` counts)."""
    probe = backbones.create_model(name, features_only=True, out_features=tuple(out_features))
    return max(f.stage for f in probe.feature_info)


def _untrained_frozen(name: str, norm: str, freeze_at: int) -> str:
    what = " and ".join(
        s for s in (f"MODEL.CNN_BACKBONE.NORM={norm!r}" if norm == "FrozenBN" else "",
                    f"MODEL.BACKBONE.FREEZE_AT={freeze_at}" if freeze_at > 0 else "") if s
    )  # fmt: skip
    return (
        f"{what} with no trained weights for {name} (MODEL.CNN_BACKBONE.WEIGHTS and MODEL.WEIGHTS are empty): "
        f"FrozenBN over a random init normalises nothing (the loss goes NaN within ~10 iterations) and frozen random "
        f"stages never learn. Give MODEL.CNN_BACKBONE.WEIGHTS=<backbone file> (or MODEL.WEIGHTS=<detector "
        f"checkpoint>), or train from scratch with MODEL.CNN_BACKBONE.NORM='BN' (or 'GN', 'SyncBN') and "
        f"MODEL.BACKBONE.FREEZE_AT=0"
    )


def check_pretrained(cfg: CfgNode) -> None:
    """Raise ``ValueError`` when the config freezes norms or stages of a backbone that gets no trained weights."""
    node, freeze_at = cfg.MODEL.CNN_BACKBONE, cfg.MODEL.BACKBONE.FREEZE_AT
    if not (node.WEIGHTS or cfg.MODEL.WEIGHTS) and (node.NORM == "FrozenBN" or freeze_at > 0):
        name = cfg.MODEL.BACKBONE.NAME.removeprefix("build_").removesuffix("_backbone").removesuffix("_fpn")
        raise ValueError(_untrained_frozen(name, node.NORM, freeze_at))


def add_backbone_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.CNN_BACKBONE`` (OUT_FEATURES, NORM, WEIGHTS, DROP_PATH_RATE) to a detectron2 config."""
    if "CNN_BACKBONE" not in cfg.MODEL:
        cfg.MODEL.CNN_BACKBONE = CfgNode(
            {"OUT_FEATURES": ["c2", "c3", "c4", "c5"], "NORM": "FrozenBN", "WEIGHTS": "", "DROP_PATH_RATE": 0.0}
        )
    return cfg


def configure_backbone(cfg: CfgNode, name: str, fpn: bool = True, weights: str | None = None) -> CfgNode:
    """Point ``cfg`` at backbone ``name``, changing only what the backbone determines.

    Sets ``MODEL.BACKBONE.NAME`` (``build_<name>_fpn_backbone`` or ``build_<name>_backbone``), the card's
    ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (RGB, 0-255), ``INPUT.FORMAT = "RGB"``, ``MODEL.CNN_BACKBONE.WEIGHTS`` when
    ``weights`` is given, and the feature names: detectron2's ResNet names (``res2``..``res5``) in
    ``MODEL.FPN.IN_FEATURES`` (FPN) or ``MODEL.RPN.IN_FEATURES`` / ``MODEL.ROI_HEADS.IN_FEATURES`` (no FPN) become
    the same levels ``c2``..``c5``, and ``MODEL.CNN_BACKBONE.OUT_FEATURES`` the levels those keys read. Every other key
    (heads, anchors, proposals, solver, ...) stays as the config has it. The config must suit a non-ResNet backbone:
    ``ROI_HEADS.NAME`` ``Res5ROIHeads`` (detectron2's C4 default, a ResNet res5 stage as box head) is refused, and
    in-features that the backbone or its FPN does not produce are named, before any model is built.

    Raises:
        ValueError: unknown or CIFAR ``name``, ``Res5ROIHeads``, or in-features the backbone does not have. FrozenBN
            or frozen stages without trained weights are refused when the model is built (:func:`check_pretrained`):
            ``MODEL.WEIGHTS`` may still be set after this call.
    """
    valid = backbones.list_models(detection_ready=True)
    check_choice("backbone", name, valid)
    add_backbone_config(cfg)
    card = backbones.model_card(name)
    cfg.MODEL.BACKBONE.NAME = f"build_{name}_fpn_backbone" if fpn else f"build_{name}_backbone"
    if weights is not None:
        cfg.MODEL.CNN_BACKBONE.WEIGHTS = weights
    cfg.MODEL.PIXEL_MEAN = [255.0 * m for m in card.mean]
    cfg.MODEL.PIXEL_STD = [255.0 * s for s in card.std]
    cfg.INPUT.FORMAT = "RGB"
    if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        raise ValueError(
            f"MODEL.ROI_HEADS.NAME='Res5ROIHeads' runs detectron2's own ResNet res5 stage (MODEL.RESNETS.*) as the "
            f"box head, which does not fit {name}; use StandardROIHeads or CascadeROIHeads (e.g. merge "
            f"detection/configs/faster_rcnn_cnn_fpn.yaml or detectron2's Base-RCNN-FPN.yaml first)"
        )
    levels = list(DETECTION_LEVELS)
    if fpn:
        ins = _rename("MODEL.FPN.IN_FEATURES", cfg.MODEL.FPN.IN_FEATURES, levels)
        cfg.MODEL.FPN.IN_FEATURES = ins
        # detectron2's FPN names its outputs p<i> after the stride of each input, plus p<last + 1> (LastLevelMaxPool)
        outs = [f"p{lv[1:]}" for lv in ins] + [f"p{int(ins[-1][1:]) + 1}"]
        for key in ("RPN", "ROI_HEADS"):
            _check_names(f"MODEL.{key}.IN_FEATURES", cfg.MODEL[key].IN_FEATURES, outs)
    else:
        ins = []
        for key in ("RPN", "ROI_HEADS"):
            cfg.MODEL[key].IN_FEATURES = _rename(f"MODEL.{key}.IN_FEATURES", cfg.MODEL[key].IN_FEATURES, levels)
            ins += [n for n in cfg.MODEL[key].IN_FEATURES if n not in ins]
        ins.sort(key=levels.index)
    cfg.MODEL.CNN_BACKBONE.OUT_FEATURES = list(ins)
    return cfg


def _rename(key: str, names: list[str], levels: list[str]) -> list[str]:
    out = [_RESNET_NAMES.get(n, n) for n in names]
    _check_names(key, out, levels)
    return out


def _check_names(key: str, names: list[str], valid: list[str]) -> None:
    bad = [n for n in names if n not in valid]
    check(key, list(names), not bad and bool(names), f"{bad or 'it is empty'}: the maps are {', '.join(valid)}")


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
