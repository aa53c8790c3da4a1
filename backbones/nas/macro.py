"""ENAS macro search space network (Pham et al. 2018, arXiv 1802.03268; CIFAR-10 table in ``shared/papers/002``).

A chain of layers chosen one by one, each with skip connections to any earlier output, as the authors' fixed-arc
code builds it (``melodyguan/enas`` ``src/cifar10/general_child.py`` ``_fixed_layer``, ``scripts/
cifar10_macro_final.sh``: 24 layers, 96 filters, whole-channels arc in ``genotypes.ENAS_MACRO_ARC``):

* stem: conv 3x3 (3 -> F) -> BN;
* layer k: input = the previous output; ReLU -> 1x1 -> BN -> ReLU -> k x k conv (or separable conv) -> BN; for k > 0,
  concat(the earlier outputs its skip bits select, this output) -> ReLU -> 1x1 -> BN (built even with no skip bit);
* after layers 7 and 15 the width doubles and every output so far (stem included) gets a factorized reduction
  (no ReLU), so skips keep reaching back across the pooling;
* head: global pool -> dropout -> FC without bias (no ReLU before pooling).

Deviation, with the option that restores the code: ``_fixed_layer`` builds ops 1 and 3 ("separable") as ordinary
k x k convs; here they are true depthwise-separable convs (``separable=True``), as the search space defines them.
Neither reproduces the paper's 21.3 M (see the card); the paper's macro configuration could not be confirmed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Backbone
from ..checks import check
from ..layers import FactorizedReduce, SeparableConv2d
from ..registry import resolve_reference
from .genotypes import ENAS_MACRO_ARC, MacroLayer, decode_enas_macro_arc


class MacroLayerBlock(nn.Module):
    """One ENAS macro layer. Children: inp (1x1), conv (k x k), bn, skip (1x1 over the concatenation, k > 0)."""

    def __init__(
        self, layer: MacroLayer, index: int, c_in: int, channels: int, separable: bool, eps: float, momentum: float
    ) -> None:
        super().__init__()
        k = 5 if layer.op.endswith("5x5") else 3
        self.skips = layer.skips
        self.inp = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(c_in, channels, 1, bias=False), bn=nn.BatchNorm2d(channels, eps, momentum))
        )
        if layer.op.startswith("sep") and separable:
            self.conv: nn.Module = SeparableConv2d(channels, channels, k)
        else:
            self.conv = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps, momentum)
        self.skip = None
        if index > 0:
            width = (len(layer.skips) + 1) * channels
            self.skip = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(width, channels, 1, bias=False), bn=nn.BatchNorm2d(channels, eps, momentum))
            )

    def forward(self, prev: list[Tensor]) -> Tensor:
        x = self.inp(F.relu(prev[-1]))
        x = self.bn(self.conv(F.relu(x)))
        if self.skip is not None:
            x = self.skip(F.relu(torch.cat([prev[i] for i in self.skips] + [x], 1)))
        return x


class ENASMacro(Backbone):
    """ENAS macro network; levels c0, c1, c2 are the outputs of the last layer at strides 1, 2, 4.

    Args:
        arc: the whole-channels arc (one line per layer: op id, then the skip bits).
        out_filters: F of the first stage (doubles at each pooling).
        separable: true separable convs for ops 1/3 (False: the ordinary convs the fixed-arc code builds).
        num_classes, in_chans, drop_rate: head settings (script: dropout 0.5).
        drop_path_rate: must be 0 (the macro code has no drop path).
        reference_padding: no effect (stride-1 odd kernels only, where TF SAME is symmetric); accepted for the contract.
        reference: None or ``"tf"`` (the ENAS code's numerics), the same network here for the reason above.
        bn_eps, bn_momentum: the authors' fixed-arc BatchNorm, ``melodyguan/enas`` ``src/cifar10/image_ops.py``
            ``batch_norm`` (epsilon 1e-5 as released in commit 00787a5 "open source"; 1e-3 is the default of the
            search-mode ``batch_norm_with_mask`` only), decay 0.9 = momentum 0.1.
    """

    head_modules = ("fc",)

    def __init__(
        self,
        arc: str = ENAS_MACRO_ARC,
        out_filters: int = 96,
        separable: bool = True,
        num_classes: int = 10,
        in_chans: int = 3,
        reference: str | None = None,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, ("tf",), None)
        check(
            "drop_path_rate", drop_path_rate, drop_path_rate == 0.0, "the ENAS macro network has no drop path: use 0.0"
        )
        layers = decode_enas_macro_arc(arc)
        n = len(layers)
        if n < 3:
            raise ValueError(f"an ENAS macro arc needs at least 3 layers (two poolings), got {n}")
        self.pool_layers = (n // 3 - 1, 2 * (n // 3) - 1)  # general_child.py: [pool_distance - 1, 2 * pd - 1]
        self.num_classes = num_classes
        c = out_filters
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_chans, c, 3, padding=1, bias=False), bn=nn.BatchNorm2d(c, bn_eps, bn_momentum)
            )
        )
        blocks, reduce = [], []
        self._stage_of_layer = []
        stage = 1
        for k, layer in enumerate(layers):
            for i in layer.skips:
                if i > k:
                    raise ValueError(f"ENAS macro layer {k}: skip bit {i} points past the layers built so far")
            blocks.append(MacroLayerBlock(layer, k, c, c, separable, bn_eps, bn_momentum))
            self._stage_of_layer.append(stage)
            if k in self.pool_layers:
                self.add_feature(c, 2 ** (stage - 1), f"layers.{k}", stage=stage)
                c *= 2
                reduce.append(
                    nn.ModuleList(FactorizedReduce(c // 2, c, False, bn_eps, bn_momentum) for _ in range(k + 2))
                )
                stage += 1
        self.layers = nn.ModuleList(blocks)
        self.reduce = nn.ModuleList(reduce)
        self.add_feature(c, 2 ** (stage - 1), f"layers.{n - 1}", stage=stage)
        self.num_features = c
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes, bias=False) if num_classes else nn.Identity()
        self.init_weights()

    def _run(self, x: Tensor, taps: dict[int, str]) -> tuple[Tensor, dict[str, Tensor]]:
        outs = [self.stem(x)]
        levels: dict[str, Tensor] = OrderedDict()
        for k, block in enumerate(self.layers):
            outs.append(block(outs))
            if k in taps:
                levels[taps[k]] = outs[-1]
            if k in self.pool_layers and self.pool_layers.index(k) < len(self.reduce):
                red = self.reduce[self.pool_layers.index(k)]
                outs = [fr(t) for fr, t in zip(red, outs)]
        return outs[-1], levels

    def _tap_layers(self) -> dict[int, str]:
        return {int(f.module.split(".")[1]): f.name for f in self.feature_info if f.name in self.out_features}

    def forward_features(self, x: Tensor) -> Tensor:
        return self._run(x, {})[0]

    def forward_levels(self, x: Tensor) -> dict[str, Tensor]:
        return self._run(x, self._tap_layers())[1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return x if pre_logits else self.fc(x)

    def stage_modules(self) -> list[list[str]]:
        stages: list[list[str]] = [["stem"], [], [], []]
        for k in range(len(self.layers)):
            stages[self._stage_of_layer[k]].append(f"layers.{k}")
        for r in range(len(self.reduce)):
            stages[r + 2].insert(0, f"reduce.{r}")
        return stages

    def _prune_for_features(self) -> None:
        if hasattr(self, "fc"):
            del self.fc
        deepest = max((self.feature(n) for n in self.out_features), key=lambda f: f.stride)
        last = int(deepest.module.split(".")[1])
        self.layers = self.layers[: last + 1]
        self.reduce = self.reduce[: sum(p < last for p in self.pool_layers)]
