"""The only Lightning-aware detection code: :func:`build_trainer` (shared with classification), the detection
LightningModule and DataModule.

``conf/trainer/*.yaml`` hold the hardware and loop settings (accelerator, devices, nodes, strategy, precision,
clipping, schedule length); :func:`build_trainer` turns one of them into a Trainer with TensorBoard + CSV loggers
(rank 0 only, Lightning's loggers write from global rank 0), a checkpoint callback whose files are written to a
temporary name and renamed (:class:`AtomicCheckpointIO`), and a progress bar whose ETA covers the whole run.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

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


def _remove_stale_temporaries(path: str) -> None:
    """Delete ``<path>.tmp<pid>`` files left by writers killed mid-write (no such process runs any more)."""
    import glob

    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp[len(path) + 4 :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info("removing %s, left by a writer that was killed", tmp)
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        except PermissionError:  # a live process of another user
            pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to ``<path>.tmp<pid>``, fsyncs and renames it, so a crash never leaves a half-written
    ``<path>``; a temporary file of a writer killed mid-write is deleted at the next save.

    Loading uses ``torch.load(weights_only=True)``: a checkpoint holding pickled objects is refused.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r} is not supported by {type(self).__name__}")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _remove_stale_temporaries(path)
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
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"checkpoint {path!r} was refused: it holds objects other than tensors and plain containers, which "
                f"could run code when unpickled (loaded with weights_only=True). Only load a checkpoint you trust "
                f"the origin of, after converting it to tensors. torch.load said: {e}"
            ) from e


class ResumableBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler; after :meth:`resume_at` its next iteration runs in the given epoch's order and leaves
    out the first ``skip`` batches (indices only, so the skipped images are never loaded). ``sampler`` is the wrapped
    one's, where Lightning calls ``set_epoch``."""

    def __init__(self, batch_sampler: Any) -> None:
        sampler = getattr(batch_sampler, "sampler", None)
        if not callable(getattr(sampler, "set_epoch", None)):
            raise TypeError(
                f"{type(batch_sampler).__name__}.sampler ({type(sampler).__name__}) has no set_epoch(); a resumable "
                f"loader needs a sampler whose order is a function of the epoch (e.g. DistributedSampler)"
            )
        self.batch_sampler = batch_sampler
        self.sampler = sampler
        self.pending: tuple[int, int] | None = None  # (epoch, batches to skip) for the next iteration

    def resume_at(self, epoch: int, skip: int) -> None:
        self.sampler.set_epoch(epoch)
        self.pending = (epoch, skip)

    def __iter__(self) -> Any:
        # A generator: the resume point is taken when the first batch is drawn, not when iter() is called. A
        # DataLoader with workers calls iter() twice on its batch sampler and draws from the second iterator only,
        # and Lightning may call set_epoch between creating the loader's iterator and drawing from it.
        skip = 0
        if self.pending is not None:
            (epoch, skip), self.pending = self.pending, None
            self.sampler.set_epoch(epoch)
        it = iter(self.batch_sampler)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class ResumableDataLoader(DataLoader):
    """A training loader that a mid-epoch checkpoint resumes at the next batch of the same epoch's order.

    Lightning restores its batch counters from a checkpoint but re-reads the epoch from its first batch, and creates
    the first iterator before it sets the sampler epoch. This loader's ``state_dict`` records the sampler epoch and
    the batches the training loop has taken in it (``batch_progress.current.ready``: it counts the batch being
    trained when a checkpoint is saved on_train_batch_end, and every batch of the epoch at its end; batches the
    prefetching fetcher holds are not counted). ``load_state_dict`` sets the sampler epoch and makes the next
    iteration skip those batches; a finished epoch resumes at the start of the next one. ``len()`` stays the full
    epoch: Lightning counts the skipped batches as fetched. Every rank loads the same state (the sampler shards).

    Lightning calls ``load_state_dict`` itself only when it creates the loader after restoring the checkpoint; a
    module whose ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` makes it create the loader
    (and its iterator) before. :class:`ResumableTrainData` covers both orders.

    Args:
        dataset: map-style dataset.
        batch_sampler: yields lists of indices; its ``sampler`` must have ``set_epoch`` (``DistributedSampler``).
        trainer: the Trainer whose training progress ``state_dict`` reads (None: position 0 of the epoch).
        **kwargs: other ``DataLoader`` arguments (workers, collate_fn, ...).
    """

    def __init__(self, dataset: Any, batch_sampler: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=ResumableBatchSampler(batch_sampler), **kwargs)
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": int(getattr(self.batch_sampler.sampler, "epoch", 0)), "batches_done": 0}
        state.update(epoch_complete=False, num_batches=len(self))
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            done = int(progress.current.ready)
            complete = progress.is_last_batch or done >= self.trainer.num_training_batches
            state.update(batches_done=done, epoch_complete=bool(complete))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Idempotent: loading the same state twice (Lightning's path and :class:`ResumableTrainData`'s) is once."""
        epoch, skip = int(state["epoch"]), int(state["batches_done"])
        if state["epoch_complete"]:
            epoch, skip = epoch + 1, 0
        elif state.get("num_batches", len(self)) != len(self):
            logger.warning(
                "the checkpoint's epoch had %s batches per rank, this run's has %d (batch size, devices or dataset "
                "changed): the rest of epoch %d does not continue the checkpoint's order",
                state.get("num_batches"),
                len(self),
                epoch,
            )
        self.batch_sampler.resume_at(epoch, skip)
        logger.info("train loader resumes at epoch %d, batch %d of %d", epoch, skip, len(self))


class ResumableTrainData:
    """Mixin for a ``LightningDataModule`` whose ``train_dataloader`` returns :meth:`resumable_loader`.

    The train loader's position goes into the checkpoint as the datamodule's state, which Lightning restores before
    it requests any loader, so the loader starts at the checkpoint's position whenever it is created.
    """

    _train_loader: ResumableDataLoader | None = None
    _train_resume: Mapping[str, Any] | None = None

    def resumable_loader(self, dataset: Any, batch_sampler: Any, **kwargs: Any) -> ResumableDataLoader:
        loader = ResumableDataLoader(dataset, batch_sampler, trainer=self.trainer, **kwargs)  # type: ignore[attr-defined]
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._train_resume = state.get("train_loader")


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
    use_root_logging()
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
    devices = cfg.get("devices", 1)
    procs = int(devices) if str(devices).isdigit() else len(devices) if isinstance(devices, list) else 1
    if cfg.get("sync_batchnorm") and cfg.get("accelerator") == "cpu" and procs * int(cfg.get("num_nodes") or 1) > 1:
        raise ValueError(
            "trainer.sync_batchnorm=true turns BatchNorm into torch.nn.SyncBatchNorm, which runs on GPUs only (it "
            "refuses CPU tensors once processes are synchronised); for CPU processes use backbone.norm=frozen_bn or "
            "backbone.norm=gn, or trainer.sync_batchnorm=false"
        )

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
    cbs: list[Callback] = []
    if ckpt_cfg.get("save_last", True):
        # last.ckpt (the resume point and the "last good" state) at every epoch end or every N steps, whatever the
        # metrics. Written as this callback's one "top-k" file: Lightning 2.6 writes a save_last file only at a point
        # where a top-k file was written too, so save_top_k=0 + save_last=True would write it only when fit ends
        cbs.append(
            ModelCheckpoint(
                dirpath=str(out / "checkpoints"),
                filename="last",
                save_top_k=1,
                enable_version_counter=False,
                every_n_epochs=None if every_steps else ckpt_cfg.get("every_n_epochs", 1),
                every_n_train_steps=every_steps,
            )
        )
    # a second callback keeps the best checkpoints by `monitor` after each evaluation
    if monitor is not None and ckpt_cfg.get("save_top_k", 1) != 0:
        cbs.append(
            ModelCheckpoint(
                dirpath=str(out / "checkpoints"),
                filename="best-step{step:07d}",
                auto_insert_metric_name=False,
                monitor=monitor,
                mode=mode,
                save_top_k=ckpt_cfg.get("save_top_k", 1),
            )
        )
    cbs += [EpochProgressRepair(), *callbacks]
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


# ---- detection: data ------------------------------------------------------------------------------------------------
DATASET_KEYS = (
    "name", "task", "root", "train_images", "train_ann", "val_images", "val_ann", "min_size", "max_size",
    "batch_size", "eval_batch_size", "workers", "hflip", "aspect_ratio_group_factor", "on_bad_image",
    "min_box_size", "generate",
)  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss is NaN or infinite; the message names the step and the last checkpoint."""


