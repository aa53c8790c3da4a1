"""``pretrained=``: find where the weights come from before the model is built, build it in that source's numerics,
load them.

``create_model`` calls :func:`plan_pretrained` first (it reads the file, or fetches the source, and recognises the
format and layout), builds the model with the plan's ``reference`` unless the user named one, and then calls
:func:`load_planned`. Recognised:

* a PyTorch file: ours (every key of the model present), megvii's ShuffleNetV1 (``first_conv.*``, ``features.*``),
  Cadene's ResNeXt (``features.<i>`` Torch7 port), Cadene's TF ports (a 1001-row ``last_linear``, the TF background
  class), or a twin's layout (timm / torchvision, which Cadene's SE-Nets and Xception share);
* a Keras applications HDF5 file (``keras.py``);
* a TF-slim checkpoint: a ``.tar.gz``/``.tgz`` as published, a directory holding one, or its ``.ckpt`` prefix
  (``tfslim.py``, needs tensorflow).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import download
from .core import CheckpointMismatchError, load_state_dict_checked, read_state_dict
from .sources import Source

logger = logging.getLogger(__name__)

#: what each detected kind of file is, for messages
LABELS = {
    "ours": "a state dict of this package",
    "timm": "timm's layout",
    "torchvision": "torchvision's layout",
    "cadene": "Cadene pretrainedmodels",
    "megvii": "megvii ShuffleNet-Series",
    "keras": "Keras applications HDF5",
    "tf-slim": "a TF-slim checkpoint",
    "unknown": "a PyTorch state dict in none of the known layouts (ours, timm, torchvision, Cadene, megvii)",
}
SOURCE_KINDS = ("timm", "torchvision", "keras", "cadene", "megvii", "tf-slim")


@dataclass
class Plan:
    """How to load one ``pretrained=`` value: which source it is, in whose numerics, and a converter that maps its
    tensors onto a built model's keys."""

    kind: str
    reference: str | None
    origin: str
    convert: Callable[[nn.Module], dict[str, Tensor]]
    source: Source | None = None
    exact_reference: bool = True  # False for "ours": the file does not say which reference it was saved with

    @property
    def described(self) -> str:
        ref = f", reference={self.reference!r}" if self.exact_reference else ""
        return f"{self.origin} (detected: {LABELS[self.kind]}{ref})"


# ---- choosing the source ------------------------------------------------------------------------------------------
def plan_pretrained(name: str, pretrained: bool | str | os.PathLike, options: dict[str, Any]) -> Plan:
    """The :class:`Plan` for ``create_model(name, pretrained=pretrained, **options)``.

    ``True`` is the card's default source, a source name (``"keras"``, ``"cadene"``, ``"keras-160"``, ...) that
    source, anything else a path. Downloads happen here, only for sources.

    Raises:
        ValueError: a source this model does not have, or none at all for ``True``.
        FileNotFoundError: a path that does not exist (the message lists the source names too).
    """
    from ..registry import model_card

    card = model_card(name)
    if pretrained is True:
        if card.default_source is None:
            raise ValueError(
                f"pretrained=True: {name!r} has no published ImageNet weights; pass pretrained=<path to a state dict>"
            )
        return _plan_source(name, card.source(card.default_source), options)
    path = os.fspath(pretrained)
    if not os.path.exists(path):
        names = [s.name for s in card.sources]
        if path in names:
            return _plan_source(name, card.source(path), options)
        if path in SOURCE_KINDS or path.split("-")[0] in ("keras", "tf"):
            card.source(path)  # raises, naming this model's sources
        hint = f"; or one of its published sources: {', '.join(map(repr, names))}" if names else ""
        raise FileNotFoundError(f"pretrained={path!r}: no such file or directory{hint}")
    return _plan_file(name, path, options)


def _plan_source(name: str, source: Source, options: dict[str, Any]) -> Plan:
    if source.format == "timm":
        return Plan("timm", source.reference, f"timm {source.library_name}", _timm_state(source), source)
    return _plan_file(name, download.fetch(source), options, source)


def _plan_file(name: str, path: str, options: dict[str, Any], source: Source | None = None) -> Plan:
    from ..registry import model_card
    from . import keras as keras_h5
    from . import tfslim

    card = model_card(name)
    origin = repr(path)
    if tfslim.is_checkpoint(path):
        src = source or _find(card, fmt="tf_slim")
        reader = tfslim.Reader(path, src.member if src else None)
        return Plan("tf-slim", src.reference if src else "tf", origin, _with_classes(reader.to_state_dict, src), src)
    if os.path.isfile(path) and keras_h5.is_hdf5(path):
        layers = keras_h5.read_h5(path)
        src = source or _find(card, fmt="keras_h5")
        return Plan("keras", src.reference if src else "tf", origin, lambda m: keras_h5.to_state_dict(m, layers), src)
    if os.path.isdir(path) or tarfile.is_tarfile(path):
        raise CheckpointMismatchError(f"{origin} holds no TF-slim checkpoint (no '<prefix>.index' file)")
    state = read_state_dict(path)
    return _plan_torch(name, state, origin, options, source)


