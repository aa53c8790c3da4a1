"""Loading weights: our own state dicts, a twin library's (timm / torchvision) state dicts, or the twin's
published weights through that library.

Files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model", "model_state", "module", "ema_state_dict")


class CheckpointMismatchError(RuntimeError):
    """Raised when a checkpoint's keys or shapes do not fit the model (e.g. one from another architecture)."""


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """Read a state dict from ``path`` (plain, wrapped in a training checkpoint, or DDP-prefixed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
    if expected_sha256 is not None:
        digest = sha256(path)
        if digest != expected_sha256:
            raise ValueError(f"{path!r} has sha256 {digest}, expected {expected_sha256}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError with a long text; keep it but say what happened
        raise RuntimeError(
            f"refused to load {path!r} with weights_only=True (it is not a plain tensor checkpoint, or it holds "
            f"objects that would execute code): {e}"
        ) from e
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, origin: str = "checkpoint") -> dict[str, Tensor]:
    """Find the tensor mapping in a checkpoint and strip ``module.`` / ``model.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{origin} holds no state dict (a mapping of names to tensors)")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def _twin_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The twin's published weights, through timm or torchvision (needs network access the first time)."""
    card = model.card
    if "timm" in card.twins:
        import timm

        twin = timm.create_model(card.twins["timm"], pretrained=True)
    elif "torchvision" in card.twins:
        import torchvision

        twin = torchvision.models.get_model(card.twins["torchvision"], weights="DEFAULT")
    else:
        raise ValueError(
            f"pretrained=True: {model.model_name!r} has no timm or torchvision twin with published weights; "
            f"pass pretrained=<path to a state dict> instead"
        )
    return twin.state_dict()


def load_pretrained(model: nn.Module, source: bool | str | os.PathLike, strict: bool = True) -> None:
    """Load ``source`` (True = the twin's published weights; a path = our or the twin's state dict) into ``model``.

    A state dict whose keys are ours loads as is; otherwise the family's ``remap_state_dict`` converts the twin's
    names. A classifier of another size is left freshly initialised (fine-tuning), with a log line saying so.

    Raises:
        CheckpointMismatchError: naming missing, unexpected and mis-shaped keys.
    """
    if source is True:
        state = _twin_state_dict(model)
        origin = f"{model.card.twins} published weights"
    else:
        state = read_state_dict(source)
        origin = repr(os.fspath(source))
    own = model.state_dict()
    if not set(own) <= set(state):
        state = model.remap_state_dict(state)
    load_state_dict_checked(model, state, origin, strict=strict)


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor], origin: str, strict: bool = True) -> None:
    own = model.state_dict()
    classifier = getattr(model, "classifier_name", None)
    dropped = []
    if classifier:
        for k in [k for k in state if k.startswith(classifier + ".")]:
            if k in own and own[k].shape != state[k].shape:
                dropped.append(k)
                del state[k]
    if dropped:
        logger.info("%s: classifier has another size; %s left freshly initialised", origin, ", ".join(dropped))
    missing = sorted(k for k in own if k not in state and k not in dropped)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if strict and (missing or unexpected or shapes):
        name = getattr(model, "model_name", type(model).__name__)
        parts = [f"{origin} does not fit {name!r}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:8])}{more}")
        raise CheckpointMismatchError("; ".join(parts))
    state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(state, strict=False)


def rename_keys(state_dict: dict[str, Tensor], renames: tuple[tuple[str, str], ...]) -> dict[str, Tensor]:
    """Apply ``(regex, replacement)`` renames, in order, to every key: a twin's names mapped onto ours as data."""
    import re

    out = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
