"""The one solver of every task: the ``conf/solver`` schema (:class:`Solver`), the optimiser with its weight-decay
groups (:func:`build_optimizer`), the learning-rate schedule (:class:`LRSchedule`) and their wiring into a
LightningModule (:func:`configure_optimizers`). ``docs/training.md`` describes every key.

The schedule is one function of the optimiser step ``s`` of the whole run (``T`` steps, ``E`` steps per epoch)::

    lr(s) = lr * scale * warmup(s) * schedule(s)
    scale = global batch / reference_batch_size        (1 without reference_batch_size; Goyal et al. 2017 §2.1)
    warmup(s) = f0 + (1 - f0) * s / W for s < W, else 1 (linear from warmup_start_factor f0 over W steps)
    schedule(s): constant 1; cosine m + (1 - m) (1 + cos(pi s / T)) / 2; multistep gamma ** #{milestones <= s / T};
                 step gamma ** floor(s / (decay_epochs E)); exponential gamma ** (s / (decay_epochs E))

Warm-up multiplies the schedule, and every schedule runs on the clock of the whole run, warm-up included: milestones
and decay periods are positions in the run as the papers give them (Goyal et al. §2.2 divide at epochs 30, 60, 80
counting the 5 warm-up epochs; Inception-v3 §8 decays every 2 epochs from the start), and the product is continuous
where warm-up ends. This is detectron2's ``WarmupMultiStepLR`` and torchvision's detection reference (``LinearLR``
chained with ``MultiStepLR``); for a cosine it is timm's default (cosine over the whole run, warm-up at its start).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from backbones.checks import check

from .schema import ConfigError, key, parse, schema_keys

logger = logging.getLogger(__name__)

#: optimiser -> the optional keys it takes (besides lr and the weight decays)
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov"),
    "rmsprop_tf": ("momentum", "rms_decay", "eps"),
    "rmsprop": ("momentum", "rms_decay", "eps"),
    "adamw": ("eps", "betas"),
}
#: schedule -> the keys it reads
SCHEDULES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "cosine": ("min_lr_factor",),
    "multistep": ("milestones", "gamma"),
    "step": ("decay_epochs", "gamma"),
    "exponential": ("decay_epochs", "gamma"),
}


def _increasing(ms: tuple[float, ...]) -> bool:
    return list(ms) == sorted(ms)


@dataclass(frozen=True)
class Solver:
    """One ``conf/solver/<name>.yaml``: how a run optimises, a :mod:`training.schema` schema. Build it with
    :meth:`from_config`, which checks every key's type and range.

    Attributes:
        name, source: the file's name and where its numbers come from (informational).
        epochs: run length in epochs (the task decides what overrides it).
        optimizer: ``sgd`` | ``rmsprop_tf`` (TensorFlow's RMSProp, :class:`RMSpropTF`) | ``rmsprop`` (torch's) |
            ``adamw``.
        lr: base learning rate, for ``reference_batch_size`` images per optimiser step.
        reference_batch_size: the lr is multiplied by global batch / this (per-device batch x devices x nodes x
            ``accumulate_grad_batches``; linear scaling rule, Goyal et al. 2017 §2.1). None: the lr as given.
        momentum, nesterov, rms_decay, eps, betas: optimiser settings; None = the optimiser's default. ``rms_decay``
            is the decay of the mean of squared gradients (TensorFlow ``decay``, torch ``alpha``).
        weight_decay: L2 penalty (``adamw``: decoupled decay) of conv and linear weights.
        weight_decay_norm_bias: decay of every parameter with at most one dimension (norm scales and shifts, biases);
            None = ``weight_decay``.
        weight_decay_depthwise: decay of depthwise conv weights (``groups == in == out channels``); None =
            ``weight_decay`` (MobileNet §4: "very little or no weight decay ... on the depthwise filters").
        warmup_steps, warmup_epochs: length of the linear warm-up, in optimiser steps or in (fractional) epochs; at
            most one of them > 0.
        warmup_start_factor: the warm-up factor at step 0; it rises linearly to 1 at the end of warm-up.
        schedule: ``constant`` | ``cosine`` | ``multistep`` | ``step`` | ``exponential`` (module docstring).
        milestones: ``multistep``: fractions of the run in (0, 1), increasing, at which the lr is multiplied by
            ``gamma`` (e.g. epochs 30 and 60 of 90 = ``[0.3333, 0.6667]``).
        gamma: the factor of ``multistep``, ``step`` and ``exponential``.
        decay_epochs: the period of ``step`` (staircase) and ``exponential`` (smooth), in epochs.
        min_lr_factor: ``cosine``: the factor at the last step.
    """

    name: str = "custom"
    source: str | None = ""
    epochs: int | None = key(None, ge=1)
    optimizer: str = key("sgd", choices=OPTIMIZERS)
    lr: float = key(0.1, gt=0)
    reference_batch_size: int | None = key(None, ge=1)
    momentum: float | None = key(None, ge=0, le=1)
    nesterov: bool | None = None
    rms_decay: float | None = key(None, ge=0, le=1)
    eps: float | None = key(None, gt=0)
    betas: tuple[float, float] | None = key(None, ge=0, le=1, valid="two numbers in [0, 1], e.g. [0.9, 0.999]")
    weight_decay: float = key(0.0, ge=0)
    weight_decay_norm_bias: float | None = key(None, ge=0)
    weight_decay_depthwise: float | None = key(None, ge=0)
    warmup_steps: int = key(0, ge=0)
    warmup_epochs: float = key(0.0, ge=0)
    warmup_start_factor: float = key(0.001, ge=0, le=1)
    schedule: str = key("constant", choices=SCHEDULES)
    milestones: tuple[float, ...] = key(
        factory=tuple, gt=0, lt=1, check=_increasing, valid="increasing fractions of the run in (0, 1)"
    )
    gamma: float = key(0.1, gt=0)
    decay_epochs: float | None = key(None, gt=0)
    min_lr_factor: float = key(0.0, ge=0, le=1)

    def __post_init__(self) -> None:
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError(
                f"solver.warmup_steps={self.warmup_steps} and solver.warmup_epochs={self.warmup_epochs}: give the "
                f"warm-up in one unit (set the other to 0)"
            )
        if self.schedule in ("step", "exponential") and self.decay_epochs is None:
            raise ConfigError(f"solver.schedule={self.schedule!r} needs solver.decay_epochs (its period in epochs)")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("solver.schedule='multistep' needs solver.milestones (fractions of the run, e.g. [0.5])")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return schema_keys(cls)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Solver) -> Solver:
        """A checked :class:`Solver` from a ``solver`` group (a mapping; absent keys take the defaults above).

        Raises:
            ConfigError: an unknown key (with close matches), a value of the wrong type or range, an unknown
                optimiser or schedule, or a schedule without the keys it needs; the key is named ``solver.<key>``.
        """
        if isinstance(cfg, Solver):
            return cfg
        from .config import plain

        given = plain(cfg)
        solver = parse(cls, given, "solver")
        raw = {k: v for k, v in given.items() if v is not None}
        unused = [k for k in ("momentum", "nesterov", "rms_decay", "eps", "betas") if k in raw]
        unused = [k for k in unused if k not in OPTIMIZERS[solver.optimizer]]
        if unused:
            logger.warning(
                "%s not used by solver.optimizer=%s (it takes %s)",
                ", ".join(f"solver.{k}={raw[k]!r}" for k in unused),
                solver.optimizer,
                ", ".join(("lr", "weight_decay*", *OPTIMIZERS[solver.optimizer])),
            )
        return solver

    def scaled_lr(self, global_batch: int) -> float:
        """The lr for ``global_batch`` images per optimiser step (linear scaling by ``reference_batch_size``)."""
        if self.reference_batch_size is None:
            return self.lr
        return self.lr * global_batch / self.reference_batch_size


# ---- optimiser ------------------------------------------------------------------------------------------------------
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


def param_groups(model: nn.Module, solver: Solver) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in groups by weight decay: ``weight_decay`` for conv and linear
    weights, ``weight_decay_norm_bias`` for parameters of at most one dimension, ``weight_decay_depthwise`` for
    depthwise conv weights (each None = ``weight_decay``). Groups of equal decay are merged; empty ones left out."""
    depthwise = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    }
    wd = solver.weight_decay
    by_decay: dict[float, list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in depthwise and solver.weight_decay_depthwise is not None:
            decay = solver.weight_decay_depthwise
        elif p.ndim <= 1 and solver.weight_decay_norm_bias is not None:
            decay = solver.weight_decay_norm_bias
        else:
            decay = wd
        by_decay.setdefault(decay, []).append(p)
    return [{"params": ps, "weight_decay": decay} for decay, ps in by_decay.items()]


def build_optimizer(model: nn.Module, solver: Solver | Mapping[str, Any], global_batch: int) -> torch.optim.Optimizer:
    """The optimiser ``solver`` names over ``model``'s trainable parameters (:func:`param_groups`), at the lr
    scaled for ``global_batch`` images per step.

    Raises:
        ValueError: the solver is invalid, or the model has no trainable parameter.
    """
    s = Solver.from_config(solver)
    groups = param_groups(model, s)
    if not groups:
        raise ValueError("the model has no trainable parameters (are all stages frozen?)")
    lr = s.scaled_lr(global_batch)
    given = {k: getattr(s, k) for k in OPTIMIZERS[s.optimizer] if getattr(s, k) is not None}
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, **given)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **given)
    if "rms_decay" in given:  # TensorFlow calls it decay, torch alpha
        given["decay" if s.optimizer == "rmsprop_tf" else "alpha"] = given.pop("rms_decay")
    return (RMSpropTF if s.optimizer == "rmsprop_tf" else torch.optim.RMSprop)(groups, lr=lr, **given)


