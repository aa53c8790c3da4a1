"""tools/export.py: a registered name, a state dict file (backbone or detector) and bad input; the files it writes
are loaded back here and compared with eager PyTorch. Exports of training checkpoints are tested where the runs are
made (tests/test_bf16.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tiny_runs import ROOT, child_env

import backbones


def _tool(*args: str) -> subprocess.CompletedProcess:
    """The command line, in a process of its own."""
    cmd = [sys.executable, str(ROOT / "tools" / "export.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)


def _main(*args: str) -> int:
    """The tool's ``main`` in this process (no interpreter start-up); argparse errors come back as their exit code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        return tool.main(list(args))
    except SystemExit as e:
        return int(e.code)


def test_state_dict_of_a_backbone_exports_its_weights(tmp_path):
    """A state dict file + --model: the written features file computes the saved weights' features (not fresh ones)."""
    torch.manual_seed(1)
    trained = backbones.create_model("mobilenet_v1_x0_25", num_classes=10)
    weights = tmp_path / "w.pth"
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "f.pt"
    args = [str(weights), "--model", "mobilenet_v1_x0_25", "--num-classes", "10", "--features-only", "--out-features"]
    r = _tool(*args, "c3,c4", "--format", "torchscript", "--input-size", "64", "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "errors c3" in r.stdout and out.is_file()
    trained.configure(features_only=True, out_features=("c3", "c4"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = trained.eval()(x)
        got = torch.jit.load(str(out))(x)
    assert list(got) == ["c3", "c4"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-5 * ref[k].abs().max().item())


@pytest.mark.slow  # the library path: tests/test_export_detection.py; a detector checkpoint: tests/test_bf16.py
def test_detector_by_name_exports(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime: pip install 'cnn-backbones[export]'")
    out = tmp_path / "d.onnx"
    r = _tool(
        "mobilenet_v1_x0_25", "--detector", "ssd", "--num-classes", "4", "--input-size", "128", "--output", str(out)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "errors boxes" in r.stdout and out.is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["mobilenet_v1_x0_2"], "unknown model 'mobilenet_v1_x0_2' (did you mean 'mobilenet_v1_x0_25'"),
        (["mobilenet_v1_x0_25", "--format", "onxx"], "invalid choice: 'onxx'"),
        (["mobilenet_v1_x0_25", "--detector", "ssd"], "--detector needs --num-classes"),
    ],
    ids=["unknown-model", "unknown-format", "detector-without-classes"],
)
def test_bad_input_is_named(args, message, tmp_path, capsys):
    assert _main(*args, "--output", str(tmp_path / "x")) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_state_dict_needs_the_architecture(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(backbones.create_model("mobilenet_v1_x0_25").state_dict(), weights)
    assert _main(str(weights), "--output", str(tmp_path / "x")) == 2
    assert "is a state dict: give the architecture with --model" in capsys.readouterr().err
