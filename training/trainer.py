"""The Lightning Trainer of every task, built from a ``conf/trainer`` group, and the loop around ``Trainer.fit``.

``conf/trainer/*.yaml`` hold the hardware and loop settings (accelerator, devices, nodes, strategy, precision,
clipping, schedule length). :func:`build_trainer` turns one into a Trainer with TensorBoard + CSV loggers (rank 0
only: Lightning's loggers write from global rank 0), a ``last.ckpt`` written through the atomic writer
(:class:`~training.checkpoint.AtomicCheckpointIO`), the best checkpoints by a metric, and a progress bar whose ETA
covers the whole run. :func:`fit` is the one way a task trains: resume resolution, ``Trainer.fit``, the final
``last.ckpt`` and a last evaluation where the run ended between evaluations.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from backbones.checks import check_choice

from .checkpoint import LAST_CHECKPOINT, AtomicCheckpointIO, check_checkpoint, inspect_checkpoint, resolve_resume
from .config import plain
from .schema import ConfigError, key, parse, schema_keys
from .signals import RunInterrupted, StopOnSignal

logger = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "csv")


def _lightning_choices() -> dict[str, tuple[Any, ...]]:
    """Lightning's own accelerator, strategy and precision names (so a typo is named before the Trainer exists)."""
    import typing

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    def literals(tp: Any) -> list[Any]:
        args = typing.get_args(tp)
        return [a for arg in args for a in (literals(arg) if typing.get_args(arg) else [arg])]

    return {
        "accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        "strategy": ("auto", *StrategyRegistry.available_strategies()),
        "precision": tuple(literals(_PRECISION_INPUT)),
    }


_CHOICES = _lightning_choices()


def _devices_ok(v: Any) -> bool:
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v == "auto" or re.fullmatch(r"-1|\d+|(\d+,)+\d*", v.replace(" ", "")) is not None
    return len(v) > 0 and all(i >= 0 for i in v)


@dataclass(frozen=True)
class CheckpointConfig:
    """``trainer.checkpoint``: when ``last.ckpt`` is written and how many best checkpoints are kept."""

    every_n_epochs: int | None = key(1, ge=0, doc="0 or null: not at epoch ends")
    every_n_train_steps: int | None = key(None, ge=0, doc="0 or null: not every N steps")
    save_last: bool = True
    save_top_k: int = key(1, ge=-1, doc="best checkpoints kept by the task's metric; -1 all, 0 none")


def _count_or_fraction(low: int) -> Any:
    return key(
        None,
        check=lambda v: v >= low if isinstance(v, int) else low <= v <= 1 and (low == 0 or v > 0),
        valid=f"an integer >= {low} (batches) or a fraction in {'[0' if low == 0 else '(0'}, 1]",
    )


@dataclass(frozen=True)
class TrainerConfig:
    """A ``conf/trainer`` group: the keys of :data:`TRAINER_ARGS` go to ``lightning.Trainer``; ``channels_last`` and
    ``compile`` are read by the task module; ``progress_bar``, ``checkpoint`` and ``loggers`` by
    :func:`build_trainer`. Lightning's accelerator, strategy and precision names are the choices."""

    accelerator: str = key("cpu", choices=_CHOICES["accelerator"])
    devices: int | str | list[int] = key(
        1, check=_devices_ok, valid="an integer >= 1, -1 (all), 'auto' or a list of device indices"
    )
    num_nodes: int = key(1, ge=1)
    strategy: str = key("auto", choices=_CHOICES["strategy"])
    precision: str | int = key("32-true", choices=_CHOICES["precision"])
    sync_batchnorm: bool = False
    gradient_clip_val: float | None = key(None, ge=0)
    gradient_clip_algorithm: str | None = key("norm", choices=("norm", "value"))
    max_epochs: int | None = key(None, check=lambda v: v >= 1 or v == -1, valid="an integer >= 1 or -1 (no limit)")
    max_steps: int = key(-1, check=lambda v: v >= 1 or v == -1, valid="an integer >= 1 or -1 (no limit)")
    val_check_interval: int | float | None = _count_or_fraction(1)
    check_val_every_n_epoch: int | None = key(1, ge=1)
    log_every_n_steps: int = key(10, ge=1)
    limit_train_batches: int | float | None = _count_or_fraction(1)
    limit_val_batches: int | float | None = _count_or_fraction(0)
    accumulate_grad_batches: int = key(1, ge=1)
    deterministic: bool | Literal["warn"] | None = None
    benchmark: bool | None = None
    num_sanity_val_steps: int = key(0, ge=-1, doc="-1: every val batch")
    channels_last: bool = True
    compile: bool = False
    progress_bar: bool = True
    checkpoint: CheckpointConfig = key(factory=CheckpointConfig)
    loggers: list[str] | None = key(factory=lambda: list(LOGGERS), choices=LOGGERS)


