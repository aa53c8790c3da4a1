"""DenseNet and DenseNet-BC: Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017, arXiv:1608.06993.

Numbers: ImageNet structures from paper Table 1; CIFAR structures from paper §3-4 / Table 2 and the authors' Torch
code (``liuzhuang13/DenseNet`` ``models/densenet.lua``); parameter and mult-add counts from
``shared/reference/arch_reference.md`` §1; CIFAR-10 (C10+) errors from NASNet paper Table 1.

The knobs are the paper's: growth rate ``k``, ``block_config`` (layers per dense block), ``bottleneck`` ("-B": a 1x1
conv to ``bn_size * k`` channels before each 3x3), ``compression`` theta ("-C": a transition keeps
``floor(theta * m)`` of its ``m`` channels), the stem (ImageNet 7x7/2 conv + 3x3/2 max-pool, or CIFAR 3x3/1 conv),
``init_features`` and ``dropout`` (paper §4.2: after every conv but the first).

Feature levels: ImageNet models give ``c1`` = stem conv + BN + ReLU (stride 2, before the max-pool) and ``c2..c5`` =
the dense block outputs before the following transition (the transition belongs to the next stage); ``c5`` includes
the final BN + ReLU. CIFAR models give ``c0, c1, c2`` (strides 1, 2, 4), the outputs of their three dense blocks.

``memory_efficient=True`` (Pleiss et al., arXiv:1707.06990) recomputes concatenation -> BN -> ReLU -> first conv of
every dense layer during backward (non-reentrant ``torch.utils.checkpoint`` over the list of previous feature maps),
so the quadratically growing concatenated tensors are not kept for backward. With a bottleneck the BN -> ReLU that
feed the 3x3 conv are recomputed too: they cost little, and keeping the 1x1 conv's 4k-channel output would leave
DenseNet-121 at 0.48x the standard saved activations instead of 0.35x. Outputs, gradients and BN running
statistics are unchanged.

``reference`` (docs/weights.md): ``"timm"`` and ``"torchvision"`` compute as the default (the twins' numerics);
``"tf"`` is Keras' DenseNet, whose every BatchNorm uses eps 1.001e-5 (keras ``applications/densenet.py``; its
zero-padded 7x7 stem and 3x3/2 max-pool after a ReLU are our padded ones).

Deviation: ``drop_path_rate`` has no meaning here (a dense layer has no residual path to drop); only 0.0 is accepted.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Backbone
from .checks import check, check_choice, check_int, check_probability
from .layers import ConvNormAct
from .registry import ModelCard, make_card, register_model, resolve_reference

STEMS = ("imagenet", "cifar")
REFERENCES = ("timm", "torchvision", "tf")
KERAS_BN_EPS = 1.001e-5  # keras applications/densenet.py, every BatchNormalization


@dataclass(frozen=True)
class DenseNetArch:
    """One row of the paper's tables: the constructor arguments that define a variant."""

    growth_rate: int
    block_config: tuple[int, ...]
    bottleneck: bool
    compression: float
    stem: str
    init_features: int


def _cifar(depth: int, k: int, bc: bool) -> DenseNetArch:
    """Paper §3 "Implementation Details" for CIFAR: 3 dense blocks of (L - 4) / 3 layers, halved with bottlenecks
    (each bottleneck layer holds two convs); stem of 16 channels (basic) or 2k (BC); theta = 0.5 for BC, else 1."""
    n = (depth - 4) // (6 if bc else 3)
    return DenseNetArch(k, (n, n, n), bc, 0.5 if bc else 1.0, "cifar", 2 * k if bc else 16)


ARCHS: dict[str, DenseNetArch] = {
    "densenet121": DenseNetArch(32, (6, 12, 24, 16), True, 0.5, "imagenet", 64),  # Table 1, DenseNet-121
    "densenet169": DenseNetArch(32, (6, 12, 32, 32), True, 0.5, "imagenet", 64),  # Table 1, DenseNet-169
    "densenet201": DenseNetArch(32, (6, 12, 48, 32), True, 0.5, "imagenet", 64),  # Table 1, DenseNet-201
    "densenet264": DenseNetArch(32, (6, 12, 64, 48), True, 0.5, "imagenet", 64),  # Table 1, DenseNet-264
    # DenseNet-161 (k=48, 96-channel stem): the authors' released ImageNet model, not in Table 1 (arch_reference §1)
    "densenet161": DenseNetArch(48, (6, 12, 36, 24), True, 0.5, "imagenet", 96),
    "densenet_40_k12": _cifar(40, 12, bc=False),  # Table 2, DenseNet (L=40, k=12): 12 layers per block
    "densenet_100_k12": _cifar(100, 12, bc=False),  # Table 2, DenseNet (L=100, k=12): 32 layers per block
    "densenet_100_k24": _cifar(100, 24, bc=False),  # Table 2, DenseNet (L=100, k=24)
    "densenet_bc_100_k12": _cifar(100, 12, bc=True),  # Table 2, DenseNet-BC (L=100, k=12): 16 layers per block
    "densenet_bc_250_k24": _cifar(250, 24, bc=True),  # Table 2, DenseNet-BC (L=250, k=24): 41 layers per block
    "densenet_bc_190_k40": _cifar(190, 40, bc=True),  # Table 2, DenseNet-BC (L=190, k=40): 31 layers per block
}


