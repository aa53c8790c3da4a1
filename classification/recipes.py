"""Training recipes of the papers, as plain torch pieces (no Lightning here).

* :func:`classification_loss`: cross-entropy with label smoothing (Inception-v3 §7, NASNet A.7: 0.1) plus the
  auxiliary head's loss weighted by ``aux_weight`` (Inception-v3 / NASNet A.7: 0.4).
* :class:`ModelEma`: exponential moving average of the weights, used for evaluation (NASNet A.7: decay 0.9999).
* :class:`LRSchedule`: linear warm-up (Goyal et al. 2017, arXiv:1706.02677) then constant, step, cosine
  (SGDR, arXiv:1608.03983; NASNet A.6) or exponential decay (Inception-v3 §8; NASNet A.7), as a factor per step.
* :func:`update_drop_path`: ScheduledDropPath progress (NASNet A.5: drop probability rises linearly over training).
* :class:`Cutout` (DeVries & Taylor 2017, arXiv:1708.04552; NASNet Table 1 "+ cutout").
* :class:`RMSpropTF`: TensorFlow's RMSProp, the optimiser NASNet and MobileNet were trained with.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import set_drop_path_progress

SCHEDULES = ("constant", "step", "cosine", "exponential")
OPTIMIZERS = ("sgd", "rmsprop_tf", "rmsprop", "adamw")


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


# ---- learning-rate schedules ----------------------------------------------------------------------------------------
class LRSchedule:
    """Multiplicative learning-rate factor per optimiser step (for ``torch.optim.lr_scheduler.LambdaLR``).

    Args:
        name: ``constant``; ``step`` (times ``gamma`` at each of ``milestones``, given as fractions of the run, e.g.
            DenseNet's epochs 30 and 60 of 90 are ``[0.333, 0.667]``); ``cosine`` (single period from 1 to
            ``min_factor`` over the steps after warm-up, NASNet A.6); ``exponential`` (``gamma ** (epoch /
            decay_epochs)``, floored to whole periods when ``staircase``; Inception-v3 §8: 0.94 every 2 epochs).
        total_steps, steps_per_epoch: the run's length.
        warmup_epochs: linear warm-up from ``warmup_factor`` to 1 (Goyal et al. 2017 §2.2), then the schedule.
    """

    def __init__(
        self,
        name: str,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        warmup_factor: float = 0.0,
        milestones: Sequence[float] = (),
        gamma: float = 0.1,
        decay_epochs: float = 2.0,
        staircase: bool = True,
        min_factor: float = 0.0,
    ) -> None:
        if name not in SCHEDULES:
            close = difflib.get_close_matches(str(name), SCHEDULES, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"schedule {name!r} is unknown{hint}; choose one of {', '.join(SCHEDULES)}")
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError(f"total_steps={total_steps} and steps_per_epoch={steps_per_epoch} must be >= 1")
        bad = [m for m in milestones if not 0 < m < 1]
        if bad:
            raise ValueError(f"step milestones {list(bad)} must be fractions of the run in (0, 1), e.g. [0.333, 0.667]")
        if name == "exponential" and decay_epochs <= 0:
            raise ValueError(f"decay_epochs={decay_epochs} must be > 0")
        self.name = name
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.warmup_factor = warmup_factor
        self.milestones = sorted(milestones)
        self.gamma = gamma
        self.decay_epochs = decay_epochs
        self.staircase = staircase
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            t = (step + 1) / self.warmup_steps
            return self.warmup_factor + (1.0 - self.warmup_factor) * t
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            done = step / self.total_steps
            return self.gamma ** sum(done >= m for m in self.milestones)
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        periods = step / (self.decay_epochs * self.steps_per_epoch)
        return self.gamma ** (math.floor(periods) if self.staircase else periods)


def build_schedule(cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> LRSchedule:
    opts = dict(cfg)
    name = opts.pop("name", "constant")
    import inspect

    valid = [p for p in inspect.signature(LRSchedule).parameters if p not in ("name", "total_steps", "steps_per_epoch")]
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"unknown recipe.schedule key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if "milestones" in opts:
        opts["milestones"] = [float(m) for m in opts["milestones"]]
    return LRSchedule(name, total_steps, steps_per_epoch, **opts)


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


# ---- optimisers ------------------------------------------------------------------------------------------------------
class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow 1.x ``RMSPropOptimizer``: epsilon inside the square root, mean-square slots start at 1, the
    learning rate applied inside the momentum buffer, L2 weight decay added to the gradient (``l2_regularizer``)::

        ms  = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w  -= mom

    With NASNet's eps = 1.0 (A.7) this differs markedly from ``torch.optim.RMSprop`` (``g / (sqrt(ms) + eps)``).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or not 0 <= decay < 1 or not 0 <= momentum < 1 or eps <= 0 or weight_decay < 0:
            raise ValueError(
                f"invalid RMSpropTF settings lr={lr} decay={decay} momentum={momentum} eps={eps} "
                f"weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(group["decay"]).addcmul_(g, g, value=1.0 - group["decay"])
                mom.mul_(group["momentum"]).addcdiv_(g, ms.add(group["eps"]).sqrt_(), value=group["lr"])
                p.sub_(mom)
        return loss


def param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True, decay_depthwise: bool = True
) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and a no-decay group.

    Biases and norm affines go to the no-decay group unless ``decay_norm_and_bias`` (TF-slim regularises conv and
    linear weights only; the Torch/Caffe ImageNet recipes decay every parameter); depthwise conv weights too unless
    ``decay_depthwise`` (MobileNet §4: "very little or no weight decay ... on the depthwise filters").
    """
    depthwise = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if (p.ndim <= 1 and not decay_norm_and_bias) or (id(p) in depthwise and not decay_depthwise):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names (``sgd``, ``rmsprop_tf``, ``rmsprop``, ``adamw``) at learning rate ``lr``."""
    opts = dict(cfg)
    name = opts.pop("name")
    opts.pop("lr", None)
    opts.pop("reference_batch_size", None)
    wd = float(opts.pop("weight_decay", 0.0))
    groups = param_groups(
        model, wd, bool(opts.pop("decay_norm_and_bias", True)), bool(opts.pop("decay_depthwise", True))
    )
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters (are all stages frozen?)")
    classes = {
        "sgd": torch.optim.SGD,
        "rmsprop_tf": RMSpropTF,
        "rmsprop": torch.optim.RMSprop,
        "adamw": torch.optim.AdamW,
    }
    if name not in classes:
        close = difflib.get_close_matches(str(name), OPTIMIZERS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"optimizer {name!r} is unknown{hint}; choose one of {', '.join(OPTIMIZERS)}")
    try:
        return classes[name](groups, lr=lr, **opts)
    except TypeError as e:
        raise ValueError(f"recipe.optimizer for {name!r} has an unknown key: {e}") from e
