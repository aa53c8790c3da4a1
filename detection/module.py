"""The only Lightning-aware detection code: the detection LightningModule, its DataModule and :func:`run`, which
``tools/train_net.py`` calls with the composed Hydra config.

The Trainer, checkpoints, resumable loader, solver and the loop around ``Trainer.fit`` are the shared runtime of
:mod:`training`; this file adds what is detection's own: COCO-format data sharded across ranks and COCO box mAP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from detection.synthetic import ShapesSpec
from training.checkpoint import META_KEY, check_checkpoint, inspect_checkpoint
from training.config import RunKeys, backbone_config, backbone_spec, check_run_config, plain
from training.optim import Solver, configure_optimizers
from training.resumable import ResumableTrainData
from training.schema import ConfigError, check_field, key, parse, prefixed, schema_keys
from training.signals import worker_init
from training.trainer import (
    NoImagesError,
    NonFiniteLossError,
    build_trainer,
    check_finite_loss,
    count_batch,
    empty_batch_loss,
    fit,
    locked_run,
)

from .evaluation import BACKENDS

logger = logging.getLogger(__name__)

__all__ = ["DATASET_KEYS", "TOP_KEYS", "DetectionDataModule", "DetectionModule", "NonFiniteLossError", "run"]

#: examples of detection datasets named in the message for a wrong one
DATASETS = ("shapes", "coco")


# ---- the config's schemas (training.schema), checked before any work ----------------------------------------------
@dataclass(frozen=True)
class DetectionRun(RunKeys):
    """The top-level keys of ``conf/detect.yaml`` (its groups have schemas of their own)."""

    eval_backend: str = key("pycocotools", choices=BACKENDS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_only and not self.checkpoint:
            raise ConfigError("eval_only=true needs checkpoint=<detector weights or a training checkpoint>")


@dataclass(frozen=True)
class DetectionDataset:
    """A detection ``dataset`` group (``conf/dataset/{shapes,coco}.yaml``). The ranges of ``min_size``,
    ``max_size``, ``hflip``, ``on_bad_image`` and ``min_box_size`` are the data layer's own checks
    (``detection.data.build_transforms``, ``detection.data.check_options``), run here under the keys' full names."""

    name: str
    task: str
    root: str | None = None
    train_images: str | None = None
    train_ann: str | None = None
    val_images: str | None = None
    val_ann: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int = key(2, ge=1, doc="images per device")
    eval_batch_size: int | None = key(None, ge=1, doc="images per device; null = batch_size")
    workers: int = key(2, ge=0, doc="loader processes; 0 = in the main process")
    hflip: float = 0.5
    aspect_ratio_group_factor: int = key(3, ge=0, doc="0 = one aspect-ratio group")
    on_bad_image: str = "skip"
    min_box_size: float = 1.0
    generate: ShapesSpec | None = None

    def __post_init__(self) -> None:
        from .data import build_transforms, check_options

        with prefixed("dataset"):
            build_transforms(True, self.min_size, self.max_size, self.hflip)
            check_options(self.on_bad_image, self.min_box_size)


#: top-level keys of conf/detect.yaml (its groups included) and keys of a detection dataset group
TOP_KEYS = ("backbone", "detector", "solver", "trainer", "dataset", *schema_keys(DetectionRun))
DATASET_KEYS = schema_keys(DetectionDataset)


def _option_type(default: Any) -> Any:
    """The schema type of a detector option, from its default in ``DETECTORS``: a list of ints stays one of ints."""
    if isinstance(default, list):
        return list[_option_type(default[0])] if default else list
    return float if isinstance(default, float) else type(default)


_SIZES_VALID = "a list of integers > 0, one per map, or of lists of them (several sizes per map), e.g. [[16, 23], [32]]"


def _positive_sizes(sizes: list[Any]) -> bool:
    return all(all(x > 0 for x in s) if isinstance(s, list) else s > 0 for s in sizes)


