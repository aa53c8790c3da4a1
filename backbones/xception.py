"""Xception: entry flow, middle flow x8, exit flow of depthwise separable convolutions, as a detection backbone.

Paper: Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions" (arXiv:1610.02357), Fig. 5 (the
three flows), Table 3 (22,855,952 parameters), Fig. 4 (separable conv = depthwise 3x3 then pointwise 1x1, nothing in
between). Structure and counts: ``shared/reference/arch_reference.md`` section 3 (timm ``legacy_xception``, the
Keras weights ported by Cadene): 22,855,952 parameters, 8,357,403,496 MACs at 299; NASNet paper Table 2: 8.38 B.

Every conv and separable conv is followed by BN. A residual block is [ReLU ->] SepConv -> BN (-> ReLU -> SepConv -> BN)
... [-> MaxPool 3x3/2 pad 1] plus a 1x1/2 conv + BN shortcut where the shape changes, identity otherwise.

Deviations, each behind an option:

* Padding. The reference conv1 (3x3/2) and conv2 (3x3) are valid (299 -> 149 -> 147, then 74/37/19/10). By default
  both are padded by 1, so ``c1`` is exactly H/2, and the blocks' padded 3x3/2 max-pools halve every even side exactly:
  every level is H/2**i for sides that are multiples of 32 (+1.4 % MACs at 299: 150/75/38/19/10).
  ``reference_padding=True`` restores the valid convs exactly.
* BN eps. Keras' Xception uses eps 1e-3; the PyTorch port whose weights timm publishes (and evaluates) uses PyTorch's
  default 1e-5. ``bn_eps`` defaults to 1e-5 (the twin), ``bn_eps=1e-3`` gives the Keras original.
* ``reference`` (docs/weights.md): ``"timm"`` = ``reference_padding=True`` (timm ``legacy_xception``, Cadene's port:
  valid stem, symmetric pools, eps 1e-5); ``"tf"`` = the Keras original: valid stem, BN eps 1e-3 and 'SAME' max-pools,
  which on an even side pad one pixel at the bottom/right only (Cadene's port pads them symmetrically, shifting the
  pooling windows of block2 at 299 px by one pixel against the stride-2 shortcut).
* Levels. ``c2``/``c3``/``c4`` are the ReLU of the outputs of block1, block2 and block11 (the activation the next
  block starts with; a block's output itself is a pre-activation sum), as timm's feature taps. ``c1`` is the stem
  output, ``c5`` the exit flow's final ReLU.
* ``se_ratio`` (SENet, arXiv:1709.01507) puts an SE module of reduction r on each residual block's branch, before the
  add; ``drop_path_rate`` drops that branch (stochastic depth), rising linearly to the rate over the 12 blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone
from .checks import check, check_int, check_probability
from .layers import DropPath, MaxPool2dSame, SeparableConv2d, SqueezeExcite, check_se_ratio
from .registry import make_card, register_model, resolve_reference
from .weights import rename_keys


@dataclass(frozen=True)
class BlockSpec:
    """One residual block of Fig. 5."""

    out_channels: int
    reps: int  # separable convs in the branch
    stride: int  # 2: the branch ends with MaxPool 3x3/2 and the shortcut is a 1x1/2 conv
    start_with_relu: bool = True
    grow_first: bool = True  # the first separable conv widens (else the last one does)


# Fig. 5: entry flow 128, 256, 728 (stride 2 each), middle flow 8 x 728, exit flow block 728 -> 1024
BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(128, 2, 2, start_with_relu=False),  # block1, entry flow (follows the stem's ReLU)
    BlockSpec(256, 2, 2),  # block2
    BlockSpec(728, 2, 2),  # block3
    *(BlockSpec(728, 3, 1) for _ in range(8)),  # block4..block11, middle flow
    BlockSpec(1024, 2, 2, grow_first=False),  # block12, exit flow: SepConv 728 then SepConv 1024
)
STEM = (32, 64)  # entry flow: Conv 32 3x3/2, Conv 64 3x3
EXIT = (1536, 2048)  # exit flow: SepConv 1536, SepConv 2048
# levels c2, c3, c4 follow these blocks (1-based); c1 the stem, c5 the exit flow
LEVEL_BLOCKS = {1: 4, 2: 8, 11: 16}
BN_EPS = (1e-5, 1e-3)
REFERENCES = ("timm", "tf")

# timm legacy_xception names -> ours (regex, replacement), in order
TWIN_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(block\d+\.rep\.\d+|conv[34])\.conv1\.", r"\1.depthwise."),  # timm SeparableConv2d.conv1
    (r"^(conv[12]|bn[12])\.", r"body.stem.\1."),
    (r"^(conv[34]|bn[34])\.", r"body.exit.\1."),
    (r"^(block\d+)\.", r"body.\1."),
)


class Block(nn.Module):
    """Residual block of Fig. 5, children named as timm's ``legacy_xception`` (``rep``, ``skip``, ``skipbn``)."""

    def __init__(
        self, in_channels: int, spec: BlockSpec, eps: float, se_ratio: int | None, drop_path: float, tf: bool = False
    ) -> None:
        super().__init__()
        out = spec.out_channels
        widths = [in_channels]
        for i in range(spec.reps):
            widths.append(out if spec.grow_first or i == spec.reps - 1 else in_channels)
        rep: list[nn.Module] = []
        for i in range(spec.reps):
            if i > 0 or spec.start_with_relu:
                # not in place at the start: the shortcut reads the block input
                rep.append(nn.ReLU(inplace=i > 0))
            rep.append(SeparableConv2d(widths[i], widths[i + 1], 3))
            rep.append(nn.BatchNorm2d(widths[i + 1], eps=eps))
        if spec.stride != 1:
            rep.append(MaxPool2dSame(3, spec.stride) if tf else nn.MaxPool2d(3, spec.stride, 1))
        self.rep = nn.Sequential(*rep)
        self.skip: nn.Module | None = None
        if spec.stride != 1 or in_channels != out:
            self.skip = nn.Conv2d(in_channels, out, 1, spec.stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out, eps=eps)
        self.se = SqueezeExcite(out, reduction=se_ratio) if se_ratio else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.rep(x)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        # in place: neither BN's, max-pool's, SE's nor DropPath's backward needs their output
        out += x if self.skip is None else self.skipbn(self.skip(x))
        return out


