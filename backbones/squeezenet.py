"""SqueezeNet 1.0 and 1.1, with the paper's simple and complex bypass, as a detection backbone.

Paper: Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size"
(arXiv:1602.07360). Table 1 (``papers/002``) gives the Fire configurations (s1x1, e1x1, e3x3) and the parameter total
1,248,424; Table 3 the bypass variants (vanilla 57.5 %, simple bypass 60.4 %, complex bypass 58.8 % top-1).
SqueezeNet 1.1 is DeepScale/SqueezeNet ``SqueezeNet_v1.1/README.md``: conv1 3x3/2 with 64 filters and the pools moved
earlier (after conv1, fire3, fire5). Counts: ``shared/reference/arch_reference.md`` section 2.

The network has no normalisation layers (Table 1, Caffe prototxts): ``norm="frozen_bn"/"gn"/"sync_bn"`` have nothing
to replace and leave it unchanged.

Deviations, each behind an option:

* Padding. The reference conv1 is valid-padded and the pools are ceil-mode (torchvision, Caffe): at 224 the maps are
  109/54/27/13 (1.0) and 111/55/27/13 (1.1), not H/2**i. By default conv1 is padded by ``k // 2``, so it gives exactly
  H/2; the ceil-mode 3x3/2 pools then halve every even side exactly, so every level is exactly H/2**i for sides that
  are multiples of 32. ``reference_padding=True`` restores the valid conv1 (torchvision's sizes exactly). The default
  costs more mult-adds at 224 (887.5 M vs 818.9 M for 1.0, 387.4 M vs 349.2 M for 1.1: larger maps, same weights).
* ``reference`` (docs/weights.md): ``"torchvision"`` = ``reference_padding=True`` (valid conv1); ``"caffe"`` is the
  authors' prototxts: valid conv1 and, for 1.0 (``SqueezeNet_v1.0`` and the bypass "SqueezeNet-Residual"), conv10
  padded by 1, so the 1x1 classifier also sees a ring of zeros whose ReLU(bias) joins the global average (v1.1's
  prototxt does not pad conv10: ``"caffe"`` is torchvision's network there).
* c5. The original net stops at stride 16 (fire9). Level ``c5`` is a parameter-free 3x3/2 max-pool (padding 1, so
  ceil(H/2) for any side) of fire9's output, run only when ``c5`` is requested: the classifier path (fire9 -> dropout
  -> conv10 -> ReLU -> global average pool) and the parameter and mult-add counts are those of the paper.
* Bypass (paper section 6, Table 3; arch_reference section 2). ``bypass="simple"`` adds a Fire module's input to its
  output wherever the channels agree (fire3/5/7/9 in 1.0; for fire5 and fire9 that input is the max-pooled map), no
  ReLU after the add, no parameters. ``bypass="complex"`` adds, where the channels differ (fire2/4/6/8), a 1x1 conv
  (with bias, as every SqueezeNet conv) on the bypass. The exact wiring of the complex bypass is unverified: no
  reference prototxt was found, and the 1x1 convs here add 341,248 parameters (1.4 MB in fp32) while Table 3 reports
  7.7 MB against 4.8 MB.
* ``se_ratio`` (SENet, arXiv:1709.01507: SE applies to any architecture) puts a squeeze-excitation module of reduction
  r on each Fire module's output, before the bypass add; ``drop_path_rate`` drops the Fire branch of bypassed modules
  (stochastic depth needs a bypass, so it requires ``bypass="simple"`` or ``"complex"``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone
from .checks import check_choice, check_int, check_probability
from .layers import ConvNormAct, DropPath, SqueezeExcite, check_se_ratio
from .registry import ModelCard, register_model, resolve_reference

VERSIONS = ("1_0", "1_1")
BYPASSES = ("none", "simple", "complex")


@dataclass(frozen=True)
class FireSpec:
    """One Fire module of Table 1: squeeze 1x1 (s1x1), expand 1x1 (e1x1) and expand 3x3 (e3x3) filters."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def out_channels(self) -> int:
        return self.expand1x1 + self.expand3x3


