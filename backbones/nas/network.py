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
4F (reduction) for NASNet-A, as the released checkpoints (the paper's Fig. 4 shows 5F/3F).

Deliberate deviations, each with the option restoring the reference:
* conv0 pads 1 and stride-2 ops pad symmetrically, so levels are exactly ``H / 2**i`` (``reference_padding=True``
  gives the VALID conv0 and TF 'SAME' padding of the timm twins, bit for bit).
* Levels are the cell outputs after ReLU (what every consumer reads; timm's feature taps are the same ReLUs).
* ``create_model`` stores the parameters channels-last (its ``channels_last=True`` default, as for every family): on
  CPU depthwise convs and pooling run several times faster in that layout; results are the same.

Auxiliary head (A.7), built with ``aux_head=True``: in training mode ``forward`` returns ``(logits, aux_logits)``,
in eval mode only ``logits``. ScheduledDropPath (A.5): ``drop_path_rate`` is the drop probability of the last cell
at the end of training; cell i uses ``drop_path_rate * (i + 1) / num_cells_total``, scaled by training progress set
with :func:`backbones.set_drop_path_progress`; identity paths are never dropped; eval never drops.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Backbone
from ..registry import CIFAR_MEAN, CIFAR_STD, INCEPTION_MEAN, INCEPTION_STD, ModelCard, register_model
from .cell import Cell, live_states
from .genotypes import CONVENTIONS, CellGenotype, Genotype, get_genotype
from .macro import ENASMacro
from .ops import OpContext

STEMS = ("imagenet", "cifar")


def output_width(cell: CellGenotype) -> int:
    """Channels of the cell's (first) output in units of F: 6 for NASNet-A's normal cell, 5 for PNASNet-5."""
    widths = [1] * cell.num_inputs + [2 if b.combine == "concat" else 1 for b in cell.blocks]
    if cell.outputs:
        return widths[cell.outputs[0]]
    last = widths[-1]
    return sum(widths[s] if s >= cell.num_inputs else last for s in cell.concat)


@dataclass(frozen=True)
class _Ref:
    """Input of a cell: output ``k`` of producer ``p`` (0 = stem), or the raw input 0 when ``raw``."""

    p: int
    k: int = 0
    raw: bool = False


@dataclass(frozen=True)
class _Spec:
    name: str
    reduction: bool
    channels: int
    stage: int
    inputs: tuple[_Ref, ...]


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
    """The cells after a feature level, run on RoI features (see :meth:`NASNet.make_box_head`): any input produced
    before ``first`` is the RoI feature ``x``; returns the last cell's output after ReLU."""

    def __init__(self, cells: nn.ModuleDict, specs: list, first: int, out_channels: int) -> None:
        super().__init__()
        self.cells = cells
        self._specs = [sp for sp in specs if sp.name in cells]
        self._first = first
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        vals: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        y: Tensor | list[Tensor] = x
        for idx, sp in enumerate(self._specs, start=self._first):
            pairs = [(x, x) if r.p < self._first else vals[(r.p, min(r.k, _outputs(vals, r.p) - 1))] for r in sp.inputs]
            y = self.cells[sp.name]([a for a, _ in pairs], [b for _, b in pairs])
            for k, t in enumerate(y if isinstance(y, list) else [y]):
                vals[(idx, k)] = (t, F.relu(t))
        return vals[(self._first + len(self._specs) - 1, 0)][1]


def _outputs(vals: dict, p: int) -> int:
    return sum(1 for q, _ in vals if q == p)


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
        reference_padding: VALID conv0 and TF 'SAME' padding of the timm twins (not fx-traceable).
    """

    head_modules = ("fc", "aux_head")

    def __init__(
        self,
        genotype: str | Genotype = "nasnet_a",
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
    ) -> None:
        super().__init__()
        g = get_genotype(genotype)
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r} is not valid; choose one of {', '.join(STEMS)}")
        counts = (num_cells,) * 3 if isinstance(num_cells, int) else tuple(num_cells)
        if len(counts) != 3 or any(not isinstance(n, int) or n < 1 for n in counts):
            raise ValueError(f"num_cells={num_cells!r} must be a positive int N or three positive ints, one per stage")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
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
        self._ctx = ctx = OpContext(bn_eps, bn_momentum, reference_padding, conv)

        # ---- stem -------------------------------------------------------------------------------------------------
        imagenet = stem == "imagenet"
        stem_c = int(32 * stem_multiplier) if imagenet else int(f0 * stem_multiplier)
        stride0 = 2 if imagenet else 1
        pad0 = 0 if (imagenet and reference_padding) else 1  # TF-slim conv0 is VALID
        self.stem = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_chans, stem_c, 3, stride0, pad0, bias=False), bn=ctx.bn(stem_c))
        )

        # ---- cells, as a plan: TF-slim _imagenet_stem + _build_nasnet_base ---------------------------------------
        specs: list[_Spec] = []
        k_in = g.normal.num_inputs
        hist: list[int | None] = ([None] * (k_in - 1) if conv.first_prev == "none" else [0] * (k_in - 1)) + [0]
        if imagenet:
            for i in range(2):
                specs.append(self._spec(f"cell_stem_{i}", True, int(f0 * 2.0 ** (i - 2)), i + 1, hist, False))
                hist.append(len(specs))
        stage_base = 2 if imagenet else 1
        n_normal = 0
        for s, n in enumerate(counts):
            skip = False
            if s > 0:
                specs.append(self._spec(f"reduction_cell_{s - 1}", True, f0 * 2**s, stage_base + s, hist, False))
                hist.append(len(specs))
                skip = skip_reduction_layer_input
            for i in range(n):
                specs.append(self._spec(f"cell_{n_normal}", False, f0 * 2**s, stage_base + s, hist, skip and i == 0))
                hist.append(len(specs))
                n_normal += 1
        self._specs = specs

        # ---- build the cells, tracking each producer's channels and stride ----------------------------------------
        # outputs some later layer reads, from the last cell backwards (output 0 always: next cell, level, head);
        # only matters for cells emitting several states (NASNet-B), whose last ones feed layers that do not exist
        n_out = len(g.normal.outputs) or 1
        used: dict[int, set[int]] = {i: {0} for i in range(len(specs) + 1)}
        for idx in range(len(specs), 0, -1):
            sp = specs[idx - 1]
            live = live_states(g.reduce if sp.reduction else g.normal, tuple(sorted(used[idx])))
            for j, r in enumerate(sp.inputs):
                if j in live:
                    used[r.p].add(0 if r.raw or r.p == 0 else min(r.k, n_out - 1))
        chans: dict[int, list[int]] = {0: [stem_c]}
        strides: dict[int, int] = {0: stride0}
        cells = OrderedDict()
        total = len(specs)
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
                drop_prob=drop_path_rate * idx / total,
                used_outputs=tuple(sorted(used[idx])),
            )
            cells[sp.name] = cell
            chans[idx] = cell.out_channels if isinstance(cell.out_channels, list) else [cell.out_channels]
            strides[idx] = s0 * cell.stride
        self.cells = nn.ModuleDict(cells)

        # ---- levels: c1 = conv0, then the last cell at each stride (after ReLU) ------------------------------------
        self._level_of: dict[int, str] = {}
        if imagenet:
            self.add_feature(stem_c, 2, "stem", stage=0)
            self._level_of[0] = "c1"
        last_at: dict[int, int] = {}
        for idx in range(1, len(specs) + 1):
            last_at[strides[idx]] = idx
        for stride, idx in sorted(last_at.items()):
            name = f"cells.{specs[idx - 1].name}"
            self.add_feature(chans[idx][0], stride, name, stage=specs[idx - 1].stage)
            self._level_of[idx] = self.feature_info[-1].name
        self._final = len(specs)
        self.num_features = chans[self._final][0]

        # ---- heads ------------------------------------------------------------------------------------------------
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, bias=conv.fc_bias) if num_classes else nn.Identity()
        self._aux_at: int | None = None
        if aux_head:
            self._aux_at = self._aux_position(conv.aux_after, counts, imagenet)
            aux_stride = strides[self._aux_at]
            side = (math.ceil(input_size / aux_stride) - 5) // 3 + 1
            if side < 1:
                raise ValueError(
                    f"input_size={input_size} is too small for the aux head (5x5/3 pool at stride {aux_stride})"
                )
            self.aux_head = AuxHead(chans[self._aux_at][0], num_classes, side, conv.aux_same_padding, conv.fc_bias, ctx)
        self.init_weights()

    # ---- construction helpers -----------------------------------------------------------------------------------
    def _spec(self, name: str, reduction: bool, channels: int, stage: int, hist: list, skip: bool) -> _Spec:
        """The next cell's inputs from the history of producers (TF-slim ``cell_outputs``): input j is the j-th most
        recent, or its output j if it emits several (NASNet-B); with ``skip`` (the normal cell right after a
        reduction, skip_reduction_layer_input) the older inputs skip the reduction's input. A missing (None) one is
        the raw input 0 (TF-slim ``prev_layer=None``)."""
        refs = []
        for j in range(self.genotype.normal.num_inputs):
            back = 1 + j + (1 if skip and j > 0 else 0)
            p = hist[-back] if back <= len(hist) else hist[0]
            refs.append(_Ref(hist[-1], 0, raw=True) if p is None else _Ref(p, j))
        return _Spec(name, reduction, channels, stage, tuple(refs))

    def _aux_position(self, where: str, counts: tuple[int, ...], imagenet: bool) -> int:
        base = 2 if imagenet else 1
        normal = [i for i, sp in enumerate(self._specs, start=1) if not sp.reduction]
        stage_of = {i: self._specs[i - 1].stage for i in normal}
        if where == "stage2_end":  # NASNet A.7 / TF-slim: after cell reduction_indices[1] - 1
            return max(i for i in normal if stage_of[i] == base + 1)
        return min(i for i in normal if stage_of[i] == base + 2)  # ENAS: aux_head_indices = [pool_layers[-1] + 1]

    # ---- the run plan: which tensors are needed raw / after ReLU, and when they can be freed -----------------------
    def _plan(self, levels: tuple[str, ...], final: bool, aux: bool) -> dict:
        key = (levels, final, aux, tuple(self.cells.keys()))
        cache = self.__dict__.setdefault("_plans", {})
        if key in cache:
            return cache[key]
        raw: set[tuple[int, int]] = set()
        act: set[tuple[int, int]] = set()
        last_use: dict[tuple[int, int], int] = {}
        run = [sp for sp in self._specs if sp.name in self.cells]
        taps = {}
        for idx, name in self._level_of.items():
            if name in levels:
                taps[idx] = name
                (raw if idx == 0 else act).add((idx, 0))
                last_use[(idx, 0)] = max(last_use.get((idx, 0), 0), idx)
        if not run:
            stop = 0
        else:
            deepest = max([i for i in taps] + ([self._final] if final else []) + ([self._aux_at] if aux else []))
            stop = deepest
        for idx, sp in enumerate(run[:stop], start=1):
            cell = self.cells[sp.name]
            for j, r in enumerate(sp.inputs):
                k = min(r.k, self._num_outputs(r.p) - 1)
                if cell.input_raw[j]:
                    raw.add((r.p, k))
                if cell.input_act[j]:
                    act.add((r.p, k))
                if cell.input_raw[j] or cell.input_act[j]:
                    last_use[(r.p, k)] = idx
        for idx in ([self._final] if final else []) + ([self._aux_at] if aux else []):
            act.add((idx, 0))
            last_use[(idx, 0)] = max(last_use.get((idx, 0), 0), idx)
        free_after: dict[int, list[tuple[int, int]]] = {}
        for ref, idx in last_use.items():
            free_after.setdefault(idx, []).append(ref)
        plan = dict(raw=raw, act=act, taps=taps, stop=stop, free_after=free_after)
        cache[key] = plan
        return plan

    def _num_outputs(self, p: int) -> int:
        if p == 0:
            return 1
        out = self.cells[self._specs[p - 1].name].out_channels
        return len(out) if isinstance(out, list) else 1

    def _run(self, x: Tensor, levels: tuple[str, ...], final: bool, aux: bool):
        """Stem and cells up to the deepest thing asked for; returns (final activation, levels dict, aux input)."""
        plan = self._plan(levels, final, aux)
        vals: dict[tuple[int, int], tuple[Tensor | None, Tensor | None]] = {}
        out: dict[str, Tensor] = OrderedDict()
        self._store(vals, plan, 0, [self.stem(x)], fresh=True)
        if 0 in plan["taps"]:
            out[plan["taps"][0]] = vals[(0, 0)][0]
        for idx in range(1, plan["stop"] + 1):
            sp = self._specs[idx - 1]
            cell = self.cells[sp.name]
            raw_in, act_in = [], []
            for j, r in enumerate(sp.inputs):
                v = (None, None)
                if cell.input_raw[j] or cell.input_act[j]:
                    v = vals[(r.p, min(r.k, self._num_outputs(r.p) - 1))]
                raw_in.append(v[0])
                act_in.append(v[1])
            y = cell(raw_in, act_in)
            self._store(vals, plan, idx, y if isinstance(y, list) else [y], fresh=not isinstance(y, list))
            if idx in plan["taps"]:
                out[plan["taps"][idx]] = vals[(idx, 0)][1]
            for ref in plan["free_after"].get(idx, []):
                if ref[0] != self._final and ref[0] != self._aux_at:
                    vals.pop(ref, None)
        last = vals[(self._final, 0)][1] if final else None
        aux_in = vals[(self._aux_at, 0)][1] if aux else None
        return last, out, aux_in

    @staticmethod
    def _store(vals: dict, plan: dict, p: int, ys: list[Tensor], fresh: bool) -> None:
        for k, y in enumerate(ys):
            if y is None:
                continue
            want_raw, want_act = (p, k) in plan["raw"], (p, k) in plan["act"]
            if want_act and not want_raw and fresh:
                vals[(p, k)] = (None, F.relu(y, inplace=True))
            else:
                vals[(p, k)] = (y, F.relu(y) if want_act else None)

    # ---- Backbone contract -------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        return self._run(x, (), final=True, aux=False)[0]

    def forward_levels(self, x: Tensor) -> dict[str, Tensor]:
        return self._run(x, self.out_features, final=False, aux=False)[1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor):
        """Logits; ``(logits, aux_logits)`` in training mode with ``aux_head=True``; the levels dict when
        ``features_only``."""
        if self.features_only:
            return self.forward_levels(x)
        aux = self.training and hasattr(self, "aux_head")
        last, _, aux_in = self._run(x, (), final=True, aux=aux)
        logits = self.forward_head(last)
        if aux:
            return logits, self.aux_head(aux_in)
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
        strides: dict[int, int] = {}
        chans: dict[int, int] = {}
        stride = 2 if "c1" in self.feature_names else 1  # ImageNet conv0 is stride 2
        strides[0], chans[0] = stride, self.stem.conv.out_channels
        for p, sp in enumerate(self._specs, start=1):
            stride *= 2 if sp.reduction else 1
            strides[p] = stride
            if sp.name in self.cells:
                out = self.cells[sp.name].out_channels
                chans[p] = out if isinstance(out, int) else out[0]
        want = (self.feature(level).channels, self.feature(level).stride)
        for sp in self._specs[first - 1 : first - 1 + len(run)]:
            for r in sp.inputs:
                if r.p < first and (chans.get(r.p), strides[r.p]) != want:
                    raise NotImplementedError(
                        f"{sp.name} reads a producer of {chans.get(r.p)} channels at stride {strides[r.p]}, unlike "
                        f"{level} ({want[0]} at stride {want[1]}): this genotype has no C4 box head"
                    )
        tail = _CellTail(
            nn.ModuleDict((n, self.cells[n]) for n in run), self._specs, first, chans[first + len(run) - 1]
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


# ---- builders: the registered variants are rows of data fed to these ------------------------------------------------
_STEM_DEFAULTS = {
    # TF-slim nasnet.py large_imagenet_config / mobile_imagenet_config / cifar_config
    "imagenet": dict(stem_multiplier=3.0, drop_rate=0.5, input_size=224, bn_eps=1e-3, bn_momentum=0.0003),
    "cifar": dict(stem_multiplier=3.0, drop_rate=0.0, input_size=32, bn_eps=1e-5, bn_momentum=0.1),
}


def nasnet_a(
    num_cells: int = 6,
    penultimate_filters: int = 4032,
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
) -> NASNet:
    """NASNet-A "N @ F" with an ImageNet or CIFAR stem; unset options take the TF-slim config of that stem."""
    if stem not in _STEM_DEFAULTS:
        raise ValueError(f"stem={stem!r} is not valid; choose one of {', '.join(_STEM_DEFAULTS)}")
    d = _STEM_DEFAULTS[stem]

    def pick(value, key):
        return d[key] if value is None else value

    return NASNet(
        "nasnet_a",
        num_cells,
        penultimate_filters,
        stem,
        pick(stem_multiplier, "stem_multiplier"),
        skip_reduction_layer_input,
        num_classes if num_classes is not None else (1000 if stem == "imagenet" else 10),
        in_chans,
        pick(drop_rate, "drop_rate"),
        drop_path_rate,
        aux_head,
        pick(input_size, "input_size"),
        pick(bn_eps, "bn_eps"),
        pick(bn_momentum, "bn_momentum"),
        reference_padding,
    )


_NASNET = "Zoph et al. 2018, Learning Transferable Architectures for Scalable Image Recognition, arXiv 1707.07012"
_TF_COUNTS = (
    "params/MACs: arch_reference.md 8.5, computed on TF-slim semantics (conv + linear + BN affine; BN moving "
    "statistics excluded). "
)

register_model(
    "nasnet_a_large",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 6 @ 4032, 331 px); counts: arch_reference.md 8.5 = timm nasnetalarge",
        params=88_753_150,
        macs=23_783_414_658,
        input_size=331,
        top1=82.7,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=0.911,
        twins={"timm": "nasnetalarge"},
        paper_params=88.9e6,
        paper_macs=23.8e9,
        macs_reference_padding=True,
        notes=_TF_COUNTS + "The paper's 88.9 M includes the 2 x 98,334 BN moving statistics (88,949,818). "
        "Aux head (aux_head=True) adds 4,567,784. Paper training: drop_path_rate 0.3 (keep 0.7), aux weight 0.4.",
    ),
    num_cells=6,
    penultimate_filters=4032,
    stem="imagenet",
    stem_multiplier=3.0,
    skip_reduction_layer_input=True,
    input_size=331,
)

register_model(
    "nasnet_a_mobile",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 3 (NASNet-A 4 @ 1056, 224 px); counts: arch_reference.md 8.5 (= Cadene nasnetamobile params)",
        params=5_289_978,
        macs=563_638_816,
        input_size=224,
        top1=74.0,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        paper_params=5.3e6,
        paper_macs=564e6,
        macs_reference_padding=True,
        notes=_TF_COUNTS + "The paper's 5.3 M matches 5,326,716 with BN moving statistics (Keras NASNetMobile total). "
        "Cadene's port computes 568.2 M MACs (its padding). No timm twin. Aux head adds 2,411,240.",
    ),
    num_cells=4,
    penultimate_filters=1056,
    stem="imagenet",
    stem_multiplier=1.0,
    skip_reduction_layer_input=False,
    input_size=224,
)

register_model(
    "nasnet_a_cifar",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 1 (NASNet-A 6 @ 768, CIFAR-10: 3.3 M, 3.41% error); counts: arch_reference.md 8.5",
        params=3_346_538,
        macs=544_333_312,
        input_size=32,
        num_classes=10,
        top1=96.59,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop_pct=1.0,
        detection_ready=False,
        paper_params=3.3e6,
        notes=_TF_COUNTS + "Aux head adds 1,631,498. Paper training: drop_path_rate 0.4 (keep 0.6), aux weight 0.4.",
    ),
    num_cells=6,
    penultimate_filters=768,
    stem="cifar",
)

register_model(
    "nasnet_a_cifar_7_2304",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 1 (NASNet-A 7 @ 2304, CIFAR-10: 27.6 M, 2.97% error); counts measured here (= arch_reference 8.5)",
        params=32_590_954,
        macs=5_151_250_944,
        input_size=32,
        num_classes=10,
        top1=97.03,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop_pct=1.0,
        detection_ready=False,
        paper_params=27.6e6,
        notes="Discrepancy, unresolved: TF-slim semantics (7 cells per stage, F0 = 96, 6F/4F concat) give 32.59 M, "
        "18% above the paper's 27.6 M; 6 cells per stage would give 28.21 M and the figure's 5F/3F concat 29.79 M. "
        "No public config; likely an earlier internal implementation. The structure is not adjusted to fit.",
    ),
    num_cells=7,
    penultimate_filters=2304,
    stem="cifar",
)

register_model(
    "nasnet_a_5_1538",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 5 @ 1538, 299 px: 10.9 M, 2.35 B); counts measured here at 5 @ 1536",
        params=12_263_416,
        macs=2_686_417_584,
        input_size=299,
        top1=78.6,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        paper_params=10.9e6,
        paper_macs=2.35e9,
        macs_reference_padding=True,
        notes="Discrepancy, unresolved: 1538 is not a multiple of 24, so this is 5 @ 1536 (F0 = 64), stem x3: 12.26 M "
        "/ 2.686 B, ~13% above the paper (stem x1: 12,247,544 / 2.552 B; the figure's 5F/3F concat: 11.11 M / "
        "2.469 B). No public config exists (arch_reference.md 8.5, 13.3); paper numbers are approximate here.",
    ),
    num_cells=5,
    penultimate_filters=1536,
    stem="imagenet",
    stem_multiplier=3.0,
    input_size=299,
)

register_model(
    "nasnet_a_7_1920",
    nasnet_a,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 7 @ 1920, 299 px: 22.6 M, 4.93 B); counts measured here",
        params=24_613_292,
        macs=5_373_739_132,
        input_size=299,
        top1=80.8,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        paper_params=22.6e6,
        paper_macs=4.93e9,
        macs_reference_padding=True,
        notes="Discrepancy, unresolved: F0 = 80, stem x3 gives 24.61 M / 5.374 B, ~9% above the paper (stem x1: "
        "24,595,884 / 5.227 B). The figure's 5F/3F concat with stem x3 gives 22,358,092 / 4.919 B, the closest "
        "match, but contradicts the released 6F/4F cells; no public config (arch_reference.md 8.5, 13.3).",
    ),
    num_cells=7,
    penultimate_filters=1920,
    stem="imagenet",
    stem_multiplier=3.0,
    input_size=299,
)

register_model(
    "pnasnet5_large",
    NASNet,
    ModelCard(
        family="nas",
        paper="Liu et al. 2018, Progressive Neural Architecture Search, arXiv 1712.00559",
        table="TF-slim pnasnet.py large config; counts: arch_reference.md 10 (= timm pnasnet5large)",
        params=86_057_668,
        macs=24_937_395_792,
        input_size=331,
        top1=82.9,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=0.911,
        twins={"timm": "pnasnet5large"},
        macs_reference_padding=True,
        notes="The PNASNet paper is not available as text: its 86.1 M / 25.0 B are recalled, unverified; top-1 82.9 "
        "is TF-slim's. TF-slim's skip_reduction_layer_input=1 with PNASNet's loop wires the cell after a reduction "
        "to the reduction's input, which is skip_reduction_layer_input=False in this builder's terms.",
    ),
    genotype="pnasnet5",
    num_cells=(4, 3, 3),
    penultimate_filters=4320,
    stem="imagenet",
    stem_multiplier=3.0,
    skip_reduction_layer_input=False,
    drop_rate=0.5,
    input_size=331,
)

_ENAS = "Pham et al. 2018, Efficient Neural Architecture Search via Parameter Sharing, arXiv 1802.03268"
register_model(
    "enas_micro_cifar",
    NASNet,
    ModelCard(
        family="nas",
        paper=_ENAS,
        table="ENAS CIFAR-10 table (shared/papers/002: micro search space 4.6 M, 3.54% error); counts measured here",
        params=3_894_372,
        macs=620_907_552,
        input_size=32,
        num_classes=10,
        top1=96.46,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop_pct=1.0,
        detection_ready=False,
        paper_params=4.6e6,
        notes="Authors' released arc and settings (cifar10_micro_final.sh: num_layers=15 -> 5 cells per stage, "
        "36 filters) give 3,894,372, not the paper's 4.6 M; 6 cells per stage (num_layers=18, num_cells=6 here) give "
        "4,587,372, which reproduces it. Aux head adds 494,848. A third-party transcription of the paper's figure "
        "has different cells (3.44 M / 4.05 M at 5 / 6 cells); which cells gave 3.54% is not established.",
    ),
    genotype="enas_micro",
    num_cells=5,
    penultimate_filters=720,
    stem="cifar",
    stem_multiplier=3.0,
    skip_reduction_layer_input=False,
    num_classes=10,
    drop_rate=0.2,
    input_size=32,
    bn_eps=1e-3,
    bn_momentum=0.1,
)

register_model(
    "enas_macro_cifar",
    ENASMacro,
    ModelCard(
        family="nas",
        paper=_ENAS,
        table="ENAS CIFAR-10 table (shared/papers/002: macro search space 21.3 M, 4.23% error); counts measured here",
        params=30_947_424,
        macs=4_370_280_192,
        input_size=32,
        num_classes=10,
        top1=95.77,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop_pct=1.0,
        detection_ready=False,
        paper_params=21.3e6,
        notes="Discrepancy, unresolved: the released arc (cifar10_macro_final.sh, 24 layers, 96 filters) with true "
        "separable convs gives 30.95 M; as the fixed-arc code builds it (ops 1/3 as ordinary convs, "
        "separable=False) 42,559,392 / 5.646 G. Neither is the paper's 21.3 M (38.0 M 'more channels').",
    ),
)


# ---- searched cells (issue 16): any genotype -- registered name, genotype .json file, Genotype -- as "N @ F" ---------
def nasnet(
    genotype: str | Genotype = "nasnet_a",
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
) -> NASNet:
    """A NASNet of any cells: ``genotype`` is a name of ``genotypes.GENOTYPES``, a genotype file (``tools/search.py``
    writes ``best.json``) or a :class:`Genotype`. Unset options take NASNet-A Mobile's choices (Table 3): 4 cells
    per stage, F0 = 44 per concatenated state (``penultimate_filters`` = 4 x 44 x the normal cell's output width;
    1056 for NASNet-A), stem x1; with ``stem="cifar"`` TF-slim's CIFAR config, F0 = 32 (6 @ 768, Table 1)."""
    from .space import resolve_genotype

    g = resolve_genotype(genotype)
    if stem not in _STEM_DEFAULTS:
        raise ValueError(f"stem={stem!r} is not valid; choose one of {', '.join(_STEM_DEFAULTS)}")
    d = {**_STEM_DEFAULTS[stem], **({"stem_multiplier": 1.0} if stem == "imagenet" else {})}
    given = dict(stem_multiplier=stem_multiplier, drop_rate=drop_rate, input_size=input_size, bn_eps=bn_eps,
                 bn_momentum=bn_momentum)  # fmt: skip
    d.update({k: v for k, v in given.items() if v is not None})
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
    classes = num_classes if num_classes is not None else (1000 if stem == "imagenet" else 10)
    return NASNet(g, num_cells, penultimate_filters, stem, skip_reduction_layer_input=skip_reduction_layer_input,
                  num_classes=classes, in_chans=in_chans, drop_path_rate=drop_path_rate, aux_head=aux_head,
                  reference_padding=reference_padding, **d)  # fmt: skip


register_model(
    "nasnet",
    nasnet,
    ModelCard(
        family="nas",
        paper=_NASNET,
        table="Table 3 at the defaults (genotype nasnet_a, 4 @ 1056 = nasnet_a_mobile's counts, arch_reference.md "
        "8.5); other genotypes / N @ F are searched cells' networks (docs/search.md)",
        params=5_289_978,
        macs=563_638_816,
        input_size=224,
        top1=74.0,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        macs_reference_padding=True,
        notes="genotype= a registered genotype, a genotype .json file (tools/search.py's best.json) or a Genotype; "
        "num_cells / penultimate_filters / stem scale it (the paper's N @ F). The card's figures are the defaults'.",
    ),
    genotype="nasnet_a",
)
