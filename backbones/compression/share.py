"""Weight sharing by per-layer k-means (Deep Compression stage 2).

Han et al., "Deep Compression", arXiv:1510.00149, section 3: the surviving weights of each layer are clustered into
``2**bits`` values with k-means, centroids initialised linearly between the layer's smallest and largest weight
(section 3.2: linear initialisation keeps the rare large weights, which matter most, better than density-based or
random initialisation); every weight is then stored as the index of its centroid. Pruned weights are not clustered:
they are absent from the sparse storage and decode to exact zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .plan import CompressionPlan


@dataclass
class SharedWeight:
    """One layer's weight as a codebook and per-weight indices.

    Attributes:
        shape: the weight's shape.
        codebook: ``(2**bits,)`` float32 centroids.
        indices: ``(nnz,)`` int64 centroid index of each stored weight, in flattened (row-major) order.
        mask: boolean keep-mask of the weight's shape, or None when every position is stored (dense layer).
        bits: codebook bits.
    """

    shape: tuple[int, ...]
    codebook: Tensor
    indices: Tensor
    mask: Tensor | None
    bits: int

    def dense(self) -> Tensor:
        """The weight the codebook encodes (zeros at pruned positions)."""
        values = self.codebook[self.indices]
        if self.mask is None:
            return values.view(self.shape)
        out = torch.zeros(self.mask.numel(), dtype=self.codebook.dtype)
        out[self.mask.flatten()] = values
        return out.view(self.shape)


def kmeans_1d(values: Tensor, k: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of scalars with linear initialisation; returns ``(centroids (k,), index of each value)``.

    In one dimension the clusters are the intervals between consecutive centroid midpoints, so each iteration is a
    sort-free ``searchsorted`` on the sorted values; empty clusters keep their centroid.
    """
    v = values.detach().flatten().double()
    if v.numel() == 0:
        raise ValueError("k-means needs at least one value")
    order = torch.sort(v).values
    lo, hi = order[0], order[-1]
    centroids = torch.linspace(float(lo), float(hi), k, dtype=torch.float64) if k > 1 else order.mean()[None]
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(order, 0)])
    for _ in range(iters):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        edges = torch.cat(
            [torch.zeros(1, dtype=torch.long), torch.searchsorted(order, bounds), torch.tensor([len(order)])]
        )
        counts = edges[1:] - edges[:-1]
        sums = csum[edges[1:]] - csum[edges[:-1]]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    bounds = (centroids[1:] + centroids[:-1]) / 2
    return centroids.float(), torch.searchsorted(bounds, v).long()


@torch.no_grad()
def share_weights(
    model: nn.Module, plan: CompressionPlan, masks: dict[str, Tensor] | None = None, iters: int = 50
) -> dict[str, SharedWeight]:
    """Cluster every weight the plan gives ``bits`` to, and write the shared values back into ``model``.

    Args:
        masks: the pruning masks (:func:`~backbones.compression.prune.prune`); weights without a mask are dense.
        iters: k-means iterations per layer (it usually converges earlier).

    Returns:
        ``{parameter name: SharedWeight}``; afterwards ``model``'s weights equal ``SharedWeight.dense()`` exactly.
    """
    masks = masks or {}
    params = dict(model.named_parameters())
    out = {}
    for name, rule in plan.targets(model).items():
        if rule.bits is None:
            continue
        w = params[name]
        mask = masks.get(name)
        kept = w.detach().flatten()[mask.flatten()] if mask is not None else w.detach().flatten()
        centroids, idx = kmeans_1d(kept, 2**rule.bits, iters)
        shared = SharedWeight(
            tuple(w.shape), centroids.cpu(), idx.cpu(), None if mask is None else mask.cpu(), rule.bits
        )
        w.copy_(shared.dense().to(w.device, w.dtype))
        out[name] = shared
    return out
