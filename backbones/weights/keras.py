"""Keras applications HDF5 weight files as published (the legacy layer-name layout), mapped onto our modules.

Layout (Keras 2 ``save_weights`` to HDF5, the files under ``storage.googleapis.com/tensorflow/keras-applications``):
the root (or a ``model_weights`` group for whole-model saves) has the attribute ``layer_names``; each layer is a group
with the attribute ``weight_names`` (``"conv1/kernel:0"``, ...) naming its datasets in order. Names with a ``/``
(DenseNet's ``conv1/conv``) are nested groups. Kernels are TensorFlow's HWIO (Conv2D ``(kh, kw, in, out)``,
DepthwiseConv2D ``(kh, kw, in, 1)``, Dense ``(in, out)``); BN weights are ``gamma, beta, moving_mean,
moving_variance``. ``h5py`` is imported only here, when such a file is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .core import CheckpointMismatchError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

Layers = dict[str, dict[str, np.ndarray]]  # layer name ("/" -> "_") -> short weight name -> array


def is_hdf5(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == HDF5_MAGIC


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise ModuleNotFoundError(
            "reading Keras HDF5 weights needs h5py: pip install 'cnn-backbones[keras]' (or pip install h5py)"
        ) from e
    return h5py


def _names(attr: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in attr]


def read_h5(path: str | os.PathLike) -> Layers:
    """The layers of a legacy Keras weights file, in file order, each ``{short name: array}`` (``kernel``,
    ``depthwise_kernel``, ``gamma``, ...). Layer names have ``/`` replaced by ``_`` (Keras 2 DenseNet's
    ``conv1/conv`` is Keras 3's ``conv1_conv``).

    Raises:
        CheckpointMismatchError: for an HDF5 file that is not in the legacy layer-name layout.
    """
    h5py = _h5py()
    out: Layers = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            hint = " (Keras 3 '.weights.h5' files are not the published layout)" if "vars" in f or "layers" in f else ""
            raise CheckpointMismatchError(
                f"{os.fspath(path)!r} is HDF5 but not a Keras applications weights file: no 'layer_names' attribute"
                f"{hint}"
            )
        for layer in _names(group.attrs["layer_names"]):
            g = group[layer]
            weights = {}
            for wname in _names(g.attrs.get("weight_names", [])):
                short = wname.rsplit("/", 1)[-1].split(":")[0]
                weights[short] = np.asarray(g[wname])
            if weights:
                out[layer.replace("/", "_")] = weights
    return out


# ---- array conversion ----------------------------------------------------------------------------------------------
def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def conv(w: dict[str, np.ndarray], prefix: str, depthwise: bool = False) -> dict[str, Tensor]:
    """A Conv2D / DepthwiseConv2D layer as ``nn.Conv2d`` weights (``(kh, kw, in, out|1)`` -> ``(out, in, kh, kw)``)."""
    k = w.get("depthwise_kernel", w.get("kernel"))
    if k is None:
        raise CheckpointMismatchError(f"Keras layer for {prefix!r} has no kernel (weights: {', '.join(w)})")
    if k.ndim == 2:  # Dense (in, out)
        k = k.T
    else:
        k = k.transpose(2, 3, 0, 1) if depthwise else k.transpose(3, 2, 0, 1)
        if depthwise:
            k = k.reshape(-1, 1, *k.shape[2:])  # (in * multiplier, 1, kh, kw)
    out = {f"{prefix}.weight": _t(k)}
    if "bias" in w:
        out[f"{prefix}.bias"] = _t(w["bias"])
    return out


def separable(w: dict[str, np.ndarray], prefix: str) -> dict[str, Tensor]:
    """A SeparableConv2D layer as our ``SeparableConv2d`` (``depthwise``, ``pointwise``)."""
    out = conv({"depthwise_kernel": w["depthwise_kernel"]}, f"{prefix}.depthwise", depthwise=True)
    out.update(conv({"kernel": w["pointwise_kernel"]}, f"{prefix}.pointwise"))
    return out


def bn(w: dict[str, np.ndarray], prefix: str) -> dict[str, Tensor]:
    names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    missing = [k for k in names if k not in w]
    if missing:
        raise CheckpointMismatchError(f"Keras BatchNormalization for {prefix!r} lacks {', '.join(missing)}")
    return {f"{prefix}.{ours}": _t(w[theirs]) for theirs, ours in names.items()}


def _is_bn(w: dict[str, np.ndarray]) -> bool:
    return "moving_variance" in w


# ---- per family ----------------------------------------------------------------------------------------------------
def _mobilenet(model: nn.Module, layers: Layers) -> dict[str, Tensor]:
    """keras.applications.MobileNet: conv1(_bn), conv_dw_<i>(_bn), conv_pw_<i>(_bn), conv_preds."""
    out: dict[str, Tensor] = {}
    for name, w in layers.items():
        if name == "conv1":
            out.update(conv(w, "body.stem.conv"))
        elif name == "conv1_bn":
            out.update(bn(w, "body.stem.bn"))
        elif m := re.fullmatch(r"conv_(dw|pw)_(\d+)(_bn)?", name):
            prefix = f"body.block{m[2]}.{m[1]}"
            out.update(bn(w, f"{prefix}.bn") if m[3] else conv(w, f"{prefix}.conv", depthwise=m[1] == "dw"))
        elif name == "conv_preds":  # a 1x1 conv classifier (1, 1, C, K): our Linear (K, C)
            out.update(conv({**w, "kernel": w["kernel"][0, 0]}, "fc"))
        else:
            out[f"<unmapped Keras layer {name}>"] = torch.empty(0)
    return out


def _xception(model: nn.Module, layers: Layers) -> dict[str, Tensor]:
    """keras.applications.Xception: block1_conv<j>(_bn), block<b>_sepconv<j>(_bn) for b = 2..14, four unnamed residual
    Conv2D + BN (Keras numbers them as it pleases; told apart by their widths), predictions."""
    out: dict[str, Tensor] = {}
    # our residual blocks block1..block12 = Keras block2..block13; block14 is our exit flow
    skips = {m.skip.out_channels: n for n, m in model.body.named_children() if getattr(m, "skip", None) is not None}
    for name, w in layers.items():
        if m := re.fullmatch(r"block1_conv(\d)(_bn)?", name):
            out.update(bn(w, f"body.stem.bn{m[1]}") if m[2] else conv(w, f"body.stem.conv{m[1]}"))
        elif m := re.fullmatch(r"block14_sepconv(\d)(_bn)?", name):
            j = int(m[1]) + 2  # exit flow conv3 / conv4
            out.update(bn(w, f"body.exit.bn{j}") if m[2] else separable(w, f"body.exit.conv{j}"))
        elif m := re.fullmatch(r"block(\d+)_sepconv(\d)(_bn)?", name):
            block = f"block{int(m[1]) - 1}"
            rep = model.body[block].rep
            kind = nn.BatchNorm2d if m[3] else type(model.body.exit.conv3)
            index = [i for i, c in enumerate(rep) if isinstance(c, kind)][int(m[2]) - 1]
            prefix = f"body.{block}.rep.{index}"
            out.update(bn(w, prefix) if m[3] else separable(w, prefix))
        elif name == "predictions" or (w.get("kernel") is not None and w["kernel"].ndim == 2):
            out.update(conv(w, "fc"))
        elif _is_bn(w) and w["gamma"].shape[0] in skips:
            out.update(bn(w, f"body.{skips[w['gamma'].shape[0]]}.skipbn"))
        elif "kernel" in w and w["kernel"].shape[:2] == (1, 1) and w["kernel"].shape[3] in skips:
            out.update(conv(w, f"body.{skips[w['kernel'].shape[3]]}.skip"))
        else:
            out[f"<unmapped Keras layer {name}>"] = torch.empty(0)
    return out


def _densenet(model: nn.Module, layers: Layers) -> dict[str, Tensor]:
    """keras.applications.DenseNet*: conv1_conv/bn, conv<b>_block<l>_{0_bn,1_conv,1_bn,2_conv}, pool<b>_{bn,conv},
    bn, and the Dense classifier (``fc1000`` in keras-applications, ``predictions`` in Keras 3)."""
    parts = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}
    out: dict[str, Tensor] = {}
    for name, w in layers.items():
        if name in ("conv1_conv", "conv1_bn"):
            out.update(conv(w, "body.stem.conv") if name.endswith("conv") else bn(w, "body.stem.bn"))
        elif m := re.fullmatch(r"conv(\d)_block(\d+)_(\d_(?:bn|conv))", name):
            prefix = f"body.block{int(m[1]) - 1}.layer{m[2]}.{parts[m[3]]}"
            out.update(bn(w, prefix) if _is_bn(w) else conv(w, prefix))
        elif m := re.fullmatch(r"pool(\d)_(bn|conv)", name):
            prefix = f"body.transition{int(m[1]) - 1}.{'norm' if m[2] == 'bn' else 'conv'}"
            out.update(bn(w, prefix) if m[2] == "bn" else conv(w, prefix))
        elif name == "bn":
            out.update(bn(w, "body.final.norm"))
        elif w.get("kernel") is not None and w["kernel"].ndim == 2:
            out.update(conv(w, "classifier"))
        else:
            out[f"<unmapped Keras layer {name}>"] = torch.empty(0)
    return out


CONVERTERS: dict[str, Callable[[nn.Module, Layers], dict[str, Tensor]]] = {
    "mobilenet": _mobilenet,
    "xception": _xception,
    "densenet": _densenet,
}


def to_state_dict(model: nn.Module, layers: Layers) -> dict[str, Tensor]:
    """Our state dict from the layers of a Keras file for ``model`` (layers we cannot place keep a marker key, so the
    checked load names them)."""
    family = model.card.family
    if family == "nas":
        from .keras_nasnet import nasnet_to_state_dict

        return nasnet_to_state_dict(model, layers)
    if family not in CONVERTERS:
        raise CheckpointMismatchError(
            f"Keras HDF5 weights exist for MobileNet, Xception, DenseNet and NASNet-A; {model.model_name!r} is a "
            f"{family} model"
        )
    return CONVERTERS[family](model, layers)
