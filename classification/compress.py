"""Deep Compression of a trained classifier, stage by stage, with each stage's top-1 on the val split.

Han et al. 2015 (arXiv:1510.00149) as SqueezeNet (arXiv:1602.07360, Tables 1 and 2) applies it::

    trained -> pruned (magnitude, to a plan) -> retrained with the masks fixed -> shared (k-means, N bits)
            -> encoded (a .dcmp file) -> decoded (a normal model again)

The steps that need no training are :mod:`backbones.compression`; this module adds what needs the classification
runtime: plans by name (``conf/compression/<name>.yaml``), trained checkpoints, the val split, and the retraining
run, which is ``tools/train_cls.py compression.plan=<plan> pretrained=<pruned weights>`` in a subprocess, so it
gets the runtime's devices, DDP, checkpoints and resume. Needs no Lightning itself.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from backbones import compression as dc
from backbones.atomic import atomic_write, write_json_atomic
from backbones.checks import check, check_keys, did_you_mean

from .recipes import load_classifier

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PLAN_DIR = ROOT / "conf" / "compression"
#: keys of the ``compression`` group (conf/classify.yaml)
COMPRESSION_KEYS = ("plan",)


# ---- plans -----------------------------------------------------------------------------------------------------------
def plan_names() -> list[str]:
    """The plans shipped in ``conf/compression``."""
    return sorted(p.stem for p in PLAN_DIR.glob("*.yaml"))


def plan_file(value: str | os.PathLike) -> Path:
    """The file of a plan: a ``.yaml`` path, or the name of one in ``conf/compression``.

    Raises:
        FileNotFoundError: naming the value, the close names and every shipped plan.
    """
    path = Path(os.path.expanduser(os.fspath(value)))
    if path.is_file():
        return path
    named = PLAN_DIR / f"{value}.yaml"
    if named.is_file():
        return named
    names = plan_names()
    raise FileNotFoundError(
        f"compression plan {os.fspath(value)!r}: no such file, and no conf/compression/{value}.yaml"
        f"{did_you_mean(value, names)}; shipped plans: {', '.join(names)} (or give the path of a plan .yaml)"
    )


def read_plan(value: str | os.PathLike, bits: int | None = None) -> dict[str, Any]:
    """A plan's mapping (``conf/compression`` format); ``bits`` replaces the plan's default codebook bits (rules
    that set their own keep them)."""
    import yaml

    mapping = yaml.safe_load(plan_file(value).read_text()) or {}
    if bits is not None:
        check("bits", bits, isinstance(bits, int) and 1 <= bits <= 16, "use an integer from 1 to 16")
        mapping["bits"] = bits
    return mapping


def load_plan(value: str | os.PathLike, bits: int | None = None) -> dc.CompressionPlan:
    """:func:`read_plan` parsed and checked (:meth:`~backbones.compression.CompressionPlan.from_mapping`)."""
    return dc.CompressionPlan.from_mapping(read_plan(value, bits))


def check_compression(compression: Any, backbone: Any) -> dict[str, Any] | None:
    """The ``compression`` group before any work; returns the plan's mapping (None without a plan).

    Raises:
        FileNotFoundError: an unknown plan (the shipped ones named).
        ValueError: a bad plan value, or a plan pattern that matches no weight of the backbone.
    """
    from backbones.registry import build
    from training.config import backbone_spec

    c = dict(compression or {})
    check_keys(c, COMPRESSION_KEYS, "compression")
    if not c.get("plan"):
        return None
    mapping = read_plan(c["plan"])
    name, _ = backbone_spec(backbone)
    with torch.device("meta"):  # the parameter names, no weights
        dc.CompressionPlan.from_mapping(mapping).targets(build(name, {}))
    return mapping


# ---- models and evaluation -------------------------------------------------------------------------------------------
def trained_model(
    source: str | os.PathLike, model_name: str | None = None
) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """``(model, masks, info)`` of a trained classifier file (:func:`~classification.recipes.load_classifier`);
    ``masks`` are the pruning masks a ``compression.plan`` run kept in its checkpoint (empty otherwise)."""
    model, info = load_classifier(source, model_name)
    masks: dict[str, Tensor] = {}
    if info["kind"] == "checkpoint":
        ckpt = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
        masks = dict((ckpt.get("compression") or {}).get("masks") or {})
    return model, masks, info


def classify_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``conf/classify.yaml`` composed with ``tools/train_cls.py`` overrides, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("classify", list(overrides)), resolve=True)


@torch.no_grad()
def evaluate(model: nn.Module, dataset_cfg: dict[str, Any]) -> float:
    """Top-1 (%) of ``model`` on the val split of a ``dataset`` group, with the inputs ``tools/train_cls.py``
    evaluates on (:func:`classification.data.build_datasets`, normalised with the model's card)."""
    import backbones

    from .data import build_datasets, collate_skip_bad

    data = build_datasets(dataset_cfg, backbones.model_card(model.model_name))
    batch = int(dataset_cfg.get("val_batch_size") or dataset_cfg.get("batch_size") or 256)
    loader = torch.utils.data.DataLoader(data.val, batch, collate_fn=collate_skip_bad)
    model.eval()
    hits = total = 0
    for x, y, _, _ in loader:
        hits += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * hits / max(1, total)


def nonzero(model: nn.Module) -> int:
    """Non-zero parameters of ``model``."""
    return int(sum(torch.count_nonzero(p.detach()) for p in model.parameters()))


def save_state(model: nn.Module, path: str | os.PathLike) -> None:
    """``model``'s state dict as a ``pretrained=`` file, through the atomic writer."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))


# ---- the stages ------------------------------------------------------------------------------------------------------
def retrain(
    model_name: str, pruned: Path, plan: str | os.PathLike, run_dir: Path, overrides: Sequence[str] = ()
) -> Path:
    """Retrain the pruned weights with the masks fixed: ``tools/train_cls.py backbone=<model> pretrained=<pruned>
    compression.plan=<plan> hydra.run.dir=<run_dir> <overrides>`` (resumed when ``run_dir`` holds a checkpoint).
    Returns its ``checkpoints/last.ckpt``."""
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    cmd = [
        sys.executable, str(ROOT / "tools" / "train_cls.py"), f"backbone={model_name}", f"pretrained={pruned}",
        f"compression.plan={plan_file(plan)}", f"hydra.run.dir={run_dir}", *overrides,
        *(["resume=true"] if resume else []),
    ]  # fmt: skip
    logger.info("retraining: %s", " ".join(cmd))
    proc = subprocess.run(cmd)  # in the caller's folder: relative paths in the overrides mean what they meant here
    if proc.returncode != 0:
        raise RuntimeError(f"retraining failed (exit code {proc.returncode}): {' '.join(cmd)}")
    return run_dir / "checkpoints" / "last.ckpt"


def share_and_encode(
    model: nn.Module,
    masks: dict[str, Tensor],
    plan: str | os.PathLike,
    bits: int,
    path: Path,
    options: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """A copy of ``model`` with its weights shared at ``bits`` (rules of the plan that set their own keep them),
    written to ``path`` as a compressed file; returns ``(shared copy, bytes on disk)``."""
    shared_model = copy.deepcopy(model).cpu()
    p = load_plan(plan, bits)
    shared = dc.share_weights(shared_model, p, masks)
    opts = {**(options or {}), "num_classes": int(model.num_classes)}
    blob = dc.encode(shared_model, shared, masks, p.index_bits, model.model_name, opts)
    atomic_write(path, lambda f: f.write(blob))
    return shared_model, os.path.getsize(path)


def compress(
    model: nn.Module,
    plan: str | os.PathLike,
    out_dir: str | os.PathLike,
    bits: Sequence[int] = (8, 6),
    dataset_cfg: dict[str, Any] | None = None,
    retrain_overrides: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    first_stage: str = "trained",
) -> list[dict[str, Any]]:
    """Every stage of Deep Compression on a trained ``model``, its files in ``out_dir``.

    Writes ``pruned.pth`` (the pruned weights), ``retrain/`` (the retraining run, when ``retrain_overrides`` is not
    None), ``<model>_<bits>bit.dcmp`` per bit width and ``stages.json`` (the rows returned).

    Args:
        plan: a ``conf/compression`` name or a plan file.
        bits: the codebook bits to share at, one file each.
        dataset_cfg: the ``dataset`` group to evaluate every stage on (None: sizes only).
        retrain_overrides: ``tools/train_cls.py`` overrides of the retraining run (e.g. ``["epochs=5"]``); None
            skips it.
        options: ``create_model`` options the file records (beside ``num_classes``).
        first_stage: the name of ``model``'s own row (e.g. ``"random init"``); its ``bytes`` are 4 per parameter.

    Returns:
        one row per stage: ``stage``, ``top1`` (None without a dataset), ``nonzero`` parameters, ``bytes`` (files
        only) and ``file``.
    """
    out = Path(out_dir).absolute()  # the retraining run gets absolute paths
    for b in bits:
        check("bits", b, isinstance(b, int) and 1 <= b <= 16, "use integers from 1 to 16")
    load_plan(plan).targets(model)  # a bad plan or a pattern that matches nothing, before any work

    def row(stage: str, m: nn.Module, **extra: Any) -> dict[str, Any]:
        top1 = evaluate(m, dataset_cfg) if dataset_cfg is not None else None
        r = {"stage": stage, "top1": top1, "nonzero": nonzero(m), **extra}
        logger.info("%-12s top-1 %s  non-zero %d %s", stage, "-" if top1 is None else f"{top1:.2f}%", r["nonzero"],
                    f"({extra['bytes']} bytes)" if "bytes" in extra else "")  # fmt: skip
        return r

    rows = [row(first_stage, model, bytes=4 * sum(p.numel() for p in model.parameters()))]
    model = copy.deepcopy(model)
    masks = dc.prune(model, load_plan(plan))
    save_state(model, out / "pruned.pth")
    rows.append(row("pruned", model, file=str(out / "pruned.pth")))
    if retrain_overrides is not None:
        ckpt = retrain(model.model_name, out / "pruned.pth", plan, out / "retrain", retrain_overrides)
        model, kept, _ = trained_model(ckpt)
        if set(kept) != set(masks) or any(not torch.equal(kept[k], masks[k]) for k in masks):
            raise RuntimeError(f"{ckpt}: the retraining run's masks are not the pruned ones")
        rows.append(row("retrained", model, file=str(ckpt)))
    for b in bits:
        path = out / f"{model.model_name}_{b}bit.dcmp"
        shared, size = share_and_encode(model, masks, plan, b, path, options)
        rows.append(row(f"shared {b}-bit", shared))
        with open(path, "rb") as f:
            parts = dc.sections(f.read())
        rows.append(row(f"decoded {b}-bit", dc.load_compressed(path), bytes=size, file=str(path), sections=parts))
    write_json_atomic(out / "stages.json", rows, indent=1)
    return rows


def stage_table(rows: Sequence[dict[str, Any]]) -> str:
    """The stages as a Markdown table (top-1, non-zero parameters, file bytes)."""
    lines = ["| stage | top-1 (%) | non-zero parameters | bytes |", "|---|---|---|---|"]
    for r in rows:
        top1 = "-" if r.get("top1") is None else f"{r['top1']:.2f}"
        lines.append(f"| {r['stage']} | {top1} | {r['nonzero']:,} | {r['bytes']:,} |" if "bytes" in r else
                     f"| {r['stage']} | {top1} | {r['nonzero']:,} | |")  # fmt: skip
    return "\n".join(lines)
