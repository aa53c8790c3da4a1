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

_PARTS = {
    "branch_main_1.0.": "pw1.conv.",
    "branch_main_1.1.": "pw1.bn.",
    "branch_main_1.3.": "dw.conv.",
    "branch_main_1.4.": "dw.bn.",
    "branch_main_2.0.": "pw2.conv.",
    "branch_main_2.1.": "pw2.bn.",
}


def is_megvii(state: dict[str, Tensor]) -> bool:
    return "first_conv.0.weight" in state and any(k.startswith("features.0.branch_main_1.") for k in state)


def to_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Their keys onto ours; keys that fit no rule are kept, so the checked load names them."""
    units = [f"body.{stage}.{j}." for stage in ("stage2", "stage3", "stage4") for j in range(len(model.body[stage]))]
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith("first_conv.0."):
            new = "body.stem.conv." + key.removeprefix("first_conv.0.")
        elif key.startswith("first_conv.1."):
            new = "body.stem.bn." + key.removeprefix("first_conv.1.")
        elif key.startswith("classifier.0."):
            new = "fc." + key.removeprefix("classifier.0.")
        elif (m := re.match(r"features\.(\d+)\.", key)) and int(m[1]) < len(units):
            rest = key[m.end() :]
            part = next((p for p in _PARTS if rest.startswith(p)), None)
            if part is not None:
                new = units[int(m[1])] + _PARTS[part] + rest.removeprefix(part)
        out[new] = value
    return out
