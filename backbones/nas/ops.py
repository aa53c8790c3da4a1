"""The NASNet search-space operations by name (paper section 3 list, appendix A.4), over the shared layers.

``OPS[name](c_in, c_out, stride, ctx)`` builds one operation. Every op follows A.4: ReLU -> conv -> BN ordering, no
BN/ReLU between a depthwise and its pointwise conv, separable convs applied twice, 1x1 convs inserted where shapes
must match (C_in != F). Semantics follow TF-slim ``nasnet_utils.py`` where it implements the op; the paper-only ops
(``conv_1x7_7x1``, ``conv_1x3_3x1``, ``dil_conv_3x3``, ``conv_*``, the 5x5/7x7 max pools) are the plain reading of
the paper's list under the same A.4 rules, because no released cell uses them.

Each op tells the cell two things: ``relu_input`` (its first step is the ReLU of its input; the cell applies that
ReLU once per state and hands the activated tensor to every such op) and ``droppable`` (drop path applies; identity
is never dropped, TF-slim ``if operation != 'none'``).

Padding: by default stride-2 ops pad symmetrically (``k // 2``), so a side that is a multiple of 32 gives exactly
``H / 2**i`` and the graph has no shape-dependent code (fx-traceable). ``reference_padding=True`` reproduces TF
'SAME' padding as the timm twins implement it: computed from the input size at stride 2 (asymmetric on even sides),
with max pools padded by -inf and stride-2 average pools counting the zero padding (timm ``AvgPool2dSame`` pads with
zeros before ``avg_pool2d``). ``OpContext.same_pool`` picks how the 'SAME'-padded stride-2 pools treat their padding:
``"timm"`` (above), ``"tf"`` (TensorFlow, TF-slim and keras-applications' ``padding="same"``: average pools exclude
the padding, max pools ignore it) or ``"keras"`` (Keras 3's NASNet: zero-padded, then 'valid' pools, so the zeros
count in both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import FactorizedReduce, SeparableConv2d
from .genotypes import CONVENTIONS, OPS, Conventions


@dataclass(frozen=True)
class OpContext:
    """What every op of one network shares: BN settings, padding mode, the source code's conventions."""

    eps: float = 1e-3
    momentum: float = 0.0003  # TF decay 0.9997
    reference_padding: bool = False
    conventions: Conventions = CONVENTIONS["tf_slim"]
    same_pool: str = "timm"  # padding of the 'SAME' stride-2 pools under reference_padding: "timm" | "tf" | "keras"

    def bn(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)


