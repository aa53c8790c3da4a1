"""The classifier of a ``tools/train_cls.py`` checkpoint as a plain backbone, for export and deployment.

Reads only tensors and plain containers (``torch.load(weights_only=True)``); needs no Lightning.
"""

from __future__ import annotations

import os
from typing import Any

import torch

import backbones
from backbones.weights import load_state_dict_checked


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
