"""Export of every registered backbone: torch.export, torch.jit.trace and ONNX (both exporters, run in onnxruntime),
each file loaded back and compared with eager PyTorch relative to the output scale; and the refusal when they differ.

An export costs 1-60 s on 2 cores (the dynamo ONNX exporter and deep NASNets the most), so the default suite exports
mobilenet_v1_x0_25's feature extractor in every format and a one-cell-per-stage NASNet-A (the generic cell, whose eager
fast paths an exporter must not see) by trace and torch.export; ``-m slow`` runs every registered model, classifier
and feature extractor, in every format.
"""

from __future__ import annotations

import os

import pytest
import torch

import backbones
from backbones.export import (
    RTOL,
    ExportMismatchError,
    example_inputs,
    export_model,
    fixed_devices,
    relative_error,
    verify_export,
)

#: (format, ONNX exporter) -> test id
FORMATS = {
    ("exported-program", None): "exported-program",
    ("torchscript", None): "torchscript",
    ("onnx", False): "onnx-legacy",
    ("onnx", True): "onnx-dynamo",
}
FAST = "mobilenet_v1_x0_25"


def _need(fmt: str, dynamo: bool | None) -> None:
    """ONNX tests need the optional runtime (and onnxscript for the dynamo exporter): skip, saying so, without."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime: pip install 'cnn-backbones[export]'")
        if dynamo:
            pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")


def _params():
    out = []
    for name in backbones.list_models():
        for features in (True, False):
            for (fmt, dynamo), fid in FORMATS.items():
                marks = [] if features and name == FAST else [pytest.mark.slow]
                mode = "features" if features else "classifier"
                out.append(pytest.param(name, features, fmt, dynamo, id=f"{name}-{mode}-{fid}", marks=marks))
    return out


def _side(name: str) -> int:
    return 64 if backbones.model_card(name).detection_ready else 32


@pytest.mark.parametrize("name,features,fmt,dynamo", _params())
def test_export_matches_eager(name, features, fmt, dynamo, tmp_path):
    _need(fmt, dynamo)
    model = backbones.create_model(name, features_only=features, num_classes=10)
    path = tmp_path / f"{name}.{fmt}"
    report = export_model(model, path, fmt, input_size=_side(name), dynamo=bool(dynamo))
    print(report.summary())  # the errors, in the report of a -rA run (docs/deployment.md's table)
    assert path.is_file() and report.path == path
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left
    assert report.outputs == (list(model.out_features) if features else ["logits"])
    assert max(report.errors.values()) <= RTOL
    assert [s[0] for s in report.inputs] == [2, 3]  # dynamic batch, verified at a second batch size
    if fmt == "torchscript":
        assert fixed_devices(path) == 0, "the traced graph pins a device: the file would run on the CPU only"


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("exported-program", marks=pytest.mark.slow)])
def test_nasnet_cells_export_as_eager(fmt, tmp_path):
    """NASNet-A's generic cell (normal and reduction cells, ImageNet stem) at one cell per stage: the graph an exporter
    records is eager's at every batch size, and a trace pins no device."""
    model = backbones.create_model("nasnet_a_mobile", features_only=True, num_cells=1)
    report = export_model(model, tmp_path / "m", fmt, input_size=64)
    assert max(report.errors.values()) <= RTOL
    if fmt == "torchscript":
        assert fixed_devices(tmp_path / "m") == 0, "the traced graph pins a device: the file would run on the CPU only"


def test_relative_error_is_scaled_by_the_output():
    ref = torch.tensor([1e4, -2e4, 3.0])
    assert relative_error(ref, ref + 1e-2) == pytest.approx(1e-2 / 2e4)
    assert relative_error(torch.zeros(3), torch.full((3,), 1e-3)) == pytest.approx(1e-3)  # all zero: absolute
    assert relative_error(ref, torch.tensor([1e4, float("nan"), 3.0])) == float("inf")
    assert relative_error(ref, ref[:2]) == float("inf")


