"""The only Lightning-aware classification code: :class:`ClassificationModule`, :class:`ClassificationDataModule`
and :func:`run`, which ``tools/train_cls.py`` calls with the composed Hydra config.

The Trainer, checkpoints, resumable loader, solver (``conf/solver``) and the loop around ``Trainer.fit`` are the shared
runtime of :mod:`training` (the ``trainer`` config group: devices, DDP across GPUs and nodes, mixed precision,
gradient clipping, atomic checkpoints, loggers, progress bar).
Evaluation reports top-1 and top-5 on the val split, with the EMA weights when the recipe keeps an average; every
rank's per-image results are gathered and de-duplicated by dataset index, so each val image counts exactly once
even when a distributed sampler pads the last batch with repeats.

Two options change training: ``teacher=`` distils a trained classifier into the student (:class:`Teacher`, the loss
in :func:`classification.recipes.classification_loss`), and ``compression.plan=`` prunes the weights to a Deep
Compression plan and retrains them with the pruned ones held at zero (:class:`backbones.compression.MaskKeeper`;
the masks are saved in every checkpoint, so a resumed run keeps them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

import backbones
from backbones.atomic import write_json_atomic
from backbones.compression import CompressionPlan, MaskKeeper, prune
from backbones.quantize import top_classes
from training.checkpoint import META_KEY, check_checkpoint, inspect_checkpoint
from training.config import backbone_spec, plain
from training.optim import Solver, configure_optimizers
from training.resumable import ResumableTrainData
from training.schema import ConfigError, prefixed
from training.signals import worker_init
from training.trainer import (
    NoImagesError,
    build_trainer,
    check_finite_loss,
    count_batch,
    empty_batch_loss,
    fit,
    locked_run,
)

from .config import ClassificationRun, _expected, _normalization, check_compression, check_config, check_recipe
from .data import (
    ClassificationData,
    build_datasets,
    collate_skip_bad,
)
from .recipes import ModelEma, Teacher, build_teacher, classification_loss, update_drop_path

logger = logging.getLogger(__name__)


class ClassificationModule(L.LightningModule):
    """A registered backbone trained as a classifier with a recipe (``conf/recipe/*.yaml``) and a solver
    (``conf/solver/*.yaml``).

    Args:
        model_name: a registered model.
        model_options: ``create_model`` options (``pretrained``, ``drop_path_rate``, family knobs, ...).
        num_classes: classifier size (the dataset's class count).
        recipe: label smoothing, aux weight, EMA decay, ... (see :data:`classification.config.RECIPE_KEYS`).
        solver: optimiser and learning-rate schedule (a ``solver`` group, :class:`training.optim.Solver`).
        channels_last: the model's parameters stored channels-last (``create_model(channels_last=...)``).
        compile: wrap the training forward in ``torch.compile`` (the state dict keeps its plain names).
        eval_raw: when EMA is on, also report the raw weights' accuracy as ``val/top1_raw`` / ``val/top5_raw``.

    The input normalisation is the data's (``dataset.mean`` / ``dataset.std``, else ``backbone.mean`` /
    ``backbone.std``: :func:`run` builds the data with them).
        distill: ``temperature``, ``weight`` and the teacher's record (:func:`build_teacher`) when distilling.
        compression: a Deep Compression plan's mapping: the weights (``pretrained`` ones, typically) are pruned to it
            and retrained with the pruned ones held at zero.
        teacher: the :class:`Teacher` (not a hyper-parameter; rebuilt from ``distill`` by :func:`run`).
    """

    #: the config keys the runtime names in its messages: plain weights, and the skip policy of unusable images
    weights_key = "pretrained"
    skip_setting = "dataset.bad_images"

    def __init__(
        self,
        model_name: str,
        model_options: dict[str, Any],
        num_classes: int,
        recipe: dict[str, Any],
        solver: dict[str, Any],
        channels_last: bool = True,
        compile: bool = False,
        eval_raw: bool = False,
        distill: dict[str, Any] | None = None,
        compression: dict[str, Any] | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        check_recipe(recipe)
        self.save_hyperparameters(ignore=["teacher"])
        self.recipe = recipe
        self.solver = Solver.from_config(solver)
        self.model = backbones.create_model(
            model_name, num_classes=num_classes, channels_last=channels_last, **model_options
        )
        if getattr(self.model, "features_only", False):
            raise ValueError("classification needs the classifier head; remove features_only from the backbone options")
        # outside the module tree: not trained, not in DDP's or the checkpoints' parameters
        self.__dict__["teacher"] = teacher
        self.__dict__["keeper"] = (
            MaskKeeper(self.model, prune(self.model, CompressionPlan.from_mapping(compression)))
            if compression
            else None
        )
        ema_decay = recipe.get("ema_decay")
        self.ema = ModelEma(self.model, ema_decay, recipe.get("ema_warmup", True)) if ema_decay else None
        # kept out of the module tree (no duplicate state-dict keys); the compiled wrapper shares self.model's weights
        self.__dict__["_train_forward"] = torch.compile(self.model) if compile else self.model
        self.eval_raw = eval_raw
        self.total_steps = 1
        self._val: dict[str, list[Tensor]] = {}
        self._val_skipped = 0

    # ---- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        batch = self.trainer.datamodule.batch_size if self.trainer.datamodule is not None else 1
        return configure_optimizers(self, self.model, self.solver, batch)  # sets self.total_steps

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        if self.keeper is not None:
            self.keeper.apply()  # exact zeros in every checkpoint, whatever the optimiser did
        if self.ema is not None:
            self.ema.update(self.model)

    # ---- training --------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        x, y, _, skipped = batch
        count_batch(self, len(y), skipped)
        if skipped:
            self.log("train/skipped_images", float(skipped), reduce_fx="sum", on_step=False, on_epoch=True)
        if len(y) == 0:
            return empty_batch_loss(self)
        progress = update_drop_path(self.model, self.global_step, self.total_steps)
        out = self._train_forward(x)
        d = self.hparams.distill or {}
        loss, parts = classification_loss(
            out,
            y,
            float(self.recipe.get("label_smoothing", 0.0)),
            float(self.recipe.get("aux_weight", 0.0)),
            self.teacher(x) if self.teacher is not None else None,
            float(d.get("temperature", 1.0)),
            float(d.get("weight", 0.0)),
        )
        check_finite_loss(
            self,
            loss,
            lambda: f"training loss {loss.item():.4g}",
            lambda: "Lower solver.lr, raise solver.warmup_epochs or set trainer.gradient_clip_val",
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        for part in ("main", "aux") if "aux" in parts else ():
            self.log(f"train/loss_{part}", parts[part], batch_size=len(y))
        for part in ("hard", "soft") if "soft" in parts else ():
            self.log(f"train/loss_{part}", parts[part], batch_size=len(y))
        self.log("train/drop_path_progress", progress, batch_size=len(y))
        return loss

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA copy when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def on_validation_epoch_start(self) -> None:
        self._val = {"index": [], "top1": [], "top5": [], "top1_raw": [], "top5_raw": []}
        self._val_skipped = 0

    @staticmethod
    def _hits(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(logits, tuple | list):
            logits = logits[0]
        top = top_classes(logits, 5)  # (B, min(5, classes)): the ranking the precision figures use too
        return top[:, 0].eq(y), top.eq(y[:, None]).any(1)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, index, skipped = batch
        self._val_skipped += int(skipped)
        if len(y) == 0:
            return
        t1, t5 = self._hits(self.eval_model()(x), y)
        self._val["index"].append(index)
        self._val["top1"].append(t1)
        self._val["top5"].append(t5)
        if self.ema is not None and self.eval_raw:
            r1, r5 = self._hits(self.model(x), y)
            self._val["top1_raw"].append(r1)
            self._val["top5_raw"].append(r5)

    def _gather(self, t: Tensor) -> Tensor:
        """Concatenate a 1-D tensor of possibly different length from every rank."""
        if self.trainer.world_size == 1:
            return t
        n = torch.tensor([t.numel()], device=t.device)
        sizes = self.all_gather(n).reshape(-1)
        width = int(sizes.max())
        padded = torch.zeros(width, dtype=t.dtype, device=t.device)
        padded[: t.numel()] = t
        allv = self.all_gather(padded).reshape(-1, width)
        return torch.cat([allv[r, : int(sizes[r])] for r in range(len(sizes))])

    def on_validation_epoch_end(self) -> None:
        dev = self.device
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        index = self._gather(torch.cat(self._val["index"]).to(dev) if self._val["index"] else empty)
        keep = first_occurrence(index)  # one result per val image: a distributed sampler pads with repeats
        metrics: dict[str, float] = {}
        keys = ["top1", "top5"] + (["top1_raw", "top5_raw"] if self.ema is not None and self.eval_raw else [])
        for name in keys:  # the same keys on every rank (collectives), even one that saw no batch
            hits = self._gather(torch.cat(self._val[name]).to(dev, torch.long) if self._val[name] else empty)[keep]
            metrics[name] = 100.0 * hits.float().mean().item() if len(hits) else 0.0
        metrics["images"] = float(len(keep))
        if not len(keep):
            skipped = torch.tensor(self._val_skipped, device=dev)
            skipped = (
                int(self.trainer.strategy.reduce(skipped, reduce_op="sum"))
                if self.trainer.world_size > 1
                else int(skipped)
            )
            what = (
                f"all {skipped} val images were skipped as unusable ({self.skip_setting}=skip; the warnings above "
                f"name them)"
                if skipped
                else f"it covered no val image (trainer.limit_val_batches={self.trainer.limit_val_batches})"
            )
            raise NoImagesError(f"validation saw no image: {what}; metrics over no image would mean nothing")
        for name, v in metrics.items():
            self.log(f"val/{name}", v, prog_bar=name == "top1", rank_zero_only=False, sync_dist=False)

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.teacher is not None:  # outside the tree, so moved here: the student's device and (true-half) dtype
            self.teacher.to(self.device, next(self.model.parameters()).dtype)

    def checkpoint_meta(self) -> dict[str, Any]:
        """What this run trains, written into each checkpoint and compared on resume."""
        return {"task": "classification", "backbone": self.hparams.model_name, "num_classes": self.hparams.num_classes}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.checkpoint_meta()
        if self.keeper is not None:
            masks = {k: m.cpu() for k, m in self.keeper.masks.items()}
            checkpoint["compression"] = {"plan": self.hparams.compression.get("name"), "masks": masks}

    def _check_resumed_setup(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run trains as the checkpoint's did: the same teacher (by its file's hash) and soft-target loss,
        and the same pruning masks (the checkpoint's replace any recomputed ones)."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("distill") or {}
        now = self.hparams.distill or {}

        def key(d: dict) -> tuple:
            return (d.get("teacher_sha256") or d.get("teacher"), d.get("temperature"), d.get("weight")) if d else ()

        if key(saved) != key(now):
            raise ValueError(
                f"the checkpoint was trained with teacher={saved.get('teacher')!r} (T={saved.get('temperature')}, "
                f"weight={saved.get('weight')}, sha256 {saved.get('teacher_sha256')}), this run has "
                f"teacher={now.get('teacher')!r} (T={now.get('temperature')}, weight={now.get('weight')}, sha256 "
                f"{now.get('teacher_sha256')}); resume with the same teacher file and distill values"
            )
        masks = (checkpoint.get("compression") or {}).get("masks")
        if (masks is None) != (self.keeper is None):
            raise ValueError(
                "the checkpoint was retrained with compression masks; resume with the same compression.plan=..."
                if masks is not None
                else "compression.plan is set but the checkpoint holds no masks: resume continues a run; to prune a "
                "trained model, pass its weights as pretrained=<checkpoint> in a new run"
            )
        if masks is not None:
            if set(masks) != set(self.keeper.masks):
                raise ValueError("the checkpoint's compression masks cover other weights than compression.plan's")
            self.keeper.masks.update(masks)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.trainer.state.fn == "fit":
            self._check_resumed_setup(checkpoint)
        keys = checkpoint.get("state_dict", {})
        trained = (checkpoint.get("hyper_parameters") or {}).get("model_name")
        if trained and trained != self.hparams.model_name:
            own = self.state_dict()
            missing = sorted(k for k in own if k not in keys and not k.startswith("ema."))
            unexpected = sorted(k for k in keys if k not in own and not k.startswith("ema."))
            raise backbones.CheckpointMismatchError(
                f"the checkpoint was trained with backbone={trained}, this run builds backbone="
                f"{self.hparams.model_name}; {len(missing)} missing keys (e.g. {', '.join(missing[:3])}), "
                f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])}). Use backbone={trained}"
            )
        has_ema = any(k.startswith("ema.") for k in keys)
        if has_ema and self.ema is None:
            raise ValueError(
                "the checkpoint holds EMA weights but this run's recipe has no ema_decay; use the recipe it was "
                "trained with, or recipe.ema_decay=<decay>"
            )
        if self.ema is not None and not has_ema:  # e.g. fine-tuning from a run without EMA: start the average there
            logger.warning("checkpoint has no EMA weights; the average starts from the loaded weights")
            for k in [k for k in keys if k.startswith("model.")]:
                keys["ema.module." + k.removeprefix("model.")] = keys[k]
            keys["ema.num_updates"] = torch.zeros((), dtype=torch.long)


def first_occurrence(index: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of ``index`` (1-D), in increasing value order."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]


class ClassificationDataModule(ResumableTrainData, L.LightningDataModule):
    """Loaders over :func:`classification.data.build_datasets`; the datasets are built once, on first use.

    The loaders shard across ranks themselves (the Trainer gets ``use_distributed_sampler=False``): training
    through a seeded ``DistributedSampler`` in a :class:`training.resumable.ResumableDataLoader`, so a mid-epoch
    checkpoint resumes at the next batch of the same order; evaluation through an unshuffled one, whose padding
    repeats evaluation drops.
    """

    def __init__(
        self,
        dataset_cfg: dict[str, Any],
        card: backbones.ModelCard,
        cutout: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset_cfg = dict(dataset_cfg)
        self.card = card
        self.cutout = cutout
        self.seed = seed
        self.batch_size = int(self.dataset_cfg.get("batch_size", 64))
        self.val_batch_size = int(self.dataset_cfg.get("val_batch_size") or self.batch_size)
        self.num_workers = int(self.dataset_cfg.get("num_workers", 0))
        self._data: ClassificationData | None = None

    @property
    def data(self) -> ClassificationData:
        if self._data is None:
            self._data = build_datasets(self.dataset_cfg, self.card, cutout=self.cutout)
        return self._data

    def _sampler(self, ds, shuffle: bool) -> DistributedSampler:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)

    def _loader_args(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": collate_skip_bad,
            "worker_init_fn": worker_init(self.trainer.global_rank if self.trainer else 0)
            if self.num_workers
            else None,
        }

    def train_dataloader(self) -> DataLoader:
        ds = self.data.train
        batches = BatchSampler(self._sampler(ds, True), self.batch_size, drop_last=len(ds) > self.batch_size)
        return self.resumable_loader(ds, batches, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        ds = self.data.val
        return DataLoader(ds, self.val_batch_size, sampler=self._sampler(ds, False), **self._loader_args())


# ---- the run ---------------------------------------------------------------------------------------------------------
def run(cfg: Any, output_dir: str | os.PathLike, **trainer_overrides: Any) -> dict[str, float]:
    """Train (or, with ``eval_only``, evaluate) as the composed ``conf/classify.yaml`` says; returns val metrics.

    The whole config is checked first (:func:`check_config`), then the run dir is locked (:mod:`training.lock`) and
    a ``resume`` checkpoint checked, before any data is read. ``trainer_overrides`` go to ``build_trainer`` (tests
    pass e.g. ``logger=False`` or ``callbacks``).
    """
    c = plain(cfg)
    run_keys = check_config(c)
    output_dir = os.fspath(output_dir)
    expect = _expected(c)
    return locked_run(
        output_dir,
        run_keys,
        expect,
        ClassificationModule.weights_key,
        lambda: _run(c, run_keys, output_dir, trainer_overrides),
    )


def _run(c: dict[str, Any], run_keys: ClassificationRun, output_dir: str, trainer_overrides: dict) -> dict[str, float]:
    plan = check_compression(c.get("compression"), c["backbone"])
    recipe, solver = dict(c["recipe"]), dict(c["solver"])
    dataset_cfg = dict(c["dataset"])
    trainer_cfg = dict(c["trainer"])
    name, options = backbone_spec(c["backbone"])
    options.update(recipe.get("model") or {})
    if run_keys.pretrained:
        options["pretrained"] = run_keys.pretrained
    card = _normalization(c, backbones.model_card(name))
    if run_keys.cpu_threads and trainer_cfg.get("accelerator") == "cpu":
        torch.set_num_threads(run_keys.cpu_threads)
    L.seed_everything(run_keys.seed, workers=True, verbose=False)

    if solver.get("name") == "sgd_digits" and dataset_cfg.get("name") != "digits":
        logger.warning(
            "solver=sgd_digits is the short CPU demo solver; for ImageNet-scale data use the papers' "
            "recipes (recipe=sgd_imagenet, rmsprop_mobilenet, nasnet_imagenet, nasnet_cifar)"
        )
    dm = ClassificationDataModule(dataset_cfg, card, cutout=int(recipe.get("cutout") or 0), seed=run_keys.seed)
    with prefixed("dataset"):  # the data layer's messages under the config's key names
        data = dm.data  # fails early, with a clear message, on a bad dataset
    if "input_size" in backbones.builder_options(name) and "input_size" not in options:
        options["input_size"] = data.image_size  # design resolution (sizes e.g. NASNet's aux head) = training one
    channels_last = bool(trainer_cfg.get("channels_last", True))
    teacher, distill = None, None
    if c.get("teacher") and not c.get("eval_only"):
        fixed = dataset_cfg.get("mean") is not None or dataset_cfg.get("std") is not None  # the same for both
        d = dict(c.get("distill") or {})
        with torch.random.fork_rng(devices=[]):  # the student starts from the same weights with or without a teacher
            teacher, distill = build_teacher(
                c["teacher"], d, data.num_classes, None if fixed else (data.mean, data.std), channels_last=channels_last
            )
    module = ClassificationModule(
        name,
        options,
        data.num_classes,
        recipe,
        solver,
        channels_last=channels_last,
        compile=bool(trainer_cfg.get("compile", False)),
        eval_raw=run_keys.eval_raw,
        distill=distill,
        compression=plan,
        teacher=teacher,
    )
    # run length: `epochs`, else trainer.max_epochs, else the dataset's (digits: short), else the solver's (paper's)
    lengths = (run_keys.epochs, trainer_cfg.get("max_epochs"), dataset_cfg.get("epochs"), solver.get("epochs"))
    epochs = next((e for e in lengths if e is not None), None)
    if epochs is None and trainer_cfg.get("max_steps", -1) == -1:
        raise ConfigError("no run length: set epochs=<N> (or trainer.max_epochs, dataset.epochs, solver.epochs)")
    overrides: dict[str, Any] = {"max_epochs": -1 if epochs is None else epochs, "use_distributed_sampler": False}
    overrides.update(trainer_overrides)
    trainer = build_trainer(trainer_cfg, output_dir, monitor="val/top1", mode="max", **overrides)

    if run_keys.eval_only:
        ckpt = os.path.expanduser(run_keys.checkpoint) if run_keys.checkpoint else None
        if ckpt:  # now with the class count of this run's data
            info = inspect_checkpoint(ckpt, "checkpoint")
            check_checkpoint(info, "checkpoint", module.checkpoint_meta(), training=True, weights_key="pretrained")
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)
    else:
        fit(trainer, module, dm, run_keys.resume, output_dir)
    metrics = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["epochs_done"] = float(trainer.current_epoch)
    metrics["global_step"] = float(trainer.global_step)
    if trainer.is_global_zero:
        summary = {"model": name, "dataset": dataset_cfg.get("name"), "seed": run_keys.seed, **metrics}
        if distill:
            summary["teacher"] = {k: distill.get(k) for k in ("teacher", "teacher_model", "temperature", "weight")}
        write_json_atomic(Path(output_dir) / "results.json", summary)
        logger.info(
            "val top-1 %.2f%%  top-5 %.2f%%  (%d images)",
            metrics.get("top1", float("nan")),
            metrics.get("top5", float("nan")),
            int(metrics.get("images", 0)),
        )
    return metrics
