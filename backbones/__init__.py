"""Classic CNN backbones for detection: one registry, one feature contract.

>>> import backbones
>>> m = backbones.create_model("resnext50_32x4d")                      # classifier
>>> f = backbones.create_model("resnext50_32x4d", features_only=True)  # dict of c2..c5
>>> f.out_channels
{'c2': 256, 'c3': 512, 'c4': 1024, 'c5': 2048}

Only torch is imported here; timm and torchvision are imported lazily when weights come from them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from . import densenet, mobilenet, resnext, shufflenet, squeezenet, xception  # noqa: F401  (registrations)
from .base import Backbone, FeatureInfo
from .checks import check_choice, did_you_mean
from .layers import NORMS, set_drop_path_progress
from .nas import models as _nas_models  # noqa: F401  (registrations)
from .profile import count_macs, count_params
from .registry import ModelCard, builder_options, list_models, model_card, model_defaults
from .weights import CheckpointMismatchError, load_planned, plan_pretrained

_logger = logging.getLogger(__name__)

__all__ = [
    "Backbone",
    "CheckpointMismatchError",
    "FeatureInfo",
    "ModelCard",
    "builder_options",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "model_card",
    "model_defaults",
    "set_drop_path_progress",
]


def create_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike = False,
    features_only: bool = False,
    out_features: tuple[str, ...] | list[str] | None = None,
    norm: str = "bn",
    frozen_stages: int = -1,
    channels_last: bool = True,
    **options: Any,
) -> Backbone:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: False; True for the card's default published source; a source name (``"keras"``,
            ``"cadene"``, ``"megvii"``, ``"tf-slim"``, ``"timm"``, ``"torchvision"``, ``"keras-160"``: the card's
            ``sources``), downloaded into torch.hub's cache and hash-checked; or a path to weights in any of those
            formats or ours. The file's source is recognised by its format and keys, and the model is built in that
            source's numerics (its ``reference``) unless ``reference=`` is given: the outputs are the source's own.
        features_only: return a dict of feature levels (``c2``..``c5`` by default) instead of logits.
        out_features: levels to return with ``features_only``.
        norm: ``"bn"``, ``"frozen_bn"`` (keeps each layer's eps), ``"sync_bn"`` or ``"gn"``.
        frozen_stages: -1 none, 0 the stem, k the stem and the first k stages (no grad, norms in eval mode).
        channels_last: store the 4-d parameters channels-last (the default). Convolutions then take and give
            channels-last tensors whatever the input's layout, which oneDNN (CPU) and cuDNN (GPU, AMP) run faster;
            the maths is the same. ``False`` keeps the contiguous layout of a plain ``nn.Module``.
        **options: ``num_classes``, ``in_chans``, ``drop_path_rate``, ``reference`` (whose numerics to reproduce
            exactly: None = exact ``H / 2**i`` levels, or one of the card's ``references``), ``reference_padding``
            (True = ``reference=<the card's padding_reference>``, the twin's) and the family's knobs (see
            :func:`builder_options`). An unknown option raises ``TypeError`` naming the valid ones.
    """
    from .registry import build

    check_choice("norm", norm, NORMS)
    if not isinstance(pretrained, bool | str | os.PathLike):
        raise TypeError(f"pretrained={pretrained!r} must be False, True or a path to a state dict")
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last={channels_last!r} must be True or False")
    options = _resolve_reference(name, options)
    plan = None
    if pretrained is not False:
        plan = plan_pretrained(name, pretrained, options)  # reads / fetches and recognises it before building
        if "reference" not in options and plan.exact_reference:
            options["reference"] = plan.reference
        elif plan.exact_reference and options["reference"] != plan.reference:
            _logger.warning(
                "%s: building with reference=%r although %s computes with reference=%r; outputs will differ from "
                "the source's network",
                name,
                options["reference"],
                plan.described,
                plan.reference,
            )
    model = build(name, options)
    model.card = model_card(name)
    model.pretrained_cfg = _pretrained_cfg(model)
    if plan is not None:
        load_planned(model, plan)
    model.configure(features_only=features_only, out_features=out_features, norm=norm, frozen_stages=frozen_stages)
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _resolve_reference(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options with ``reference_padding=True`` turned into ``reference=<the card's padding_reference>`` and the
    reference checked against the card before anything is built."""
    card = model_card(name)
    options = dict(options)
    if options.get("reference_padding") is True and "reference" not in options:
        options.pop("reference_padding")
        options["reference"] = card.padding_reference
    if "reference" in options and options["reference"] is not None and options["reference"] not in card.references:
        ref = options["reference"]
        accepted = ", ".join(["None (exact H / 2**i levels)", *map(repr, card.references)])
        raise ValueError(f"reference={ref!r} is not valid for {name!r}{did_you_mean(ref, card.references)}; "
                         f"accepted: {accepted}")  # fmt: skip
    return options


def _pretrained_cfg(model: Backbone) -> dict[str, Any]:
    """timm-style data config of the model's reference weights (input size, mean/std, crop)."""
    card = model.card
    return {
        "input_size": (3, card.input_size, card.input_size),
        "mean": card.mean,
        "std": card.std,
        "crop_pct": card.crop_pct,
        "num_classes": model.num_classes,
        "classifier": model.classifier_name,
    }