def tf_same_pads(size: tuple[int, int], kernel: tuple[int, int], stride: int, dilation: int = 1) -> list[int]:
    """TF 'SAME' pads ``[left, right, top, bottom]`` for an input of ``size = (H, W)`` (the extra pixel goes last)."""
    pads = []
    for n, k in zip(size, kernel):
        eff = (k - 1) * dilation + 1
        total = max((math.ceil(n / stride) - 1) * stride + eff - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


class SamePad(nn.Module):
    """TF 'SAME' padding computed from the input size (reference mode only: shape-dependent, not fx-traceable)."""

    def __init__(self, kernel: int | tuple[int, int], stride: int, dilation: int = 1, value: float = 0.0) -> None:
        super().__init__()
        self.kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.stride, self.dilation, self.value = stride, dilation, value

    def forward(self, x: Tensor) -> Tensor:
        pads = tf_same_pads((int(x.shape[-2]), int(x.shape[-1])), self.kernel, self.stride, self.dilation)
        return F.pad(x, pads, value=self.value) if any(pads) else x


def _static_padding(kernel: tuple[int, int], dilation: int) -> tuple[int, int]:
    return (dilation * (kernel[0] // 2), dilation * (kernel[1] // 2))


def _needs_same_pad(ctx: OpContext, kernel: tuple[int, int], stride: int) -> bool:
    # stride 1 with odd kernels: TF SAME is symmetric, i.e. the static padding
    return ctx.reference_padding and (stride > 1 or kernel[0] % 2 == 0 or kernel[1] % 2 == 0)


class Op(nn.Module):
    relu_input = True
    droppable = True


class ReluConvBn(Op):
    """ReLU -> conv k x k (stride, dilation) -> BN; the ReLU is the caller's (``relu_input``). Children conv, bn."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int, ctx: OpContext, dilation: int = 1
    ) -> None:
        super().__init__()
        k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        dynamic = _needs_same_pad(ctx, k, stride) and max(k) > 1
        self.pad = SamePad(k, stride, dilation) if dynamic else None
        padding = (0, 0) if dynamic else _static_padding(k, dilation)
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation=dilation, bias=False)
        self.bn = ctx.bn(c_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return self.bn(self.conv(x))


class SepConv(Op):
    """Separable conv applied twice (A.4): [ReLU -> depthwise k x k -> pointwise -> BN] x 2, stride on the first.

    Both pointwise convs output ``c_out``; with C_in != F the first depthwise runs on C_in (TF-slim
    ``_stacked_separable_conv``; timm ``BranchSeparables(stem_cell=True)``). Children conv1, bn1, conv2, bn2.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, ctx: OpContext, dilation: int = 1) -> None:
        super().__init__()
        k = (kernel, kernel)
        dynamic = _needs_same_pad(ctx, k, stride)
        self.pad = SamePad(k, stride, dilation) if dynamic else None
        pad1 = 0 if dynamic else dilation * (kernel // 2)
        self.conv1 = SeparableConv2d(c_in, c_out, kernel, stride, pad1, dilation)
        self.bn1 = ctx.bn(c_out)
        self.conv2 = SeparableConv2d(c_out, c_out, kernel, 1, dilation * (kernel // 2), dilation)
        self.bn2 = ctx.bn(c_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn2(self.conv2(x))


class FactorizedConv(Op):
    """ "1xk then kx1 convolution": [ReLU -> conv 1 x k (stride) -> BN], [ReLU -> conv k x 1 -> BN]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, ctx: OpContext) -> None:
        super().__init__()
        self.unit1 = ReluConvBn(c_in, c_out, (1, kernel), stride, ctx)
        self.unit2 = ReluConvBn(c_out, c_out, (kernel, 1), 1, ctx)

    def forward(self, x: Tensor) -> Tensor:
        return self.unit2(F.relu(self.unit1(x)))


class Pool(Op):
    """k x k average (padding excluded) or max pooling; on C_in != C_out followed by [ReLU ->] 1x1 conv -> BN.

    Children conv, bn when projecting (TF-slim: no ReLU; ENAS conventions: with ReLU).
    """

    relu_input = False

    def __init__(self, kind: str, kernel: int, c_in: int, c_out: int, stride: int, ctx: OpContext) -> None:
        super().__init__()
        self.kind = kind
        dynamic = _needs_same_pad(ctx, (kernel, kernel), stride)
        zero = kind == "avg" or ctx.same_pool == "keras"
        self.pad = SamePad(kernel, stride, value=0.0 if zero else float("-inf")) if dynamic else None
        # TF: the mean over the window's real pixels only (the pool of the zero-padded ones counts them)
        self.exclude_pad = dynamic and kind == "avg" and ctx.same_pool == "tf"
        padding = 0 if dynamic else kernel // 2
        if kind == "avg":
            self.pool: nn.Module = nn.AvgPool2d(kernel, stride, padding, count_include_pad=False)
        else:
            self.pool = nn.MaxPool2d(kernel, stride, padding)
        self.project_relu = ctx.conventions.pool_projection_relu
        if c_in != c_out:
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.bn = ctx.bn(c_out)
        else:
            self.conv = None

    def forward(self, x: Tensor) -> Tensor:
        if self.exclude_pad:
            ones = x.new_ones((1, 1, x.shape[-2], x.shape[-1]))
            x = self.pool(self.pad(x)) / self.pool(self.pad(ones))  # (sum / k^2) / (real pixels / k^2)
        else:
            if self.pad is not None:
                x = self.pad(x)
            x = self.pool(x)
        if self.conv is not None:
            if self.project_relu:
                x = F.relu(x)
            x = self.bn(self.conv(x))
        return x


class Identity(Op):
    """The identity op ("none"): never dropped, takes its input as is."""

    relu_input = False
    droppable = False

    def forward(self, x: Tensor) -> Tensor:
        return x


class IdentityConv(ReluConvBn):
    """Identity where the shape must change (TF-slim): ReLU -> 1x1 conv (stride) -> BN; still never dropped."""

    droppable = False

    def __init__(self, c_in: int, c_out: int, stride: int, ctx: OpContext) -> None:
        super().__init__(c_in, c_out, 1, stride, ctx)


class IdentityReduce(FactorizedReduce):
    """Identity with stride 2 under ENAS conventions: factorized reduction without ReLU. Children path1, path2, bn."""

    relu_input = False
    droppable = False

    def __init__(self, c_in: int, c_out: int, ctx: OpContext) -> None:
        super().__init__(c_in, c_out, relu=False, eps=ctx.eps, momentum=ctx.momentum)


def identity(c_in: int, c_out: int, stride: int, ctx: OpContext) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return Identity()
    if stride > 1 and ctx.conventions.stride_identity == "factorized":
        if c_in != c_out:
            raise ValueError(
                f"ENAS identity reduction expects calibrated inputs (C_in == C_out), got {c_in} -> {c_out}"
            )
        return IdentityReduce(c_in, c_out, ctx)
    return IdentityConv(c_in, c_out, stride, ctx)


OpBuilder = Callable[[int, int, int, OpContext], nn.Module]

# name -> builder(c_in, c_out, stride, ctx); keys are exactly genotypes.OPS (checked below)
OP_TABLE: dict[str, OpBuilder] = {
    "identity": identity,
    "conv_1x7_7x1": lambda ci, co, s, ctx: FactorizedConv(ci, co, 7, s, ctx),
    "avg_pool_3x3": lambda ci, co, s, ctx: Pool("avg", 3, ci, co, s, ctx),
    "max_pool_5x5": lambda ci, co, s, ctx: Pool("max", 5, ci, co, s, ctx),
    "conv_1x1": lambda ci, co, s, ctx: ReluConvBn(ci, co, 1, s, ctx),
    "sep_conv_3x3": lambda ci, co, s, ctx: SepConv(ci, co, 3, s, ctx),
    "sep_conv_7x7": lambda ci, co, s, ctx: SepConv(ci, co, 7, s, ctx),
    "conv_1x3_3x1": lambda ci, co, s, ctx: FactorizedConv(ci, co, 3, s, ctx),
    "dil_conv_3x3": lambda ci, co, s, ctx: ReluConvBn(ci, co, 3, s, ctx, dilation=2),
    "max_pool_3x3": lambda ci, co, s, ctx: Pool("max", 3, ci, co, s, ctx),
    "max_pool_7x7": lambda ci, co, s, ctx: Pool("max", 7, ci, co, s, ctx),
    "conv_3x3": lambda ci, co, s, ctx: ReluConvBn(ci, co, 3, s, ctx),
    "sep_conv_5x5": lambda ci, co, s, ctx: SepConv(ci, co, 5, s, ctx),
}
if tuple(OP_TABLE) != OPS:  # the search space is defined once, in genotypes.py
    raise RuntimeError(f"OP_TABLE keys {tuple(OP_TABLE)} differ from genotypes.OPS {OPS}")


def build_op(name: str, c_in: int, c_out: int, stride: int, ctx: OpContext) -> nn.Module:
    """Build the op ``name`` mapping ``c_in`` to ``c_out`` channels with ``stride``."""
    if name not in OP_TABLE:
        raise KeyError(f"unknown op {name!r}; valid: {', '.join(OP_TABLE)}")
    return OP_TABLE[name](c_in, c_out, stride, ctx)
