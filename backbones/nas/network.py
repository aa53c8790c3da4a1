"""NASNet-style networks: stems, "N @ F" stacking of a genotype's cells, reduction placement, auxiliary head.

Papers: Zoph et al., "Learning Transferable Architectures for Scalable Image Recognition", arXiv 1707.07012
(section 3, Fig. 2, Tables 1-3, appendix A.4-A.7); Liu et al., "Progressive Neural Architecture Search", arXiv
1712.00559 (PNASNet-5); Pham et al., "Efficient Neural Architecture Search via Parameter Sharing", arXiv 1802.03268
(ENAS; the CIFAR-10 table in ``shared/papers/002``). Structures and counts: ``shared/reference/arch_reference.md``
sections 8-12; the reference code is TF-slim ``research/slim/nets/nasnet`` and ``melodyguan/enas``.

One class, :class:`NASNet`, builds every cell network from data: a genotype (``genotypes.py``), N normal cells per
stage (or one count per stage), the penultimate width F (``N @ F``; F0 = F / (4 x the normal cell's output width)),
an ImageNet stem (conv0 3x3/2 + two reduction "stem cells") or a CIFAR stem (conv 3x3/1). Every layer's wiring,
channel count and padding follows TF-slim ``_build_nasnet_base``; cell outputs are concatenations of 6F (normal) and
4F (reduction) for NASNet-A, as the released checkpoints (the paper's Fig. 4 shows 5F/3F). The wiring is data
(``plan.py``: :func:`~backbones.nas.plan.wire_cells`), and one executor (:func:`~backbones.nas.plan.run_plan`) runs
the classifier, ``features_only``, the auxiliary head's input and the C4 box head; the registered variants are rows in
``models.py``.

Deliberate deviations, each with the option restoring the reference:
* conv0 pads 1 and stride-2 ops pad symmetrically, so levels are exactly ``H / 2**i`` (``reference_padding=True``
  = ``reference="timm"`` gives the VALID conv0 and TF 'SAME' padding of the timm twins, bit for bit;
  ``reference="tf"`` the same with TensorFlow's average pools, which exclude the padding: TF-slim, keras-applications
  and Cadene's ports; ``reference="keras"`` Keras 3's NASNet, whose zero-padded stride-2 pools count the padding).
* Levels are the cell outputs after ReLU (what every consumer reads; timm's feature taps are the same ReLUs).
* ``create_model`` stores the parameters channels-last (its ``channels_last=True`` default, as for every family): on
  CPU depthwise convs and pooling run several times faster in that layout; results are the same.

Auxiliary head (A.7), built with ``aux_head=True``: in training mode ``forward`` returns ``(logits, aux_logits)``,
in eval mode only ``logits``. ScheduledDropPath (A.5): ``drop_path_rate`` is the drop probability of the last cell
at the end of training; cell i uses ``drop_path_rate * (i + 1) / num_cells_total``, scaled by training progress set
with :func:`backbones.set_drop_path_progress`; identity paths are never dropped; eval never drops.
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import registry
from ..base import Backbone
from ..checks import check, check_choice, check_probability
from .cell import Cell
from .genotypes import CONVENTIONS, CellGenotype, Genotype, get_genotype
from .ops import OpContext
from .plan import Plan, make_plan, run_plan, used_outputs, wire_cells

STEMS = ("imagenet", "cifar")


def output_width(cell: CellGenotype) -> int:
    """Channels of the cell's (first) output in units of F: 6 for NASNet-A's normal cell, 5 for PNASNet-5."""
    widths = [1] * cell.num_inputs + [2 if b.combine == "concat" else 1 for b in cell.blocks]
    if cell.outputs:
        return widths[cell.outputs[0]]
    last = widths[-1]
    return sum(widths[s] if s >= cell.num_inputs else last for s in cell.concat)


class AuxHead(nn.Module):
    """Auxiliary classifier (paper A.7; TF-slim ``_build_aux_head``): the cell output after ReLU -> avg pool 5/3
    VALID -> 1x1 conv 128 -> BN -> ReLU -> conv k x k 768 -> BN -> ReLU -> global pool -> FC.

    ``kernel`` is the pooled side at the design resolution, so the big conv covers the whole map there (TF-slim:
    VALID, 1x1 output; ENAS: SAME, then global pooling). Children conv1, bn1, conv2, bn2, fc.
    """

    def __init__(self, c_in: int, num_classes: int, kernel: int, same: bool, fc_bias: bool, ctx: OpContext) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv1 = nn.Conv2d(c_in, 128, 1, bias=False)
        self.bn1 = ctx.bn(128)
        self.pad = [(kernel - 1) // 2, kernel // 2] * 2 if same else None  # TF SAME at stride 1: extra pixel last
        self.conv2 = nn.Conv2d(128, 768, kernel, bias=False)
        self.bn2 = ctx.bn(768)
        self.fc = nn.Linear(768, num_classes, bias=fc_bias)
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(self.pool(x))), inplace=True)
        if self.pad is not None:
            x = F.pad(x, self.pad)
        if x.shape[-1] < self.kernel or x.shape[-2] < self.kernel:
            raise ValueError(
                f"aux head: pooled map {tuple(x.shape[-2:])} is smaller than its {self.kernel}x{self.kernel} conv, "
                f"which was sized for the model's input_size; train at that resolution or larger"
            )
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _CellTail(nn.Module):
    """The cells after a feature level, run on RoI features (see :meth:`NASNet.make_box_head`) by the network's
    executor: every input produced before the first of them is the RoI feature; returns the last cell's output after
    ReLU."""

    def __init__(self, cells: nn.ModuleDict, plan: Plan, out_channels: int) -> None:
        super().__init__()
        self.cells = cells
        self.plan = plan
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return run_plan(self.plan, self.cells, x, activated=True)["out"]


class NASNet(Backbone):
    """A cell network built from a genotype; see the module docstring.

    Args:
        genotype: name in ``genotypes.GENOTYPES`` or a :class:`Genotype`.
        num_cells: N, normal cells per stage, or one count per stage (PNASNet-5: (4, 3, 3)).
        penultimate_filters: width of the last cell's output ("N @ F").
        stem: ``"imagenet"`` (conv0 3x3/2 + two stem cells; levels c1..c5) or ``"cifar"`` (conv 3x3/1; c0..c2).
        stem_multiplier: conv0 width is 32 x this (ImageNet) or F0 x this (CIFAR).
        skip_reduction_layer_input: the normal cell after a reduction takes as h_{i-1} the reduction's own h_{i-1}
            (True, NASNet-A Large) or the reduction's input (False; NASNet-A Mobile/CIFAR, PNASNet-5, ENAS).
        num_classes, in_chans: classifier size and input channels.
        drop_rate: dropout before the classifier (paper: 0.5 on ImageNet).
        drop_path_rate: ScheduledDropPath probability of the last cell at the end of training (1 - keep prob).
        aux_head: build the auxiliary classifier; ``forward`` then returns ``(logits, aux_logits)`` in training mode.
        input_size: design resolution; only sizes the aux head's last conv.
        bn_eps, bn_momentum: BatchNorm settings (TF-slim ImageNet: 1e-3 and decay 0.9997, i.e. momentum 3e-4).
        reference_padding: VALID conv0 and TF 'SAME' padding of the timm twins (not fx-traceable): ``"timm"``.
        reference: None, ``"timm"``, ``"tf"`` or ``"keras"`` (see the module docstring; not fx-traceable).
    """

    head_modules = ("fc", "aux_head")

    def __init__(
        self,
        genotype: str | Genotype = "nasnet_a",
        *,
        num_cells: int | tuple[int, int, int] = 6,
        penultimate_filters: int = 4032,
        stem: str = "imagenet",
        stem_multiplier: float = 3.0,
        skip_reduction_layer_input: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        aux_head: bool = False,
        input_size: int = 224,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.0003,
        reference_padding: bool = False,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.reference = registry.resolve_reference(reference, reference_padding, ("timm", "tf", "keras"), "timm")
        reference_padding = self.reference is not None
        g = get_genotype(genotype)
        check_choice("stem", stem, STEMS)
        if isinstance(num_cells, int):
            counts: tuple = (num_cells,) * 3
        else:
            counts = tuple(num_cells) if isinstance(num_cells, tuple | list) else ()

        check(
            "num_cells",
            num_cells,
            len(counts) == 3 and all(isinstance(n, int) and n >= 1 for n in counts),
            "give a positive int N or three positive ints, one per stage",
        )
        check_probability("drop_path_rate", drop_path_rate)
        width = output_width(g.normal)
        if penultimate_filters % (4 * width):
            lo = penultimate_filters // (4 * width) * 4 * width
            raise ValueError(
                f"penultimate_filters={penultimate_filters} is not a multiple of {4 * width} (4 x the {g.name} normal "
                f"cell's output width {width}F); nearest valid: {lo} or {lo + 4 * width}"
            )
        f0 = penultimate_filters // (4 * width)
        even = 4 if stem == "imagenet" else 2  # factorized reductions split F0 (and the F0 / 2 of stem cell 1) in two
        if f0 % even:
            step = 4 * width * even
            lo = penultimate_filters // step * step
            raise ValueError(
                f"penultimate_filters={penultimate_filters} gives F0={f0}, but factorized reductions need F0 to be a "
                f"multiple of {even} with the {stem} stem; nearest valid: {lo or step} or {lo + step}"
            )
        conv = CONVENTIONS[g.conventions]
        self.genotype = g
        self.reference_padding = reference_padding
        self.num_classes = num_classes
        self._ctx = ctx = OpContext(bn_eps, bn_momentum, reference_padding, conv, same_pool=self.reference or "timm")

        # ---- stem -------------------------------------------------------------------------------------------------
        imagenet = stem == "imagenet"
        stem_c = int(32 * stem_multiplier) if imagenet else int(f0 * stem_multiplier)
        stride0 = 2 if imagenet else 1
        pad0 = 0 if (imagenet and reference_padding) else 1  # TF-slim conv0 is VALID
        self.stem = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_chans, stem_c, 3, stride0, pad0, bias=False), bn=ctx.bn(stem_c))
        )

        # ---- cells: the wiring as data, then one Cell per spec, tracking each producer's channels and stride -----
        specs = wire_cells(
            g.normal.num_inputs, conv.first_prev == "none", counts, imagenet, f0, skip_reduction_layer_input
        )
        self._specs = specs
        used = used_outputs(specs, g)
        chans: dict[int, list[int]] = {0: [stem_c]}
        strides: dict[int, int] = {0: stride0}
        cells = OrderedDict()
        for idx, sp in enumerate(specs, start=1):
            s0 = strides[sp.inputs[0].p]
            cell = Cell(
                g.reduce if sp.reduction else g.normal,
                in_channels=[chans[r.p][min(r.k, len(chans[r.p]) - 1)] for r in sp.inputs],
                in_factors=[s0 // strides[r.p] for r in sp.inputs],
                in_raw=[r.raw for r in sp.inputs],
                channels=sp.channels,
                stride=2 if sp.reduction else 1,
                ctx=ctx,
                drop_prob=drop_path_rate * idx / len(specs),
                used_outputs=used[idx],
            )
            cells[sp.name] = cell
            chans[idx] = cell.out_channels if isinstance(cell.out_channels, list) else [cell.out_channels]
            strides[idx] = s0 * cell.stride
        self.cells = nn.ModuleDict(cells)
        #: (channels of output 0, stride) of every producer (0 = stem), as built
        self._producers = [(chans[i][0], strides[i]) for i in range(len(specs) + 1)]

        # ---- levels: c1 = conv0, then the last cell at each stride (after ReLU) ------------------------------------
        self._level_of: dict[int, str] = {}
        if imagenet:
            self.add_feature(stem_c, 2, "stem", stage=0)
            self._level_of[0] = "c1"
        last_at = {strides[idx]: idx for idx in range(1, len(specs) + 1)}
        for stride, idx in sorted(last_at.items()):
            self.add_feature(chans[idx][0], stride, f"cells.{specs[idx - 1].name}", stage=specs[idx - 1].stage)
            self._level_of[idx] = self.feature_info[-1].name
        self._final = len(specs)
        self.num_features = chans[self._final][0]

        # ---- heads ------------------------------------------------------------------------------------------------
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, bias=conv.fc_bias) if num_classes else nn.Identity()
        self._aux_at: int | None = None
        if aux_head:
            self._aux_at = self._aux_position(conv.aux_after, imagenet)
            aux_stride = strides[self._aux_at]
            side = (math.ceil(input_size / aux_stride) - 5) // 3 + 1
            if side < 1:
                raise ValueError(
                    f"input_size={input_size} is too small for the aux head (5x5/3 pool at stride {aux_stride})"
                )
            self.aux_head = AuxHead(chans[self._aux_at][0], num_classes, side, conv.aux_same_padding, conv.fc_bias, ctx)
        self.init_weights()

    def _aux_position(self, where: str, imagenet: bool) -> int:
        base = 2 if imagenet else 1
        normal = [i for i, sp in enumerate(self._specs, start=1) if not sp.reduction]
        stage_of = {i: self._specs[i - 1].stage for i in normal}
        if where == "stage2_end":  # NASNet A.7 / TF-slim: after cell reduction_indices[1] - 1
            return max(i for i in normal if stage_of[i] == base + 1)
        return min(i for i in normal if stage_of[i] == base + 2)  # ENAS: aux_head_indices = [pool_layers[-1] + 1]

    # ---- running: one plan per request (levels, last activation, aux input), cached per set of cells ---------------
    def _plan(self, levels: tuple[str, ...], final: bool, aux: bool) -> Plan:
        key = (levels, final, aux, tuple(self.cells.keys()))
        cache = self.__dict__.setdefault("_plans", {})
        if key not in cache:
            # the stem level (c1) is conv0 -> BN as is; cell levels, the head and the aux head read cells after ReLU
            wanted = {name: (idx, idx > 0) for idx, name in self._level_of.items() if name in levels}
            if final:
                wanted["final"] = (self._final, True)
            if aux:
                wanted["aux"] = (self._aux_at, True)
            cache[key] = make_plan(self._specs, self.cells, wanted)
        return cache[key]

    def _run(self, x: Tensor, levels: tuple[str, ...] = (), final: bool = False, aux: bool = False) -> dict:
        """Stem and cells up to the deepest thing asked for: the levels by name, ``"final"``, ``"aux"``."""
        return run_plan(self._plan(levels, final, aux), self.cells, self.stem(x))

    # ---- Backbone contract -------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        return self._run(x, final=True)["final"]

    def forward_levels(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict(self._run(x, self.out_features))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor):
        """Logits; ``(logits, aux_logits)`` in training mode with ``aux_head=True``; the levels dict when
        ``features_only``."""
        if self.features_only:
            self.check_input_size(x)
            return self.forward_levels(x)
        aux = self.training and hasattr(self, "aux_head")
        out = self._run(x, final=True, aux=aux)
        logits = self.forward_head(out["final"])
        if aux:
            return logits, self.aux_head(out["aux"])
        return logits

    def stage_modules(self) -> list[list[str]]:
        num = max(f.stage for f in self.feature_info) + 1
        stages: list[list[str]] = [["stem"]] + [[] for _ in range(num - 1)]
        for sp in self._specs:
            if sp.name in self.cells:
                stages[sp.stage].append(f"cells.{sp.name}")
        return stages

    def _prune_for_features(self) -> None:
        for name in ("fc", "aux_head"):
            if hasattr(self, name):
                delattr(self, name)
        deepest = max((self.feature(n) for n in self.out_features), key=lambda f: f.stride)
        keep = 0 if deepest.module == "stem" else 1 + [f"cells.{sp.name}" for sp in self._specs].index(deepest.module)
        for sp in self._specs[keep:]:
            del self.cells[sp.name]
        self.__dict__.pop("_plans", None)

    def make_box_head(self, level: str = "c4") -> nn.Module:
        """Faster R-CNN C4 box head (NASNet paper section 4.3): the cells after ``level``, moved out of this network
        and run on each RoI. Every cell input produced at or before ``level`` is fed the RoI feature, which has the
        width and stride of those producers (NASNet-A: the last two normal cells of the stride-16 stage)."""
        if not self.features_only:
            raise ValueError("make_box_head needs a features_only model (create_model(..., features_only=True))")
        tap = self.feature(level).module
        names = [f"cells.{sp.name}" for sp in self._specs]
        if tap not in names:
            raise ValueError(f"level {level!r} is the stem; a box head starts after a cell level")
        first = names.index(tap) + 2  # producer index of the first cell after the tap (0 = stem)
        run = [sp.name for sp in self._specs[first - 1 :] if sp.name in self.cells]
        if not run:
            raise ValueError(f"no cell runs after {level!r}; keep a deeper level in out_features")
        last = first + len(run) - 1
        want = (self.feature(level).channels, self.feature(level).stride)
        for sp in self._specs[first - 1 : last]:
            for r in sp.inputs:
                if r.p < first and self._producers[r.p] != want:
                    c, s = self._producers[r.p]
                    raise NotImplementedError(
                        f"{sp.name} reads a producer of {c} channels at stride {s}, unlike {level} ({want[0]} at "
                        f"stride {want[1]}): this genotype has no C4 box head"
                    )
        cells = nn.ModuleDict((n, self.cells[n]) for n in run)
        tail = _CellTail(
            cells, make_plan(self._specs, cells, {"out": (last, True)}, first=first), self._producers[last][0]
        )
        for n in run:
            del self.cells[n]
        self.__dict__.pop("_plans", None)
        self.out_features = (level,)
        return tail

    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm ``nasnetalarge`` / ``pnasnet5large`` key names -> ours (a systematic rule, see ``_TIMM_CELL_RULES``)."""
        pnas = any(k.startswith("conv_0.") for k in state_dict)
        ours = [sp.name for sp in self._specs]
        stems = [n for n in ours if n.startswith("cell_stem_")]
        # timm numbers PNASNet's cells in execution order, reductions included; NASNet's names are TF-slim's, as ours
        names = stems + [f"cell_{i}" for i in range(len(ours) - len(stems))] if pnas else ours
        cell_map = dict(zip(names, ours))
        out = {}
        for key, v in state_dict.items():
            out[_remap_key(key, cell_map)] = v
        return out


