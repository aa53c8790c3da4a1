"""Keras applications HDF5 weights: Keras' own networks with random weights, written in the published legacy layout
(tests/keras_oracle.py, which also checks that Keras loads the file back), load with ``pretrained=<file>`` alone and
give Keras' logits (NHWC there, NCHW here) to 1e-5 of the largest logit.

The fast cases run Keras on its torch backend in one subprocess (MobileNet at all four widths and resolutions,
Xception and DenseNet-121 at small sides); NASNet needs the jax backend (Keras refuses torch for it) and is slow.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones

ORACLE = Path(__file__).with_name("keras_oracle.py")
TOL = 1e-5

# keras_oracle case -> our model
FAST = {
    "mobilenet:0.25:224": "mobilenet_v1_x0_25",
    "mobilenet:0.5:192": "mobilenet_v1_x0_5",
    "mobilenet:0.75:160": "mobilenet_v1_x0_75",
    "mobilenet:1.0:128": "mobilenet_v1_x1_0",
    "xception:112": "xception",  # 55 -> 53 -> 27 -> 14 (even: block3's 'SAME' pool pads bottom/right only) -> 7 -> 4
    "densenet121:64": "densenet121",
}

needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec("h5py") is None,
    reason="the Keras oracle needs keras and h5py (pip install 'cnn-backbones[keras]')",
)


def run_oracle(out: Path, cases: list[str], backend: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ORACLE), str(out), *cases], env=env, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras")
    run_oracle(out, list(FAST), "torch")
    return out


def rel_error(files: Path, case: str, name: str, **options) -> tuple[float, torch.nn.Module]:
    stem = files / case.replace(":", "_")
    data = np.load(f"{stem}.npz")
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    model = backbones.create_model(name, pretrained=f"{stem}.h5", channels_last=False, **options).eval()
    with torch.no_grad():
        got = model(x).numpy()
    want = data["y"]
    return float(np.abs(got - want).max() / np.abs(want).max()), model


@needs_keras
@pytest.mark.parametrize("case,name", list(FAST.items()), ids=list(FAST))
def test_keras_h5_gives_keras_outputs(keras_files, case, name):
    err, model = rel_error(keras_files, case, name)
    assert model.reference == "tf"  # chosen from the file alone
    print(f"{case}: max |ours - keras| / max |keras| = {err:.2e}")
    assert err <= TOL


@needs_keras
@pytest.mark.parametrize("case,name", [("mobilenet:0.5:192", "mobilenet_v1_x0_5"), ("xception:112", "xception")])
def test_keras_numerics_matter(keras_files, case, name, caplog):
    """The comparison above is not vacuous: the timm twin's numerics (symmetric padding and pools, eps 1e-5) miss
    Keras' logits with the very same weights, and building them is warned about."""
    assert rel_error(keras_files, case, name, reference="timm")[0] > 20 * TOL
    assert "outputs will differ from the source's network" in caplog.text


@needs_keras
def test_keras_file_of_another_model_names_the_source(keras_files):
    detected = r"detected: Keras applications HDF5, reference='tf'\) does not fit"
    with pytest.raises(backbones.CheckpointMismatchError, match=detected + r" 'mobilenet_v1_x1_0'.*shape mismatch"):
        backbones.create_model("mobilenet_v1_x1_0", pretrained=str(keras_files / "mobilenet_0.25_224.h5"))
    with pytest.raises(backbones.CheckpointMismatchError, match=detected + r" 'densenet121'.*unexpected.*block"):
        backbones.create_model("densenet121", pretrained=str(keras_files / "xception_112.h5"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="Keras' NASNet needs the jax backend (jax[cpu])")
@needs_keras
@pytest.mark.parametrize(
    "case,name", [("nasnet_mobile:224", "nasnet_a_mobile"), ("nasnet_large:331", "nasnet_a_large")]
)
def test_keras_nasnet(tmp_path, case, name):
    """Keras 3 NASNetMobile / NASNetLarge (jax backend): reference="keras" reproduces them. The loader's choice for
    the file is reference="tf", the network the weights were published with (keras-applications' NASNet pools with
    TF 'SAME', as TF-slim; see test_weights_cadene.py for that oracle): Keras 3 zero-pads its stride-2 reduction
    pools instead, which the comparison shows."""
    run_oracle(tmp_path, [case], "jax")
    err, model = rel_error(tmp_path, case, name, reference="keras")
    print(f"{case} reference='keras': {err:.2e}")
    assert model.reference == "keras" and err <= TOL
    err_tf, model = rel_error(tmp_path, case, name)
    print(f"{case} reference='tf' (the loader's choice) vs Keras 3: {err_tf:.2e}")
    assert model.reference == "tf" and err_tf > 100 * TOL