@contextlib.contextmanager
def _keep_running_stats(*norms: nn.Module) -> Iterator[None]:
    """Undo the running-statistics update of training-mode BatchNorms that run again during recomputation."""
    buffers = [
        b
        for m in norms
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k) with a bottleneck, BN-ReLU-Conv3x3(k) without (paper §3,
    "Composite function" and "Bottleneck layers"); takes the list of all previous feature maps of the block."""

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: bool, bn_size: int, dropout: float, memory_efficient: bool
    ) -> None:
        super().__init__()
        mid = bn_size * growth_rate if bottleneck else growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1 if bottleneck else 3, padding=0 if bottleneck else 1, bias=False)
        if bottleneck:
            self.norm2 = nn.BatchNorm2d(mid)
            self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False)
        self.bottleneck = bottleneck
        self.dropout = dropout
        self.memory_efficient = memory_efficient

    def bottleneck_fn(self, features: list[Tensor]) -> Tensor:
        """Concatenation -> BN -> ReLU -> first conv, and with a bottleneck also the BN -> ReLU that feed the 3x3
        conv: everything whose activations ``memory_efficient`` recomputes instead of keeping."""
        x = self.conv1(F.relu(self.norm1(torch.cat(features, 1)), inplace=True))  # (B, 4k or k, H, W)
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        if self.bottleneck:
            x = F.relu(self.norm2(x), inplace=True)
        return x

    def _checkpointed(self, features: list[Tensor]) -> Tensor:
        first_run = [True]
        norms = (self.norm1, self.norm2) if self.bottleneck else (self.norm1,)

        def run(*xs: Tensor) -> Tensor:
            if first_run[0]:
                first_run[0] = False
                return self.bottleneck_fn(list(xs))
            with _keep_running_stats(*norms):  # recomputation in backward: the stats were updated in forward
                return self.bottleneck_fn(list(xs))

        return checkpoint(run, *features, use_reentrant=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        if (
            self.memory_efficient
            and not isinstance(features[0], torch.fx.Proxy)  # fx traces the plain path
            and torch.is_grad_enabled()
            and any(f.requires_grad for f in features)
        ):
            x = self._checkpointed(features)
        else:
            x = self.bottleneck_fn(features)
        if not self.bottleneck:
            return x
        x = self.conv2(x)
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the output concatenates the input and every layer's ``k`` new channels."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_args) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"layer{i + 1}"] = DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_args)
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (B, in + L*k, H, W)


class Transition(nn.Sequential):
    """BN -> ReLU -> Conv1x1 (floor(theta * m) channels) -> [dropout] -> AvgPool 2x2/2 (paper §3, "Pooling layers")."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if dropout > 0:
            self.drop = nn.Dropout(dropout)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(Backbone):
    """DenseNet / DenseNet-BC for ImageNet (7x7 stem, levels c1..c5) or CIFAR (3x3 stem, levels c0..c2).

    Args:
        growth_rate: k, channels each dense layer adds.
        block_config: layers per dense block.
        bottleneck: "-B", a 1x1 conv to ``bn_size * k`` channels before each 3x3 conv.
        compression: theta in (0, 1], the fraction of channels a transition keeps ("-C": 0.5).
        stem: ``"imagenet"`` (Conv7x7/2 -> BN -> ReLU -> MaxPool3x3/2) or ``"cifar"`` (Conv3x3/1).
        init_features: stem output channels (2k for ImageNet and BC, 16 for basic CIFAR DenseNet).
        dropout: rate after every conv but the stem (paper §4.2 uses 0.2 on CIFAR without augmentation).
        bn_size: bottleneck width in multiples of k (4 in the paper).
        memory_efficient: recompute each dense layer's concatenation -> BN -> ReLU -> 1x1 conv (-> BN -> ReLU) in
            backward (same maths, less memory); ``set_grad_checkpointing`` toggles it after construction.
        drop_path_rate: must be 0.0 (no residual path in DenseNet).
        reference_padding: accepted for the common interface; DenseNet pads identically either way.
        reference: None, ``"timm"``, ``"torchvision"`` (all the same numerics) or ``"tf"`` (Keras: BN eps 1.001e-5).
    """

    head_modules = ("classifier",)
    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        bottleneck: bool = True,
        compression: float = 0.5,
        stem: str = "imagenet",
        init_features: int = 64,
        dropout: float = 0.0,
        bn_size: int = 4,
        memory_efficient: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, REFERENCES, None)
        check_choice("stem", stem, STEMS)
        check(
            "drop_path_rate",
            drop_path_rate,
            drop_path_rate == 0.0,
            "DenseNet has no residual path to drop; valid: 0.0. Use dropout=<rate> for the paper's regularisation",
        )
        check("compression", compression, 0.0 < compression <= 1.0, "theta must be in (0, 1] (0.5 for -C)")
        check_probability("dropout", dropout)
        block_config = tuple(block_config)
        check(
            "block_config",
            block_config,
            bool(block_config) and all(isinstance(n, int) and n >= 1 for n in block_config),
            "give positive layer counts per block",
        )
        for knob, value in (("growth_rate", growth_rate), ("init_features", init_features), ("bn_size", bn_size)):
            check_int(knob, value, 1)
        self.growth_rate = growth_rate
        self.block_config = block_config
        self.stem_type = stem
        self.num_classes = num_classes
        layer_args = dict(bottleneck=bottleneck, bn_size=bn_size, dropout=dropout, memory_efficient=memory_efficient)

        body: OrderedDict[str, nn.Module] = OrderedDict()
        if stem == "imagenet":
            body["stem"] = ConvNormAct(in_chans, init_features, 7, stride=2)
            self.add_feature(init_features, 2, "body.stem", stage=0)
            body["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
            stride = 4
        else:
            body["stem"] = ConvNormAct(in_chans, init_features, 3, norm=False, act=False)
            stride = 1
        channels = init_features
        for i, num_layers in enumerate(block_config):
            if i > 0:
                out = math.floor(compression * channels)
                body[f"transition{i}"] = Transition(channels, out, dropout)
                channels, stride = out, stride * 2
            block = DenseBlock(num_layers, channels, growth_rate, **layer_args)
            body[f"block{i + 1}"] = block
            channels = block.out_channels
            tap = f"block{i + 1}"
            if i == len(block_config) - 1:
                body["final"] = nn.Sequential(
                    OrderedDict(norm=nn.BatchNorm2d(channels), act=nn.ReLU(inplace=True))
                )  # Table 1: BN-ReLU before global pooling; part of the deepest level
                tap = "final"
            self.add_feature(channels, stride, f"body.{tap}", stage=i + 1)  # stage 0 is the stem
        self.body = nn.ModuleDict(body)
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        if self.reference == "tf":
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps = KERAS_BN_EPS
        self.init_weights()

    def stage_modules(self) -> list[list[str]]:
        """The stem (and only the stem) is stage 0, for CIFAR models too; stage i is the i-th dense block with the
        transition in front of it."""
        stages = super().stage_modules()
        for s in stages[1:]:
            if "body.stem" in s:
                s.remove("body.stem")
                stages[0].insert(0, "body.stem")
        return stages

    @torch.no_grad()
    def init_weights(self) -> None:
        """As the base, but fan-in Kaiming convs (torchvision's DenseNet init): a 1x1 conv reading a wide
        concatenation would otherwise grow activations ~C/4k-fold per layer, and a fresh model in eval mode (identity
        BN statistics) reaches magnitudes ~1e6 where float32 rounding of channels_last/bf16 paths stands out."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, C)
        return x if pre_logits else self.classifier(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's name for ``memory_efficient``: recompute each dense layer's concatenation part in backward."""
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = enable

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map torchvision's / timm's DenseNet keys (``features.denseblock1.denselayer1.norm1.weight``; old
        torchvision checkpoints: ``...norm.1.weight``) onto ours (``body.block1.layer1.norm1.weight``)."""
        rules = (
            (r"^features\.conv0\.", "body.stem.conv."),
            (r"^features\.norm0\.", "body.stem.bn."),
            (r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\.", r"body.block\1.layer\2.\3\4."),
            (r"^features\.transition(\d+)\.", r"body.transition\1."),
            (r"^features\.norm5\.", "body.final.norm."),
        )
        out = {}
        for key, value in state_dict.items():
            for pattern, repl in rules:
                key, n = re.subn(pattern, repl, key)
                if n:
                    break
            out[key] = value
        return out


_PAPER = "Huang et al., Densely Connected Convolutional Networks, arXiv:1608.06993"
_TABLES = {
    "imagenet": "structure: paper Table 1; counts: arch_reference §1 ({}, computed)",
    "cifar": "structure: paper §3 / Table 2; counts: arch_reference §1 ({}, computed, CIFAR-10 head)",
}


def _card(preset: str, name: str, params: int, macs: int, top1: float | None, **kw) -> ModelCard:
    return make_card(
        preset,
        family="densenet",
        paper=_PAPER,
        table=_TABLES[preset].format(name),
        params=params,
        macs=macs,
        top1=top1,
        **kw,
    )


_TV_TOP1 = "top1: torchvision IMAGENET1K_V1 weights metadata (acc@1); paper Table 3 is not in shared/papers"
_C10 = "top1 = 100 - C10+ error, NASNet paper Table 1"


def _twins(name: str) -> dict[str, str]:
    return {"timm": name, "torchvision": name}


def _row(name: str) -> dict:
    """The registered defaults of a variant: its table row, and CIFAR-10's 10 classes for CIFAR models."""
    row = asdict(ARCHS[name])
    return {**row, "num_classes": 10} if row["stem"] == "cifar" else row


register_model(
    "densenet121",
    DenseNet,
    _card("imagenet", "DenseNet-121", 7_978_856, 2_834_000_000, 74.434, twins=_twins("densenet121"), notes=_TV_TOP1),
    **_row("densenet121"),
)
register_model(
    "densenet161",
    DenseNet,
    _card(
        "imagenet",
        "DenseNet-161",
        28_681_000,
        7_728_000_000,
        77.138,
        twins=_twins("densenet161"),
        notes=f"k=48, 96-ch stem: the authors' released model, not a Table 1 row. {_TV_TOP1}",
    ),
    **_row("densenet161"),
)
register_model(
    "densenet169",
    DenseNet,
    _card("imagenet", "DenseNet-169", 14_149_480, 3_360_000_000, 75.6, twins=_twins("densenet169"), notes=_TV_TOP1),
    **_row("densenet169"),
)
register_model(
    "densenet201",
    DenseNet,
    _card("imagenet", "DenseNet-201", 20_013_928, 4_291_000_000, 76.896, twins=_twins("densenet201"), notes=_TV_TOP1),
    **_row("densenet201"),
)
register_model(
    "densenet264",
    DenseNet,
    _card(
        "imagenet",
        "DenseNet-264",
        33_337_704,
        5_752_000_000,
        None,
        notes="the paper's k=32 model, not timm's densenet264d (k=48, deep stem: 72.7M params); no twin and no "
        "published weights in timm/torchvision; paper Table 3 top-1 is not in shared/papers",
    ),
    **_row("densenet264"),
)
register_model(
    "densenet_40_k12",
    DenseNet,
    _card(
        "cifar",
        "DenseNet (L=40,k=12)",
        1_019_722,
        265_000_000,
        94.76,
        paper_params=1.0e6,
        notes=f"16-channel stem (a 2k=24 stem would give 1,059,298 params, off the paper's 1.0M). {_C10}",
    ),
    **_row("densenet_40_k12"),
)
register_model(
    "densenet_100_k12",
    DenseNet,
    _card("cifar", "DenseNet (L=100,k=12)", 6_979_642, 1_770_000_000, 95.90, paper_params=7.0e6, notes=_C10),
    **_row("densenet_100_k12"),
)
register_model(
    "densenet_100_k24",
    DenseNet,
    _card("cifar", "DenseNet (L=100,k=24)", 27_249_082, 6_889_000_000, 96.26, paper_params=27.2e6, notes=_C10),
    **_row("densenet_100_k24"),
)
register_model(
    "densenet_bc_100_k12",
    DenseNet,
    _card(
        "cifar",
        "DenseNet-BC (L=100,k=12)",
        769_162,
        288_000_000,
        None,
        paper_params=0.8e6,
        notes="paper params 0.8M (slides: 'DenseNet (100 Layers, 0.8 M)'); its error is not in shared/papers",
    ),
    **_row("densenet_bc_100_k12"),
)
register_model(
    "densenet_bc_250_k24",
    DenseNet,
    _card(
        "cifar",
        "DenseNet-BC (L=250,k=24)",
        15_324_406,
        5_419_000_000,
        None,
        paper_params=15.3e6,
        notes="paper params 15.3M (slides: 'DenseNet (250 Layers, 15.3 M)'); its error is not in shared/papers",
    ),
    **_row("densenet_bc_250_k24"),
)
register_model(
    "densenet_bc_190_k40",
    DenseNet,
    _card(
        "cifar",
        "DenseNet-BC (L=190,k=40)",
        25_624_430,
        9_302_000_000,
        96.54,
        paper_params=25.6e6,
        notes=f"NASNet Table 1 misprints it as 'DenseNet-BC (L=100, k=40)' with depth 190. {_C10}",
    ),
    **_row("densenet_bc_190_k40"),
)
