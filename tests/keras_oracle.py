"""Keras oracle for tests/test_weights_keras.py, run in a subprocess with KERAS_BACKEND set before keras is imported.

    KERAS_BACKEND=torch python tests/keras_oracle.py OUT_DIR mobilenet:0.25:128 xception:128 densenet121:64 ...

For each case it builds the ``keras.applications`` network with random weights (``weights=None``, logits out) and
random BatchNorm statistics, writes them as the published files are laid out (Keras 2 ``save_weights`` HDF5: root
attribute ``layer_names``, one group per layer with a ``weight_names`` attribute, Keras 2 layer and weight names:
DenseNet's ``conv1/conv``, Xception's ``conv2d_1``, ``depthwise_kernel``, ...), checks that Keras itself loads the
file back into a fresh network with identical outputs (which proves the layout), and saves a fixed NHWC input and
Keras' logits as ``<case>.npz`` next to ``<case>.h5``.
"""

from __future__ import annotations

import os
import sys

import h5py
import keras  # KERAS_BACKEND is set by the caller, before this import
import numpy as np

APPS = keras.applications
# Keras 2 short names of each layer class's weights, in the order of ``layer.weights``
_WEIGHT_NAMES = {
    "Conv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "DepthwiseConv2D": ("depthwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def build(case: str):
    kind, *args = case.split(":")
    if kind == "mobilenet":
        alpha, side = float(args[0]), int(args[1])
        return APPS.MobileNet(input_shape=(side, side, 3), alpha=alpha, weights=None, classifier_activation=None), side
    side = int(args[0])
    ctor = {
        "xception": APPS.Xception,
        "densenet121": APPS.DenseNet121,
        "densenet169": APPS.DenseNet169,
        "nasnet_mobile": APPS.NASNetMobile,
        "nasnet_large": APPS.NASNetLarge,
    }[kind]
    return ctor(input_shape=(side, side, 3), weights=None, classifier_activation=None), side


def published_names(model) -> dict[str, str]:
    """Keras 3 layer name -> the name the published (Keras 2) file uses."""
    names = {}
    counts = {"Conv2D": 0, "BatchNormalization": 0}
    for layer in model.layers:
        cls = type(layer).__name__
        name = layer.name
        if model.name.startswith("xception") and cls in counts and not name.startswith("block"):
            counts[cls] += 1  # Keras 2 numbered the unnamed residual layers from 1
            name = f"{'conv2d' if cls == 'Conv2D' else 'batch_normalization'}_{counts[cls]}"
        if model.name.startswith("densenet"):
            name = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}.get(name, name)
            name = "fc1000" if name == "predictions" else name
        names[layer.name] = name
    return names


def randomize(model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.weights[0].shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.75, 1.25, c).astype("float32"),
                    rng.normal(0, 0.1, c).astype("float32"),
                    rng.normal(0, 0.1, c).astype("float32"),
                    rng.uniform(0.75, 1.25, c).astype("float32"),
                ]
            )
        elif type(layer).__name__ == "Dense":
            k, b = layer.get_weights()
            layer.set_weights([k, rng.normal(0, 0.1, b.shape).astype("float32")])


def write_legacy_h5(model, path: str) -> None:
    names = published_names(model)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [names[layer.name].encode("utf8") for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            name = names[layer.name]
            g = f.require_group(name)
            short = _WEIGHT_NAMES.get(type(layer).__name__, ())
            values = layer.get_weights()
            if len(values) > len(short):
                raise RuntimeError(f"{layer.name}: {len(values)} weights, names known for {len(short)}")
            wnames = [f"{name}/{s}:0" for s in short[: len(values)]]
            g.attrs["weight_names"] = [w.encode("utf8") for w in wnames]
            for w, v in zip(wnames, values):
                g.create_dataset(w, data=v)


def main(out: str, cases: list[str]) -> None:
    rng = np.random.default_rng(0)
    for case in cases:
        model, side = build(case)
        randomize(model, rng)
        stem = os.path.join(out, case.replace(":", "_"))
        write_legacy_h5(model, stem + ".h5")
        x = rng.normal(0, 1, (2, side, side, 3)).astype("float32")
        y = keras.ops.convert_to_numpy(model(x, training=False))
        again, _ = build(case)
        again.load_weights(stem + ".h5")  # Keras' own legacy HDF5 reader: proves the layout
        y2 = keras.ops.convert_to_numpy(again(x, training=False))
        if not np.array_equal(y, y2):
            raise RuntimeError(f"{case}: Keras reloads the written file with other outputs")
        np.savez(stem + ".npz", x=x, y=y)
        print(case, "ok", y.shape, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
