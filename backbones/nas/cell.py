"""One generic cell that executes a :class:`~backbones.nas.genotypes.CellGenotype`.

Inputs are preprocessed to F channels at the output resolution of the previous cell (TF-slim ``_cell_base`` /
``_reduce_prev_layer``, or ENAS ``_maybe_calibrate_size`` + ``layer_base``, per the genotype's conventions); each
block applies its two ops (stride 2 on the cell's inputs in a reduction cell, 1 on states created inside the cell),
drops each non-identity path (ScheduledDropPath, paper A.5) and combines; the output is the concatenation of the
listed states (those whose shape differs from the last state get a factorized reduction or 1x1 conv + BN, no ReLU:
TF-slim ``_combine_unused_states``), or for NASNet-B style cells the listed states emitted separately.

Speed without changing the maths: the ReLU that starts most ops is applied once per state and shared between the
branches that read it (the network's plan does the same for cell outputs), and in eager mode with autograd off the
block sums are written straight into the output buffer instead of being concatenated afterwards (about 10% of a
NASNet-A Mobile forward on CPU). Tracers and exporters (``torch.jit.trace``, ``torch.fx``, ``torch.compile``,
``torch.export``) always get the concatenation: one graph whatever the grad mode (``torch.jit.trace`` checks its
trace again under ``no_grad``) and no allocation on the device the model was traced on. Both compute the same
numbers bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import DropPath, FactorizedReduce
from .genotypes import CellGenotype
from .ops import Identity, OpContext, ReluConvBn, build_op


def _autocast() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def _recording(x: Tensor) -> bool:
    """True while a tracer or exporter records the graph rather than eager mode computing it."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or isinstance(x, torch.fx.Proxy)
    )


def keep_pair(x: Tensor, want_raw: bool, want_act: bool, fresh: bool) -> tuple[Tensor | None, Tensor | None]:
    """``(x, relu(x))``, each only if some consumer wants it; the ReLU overwrites ``x`` when only it is wanted and ``x``
    is ``fresh`` (a tensor nothing else holds)."""
    if want_act and not want_raw and fresh:
        return None, F.relu(x, inplace=True)
    return (x if want_raw else None), (F.relu(x) if want_act else None)


def _flags(module: nn.Module, relu_input: bool, droppable: bool = False) -> nn.Module:
    module.relu_input = relu_input
    module.droppable = droppable
    return module


class CalibrateProject(nn.Module):
    """ENAS input 0: ReLU -> 1x1 -> BN when C_in != F (``calibrate``), then always ReLU -> 1x1 -> BN (``project``)."""

    relu_input = True
    droppable = False

    def __init__(self, c_in: int, channels: int, ctx: OpContext) -> None:
        super().__init__()
        self.calibrate = ReluConvBn(c_in, channels, 1, 1, ctx) if c_in != channels else None
        self.project = ReluConvBn(channels, channels, 1, 1, ctx)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrate is not None:
            x = F.relu(self.calibrate(x))
        return self.project(x)


def preprocess(j: int, c_in: int, factor: int, raw: bool, channels: int, ctx: OpContext) -> tuple[nn.Module, int]:
    """The module bringing input ``j`` to the cell's working shape, and the channels it then has.

    ``factor`` is the input's resolution relative to input 0 (2 = twice as large); ``raw`` marks an older input
    that stands in for a missing one (TF-slim ``prev_layer is None``: the raw current input, used as is).
    """
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"cell input {j} is {factor}x the resolution of input 0; expected a power of two")
    if raw:
        return _flags(Identity(), relu_input=False), c_in
    if j == 0 and ctx.conventions.h0 == "project":
        return _flags(ReluConvBn(c_in, channels, 1, 1, ctx), relu_input=True), channels
    if j == 0:
        return CalibrateProject(c_in, channels, ctx), channels
    if factor == 2:
        fr = FactorizedReduce(c_in, channels, relu=False, eps=ctx.eps, momentum=ctx.momentum)
        return _flags(fr, relu_input=True), channels
    if factor > 2:
        # Inputs two or more reductions back (cells with more than 2 inputs, e.g. NASNet-B right after the ImageNet
        # stem cells): one factorized reduction per halving, chained; no reference code defines this case.
        steps = factor.bit_length() - 1
        frs = [FactorizedReduce(c_in if i == 0 else channels, channels, eps=ctx.eps, momentum=ctx.momentum)
               for i in range(steps)]  # fmt: skip
        return _flags(nn.Sequential(*frs), relu_input=True), channels
    if c_in != channels:
        return _flags(ReluConvBn(c_in, channels, 1, 1, ctx), relu_input=True), channels
    return _flags(Identity(), relu_input=False), c_in


