"""The only Lightning-aware detection code: :func:`build_trainer` (shared with classification), the detection
LightningModule and DataModule.

``conf/trainer/*.yaml`` hold the hardware and loop settings (accelerator, devices, nodes, strategy, precision,
clipping, schedule length); :func:`build_trainer` turns one of them into a Trainer with TensorBoard + CSV loggers
(rank 0 only, Lightning's loggers write from global rank 0), a checkpoint callback whose files are written to a
temporary name and renamed (:class:`AtomicCheckpointIO`), and a progress bar whose ETA covers the whole run.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
#: keys read by the task modules (not Trainer arguments) or by :func:`build_trainer` itself
MODULE_KEYS = ("channels_last", "compile", "progress_bar", "checkpoint", "loggers")
CHECKPOINT_KEYS = ("every_n_epochs", "every_n_train_steps", "save_last", "save_top_k")
LOGGERS = ("tensorboard", "csv")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to ``<path>.tmp`` then renames it, so a crash never leaves a half-written file.

    Loading uses ``torch.load(weights_only=True)``: a checkpoint holding pickled objects is refused.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r} is not supported by {type(self).__name__}")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


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


def _check_keys(cfg: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    for key in cfg:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown key {where}.{key}{hint}; valid keys: {', '.join(valid)}")


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core, a dependency
        pass
    return dict(cfg)


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
        ValueError: on an unknown key (named, with close matches and the valid keys).
    """
    cfg = _plain(trainer_cfg)
    _check_keys(cfg, TRAINER_ARGS + MODULE_KEYS, "trainer")
    ckpt_cfg = dict(cfg.get("checkpoint") or {})
    _check_keys(ckpt_cfg, CHECKPOINT_KEYS, "trainer.checkpoint")
    loggers_cfg = list(cfg.get("loggers", LOGGERS) or [])
    for name in loggers_cfg:
        if name not in LOGGERS:
            raise ValueError(f"unknown logger {name!r} in trainer.loggers; valid: {', '.join(LOGGERS)}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r} is not valid; use 'max' or 'min'")

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

    every_steps = ckpt_cfg.get("every_n_train_steps")
    checkpoint = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="step{step:07d}" if monitor is None else "best",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_last=ckpt_cfg.get("save_last", True),
        save_top_k=ckpt_cfg.get("save_top_k", 1),
        every_n_epochs=None if every_steps else ckpt_cfg.get("every_n_epochs", 1),
        every_n_train_steps=every_steps,
    )
    cbs: list[Callback] = [checkpoint, *callbacks]
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