_TIMM_TOP_RULES = [(r"conv_?0\.(conv|bn)\.(.*)", r"stem.\1.\2"), (r"last_linear\.(.*)", r"fc.\1")]
_SIDE = {"left": 0, "right": 1}
_TIMM_CELL_RULES = [
    (r"conv_1x1\.(conv|bn)\.", lambda m: f"pre.0.{m[1]}."),
    (r"(?:conv_prev_1x1\.)?path_([12])\.conv\.", lambda m: f"pre.1.path{m[1]}."),
    (r"(?:conv_prev_1x1\.)?final_path_bn\.", lambda m: "pre.1.bn."),
    (r"conv_prev_1x1\.(conv|bn)\.", lambda m: f"pre.1.{m[1]}."),
    (
        r"comb_iter_(\d)_(left|right)\.separable_(\d)\.(depthwise|pointwise)_conv2d\.",
        lambda m: f"ops.{2 * int(m[1]) + _SIDE[m[2]]}.conv{m[3]}.{m[4]}.",
    ),
    (r"comb_iter_(\d)_(left|right)\.bn_sep_(\d)\.", lambda m: f"ops.{2 * int(m[1]) + _SIDE[m[2]]}.bn{m[3]}."),
    (r"comb_iter_(\d)_(left|right)\.(conv|bn)\.", lambda m: f"ops.{2 * int(m[1]) + _SIDE[m[2]]}.{m[3]}."),
]


