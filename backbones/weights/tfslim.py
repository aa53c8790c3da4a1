"""TF-slim checkpoints (``model.ckpt.index`` + ``.data-*``), read with TensorFlow (the optional extra ``tf``).

Accepted as published (a ``.tgz`` / ``.tar.gz``, extracted next to it on first use), as the extracted directory or
as the checkpoint prefix. Variable names (TF-slim ``nets/mobilenet_v1.py``): ``MobilenetV1/Conv2d_0/weights``,
``MobilenetV1/Conv2d_<i>_depthwise/depthwise_weights``, ``MobilenetV1/Conv2d_<i>_pointwise/weights``, each with
``.../BatchNorm/{gamma,beta,moving_mean,moving_variance}`` (``gamma`` absent where the checkpoint was trained with
``scale=False``: 1), and ``MobilenetV1/Logits/Conv2d_1c_1x1/{weights,biases}`` (1001 classes).
"""

from __future__ import annotations

import glob
import os
import re
import tarfile

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import move_into_place
from .core import CheckpointMismatchError
from .keras import _t

_ARCHIVES = (".tar.gz", ".tgz", ".tar")


def is_checkpoint(path: str) -> bool:
    """A TF-slim archive, a directory holding ``*.index``, a ``.index`` file or a prefix with one next to it."""
    if path.endswith(_ARCHIVES) and os.path.isfile(path):  # megvii's ".pth.tar" files are torch zips, not tars
        if not tarfile.is_tarfile(path):
            return False
        with tarfile.open(path) as tar:
            return any(name.endswith(".index") for name in tar.getnames())
    if os.path.isdir(path):
        return bool(glob.glob(os.path.join(path, "*.index")))
    return path.endswith(".index") or os.path.isfile(path + ".index")


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ModuleNotFoundError(
            "reading TF-slim checkpoints needs TensorFlow: pip install 'cnn-backbones[tf]' (or pip install "
            "tensorflow-cpu)"
        ) from e
    return tf


def _prefix(path: str, member: str | None) -> str:
    """The checkpoint prefix inside ``path`` (archives are extracted next to themselves, once)."""
    if path.endswith(_ARCHIVES):
        target = re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", path)
        if not os.path.isdir(target):
            tmp = f"{target}.{os.getpid()}.partial"
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
            move_into_place(tmp, target)  # the extracted folder appears whole or not at all
        path = target
    if os.path.isdir(path):
        indexes = sorted(glob.glob(os.path.join(path, "**", "*.index"), recursive=True))
        if member is not None:
            indexes = [i for i in indexes if os.path.basename(i).startswith(member)] or indexes
        if not indexes:
            raise CheckpointMismatchError(f"{path!r} holds no TF checkpoint (no '<prefix>.index' file)")
        return indexes[0].removesuffix(".index")
    return path.removesuffix(".index")


class Reader:
    """The variables of one TF-slim checkpoint, converted onto a model on demand."""

    def __init__(self, path: str, member: str | None = None) -> None:
        self.path = path
        self.member = member

    def variables(self) -> dict[str, np.ndarray]:
        tf = _tensorflow()
        reader = tf.train.load_checkpoint(_prefix(self.path, self.member))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}

    def to_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        family = model.card.family
        if family != "mobilenet":
            raise NotImplementedError(
                f"TF-slim checkpoints are mapped for MobileNet v1 only so far; for {model.model_name!r} use the "
                f"Cadene or Keras port of the same checkpoint (pretrained='cadene' / 'keras')"
            )
        return _mobilenet(model, self.variables())


def _bn(v: dict[str, np.ndarray], scope: str, prefix: str, channels: int) -> dict[str, Tensor]:
    gamma = v.get(f"{scope}/BatchNorm/gamma", np.ones(channels, np.float32))
    out = {f"{prefix}.weight": _t(gamma)}
    for theirs, ours in (("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
        out[f"{prefix}.{ours}"] = _t(v[f"{scope}/BatchNorm/{theirs}"])
    return out


def _mobilenet(model: nn.Module, v: dict[str, np.ndarray]) -> dict[str, Tensor]:
    s = "MobilenetV1"
    w = v[f"{s}/Conv2d_0/weights"]
    out = {"body.stem.conv.weight": _t(w.transpose(3, 2, 0, 1))}
    out.update(_bn(v, f"{s}/Conv2d_0", "body.stem.bn", w.shape[3]))
    for i in range(1, len(model.body)):
        dw = v[f"{s}/Conv2d_{i}_depthwise/depthwise_weights"]  # (3, 3, C, 1)
        out[f"body.block{i}.dw.conv.weight"] = _t(dw.transpose(2, 3, 0, 1).reshape(-1, 1, *dw.shape[:2]))
        out.update(_bn(v, f"{s}/Conv2d_{i}_depthwise", f"body.block{i}.dw.bn", dw.shape[2]))
        pw = v[f"{s}/Conv2d_{i}_pointwise/weights"]
        out[f"body.block{i}.pw.conv.weight"] = _t(pw.transpose(3, 2, 0, 1))
        out.update(_bn(v, f"{s}/Conv2d_{i}_pointwise", f"body.block{i}.pw.bn", pw.shape[3]))
    logits = v[f"{s}/Logits/Conv2d_1c_1x1/weights"]  # (1, 1, C, classes)
    out["fc.weight"] = _t(logits[0, 0].T)
    out["fc.bias"] = torch.as_tensor(v[f"{s}/Logits/Conv2d_1c_1x1/biases"], dtype=torch.float32)
    return out
