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
    every forward the masks are applied again, so no optimiser or numerical path can bring a pruned weight back;
    :meth:`apply` does it on demand (a trainer calls it after each optimiser step, so checkpoints hold exact zeros).
    The masks follow the model to whatever device it is moved to (a copy per device, made on first use).
    ``remove()`` detaches the hooks and applies the masks a last time.

    Attributes:
        masks: ``{parameter name: boolean keep-mask}``; replacing an entry (e.g. with the masks a checkpoint was
            trained under) takes effect at the next gradient, forward or :meth:`apply`.
    """

    def __init__(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        self.model = model
        self.masks = dict(masks)
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise KeyError(f"masks name parameters the model does not have: {', '.join(unknown[:5])}")
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"mask of {name}: shape {tuple(mask.shape)}, the weight's is {tuple(params[name].shape)}"
                )
        self._placed: dict[tuple[str, torch.device], tuple[Tensor, Tensor]] = {}
        self.apply()
        self._handles = [
            params[name].register_hook(lambda g, name=name: g * self._mask(name, g.device)) for name in self.masks
        ]
        self._handles.append(model.register_forward_pre_hook(lambda module, args: self.apply()))

    def _mask(self, name: str, device: torch.device) -> Tensor:
        """``masks[name]`` on ``device`` (cached; refreshed when the entry was replaced)."""
        source = self.masks[name]
        cached = self._placed.get((name, device))
        if cached is None or cached[0] is not source:
            cached = (source, source.to(device))
            self._placed[(name, device)] = cached
        return cached[1]

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight in place."""
        params = dict(self.model.named_parameters())
        for name in self.masks:
            params[name].mul_(self._mask(name, params[name].device))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.apply()


def density(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Fraction of non-zero entries of each named parameter (all conv / linear weights by default)."""
    params = dict(model.named_parameters())
    names = names if names is not None else [n for n, p in params.items() if p.ndim >= 2]
    return {n: float((params[n] != 0).float().mean()) for n in names}