def check_finite_loss(module: L.LightningModule, loss: torch.Tensor, what: Callable[[], str], details: Callable):
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


class DetectionDataModule(ResumableTrainData, L.LightningDataModule):
    """Train / val COCO-format datasets from a ``dataset`` config group; shards them across ranks itself.

    ``dataset.name == "shapes"`` generates the synthetic set into ``dataset.root`` on first use (``prepare_data``);
    any other name reads ``train_images``/``train_ann``/``val_images``/``val_ann``.
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.cfg = _plain(dataset_cfg)
        _check_keys(self.cfg, DATASET_KEYS, "dataset")
        self.seed = seed
        self.train_set: Any = None
        self.val_set: Any = None

    def _paths(self) -> dict[str, str]:
        cfg = self.cfg
        if cfg["name"] == "shapes":
            from .synthetic import ShapesSpec, default_cache_dir, ensure_shapes

            root = ensure_shapes(cfg.get("root") or default_cache_dir(), ShapesSpec(**(cfg.get("generate") or {})))
            return {
                "train_images": str(root / "train"),
                "train_ann": str(root / "annotations" / "instances_train.json"),
                "val_images": str(root / "val"),
                "val_ann": str(root / "annotations" / "instances_val.json"),
            }
        paths = {k: cfg[k] for k in ("train_images", "train_ann", "val_images", "val_ann")}
        missing = [f"dataset.{k}={v!r}" for k, v in paths.items() if not os.path.exists(v)]
        if missing:  # the four paths decide (they may point outside dataset.root)
            root = cfg.get("root")
            where = f"dataset folder {root!r} does not exist; " if root and not os.path.isdir(root) else ""
            raise FileNotFoundError(
                f"dataset={cfg['name']}: {where}missing {', '.join(missing)}. Set dataset.root=<folder with "
                f"train2017/, val2017/, annotations/> or the four dataset.{{train,val}}_{{images,ann}} paths"
            )
        return paths

    def prepare_data(self) -> None:
        self._paths()

    def _dataset(self, split: str, train: bool) -> Any:
        from .data import CocoDetection, build_transforms

        paths = self._paths()
        cfg = self.cfg
        tf = build_transforms(train, cfg.get("min_size"), cfg.get("max_size"), cfg.get("hflip", 0.5) if train else 0)
        return CocoDetection(
            paths[f"{split}_images"],
            paths[f"{split}_ann"],
            transforms=tf,
            on_bad_image=cfg.get("on_bad_image", "skip"),
            min_box_size=cfg.get("min_box_size", 1.0),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = self._dataset("val", train=False)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train", train=True)
            if self.train_set.label_to_cat != self.val_set.label_to_cat:
                raise ValueError(
                    f"{self.train_set.ann_file} and {self.val_set.ann_file} have different categories; "
                    f"train and val must share one category list"
                )

    @property
    def num_classes(self) -> int:
        self.setup("validate")
        return self.val_set.num_classes

    def _rank(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _loader(self, dataset: Any, loader: Any = DataLoader, **kw: Any) -> DataLoader:
        from .data import collate

        workers = int(self.cfg.get("workers", 2))
        return loader(dataset, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0, **kw)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        from torch.utils.data.distributed import DistributedSampler

        from .data import GroupedBatchSampler, aspect_ratio_groups

        rank, world = self._rank()
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        groups = aspect_ratio_groups(self.train_set, int(self.cfg.get("aspect_ratio_group_factor", 3)))
        batches = GroupedBatchSampler(sampler, groups, int(self.cfg["batch_size"]))
        return self._loader(self.train_set, self.resumable_loader, batch_sampler=batches)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        from .data import ShardSampler

        rank, world = self._rank()
        sampler = ShardSampler(len(self.val_set), rank, world)
        bs = int(self.cfg.get("eval_batch_size") or self.cfg["batch_size"])
        return self._loader(self.val_set, batch_size=bs, sampler=sampler)


# ---- detection: model -----------------------------------------------------------------------------------------------
SOLVER_KEYS = (
    "name", "optimizer", "lr", "momentum", "weight_decay", "norm_weight_decay", "warmup_iters", "warmup_factor",
    "schedule", "milestones", "gamma", "min_lr_factor", "epochs",
)  # fmt: skip


class DetectionModule(L.LightningModule):
    """Trains a detector of :func:`detection.models.build_detector` and scores it with COCO box mAP.

    Args:
        cfg: the composed config (``backbone``, ``detector``, ``solver``, ``trainer`` groups; plain dict).
        num_classes: object classes of the dataset.
        output_dir: where evaluation results are written (rank 0).
    """

    def __init__(self, cfg: Mapping[str, Any], num_classes: int, output_dir: str | None = None) -> None:
        super().__init__()
        from backbones.zoo import backbone_spec

        from .models import build_detector, check_backbone_weights

        cfg = _plain(cfg)
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes, "output_dir": output_dir})
        self.cfg = cfg
        _check_keys(cfg["solver"], SOLVER_KEYS, "solver")
        name, options = backbone_spec(cfg["backbone"])
        check_backbone_weights(options, bool(cfg.get("checkpoint") or cfg.get("resume")))
        self.model = build_detector(name, cfg["detector"], num_classes, **options)
        trainer_cfg = cfg.get("trainer", {})
        if trainer_cfg.get("channels_last"):
            self.model.backbone.to(memory_format=torch.channels_last)
        if trainer_cfg.get("compile"):
            self.model.backbone.body.compile(dynamic=True)
        self.output_dir = output_dir
        self.evaluator: Any = None
        self.eval_backend = cfg.get("eval_backend", "pycocotools")
        self.last_metrics: dict[str, float] = {}
        self.last_eval_step = -1

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        images, targets, skipped = batch
        if skipped:
            self.log("train/skipped_images", float(len(skipped)), on_step=False, on_epoch=True, reduce_fx="sum")
        if not images:
            return None
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        check_finite_loss(
            self,
            loss,
            lambda: "loss",
            lambda: (
                ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + ". Lower solver.lr, raise solver.warmup_iters or set trainer.gradient_clip_val"
            ),
        )
        bs = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=bs)
        return loss

    # -- evaluation --
    def on_validation_epoch_start(self) -> None:
        from .evaluation import CocoEvaluator

        val = self.trainer.datamodule.val_set
        self.evaluator = CocoEvaluator(val.ann_file, val.label_to_cat, self.eval_backend)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets, skipped = batch
        self.evaluator.mark_seen(skipped)
        if images:
            self.evaluator.update(targets, self.model(images))

    def on_validation_epoch_end(self) -> None:
        from .evaluation import evaluate_results, write_json_atomic

        results, image_ids = self.evaluator.gather()
        if not image_ids:
            logger.warning("validation saw no images (trainer.limit_val_batches=0?); nothing to evaluate")
            return
        stats = None
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            stats = evaluate_results(self.evaluator.ann_file, results, image_ids, self.eval_backend)
            if self.output_dir:
                out = Path(self.output_dir) / "eval"
                write_json_atomic(out / f"coco_results_step{self.global_step:07d}.json", results)
                summary = {"step": self.global_step, "epoch": self.current_epoch, "images": len(image_ids), **stats}
                write_json_atomic(out / "metrics.json", summary)
            logger.info("step %d: %s", self.global_step, ", ".join(f"{k}={v:.4f}" for k, v in stats.items()))
        stats = self.trainer.strategy.broadcast(stats, src=0)
        if stats is not None:
            self.last_metrics = stats
            self.last_eval_step = self.global_step
            self.log_dict({f"val/{k}": v for k, v in stats.items() if k != "AP50"})
            self.log("val/AP50", stats["AP50"], prog_bar=True)

    # -- optimisation --
    def configure_optimizers(self) -> dict[str, Any]:
        s = self.cfg["solver"]
        decay, no_decay = [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        nwd = s.get("norm_weight_decay")
        groups = [
            {"params": decay, "weight_decay": s["weight_decay"]},
            {"params": no_decay, "weight_decay": s["weight_decay"] if nwd is None else nwd},
        ]
        if s["optimizer"] == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=s["lr"], momentum=s.get("momentum", 0.9))
        elif s["optimizer"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=s["lr"])
        else:
            raise ValueError(f"solver.optimizer={s['optimizer']!r} is not valid; choose sgd or adamw")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_for(s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_lambda_for(solver: Mapping[str, Any], total_steps: int):
    """LR factor per step: linear warmup from ``warmup_factor`` then ``cosine`` / ``multistep`` / ``constant``."""
    import math

    warmup = int(solver.get("warmup_iters", 0))
    w0 = float(solver.get("warmup_factor", 0.001))
    kind = solver.get("schedule", "cosine")
    floor = float(solver.get("min_lr_factor", 0.0))
    milestones = [int(m * total_steps) if m < 1 else int(m) for m in solver.get("milestones", [])]
    gamma = float(solver.get("gamma", 0.1))
    if kind not in ("cosine", "multistep", "constant"):
        raise ValueError(f"solver.schedule={kind!r} is not valid; choose cosine, multistep or constant")

    def factor(step: int) -> float:
        f = 1.0
        if kind == "cosine":
            t = min(1.0, step / total_steps)
            f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        elif kind == "multistep":
            f = gamma ** sum(step >= m for m in milestones)
        if step < warmup:
            f *= w0 + (1 - w0) * step / warmup
        return f

    return factor


# ---- entry point ----------------------------------------------------------------------------------------------------
def check_task(cfg: Mapping[str, Any], task: str = "detection") -> None:
    """A detection run must get a detection dataset (and a detection-ready backbone), and vice versa."""
    ds = cfg["dataset"]
    if ds.get("task") != task:
        raise ValueError(
            f"dataset={ds.get('name')!r} is a {ds.get('task') or 'untyped'} dataset; a {task} run needs a {task} "
            f"dataset (conf/dataset/*.yaml with task: {task})"
        )


def resolve_resume(resume: Any, output_dir: str) -> str | None:
    """``resume``: null (fresh run), true (``<output_dir>/checkpoints/last.ckpt``), or a checkpoint file / run dir."""
    if resume in (None, False, "", "null", "false"):
        return None
    if resume is True or resume == "true":
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
    else:
        path = Path(str(resume))
        if path.is_dir():
            path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: checkpoint {os.fspath(path)!r} does not exist (resume=true reads "
            f"<run dir>/checkpoints/last.ckpt; pass hydra.run.dir=<the earlier run dir> or resume=<checkpoint file>)"
        )
    return os.fspath(path)


def use_root_logging() -> None:
    """Route Lightning's log records through the root logger only (Hydra's handlers): Lightning adds console
    handlers of its own when imported before logging is configured, and every line would print twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = True