#: keys of a ``trainer`` group passed straight to ``lightning.Trainer``
TRAINER_ARGS = tuple(k for k in schema_keys(TrainerConfig) if k not in ("channels_last", "compile", "progress_bar",
                                                                          "checkpoint", "loggers"))  # fmt: skip
#: keys read by the task modules (``channels_last``, ``compile``: the backbone's layout and compilation) or by
#: :func:`build_trainer` itself
MODULE_KEYS = ("channels_last", "compile", "progress_bar", "checkpoint", "loggers")
CHECKPOINT_KEYS = schema_keys(CheckpointConfig)


def check_trainer_config(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer`` group as a plain dict, after the checks that need no Trainer: every key's type and range
    (:class:`TrainerConfig`), and SyncBN refused on CPU processes.

    Raises:
        ConfigError: naming the key or value and what would be valid.
    """
    cfg = plain(trainer_cfg)
    parse(TrainerConfig, cfg, "trainer")
    devices = cfg.get("devices", 1)
    procs = int(devices) if str(devices).isdigit() else len(devices) if isinstance(devices, list) else 1
    if cfg.get("sync_batchnorm") and cfg.get("accelerator") == "cpu" and procs * int(cfg.get("num_nodes") or 1) > 1:
        raise ConfigError(
            "trainer.sync_batchnorm=true turns BatchNorm into torch.nn.SyncBatchNorm, which runs on GPUs only (it "
            "refuses CPU tensors once processes are synchronised); for CPU processes use backbone.norm=frozen_bn or "
            "backbone.norm=gn, or trainer.sync_batchnorm=false"
        )
    return cfg


class EpochProgressRepair(Callback):
    """Works around a Lightning 2.6 restart bug that would lose the data position of a later resume.

    Resumed from a checkpoint saved after an epoch's last batch (``every_n_train_steps`` landing there), the fit
    loop moves to the next epoch without counting it ready and started (nor calling ``on_train_epoch_start``). A
    checkpoint saved in that epoch then has ``ready == started == processed``, which Lightning reads as "that epoch
    had finished": it resumes the epoch at batch 0 while the loader continues at the saved batch, and the next
    checkpoint records a wrong position. During a training batch the count must be ``processed + 1``; this restores
    it at the first batch.
    """

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        progress = trainer.fit_loop.epoch_progress
        if progress.current.ready == progress.current.processed:
            progress.increment_ready()
            progress.increment_started()


class RunProgressBar(TQDMProgressBar):
    """TQDM bar over the whole run (optimizer steps), so its ETA is the time left for training, not the epoch."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        total = trainer.estimated_stepping_batches
        self.train_progress_bar.reset(total=None if total == float("inf") else int(total))
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{epochs}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        n = trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` (the resume point and the "last good" state) at every epoch end or every N steps,
    whatever the metrics. It is this callback's one "top-k" file: Lightning 2.6 writes a ``save_last`` file only at a
    point where a top-k file was written too, so ``save_top_k=0, save_last=True`` would write it only when fit ends."""

    def __init__(self, dirpath: str, every_n_epochs: int | None, every_n_train_steps: int | None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=LAST_CHECKPOINT.stem,
            save_top_k=1,
            enable_version_counter=False,
            every_n_epochs=None if every_n_train_steps else every_n_epochs,
            every_n_train_steps=every_n_train_steps,
        )


class EvaluatedStep(Callback):
    """Records the global step of the last finished evaluation (not the sanity check), so :func:`fit` can tell
    whether the final weights were evaluated."""

    def __init__(self) -> None:
        self.step = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step


def use_root_logging() -> None:
    """Route Lightning's log records through the root logger only (Hydra's handlers): Lightning adds console
    handlers of its own when imported before logging is configured, and every line would print twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = True


def build_trainer(
    trainer_cfg: Mapping[str, Any],
    output_dir: str | os.PathLike,
    *,
    monitor: str | None = None,
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> L.Trainer:
    """A ``lightning.Trainer`` from a ``trainer`` config group (``conf/trainer/*.yaml``).

    Args:
        trainer_cfg: the ``trainer`` group: Lightning arguments (:data:`TRAINER_ARGS`) plus ``progress_bar``,
            ``checkpoint`` ({every_n_epochs, every_n_train_steps, save_last, save_top_k}), ``loggers``
            (subset of ``tensorboard``, ``csv``) and the module switches ``channels_last`` / ``compile``
            (read by the task module, ignored here).
        output_dir: the run directory; logs go to ``<output_dir>/{tensorboard,csv}/version_<k>`` (a resumed run
            adds a version), checkpoints to ``<output_dir>/checkpoints`` (``last.ckpt`` plus the best by ``monitor``).
        monitor: metric that picks the best checkpoint (e.g. ``"val/AP"``); None keeps only the latest ones.
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        callbacks: extra callbacks.
        **overrides: Trainer arguments that win over the config (e.g. ``logger=False`` in tests).

    Raises:
        ValueError: on an unknown key (named, with close matches and the valid keys) or value.
    """
    use_root_logging()
    cfg = check_trainer_config(trainer_cfg)
    check_choice("mode", mode, ("max", "min"))
    ckpt_cfg = dict(cfg.get("checkpoint") or {})
    loggers_cfg = list(cfg.get("loggers", LOGGERS) or [])

    out = Path(output_dir)
    args = {k: cfg[k] for k in TRAINER_ARGS if k in cfg and cfg[k] is not None}
    if args.get("max_epochs") is None and args.get("max_steps", -1) in (-1, None):
        args["max_epochs"] = 1
        logger.warning("neither trainer.max_epochs nor trainer.max_steps is set; training for 1 epoch")

    loggers: list[Any] = []
    if "tensorboard" in loggers_cfg:
        loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard"))
    if "csv" in loggers_cfg:
        loggers.append(CSVLogger(save_dir=str(out), name="csv"))

    ckpt_dir = str(out / LAST_CHECKPOINT.parent)
    cbs: list[Callback] = []
    if ckpt_cfg.get("save_last", True):
        cbs.append(LastCheckpoint(ckpt_dir, ckpt_cfg.get("every_n_epochs", 1), ckpt_cfg.get("every_n_train_steps")))
    # a second callback keeps the best checkpoints by `monitor` after each evaluation
    if monitor is not None and ckpt_cfg.get("save_top_k", 1) != 0:
        cbs.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best-step{step:07d}",
                auto_insert_metric_name=False,
                monitor=monitor,
                mode=mode,
                save_top_k=ckpt_cfg.get("save_top_k", 1),
            )
        )
    cbs += [EpochProgressRepair(), EvaluatedStep(), DataGuard(), *callbacks]
    if loggers:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    progress = bool(cfg.get("progress_bar", True))
    if progress:
        cbs.append(RunProgressBar())
    # after every other callback (Lightning still moves the checkpoint callbacks behind it), so each sees the batch
    # a signal stops the run at
    cbs.append(StopOnSignal(os.path.join(ckpt_dir, LAST_CHECKPOINT.name)))
    args.update(
        default_root_dir=str(out),
        logger=loggers or False,
        callbacks=cbs,
        enable_progress_bar=progress,
        plugins=[AtomicCheckpointIO()],
    )
    args.update(overrides)
    logger.info("lightning.Trainer(%s)", ", ".join(f"{k}={v!r}" for k, v in args.items() if k != "callbacks"))
    return L.Trainer(**args)


def _callback(trainer: L.Trainer, kind: type) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


def check_resume(
    resume: Any, output_dir: str | os.PathLike, expect: Mapping[str, Any], weights_key: str | None = None
) -> str | None:
    """The checkpoint ``resume`` names (:func:`~training.checkpoint.resolve_resume`), refused unless it is a
    training checkpoint of this run's task and architecture (``expect``: task, backbone, ...; see
    :func:`~training.checkpoint.check_checkpoint`). None for a fresh run."""
    path = resolve_resume(resume, output_dir)
    if path is not None:
        check_checkpoint(inspect_checkpoint(path, "resume"), "resume", expect, training=True, weights_key=weights_key)
    return path


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    resume: Any = None,
    output_dir: str | os.PathLike = ".",
) -> None:
    """Train as every task does: from the checkpoint ``resume`` names (:func:`check_resume`, relative to
    ``output_dir``, with the module's ``checkpoint_meta`` and ``weights_key`` when it has them), then, when fit
    returns,

    * ``last.ckpt`` of the final state (when the trainer keeps one), also where ``max_steps`` cut an epoch or the
      last step fell between two ``every_n_train_steps`` checkpoints, so ``resume=true`` continues exactly there;
    * one more evaluation when the final weights were not evaluated (``max_steps`` stopped between evaluations, or a
      resumed run had nothing left to train), unless ``trainer.limit_val_batches`` is 0.

    Checkpoints load with ``weights_only=True``. An exception in fit (a non-finite loss, a crash) propagates without
    either step: the last checkpoint stays the last good one. SIGTERM / SIGINT save ``last.ckpt`` at the step they
    land on and raise :class:`~training.signals.RunInterrupted` (:mod:`training.signals`).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    meta = getattr(module, "checkpoint_meta", dict)()
    ckpt_path = check_resume(resume, output_dir, meta, getattr(module, "weights_key", None))
    if ckpt_path:
        logger.info("resuming from %s", ckpt_path)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning's own handler, before ours is installed (its exit status would be 0)
        raise RunInterrupted(signal.SIGTERM, trainer.global_step, None) from None
    last = _callback(trainer, LastCheckpoint)
    if last is not None:
        trainer.save_checkpoint(os.path.join(last.dirpath, LAST_CHECKPOINT.name), weights_only=False)
    stop = _callback(trainer, StopOnSignal)
    if stop is not None and stop.received:  # a signal after the last point fit could act on it
        path = os.path.join(last.dirpath, LAST_CHECKPOINT.name) if last is not None else None
        raise RunInterrupted(stop.received, trainer.global_step, path)
    evaluated = _callback(trainer, EvaluatedStep)
    if evaluated is not None and evaluated.step != trainer.global_step and trainer.limit_val_batches != 0:
        trainer.validate(module, datamodule=datamodule, verbose=False)


# ---- runs that would succeed with nothing done ----------------------------------------------------------------------
class NoImagesError(RuntimeError):
    """An epoch trained on no image (every image of its batches skipped as unusable), or an evaluation saw none."""


class DataGuard(Callback):
    """Refuses a training epoch (or the part of one before a mid-epoch validation) whose batches held no usable
    image: under a skip policy every image was skipped, so the run would go on training nothing. The task's
    ``training_step`` reports each batch with :func:`count_batch`; the counts are summed over the ranks. The policy's
    key is the module's ``skip_setting``."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]  # images trained, images skipped, batches

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts = [0, 0, 0]

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = torch.tensor(self.counts, device=pl_module.device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        images, skipped, batches = (int(c) for c in counts)
        self.counts = [0, 0, 0]
        if batches and not images:
            setting = getattr(pl_module, "skip_setting", "the skip policy")
            raise NoImagesError(
                f"epoch {trainer.current_epoch} trained on no image: all {skipped} images of its {batches} batches "
                f"were skipped as unusable ({setting}=skip; the warnings above name them). Fix or remove those "
                f"images, or set {setting}=fail to stop at the first one"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)


def count_batch(module: L.LightningModule, images: int, skipped: int) -> None:
    """Report a training batch of ``images`` usable and ``skipped`` unusable images (to :class:`DataGuard`)."""
    guard = _callback(module.trainer, DataGuard)
    if guard is not None:
        guard.counts[0] += int(images)
        guard.counts[1] += int(skipped)
        guard.counts[2] += 1


def empty_batch_loss(module: L.LightningModule) -> torch.Tensor | None:
    """What ``training_step`` returns for a batch without a usable image: None (Lightning skips the step) in one
    process; under DDP a zero loss through every trainable parameter, so this rank takes part in the gradient
    all-reduce (a rank that skipped its backward would leave the others waiting in it)."""
    if module.trainer.world_size == 1:
        return None
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss is NaN or infinite; the message names the step and the last checkpoint."""


def check_finite_loss(
    module: L.LightningModule, loss: torch.Tensor, what: Callable[[], str], details: Callable[[], str]
) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is not finite on any rank (every rank raises together, so none is
    left waiting in the next collective). ``what()`` names the loss in the message, ``details()`` adds the loss terms
    and what to change; both run only then. This step is not checkpointed: the last checkpoint is the last good one."""
    trainer = module.trainer
    bad = not bool(torch.isfinite(loss))
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if bad:
        ckpt = trainer.checkpoint_callback
        last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt is not None else ""
        raise NonFiniteLossError(
            f"non-finite {what()} at step {module.global_step} (epoch {module.current_epoch}). Training stopped; "
            f"last good checkpoint: {last or 'none written yet'}. {details()}"
        )
