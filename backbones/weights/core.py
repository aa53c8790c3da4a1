"""Reading PyTorch state dicts and loading them with every mismatch named.

Files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model", "model_state", "module", "ema_state_dict")


class CheckpointMismatchError(RuntimeError):
    """Raised when a checkpoint's keys or shapes do not fit the model (e.g. one from another architecture)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``path`` (plain, wrapped in a training checkpoint, or DDP-prefixed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
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


def rename_keys(state_dict: dict[str, Tensor], renames: tuple[tuple[str, Any], ...]) -> dict[str, Tensor]:
    """Apply ``(regex, replacement)`` renames, in order, to every key: a twin's names mapped onto ours as data (a
    replacement is a ``re.sub`` template or a function of the match)."""
    import re

    out = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