def _remap_key(key: str, cell_map: dict[str, str]) -> str:
    for pat, rep in _TIMM_TOP_RULES:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    cell, _, rest = key.partition(".")
    if cell not in cell_map:
        return key
    for pat, rep in _TIMM_CELL_RULES:
        m = re.match(pat, rest)
        if m:
            return f"cells.{cell_map[cell]}.{rep(m)}{rest[m.end() :]}"
    return key


# ---- builders: "N @ F" with the TF-slim config of its stem (the registered variants are in models.py) ---------------
_STEM_DEFAULTS = {
    # TF-slim nasnet.py large_imagenet_config / mobile_imagenet_config / cifar_config
    "imagenet": dict(stem_multiplier=3.0, drop_rate=0.5, input_size=224, bn_eps=1e-3, bn_momentum=0.0003),
    "cifar": dict(stem_multiplier=3.0, drop_rate=0.0, input_size=32, bn_eps=1e-5, bn_momentum=0.1),
}


# any genotype (a registered name, a genotype .json file, a Genotype) as "N @ F" (issue 16); nasnet_a is its NASNet-A
def nasnet(
    genotype: str | Genotype = "nasnet_a",
    *,
    num_cells: int | tuple[int, int, int] = 4,
    penultimate_filters: int | None = None,
    stem: str = "imagenet",
    stem_multiplier: float | None = None,
    skip_reduction_layer_input: bool = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_rate: float | None = None,
    drop_path_rate: float = 0.0,
    aux_head: bool = False,
    input_size: int | None = None,
    bn_eps: float | None = None,
    bn_momentum: float | None = None,
    reference_padding: bool = False,
    reference: str | None = None,
) -> NASNet:
    """A NASNet of any cells: ``genotype`` is a name of ``genotypes.GENOTYPES``, a genotype file (``tools/search.py``
    writes ``best.json``) or a :class:`Genotype`. Unset options take NASNet-A Mobile's choices (Table 3): 4 cells
    per stage, F0 = 44 per concatenated state (``penultimate_filters`` = 4 x 44 x the normal cell's output width;
    1056 for NASNet-A), stem x1; with ``stem="cifar"`` TF-slim's CIFAR config, F0 = 32 (6 @ 768, Table 1)."""
    from .space import resolve_genotype

    g = resolve_genotype(genotype)
    check_choice("stem", stem, _STEM_DEFAULTS)
    config = {**_STEM_DEFAULTS[stem], **({"stem_multiplier": 1.0} if stem == "imagenet" else {})}
    given = dict(stem_multiplier=stem_multiplier, drop_rate=drop_rate, input_size=input_size, bn_eps=bn_eps,
                 bn_momentum=bn_momentum)  # fmt: skip
    config.update({k: v for k, v in given.items() if v is not None})
    width = output_width(g.normal)
    enas_stem = stem == "imagenet" and g.conventions == "enas"  # its identity reductions split stem cell 0's F0 / 4
    if penultimate_filters is None:
        penultimate_filters = 4 * (48 if enas_stem else 44 if stem == "imagenet" else 32) * width
    if enas_stem and penultimate_filters % (4 * width) == 0 and penultimate_filters // (4 * width) % 8:
        raise ValueError(
            f"penultimate_filters={penultimate_filters} gives F0={penultimate_filters // (4 * width)}; a genotype with "
            f"ENAS conventions on the ImageNet stem needs F0 to be a multiple of 8 (stem cell 0 is F0 / 4 wide and "
            f"its factorized reductions halve that); e.g. penultimate_filters={4 * 48 * width}"
        )
    return NASNet(
        g,
        num_cells=num_cells,
        penultimate_filters=penultimate_filters,
        stem=stem,
        skip_reduction_layer_input=skip_reduction_layer_input,
        num_classes=num_classes if num_classes is not None else (1000 if stem == "imagenet" else 10),
        in_chans=in_chans,
        drop_path_rate=drop_path_rate,
        aux_head=aux_head,
        reference_padding=reference_padding,
        reference=reference,
        **config,
    )


#: NASNet-A "N @ F": :func:`nasnet` with the NASNet-A cells, 6 @ 4032 and stem multiplier 3 by default (TF-slim's
#: large and CIFAR configs), keyword arguments only
nasnet_a = functools.partial(nasnet, "nasnet_a", num_cells=6, penultimate_filters=4032, stem_multiplier=3.0)
