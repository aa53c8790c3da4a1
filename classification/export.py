"""The classifier of a ``tools/train_cls.py`` checkpoint as a plain backbone, for export and deployment.

Reads only tensors and plain containers (``torch.load(weights_only=True)``); needs no Lightning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

import backbones
from backbones.weights import load_state_dict_checked

logger = logging.getLogger(__name__)


def classifier_from_checkpoint(path: str | os.PathLike, ema: bool = True) -> tuple[backbones.Backbone, dict[str, Any]]:
    """Rebuild the trained classifier of a ``.ckpt`` from its hyper-parameters (``model_name``, ``model_options``,
    ``num_classes``) and load its weights: the EMA average when the run kept one and ``ema`` (what its evaluation
    reported), else the raw weights. Returns ``(model in eval mode, hyper-parameters)``.

    Raises:
        ValueError: ``path`` is not a classification checkpoint.
        backbones.CheckpointMismatchError: its weights do not fit the model its hyper-parameters describe.
    """
    path = os.fspath(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if "model_name" not in hp or "num_classes" not in hp or "state_dict" not in ckpt:
        raise ValueError(
            f"{path!r} is not a tools/train_cls.py checkpoint (no hyper_parameters.model_name / num_classes or "
            f"state_dict); for a plain state dict give the model name as well"
        )
    options = {k: v for k, v in dict(hp.get("model_options") or {}).items() if k != "pretrained"}
    model = backbones.create_model(hp["model_name"], num_classes=int(hp["num_classes"]), **options)
    state = ckpt["state_dict"]
    prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_checked(model, weights, f"{path!r} ({prefix.rstrip('.')} weights)")
    return model.eval(), dict(hp)


def dataset_config(name: str = "digits", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``conf/dataset/<name>.yaml`` of this checkout with ``key=value`` overrides (values parsed as YAML, as on
    Hydra's command line): the datasets a training run would read."""
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "dataset" / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"dataset={name!r} is not valid; choose one of {', '.join(valid)}")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(cfg, resolve=True)


def compare_precisions(
    model: backbones.Backbone,
    dataset_cfg: dict[str, Any],
    calibration_batches: int = 4,
    batch_size: int = 64,
    int8: bool = True,
) -> tuple[dict[str, dict[str, float]], Any]:
    """Top-1 on the val split of ``model`` in float32, under bf16 autocast and int8-quantised (calibrated on the first
    ``calibration_batches`` training batches, training transforms included), and each one's per-image top-1
    agreement with float32 (:func:`backbones.quantize.top1_agreement`). Returns ``(figures, int8 module)``; the
    figures carry ``size`` (bytes of weights and buffers, float32 vs int8). int8 runs on oneDNN's kernels
    (:func:`~backbones.quantize.lower_int8`); where their lowering disagrees with the reference graph it is refused
    and the reference graph is evaluated (``figures["int8"]["lowered"]`` 0, else 1). ``int8=False``: float32 and
    bf16 only (no calibration; the module returned is None)."""
    from torch.utils.data import DataLoader

    from backbones.quantize import LoweringMismatchError, bf16, lower_int8, quantize_int8, tensor_bytes, top1_agreement

    from .data import build_datasets, collate_skip_bad

    data = build_datasets(dataset_cfg, model.card)
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(data.train, batch_size, shuffle=True, generator=gen, collate_fn=collate_skip_bad)
    model = model.eval()
    val = [b for b in DataLoader(data.val, batch_size, collate_fn=collate_skip_bad)]
    if not int8:
        figures = top1_agreement(model, {"bf16": bf16(model)}, val)
        figures["size"] = {"fp32": float(tensor_bytes(model))}
        return figures, None
    quantized = quantize_int8(model, train, max_batches=calibration_batches)
    lowered: dict[tuple[int, ...], Any] = {}  # oneDNN int8 kernels, per batch shape (the last batch is smaller)

    def int8_forward(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) not in lowered:
            try:
                lowered[tuple(x.shape)] = lower_int8(quantized, x)
            except LoweringMismatchError as e:  # the reference graph is right where oneDNN's lowering is not
                logger.warning("int8: %s; evaluating the reference int8 graph instead", e)
                lowered[tuple(x.shape)] = quantized
        return lowered[tuple(x.shape)](x)

    figures = top1_agreement(model, {"bf16": bf16(model), "int8": int8_forward}, val)
    refused = any(m is quantized for m in lowered.values())
    figures["int8"]["lowered"] = 0.0 if refused else 1.0  # 0: the reference graph's figures (lowering refused)
    figures["size"] = {"fp32": float(tensor_bytes(model)), "int8": float(tensor_bytes(quantized))}
    return figures, quantized