# Table 1 (identical in 1.0 and 1.1): fire2 .. fire9
FIRES: tuple[FireSpec, ...] = (
    FireSpec(16, 64, 64),  # fire2
    FireSpec(16, 64, 64),  # fire3
    FireSpec(32, 128, 128),  # fire4
    FireSpec(32, 128, 128),  # fire5
    FireSpec(48, 192, 192),  # fire6
    FireSpec(48, 192, 192),  # fire7
    FireSpec(64, 256, 256),  # fire8
    FireSpec(64, 256, 256),  # fire9
)


@dataclass(frozen=True)
class SqueezeNetArch:
    """The macro-architecture of one version: conv1 and where the stride-2 max-pools sit."""

    stem_channels: int  # conv1 filters
    stem_kernel: int  # conv1 kernel (stride 2)
    pool_after: tuple[int, ...]  # fire numbers followed by a 3x3/2 max-pool (one always follows conv1)


VERSION_ARCHS: dict[str, SqueezeNetArch] = {
    "1_0": SqueezeNetArch(96, 7, (4, 8)),  # Table 1: conv1 7x7/2 x96, maxpool1, maxpool4, maxpool8
    "1_1": SqueezeNetArch(64, 3, (3, 5)),  # SqueezeNet_v1.1 README: conv1 3x3/2 x64, pool{1,3,5}
}


class Fire(nn.Module):
    """Fire module (paper section 3.2, Fig. 1): squeeze 1x1 + ReLU, then expand 1x1 and expand 3x3 (pad 1) in
    parallel, concatenated, ReLU; optional SE on the output and a bypass (identity or 1x1 conv) added after it."""

    def __init__(self, in_channels: int, spec: FireSpec, bypass: str, se_ratio: int | None, drop_path: float) -> None:
        super().__init__()
        out_channels = spec.out_channels
        self.squeeze = nn.Conv2d(in_channels, spec.squeeze, 1)
        self.expand1x1 = nn.Conv2d(spec.squeeze, spec.expand1x1, 1)
        self.expand3x3 = nn.Conv2d(spec.squeeze, spec.expand3x3, 3, padding=1)
        self.se = SqueezeExcite(out_channels, reduction=se_ratio) if se_ratio else None
        self.identity = bypass != "none" and in_channels == out_channels
        # complex bypass: a 1x1 conv where the channels differ (paper section 6)
        self.bypass = nn.Conv2d(in_channels, out_channels, 1) if bypass == "complex" and not self.identity else None
        residual = self.identity or self.bypass is not None
        self.drop_path = DropPath(drop_path) if residual and drop_path > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        s = F.relu(self.squeeze(x), inplace=True)
        # ReLU on each branch before the concatenation: in backward the ReLU then hands each conv a contiguous
        # gradient (a ReLU after the concatenation would leave channel slices the convs must copy)
        out = torch.cat([F.relu(self.expand1x1(s), inplace=True), F.relu(self.expand3x3(s), inplace=True)], 1)
        if self.se is not None:
            out = self.se(out)
        if self.identity or self.bypass is not None:
            if self.drop_path is not None:
                out = self.drop_path(out)
            # in place: neither the concatenation's, SE's nor DropPath's backward needs its output
            out += x if self.bypass is None else self.bypass(x)
        return out


