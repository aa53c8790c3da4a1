"""Config helpers shared by every task: one :func:`plain`, the unknown-key check (:func:`check_keys`, the one in
:mod:`backbones.checks`), the checks a run's config gets before any work is spent (:func:`check_run_config`), and
the ``conf/backbone/<name>.yaml`` format: :func:`backbone_conf` writes one from the registry, :func:`backbone_spec`
reads one into ``create_model`` arguments.

Imports no Lightning at import time (the trainer and solver checks import theirs when they run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbones.checks import check_choice, check_keys

from .schema import ConfigError, key, parse

__all__ = [
    "BACKBONE_CONF_INFO",
    "BACKBONE_CONF_KEYS",
    "BACKBONE_CONF_OPTIONS",
    "BackboneConfig",
    "RunKeys",
    "backbone_conf",
    "backbone_config",
    "backbone_spec",
    "check_keys",
    "check_run_config",
    "check_task",
    "plain",
    "write_backbone_confs",
    "write_conf_files",
]


def plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of an OmegaConf node; a mapping becomes a ``dict`` copy; anything else as is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return cfg


def check_task(cfg: Mapping[str, Any], task: str, datasets: Sequence[str] = ()) -> None:
    """A ``task`` run needs a config for that task (its top-level ``task`` key, when present) and a dataset group of
    that task (``dataset.task``). ``datasets`` are examples named in the message.

    Raises:
        ValueError: naming the config's or the dataset's task and what a ``task`` run takes.
    """
    if cfg.get("task", task) != task:
        raise ValueError(
            f"task={cfg['task']!r}: this is the {task} entry point; a {cfg['task']} config belongs to another tool"
        )
    ds = cfg["dataset"]
    if ds.get("task") != task:
        examples = f": dataset={' or dataset='.join(datasets)}" if datasets else ""
        raise ValueError(
            f"dataset={ds.get('name')!r} is a {ds.get('task') or 'untyped'} dataset; a {task} run needs a {task} "
            f"dataset (conf/dataset/*.yaml with task: {task}){examples}"
        )


@dataclass(frozen=True)
class RunKeys:
    """The top-level keys every task's config has (each task's schema extends it with its own)."""

    task: str = ""
    seed: int = key(0, ge=0, le=2**32 - 1, doc="seeds every random generator of the run")
    eval_only: bool = False
    checkpoint: str | None = None
    resume: bool | str | None = None

    def __post_init__(self) -> None:
        if self.eval_only and self.resume not in (None, False, "", "null", "false"):
            raise ConfigError(
                f"resume={self.resume!r} is not valid with eval_only=true: resume continues a training run; to "
                f"evaluate a checkpoint give checkpoint=<file> (and leave resume unset)"
            )


#: the groups every run config has, each with its own schema (the task adds its own)
RUN_GROUPS = ("backbone", "dataset", "solver", "trainer")


def check_run_config(
    cfg: Mapping[str, Any],
    task: str,
    run_schema: type,
    datasets: Sequence[str] = (),
    groups: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Any:
    """The checks every run's composed config gets before any data is read or model built, one
    :mod:`training.schema` schema per part: the task and dataset match (:func:`check_task`), the top-level keys
    (``run_schema``: every key that is no group; an unknown one is named), the ``backbone`` group
    (:class:`BackboneConfig`), the ``solver`` group (:class:`training.optim.Solver`), the ``trainer`` group
    (:class:`training.trainer.TrainerConfig`), then ``groups``: the task's own ``{group: check}`` (its dataset among
    them), each called with that group's node. Returns the parsed top-level keys (a ``run_schema``).

    Raises:
        ConfigError: the first bad key or value, named in full with what would be valid.
    """
    from .optim import Solver
    from .schema import parse
    from .trainer import check_trainer_config

    groups = dict(groups or {})
    check_task(cfg, task, datasets)
    top = {k: v for k, v in cfg.items() if k not in RUN_GROUPS and k not in groups}
    run = parse(run_schema, top, "", unknown_where="config")
    backbone_config(cfg["backbone"])
    Solver.from_config(cfg["solver"])  # before the trainer and the task's groups, which interpolate its keys
    check_trainer_config(cfg["trainer"])
    for group, check in groups.items():  # in the given order: the dataset before groups that interpolate it
        check(cfg[group])
    return run


# ---- conf/backbone ---------------------------------------------------------------------------------------------------
#: keys of a ``conf/backbone/<name>.yaml`` (:func:`backbone_conf`): the card's facts, informational only ...
BACKBONE_CONF_INFO = ("family", "detection_ready", "input_size", "mean", "std")
#: ... and the per-run settings that become ``create_model`` options
BACKBONE_CONF_OPTIONS = ("pretrained", "norm", "frozen_stages", "options")
BACKBONE_CONF_KEYS = ("name", *BACKBONE_CONF_INFO, *BACKBONE_CONF_OPTIONS)
#: ``create_model`` options a run sets from another group, so a backbone config may not set them too
RUN_SET_OPTIONS = {
    "channels_last": "the one layout switch is trainer.channels_last; set that instead",
    "features_only": "the task decides whether the classifier head is built",
    "num_classes": "the dataset's class count sets it",
}


def backbone_conf(name: str) -> str:
    """The ``conf/backbone/<name>.yaml`` text of a registered model: its card's facts plus the per-run options
    (``pretrained``, ``norm``, ``frozen_stages``, ``options`` = extra ``create_model`` keywords) at their defaults."""
    from backbones import model_card

    card = model_card(name)

    def floats(values) -> str:
        return "[" + ", ".join(repr(float(v)) for v in values) + "]"

    return (
        "# Generated by `python tools/model_zoo.py --write-conf` from the registry; edit the model card instead.\n"
        f"name: {name}\n"
        f"family: {card.family}\n"
        f"detection_ready: {str(card.detection_ready).lower()}\n"
        f"input_size: {card.input_size}\n"
        f"mean: {floats(card.mean)}\n"
        f"std: {floats(card.std)}\n"
        "pretrained: false     # true: the card's default published weights (network); a source name (docs/weights.md)"
        " or a file\n"
        "norm: bn              # bn | frozen_bn | sync_bn | gn\n"
        "frozen_stages: -1     # -1 none, 0 stem, k stem + k stages\n"
        "options: {}           # more create_model options: +backbone.options.drop_path_rate=0.1 on the command line\n"
    )


@dataclass(frozen=True)
class BackboneConfig:
    """A ``conf/backbone/<name>.yaml`` group (a :mod:`training.schema` schema). ``family``, ``detection_ready`` and
    ``input_size`` are the model card's facts: a value other than the card's is refused (naming what to set
    instead). ``mean`` / ``std`` are the input normalisation the task uses (the card's by default; an override takes
    effect). The other keys become ``create_model`` options."""

    name: str
    family: str | None = None
    detection_ready: bool | None = None
    input_size: int | None = key(None, ge=1)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = key(None, gt=0)
    pretrained: bool | str | None = None
    norm: str = "bn"
    frozen_stages: int = key(-1, ge=-1, doc="-1 none, 0 stem, k stem + k stages")
    options: dict = key(factory=dict)

    def __post_init__(self) -> None:
        from backbones import NORMS, list_models, model_card

        try:
            check_choice("backbone.name", self.name, list_models())
            check_choice("backbone.norm", self.norm, NORMS)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        card = model_card(self.name)
        instead = {
            "family": f"to train another model use the group: backbone=<name> (conf/backbone/{self.name}.yaml)",
            "detection_ready": "whether its levels suit a detector is the card's fact",
            "input_size": "set the input size of the run instead: dataset.image_size (classification), "
            "dataset.min_size / dataset.max_size (detection)",
        }
        for fact, what in instead.items():
            value, truth = getattr(self, fact), getattr(card, fact)
            if value is not None and value != truth:
                raise ConfigError(
                    f"backbone.{fact}={value!r} is not valid; it is {self.name}'s model card fact ({truth!r}), not a "
                    f"setting: {what}"
                )
        for key_, why in RUN_SET_OPTIONS.items():
            if key_ in self.options:
                raise ConfigError(f"backbone.options.{key_}={self.options[key_]!r} is not valid: {why}")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` of the input: this config's (an override takes effect), else the model card's."""
        from backbones import model_card

        card = model_card(self.name)
        return tuple(self.mean or card.mean), tuple(self.std or card.std)


