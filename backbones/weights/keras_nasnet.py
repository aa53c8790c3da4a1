"""Keras applications NASNet-A (``NASNetMobile``, ``NASNetLarge``) HDF5 names onto our generic cells.

Keras names its cells by a ``block_id`` (``applications/nasnet.py``): ``stem_1``/``stem_2`` for the two stem cells,
``reduce_<n>`` for the reductions and ``<n>`` for the normal cells, numbered with gaps (Mobile: 0-3, 5-8, 9-12);
in increasing order they are our ``cell_stem_*``, ``reduction_cell_*`` and ``cell_*``. Inside a cell:

* ``{normal,reduction}_conv_1_<id>`` / ``_bn_1_<id>``: the 1x1 on input 0 (our ``pre.0``);
* ``adjust_conv_{1,2}_<id>`` + ``adjust_bn_<id>`` (factorized reduction) or ``adjust_conv_projection_<id>`` +
  ``adjust_bn_<id>`` (1x1 projection): input 1 (our ``pre.1``);
* ``separable_conv_{1,2}[_bn]_<cell>_<branch>_<id>``: the separable convs of the blocks. The branches follow the
  TF-slim block order of our genotype (``nas/genotypes.py`` NASNET_A): normal left1/right1/left2/right2/left5 are
  ops 0, 1, 2, 3, 8; reduction left1/right1/right2/right3/left4 are ops 0, 1, 3, 5, 8 (Keras calls the fifth block's
  separable conv ``left4``);
* ``stem_conv1`` / ``stem_bn1`` (conv0) and the Dense ``predictions``.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .keras import Layers, bn, conv, separable

_OPS = {
    "normal": {"left1": 0, "right1": 1, "left2": 2, "right2": 3, "left5": 8},
    "reduction": {"left1": 0, "right1": 1, "right2": 3, "right3": 5, "left4": 8},
}
_SEP = re.compile(r"separable_conv_([12])(_bn)?_(normal|reduction)_((?:left|right)\d)_(\w+)")


def _cell_names(layers: Layers) -> dict[str, str]:
    """Keras block_id -> our cell name."""
    ids = set()
    for name in layers:
        m = _SEP.fullmatch(name) or re.fullmatch(r"(?:normal|reduction)_(?:conv|bn)_1_(\w+)", name)
        if m:
            ids.add(m.groups()[-1])
    normal = sorted((i for i in ids if i.isdigit()), key=int)
    reduce = sorted((i for i in ids if i.startswith("reduce_")), key=lambda i: int(i.removeprefix("reduce_")))
    out = {"stem_1": "cell_stem_0", "stem_2": "cell_stem_1"}
    out.update({i: f"cell_{k}" for k, i in enumerate(normal)})
    out.update({i: f"reduction_cell_{k}" for k, i in enumerate(reduce)})
    return out


def nasnet_to_state_dict(model: nn.Module, layers: Layers) -> dict[str, Tensor]:
    cells = _cell_names(layers)
    out: dict[str, Tensor] = {}

    def cell(block_id: str) -> str:
        return f"cells.{cells.get(block_id, block_id)}"

    for name, w in layers.items():
        if name == "stem_conv1":
            out.update(conv(w, "stem.conv"))
        elif name == "stem_bn1":
            out.update(bn(w, "stem.bn"))
        elif m := _SEP.fullmatch(name):
            j, is_bn, kind, branch, block_id = m.groups()
            op = _OPS[kind].get(branch)
            prefix = f"{cell(block_id)}.ops.{op}.{'bn' if is_bn else 'conv'}{j}"
            out.update(bn(w, prefix) if is_bn else separable(w, prefix))
        elif m := re.fullmatch(r"(?:normal|reduction)_(conv|bn)_1_(\w+)", name):
            prefix = f"{cell(m[2])}.pre.0.{m[1]}"
            out.update(conv(w, prefix) if m[1] == "conv" else bn(w, prefix))
        elif m := re.fullmatch(r"adjust_conv_([12])_(\w+)", name):
            out.update(conv(w, f"{cell(m[2])}.pre.1.path{m[1]}"))
        elif m := re.fullmatch(r"adjust_conv_projection_(\w+)", name):
            out.update(conv(w, f"{cell(m[1])}.pre.1.conv"))
        elif m := re.fullmatch(r"adjust_bn_(\w+)", name):
            out.update(bn(w, f"{cell(m[1])}.pre.1.bn"))
        elif w.get("kernel") is not None and w["kernel"].ndim == 2:
            out.update(conv(w, "fc"))
        else:
            out[f"<unmapped Keras layer {name}>"] = torch.empty(0)
    return out