class SqueezeNet(Backbone):
    """SqueezeNet 1.0 / 1.1 (``version``) with optional bypass, SE and stochastic depth.

    Levels: ``c1`` conv1 (stride 2), ``c2``/``c3`` the last Fire module before the second/third max-pool, ``c4``
    fire9 (stride 16), ``c5`` a parameter-free 3x3/2 max-pool of fire9 (see the module docstring).

    Args:
        version: ``"1_0"`` (Table 1) or ``"1_1"`` (DeepScale v1.1).
        bypass: ``"none"``, ``"simple"`` or ``"complex"`` (paper Table 3).
        se_ratio: SE reduction r on each Fire output; None or 0 turns SE off.
        drop_rate: dropout before conv10 (paper: 0.5 after fire9).
        num_classes: conv10 filters (0 = no classifier: pooled fire9 features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last bypassed Fire module, linear in depth; needs a bypass.
        reference_padding: valid-padded conv1 as torchvision/Caffe (feature sizes then not exactly H/2**i).
        reference: None, ``"torchvision"`` or ``"caffe"`` (see the module docstring).
    """

    head_modules = ("classifier",)
    classifier_name = "classifier"

    def __init__(
        self,
        version: str = "1_0",
        bypass: str = "none",
        se_ratio: int | None = None,
        drop_rate: float = 0.5,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = resolve_reference(reference, reference_padding, ("torchvision", "caffe"), "torchvision")
        reference_padding = self.reference is not None
        check_choice("version", version, VERSIONS)
        check_choice("bypass", bypass, BYPASSES)
        check_se_ratio(se_ratio)
        check_probability("drop_rate", drop_rate)
        check_probability("drop_path_rate", drop_path_rate)
        check_int("num_classes", num_classes)
        if drop_path_rate > 0 and bypass == "none":
            raise ValueError(
                f"drop_path_rate={drop_path_rate} needs a residual path, but bypass='none'; "
                f"use bypass='simple' or 'complex', or drop_path_rate=0"
            )
        arch = VERSION_ARCHS[version]
        self.version = version
        self.reference_padding = reference_padding
        self.drop_rate = drop_rate

        k = arch.stem_kernel
        body: OrderedDict[str, nn.Module] = OrderedDict()
        # conv1 has a bias and no norm (Table 1); padded by k // 2 unless the reference's valid conv is asked for
        body["conv1"] = ConvNormAct(
            in_chans, arch.stem_channels, k, 2, 0 if reference_padding else k // 2, bias=True, norm=False
        )
        self.add_feature(arch.stem_channels, 2, "body.conv1")
        body["pool1"] = nn.MaxPool2d(3, 2, ceil_mode=True)

        inputs = [arch.stem_channels] + [spec.out_channels for spec in FIRES[:-1]]
        # Fire modules with a bypass, in depth order: stochastic depth rises linearly over them
        bypassed = [
            i
            for i, c in enumerate(inputs)
            if bypass == "complex" or (bypass == "simple" and c == FIRES[i].out_channels)
        ]
        channels, stride = arch.stem_channels, 4
        for i, spec in enumerate(FIRES):
            number = i + 2
            dpr = drop_path_rate * (bypassed.index(i) + 1) / len(bypassed) if i in bypassed else 0.0
            body[f"fire{number}"] = Fire(channels, spec, bypass, se_ratio, dpr)
            channels = spec.out_channels
            if number in arch.pool_after:
                self.add_feature(channels, stride, f"body.fire{number}")
                body[f"pool{number}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
                stride *= 2
        self.add_feature(channels, stride, "body.fire9")
        # c5 only: parameter-free, ceil(H/2) for any side, not on the classifier path
        body["pool_c5"] = nn.MaxPool2d(3, 2, padding=1)
        self.add_feature(channels, 2 * stride, "body.pool_c5")
        self.body = nn.ModuleDict(body)

        self.num_features = channels
        self.num_classes = num_classes
        # conv10: 1x1 conv classifier with bias, followed by ReLU and global average pooling (Table 1)
        # the Caffe v1.0 prototxts pad conv10 by 1 (reference="caffe")
        self.conv10_pad = 1 if self.reference == "caffe" and version == "1_0" else 0
        self.classifier = (
            nn.Conv2d(channels, num_classes, 1, padding=self.conv10_pad) if num_classes > 0 else nn.Identity()
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Kaiming-uniform convs, zero biases, conv10 N(0, 0.01) (the torchvision / Caffe ``xavier``-style init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.classifier:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """fire9's output (stride 16): the c5 pool is not on the classifier path."""
        for name, module in self.body.items():
            if name == "pool_c5":
                break
            x = module(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.drop_rate > 0.0:
            x = F.dropout(x, self.drop_rate, self.training)
        if pre_logits or self.num_classes == 0:
            return x.mean((2, 3))
        # conv10 -> ReLU -> global average pool: (B, 512, h, w) -> (B, num_classes)
        return F.relu(self.classifier(x), inplace=True).mean((2, 3))

    def reset_classifier(self, num_classes: int) -> None:
        pad = self.conv10_pad
        self.classifier = (
            nn.Conv2d(self.num_features, num_classes, 1, padding=pad) if num_classes > 0 else nn.Identity()
        )
        if num_classes > 0:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)
        self.num_classes = num_classes

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map torchvision ``squeezenet1_0/1_1`` names (``features.<i>``, ``classifier.1``) onto ours.

        torchvision's ``features`` Sequential holds conv1, its ReLU, then our body modules in the same order.
        """
        index = {0: "conv1.conv"}
        for i, key in enumerate(k for k in self.body if k not in ("conv1", "pool_c5")):
            index[i + 2] = key  # features.1 is conv1's ReLU
        out = {}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head == "features":
                i, _, rest = rest.partition(".")
                key = f"body.{index[int(i)]}.{rest}" if int(i) in index else key
            elif key.startswith("classifier.1."):
                key = "classifier." + key.removeprefix("classifier.1.")
            out[key] = value
        return out


_PAPER = "Iandola et al. 2016, SqueezeNet, arXiv:1602.07360"
_MACS_NOTE = (
    "MACs are those of the reference padding (valid conv1, reference_padding=True); the default pads conv1 for exact "
    "H/2**i levels and counts {default} at 224. "
)


def _card(table: str, params: int, macs: int, **kw) -> ModelCard:
    return ModelCard(
        family="squeezenet", paper=_PAPER, table=table, params=params, macs=macs, macs_reference_padding=True, **kw
    )


register_model(
    "squeezenet1_0",
    SqueezeNet,
    _card(
        "Table 1 (params, exact); arch_reference section 2 (MACs at 224, = torchvision meta 0.819 GFLOPS)",
        1_248_424,
        818_924_576,
        macs_at={227: 832_667_936},
        top1=57.5,
        twins={"torchvision": "squeezenet1_0"},
        paper_params=1_248_424,
        paper_macs=833e6,
        notes=_MACS_NOTE.format(default="887.5 M")
        + "ShuffleNet paper Table 6 gives 833 MFLOPs (= this count at the Caffe crop 227); MobileNet paper Table 9's "
        "1700 M counts multiplies and adds separately. The Caffe prototxt pads conv10 by 1 (861.3 M at 227); "
        "torchvision does not. top-1 57.5 is Table 2/3 (Caffe).",
    ),
    version="1_0",
)
register_model(
    "squeezenet1_1",
    SqueezeNet,
    _card(
        "arch_reference section 2 (computed; = torchvision meta 1,235,496 params, 0.349 GFLOPS)",
        1_235_496,
        349_151_936,
        macs_at={227: 387_747_520},
        twins={"torchvision": "squeezenet1_1"},
        notes=_MACS_NOTE.format(default="387.4 M")
        + "DeepScale README: 2.4x less computation than 1.0 at the same accuracy.",
    ),
    version="1_1",
)
register_model(
    "squeezenet1_0_bypass",
    SqueezeNet,
    _card(
        "Table 3 (simple bypass: same size as vanilla); params = Table 1 total",
        1_248_424,
        818_924_576,
        top1=60.4,
        notes=_MACS_NOTE.format(default="887.5 M") + "Simple bypass around fire3/5/7/9 adds no parameters.",
    ),
    version="1_0",
    bypass="simple",
)
register_model(
    "squeezenet1_0_complex_bypass",
    SqueezeNet,
    _card(
        "Table 3 (complex bypass); Table 1 total + the 1x1 bypass convs: 96x128 + 128x256 + 256x384 + 384x512 weights "
        "and 1,280 biases; their MACs 54^2 x (96x128 + 128x256) + 27^2 x (256x384 + 384x512) on the 224 maps",
        1_248_424 + 341_248,
        818_924_576 + 346_374_144,
        top1=58.8,
        notes=_MACS_NOTE.format(default="1,260.0 M")
        + "Exact wiring unverified (arch_reference sections 2 and 14): no reference prototxt found; Table 3's 7.7 MB "
        "suggests about 0.7 M extra parameters, the 1x1 convs here add 0.34 M.",
    ),
    version="1_0",
    bypass="complex",
)