def check_detector(detector_cfg: Mapping[str, Any] | str) -> dict[str, Any]:
    """The ``detector`` group: the detector's name, keys and levels (``detection.models.resolve_config``), then every
    option's type, derived from its default in ``DETECTORS``, and range: ``*_thresh`` in [0, 1], ``min_ratio`` /
    ``max_ratio`` and ``*_fraction`` in (0, 1], ``sampling_ratio`` and ``box_loss_beta`` >= 0 (0: adaptive, L1),
    a string one of :data:`detection.models.OPTION_CHOICES`, every other number (list items too) > 0."""
    from .models import DETECTORS, OPTION_CHOICES, resolve_config

    resolved = resolve_config(detector_cfg)
    defaults = DETECTORS[resolved["name"]]
    for name, value in plain(detector_cfg if isinstance(detector_cfg, Mapping) else {}).items():
        if name == "name":
            continue
        rule = {"ge": 0, "le": 1} if name.endswith("_thresh") else {}
        rule = {"gt": 0, "le": 1} if name.endswith(("_ratio", "_fraction")) else rule
        rule = {"ge": 0} if name in ("sampling_ratio", "box_loss_beta") else rule or {"gt": 0}
        rule = {"choices": OPTION_CHOICES[name]} if name in OPTION_CHOICES else rule
        tp = _option_type(defaults[name])
        if name == "anchor_sizes" and tp == list[int]:  # one size per map, or a list of sizes per map
            tp, rule = list[int | list[int]], {"check": _positive_sizes, "valid": _SIZES_VALID}
        resolved[name] = check_field(f"detector.{name}", value, tp, key(**rule).metadata)
    return resolved


def check_dataset(dataset_cfg: Mapping[str, Any]) -> DetectionDataset:
    """The ``dataset`` group as a checked :class:`DetectionDataset`."""
    return parse(DetectionDataset, plain(dataset_cfg), "dataset")


