"""Training recipes of the papers, as plain torch pieces (no Lightning here).

* :func:`classification_loss`: cross-entropy with label smoothing (Inception-v3 §7, NASNet A.7: 0.1) plus the
  auxiliary head's loss weighted by ``aux_weight`` (Inception-v3 / NASNet A.7: 0.4).
* :class:`ModelEma`: exponential moving average of the weights, used for evaluation (NASNet A.7: decay 0.9999).
* :func:`update_drop_path`: ScheduledDropPath progress (NASNet A.5: drop probability rises linearly over training).
* :class:`Cutout` (DeVries & Taylor 2017, arXiv:1708.04552; NASNet Table 1 "+ cutout").

The optimiser (TensorFlow's RMSProp among them) and the learning-rate schedule of a recipe are its ``conf/solver``
file, built by :mod:`training.optim` as for every task.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import set_drop_path_progress


# ---- loss ------------------------------------------------------------------------------------------------------------
def classification_loss(
    output: Tensor | tuple[Tensor, Tensor],
    target: Tensor,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the logits, plus ``aux_weight`` times that of the auxiliary logits when the model returns
    ``(logits, aux_logits)`` (NASNet / Inception aux head in training mode). Both use the same label smoothing.

    Returns:
        the total loss and its parts ``{"main": ..., "aux": ...}`` (``aux`` only when present).
    """
    aux = None
    if isinstance(output, tuple | list):
        output, aux = output
    main = F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)
    parts = {"main": main.detach()}
    loss = main
    if aux is not None:
        if aux_weight <= 0:
            raise ValueError(
                "the model returned auxiliary logits but recipe.aux_weight is 0; set aux_weight (NASNet A.7: 0.4) "
                "or build the model without its aux head"
            )
        aux_loss = F.cross_entropy(aux.float(), target, label_smoothing=label_smoothing)
        parts["aux"] = aux_loss.detach()
        loss = main + aux_weight * aux_loss
    return loss, parts


# ---- weight EMA ------------------------------------------------------------------------------------------------------
class ModelEma(nn.Module):
    """A copy of ``model`` whose parameters follow ``ema = d * ema + (1 - d) * param`` after each optimiser step.

    With ``warmup=True`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates: TensorFlow's
    ``ExponentialMovingAverage(decay, num_updates)`` as the TF-slim trainer used it, so that a 0.9999 average is
    meaningful in short runs. Buffers (BN running statistics, themselves running averages) are copied.
    The copy never requires grad, so it is not trained and DDP ignores it; it is saved in checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in (0, 1)")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params.get(name)
            if e is not None:
                e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            e = ema_buffers.get(name)
            if e is not None:
                e.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> ModelEma:
        super().train(mode)
        self.module.eval()  # the average is only evaluated, never trained
        return self

    def forward(self, x: Tensor) -> Any:
        return self.module(x)


# ---- ScheduledDropPath ----------------------------------------------------------------------------------------------
def drop_path_progress(step: int, total_steps: int) -> float:
    """Fraction of training done, in [0, 1]: the factor ScheduledDropPath scales its drop probability by."""
    return min(1.0, max(0.0, step / max(1, total_steps)))


def update_drop_path(model: nn.Module, step: int, total_steps: int) -> float:
    """Set the ScheduledDropPath progress of every scheduled ``DropPath`` in ``model``; returns the progress."""
    p = drop_path_progress(step, total_steps)
    set_drop_path_progress(model, p)
    return p


# ---- cutout ----------------------------------------------------------------------------------------------------------
class Cutout(nn.Module):
    """Zero one ``size`` x ``size`` square at a uniformly random centre of a (normalised) ``(C, H, W)`` image; the
    square is clipped at the borders, as in DeVries & Taylor's reference code (applied after normalisation)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"cutout size={size} must be >= 1 (0 disables cutout)")
        self.size = int(size)

    def forward(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size - self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size - self.size // 2)
        out = img.clone()
        out[..., y0:y1, x0:x1] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"
