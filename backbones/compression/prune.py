"""Magnitude pruning to per-layer densities and retraining with the masks fixed (Deep Compression stage 1).

Han et al., "Learning both Weights and Connections", arXiv:1506.02626, and "Deep Compression", arXiv:1510.00149,
section 2: connections whose weight magnitude is below a per-layer threshold are removed, then the network is
retrained with the removed connections held at zero. Here each layer keeps exactly ``ceil(density * n)`` of its
``n`` weights, the largest in magnitude: the rounding that reproduces every per-layer count of SqueezeNet's Table 1
(e.g. fire2's e3x3: 33% of 9,216 = 3,041.28 -> 3,042 kept, so 5,746 parameters with the other layers and biases).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .plan import CompressionPlan


def magnitude_masks(model: nn.Module, plan: CompressionPlan) -> dict[str, Tensor]:
    """Boolean keep-masks of every weight the plan prunes (density < 1): the ``ceil(density * n)`` largest."""
    params = dict(model.named_parameters())
    masks = {}
    for name, rule in plan.targets(model).items():
        if rule.density >= 1.0:
            continue
        w = params[name].detach()
        keep = max(1, math.ceil(round(rule.density * w.numel(), 6)))  # round(): 0.2 * 512000 is 102400.00000000001
        flat = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        flat[w.abs().flatten().topk(keep, sorted=False).indices] = True
        masks[name] = flat.view_as(w)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero every pruned weight in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def prune(model: nn.Module, plan: CompressionPlan) -> dict[str, Tensor]:
    """Prune ``model`` in place to the plan's densities; returns the masks (for retraining and for storage)."""
    masks = magnitude_masks(model, plan)
    apply_masks(model, masks)
    return masks


class MaskKeeper:
    """Holds pruned weights at zero while a model is retrained.

    The gradient of every pruned weight is zeroed (so SGD with momentum and weight decay, RMSProp and Adam(W) all
    leave it at zero: their updates are functions of the gradient and, for decay, of the weight itself), and before
    every forward the masks are applied again, so no optimiser or numerical path can bring a pruned weight back.
    ``remove()`` detaches the hooks and applies the masks a last time.
    """

    def __init__(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        self.model = model
        self.masks = masks
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise KeyError(f"masks name parameters the model does not have: {', '.join(unknown[:5])}")
        apply_masks(model, masks)
        self._handles = []
        for name, mask in masks.items():
            m = mask.to(params[name].device, params[name].dtype)
            self._handles.append(params[name].register_hook(lambda g, m=m: g * m))
        self._handles.append(model.register_forward_pre_hook(lambda module, args: apply_masks(module, self.masks)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        apply_masks(self.model, self.masks)


def density(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Fraction of non-zero entries of each named parameter (all conv / linear weights by default)."""
    params = dict(model.named_parameters())
    names = names if names is not None else [n for n, p in params.items() if p.ndim >= 2]
    return {n: float((params[n] != 0).float().mean()) for n in names}
