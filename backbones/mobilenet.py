"""MobileNet v1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
arXiv:1704.04861.

The body is paper Table 1 as data: a 3x3/2 stem conv with 32 filters, then 13 depthwise-separable layers (Fig. 3
right: dw3x3 -> BN -> ReLU -> pw1x1 -> BN -> ReLU), global average pooling and one FC layer. Table 1 prints the
second-to-last depthwise layer as "Conv dw / s2" on a 7x7 input; that is a typo (the next row is still 7x7 and
TF-slim's ``MOBILENETV1_CONV_DEFS`` has stride 1 there), so the network has five stride-2 layers (arch_reference §4).

Paper knobs:
* width multiplier alpha (§4.2, Table 6): every layer gets ``max(int(d * alpha), 8)`` channels (TF-slim's
  ``depth`` rule with ``min_depth=8``);
* resolution multiplier rho (§4.3, Table 7) is simply the input side (224, 192, 160, 128): the model card lists the
  mult-adds at each of them (``macs_at``), so it is not a constructor argument.

Options beyond the paper:
* ``act``: ``"relu"`` (paper Fig. 3, the default) or ``"relu6"``, which TF-slim and timm's ``mobilenetv1_100`` use;
  loading the twin's weights into a ReLU model logs a warning.
* ``se_ratio > 0`` puts a squeeze-and-excitation block (SENet) on the output of every depthwise-separable layer
  (SE-MobileNet); ``se_ratio=16`` is SENet's reduction r = 16 (as in every family).
* MobileNet v1 has no residual connections, so there is no path to drop: ``drop_path_rate`` must be 0.
* ``reference`` (docs/weights.md): None (default) pads every conv ``k // 2`` as the timm twin, which already gives
  every level exactly ``H / 2**i``; ``"timm"`` is the same with ReLU6 (timm's ``mobilenetv1_100``); ``"tf"`` is
  TF-slim's and Keras' network: 'SAME' padding, so a stride-2 conv on an even side pads one pixel at the bottom/right
  only (levels stay ``H / 2**i``), BN eps 1e-3 and ReLU6: the numerics of their published checkpoints.
  ``act=None`` means ReLU6 under ``"timm"``/``"tf"`` and ReLU otherwise; ``reference_padding`` changes nothing.

Levels: c1..c5 = the outputs of depthwise-separable layers 1, 3, 5, 11 and 13, the last layer at each stride (as timm's
``feature_info``; arch_reference §4 taps c1 one conv earlier, at the stem, which has the same stride). For
``frozen_stages`` the stem conv and layer 1 are stage 0.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import Backbone
from .checks import check, check_choice
from .layers import Conv2dSame, ConvNormAct, SqueezeExcite, check_se_ratio
from .registry import ModelCard, make_card, register_model, resolve_reference

logger = logging.getLogger(__name__)

PAPER = "Howard et al. 2017, MobileNets, arXiv:1704.04861"

STEM_CHANNELS = 32  # Table 1, row 1: Conv 3x3x3x32 / s2
# Table 1: (stride of the depthwise conv, output channels of the pointwise conv) of the 13 depthwise-separable
# layers. Layer 12 is s1, not the printed s2 (arch_reference §4; TF-slim MOBILENETV1_CONV_DEFS).
LAYERS: tuple[tuple[int, int], ...] = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
MIN_DEPTH = 8  # TF-slim mobilenet_v1(min_depth=8)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}
REFERENCES = ("timm", "tf")
TF_BN_EPS = 1e-3  # TF-slim mobilenet_v1_arg_scope batch_norm_epsilon; Keras BatchNormalization default


@dataclass(frozen=True)
class MobileNetV1Row:
    """One registered width: the builder's ``alpha`` and the card's numbers.

    ``params`` and ``macs`` (side -> mult-adds) are arch_reference §4's computed counts (= timm's MobileNet v1
    generator at that channel multiplier, counted conv + linear); ``top1``/``paper_*`` are paper Table 6.
    """

    alpha: float
    top1: float
    paper_params: float
    paper_macs: float
    params: int
    macs: dict[int, int]
    note: str = ""


ROWS: dict[str, MobileNetV1Row] = {
    # Table 6 "1.0 MobileNet-224": 70.6 %, 569 M, 4.2 M; Table 7: 418 / 290 / 186 M at 192 / 160 / 128
    "mobilenet_v1_x1_0": MobileNetV1Row(
        1.0,
        70.6,
        4.2e6,
        569e6,
        4_231_976,
        {224: 568_740_352, 192: 418_121_728, 160: 290_675_200, 128: 186_400_768},
        "timm mobilenetv1_100 is the same layers, parameters and mult-adds but uses ReLU6 (as TF-slim): load its "
        "weights with act='relu6' (the default act='relu' follows paper Fig. 3).",
    ),
    # Table 6 "0.75 MobileNet-224": 68.4 %, 325 M, 2.6 M
    "mobilenet_v1_x0_75": MobileNetV1Row(
        0.75,
        68.4,
        2.6e6,
        325e6,
        2_585_560,
        {224: 325_400_448, 192: 239_273_472, 160: 166_396_800, 128: 106_770_432},
        "TF-slim mobilenet_v1.md lists 317/233/162/104 M for this width; they do not fit the architecture, the "
        "paper's 325 M does (arch_reference §4). Table 10: 239 M at 192 px, the computed count.",
    ),
    # Table 6 "0.5 MobileNet-224": 63.7 %, 149 M, 1.3 M
    "mobilenet_v1_x0_5": MobileNetV1Row(
        0.5,
        63.7,
        1.3e6,
        149e6,
        1_331_592,
        {224: 149_497_088, 192: 109_970_432, 160: 76_524_800, 128: 49_160_192},
        "Table 9: 0.50 MobileNet-160 = 60.2 %, 76 M mult-adds, 1.32 M params (the computed 76.5 M at 160 px).",
    ),
    # Table 6 "0.25 MobileNet-224": 50.6 %, 41 M, 0.5 M
    "mobilenet_v1_x0_25": MobileNetV1Row(
        0.25,
        50.6,
        0.5e6,
        41e6,
        470_072,
        {224: 41_030_272, 192: 30_212_608, 160: 21_059_200, 128: 13_570_048},
        "TF-slim mobilenet_v1.md lists 34 M at 192 px for this width; the architecture gives 30.2 M (arch_reference "
        "§4).",
    ),
}


def _conv_bn_act(
    cin: int, cout: int, kernel_size: int, stride: int, act: str, groups: int = 1, tf: bool = False
) -> ConvNormAct:
    block = ConvNormAct(cin, cout, kernel_size, stride, groups=groups, eps=TF_BN_EPS if tf else 1e-5)
    if tf and stride > 1:  # TF 'SAME': asymmetric on even sides
        block.conv = Conv2dSame(cin, cout, kernel_size, stride, groups=groups, bias=False)
    if act != "relu":
        block.act = ACTIVATIONS[act](inplace=True)
    return block


class DepthwiseSeparable(nn.Sequential):
    """Fig. 3 right: ``dw`` (3x3, stride, BN, act) -> ``pw`` (1x1, BN, act) [-> ``se``]."""

    def __init__(
        self, cin: int, cout: int, stride: int, act: str = "relu", se_ratio: int = 0, tf: bool = False
    ) -> None:
        super().__init__()
        self.dw = _conv_bn_act(cin, cin, 3, stride, act, groups=cin, tf=tf)
        self.pw = _conv_bn_act(cin, cout, 1, 1, act, tf=tf)
        if se_ratio > 0:
            self.se = SqueezeExcite(cout, reduction=se_ratio)


class MobileNetV1(Backbone):
    """MobileNet v1 with width multiplier ``alpha``; ``body`` = stem, block1 .. block13 (see the module docstring)."""

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        act: str | None = None,
        se_ratio: int = 0,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, REFERENCES, None)
        tf = self.reference == "tf"
        if act is None:
            act = "relu6" if self.reference in REFERENCES else "relu"
        check(
            "alpha",
            alpha,
            isinstance(alpha, int | float) and alpha > 0,
            "use a positive width multiplier (the paper's: 1.0, 0.75, 0.5, 0.25)",
        )
        check_choice("act", act, ACTIVATIONS)
        check_se_ratio(se_ratio)
        check(
            "drop_path_rate",
            drop_path_rate,
            drop_path_rate == 0.0,
            "MobileNet v1 has no residual connections, so there is no path to drop; only 0.0 is valid",
        )
        se_ratio = se_ratio or 0
        self.alpha = float(alpha)
        self.act = act
        self.reference_padding = reference_padding  # no-op: the symmetric k // 2 padding is the twin's

        def depth(d: int) -> int:
            return max(int(d * alpha), MIN_DEPTH)

        cin = depth(STEM_CHANNELS)
        body: dict[str, nn.Module] = {"stem": _conv_bn_act(in_chans, cin, 3, 2, act, tf=tf)}
        stride = 2
        for i, (s, out) in enumerate(LAYERS):
            cout = depth(out)
            body[f"block{i + 1}"] = DepthwiseSeparable(cin, cout, s, act, se_ratio, tf)
            stride *= s
            cin = cout
            if i + 1 == len(LAYERS) or LAYERS[i + 1][0] == 2:  # the last layer at this stride is the level
                self.add_feature(cout, stride, f"body.block{i + 1}")
        self.body = nn.ModuleDict(body)
        self.num_features = cin
        self.num_classes = num_classes
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The base's initialisation, but a depthwise conv's fan-out counted per group (k * k, as timm and TF count it).

        PyTorch's Kaiming fan-out counts every output channel, which shrinks each depthwise layer's output by about
        sqrt(C); with no residual to carry the signal, a 1.0 MobileNet's features start near 1e-17: hard to train,
        and slow on CPU (denormal arithmetic).
        """
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # Table 1: Avg Pool 7x7 at 224, global at any side
        return x if pre_logits else self.fc(x)

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm ``mobilenetv1_*`` keys (``conv_stem``, ``bn1``, ``blocks.<stage>.<i>.conv_dw/bn1/conv_pw/bn2``,
        ``classifier``) onto ours; unknown keys are kept, so the loader names them."""
        blocks = sorted(
            {tuple(int(v) for v in m.groups()) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
        )
        index = {f"blocks.{s}.{i}.": f"body.block{n + 1}." for n, (s, i) in enumerate(blocks)}
        parts = {"conv_dw.": "dw.conv.", "bn1.": "dw.bn.", "conv_pw.": "pw.conv.", "bn2.": "pw.bn."}
        out = {}
        for k, v in state_dict.items():
            new = k
            if k.startswith("conv_stem."):
                new = "body.stem.conv." + k.removeprefix("conv_stem.")
            elif k.startswith("bn1."):
                new = "body.stem.bn." + k.removeprefix("bn1.")
            elif k.startswith("classifier."):
                new = "fc." + k.removeprefix("classifier.")
            elif (m := re.match(r"blocks\.\d+\.\d+\.", k)) and m.group(0) in index:
                rest = k[m.end() :]
                head = next((p for p in parts if rest.startswith(p)), None)
                if head is not None:
                    new = index[m.group(0)] + parts[head] + rest.removeprefix(head)
            out[new] = v
        if self.act != "relu6" and any(k.startswith("conv_stem.") for k in state_dict):
            logger.warning(
                "loading timm/TF-slim MobileNet v1 weights, which were trained with ReLU6, into a model with "
                "act=%r; pass act='relu6' to reproduce their outputs",
                self.act,
            )
        return out


def _card(name: str) -> ModelCard:
    row = ROWS[name]
    tables = "Tables 6 and 7" if row.alpha == 1.0 else "Table 6"
    return make_card(
        "inception",  # TF-slim's and timm's MobileNet v1 weights take inputs in [-1, 1]
        family="mobilenet",
        paper=PAPER,
        table=(
            f"arch_reference §4 computed (= timm MobileNet v1 generator, channel_multiplier={row.alpha}); "
            f"paper {tables}"
        ),
        params=row.params,
        macs=row.macs[224],
        top1=row.top1,
        paper_params=row.paper_params,
        paper_macs=row.paper_macs,
        macs_at={side: m for side, m in row.macs.items() if side != 224},
        twins={"timm": "mobilenetv1_100"} if row.alpha == 1.0 else {},
        notes=(
            "Resolution multiplier = input side: macs_at lists 192/160/128 px. Paper Table 1's 's2' on the 7x7 "
            "depthwise layer is a typo (s1). " + row.note
        ),
    )


register_model("mobilenet_v1_x1_0", MobileNetV1, _card("mobilenet_v1_x1_0"), alpha=1.0)
register_model("mobilenet_v1_x0_75", MobileNetV1, _card("mobilenet_v1_x0_75"), alpha=0.75)
register_model("mobilenet_v1_x0_5", MobileNetV1, _card("mobilenet_v1_x0_5"), alpha=0.5)
register_model("mobilenet_v1_x0_25", MobileNetV1, _card("mobilenet_v1_x0_25"), alpha=0.25)