# ---- data ------------------------------------------------------------------------------------------------------------
class DetectionDataModule(ResumableTrainData, L.LightningDataModule):
    """Train / val COCO-format datasets from a ``dataset`` config group; shards them across ranks itself.

    ``dataset.name == "shapes"`` generates the synthetic set into ``dataset.root`` on first use (``prepare_data``);
    any other name reads ``train_images``/``train_ann``/``val_images``/``val_ann``.
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.cfg = plain(dataset_cfg)
        check_dataset(self.cfg)
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
        init = worker_init(self._rank()[0]) if workers > 0 else None
        return loader(dataset, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0,
                      worker_init_fn=init, **kw)  # fmt: skip

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


# ---- model -----------------------------------------------------------------------------------------------------------
class DetectionModule(L.LightningModule):
    """Trains a detector of :func:`detection.models.build_detector` and scores it with COCO box mAP.

    Args:
        cfg: the composed config (``backbone``, ``detector``, ``solver``, ``trainer`` groups; plain dict).
        num_classes: object classes of the dataset.
        output_dir: where evaluation results are written (rank 0).

    The input normalisation is ``backbone.mean`` / ``backbone.std`` (the card's values unless overridden), set as
    torchvision's ``transform.image_mean`` / ``image_std``.
    """

    #: the config keys the runtime names in its messages: plain weights, and the skip policy of unusable images
    weights_key = "checkpoint"
    skip_setting = "dataset.on_bad_image"

    def __init__(self, cfg: Mapping[str, Any], num_classes: int, output_dir: str | None = None) -> None:
        super().__init__()
        from .models import build_detector, check_backbone_weights

        cfg = plain(cfg)
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes, "output_dir": output_dir})
        self.cfg = cfg
        self.solver = Solver.from_config(cfg["solver"])
        name, options = backbone_spec(cfg["backbone"])
        check_backbone_weights(options, bool(cfg.get("checkpoint") or cfg.get("resume")))
        trainer_cfg = cfg.get("trainer", {})
        options["channels_last"] = bool(trainer_cfg.get("channels_last", True))  # the backbone's layout
        self.model = build_detector(name, cfg["detector"], num_classes, **options)
        mean, std = backbone_config(cfg["backbone"]).normalization()
        self.model.transform.image_mean, self.model.transform.image_std = list(mean), list(std)
        self.meta = {"task": "detection", "backbone": name, "detector": cfg["detector"]["name"],
                     "num_classes": num_classes}  # fmt: skip
        if trainer_cfg.get("compile"):
            self.model.backbone.body.compile(dynamic=True)
        self.output_dir = output_dir
        self.evaluator: Any = None
        self.eval_backend = cfg.get("eval_backend", "pycocotools")
        self.last_metrics: dict[str, float] = {}
        self.total_steps = 1

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        images, targets, skipped = batch
        count_batch(self, len(images), len(skipped))
        if skipped:
            self.log("train/skipped_images", float(len(skipped)), on_step=False, on_epoch=True, reduce_fx="sum")
        if not images:
            return empty_batch_loss(self)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        check_finite_loss(
            self,
            loss,
            lambda: "loss",
            lambda: (
                ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + ". Lower solver.lr, raise solver.warmup_steps or set trainer.gradient_clip_val"
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
        from backbones.atomic import write_json_atomic

        from .evaluation import evaluate_results

        results, image_ids = self.evaluator.gather()
        if not self.evaluator.decoded:
            what = (
                f"all {len(image_ids)} val images it covered were skipped as unusable ({self.skip_setting}=skip; "
                f"the warnings above name them)"
                if image_ids
                else f"it covered no val image (trainer.limit_val_batches={self.trainer.limit_val_batches})"
            )
            raise NoImagesError(f"validation saw no image: {what}; metrics over no image would mean nothing")
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
            self.log_dict({f"val/{k}": v for k, v in stats.items() if k != "AP50"})
            self.log("val/AP50", stats["AP50"], prog_bar=True)

    # -- checkpoints --
    def checkpoint_meta(self) -> dict[str, Any]:
        """What this run trains, written into each checkpoint and compared on resume."""
        return dict(self.meta)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.checkpoint_meta()

    # -- optimisation --
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.model, self.solver, int(self.trainer.datamodule.cfg["batch_size"]))


# ---- entry point -----------------------------------------------------------------------------------------------------
def check_config(cfg: Mapping[str, Any]) -> DetectionRun:
    """Every check of a detection config that needs no data or model (before any work is spent): each group's
    schema, and what the file given to ``checkpoint=`` is (refused unless detector weights or a detection
    checkpoint of this backbone and detector). Returns the top-level keys."""
    run = check_run_config(
        cfg, "detection", DetectionRun, DATASETS, {"dataset": check_dataset, "detector": check_detector}
    )
    if run.checkpoint:
        info = inspect_checkpoint(os.path.expanduser(run.checkpoint), "checkpoint")
        check_checkpoint(info, "checkpoint", _expected(cfg))
    return run


def _expected(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": "detection", "backbone": backbone_config(cfg["backbone"]).name, "detector": cfg["detector"]["name"]}


def run(cfg: Mapping[str, Any], output_dir: str | os.PathLike, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train (or with ``eval_only`` evaluate) a detector as the config says; returns the last COCO stats.

    The whole config is checked first (:func:`check_config`), then the run dir is locked (:mod:`training.lock`) and
    a ``resume`` checkpoint checked, before any data is read. ``callbacks`` are added to the Trainer's (e.g. a
    recorder in tests).
    """
    cfg = plain(cfg)
    run_keys = check_config(cfg)
    output_dir = os.fspath(output_dir)
    expect = _expected(cfg)
    return locked_run(
        output_dir, run_keys, expect, DetectionModule.weights_key, lambda: _run(cfg, run_keys, output_dir, callbacks)
    )


def _run(
    cfg: dict[str, Any], run_keys: DetectionRun, output_dir: str, callbacks: Sequence[Callback]
) -> dict[str, float]:
    if cfg["solver"].get("name") == "shapes" and cfg["dataset"].get("name") != "shapes":
        logger.warning("solver=shapes is the short CPU recipe of the synthetic set; for real data use solver=coco_1x")
    L.seed_everything(run_keys.seed, workers=True)
    from .models import load_detector_weights

    dm = DetectionDataModule(cfg["dataset"], seed=run_keys.seed)
    with prefixed("dataset"):  # the data layer's messages under the config's key names
        dm.prepare_data()
        dm.setup("validate" if run_keys.eval_only else "fit")
    model = DetectionModule(cfg, dm.num_classes, output_dir)
    if run_keys.checkpoint:
        load_detector_weights(
            model.model, os.path.expanduser(run_keys.checkpoint), label_to_cat=dm.val_set.label_to_cat
        )
    trainer = build_trainer(
        cfg["trainer"], output_dir, monitor="val/AP", mode="max", callbacks=callbacks, use_distributed_sampler=False
    )
    if run_keys.eval_only:
        trainer.validate(model, datamodule=dm)
    else:
        fit(trainer, model, dm, run_keys.resume, output_dir)
    return model.last_metrics