def _small(features: bool = True):
    """mobilenet_v1_x0_25, its feature extractor up to c3: fast exports."""
    if features:
        return backbones.create_model(FAST, features_only=True, out_features=("c2", "c3"))
    return backbones.create_model(FAST, num_classes=10)


def test_onnx_file_runs_in_onnxruntime_as_eager_and_a_corrupted_one_is_refused(tmp_path):
    """The written file, run by onnxruntime directly, gives eager's logits; the same file with one weight scaled by
    1 % (an export bug the runtime would not notice) is refused, naming the output and its error."""
    _need("onnx", False)
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    model = _small(features=False).eval()
    path = tmp_path / "m.onnx"
    export_model(model, path, "onnx", input_size=64, dynamo=False)
    x = torch.randn(4, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=RTOL * ref.abs().max().item())

    proto = onnx.load(str(path))
    convs = [i for i in proto.graph.initializer if len(i.dims) == 4]
    w = numpy_helper.to_array(convs[-1])
    convs[-1].CopyFrom(numpy_helper.from_array((w * np.float32(1.01)).astype(w.dtype), convs[-1].name))
    onnx.save(proto, str(path))
    with pytest.raises(ExportMismatchError, match=r"output 'logits' .* > bound 1e-04") as err:
        verify_export(path, "onnx", model, example_inputs([2], 64))
    assert err.value.output == "logits" and err.value.error > RTOL and err.value.bound == RTOL


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript"])
def test_disagreeing_exporter_leaves_no_file(fmt, tmp_path, monkeypatch):
    """The exporter's file runs, but one level comes out wrong: the error names it and its error; nothing is written."""
    import backbones.export as ex

    load = ex.load_runner

    def wrong_c3(path, format):
        run = load(path, format)

        def bad(x):
            out = run(x)
            out[1] = out[1] * (1 + 3e-4)  # c3, 3x the bound
            return out

        return bad

    monkeypatch.setattr(ex, "load_runner", wrong_c3)
    path = tmp_path / "m.out"
    refused = r"export to .*m\.out.* output 'c3' disagrees .* = 3\.0\d*e-04 > bound 1e-04; nothing was written"
    with pytest.raises(ExportMismatchError, match=refused) as err:
        export_model(_small(), path, fmt, input_size=32)
    assert err.value.output == "c3" and err.value.error == pytest.approx(3e-4, rel=1e-2)
    assert os.listdir(tmp_path) == []


def test_graph_that_depends_on_grad_mode_is_not_traced(tmp_path):
    """A forward with an inference-only path (an eager fast path) traces to two graphs: refused, nothing written."""

    class FastPath(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.relu_() if not torch.is_grad_enabled() else y.relu()

    with pytest.raises(RuntimeError, match="differs from the one traced without"):
        export_model(FastPath(), tmp_path / "m.pt", "torchscript", input_size=16)
    assert os.listdir(tmp_path) == []


def test_bad_arguments_fail_before_work(tmp_path):
    model = _small()
    with pytest.raises(ValueError, match=r"format='onxx' is not valid \(did you mean 'onnx'\?\)"):
        export_model(model, tmp_path / "m", "onxx")
    with pytest.raises(ValueError, match="batch_size=0 is not valid"):
        export_model(model, tmp_path / "m", "torchscript", batch_size=0)
    assert os.listdir(tmp_path) == []


def test_static_batch_is_verified_at_its_batch_only(tmp_path):
    model = _small()
    report = export_model(model, tmp_path / "m.pt2", "exported-program", input_size=32, dynamic_batch=False)
    assert [s[0] for s in report.inputs] == [2]
    with pytest.raises(Exception, match=r"(?i)shape|size|guard|expected"):  # the program fixed batch 2
        verify_export(tmp_path / "m.pt2", "exported-program", model, example_inputs([3], 32))