def backbone_config(conf: Mapping[str, Any] | str) -> BackboneConfig:
    """The checked :class:`BackboneConfig` of a ``conf/backbone/<name>.yaml`` group (a mapping) or a bare model name.

    Raises:
        ConfigError: no ``name``, a key a backbone config does not have (named, with the valid ones), a value of the
            wrong type or range, a card fact changed, or an option that another group sets (``channels_last`` is
            ``trainer.channels_last``).
    """
    if isinstance(conf, str):
        conf = {"name": conf}
    conf = plain(conf)
    if not conf.get("name"):
        raise ConfigError(f"backbone config: no 'name' key; valid keys: {', '.join(BACKBONE_CONF_KEYS)}")
    unknown = [k for k in conf if k not in BACKBONE_CONF_KEYS]
    if unknown:
        raise ConfigError(
            f"backbone config: unknown key(s) {', '.join(f'backbone.{k}' for k in unknown)}; valid keys: "
            f"{', '.join(BACKBONE_CONF_KEYS)} (more create_model options go in backbone.options, e.g. "
            f"+backbone.options.drop_path_rate=0.1)"
        )
    return parse(BackboneConfig, conf, "backbone")


def backbone_spec(conf: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """``(model name, create_model options)`` of a ``conf/backbone/<name>.yaml`` group (checked by
    :func:`backbone_config`) or a bare model name: ``pretrained`` (dropped when false or null), ``norm``,
    ``frozen_stages`` and the ``options`` mapping."""
    if isinstance(conf, str):
        return conf, {}
    given = plain(conf)
    cfg = backbone_config(given)
    options = {k: getattr(cfg, k) for k in ("pretrained", "norm", "frozen_stages") if k in given}
    if options.get("pretrained") in (None, False):
        options.pop("pretrained", None)
    return cfg.name, {**options, **cfg.options}


def write_conf_files(conf_dir: str | os.PathLike, texts: Mapping[str, str]) -> list[str]:
    """Write ``<conf_dir>/<name>.yaml`` for every ``name: text`` (atomically) and delete the other ``*.yaml`` files
    there (stale generated ones); returns the names written."""
    from backbones.atomic import write_text_atomic

    conf_dir = Path(conf_dir)
    for name, text in texts.items():
        write_text_atomic(conf_dir / f"{name}.yaml", text)
    for stale in sorted({p.stem for p in conf_dir.glob("*.yaml")} - set(texts)):
        (conf_dir / f"{stale}.yaml").unlink()
    return list(texts)


def write_backbone_confs(conf_dir: str | os.PathLike) -> list[str]:
    """Write ``<conf_dir>/<name>.yaml`` (:func:`backbone_conf`) for every registered model and delete stale ones;
    returns the names."""
    from backbones import list_models

    return write_conf_files(conf_dir, {name: backbone_conf(name) for name in list_models()})
