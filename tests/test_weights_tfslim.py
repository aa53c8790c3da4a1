"""TF-slim checkpoints (needs tensorflow, the ``tf`` extra): a checkpoint with TF-slim's variable names
(``research/slim/nets/mobilenet_v1.py``: ``MobilenetV1/Conv2d_<i>_{depthwise,pointwise}/...``, BatchNorm with
gamma/beta/moving statistics, the 1001-class ``Logits/Conv2d_1c_1x1``), packed as the published tarballs are, loads
with ``pretrained=<tarball>`` and gives the outputs of Keras' MobileNet with the same weights (Keras' MobileNet is
TF-slim's network; the Keras oracle is tests/keras_oracle.py). Slow: TensorFlow takes long to import."""

from __future__ import annotations

import importlib.util
import tarfile

import numpy as np
import pytest
import torch
from test_weights_keras import needs_keras, run_oracle

import backbones

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs tensorflow (the 'tf' extra)"),
]


def keras_to_slim(h5_path: str) -> dict[str, np.ndarray]:
    """The Keras file's arrays under TF-slim's names (Keras conv_dw_<i> / conv_pw_<i> are slim's Conv2d_<i>)."""
    from backbones.weights.keras import read_h5  # the reader tests/test_weights_keras.py checks against Keras

    slim = {}
    for layer, w in read_h5(h5_path).items():
        if layer == "conv_preds":
            k, b = w["kernel"], w["bias"]  # (1, 1, C, 1000): prepend TF's background class
            background = np.random.default_rng(0).normal(0, 0.1, k[..., :1].shape).astype(k.dtype)
            slim["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = np.concatenate([background, k], -1)
            slim["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = np.concatenate([np.zeros(1, b.dtype), b])
            continue
        scope = "Conv2d_0" if layer in ("conv1", "conv1_bn") else None
        if layer.startswith(("conv_dw_", "conv_pw_")):
            scope = f"Conv2d_{layer.split('_')[2]}_{'depthwise' if layer.startswith('conv_dw') else 'pointwise'}"
        if "gamma" in w:
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                slim[f"MobilenetV1/{scope}/BatchNorm/{name}"] = w[name]
        elif "depthwise_kernel" in w:
            slim[f"MobilenetV1/{scope}/depthwise_weights"] = w["depthwise_kernel"]
        else:
            slim[f"MobilenetV1/{scope}/weights"] = w["kernel"]
    return slim


@needs_keras
def test_tf_slim_mobilenet_tarball(tmp_path):
    import tensorflow as tf

    run_oracle(tmp_path, ["mobilenet:0.5:160"], "torch")
    slim = keras_to_slim(str(tmp_path / "mobilenet_0.5_160.h5"))
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    names = sorted(slim)
    tf.raw_ops.SaveV2(
        prefix=str(ckpt_dir / "mobilenet_v1_0.5_160.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(slim[n]) for n in names],
    )
    tarball = tmp_path / "mobilenet_v1_0.5_160.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for p in ckpt_dir.iterdir():
            tar.add(p, arcname=p.name)

    model = backbones.create_model("mobilenet_v1_x0_5", pretrained=str(tarball)).eval()
    assert model.reference == "tf"
    data = np.load(tmp_path / "mobilenet_0.5_160.npz")
    with torch.no_grad():
        got = model(torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()).numpy()
    err = float(np.abs(got - data["y"]).max() / np.abs(data["y"]).max())
    print(f"TF-slim MobileNet 0.5 at 160 px vs Keras: {err:.2e}")
    assert err <= 1e-5
