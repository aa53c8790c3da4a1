"""ShuffleNet v1: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
arXiv:1707.01083.

Table 1 as data: a 3x3/2 stem conv with 24 filters and a 3x3/2 max-pool, then stages 2, 3, 4 of [4, 8, 4] ShuffleNet
units (the first of each has stride 2), global average pooling and one FC layer. A unit (Fig. 2 b/c, §3.2) is

    1x1 GConv (groups g, bottleneck m = out / 4) -> BN -> ReLU -> channel shuffle -> 3x3 DWConv (stride) -> BN
    -> 1x1 GConv (groups g) -> BN,

with no ReLU after the depthwise conv; a stride-1 unit returns ``ReLU(x + branch)``, a stride-2 unit
``concat(AvgPool3x3/2(x), ReLU(branch))`` with a branch of ``out - in`` channels. The first pointwise conv of Stage 2
is not grouped (Table 1 footnote 1: its input has only 24 channels). Scale s (§4.1.1, "ShuffleNet s×") multiplies the
channels; the scaled stems are megvii's official ones (ShuffleNet-Series ``ShuffleNetV1/network.py``), not s x 24
(arch_reference §5).

Options:
* ``channel_shuffle=False`` removes the shuffle: paper Table 3's ablation;
* ``se_ratio > 0`` puts a squeeze-and-excitation block on every unit's branch, after its last BN and before the
  add / concat (SE-ShuffleNet, Table 5 "with SE"); ``se_ratio=16`` is SENet's r = 16, which adds 2.4 M mult-adds to
  2x (g = 3), consistent with Table 5's 527 vs 524 MFLOPs;
* ``drop_path_rate``: stochastic depth on the branch of the stride-1 units (the only residuals), rising linearly
  from 0 at the first unit to the rate at the last;
* ``reference_padding`` is accepted and changes nothing: the reference pads every conv and pool by ``k // 2``,
  which already gives every level exactly ``H / 2**i``.
* ``reference="megvii"`` (docs/weights.md) shuffles as megvii-model/ShuffleNet-Series does (``blocks.py``
  ``channel_shuffle``: reshape to (n, g), permute to (g, n)), the inverse of the paper's permutation: the network
  their released g3 / g8 weights were trained in.

The classifier has no bias, as in the megvii reference the card's counts come from. Levels: c1 = stem conv
(stride 2), c2 = after the max-pool (stride 4, the stem's channels), c3..c5 = Stage 2..4 outputs; for
``frozen_stages`` the stem is stage 0 and the max-pool stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone
from .checks import check_probability
from .layers import ConvNormAct, DropPath, SqueezeExcite, channel_shuffle, check_se_ratio
from .registry import ModelCard, register_model, resolve_reference

PAPER = "Zhang et al. 2017, ShuffleNet, arXiv:1707.01083"

STAGE_REPEATS = (4, 8, 4)  # Table 1: Stage2 / 3 / 4 = one stride-2 unit + 3 / 7 / 3 stride-1 units
# (groups g, scale s) -> output channels of (stem, Stage2, Stage3, Stage4)
STAGE_CHANNELS: dict[tuple[int, float], tuple[int, int, int, int]] = {
    (1, 1.0): (24, 144, 288, 576),  # Table 1, g = 1
    (2, 1.0): (24, 200, 400, 800),  # Table 1, g = 2
    (3, 1.0): (24, 240, 480, 960),  # Table 1, g = 3
    (4, 1.0): (24, 272, 544, 1088),  # Table 1, g = 4
    (8, 1.0): (24, 384, 768, 1536),  # Table 1, g = 8
    (3, 0.5): (12, 120, 240, 480),  # megvii official 0.5x, g = 3 (arch_reference §5)
    (3, 1.5): (24, 360, 720, 1440),  # megvii official 1.5x, g = 3: the stem stays 24
    (3, 2.0): (48, 480, 960, 1920),  # megvii official 2.0x, g = 3
    (8, 0.5): (16, 192, 384, 768),  # megvii official 0.5x, g = 8: stem 16 so that 192 - 16 divides by 8
    (8, 1.5): (24, 576, 1152, 2304),  # megvii official 1.5x, g = 8
    (8, 2.0): (48, 768, 1536, 3072),  # megvii official 2.0x, g = 8
}


@dataclass(frozen=True)
class ShuffleNetV1Row:
    """One registered variant: builder knobs and the card's numbers.

    ``params``/``macs`` are arch_reference §5's computed counts at 224 px (FC included, MACs to 0.1 M, which match
    megvii's README); ``top1`` = 100 - the paper's classification error; ``paper_macs`` the paper's complexity.
    """

    groups: int
    scale: float
    params: int
    macs: int
    top1: float | None
    paper_macs: float | None
    table: str


ROWS: dict[str, ShuffleNetV1Row] = {
    "shufflenet_v1_g1_x1_0": ShuffleNetV1Row(1, 1.0, 1_530_936, 143_100_000, 66.4, 143e6, "Tables 1, 2"),
    "shufflenet_v1_g2_x1_0": ShuffleNetV1Row(2, 1.0, 1_732_848, 140_800_000, 67.3, 140e6, "Tables 1, 2"),
    "shufflenet_v1_g3_x1_0": ShuffleNetV1Row(3, 1.0, 1_864_728, 137_500_000, 67.4, 137e6, "Tables 1, 2"),
    "shufflenet_v1_g4_x1_0": ShuffleNetV1Row(4, 1.0, 1_967_344, 134_300_000, 67.2, 133e6, "Tables 1, 2"),
    "shufflenet_v1_g8_x1_0": ShuffleNetV1Row(8, 1.0, 2_433_768, 138_400_000, 67.6, 137e6, "Tables 1, 2"),
    "shufflenet_v1_g3_x0_5": ShuffleNetV1Row(3, 0.5, 717_324, 37_600_000, 56.8, 38e6, "Tables 2, 8"),
    "shufflenet_v1_g3_x1_5": ShuffleNetV1Row(3, 1.5, 3_441_168, 292_400_000, 71.5, 292e6, "Table 5"),
    "shufflenet_v1_g3_x2_0": ShuffleNetV1Row(3, 2.0, 5_449_776, 524_000_000, 73.7, 524e6, "Tables 5, 8"),
    "shufflenet_v1_g8_x0_5": ShuffleNetV1Row(8, 0.5, 1_010_448, 40_500_000, 57.7, 38e6, "Table 2"),
    "shufflenet_v1_g8_x1_5": ShuffleNetV1Row(8, 1.5, 4_268_952, 290_200_000, None, None, "megvii README only"),
    "shufflenet_v1_g8_x2_0": ShuffleNetV1Row(8, 2.0, 6_521_232, 521_900_000, None, None, "megvii README only"),
}


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit (Fig. 2 b: stride 1, residual add; Fig. 2 c: stride 2, concat with avg-pooled input).

    Args:
        in_channels, out_channels: the unit's input and output channels (a stride-2 branch makes the difference).
        stride: 1 or 2.
        groups: g of both pointwise group convolutions and of the shuffle.
        group_first: False for the first unit of Stage 2, whose first pointwise conv is not grouped (Table 1, note 1).
        shuffle: apply the channel shuffle (False = Table 3's "no shuffle").
        inverse_shuffle: megvii's order, the inverse permutation of the paper's.
        se_ratio: SE block on the branch output when > 0.
        drop_path: drop probability of the branch of a stride-1 unit.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        group_first: bool = True,
        shuffle: bool = True,
        se_ratio: int = 0,
        drop_path: float = 0.0,
        inverse_shuffle: bool = False,
    ) -> None:
        super().__init__()
        self.inverse_shuffle = inverse_shuffle
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} is not valid for a ShuffleNet unit; use 1 or 2")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit adds its input: in_channels={in_channels} must equal {out_channels}")
        mid = out_channels // 4  # §3.2: bottleneck channels = 1/4 of the unit's output channels
        branch = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if group_first else 1
        for what, c in (("bottleneck", mid), ("branch output", branch)):
            if c <= 0 or c % groups:
                raise ValueError(
                    f"ShuffleNet unit {in_channels}->{out_channels}: {what} channels {c} are not a positive multiple "
                    f"of groups={groups}"
                )
        self.stride = stride
        self.shuffle_groups = groups if shuffle and groups > 1 else 1
        self.pw1 = ConvNormAct(in_channels, mid, 1, groups=first_groups)
        self.dw = ConvNormAct(mid, mid, 3, stride, groups=mid, act=False)  # no ReLU after the DWConv (§3.2)
        self.pw2 = ConvNormAct(mid, branch, 1, groups=groups, act=False)
        self.se = SqueezeExcite(branch, reduction=se_ratio) if se_ratio > 0 else None
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.drop_path = DropPath(drop_path) if stride == 1 and drop_path > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw1(x)
        if self.shuffle_groups > 1:
            y = channel_shuffle(y, self.shuffle_groups, self.inverse_shuffle)  # Fig. 2: right after the first GConv
        y = self.pw2(self.dw(y))
        if self.se is not None:
            y = self.se(y)
        if self.pool is not None:
            return torch.cat((self.pool(x), F.relu(y, inplace=True)), 1)
        if self.drop_path is not None:
            y = self.drop_path(y)
        return F.relu(x + y, inplace=True)


class ShuffleNetV1(Backbone):
    """ShuffleNet v1 with groups ``groups`` and scale ``scale``; ``body`` = stem, pool, stage2, stage3, stage4."""

    def __init__(
        self,
        groups: int = 3,
        scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        channel_shuffle: bool = True,
        se_ratio: int = 0,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, ("megvii",), None)
        if (groups, scale) not in STAGE_CHANNELS:
            valid = ", ".join(f"(groups={g}, scale={s})" for g, s in STAGE_CHANNELS)
            raise ValueError(
                f"(groups={groups!r}, scale={scale!r}) has no channel table (paper Table 1 for 1x, megvii's official "
                f"configs for other scales); valid: {valid}"
            )
        check_se_ratio(se_ratio)
        check_probability("drop_path_rate", drop_path_rate)
        se_ratio = se_ratio or 0
        self.groups = groups
        self.scale = scale
        self.channel_shuffle = channel_shuffle
        self.reference_padding = reference_padding  # no-op: the reference already pads k // 2 everywhere
        stem, *stage_out = STAGE_CHANNELS[(groups, scale)]

        body: dict[str, nn.Module] = {
            "stem": ConvNormAct(in_chans, stem, 3, 2),  # Table 1 Conv1: 3x3 / 2
            "pool": nn.MaxPool2d(3, 2, 1),  # Table 1 MaxPool: 3x3 / 2
        }
        self.add_feature(stem, 2, "body.stem")
        self.add_feature(stem, 4, "body.pool")
        total = sum(STAGE_REPEATS)
        cin, unit, stride = stem, 0, 4
        for i, (repeats, cout) in enumerate(zip(STAGE_REPEATS, stage_out, strict=True)):
            units = []
            for j in range(repeats):
                rate = drop_path_rate * unit / (total - 1)
                units.append(
                    ShuffleUnit(
                        cin,
                        cout,
                        2 if j == 0 else 1,
                        groups,
                        group_first=not (i == 0 and j == 0),
                        shuffle=channel_shuffle,
                        se_ratio=se_ratio,
                        drop_path=rate,
                        inverse_shuffle=self.reference == "megvii",
                    )
                )
                cin, unit = cout, unit + 1
            stride *= 2
            body[f"stage{i + 2}"] = nn.Sequential(*units)
            self.add_feature(cout, stride, f"body.stage{i + 2}")
        self.body = nn.ModuleDict(body)
        self.num_features = cin
        self.num_classes = num_classes
        # megvii ShuffleNetV1: nn.Linear(stage_out_channels[-1], n_class, bias=False)
        self.fc = nn.Linear(cin, num_classes, bias=False) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # Table 1 GlobalPool 7x7 at 224, global at any side
        return x if pre_logits else self.fc(x)


def _card(name: str) -> ModelCard:
    row = ROWS[name]
    notes = "No library twin (timm and torchvision have no ShuffleNet v1)."
    if row.groups in (4, 8) and row.scale == 1.0:
        notes += " Paper Table 1 prints 133 M (g=4) / 137 M (g=8); the architecture gives 134.3 M / 138.4 M."
    if name == "shufflenet_v1_g8_x0_5":
        notes += " paper_macs is Table 2's complexity class of the 0.5x row (38 M); this network has 40.5 M."
    return ModelCard(
        family="shufflenet",
        paper=PAPER,
        table=f"arch_reference §5 computed (megvii README agrees); paper {row.table}",
        params=row.params,
        macs=row.macs,
        top1=row.top1,
        paper_macs=row.paper_macs,
        notes=notes,
    )


register_model("shufflenet_v1_g1_x1_0", ShuffleNetV1, _card("shufflenet_v1_g1_x1_0"), groups=1, scale=1.0)
register_model("shufflenet_v1_g2_x1_0", ShuffleNetV1, _card("shufflenet_v1_g2_x1_0"), groups=2, scale=1.0)
register_model("shufflenet_v1_g3_x1_0", ShuffleNetV1, _card("shufflenet_v1_g3_x1_0"), groups=3, scale=1.0)
register_model("shufflenet_v1_g4_x1_0", ShuffleNetV1, _card("shufflenet_v1_g4_x1_0"), groups=4, scale=1.0)
register_model("shufflenet_v1_g8_x1_0", ShuffleNetV1, _card("shufflenet_v1_g8_x1_0"), groups=8, scale=1.0)
register_model("shufflenet_v1_g3_x0_5", ShuffleNetV1, _card("shufflenet_v1_g3_x0_5"), groups=3, scale=0.5)
register_model("shufflenet_v1_g3_x1_5", ShuffleNetV1, _card("shufflenet_v1_g3_x1_5"), groups=3, scale=1.5)
register_model("shufflenet_v1_g3_x2_0", ShuffleNetV1, _card("shufflenet_v1_g3_x2_0"), groups=3, scale=2.0)
register_model("shufflenet_v1_g8_x0_5", ShuffleNetV1, _card("shufflenet_v1_g8_x0_5"), groups=8, scale=0.5)
register_model("shufflenet_v1_g8_x1_5", ShuffleNetV1, _card("shufflenet_v1_g8_x1_5"), groups=8, scale=1.5)
register_model("shufflenet_v1_g8_x2_0", ShuffleNetV1, _card("shufflenet_v1_g8_x2_0"), groups=8, scale=2.0)
