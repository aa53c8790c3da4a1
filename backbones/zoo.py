"""The model zoo table: every registered model measured on its own module against its card's reference figures.

Models are built on the ``meta`` device, so counting parameters and mult-adds of the whole zoo allocates nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .profile import count_macs, count_params
from .registry import list_models, model_card


@dataclass(frozen=True)
class ZooRow:
    name: str
    family: str
    input_size: int
    params: int
    macs: int
    ref_params: int
    ref_macs: int | None
    paper_params: float | None
    paper_macs: float | None
    top1: float | None
    levels: str
    twins: str
    table: str
    reference_padding: bool = False

    @property
    def params_dev(self) -> float:
        return (self.params - self.ref_params) / self.ref_params

    @property
    def macs_dev(self) -> float | None:
        return None if not self.ref_macs else (self.macs - self.ref_macs) / self.ref_macs


@functools.cache  # a registered name never changes its builder or card; the table and the plot share the counts
def zoo_row(name: str) -> ZooRow:
    from . import create_model

    card = model_card(name)
    # count on the padding the reference figures were counted on (the default pads some stems for exact levels)
    padding = {"reference_padding": True} if card.macs_reference_padding else {}
    with torch.device("meta"):
        model = create_model(name, num_classes=card.num_classes, **padding)
    params = count_params(model)
    macs = count_macs(model, card.input_size)
    levels = " ".join(f"{f.name}:{f.channels}/{f.stride}" for f in model.feature_info)
    twins = ", ".join(f"{lib}:{n}" for lib, n in card.twins.items())
    return ZooRow(
        name,
        card.family,
        card.input_size,
        params,
        macs,
        card.params,
        card.macs,
        card.paper_params,
        card.paper_macs,
        card.top1,
        levels,
        twins,
        card.table,
        card.macs_reference_padding,
    )


def zoo_rows(pattern: str = "*") -> list[ZooRow]:
    return [zoo_row(n) for n in list_models(pattern)]


def _fmt_paper(value: float | None, scale: float, unit: str) -> str:
    return "" if value is None else f"{value / scale:.4g}{unit}"


def markdown_table(rows: list[ZooRow]) -> str:
    """The zoo as a Markdown table (what the README shows)."""
    head = (
        "| model | input | params (M) | mult-adds (G) | reference params / MACs | dev. params / MACs | paper | top-1 "
        "| levels name:channels/stride | twins |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        ref = f"{r.ref_params / 1e6:.3f} M / " + ("–" if r.ref_macs is None else f"{r.ref_macs / 1e9:.3f} G")
        dev = f"{100 * r.params_dev:+.2f}% / " + ("–" if r.macs_dev is None else f"{100 * r.macs_dev:+.2f}%")
        paper = " / ".join(s for s in (_fmt_paper(r.paper_params, 1e6, " M"), _fmt_paper(r.paper_macs, 1e9, " G")) if s)
        top1 = "" if r.top1 is None else f"{r.top1:.1f}"
        mark = "†" if r.reference_padding else ""
        lines.append(
            f"| `{r.name}` | {r.input_size} | {r.params / 1e6:.3f} | {r.macs / 1e9:.3f}{mark}"
            f" | {ref} | {dev} | {paper} "
            f"| {top1} | {r.levels} | {r.twins} |"
        )
    if any(r.reference_padding for r in rows):
        lines.append("\n† counted with `reference_padding=True`, the padding the reference figure was counted on.")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, start: str = "<!-- zoo:start -->", end: str = "<!-- zoo:end -->"):
    """``text`` with everything between the two marker lines replaced by ``table``."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {start!r} ... {end!r} not found in order")
    return text[: i + len(start)] + "\n" + table + "\n" + text[j:]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``<path>.tmp<pid>``, fsync it and rename it onto ``path``: a reader (or a test
    that compares a generated file with its source) never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def backbone_conf(name: str) -> str:
    """The ``conf/backbone/<name>.yaml`` text of a registered model: its card's facts plus the per-run options
    (``pretrained``, ``norm``, ``frozen_stages``, ``options`` = extra ``create_model`` keywords) at their defaults."""
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
        "pretrained: false     # true: the timm/torchvision twin's weights (network); or a path to a state dict\n"
        "norm: bn              # bn | frozen_bn | sync_bn | gn\n"
        "frozen_stages: -1     # -1 none, 0 stem, k stem + k stages\n"
        "options: {}           # more create_model options: +backbone.options.drop_path_rate=0.1 on the command line\n"
    )


#: keys of a ``conf/backbone/<name>.yaml`` (:func:`backbone_conf`): the card's facts, informational only ...
BACKBONE_CONF_INFO = ("family", "detection_ready", "input_size", "mean", "std")
#: ... and the per-run settings that become ``create_model`` options
BACKBONE_CONF_OPTIONS = ("pretrained", "norm", "frozen_stages", "options")
BACKBONE_CONF_KEYS = ("name", *BACKBONE_CONF_INFO, *BACKBONE_CONF_OPTIONS)


def backbone_spec(conf: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """``(model name, create_model options)`` of a ``conf/backbone/<name>.yaml`` group (a plain mapping) or a bare
    model name: ``pretrained`` (dropped when false), ``norm``, ``frozen_stages`` and the ``options`` mapping.

    Raises:
        ValueError: no ``name``, or a key a backbone config does not have (named, with the valid ones).
    """
    if isinstance(conf, str):
        return conf, {}
    conf = dict(conf)
    unknown = [k for k in conf if k not in BACKBONE_CONF_KEYS]
    if unknown or not conf.get("name"):
        what = f"unknown key(s) {', '.join(f'backbone.{k}' for k in unknown)}" if unknown else "no 'name' key"
        raise ValueError(
            f"backbone config: {what}; valid keys: {', '.join(BACKBONE_CONF_KEYS)} (more create_model options go in "
            f"backbone.options, e.g. +backbone.options.drop_path_rate=0.1)"
        )
    options = {k: conf[k] for k in ("pretrained", "norm", "frozen_stages") if k in conf}
    if options.get("pretrained") in (None, False):
        options.pop("pretrained", None)
    return conf["name"], {**options, **(conf.get("options") or {})}


def write_backbone_confs(conf_dir) -> list[str]:
    """Write ``<conf_dir>/<name>.yaml`` for every registered model and delete stale ones; returns the names."""
    from pathlib import Path

    conf_dir = Path(conf_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    names = list_models()
    for name in names:
        (conf_dir / f"{name}.yaml").write_text(backbone_conf(name))
    for stale in {p.stem for p in conf_dir.glob("*.yaml")} - set(names):
        (conf_dir / f"{stale}.yaml").unlink()
    return names
