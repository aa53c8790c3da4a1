"""TF-slim NASNet-A (Mobile, Large) and PNASNet-5 checkpoint variables onto our generic cells.

Variable names are TF-slim's (``research/slim/nets/nasnet/nasnet.py``, ``nasnet_utils.py``, ``pnasnet.py``):

* ``conv0/weights``, ``conv0_bn/*``: the stem conv (our ``stem``).
* Cells ``cell_stem_<i>``, then NASNet-A ``cell_<n>`` (normal cells only) and ``reduction_cell_<r>``, the same names as
  ours; PNASNet-5 numbers every non-stem cell ``cell_<i>`` in execution order, reductions included (TF-slim's
  ``cell_4`` and ``cell_8`` of the Large model are our ``reduction_cell_0``, ``reduction_cell_1``).
* Inside a cell (``NasNetABaseCell``): ``1x1`` + ``beginning_bn`` on the current input (our ``pre.0``);
  ``path1_conv``, ``path2_conv``, ``final_path_bn`` (factorized reduction) or ``prev_1x1`` + ``prev_bn`` on the
  previous one (``pre.1``); ``comb_iter_<b>/{left,right}/`` the block's two ops (our ``ops.<2b>``, ``ops.<2b+1>``):
  ``separable_<k>x<k>_<j>/{depthwise,pointwise}_weights`` + ``bn_sep_<k>x<k>_<j>`` (``conv<j>``, ``bn<j>``), or
  ``1x1`` + ``bn_1`` (a strided identity or a pool's projection: ``conv``, ``bn``);
  ``cell_output/reduction_<s>/...`` (an unused state brought to the output's shape: ``adapt.<s>``).
* ``final_layer/FC/{weights,biases}``: the classifier, 1001 classes (TensorFlow's background class first).
* ``aux_<n>/aux_logits/{proj, aux_bn0, Conv, aux_bn1, FC}``: the auxiliary head, which the published checkpoints
  keep (they were saved by training); loaded into ``aux_head`` when the model has one (``aux_head=True``), skipped
  otherwise. ``global_step`` and optimiser / moving-average slots are training state, never model weights.

Kernels are TensorFlow's HWIO: conv ``(kh, kw, in, out)``, depthwise ``(kh, kw, C, 1)``, FC ``(in, out)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from .core import CheckpointMismatchError
from .keras import _t

logger = logging.getLogger(__name__)

GENOTYPES = ("nasnet_a", "pnasnet5")
_CONV = (3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw); pointwise (1, 1, C, F) too
_DEPTHWISE = (2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
_FC = (1, 0)  # (in, out) -> (out, in)
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_SIDE = {"left": 0, "right": 1}
# training state a checkpoint saved by a training run may hold besides the weights
_TRAINING_STATE = re.compile(r"global_step|.*/(ExponentialMovingAverage|RMSProp(_1)?|Momentum|Adam(_1)?)")


@dataclass(frozen=True)
class Target:
    """Where one TF-slim variable goes: our state-dict key and the axis permutation (None: a vector)."""

    key: str
    perm: tuple[int, ...] | None = None

    def shape(self, tf_shape: Iterable[int]) -> tuple[int, ...]:
        """Our shape of a variable of TF shape ``tf_shape``."""
        s = tuple(tf_shape)
        return s if self.perm is None else tuple(s[p] for p in self.perm)


def _bn(scope: str, prefix: str) -> dict[str, Target]:
    return {f"{scope}/{theirs}": Target(f"{prefix}.{ours}") for theirs, ours in _BN.items()}


def _weights(name: str, prefix: str, perm: tuple[int, ...] = _CONV) -> dict[str, Target]:
    return {f"{name}/weights": Target(f"{prefix}.weight", perm)}


# rules inside a cell: TF-slim scope (relative to the cell) -> our module path (relative to the cell)
def _cell_rule(rest: str) -> tuple[str, str] | None:
    """(TF-slim scope, our module) of the layer holding the cell-relative variable ``rest``."""
    fixed = {
        "1x1": "pre.0.conv",
        "beginning_bn": "pre.0.bn",
        "path1_conv": "pre.1.path1",
        "path2_conv": "pre.1.path2",
        "final_path_bn": "pre.1.bn",
        "prev_1x1": "pre.1.conv",
        "prev_bn": "pre.1.bn",
    }
    scope = rest.rsplit("/", 1)[0]
    if scope in fixed:
        return scope, fixed[scope]
    if m := re.fullmatch(r"comb_iter_(\d+)/(left|right)/(.+)", scope):
        op = f"ops.{2 * int(m[1]) + _SIDE[m[2]]}"
        layer = m[3]
        if s := re.fullmatch(r"separable_(\d+)x\1_([12])", layer):
            return scope, f"{op}.conv{s[2]}"
        if s := re.fullmatch(r"bn_sep_(\d+)x\1_([12])", layer):
            return scope, f"{op}.bn{s[2]}"
        if layer in ("1x1", "bn_1"):
            return scope, f"{op}.{'conv' if layer == '1x1' else 'bn'}"
    if m := re.fullmatch(r"cell_output/reduction_(\d+)/(path1_conv|path2_conv|final_path_bn|path_conv|path_bn)", scope):
        part = {"path1_conv": "path1", "path2_conv": "path2", "final_path_bn": "bn", "path_conv": "0", "path_bn": "1"}
        return scope, f"adapt.{m[1]}.{part[m[2]]}"
    return None


def _cell_names(model: nn.Module, scopes: set[str]) -> dict[str, str]:
    """TF-slim cell scope -> our cell name. PNASNet's checkpoints have no ``reduction_cell_*`` scopes: their
    ``cell_<i>`` are the non-stem cells in execution order."""
    ours = list(model.cells)
    if any(s.startswith("reduction_cell_") for s in scopes):
        return {n: n for n in ours}
    stems = [n for n in ours if n.startswith("cell_stem_")]
    rest = [n for n in ours if n not in stems]
    return {**{n: n for n in stems}, **{f"cell_{i}": n for i, n in enumerate(rest)}}


def targets(model: nn.Module, names: Iterable[str]) -> tuple[dict[str, Target], list[str]]:
    """Where each TF-slim variable of ``names`` goes in ``model``, and the names deliberately not loaded (training
    state; the auxiliary head when the model has none). A variable no rule places maps to an ``<unmapped ...>`` key,
    so the checked load names it."""
    names = list(names)
    scopes = {n.split("/", 1)[0] for n in names}
    cells = _cell_names(model, scopes)
    has_aux = hasattr(model, "aux_head")
    out: dict[str, Target] = {}
    skipped: list[str] = []
    for name in names:
        if _TRAINING_STATE.fullmatch(name) or (name.startswith("aux_") and not has_aux):
            skipped.append(name)
            continue
        out[name] = _target(name, cells) or Target(f"<unmapped TF-slim variable {name}>")
    return out, skipped


def _target(name: str, cells: dict[str, str]) -> Target | None:
    top, _, rest = name.partition("/")
    table: dict[str, Target] = {
        **_weights("conv0", "stem.conv"),
        **_bn("conv0_bn", "stem.bn"),
        **_weights("final_layer/FC", "fc", _FC),
        "final_layer/FC/biases": Target("fc.bias"),
    }
    if name in table:
        return table[name]
    if re.fullmatch(r"aux_\d+", top):
        aux = {
            **_weights("aux_logits/proj", "aux_head.conv1"),
            **_bn("aux_logits/aux_bn0", "aux_head.bn1"),
            **_weights("aux_logits/Conv", "aux_head.conv2"),
            **_bn("aux_logits/aux_bn1", "aux_head.bn2"),
            **_weights("aux_logits/FC", "aux_head.fc", _FC),
            "aux_logits/FC/biases": Target("aux_head.fc.bias"),
        }
        return aux.get(rest)
    if top not in cells:
        return None
    rule = _cell_rule(rest)
    if rule is None:
        return None
    scope, module = rule
    leaf = rest[len(scope) + 1 :]
    prefix = f"cells.{cells[top]}.{module}"
    if leaf in _BN:
        return Target(f"{prefix}.{_BN[leaf]}")
    if leaf == "depthwise_weights":
        return Target(f"{prefix}.depthwise.weight", _DEPTHWISE)
    if leaf == "pointwise_weights":
        return Target(f"{prefix}.pointwise.weight", _CONV)
    if leaf == "weights":
        return Target(f"{prefix}.weight", _CONV)
    return None


def nasnet_to_state_dict(model: nn.Module, variables: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Our state dict for ``model`` (NASNet-A or PNASNet-5) from a TF-slim checkpoint's variables.

    The auxiliary classifier's background row is dropped as the main classifier's is (by the loader) when the file
    has one class more than the model.
    """
    genotype = getattr(getattr(model, "genotype", None), "name", None)
    if genotype not in GENOTYPES:
        raise CheckpointMismatchError(
            f"TF-slim NASNet checkpoints hold NASNet-A or PNASNet-5 networks; {model.model_name!r} is "
            f"{genotype or 'neither'}"
        )
    if not any(n.startswith("cell_stem_") for n in variables):
        raise CheckpointMismatchError(
            f"the TF-slim checkpoint is no NASNet-A / PNASNet-5 network (no cell_stem_* variables; it holds "
            f"{', '.join(sorted(variables)[:3])}, ...)"
        )
    # NASNet-A checkpoints name their reductions reduction_cell_<r>; PNASNet-5 numbers every cell cell_<i>
    pnasnet = not any(n.startswith("reduction_cell_") for n in variables)
    if pnasnet != (genotype == "pnasnet5"):
        held, fits = ("PNASNet-5", "pnasnet5_large") if pnasnet else ("NASNet-A", "nasnet_a_mobile / nasnet_a_large")
        raise CheckpointMismatchError(
            f"the TF-slim checkpoint holds a {held} network (its cells are "
            f"{'cell_<i> only' if pnasnet else 'cell_<i> and reduction_cell_<r>'}), not {model.model_name!r}'s "
            f"{genotype}; load it into {fits}"
        )
    plan, skipped = targets(model, variables)
    if skipped:
        logger.info(
            "TF-slim checkpoint: not loading %d variables (training state; the aux head when the model has none): "
            "%s, ...",
            len(skipped),
            skipped[0],
        )
    out = {t.key: _t(variables[n] if t.perm is None else variables[n].transpose(t.perm)) for n, t in plan.items()}
    num = getattr(model, "num_classes", 0)
    for k in ("aux_head.fc.weight", "aux_head.fc.bias"):
        if k in out and out[k].shape[0] == num + 1:
            out[k] = out[k][1:]
    return out