# ---- learning-rate schedule -----------------------------------------------------------------------------------------
class LRSchedule:
    """The factor of the scaled lr at each optimiser step (for ``torch.optim.lr_scheduler.LambdaLR``): warm-up times
    schedule, both on the clock of the whole run (module docstring).

    Args:
        solver: the solver (or a ``solver`` mapping).
        total_steps: optimiser steps of the whole run.
        steps_per_epoch: optimiser steps per epoch (converts ``warmup_epochs`` and ``decay_epochs``).
    """

    def __init__(self, solver: Solver | Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> None:
        s = Solver.from_config(solver)
        check("total_steps", total_steps, total_steps >= 1, "an integer >= 1")
        check("steps_per_epoch", steps_per_epoch, steps_per_epoch >= 1, "an integer >= 1")
        self.solver = s
        self.name = s.schedule
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_steps = s.warmup_steps or int(round(s.warmup_epochs * steps_per_epoch))
        if self.warmup_steps >= self.total_steps:
            logger.warning("warm-up (%d steps) is as long as the run (%d steps)", self.warmup_steps, self.total_steps)

    def schedule(self, step: int) -> float:
        s, t = self.solver, min(1.0, step / self.total_steps)
        if s.schedule == "cosine":
            return s.min_lr_factor + (1.0 - s.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if s.schedule == "multistep":
            return s.gamma ** sum(t >= m for m in s.milestones)
        if s.schedule in ("step", "exponential"):
            periods = step / (s.decay_epochs * self.steps_per_epoch)
            return s.gamma ** (math.floor(periods) if s.schedule == "step" else periods)
        return 1.0

    def warmup(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        f0 = self.solver.warmup_start_factor
        return f0 + (1.0 - f0) * step / self.warmup_steps

    def __call__(self, step: int) -> float:
        return self.warmup(step) * self.schedule(step)


def configure_optimizers(module: Any, model: nn.Module, solver: Solver | Mapping[str, Any], batch_size: int) -> dict:
    """What a LightningModule's ``configure_optimizers`` returns: :func:`build_optimizer` over ``model`` for the
    global batch (``batch_size`` per device x world size x ``accumulate_grad_batches``) and :class:`LRSchedule`
    stepped every optimiser step over ``trainer.estimated_stepping_batches``. ``module.total_steps`` is set to the run's
    optimiser steps (for schedules of other things, e.g. ScheduledDropPath)."""
    s = Solver.from_config(solver)
    trainer = module.trainer
    total = max(1, int(trainer.estimated_stepping_batches))  # creates the train loader: num_training_batches is known
    accumulate = int(trainer.accumulate_grad_batches)
    batches = trainer.num_training_batches
    steps_per_epoch = max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) else total
    global_batch = int(batch_size) * int(trainer.world_size) * accumulate
    optimizer = build_optimizer(model, s, global_batch)
    schedule = LRSchedule(s, total, steps_per_epoch)
    module.total_steps = total
    logger.info(
        "solver %s: %s lr %.4g (%g at %s images, global batch %d), %d steps (%d per epoch), warm-up %d steps, "
        "schedule %s",
        s.name,
        s.optimizer,
        s.scaled_lr(global_batch),
        s.lr,
        s.reference_batch_size or "any",
        global_batch,
        total,
        steps_per_epoch,
        schedule.warmup_steps,
        s.schedule,
    )
    # a plain function, not the schedule object: LambdaLR saves (and on resume restores) the attributes of callable
    # objects; the schedule is the config's, the checkpoint supplies the step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
