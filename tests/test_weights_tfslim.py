"""TF-slim checkpoints written by TensorFlow (these tests need it as writer and oracle; loading does not): a checkpoint
with TF-slim's variable names (``research/slim/nets/mobilenet_v1.py``: ``MobilenetV1/Conv2d_<i>_{depthwise,pointwise}
/...``, BatchNorm with gamma/beta/moving statistics, the 1001-class ``Logits/Conv2d_1c_1x1``), packed as the published
tarballs are, loads with ``pretrained=<tarball>`` and gives the outputs of Keras' MobileNet with the same weights
(Keras' MobileNet is TF-slim's network; the Keras oracle is tests/keras_oracle.py); the TensorFlow-free checkpoint
reader reads what TensorFlow reads. NASNet-A / PNASNet-5: tests/test_weights_tfslim_nasnet.py. Slow: TensorFlow takes
long to import."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

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


def test_tf_checkpoint_reader_matches_tensorflow(tmp_path):
    """backbones' TensorFlow-free reader against tf.train.load_checkpoint: every dtype TensorFlow saves variables in,
    scalars and empty tensors, and enough long, prefix-sharing names for several table blocks and restart points;
    then the NASNet fixtures of tests/data/tfslim (written by tf.compat.v1.train.Saver)."""
    import tensorflow as tf

    from backbones.weights.tf_checkpoint import read_variables

    rng = np.random.default_rng(0)
    tensors = {
        f"cell_{i % 7}/comb_iter_{i % 5}/left/separable_3x3_{i}/depthwise_weights": tf.constant(
            rng.normal(size=(3, 3, i % 4 + 1, 1)).astype(np.float32)
        )
        for i in range(300)
    }
    tensors.update(
        global_step=tf.constant(np.int64(-123456789012)),
        f64=tf.constant(rng.normal(size=(2, 3))),
        i32=tf.constant(rng.integers(-(2**31), 2**31 - 1, (5,), dtype=np.int32)),
        i16=tf.constant(rng.integers(-(2**15), 2**15 - 1, (4,), dtype=np.int16)),
        i8=tf.constant(rng.integers(-128, 127, (4,), dtype=np.int8)),
        u8=tf.constant(rng.integers(0, 255, (2, 2), dtype=np.uint8)),
        f16=tf.constant(rng.normal(size=(7,)).astype(np.float16)),
        bf16=tf.cast(tf.constant(rng.normal(size=(3, 2)).astype(np.float32)), tf.bfloat16),
        flags=tf.constant(np.array([True, False, True])),
        empty=tf.constant(np.zeros((0, 3), np.float32)),
        names=tf.constant([b"a", b"bc"]),
    )
    prefix = str(tmp_path / "model.ckpt")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])  # fmt: skip
    fixtures = []
    for tarball in sorted((Path(__file__).parent / "data" / "tfslim").glob("*.tar.gz")):
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp_path / tarball.name, filter="data")
        fixtures.append(str(tmp_path / tarball.name / "model.ckpt"))
    assert fixtures, "tests/data/tfslim holds the NASNet fixtures"
    for p in [prefix, *fixtures]:
        ours = read_variables(p)
        reader = tf.train.load_checkpoint(p)
        dtypes = reader.get_variable_to_dtype_map()
        expected = {n for n, d in dtypes.items() if d != tf.string}
        assert set(ours) == expected, p  # string tensors are no weights: skipped
        for name in expected:
            theirs = reader.get_tensor(name)
            if dtypes[name] == tf.bfloat16:
                theirs = theirs.astype(np.float32)
            assert ours[name].dtype == theirs.dtype and ours[name].shape == theirs.shape, name
            np.testing.assert_array_equal(ours[name], theirs, err_msg=name)
