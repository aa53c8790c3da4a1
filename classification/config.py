"""The schemas of ``conf/classify.yaml`` (:mod:`training.schema`): its top-level keys, ``recipe`` and ``dataset``,
and :func:`check_config`, every check of a classification config that needs no data or model, run before any work.
Lightning-free: ``classification.module`` runs what is checked here."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import backbones
from training.checkpoint import check_checkpoint, inspect_checkpoint
from training.config import RunKeys, backbone_config, check_run_config, plain
from training.schema import ConfigError, key, parse, prefixed, schema_keys

from .compress import check_compression
from .data import BAD_IMAGE_POLICIES, CLASSIFICATION_DATASETS, eval_transform, train_transform
from .recipes import check_distillation


# ---- the config's schemas (training.schema), checked before any work ----------------------------------------------
@dataclass(frozen=True)
class ClassificationRun(RunKeys):
    """The top-level keys of ``conf/classify.yaml`` (its groups have schemas of their own)."""

    epochs: int | None = key(None, ge=1, doc="null: trainer.max_epochs, else the dataset's epochs, else solver.epochs")
    pretrained: bool | str | None = None
    eval_raw: bool = False
    cpu_threads: int | None = key(1, ge=1, doc="torch threads of a CPU run; null = torch's choice")
    teacher: str | None = key(None, doc="knowledge distillation's teacher (checked by recipes.check_distillation)")
    distill: dict | None = key(None, doc="temperature, weight, teacher_model (recipes.check_distillation)")
    compression: dict | None = key(None, doc="plan: a Deep Compression plan to retrain to (compress.check_compression)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_only and not self.checkpoint and not self.pretrained:
            raise ConfigError(
                "eval_only=true with neither checkpoint nor pretrained would evaluate random weights: set "
                "checkpoint=<a training checkpoint .ckpt> or pretrained=<a weights file or a published source>"
            )
        if self.checkpoint and not self.eval_only:
            raise ConfigError(
                f"checkpoint={self.checkpoint!r} is read by eval_only=true only: to continue that training run use "
                f"resume={self.checkpoint}, to start a new one from its weights pretrained=<a state dict file>"
            )


@dataclass(frozen=True)
class Recipe:
    """A ``conf/recipe/*.yaml``: the loss and regularisation of a paper's recipe (its solver is ``conf/solver``)."""

    name: str = "custom"
    source: str | None = ""
    label_smoothing: float = key(0.0, ge=0, lt=1)
    aux_weight: float = key(0.0, ge=0, doc="weight of the auxiliary head's loss")
    ema_decay: float | None = key(None, ge=0, lt=1, doc="weight EMA; null or 0 = none")
    ema_warmup: bool = True
    cutout: int | None = key(0, ge=0, doc="side of the cutout square; 0 = none")
    model: dict | None = None


_MEAN_STD = {"valid": "three numbers, one per RGB channel", "doc": "null = backbone.mean / backbone.std"}


@dataclass(frozen=True)
class _ClassificationDataset:
    task: str
    name: str
    image_size: int | None = key(None, ge=1)
    mean: tuple[float, float, float] | None = key(None, **_MEAN_STD)
    std: tuple[float, float, float] | None = key(None, gt=0, **_MEAN_STD)
    batch_size: int = key(64, ge=1, doc="images per device")
    val_batch_size: int | None = key(None, ge=1, doc="null = batch_size")
    num_workers: int = key(0, ge=0, doc="loader processes; 0 = in the main process")
    epochs: int | None = key(None, ge=1, doc="this dataset's run length; null = the solver's")


@dataclass(frozen=True)
class DigitsDataset(_ClassificationDataset):
    """``dataset=digits``. ``image_size`` (>= 8) and ``val_fraction`` are checked by the data layer when it builds
    the set (under the keys' full names), the first work of a run (well under a second)."""

    val_fraction: float = 0.2
    split_seed: int = key(0, ge=0)
    shift: int = key(2, ge=0, doc="random translation in pixels")


@dataclass(frozen=True)
class ImageFolderDataset(_ClassificationDataset):
    """``dataset=imagefolder``. ``crop_pct`` and ``interpolation`` are the data layer's checks (its transforms),
    run here under the keys' full names."""

    root: str | None = None
    train_dir: str = "train"
    val_dir: str = "val"
    crop_pct: float | None = None
    scale: tuple[float, float] = key(
        (0.08, 1.0), gt=0, le=1, check=lambda s: s[0] <= s[1], valid="[min, max] area fractions in (0, 1]"
    )
    hflip: float = key(0.5, ge=0, le=1, doc="flip probability")
    interpolation: str = "bilinear"
    bad_images: str = key("fail", choices=BAD_IMAGE_POLICIES)

    def __post_init__(self) -> None:
        if self.root in (None, "", "???"):
            raise ConfigError(
                "dataset.root is not set: dataset=imagefolder needs dataset.root=<folder with train/, val/>"
            )
        with prefixed("dataset"):
            train_transform(8, (0, 0, 0), (1, 1, 1), self.scale, self.hflip, self.interpolation)
            if self.crop_pct is not None:
                eval_transform(8, (0, 0, 0), (1, 1, 1), self.crop_pct, self.interpolation)


DATASET_SCHEMAS = {"digits": DigitsDataset, "imagefolder": ImageFolderDataset}


def check_dataset(dataset_cfg: Mapping[str, Any]) -> _ClassificationDataset:
    """The ``dataset`` group as its checked schema."""
    cfg = plain(dataset_cfg)
    if cfg.get("name") not in DATASET_SCHEMAS:
        raise ConfigError(
            f"dataset.name={cfg.get('name')!r} is not valid; classification runs take "
            f"dataset={' or dataset='.join(CLASSIFICATION_DATASETS)}"
        )
    return parse(DATASET_SCHEMAS[cfg["name"]], cfg, "dataset")


#: keys of a ``conf/recipe/*.yaml`` and top-level keys of conf/classify.yaml (its groups included)
RECIPE_KEYS = schema_keys(Recipe)
TOP_KEYS = ("backbone", "dataset", "trainer", "recipe", "solver", *schema_keys(ClassificationRun))


def check_recipe(recipe: Any) -> Recipe:
    """The ``recipe`` group as a checked :class:`Recipe`."""
    return parse(Recipe, plain(recipe), "recipe")


def check_config(cfg: Mapping[str, Any]) -> ClassificationRun:
    """Every check of a classification config that needs no data or model (before any work is spent): each group's
    schema, and what the file given to ``checkpoint=`` is. Returns the top-level keys."""
    groups = {"dataset": check_dataset, "recipe": check_recipe}
    run = check_run_config(cfg, "classification", ClassificationRun, CLASSIFICATION_DATASETS, groups)
    check_distillation(cfg.get("teacher"), cfg.get("distill"))
    check_compression(cfg.get("compression"), cfg["backbone"])
    if run.checkpoint:
        info = inspect_checkpoint(os.path.expanduser(run.checkpoint), "checkpoint")
        check_checkpoint(info, "checkpoint", _expected(cfg), training=True, weights_key="pretrained")
    return run


def _expected(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": "classification", "backbone": backbone_config(cfg["backbone"]).name}


def _normalization(cfg: Mapping[str, Any], card: backbones.ModelCard) -> backbones.ModelCard:
    """The card the data is built with: its mean/std replaced by ``backbone.mean`` / ``backbone.std`` (the data uses
    ``dataset.mean`` / ``dataset.std`` first; both set to other values than the card's is refused)."""
    mean, std = backbone_config(cfg["backbone"]).normalization()
    for name, value, card_value in (("mean", mean, card.mean), ("std", std, card.std)):
        given = cfg["dataset"].get(name)
        if given is not None and tuple(value) != tuple(card_value) and tuple(given) != tuple(value):
            raise ConfigError(
                f"backbone.{name}={list(value)} and dataset.{name}={list(given)} are both set: give the input "
                f"normalisation once (dataset.{name} wins over backbone.{name} otherwise)"
            )
    return dataclasses.replace(card, mean=tuple(mean), std=tuple(std))