def live_states(g: CellGenotype, used_outputs: tuple[int, ...] | None = None) -> set[int]:
    """States the cell's output depends on: all concatenated ones, or the emitted states some later layer reads
    (``used_outputs`` indexes ``g.outputs``; None = all), and everything the blocks creating them read."""
    if g.concat:
        live = set(g.concat)
    else:
        live = {g.outputs[k] for k in (range(len(g.outputs)) if used_outputs is None else used_outputs)}
    for b in reversed(range(len(g.blocks))):
        if g.num_inputs + b in live:
            live |= {g.blocks[b].left, g.blocks[b].right}
    return live


class Combine(nn.Module):
    """Block combine (paper step 5): add, concat along channels, or add followed by layer / instance norm."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "add_layernorm":  # LayerNorm over (C, H, W) with per-channel affine = GroupNorm with one group
            self.norm: nn.Module | None = nn.GroupNorm(1, channels)
        elif kind == "add_instancenorm":
            self.norm = nn.InstanceNorm2d(channels, affine=True)
        else:
            self.norm = None

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.kind == "concat":
            return torch.cat([a, b], 1)
        out = a + b
        return self.norm(out) if self.norm is not None else out


class Cell(nn.Module):
    """Executes one cell genotype.

    Args:
        genotype: the cell.
        in_channels: channels of each input (0 = most recent).
        in_factors: resolution of each input relative to input 0 (1 or 2).
        in_raw: inputs that stand in for a missing one (used as is, TF-slim ``prev_layer=None``).
        channels: F, the width of every op output.
        stride: 2 in a reduction cell (ops reading the cell's inputs stride), else 1.
        ctx: shared op settings.
        drop_prob: ScheduledDropPath probability of this cell at the end of training (already depth-scaled).
        used_outputs: for cells emitting several states, the outputs some later layer reads; blocks only the others
            depend on are not built (the last cells of a NASNet-B network emit states for layers that do not exist).

    ``forward(raw, act)`` takes each input as it is (``raw[j]``) and after ReLU (``act[j]``); the caller fills those
    :attr:`input_raw` / :attr:`input_act` ask for (the others may be None), so a ReLU shared with other consumers of
    the same tensor is computed once.
    """

    def __init__(
        self,
        genotype: CellGenotype,
        in_channels: list[int],
        in_factors: list[int],
        in_raw: list[bool],
        channels: int,
        stride: int,
        ctx: OpContext,
        drop_prob: float = 0.0,
        used_outputs: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        g = genotype
        live = live_states(g, used_outputs)
        self._live = [g.num_inputs + b in live for b in range(len(g.blocks))]
        self._emitted = set(g.concat) if g.concat else {s for s in g.outputs if s in live}
        if len(in_channels) != g.num_inputs:
            raise ValueError(f"cell {g.name!r} takes {g.num_inputs} inputs, got channels for {len(in_channels)}")
        self.genotype = g
        self.stride = stride
        pre, chans = [], []
        for j in range(g.num_inputs):
            if j not in live:
                module, c = _flags(Identity(), relu_input=False), in_channels[j]
            else:
                module, c = preprocess(j, in_channels[j], in_factors[j], in_raw[j], channels, ctx)
            pre.append(module)
            chans.append(c)
        self.pre = nn.ModuleList(pre)

        ops, combines = [], []
        for b, blk in enumerate(g.blocks):
            for idx, name in ((blk.left, blk.left_op), (blk.right, blk.right_op)):
                s = stride if idx < g.num_inputs else 1
                ops.append(build_op(name, chans[idx], channels, s, ctx) if self._live[b] else Identity())
            combines.append(Combine(blk.combine if self._live[b] else "add", channels))
            chans.append(2 * channels if blk.combine == "concat" else channels)
        self.ops = nn.ModuleList(ops)
        self.combines = nn.ModuleList(combines)
        self.drop_path = DropPath(drop_prob, scheduled=True)

        # states read after ReLU / as they are, by ops; the concat / outputs read them as they are
        inputs = [(i, b) for b, blk in enumerate(g.blocks) for i in (blk.left, blk.right)]
        self._act_states = {i for (i, b), op in zip(inputs, ops) if self._live[b] and op.relu_input}
        self._raw_states = {i for (i, b), op in zip(inputs, ops) if self._live[b] and not op.relu_input}
        self._raw_states |= self._emitted
        #: per input, whether ``forward`` reads it as is / after ReLU (an input passed through unchanged is read the
        #: way its consumers read it, so a ReLU the caller already has is not recomputed)
        self.input_raw = [isinstance(m, Identity) and j in self._raw_states for j, m in enumerate(pre)]
        self.input_act = [not isinstance(m, Identity) or j in self._act_states for j, m in enumerate(pre)]

        # shape adaptation of concatenated / emitted states (only inputs can differ: spatially in a reduction cell)
        last = g.num_states - 1
        adapt = {}
        for s in [s for s in g.concat or g.outputs if s in self._emitted]:
            if s < g.num_inputs and stride > 1:
                target = chans[last] if g.concat else chans[s]
                adapt[str(s)] = FactorizedReduce(chans[s], target, relu=False, eps=ctx.eps, momentum=ctx.momentum)
                chans[s] = target
            elif g.concat and chans[s] != chans[last]:
                adapt[str(s)] = nn.Sequential(nn.Conv2d(chans[s], chans[last], 1, bias=False), ctx.bn(chans[last]))
                chans[s] = chans[last]
        self.adapt = nn.ModuleDict(adapt)
        #: channels of the single output (concat) or of each emitted state
        self.out_channels: int | list[int] = (
            sum(chans[s] for s in g.concat) if g.concat else [chans[s] for s in g.outputs]
        )
        self._offsets = [0]
        for s in g.concat:
            self._offsets.append(self._offsets[-1] + chans[s])

    @property
    def multi_output(self) -> bool:
        return self.genotype.multi_output

    def forward(self, raw: list[Tensor | None], act: list[Tensor | None]) -> Tensor | list[Tensor]:
        g = self.genotype
        states_raw: list[Tensor | None] = []
        states_act: list[Tensor | None] = []
        for j, pre in enumerate(self.pre):
            if isinstance(pre, Identity):
                states_raw.append(raw[j])
                states_act.append(act[j])
            else:
                r, a = keep_pair(pre(act[j]), j in self._raw_states, j in self._act_states, fresh=True)
                states_raw.append(r)
                states_act.append(a)

        probe = next(t for t in (*raw, *act) if t is not None)
        direct = bool(g.concat) and not torch.is_grad_enabled() and not _autocast() and not _recording(probe)
        buf: Tensor | None = None
        slots = {s: k for k, s in enumerate(g.concat)} if direct else {}
        for b, blk in enumerate(g.blocks):
            if not self._live[b]:
                states_raw.append(None)
                states_act.append(None)
                continue
            left, right = self.ops[2 * b], self.ops[2 * b + 1]
            lx = left(states_act[blk.left] if left.relu_input else states_raw[blk.left])
            rx = right(states_act[blk.right] if right.relu_input else states_raw[blk.right])
            if left.droppable:
                lx = self.drop_path(lx)
            if right.droppable:
                rx = self.drop_path(rx)
            s = g.num_inputs + b
            combine = self.combines[b]
            if s in slots and combine.kind == "add":
                if buf is None:
                    buf = self._buffer(lx)
                out = torch.add(lx, rx, out=self._slot(buf, slots[s]))
            else:
                out = combine(lx, rx)
            r, a = keep_pair(out, s in self._raw_states, s in self._act_states, fresh=True)
            states_raw.append(r)
            states_act.append(a)

        picked: list[Tensor | None] = []
        for s in g.concat or g.outputs:
            if s not in self._emitted:
                picked.append(None)
                continue
            x = states_raw[s]
            if str(s) in self.adapt:
                x = self.adapt[str(s)](x)
            picked.append(x)
        if g.outputs:
            return picked
        if buf is None:
            return torch.cat(picked, 1)
        for k, s in enumerate(g.concat):
            if not (s >= g.num_inputs and self.combines[s - g.num_inputs].kind == "add"):
                self._slot(buf, k).copy_(picked[k])
        return buf

    def _buffer(self, like: Tensor) -> Tensor:
        n, _, h, w = like.shape
        fmt = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return torch.empty((n, self.out_channels, h, w), dtype=like.dtype, device=like.device, memory_format=fmt)

    def _slot(self, buf: Tensor, k: int) -> Tensor:
        return buf[:, self._offsets[k] : self._offsets[k + 1]]
