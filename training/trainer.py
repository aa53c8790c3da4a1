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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from backbones.checks import check_choice, check_keys

from .checkpoint import LAST_CHECKPOINT, AtomicCheckpointIO, resolve_resume
from .config import plain

logger = logging.getLogger(__name__)

#: keys of a ``trainer`` group passed straight to ``lightning.Trainer``
TRAINER_ARGS = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "sync_batchnorm",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "max_epochs",
    "max_steps",
    "val_check_interval",
    "check_val_every_n_epoch",
    "log_every_n_steps",
    "limit_train_batches",
    "limit_val_batches",
    "accumulate_grad_batches",
    "deterministic",
    "benchmark",
    "num_sanity_val_steps",
)
#: keys read by the task modules (``channels_last``, ``compile``: the backbone's layout and compilation) or by
#: :func:`build_trainer` itself
MODULE_KEYS = ("channels_last", "compile", "progress_bar", "checkpoint", "loggers")
CHECKPOINT_KEYS = ("every_n_epochs", "every_n_train_steps", "save_last", "save_top_k")
LOGGERS = ("tensorboard", "csv")


def check_trainer_config(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer`` group as a plain dict, after the checks that need no Trainer: known keys (named with close
    matches), known loggers, and SyncBN refused on CPU processes.

    Raises:
        ValueError: naming the key or value and what would be valid.
    """
    cfg = plain(trainer_cfg)
    check_keys(cfg, TRAINER_ARGS + MODULE_KEYS, "trainer")
    check_keys(cfg.get("checkpoint") or {}, CHECKPOINT_KEYS, "trainer.checkpoint")
    for name in cfg.get("loggers", LOGGERS) or []:
        check_choice("trainer.loggers[]", name, LOGGERS)
    devices = cfg.get("devices", 1)
    procs = int(devices) if str(devices).isdigit() else len(devices) if isinstance(devices, list) else 1
    if cfg.get("sync_batchnorm") and cfg.get("accelerator") == "cpu" and procs * int(cfg.get("num_nodes") or 1) > 1:
        raise ValueError(
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
    cbs += [EpochProgressRepair(), EvaluatedStep(), *callbacks]
    if loggers:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    progress = bool(cfg.get("progress_bar", True))
    if progress:
        cbs.append(RunProgressBar())
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


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    resume: Any = None,
    output_dir: str | os.PathLike = ".",
) -> None:
    """Train as every task does: from the checkpoint ``resume`` names (:func:`~training.checkpoint.resolve_resume`,
    relative to ``output_dir``), then, when fit returns,

    * ``last.ckpt`` of the final state (when the trainer keeps one), also where ``max_steps`` cut an epoch or the
      last step fell between two ``every_n_train_steps`` checkpoints, so ``resume=true`` continues exactly there;
    * one more evaluation when the final weights were not evaluated (``max_steps`` stopped between evaluations, or a
      resumed run had nothing left to train), unless ``trainer.limit_val_batches`` is 0.

    Checkpoints load with ``weights_only=True``. An exception in fit (a non-finite loss, a crash) propagates without
    either step: the last checkpoint stays the last good one.
    """
    ckpt_path = resolve_resume(resume, output_dir)
    if ckpt_path:
        logger.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    last = _callback(trainer, LastCheckpoint)
    if last is not None:
        trainer.save_checkpoint(os.path.join(last.dirpath, LAST_CHECKPOINT.name), weights_only=False)
    evaluated = _callback(trainer, EvaluatedStep)
    if evaluated is not None and evaluated.step != trainer.global_step and trainer.limit_val_batches != 0:
        trainer.validate(module, datamodule=datamodule, verbose=False)


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
