"""megvii-model/ShuffleNet-Series ``ShuffleNetV1`` state dicts onto :class:`backbones.shufflenet.ShuffleNetV1`.

Their names (``ShuffleNetV1/network.py``, ``blocks.py``): ``first_conv.{0: conv, 1: bn}``, ``features.<k>`` the
16 units in order (stage 2: 4, stage 3: 8, stage 4: 4), each ``branch_main_1.{0: pw conv, 1: bn, 3: dw conv, 4: bn}``
and ``branch_main_2.{0: pw conv, 1: bn}``, ``classifier.0`` (no bias). Their released files wrap the state dict as
``{"state_dict": ...}`` with DataParallel ``module.`` prefixes, which :func:`~backbones.weights.read_state_dict`
strips. Their channel shuffle is the inverse of the paper's: build with ``reference="megvii"`` (the loader does).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from .core import rename_keys

# their unit-internal module indices -> ours (branch_main_1: pw conv, bn, ReLU, dw conv, bn; branch_main_2: pw, bn)
_PARTS = {"1.0": "pw1.conv", "1.1": "pw1.bn", "1.3": "dw.conv", "1.4": "dw.bn", "2.0": "pw2.conv", "2.1": "pw2.bn"}


def is_megvii(state: dict[str, Tensor]) -> bool:
    return "first_conv.0.weight" in state and any(k.startswith("features.0.branch_main_1.") for k in state)


def to_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Their keys onto ours; keys that fit no rule are kept, so the checked load names them."""
    units = [f"body.{stage}.{j}" for stage in ("stage2", "stage3", "stage4") for j in range(len(model.body[stage]))]

    def unit(m: re.Match) -> str:
        k = int(m[1])
        return f"{units[k]}.{_PARTS[m[2]]}." if k < len(units) and m[2] in _PARTS else m[0]

    renames = (
        (r"^first_conv\.0\.", "body.stem.conv."),
        (r"^first_conv\.1\.", "body.stem.bn."),
        (r"^classifier\.0\.", "fc."),
        (r"^features\.(\d+)\.branch_main_(\d\.\d)\.", unit),
    )
    return rename_keys(state, renames)
