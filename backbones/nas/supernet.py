"""The ENAS weight-sharing supernet (Pham et al. 2018, arXiv 1802.03268, section 2.3 "Designing Convolutional
Cells"): one set of weights holding every operation of every block position; sampling an architecture selects the
paths, and the child it computes is exactly the :class:`~backbones.nas.network.NASNet` of that genotype.

Sharing follows the authors' released code (melodyguan/enas ``src/cifar10/micro_child.py``): an operation's weights
belong to (cell position, block, side, input state, op) -- ``_enas_conv`` creates ``w_depth`` / ``w_point`` / BN
``[num_possible_inputs, ...]`` and gathers row ``prev_cell`` -- so ``ops.{b}.{side}.{input}.{op}`` here. The 1x1
convolutions reading a cell's concatenated output hold a column block per state of the previous cell and use the
blocks of the states that cell concatenates (``final_conv``: ``tf.gather(w, indices)``); so does the classifier.

Where ENAS's search-time child differs from its final network (it reduces a reduction cell's inputs first and runs
the cell at stride 1, and ends each cell with a 1x1 ``final_conv``), this supernet computes what the genotype's
:class:`NASNet` computes (``stem="cifar"``, ``skip_reduction_layer_input=False``), so a searched cell keeps its
shared weights when it leaves the search (:meth:`Supernet.child_state_dict`) and the proof of exact sharing is the
network itself. The cell a path runs is a :class:`~backbones.nas.cell.Cell` built once per (position, cell, input
widths) on the meta device and run with :func:`torch.func.functional_call` over the shared tensors, so the supernet
has no executor of its own.

Spaces whose cells concatenate their outputs and whose combines keep the width (add, add + layer / instance norm)
share weights: a concat combine would change the width a later op reads, and NASNet-B emits its states separately.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..base import Backbone
from ..checks import check_keys
from .cell import Cell, Combine, preprocess
from .genotypes import CONVENTIONS, Block, CellGenotype, Genotype
from .network import output_width
from .ops import OpContext, build_op
from .space import SearchSpace

WIDTH_KEEPING = ("add", "add_layernorm", "add_instancenorm")


def check_shareable(space: SearchSpace) -> None:
    """Raise ``ValueError`` naming what keeps ``space`` from one set of shared weights."""
    if space.output == "all_blocks":
        raise ValueError(
            f"search space {space.name!r} emits every block state separately (NASNet-B); weight sharing needs cells "
            f"that concatenate their outputs: search it with strategy=random or strategy=rl"
        )
    wide = [c for c in space.combines if c not in WIDTH_KEEPING]
    if wide:
        raise ValueError(
            f"search space {space.name!r} has combine(s) {', '.join(wide)}, which change the width later ops read; "
            f"weight sharing takes {', '.join(WIDTH_KEEPING)} (e.g. search.space.combines=[add]), or use "
            f"strategy=random / strategy=rl"
        )


#: the child network's shape and the defaults of :func:`child_options` and :class:`Supernet`: N normal cells per stage,
#: F0 = ``channels``, and :class:`NASNet`'s own options (TF-slim's CIFAR configuration, BN eps 1e-5, momentum 0.1)
CHILD_DEFAULTS = dict(
    channels=16, num_cells=2, num_classes=10, in_chans=3, stem_multiplier=3.0, drop_rate=0.0, drop_path_rate=0.0,
    bn_eps=1e-5, bn_momentum=0.1,
)  # fmt: skip


def child_shape(**shape) -> dict:
    """``shape`` completed with :data:`CHILD_DEFAULTS`; an unknown key is named with the valid ones."""
    check_keys(shape, CHILD_DEFAULTS, "child")
    return {**CHILD_DEFAULTS, **shape}


def child_options(genotype: Genotype, **shape) -> dict:
    """``NASNet(**child_options(g, **shape))``: the search's child network of ``g`` (``shape``: the keys of
    :data:`CHILD_DEFAULTS`) -- CIFAR stem, N normal cells per stage, F0 = ``channels`` (so "N @ 4 x channels x the
    normal cell's output width"), the supernet's wiring."""
    shape = child_shape(**shape)
    channels = shape.pop("channels")
    return dict(
        genotype=genotype,
        num_cells=int(shape.pop("num_cells")),
        penultimate_filters=4 * channels * output_width(genotype.normal),
        stem="cifar",
        skip_reduction_layer_input=False,
        **shape,
    )


@dataclass(frozen=True)
class _Position:
    """One cell of the stack: its name (as NASNet's), kind, width, and inputs as (producer, raw); 0 = the stem."""

    name: str
    reduction: bool
    channels: int
    inputs: tuple[tuple[int, bool], ...]


class SharedCell(nn.Module):
    """The shared weights of one cell position: ``ops[b][side][input][op]``, ``combines[b][kind]``, and ``pre`` /
    ``adapt`` (input preprocessing, concatenated-input adaptation) built as the :class:`Cell` that concatenates every
    state builds them, at the widest input the position can receive.

    Args:
        space: the search space.
        max_in_channels: widest each input can be (a previous cell concatenating all its states; the stem's width).
        in_factors, in_raw, channels, stride, ctx, drop_prob: as :class:`Cell`.
    """

    def __init__(
        self,
        space: SearchSpace,
        max_in_channels: list[int],
        in_factors: list[int],
        in_raw: list[bool],
        channels: int,
        stride: int,
        ctx: OpContext,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        k = space.num_inputs
        self.args = (in_factors, in_raw, channels, stride, ctx, drop_prob)
        every = CellGenotype(  # every input concatenated: its preprocessing and adaptation are the widest
            "every_state", tuple(Block(0, "max_pool_3x3", k - 1, "max_pool_3x3") for _ in range(space.num_blocks)),
            concat=tuple(range(k + space.num_blocks)), num_inputs=k,
        )  # fmt: skip
        widest = Cell(every, max_in_channels, in_factors, in_raw, channels, stride, ctx)
        self.pre, self.adapt = widest.pre, widest.adapt
        widths = [preprocess(j, max_in_channels[j], in_factors[j], in_raw[j], channels, ctx)[1] for j in range(k)]
        widths += [channels] * space.num_blocks

        def candidates(i: int) -> nn.ModuleDict:  # every op reading state i
            s = stride if i < k else 1
            return nn.ModuleDict({op: build_op(op, widths[i], channels, s, ctx) for op in space.ops})

        self.ops = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(candidates(i) for i in range(k + b)) for _side in range(2))
            for b in range(space.num_blocks)
        )
        self.combines = nn.ModuleList(
            nn.ModuleDict({c: Combine(c, channels) for c in space.combines}) for _ in range(space.num_blocks)
        )
        self._templates: OrderedDict[tuple, Cell] = OrderedDict()

    def template(self, cell: CellGenotype, in_channels: list[int]) -> Cell:
        """The :class:`Cell` of ``cell`` at these input widths, on the meta device (cached)."""
        key = (cell, tuple(in_channels))
        t = self._templates.get(key)
        if t is None:
            with torch.device("meta"):
                t = Cell(cell, list(in_channels), *self.args)
            self._templates[key] = t
            if len(self._templates) > 512:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return t

    def tensors(self, cell: CellGenotype, in_channels: list[int], columns: list[Tensor | None]) -> dict[str, Tensor]:
        """Every parameter and buffer of ``cell``'s :class:`Cell`, by its name there, taken from the shared ones;
        ``columns[j]`` picks the input channels of a 1x1 conv reading input ``j`` (None: all)."""
        out = {}
        template = self.template(cell, in_channels)
        for name, t in [*template.named_parameters(), *template.named_buffers()]:
            head, idx, rest = name.split(".", 2)
            if head == "ops":
                b, side = divmod(int(idx), 2)
                blk = cell.blocks[b]
                state, op = (blk.left, blk.left_op) if side == 0 else (blk.right, blk.right_op)
                src = self.ops[b][side][state][op].get_submodule(rest.rpartition(".")[0])
            elif head == "combines":
                src = self.combines[int(idx)][cell.blocks[int(idx)].combine].get_submodule(rest.rpartition(".")[0])
            elif head in ("pre", "adapt"):
                src = getattr(self, head)[int(idx) if head == "pre" else idx].get_submodule(rest.rpartition(".")[0])
            else:
                raise KeyError(f"cell tensor {name!r} has no shared counterpart")
            shared = getattr(src, rest.rpartition(".")[2])
            if shared.shape != t.shape:  # a 1x1 conv over the narrower concatenation the previous cell emitted
                cols = columns[int(idx)] if head == "pre" else None
                if cols is None or shared.dim() < 2 or shared.shape[0] != t.shape[0] or len(cols) != t.shape[1]:
                    raise RuntimeError(f"shared {name} is {tuple(shared.shape)}, the cell's {tuple(t.shape)}")
                shared = shared.index_select(1, cols)
            out[name] = shared
        return out

    def forward(
        self,
        cell: CellGenotype,
        in_channels: list[int],
        columns: list[Tensor | None],
        raw: list[Tensor],
        act: list[Tensor],
        drop_path_progress: float = 0.0,
    ) -> Tensor:
        """``cell`` on these inputs with the shared weights (``raw`` inputs and their ReLUs ``act``, as Cell takes)."""
        template = self.template(cell, in_channels).train(self.training)
        template.drop_path.progress = drop_path_progress
        return functional_call(template, self.tensors(cell, in_channels, columns), (raw, act), strict=True)


class Supernet(nn.Module):
    """Every child of a search space at once, stacked as :class:`NASNet` with the CIFAR stem stacks it.

    Args:
        space: a space passing :func:`check_shareable`.
        shape: the keys of :data:`CHILD_DEFAULTS`: ``num_cells`` N, normal cells per stage (three stages, a
            reduction cell between them); ``channels`` F0, the width of the first stage's ops (ENAS
            ``child_out_filters``), doubling at each reduction; the others as :class:`NASNet`.

    ``forward(x, genotype)`` computes the child ``genotype``; :meth:`child_options` and :meth:`child_state_dict` are
    that child as a standalone :class:`NASNet` with the shared weights.
    """

    def __init__(self, space: SearchSpace, **shape) -> None:
        super().__init__()
        check_shareable(space)
        self.shape = shape = child_shape(**shape)
        channels, num_cells, bn_eps, bn_momentum = (
            shape[k] for k in ("channels", "num_cells", "bn_eps", "bn_momentum")
        )
        in_chans, stem_multiplier, drop_path_rate = shape["in_chans"], shape["stem_multiplier"], shape["drop_path_rate"]
        if channels < 2 or channels % 2:
            raise ValueError(f"channels={channels} must be even (factorized reductions split it in two)")
        if int(num_cells) < 1:
            raise ValueError(f"num_cells={num_cells} must be at least 1")
        self.space = space
        self.channels = channels
        conv = CONVENTIONS[space.conventions]
        ctx = OpContext(bn_eps, bn_momentum, False, conv)
        stem_c = int(channels * stem_multiplier)
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_chans, stem_c, 3, 1, 1, bias=False), bn=ctx.bn(stem_c)))
        # NASNet's wiring with skip_reduction_layer_input=False: input j is the j-th most recent layer; the missing
        # older inputs of the first cell are the stem itself (ENAS) or the raw stem (TF-slim prev_layer=None)
        k, states = space.num_inputs, space.num_inputs + space.num_blocks
        hist: list[int | None] = [None if conv.first_prev == "none" else 0] * (k - 1) + [0]
        kinds = [False] * num_cells + [True] + [False] * num_cells + [True] + [False] * num_cells
        self._positions: list[_Position] = []
        width, stride = {0: stem_c}, {0: 1}
        cells, normal, reduction, total = [], 0, 0, len(kinds)
        for idx, red in enumerate(kinds, start=1):
            refs = []
            for j in range(k):
                p = hist[-1 - j] if j < len(hist) else hist[0]
                refs.append((hist[-1], True) if p is None else (p, False))
            c = channels * 2 ** (reduction + red)
            name = f"reduction_cell_{reduction}" if red else f"cell_{normal}"
            reduction, normal = reduction + red, normal + (not red)
            s0 = stride[refs[0][0]]
            cells.append(
                SharedCell(space, [width[p] for p, _ in refs], [s0 // stride[p] for p, _ in refs],
                           [raw for _, raw in refs], c, 2 if red else 1, ctx, drop_path_rate * idx / total)
            )  # fmt: skip
            self._positions.append(_Position(name, red, c, tuple(refs)))
            width[idx], stride[idx] = states * c, s0 * (2 if red else 1)
            hist.append(idx)
        self.cells = nn.ModuleList(cells)
        self.head_drop = nn.Dropout(shape["drop_rate"])
        self.fc = nn.Linear(width[len(kinds)], shape["num_classes"], bias=conv.fc_bias)
        self.drop_path_progress = 0.0
        Backbone.init_weights(self)  # the initialisation every NASNet child gets (only iterates self.modules())

    # ---- a child's plan: which cell runs where, the input widths it sees and the columns it reads ----------------
    def plan(self, genotype: Genotype) -> tuple[list[tuple[CellGenotype, list[int], list[Tensor | None]]], Tensor]:
        """Per cell: its genotype, input widths and input columns; and the classifier's columns (cached)."""
        device = self.fc.weight.device
        key = (genotype.normal, genotype.reduce, device)
        cache = self.__dict__.setdefault("_plans", OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        self.check_genotype(genotype)
        concat: dict[int, tuple[tuple[int, ...], int] | None] = {0: None}  # producer -> (states, piece width)
        width = {0: self.stem.conv.out_channels}
        plan = []
        for idx, pos in enumerate(self._positions, start=1):
            cell = genotype.reduce if pos.reduction else genotype.normal
            cols = [self._columns(concat[p], device) for p, _ in pos.inputs]
            plan.append((cell, [width[p] for p, _ in pos.inputs], cols))
            concat[idx], width[idx] = (cell.concat, pos.channels), len(cell.concat) * pos.channels
        cache[key] = plan, self._columns(concat[len(self._positions)], device)
        if len(cache) > 512:
            cache.popitem(last=False)
        return cache[key]

    @staticmethod
    def _columns(layout: tuple[tuple[int, ...], int] | None, device: torch.device) -> Tensor | None:
        """Channels of a concatenation of states (``layout`` = states, width of each) in the widest layout."""
        if layout is None:
            return None
        states, w = layout
        return torch.cat([torch.arange(s * w, (s + 1) * w, device=device) for s in states])

    def check_genotype(self, genotype: Genotype) -> None:
        """Raise naming what of ``genotype`` this supernet does not hold (another space's ops, inputs, B)."""
        self.space.encode(genotype)

    def forward(self, x: Tensor, genotype: Genotype) -> Tensor:
        """Logits of the child ``genotype`` (a point of :attr:`space`)."""
        plan, fc_cols = self.plan(genotype)
        out = {0: self.stem(x)}
        for idx, (pos, shared, (cell, in_ch, cols)) in enumerate(zip(self._positions, self.cells, plan), start=1):
            raw = [out[p] for p, _ in pos.inputs]
            out[idx] = shared(cell, in_ch, cols, raw, [F.relu(t) for t in raw], self.drop_path_progress)
        last = len(self._positions)
        pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(out[last]), 1), 1)
        return F.linear(self.head_drop(pooled), self.fc.weight.index_select(1, fc_cols), self.fc.bias)

    # ---- the child as a standalone network -----------------------------------------------------------------------
    def child_options(self, genotype: Genotype) -> dict:
        """``NASNet(**child_options(g))`` is the network this supernet computes for ``g``."""
        return child_options(genotype, **self.shape)

    @torch.no_grad()
    def child_state_dict(self, genotype: Genotype) -> dict[str, Tensor]:
        """The shared weights of ``genotype``'s path, named as in ``NASNet(**child_options(genotype))``."""
        out = {f"stem.{k}": v.clone() for k, v in self.stem.state_dict().items()}
        plan, fc_cols = self.plan(genotype)
        for pos, shared, (cell, in_ch, cols) in zip(self._positions, self.cells, plan):
            for k, v in shared.tensors(cell, in_ch, cols).items():
                out[f"cells.{pos.name}.{k}"] = v.detach().clone()
        out["fc.weight"] = self.fc.weight.index_select(1, fc_cols).clone()
        if self.fc.bias is not None:
            out["fc.bias"] = self.fc.bias.clone()
        return out