def _find(card: Any, fmt: str | None = None, name: str | None = None) -> Source | None:
    """The card's first source of format ``fmt`` / called ``name``, if any."""
    return next((s for s in card.sources if s.format == (fmt or s.format) and s.name == (name or s.name)), None)


def _plan_torch(name: str, state: dict[str, Tensor], origin: str, options: dict[str, Any], source: Source | None):
    plan = _plan_layout(name, state, origin, options, source)
    if source is not None:  # a published source: its numerics whatever the layout (a re-saved file keeps them)
        plan.reference, plan.exact_reference, plan.source = source.reference, True, source
    return plan


def _plan_layout(name: str, state: dict[str, Tensor], origin: str, options: dict[str, Any], source: Source | None):
    from ..registry import build, model_card
    from . import cadene, megvii

    card = model_card(name)
    probe_options = {k: v for k, v in options.items() if k not in ("reference", "reference_padding")}
    with torch.device("meta"):
        probe = build(name, probe_options)
    own = set(probe.state_dict())
    if own <= set(state):
        return Plan("ours", options.get("reference"), origin, lambda m: dict(state), source, exact_reference=False)
    if megvii.is_megvii(state):
        src = source or _find(card, name="megvii")
        return Plan("megvii", "megvii", origin, lambda m: megvii.to_state_dict(m, state), src)
    cadene_kind = cadene.layout(state)
    if cadene_kind is not None:
        src = source or _find(card, name="cadene")
        ref = src.reference if src is not None else cadene.REFERENCE[cadene_kind]
        return Plan("cadene", ref, origin, _with_classes(lambda m: cadene.to_state_dict(m, state, cadene_kind), src),
                    src)  # fmt: skip
    # a twin's layout (timm / torchvision; Cadene's SE-Nets and Xception are timm's legacy_* layout)
    if own <= set(probe.remap_state_dict(dict(state))):
        kind = (
            "torchvision" if source is not None and source.format == "torchvision" else next(iter(card.twins), "timm")
        )
        ref = source.reference if source is not None else card.padding_reference or kind
        return Plan(kind, ref, origin, lambda m: m.remap_state_dict(dict(state)), source)
    return Plan("unknown", options.get("reference"), origin, lambda m: dict(state), source, exact_reference=False)


def _with_classes(convert: Callable[[nn.Module], dict[str, Tensor]], source: Source | None):
    """Drop TensorFlow's background class (row 0) when the file has one more class than the model."""

    def run(model: nn.Module) -> dict[str, Tensor]:
        state = convert(model)
        name = getattr(model, "classifier_name", None)
        num = getattr(model, "num_classes", 0)
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None and weight.shape[0] == num + 1 and (source is None or source.num_classes == num + 1):
            logger.info("dropping the background class (row 0) of %s's %d-class classifier", model.model_name, num + 1)
            for k in (f"{name}.weight", f"{name}.bias"):
                if k in state:
                    state[k] = state[k][1:]
        return state

    return run


def _timm_state(source: Source) -> Callable[[nn.Module], dict[str, Tensor]]:
    try:
        import timm
    except ImportError as e:
        raise ModuleNotFoundError(
            f"pretrained={source.name!r} loads {source.library_name} through timm, which is not installed: "
            f"pip install 'cnn-backbones[timm]' (or pip install timm)"
        ) from e
    state = timm.create_model(source.library_name, pretrained=True).state_dict()
    return lambda m: m.remap_state_dict(dict(state))


# ---- loading ------------------------------------------------------------------------------------------------------
def load_planned(model: nn.Module, plan: Plan, strict: bool = True) -> None:
    """Convert the plan's tensors onto ``model`` and load them; BN batch counters a foreign format lacks are kept.

    Raises:
        CheckpointMismatchError: naming the detected source and the missing, unexpected and mis-shaped keys.
    """
    state = plan.convert(model)
    own = model.state_dict()
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    load_state_dict_checked(model, state, plan.described, strict=strict)


def load_pretrained(model: nn.Module, source: bool | str | os.PathLike, strict: bool = True) -> None:
    """Load ``pretrained=``-style ``source`` into an already built registered model (its numerics stay as built)."""
    plan = plan_pretrained(model.model_name, source, {})
    load_planned(model, plan, strict=strict)
