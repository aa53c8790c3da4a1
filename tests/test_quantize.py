"""int8 post-training quantisation (torchao pt2e, x86 quantiser): int8 weights, outputs within int8 rounding of the
float model, the oneDNN lowering computing the reference graph, the .pt2 round trip and the verified ONNX file.
Accuracy on digits of trained models: docs/deployment.md (tools/quantize.py); the tool on a trained checkpoint:
tests/test_bf16.py."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import randomize_bn_stats

import backbones
from backbones.export import ExportMismatchError, export_model
from backbones.quantize import (
    INT8_RTOL,
    load_int8,
    lower_int8,
    quantize_int8,
    save_int8,
    tensor_bytes,
)

pytest.importorskip("torchao", reason="int8 quantisation needs torchao: pip install 'cnn-backbones[export]'")

SIDE = 32


def _batches(n: int, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIDE, SIDE, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = backbones.create_model("mobilenet_v1_x0_25", num_classes=10).eval()
    randomize_bn_stats(model)
    return model, quantize_int8(model, _batches(4), max_batches=3)


def test_int8_weights_and_outputs_within_int8_rounding(quantized):
    model, q = quantized
    ints = [t for t in q.state_dict().values() if t.dtype == torch.int8]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(ints) == len(convs)  # every conv and the classifier hold int8 weights
    assert sum(t.numel() for t in ints) == sum(m.weight.numel() for m in convs)
    assert tensor_bytes(q) < 0.3 * tensor_bytes(model)  # one byte per weight, plus scales and biases
    x = _batches(1, seed=1)[0]  # not a calibration batch
    with torch.no_grad():
        ref, got = model(x), q(x)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    # 28 layers of 8-bit activations: a few percent of the logit scale; a lost scale or zero point gives O(1)
    assert 1e-4 < err < 0.1, err


def test_lowered_kernels_compute_the_reference_graph(quantized):
    _, q = quantized
    x = _batches(1, seed=2)[0]
    lowered = lower_int8(q, x)
    targets = {str(n.target) for n in lowered.graph.nodes if n.op == "call_function"}
    assert any("onednn.qconv" in t for t in targets), sorted(targets)[:10]
    with torch.no_grad():
        ref, got = q(x), lowered(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-2


def test_pt2_round_trip_and_size(quantized, tmp_path):
    """The file stores one byte per weight; loading it back gives the same outputs at any batch size."""
    import zipfile

    model, q = quantized
    path = save_int8(q, tmp_path / "q.pt2", torch.zeros(2, 3, SIDE, SIDE))
    with zipfile.ZipFile(path) as archive:  # a .pt2 is a zip: tensor data under <name>/data/, the graph beside it
        data = sum(i.file_size for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith("/"))
    # int8 weights are a quarter of the float32 ones; per-channel scales (float32), zero points (int64) and biases add
    # up to ~10 % more on a model this narrow (8-256 channels)
    assert 0 < data < 0.4 * tensor_bytes(model), (data, tensor_bytes(model))
    loaded = load_int8(path)
    for n in (1, 5):  # dynamic batch
        x = torch.randn(n, 3, SIDE, SIDE)
        with torch.no_grad():
            assert torch.equal(loaded(x), q(x))


@pytest.mark.slow
def test_int8_onnx_is_verified_and_the_legacy_exporter_refused(quantized, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime")
    pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    _, q = quantized
    report = export_model(q, tmp_path / "q.onnx", "onnx", input_size=SIDE, bound=INT8_RTOL)
    assert report.errors["logits"] <= INT8_RTOL
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    with pytest.raises(ValueError, match="dynamo=False is not valid for an int8 model"):
        export_model(q, tmp_path / "l.onnx", "onnx", input_size=SIDE, dynamo=False)
    with pytest.raises(ExportMismatchError):  # the float bound is not the int8 one: onnxruntime rounds otherwise
        export_model(q, tmp_path / "t.onnx", "onnx", input_size=SIDE, bound=1e-9)
    assert sorted(os.listdir(tmp_path)) == ["q.onnx"]


def test_no_calibration_data_is_refused():
    with pytest.raises(ValueError, match="calibration is empty"):
        quantize_int8(backbones.create_model("mobilenet_v1_x0_25"), [])
    with pytest.raises(TypeError, match=r"\(N, C, H, W\) tensor"):
        quantize_int8(backbones.create_model("mobilenet_v1_x0_25"), [torch.randn(3, 32, 32)])


def test_a_lowering_that_disagrees_with_the_reference_is_refused(quantized, monkeypatch):
    """lower_int8 runs the lowered kernels beside the reference graph: a lowering that computes something else (as
    torch 2.14's fused conv + residual add does at 1 x 1 pixels) raises naming the error instead of being returned."""
    import torchao.quantization.pt2e.lowering as lowering

    from backbones.quantize import LoweringMismatchError

    _, q = quantized
    x = _batches(1, seed=3)[0]
    real = lowering.lower_pt2e_quantized_to_x86

    class Off(torch.nn.Module):  # the real lowered kernels, one output 10 % of the scale off
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            out = self.inner(t).clone()
            out[0, 0] += 0.1 * out.abs().max()
            return out

    monkeypatch.setattr(lowering, "lower_pt2e_quantized_to_x86", lambda m, ex: Off(real(m, ex)))
    with pytest.raises(LoweringMismatchError, match=r"max\|lowered - reference\| / max\|reference\| = 0\.1"):
        lower_int8(q, x)
    assert isinstance(lower_int8(q, x, bound=None), Off)  # unchecked on request
    assert isinstance(lower_int8(q, x, bound=0.2), Off)


def test_precision_figures_fall_back_to_the_reference_graph(monkeypatch):
    """compare_precisions evaluates the reference int8 graph where the lowering is refused, and says so."""
    import backbones.quantize as bq
    from classification.export import compare_precisions, dataset_config

    def refuse(quantized, example, bound=INT8_RTOL):
        raise bq.LoweringMismatchError("disagrees")

    monkeypatch.setattr(bq, "lower_int8", refuse)
    torch.manual_seed(0)
    model = backbones.create_model("mobilenet_v1_x0_25", num_classes=10)
    cfg = dataset_config("digits", ["image_size=16", "val_fraction=0.05"])
    figures, q = compare_precisions(model, cfg, calibration_batches=1, batch_size=128)
    assert figures["int8"]["lowered"] == 0.0 and 0 <= figures["int8"]["top1"] <= 100
    assert q is not None
