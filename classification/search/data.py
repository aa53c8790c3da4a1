"""The search's proxy data: a small dataset held as tensors, split three ways, and a seeded batch augmentation.

A search needs data it can score thousands of architectures on: ``train`` trains children (or the shared
weights), ``val`` is the held-out split rewards are measured on (NASNet A.1: 5,000 CIFAR-10 training images held
out for the controller), ``test`` is touched only when a found cell is retrained and compared (``benchmark.py``).
The default is scikit-learn's bundled digits (``classification.data.load_digits_tensors``; real data, no download)
at 16 px: 8 x 8 originals, so 16 px loses nothing and costs a quarter of 32 px. ``docs/search.md`` shows it tells
cells apart (between-cell spread well above the seed-to-seed spread of one cell).

Augmentation is a random translation of up to ``shift`` pixels per image, drawn from a generator the caller seeds
per step, not in a loader transform: a resumed run then redraws exactly the batches it would have drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backbones.checks import check, check_choice, check_keys

DATASETS = ("digits",)
DATA_KEYS = ("name", "image_size", "val_fraction", "test_fraction", "split_seed", "shift", "batch_size")


@dataclass
class SearchData:
    """Normalised images ``(N, C, S, S)`` and labels of the three splits."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    shift: int = 2
    batch_size: int = 32

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> SearchData:
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return SearchData(**moved, num_classes=self.num_classes, shift=self.shift, batch_size=self.batch_size)


def _three_way(labels: Tensor, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    from sklearn.model_selection import train_test_split

    check("data.val_fraction + data.test_fraction", val_fraction + test_fraction, 0 < val_fraction + test_fraction < 1,
          "the held-out fractions must leave a training split")  # fmt: skip
    idx = list(range(len(labels)))
    y = labels.numpy()
    train, rest = train_test_split(idx, test_size=val_fraction + test_fraction, random_state=seed, stratify=y)
    val, test = train_test_split(
        rest, test_size=test_fraction / (val_fraction + test_fraction), random_state=seed, stratify=y[rest]
    )
    return tuple(torch.as_tensor(sorted(s)) for s in (train, val, test))  # type: ignore[return-value]


def build_search_data(cfg: Mapping[str, Any]) -> SearchData:
    """The ``data`` section of ``conf/search.yaml``; images normalised with the training split's mean and std."""
    cfg = dict(cfg)
    check_keys(cfg, DATA_KEYS, "data")
    check_choice("data.name", cfg.get("name", "digits"), DATASETS)
    size = int(cfg.get("image_size", 16))
    check("data.image_size", size, size >= 8, "the digits are 8 x 8; use 8 or more")
    from classification.data import load_digits_tensors

    x, y = load_digits_tensors(size)
    x = x[:, :1]  # the digits are grey: one channel (the loader tiles three for ImageNet-shaped backbones)
    tr, va, te = _three_way(y, float(cfg.get("val_fraction", 0.25)), float(cfg.get("test_fraction", 0.25)),
                            int(cfg.get("split_seed", 0)))  # fmt: skip
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return SearchData(x[tr], y[tr], x[va], y[va], x[te], y[te], num_classes=10, shift=int(cfg.get("shift", 2)),
                      batch_size=int(cfg.get("batch_size", 32)))  # fmt: skip


def translate(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Each image moved by its own random offset in [-shift, shift]^2 (zeros fill in); ``generator`` is on CPU."""
    if shift <= 0:
        return x
    n, c, h, w = x.shape
    off = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator).to(x.device)
    padded = F.pad(x, [shift] * 4)
    rows = (off[:, :1] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (off[:, 1:] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


@torch.no_grad()
def accuracy(forward, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``forward`` (images -> logits) over ``x``, in chunks."""
    hits = 0
    for i in range(0, len(y), batch_size):
        hits += int((forward(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return hits / max(1, len(y))
