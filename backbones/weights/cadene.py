"""Cadene ``pretrainedmodels`` layouts that differ from the timm twins'.

* ResNeXt-101 32x4d / 64x4d: a Torch7 conversion (``resnext_features``): ``features.{0: conv1, 1: bn1}``, stages
  ``features.4`` .. ``features.7``, each block ``<b>.0.0.0.{0,1,3,4}`` (conv1, bn1, conv2, bn2), ``<b>.0.0.{1,2}``
  (conv3, bn3), ``<b>.0.1.{0,1}`` (projection shortcut), and ``last_linear``. Numerically our default network.
* The TF ports (``nasnetalarge``, ``nasnetamobile``, ``pnasnet5large``): timm's key names (timm took them over), but
  1001 classes (TensorFlow's background class first) and TF's pooling: ``reference="tf"``. Cadene's NASNet-A Mobile
  numbers its normal cells as the Large model does (``cell_0..3, cell_6..9, cell_12..15``), renumbered here in order.

Cadene's SE-Nets and Xception are timm's ``legacy_*`` layout and load through the family's ``remap_state_dict``.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from .core import rename_keys

REFERENCE = {"resnext": None, "tf_port": "tf"}
# Torch7 ResNeXt block-internal indices -> ours
_BLOCK_PARTS = {
    "0.0.0.0": "conv1",
    "0.0.0.1": "bn1",
    "0.0.0.3": "conv2",
    "0.0.0.4": "bn2",
    "0.0.1": "conv3",
    "0.0.2": "bn3",
    "0.1.0": "downsample.0",
    "0.1.1": "downsample.1",
}
_RESNEXT_RENAMES = (
    (r"^features\.0\.", "body.stem.conv1."),
    (r"^features\.1\.", "body.stem.bn1."),
    (r"^last_linear\.", "fc."),
    (
        r"^features\.([4-7])\.(\d+)\.(0\.0\.0\.\d|0\.0\.\d|0\.1\.\d)\.",
        lambda m: f"body.layer{int(m[1]) - 3}.{m[2]}.{_BLOCK_PARTS[m[3]]}." if m[3] in _BLOCK_PARTS else m[0],
    ),
)


def layout(state: dict[str, Tensor]) -> str | None:
    """``"resnext"``, ``"tf_port"`` or None (not a Cadene-only layout)."""
    if "features.0.weight" in state and any(k.startswith("features.4.0.0.0.0.0.") for k in state):
        return "resnext"
    w = state.get("last_linear.weight")
    if w is not None and w.shape[0] == 1001 and any(k.startswith("cell_stem_0.") for k in state):
        return "tf_port"
    return None


def to_state_dict(model: nn.Module, state: dict[str, Tensor], kind: str) -> dict[str, Tensor]:
    if kind == "resnext":
        return rename_keys(state, _RESNEXT_RENAMES)
    if not any(k.startswith("conv_0.") for k in state):  # NASNet-A (PNASNet's cells are named in execution order)
        normal = sorted({int(m[1]) for k in state if (m := re.match(r"cell_(\d+)\.", k))})
        index = {n: i for i, n in enumerate(normal)}
        state = {re.sub(r"^cell_(\d+)\.", lambda m: f"cell_{index[int(m[1])]}.", k): v for k, v in state.items()}
    return model.remap_state_dict(state)