def run(cfg: Mapping[str, Any], output_dir: str | os.PathLike, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train (or with ``eval_only`` evaluate) a detector as the config says; returns the last COCO stats.

    ``callbacks`` are added to the Trainer's (e.g. a recorder in tests).
    """
    cfg = _plain(cfg)
    check_task(cfg)
    if cfg["solver"].get("name") == "shapes" and cfg["dataset"].get("name") != "shapes":
        logger.warning("solver=shapes is the short CPU recipe of the synthetic set; for real data use solver=coco_1x")
    output_dir = os.fspath(output_dir)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    from .models import load_detector_weights

    dm = DetectionDataModule(cfg["dataset"], seed=int(cfg.get("seed", 0)))
    dm.prepare_data()
    dm.setup("validate" if cfg.get("eval_only") else "fit")
    model = DetectionModule(cfg, dm.num_classes, output_dir)
    if cfg.get("checkpoint"):
        load_detector_weights(model.model, cfg["checkpoint"], label_to_cat=dm.val_set.label_to_cat)
    trainer = build_trainer(
        cfg["trainer"], output_dir, monitor="val/AP", mode="max", callbacks=callbacks, use_distributed_sampler=False
    )
    if cfg.get("eval_only"):
        if not cfg.get("checkpoint"):
            raise ValueError("eval_only=true needs checkpoint=<detector weights or a training checkpoint>")
        trainer.validate(model, datamodule=dm)
    else:
        ckpt = resolve_resume(cfg.get("resume"), output_dir)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        if trainer.checkpoint_callback is not None:  # last.ckpt = the final state, also when max_steps cut an epoch
            trainer.save_checkpoint(os.path.join(trainer.checkpoint_callback.dirpath, "last.ckpt"), weights_only=False)
        limit = cfg["trainer"].get("limit_val_batches")
        if model.last_eval_step != trainer.global_step and limit != 0:  # stopped by max_steps between evaluations
            trainer.validate(model, datamodule=dm)
    return model.last_metrics