class Xception(Backbone):
    """Xception (Fig. 5) with exact c1..c5 levels (64@2, 128@4, 256@8, 728@16, 2048@32).

    Args:
        se_ratio: SE reduction r on each residual branch; None or 0 turns SE off.
        bn_eps: BN epsilon: 1e-5 (timm / PyTorch port) or 1e-3 (Keras); None: 1e-3 under ``reference="tf"``, else
            1e-5.
        drop_rate: dropout before the classifier (0.5 in the paper's ImageNet setup, 0 in timm).
        num_classes: classifier outputs (0 = no classifier, pooled features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last residual block; block i of 12 gets ``rate * i / 11``.
        reference_padding: valid-padded conv1/conv2 as the reference (299 -> 149 -> 147): ``reference="timm"``.
        reference: None, ``"timm"`` or ``"tf"`` (see the module docstring).
    """

    def __init__(
        self,
        se_ratio: int | None = None,
        bn_eps: float | None = None,
        drop_rate: float = 0.5,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, REFERENCES, "timm")
        tf = self.reference == "tf"
        if bn_eps is None:
            bn_eps = 1e-3 if tf else 1e-5
        check_se_ratio(se_ratio)
        check("bn_eps", bn_eps, bn_eps in BN_EPS, "use 1e-5 (timm / PyTorch port) or 1e-3 (Keras)")
        check_probability("drop_rate", drop_rate)
        check_probability("drop_path_rate", drop_path_rate)
        check_int("num_classes", num_classes)
        self.reference_padding = reference_padding
        self.drop_rate = drop_rate
        pad = 0 if self.reference is not None else 1

        c1, c2 = STEM
        stem = OrderedDict(
            conv1=nn.Conv2d(in_chans, c1, 3, 2, pad, bias=False),
            bn1=nn.BatchNorm2d(c1, eps=bn_eps),
            act1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(c1, c2, 3, 1, pad, bias=False),
            bn2=nn.BatchNorm2d(c2, eps=bn_eps),
            act2=nn.ReLU(inplace=True),
        )
        body: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(stem))
        self.add_feature(c2, 2, "body.stem")
        channels = c2
        for i, spec in enumerate(BLOCKS, start=1):
            dpr = drop_path_rate * (i - 1) / (len(BLOCKS) - 1)
            body[f"block{i}"] = Block(channels, spec, bn_eps, se_ratio, dpr, tf)
            channels = spec.out_channels
            if i in LEVEL_BLOCKS:
                self.add_feature(channels, LEVEL_BLOCKS[i], f"body.block{i}")
        e1, e2 = EXIT
        exit_flow = OrderedDict(
            conv3=SeparableConv2d(channels, e1, 3),
            bn3=nn.BatchNorm2d(e1, eps=bn_eps),
            act3=nn.ReLU(inplace=True),
            conv4=SeparableConv2d(e1, e2, 3),
            bn4=nn.BatchNorm2d(e2, eps=bn_eps),
            act4=nn.ReLU(inplace=True),
        )
        body["exit"] = nn.Sequential(exit_flow)
        self.add_feature(e2, 32, "body.exit")
        self.body = nn.ModuleDict(body)
        # body keys whose level is the ReLU of their output (see the module docstring)
        self._relu_taps = frozenset(f"block{i}" for i in LEVEL_BLOCKS)

        self.num_features = e2
        self.num_classes = num_classes
        self.fc = nn.Linear(e2, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def forward_levels(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        for name, module in self.body.items():
            x = module(x)
            if name in self._taps:
                out[self._taps[name]] = F.relu(x) if name in self._relu_taps else x
        return out

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # global average pool, (B, 2048, H, W) -> (B, 2048)
        if self.drop_rate > 0.0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map timm ``legacy_xception`` (Cadene's port) names onto ours."""
        return rename_keys(state_dict, TWIN_RENAMES)


register_model(
    "xception",
    Xception,
    make_card(
        "inception",
        family="xception",
        paper="Chollet 2017, Xception, arXiv:1610.02357",
        table="Table 3 (params, exact); arch_reference section 3 (MACs at 299, computed on timm legacy_xception)",
        params=22_855_952,
        macs=8_357_403_496,
        input_size=299,
        top1=79.0,
        crop_pct=0.8975,
        twins={"timm": "legacy_xception"},
        paper_params=22_855_952,
        paper_macs=8.38e9,
        macs_reference_padding=True,
        notes="MACs are those of the valid-padded stem (reference_padding=True); the default pads conv1/conv2 for "
        "exact H/2**i levels and counts 8.471 G at 299 (+1.4 %). paper_macs 8.38 B is NASNet Table 2. top-1 79.0 is "
        "Table 1 (Keras weights; 78.89 for timm's port). Keras counts 22,910,480 with the BN moving statistics. "
        "BN eps 1e-5 as the timm port (bn_eps=1e-3 for Keras').",
    ),
)
