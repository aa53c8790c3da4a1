"""Blocks shared by two or more families, and the norm conversions every family gets.

Every layer takes what it needs as arguments (eps, momentum, activation); nothing here reads a global config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check, check_choice, check_probability

NORMS = ("bn", "frozen_bn", "sync_bn", "gn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, keeping the source layer's ``eps``.

    The state-dict keys are those of ``nn.BatchNorm2d`` (``num_batches_tracked`` is accepted and dropped), so a
    checkpoint of either loads into the other.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _gn_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` dividing ``channels`` (GN paper uses 32)."""
    return math.gcd(channels, max_groups)


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by the requested norm, copying weights and ``eps``.

    ``"frozen_bn"`` keeps the running statistics; ``"gn"`` keeps gamma/beta and uses gcd(C, 32) groups;
    ``"sync_bn"`` uses ``nn.SyncBatchNorm`` (needs torch.distributed at training time).
    """
    check_choice("norm", norm, NORMS)
    if norm == "bn":
        return module
    if norm == "sync_bn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d):
        return _convert_bn(module, norm)
    for name, child in module.named_children():
        new = convert_norm(child, norm)
        if new is not child:
            setattr(module, name, new)
    return module


def _convert_bn(bn: nn.BatchNorm2d, norm: str) -> nn.Module:
    c = bn.num_features
    if norm == "frozen_bn":
        new = FrozenBatchNorm2d(c, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                new.running_mean.copy_(bn.running_mean)
                new.running_var.copy_(bn.running_var)
        return new
    new = nn.GroupNorm(_gn_groups(c), c, eps=bn.eps, affine=True)
    if bn.affine:
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
    return new


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | FrozenBatchNorm2d)


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU (each part optional), children named ``conv``, ``bn``, ``act``.

    ``padding=None`` means ``dilation * (kernel_size // 2)``: output side ``ceil(H / stride)`` for odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias
        )
        if norm:
            self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        if act:
            self.act = nn.ReLU(inplace=True)


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv followed directly by a pointwise 1 x 1 conv, nothing in between (Xception Fig. 4,
    MobileNet's depthwise-separable factorisation without the inner BN/ReLU, NASNet A.4)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size // 2)
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation=dilation, groups=in_channels, bias=bias
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (SENet paper Fig. 3, Table 1): GAP -> FC(C/r) -> ReLU -> FC(C) -> sigmoid -> scale.

    The FCs are 1x1 convs with bias (same maths, and the layout of the released Caffe/timm weights).
    """

    def __init__(self, channels: int, reduction: int = 16, reduced_channels: int | None = None) -> None:
        super().__init__()
        rd = reduced_channels if reduced_channels is not None else max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.fc2(self.act(self.fc1(s)))
        return x * s.sigmoid()


def check_se_ratio(se_ratio: object) -> None:
    """Raise ``ValueError`` unless ``se_ratio`` is a valid SE reduction r option: None or 0 (no SE) or an int > 0."""
    ok = se_ratio is None or (isinstance(se_ratio, int) and not isinstance(se_ratio, bool) and se_ratio >= 0)
    check("se_ratio", se_ratio, ok, "use None or 0 (no SE) or a positive integer such as 16 (SENet's r)")


class DropPath(nn.Module):
    """Per-sample drop of a whole residual/cell path (stochastic depth), identity in eval.

    With ``scheduled=True`` it is NASNet's ScheduledDropPath (paper A.5): the drop probability is
    ``drop_prob * progress`` where ``progress`` in [0, 1] is set during training through
    :func:`set_drop_path_progress`, so it rises linearly over training.
    """

    def __init__(self, drop_prob: float = 0.0, scheduled: bool = False) -> None:
        super().__init__()
        check_probability("drop_prob", drop_prob)
        self.drop_prob = drop_prob
        self.scheduled = scheduled
        self.progress = 1.0 if not scheduled else 0.0

    @property
    def current_drop_prob(self) -> float:
        return self.drop_prob * self.progress if self.scheduled else self.drop_prob

    def forward(self, x: Tensor) -> Tensor:
        p = self.current_drop_prob
        if not self.training or p == 0.0:
            return x
        keep = 1.0 - p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, scheduled={self.scheduled}"


def set_drop_path_progress(module: nn.Module, progress: float) -> None:
    """Set training progress (0 = start, 1 = end) on every scheduled DropPath under ``module``."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress={progress} must be in [0, 1]")
    for m in module.modules():
        if isinstance(m, DropPath) and m.scheduled:
            m.progress = float(progress)


def channel_shuffle(x: Tensor, groups: int, inverse: bool = False) -> Tensor:
    """ShuffleNet channel shuffle (paper §3.1): view channels as (g, n), transpose to (n, g), flatten.

    ``inverse=True`` is the inverse permutation, megvii ShuffleNet-Series' ``channel_shuffle`` (view as (n, g),
    transpose to (g, n)): a different network for most (g, n), the one their released weights were trained in.
    One copy: the view and transpose are free, ``reshape`` of the transposed view materialises once.
    """
    b, c, h, w = x.shape
    if inverse:
        return x.view(b, c // groups, groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def same_pad(x: Tensor, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0) -> Tensor:
    """TensorFlow 'SAME' padding (extra pixel on the bottom/right), computed from the input size."""
    ih, iw = x.shape[-2:]
    eff = (kernel_size - 1) * dilation + 1
    pad_h = max((math.ceil(ih / stride) - 1) * stride + eff - ih, 0)
    pad_w = max((math.ceil(iw / stride) - 1) * stride + eff - iw, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'SAME' padding computed from each input's size (``reference="tf"``: TF-slim and
    Keras pad a stride-2 conv on an even side by one pixel at the bottom/right only). Same parameters and state-dict
    keys as ``nn.Conv2d``; the ``padding`` argument is ignored."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **kwargs) -> None:
        kwargs.pop("padding", None)
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0], self.dilation[0]))


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow 'SAME' padding (padded cells never win: -inf), e.g. Keras Xception's pools."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(same_pad(x, self.kernel_size, self.stride, value=float("-inf")))


class FactorizedReduce(nn.Module):
    """Halve the spatial size without dropping pixels (NASNet / ENAS ``factorized_reduction``).

    path1 = 1x1 conv (stride 2) on the even pixels; path2 = the same on the odd pixels (shift by one: crop the
    top/left row and column, zero-pad bottom/right); concatenate (``out_channels / 2`` each) -> BN. A 1x1 conv with
    stride 2 is the reference's 1x1 average pool with stride 2 followed by a 1x1 conv, without the extra copy.
    ``relu=True`` applies ReLU first (cell inputs); callers that already hold the activated tensor pass ``False``.
    Children ``path1``, ``path2``, ``bn``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, relu: bool = False, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"FactorizedReduce needs an even out_channels, got {out_channels}")
        self.relu = relu
        self.path1 = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.path2 = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        if self.relu:
            x = F.relu(x)
        shifted = F.pad(x, [-1, 1, -1, 1])  # (B, C, H, W): pixel (i, j) <- (i + 1, j + 1), zeros past the edge
        return self.bn(torch.cat([self.path1(x), self.path2(shifted)], 1))
