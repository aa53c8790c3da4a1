"""ResNet, ResNeXt, SE-ResNet, SE-ResNeXt and SENet-154 as one bottleneck network with the papers' knobs.

Papers: He et al., "Deep Residual Learning for Image Recognition" (arXiv:1512.03385); Xie et al., "Aggregated Residual
Transformations for Deep Neural Networks" (ResNeXt, arXiv:1611.05431, Table 1: cardinality C and bottleneck width d);
Hu et al., "Squeeze-and-Excitation Networks" (SENet, arXiv:1709.01507, Table 1 and Fig. 3: the SE module on the
residual branch, before the add, reduction ratio r = 16).

Numbers: ``shared/reference/arch_reference.md`` sections 6 (ResNeXt) and 7 (SE-ResNet / SE-ResNeXt / SENet-154),
torchvision's weights metadata for the ResNet-50/101/152 baselines, ResNeXt Table 3/4 (slides in ``papers/002``) for
top-1 error.

Deviations, each behind an option:

* The Caffe SE-ResNet-50/101/152 (hujie-frank/SENet, timm ``legacy_seresnet*``) put the stride-2 of a stage's first
  block on the first 1x1 conv, not on the 3x3 as ResNeXt Table 1 and torchvision do: same parameters, fewer MACs
  (3.86 vs 4.09 G for -50). ``stride_in_1x1=True`` reproduces them, ``False`` gives the torchvision placement.
* The Caffe SENets pool the stem with ``MaxPool(3, 2, padding=0, ceil_mode=True)`` instead of ``padding=1``: the same
  output size for even sides, other windows (``pool_ceil_mode``).
* SENet-154 (arch_reference section 7): a stem of three 3x3 convs (``stem_type="deep"``), a first 1x1 conv of half
  the grouped width (``reduce_first=2``), 3x3 stride-2 projection shortcuts (``down_kernel_size=3``) and dropout 0.2
  before the classifier (``drop_rate``).

``reference_padding`` is accepted for the common contract; every padding here already matches the twins, and every
level ``c<i>`` is exactly ``H / 2**i`` for sides that are multiples of 32. For the same reason ``reference="timm"``
and ``"torchvision"`` (docs/weights.md) compute as the default.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone
from .checks import check, check_choice, check_int, check_probability
from .layers import DropPath, SqueezeExcite, check_se_ratio
from .registry import ModelCard, register_model, resolve_reference
from .weights import rename_keys

STEM_TYPES = ("7x7", "deep")
DOWN_KERNEL_SIZES = (1, 3)
EXPANSION = 4  # bottleneck output = 4 * planes (ResNet paper Table 1, ResNeXt Table 1)
STAGE_PLANES = (64, 128, 256, 512)  # ResNeXt Table 1: conv2..conv5 bottleneck "planes"


@dataclass(frozen=True)
class ResNeXtArch:
    """One row of the family table: the knobs of :class:`ResNeXt` that a registered variant fixes."""

    layers: tuple[int, int, int, int]  # blocks per stage conv2..conv5
    cardinality: int = 1  # C, groups of the 3x3 conv
    base_width: int = 64  # d, width of one group at planes=64; 3x3 width = floor(planes * d / 64) * C
    se_ratio: int | None = None  # SE reduction r; None/0 = no SE
    stem_type: str = "7x7"
    stride_in_1x1: bool = False
    down_kernel_size: int = 1  # kernel of the stride-2 projection shortcuts
    pool_ceil_mode: bool = False
    reduce_first: int = 1  # first 1x1 conv has width / reduce_first channels
    drop_rate: float = 0.0  # dropout before the classifier


ARCHS: dict[str, ResNeXtArch] = {
    # ResNet paper Table 1 = ResNeXt Table 1 (left); torchvision resnet.py
    "resnet50": ResNeXtArch((3, 4, 6, 3)),
    "resnet101": ResNeXtArch((3, 4, 23, 3)),
    "resnet152": ResNeXtArch((3, 8, 36, 3)),
    # ResNeXt Table 1 (right), arch_reference section 6
    "resnext50_32x4d": ResNeXtArch((3, 4, 6, 3), cardinality=32, base_width=4),
    "resnext101_32x4d": ResNeXtArch((3, 4, 23, 3), cardinality=32, base_width=4),
    "resnext101_32x8d": ResNeXtArch((3, 4, 23, 3), cardinality=32, base_width=8),
    "resnext101_64x4d": ResNeXtArch((3, 4, 23, 3), cardinality=64, base_width=4),
    # SENet Table 1 (middle), Caffe models: stride on the 1x1, ceil-mode pool (arch_reference section 7)
    "se_resnet50": ResNeXtArch((3, 4, 6, 3), se_ratio=16, stride_in_1x1=True, pool_ceil_mode=True),
    "se_resnet101": ResNeXtArch((3, 4, 23, 3), se_ratio=16, stride_in_1x1=True, pool_ceil_mode=True),
    "se_resnet152": ResNeXtArch((3, 8, 36, 3), se_ratio=16, stride_in_1x1=True, pool_ceil_mode=True),
    # SENet Table 1 (right): SE-ResNeXt-50 32x4d; stride on the grouped 3x3 (arch_reference section 7)
    "se_resnext50_32x4d": ResNeXtArch((3, 4, 6, 3), 32, 4, se_ratio=16, pool_ceil_mode=True),
    "se_resnext101_32x4d": ResNeXtArch((3, 4, 23, 3), 32, 4, se_ratio=16, pool_ceil_mode=True),
    # SENet-154, arch_reference section 7 (hujie-frank/SENet prototxt, timm legacy_senet154)
    "senet154": ResNeXtArch(
        (3, 8, 36, 3),
        cardinality=64,
        base_width=4,
        se_ratio=16,
        stem_type="deep",
        down_kernel_size=3,
        pool_ceil_mode=True,
        reduce_first=2,
        drop_rate=0.2,
    ),
}

# A twin's state-dict names -> ours, applied in order (regex, replacement). Blocks already use the twins' names
# (conv1..3, bn1..3, downsample.0/1), so only the stem, the stage prefixes, the SE module and the classifier move.
TWIN_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(conv1|bn1)\.", r"body.stem.\1."),  # torchvision / timm resnet.py stem
    (r"^layer0\.", "body.stem."),  # timm senet.py (legacy_*) stem: conv1/bn1 (.. conv3/bn3 for SENet-154)
    (r"^(layer[1-4])\.", r"body.\1."),
    (r"\.se_module\.", ".se."),  # timm senet.py SEModule (fc1, fc2)
    (r"^last_linear\.", "fc."),  # timm senet.py classifier
)


class Bottleneck(nn.Module):
    """1x1 -> grouped 3x3 -> 1x1 bottleneck (ResNeXt Fig. 3c), optional SE on the branch before the add (SENet
    Fig. 3), optional stochastic depth on the branch, projection shortcut when the shape changes."""

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        cardinality: int,
        base_width: int,
        reduce_first: int,
        se_ratio: int | None,
        stride_in_1x1: bool,
        down_kernel_size: int,
        drop_path: float,
    ) -> None:
        super().__init__()
        width = (planes * base_width // 64) * cardinality  # ResNeXt Table 1: C x d at planes=64
        first = width // reduce_first
        out_channels = planes * EXPANSION
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, first, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(first)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(first, width, 3, s3, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels, reduction=se_ratio) if se_ratio else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            k = down_kernel_size if stride != 1 else 1  # SENet-154: 3x3 only where the shortcut downsamples
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, k, stride, k // 2, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += shortcut  # in place: neither BN's nor the SE product's backward needs this tensor
        return self.act3(out)


def _stem(in_chans: int, stem_type: str) -> tuple[nn.Sequential, int]:
    """7x7/2 conv (ResNet) or three 3x3 convs 64/2, 64, 128 (SENet-154), each with BN and ReLU."""
    widths = [64] if stem_type == "7x7" else [64, 64, 128]
    kernel = 7 if stem_type == "7x7" else 3
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_chans
    for i, w in enumerate(widths, start=1):
        mods[f"conv{i}"] = nn.Conv2d(c, w, kernel, 2 if i == 1 else 1, kernel // 2, bias=False)
        mods[f"bn{i}"] = nn.BatchNorm2d(w)
        mods[f"act{i}"] = nn.ReLU(inplace=True)
        c = w
    return nn.Sequential(mods), c


class ResNeXt(Backbone):
    """Bottleneck residual network: ResNet (C=1, d=64), ResNeXt (C x d), SE variants (``se_ratio``), SENet-154.

    Levels: ``c1`` the stem output (stride 2, before the max-pool), ``c2``..``c5`` the four stage outputs.
    ``frozen_stages``: 0 = stem, i = stem and stages conv2..conv(i+1).

    Args:
        layers: blocks in each of the four stages.
        cardinality: groups C of the 3x3 convs.
        base_width: bottleneck width d of one group (at planes=64).
        se_ratio: SE reduction ratio r; None or 0 turns SE off.
        stem_type: ``"7x7"`` or ``"deep"`` (three 3x3 convs, SENet-154).
        stride_in_1x1: put the stride of a stage's first block on the first 1x1 conv (Caffe SE-ResNet).
        down_kernel_size: kernel (1 or 3) of the stride-2 projection shortcuts.
        pool_ceil_mode: stem max-pool with ``padding=0, ceil_mode=True`` (Caffe) instead of ``padding=1``.
        reduce_first: the first 1x1 conv has ``width // reduce_first`` channels.
        drop_rate: dropout before the classifier.
        num_classes: classifier outputs (0 = no classifier, pooled features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block; block i of n gets ``rate * i / (n - 1)``.
        reference_padding: accepted for the common contract; padding already matches the twins.
        zero_init_last: initialise the last BN scale of every block to zero, so each block starts as the identity
            (Goyal et al. 2017, arXiv:1706.02677 section 5.1; timm's default). It also keeps a randomly initialised
            deep SE network from being numerically chaotic.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        cardinality: int = 1,
        base_width: int = 64,
        se_ratio: int | None = None,
        stem_type: str = "7x7",
        stride_in_1x1: bool = False,
        down_kernel_size: int = 1,
        pool_ceil_mode: bool = False,
        reduce_first: int = 1,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        zero_init_last: bool = True,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, ("timm", "torchvision"), None)
        layers = tuple(layers)
        check(
            "layers",
            layers,
            len(layers) == 4 and all(isinstance(n, int) and n >= 1 for n in layers),
            "give four positive block counts, e.g. (3, 4, 6, 3)",
        )
        check_int("cardinality", cardinality, 1)
        check_int("base_width", base_width, 1)
        check_se_ratio(se_ratio)
        check_choice("stem_type", stem_type, STEM_TYPES)
        check_choice("down_kernel_size", down_kernel_size, DOWN_KERNEL_SIZES)
        check_int("reduce_first", reduce_first, 1)
        first_width = (STAGE_PLANES[0] * base_width // 64) * cardinality
        check(
            "cardinality",
            cardinality,
            first_width // reduce_first % cardinality == 0,
            f"the first 1x1 width {first_width}/{reduce_first} must be divisible by it",
        )
        check_probability("drop_rate", drop_rate)
        check_probability("drop_path_rate", drop_path_rate)
        self.reference_padding = reference_padding
        self.drop_rate = drop_rate

        stem, channels = _stem(in_chans, stem_type)
        body: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        self.add_feature(channels, 2, "body.stem")
        if pool_ceil_mode:  # Caffe: no padding, the last window may run past the border
            body["pool"] = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
        else:
            body["pool"] = nn.MaxPool2d(3, 2, padding=1)

        total = sum(layers)
        index = 0
        for stage, (num_blocks, planes) in enumerate(zip(layers, STAGE_PLANES, strict=True)):
            blocks = []
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                dpr = drop_path_rate * index / max(total - 1, 1)  # linear in depth (stochastic depth paper)
                blocks.append(
                    Bottleneck(
                        channels,
                        planes,
                        stride,
                        cardinality,
                        base_width,
                        reduce_first,
                        se_ratio,
                        stride_in_1x1,
                        down_kernel_size,
                        dpr,
                    )
                )
                channels = planes * EXPANSION
                index += 1
            body[f"layer{stage + 1}"] = nn.Sequential(*blocks)
            self.add_feature(channels, 4 * 2**stage, f"body.layer{stage + 1}")
        self.body = nn.ModuleDict(body)

        self.num_features = channels
        self.num_classes = num_classes
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # global average pool, (B, C, H, W) -> (B, C)
        if self.drop_rate > 0.0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map torchvision / timm ``resnet.py`` and timm ``senet.py`` (``legacy_*``) names onto ours."""
        return rename_keys(state_dict, TWIN_RENAMES)


def _card(table: str, params: int, macs: int, twins: dict[str, str], **kw) -> ModelCard:
    paper = kw.pop("paper", "Xie et al. 2017, ResNeXt, arXiv:1611.05431")
    return ModelCard(family="resnext", paper=paper, table=table, params=params, macs=macs, twins=twins, **kw)


_RESNET = "He et al. 2016, ResNet, arXiv:1512.03385; ResNeXt arXiv:1611.05431 Table 1"
_TV_META = "torchvision ResNet{}_Weights.IMAGENET1K_V1 meta (num_params, _ops GFLOPs at 224)"
_SENET = "Hu et al. 2018, SENet, arXiv:1709.01507, Table 1"
_SENET_NOTE = (
    "Caffe SE-ResNet: stride on the first 1x1 conv (stride_in_1x1=True), as the released weights; timm's non-legacy "
    "seresnet* put it on the 3x3 (same params, more MACs)."
)

register_model(
    "resnet50",
    ResNeXt,
    _card(
        _TV_META.format(50),
        25_557_032,
        4_089_000_000,
        {"torchvision": "resnet50", "timm": "resnet50"},
        paper=_RESNET,
        top1=76.1,
        notes="top-1 = 100 - 23.9 (ResNeXt Table 3, 1 x 64d)",
    ),
    **asdict(ARCHS["resnet50"]),
)
register_model(
    "resnet101",
    ResNeXt,
    _card(
        _TV_META.format(101),
        44_549_160,
        7_801_000_000,
        {"torchvision": "resnet101", "timm": "resnet101"},
        paper=_RESNET,
        top1=78.0,
        notes="top-1 = 100 - 22.0 (ResNeXt Table 3/4, 1 x 64d)",
    ),
    **asdict(ARCHS["resnet101"]),
)
register_model(
    "resnet152",
    ResNeXt,
    _card(
        _TV_META.format(152),
        60_192_808,
        11_514_000_000,
        {"torchvision": "resnet152", "timm": "resnet152"},
        paper=_RESNET,
    ),
    **asdict(ARCHS["resnet152"]),
)
register_model(
    "resnext50_32x4d",
    ResNeXt,
    _card(
        "arch_reference section 6 (computed; = torchvision meta 25,028,904 / 4.23 G)",
        25_028_904,
        4_230_000_000,
        {"torchvision": "resnext50_32x4d", "timm": "resnext50_32x4d"},
        top1=77.8,
        paper_params=25.0e6,
        paper_macs=4.2e9,
        notes="top-1 = 100 - 22.2 (ResNeXt Table 3)",
    ),
    **asdict(ARCHS["resnext50_32x4d"]),
)
register_model(
    "resnext101_32x4d",
    ResNeXt,
    _card(
        "arch_reference section 6 (computed)",
        44_177_704,
        7_970_000_000,
        {"timm": "resnext101_32x4d"},
        top1=78.8,
        notes="top-1 = 100 - 21.2 (ResNeXt Table 3/4)",
    ),
    **asdict(ARCHS["resnext101_32x4d"]),
)
register_model(
    "resnext101_32x8d",
    ResNeXt,
    _card(
        "arch_reference section 6 (computed; = torchvision meta 88,791,336 / 16.414 G)",
        88_791_336,
        16_414_000_000,
        {"torchvision": "resnext101_32x8d"},
    ),
    **asdict(ARCHS["resnext101_32x8d"]),
)
register_model(
    "resnext101_64x4d",
    ResNeXt,
    _card(
        "arch_reference section 6 (computed; = torchvision meta 83,455,272 / 15.46 G)",
        83_455_272,
        15_460_000_000,
        {"torchvision": "resnext101_64x4d"},
        top1=79.6,
        paper_params=83.6e6,
        notes="paper 83.6 M (NASNet Table 2) vs 83,455,272 counted here and in torchvision; cause not found. "
        "top-1 = 100 - 20.4 (ResNeXt Table 4)",
    ),
    **asdict(ARCHS["resnext101_64x4d"]),
)
register_model(
    "se_resnet50",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_seresnet50)",
        28_088_024,
        3_860_000_000,
        {"timm": "legacy_seresnet50"},
        paper=_SENET,
        notes=_SENET_NOTE,
    ),
    **asdict(ARCHS["se_resnet50"]),
)
register_model(
    "se_resnet101",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_seresnet101)",
        49_326_872,
        7_575_000_000,
        {"timm": "legacy_seresnet101"},
        paper=_SENET,
        notes=_SENET_NOTE,
    ),
    **asdict(ARCHS["se_resnet101"]),
)
register_model(
    "se_resnet152",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_seresnet152)",
        66_821_848,
        11_289_000_000,
        {"timm": "legacy_seresnet152"},
        paper=_SENET,
        notes=_SENET_NOTE,
    ),
    **asdict(ARCHS["se_resnet152"]),
)
register_model(
    "se_resnext50_32x4d",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_seresnext50_32x4d)",
        27_559_896,
        4_233_000_000,
        {"timm": "legacy_seresnext50_32x4d"},
        paper=_SENET,
    ),
    **asdict(ARCHS["se_resnext50_32x4d"]),
)
register_model(
    "se_resnext101_32x4d",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_seresnext101_32x4d)",
        48_955_416,
        7_975_000_000,
        {"timm": "legacy_seresnext101_32x4d"},
        paper=_SENET,
    ),
    **asdict(ARCHS["se_resnext101_32x4d"]),
)
register_model(
    "senet154",
    ResNeXt,
    _card(
        "arch_reference section 7 (computed, timm legacy_senet154)",
        115_088_984,
        20_688_000_000,
        {"timm": "legacy_senet154"},
        paper=_SENET,
        notes="NASNet Table 2 lists 'SENet' at 145.8 M / 42.3 B (320 px), inconsistent with SENet-154; "
        "115,088,984 is the released network",
    ),
    **asdict(ARCHS["senet154"]),
)
