"""ONE adapter from a ``features_only`` backbone to what torchvision's detectors expect, and its one-call builder.

torchvision's detectors want a module that returns an ordered dict of maps and has an ``out_channels`` attribute:
one int for ``FasterRCNN`` / ``RetinaNet`` / ``FCOS``, the list of every map's channels for ``SSD``. A bare
``features_only`` backbone has ``out_channels`` as a dict (``{"c3": 64, ...}``, detectron2's style), which
torchvision cannot use; :class:`FeatureAdapter` (or :func:`fpn_backbone`, like torchvision's
``resnet_fpn_backbone``) is the torchvision-ready module.

The maps are named as torchvision's own FPN backbones name them: ``'0'``, ``'1'``, ... from the highest
resolution, then ``'pool'`` (``LastLevelMaxPool``) or ``'p6'``, ``'p7'`` (``LastLevelP6P7``). So torchvision's
defaults work as they are: ``FasterRCNN(adapter, num_classes)`` without ``box_roi_pool`` gets
``MultiScaleRoIAlign(['0', '1', '2', '3'])``, which pools from the FPN levels the adapter has (never from
``pool``). ``map_levels`` says which backbone level each map is (``c3``, ``c4``, ..., ``c6`` for ``pool``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from backbones import Backbone
from backbones.checks import check, check_choice
from backbones.layers import ConvNormAct

NECKS = ("fpn", "extra", "none")
#: what follows the FPN levels: torchvision's ``LastLevelMaxPool`` (Faster R-CNN), ``LastLevelP6P7`` (RetinaNet,
#: FCOS) or nothing
TOP_BLOCKS = ("pool", "p6p7", None)
#: the input of P6 for ``top_block="p6p7"``: C5 (RetinaNet paper, Lin et al. 2017, section 4) or P5 (FCOS paper,
#: Tian et al. 2019, section 3.2; torchvision's retinanet_resnet50_fpn v1 and fcos_resnet50_fpn)
P6P7_SOURCES = ("c5", "p5")


class FeatureAdapter(nn.Module):
    """A ``features_only`` backbone as a torchvision detector backbone: ordered dict of maps + ``out_channels``.

    Channels and strides come from the backbone's ``feature_info`` (known before any forward). ``neck``:

    * ``"fpn"``: torchvision ``FeaturePyramidNetwork`` over the backbone levels, then ``top_block``: ``"pool"``
      (a stride-2 subsampled P5, ``LastLevelMaxPool``), ``"p6p7"`` (two stride-2 3x3 convs, ``LastLevelP6P7``, from
      ``p6p7_from`` = ``"c5"`` or ``"p5"``) or None; ``out_channels`` is the FPN width (one int);
    * ``"extra"``: the backbone levels followed by stride-2 ``extra_channels`` blocks (SSD; ``depthwise`` for
      SSDLite); ``out_channels`` is the list of every map's channels (as ``SSD`` requires);
    * ``"none"``: the backbone levels as they are (one level: ``out_channels`` is an int, for the C4 detector).

    Attributes:
        map_names: the keys of the output dict (torchvision's: ``'0'``, ``'1'``, ..., ``'pool'`` / ``'p6'``, ``'p7'``).
        map_levels: the level of each map in the backbone's naming (``c3``, ..., ``c6``, ``c7``).
        strides: the stride of each map.
        fpn_names: the maps that come out of the FPN proper (what a RoI pooler should pool from).
    """

    def __init__(
        self,
        body: Backbone,
        neck: str = "none",
        fpn_channels: int = 256,
        top_block: str | None = "pool",
        p6p7_from: str = "c5",
        extra_channels: tuple[int, ...] | list[int] = (),
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if not getattr(body, "features_only", False):
            raise ValueError(
                f"FeatureAdapter needs a features_only backbone, got {type(body).__name__}; build it with "
                f"backbones.create_model(name, features_only=True, out_features=(...)) or call detection.fpn_backbone"
            )
        check_choice("neck", neck, NECKS)
        self.body = body
        self.neck = neck
        self.levels = list(body.out_features)
        in_channels = [body.out_channels[n] for n in self.levels]
        self.strides: list[int] = [body.out_strides[n] for n in self.levels]
        self.map_levels = list(self.levels)
        names = [str(i) for i in range(len(self.levels))]
        if neck == "fpn":
            self.fpn = _fpn(in_channels, fpn_channels, top_block, p6p7_from)
            self.out_channels: int | list[int] = fpn_channels
            extra = {"pool": ["pool"], "p6p7": ["p6", "p7"], None: []}[top_block]
        elif neck == "extra":
            blocks, c = [], in_channels[-1]
            for out in extra_channels:
                blocks.append(_extra_block(c, out, depthwise))
                c = out
            self.extra = nn.ModuleList(blocks)
            self.out_channels = in_channels + list(extra_channels)
            extra = [str(len(names) + i) for i in range(len(blocks))]
        else:
            self.out_channels = in_channels[0] if len(in_channels) == 1 else in_channels
            extra = []
        self.fpn_names = list(names)
        self.map_names = names + extra
        for _ in extra:
            self.strides.append(self.strides[-1] * 2)
            self.map_levels.append(f"c{self.strides[-1].bit_length() - 1}")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        maps = OrderedDict((name, feats[level]) for name, level in zip(self.fpn_names, self.levels))
        if self.neck == "fpn":
            return self.fpn(maps)
        if self.neck == "extra":
            y = maps[self.fpn_names[-1]]
            for name, block in zip(self.map_names[len(self.levels) :], self.extra):
                y = block(y)
                maps[name] = y
        return maps


def _fpn(in_channels: list[int], out_channels: int, top_block: str | None, p6p7_from: str) -> nn.Module:
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

    check_choice("top_block", top_block, TOP_BLOCKS)
    extra: Any = None
    if top_block == "pool":
        extra = LastLevelMaxPool()
    elif top_block == "p6p7":
        check_choice("p6p7_from", p6p7_from, P6P7_SOURCES)
        extra = LastLevelP6P7(out_channels if p6p7_from == "p5" else in_channels[-1], out_channels)
        # torchvision picks P5 whenever in == out channels; the option decides here, also when C5 has the FPN width
        extra.use_P5 = p6p7_from == "p5"
    return FeaturePyramidNetwork(in_channels, out_channels, extra)


def _extra_block(in_channels: int, out_channels: int, depthwise: bool) -> nn.Sequential:
    """A stride-2 extra layer: SSD's 1x1 (out/2) -> 3x3/2 (out), or SSDLite's 1x1 -> depthwise 3x3/2 -> 1x1."""
    mid = out_channels // 2
    if depthwise:
        return nn.Sequential(
            ConvNormAct(in_channels, mid, 1),
            ConvNormAct(mid, mid, 3, stride=2, groups=mid),
            ConvNormAct(mid, out_channels, 1),
        )
    return nn.Sequential(ConvNormAct(in_channels, mid, 1), ConvNormAct(mid, out_channels, 3, stride=2))


def fpn_backbone(
    backbone: str | Backbone,
    levels: tuple[str, ...] | list[str] = ("c2", "c3", "c4", "c5"),
    fpn_channels: int = 256,
    top_block: str | None = "pool",
    p6p7_from: str = "c5",
    **options: Any,
) -> FeatureAdapter:
    """A registered backbone under torchvision's FPN, ready for torchvision's ``FasterRCNN`` / ``RetinaNet`` /
    ``FCOS`` (the counterpart of torchvision's ``resnet_fpn_backbone``).

    Args:
        backbone: a registered, detection-ready name (built ``features_only`` with ``levels`` and ``options``,
            e.g. ``norm="frozen_bn"``, ``frozen_stages=1``, ``pretrained=...``) or a ``features_only`` instance.
        levels: consecutive backbone levels that enter the FPN (c2..c5 for Faster R-CNN, c3..c5 for RetinaNet).
        top_block: ``"pool"`` (Faster R-CNN's P6), ``"p6p7"`` (RetinaNet / FCOS) or None.
        p6p7_from: ``"c5"`` or ``"p5"``, the input of P6 with ``top_block="p6p7"``.
    """
    from .models import backbone_for

    check_levels(list(levels))
    body, _, _ = backbone_for(backbone, list(levels), options)
    return FeatureAdapter(body, "fpn", fpn_channels, top_block, p6p7_from)


def check_levels(levels: list[str]) -> None:
    """FPN levels must be consecutive ``c<i>`` names: RoIAlign and the top-down pathway step one octave at a time."""
    ok = bool(levels) and all(isinstance(n, str) and n[:1] == "c" and n[1:].isdigit() for n in levels)
    idx = [int(n[1:]) for n in levels] if ok else []
    check("levels", levels, ok and idx == list(range(idx[0], idx[0] + len(idx))), "give consecutive levels, e.g. "
          "['c2', 'c3', 'c4', 'c5']: the FPN and RoIAlign step one octave (stride x2) per level")  # fmt: skip
