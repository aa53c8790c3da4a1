"""MobileNet v1 beyond the registry matrix: the paper's mult-adds at every width and resolution, TF-slim's depth
rule, ReLU6 parity with timm where activations clip, SE-MobileNet, and the options' errors."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import randomize_bn_stats

import backbones

# paper Tables 6, 7, 9 and 10: (alpha, input side) -> million mult-adds, as printed (rounded to 1 M)
PAPER_MULT_ADDS = {
    (1.0, 224): 569,  # Table 6 / 7
    (0.75, 224): 325,  # Table 6
    (0.5, 224): 149,  # Table 6
    (0.25, 224): 41,  # Table 6
    (1.0, 192): 418,  # Table 7
    (1.0, 160): 290,  # Table 7
    (1.0, 128): 186,  # Table 7
    (0.5, 160): 76,  # Table 9
    (0.75, 192): 239,  # Table 10
}
NAMES = {1.0: "mobilenet_v1_x1_0", 0.75: "mobilenet_v1_x0_75", 0.5: "mobilenet_v1_x0_5", 0.25: "mobilenet_v1_x0_25"}


@pytest.mark.parametrize("alpha,side", list(PAPER_MULT_ADDS), ids=[f"{a}-{s}" for a, s in PAPER_MULT_ADDS])
def test_mult_adds_match_paper_tables(alpha, side):
    with torch.device("meta"):
        m = backbones.create_model(NAMES[alpha])
    macs = backbones.count_macs(m, side) / 1e6
    assert abs(macs - PAPER_MULT_ADDS[alpha, side]) < 1.0, f"{macs:.2f} M vs paper {PAPER_MULT_ADDS[alpha, side]} M"


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25, 0.1])
def test_width_multiplier_follows_tf_slim_depth_rule(alpha):
    # TF-slim mobilenet_v1: depth(d) = max(int(d * depth_multiplier), min_depth=8)
    def depth(d):
        return max(int(d * alpha), 8)

    with torch.device("meta"):
        m = backbones.create_model("mobilenet_v1_x1_0", alpha=alpha)
    assert m.body.stem.conv.out_channels == depth(32)
    assert [f.channels for f in m.feature_info] == [depth(c) for c in (64, 128, 256, 512, 1024)]
    assert m.num_features == m.fc.in_features == depth(1024)


def test_five_stride_two_layers_not_six():
    """Table 1 prints a sixth "Conv dw / s2" on the 7x7 input; the network has five stride-2 layers (224 -> 7)."""
    m = backbones.create_model("mobilenet_v1_x0_25", features_only=True, out_features=("c5",)).eval()
    strided = [n for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d) and c.stride == (2, 2)]
    assert len(strided) == 5, strided
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 224, 224))["c5"].shape[-2:] == (7, 7)


def _timm_twin_file(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    randomize_bn_stats(ref)
    path = tmp_path / "mobilenetv1_100.pth"
    torch.save(ref.state_dict(), path)
    return ref, str(path)


def test_relu6_matches_timm_where_activations_clip(tmp_path, caplog):
    ref, path = _timm_twin_file(tmp_path)
    x = 20 * torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    seen = []
    hooks = [
        mod.register_forward_pre_hook(lambda m, i: seen.append(i[0].max().item()))  # before the in-place clip
        for mod in ref.modules()
        if isinstance(mod, torch.nn.ReLU6)
    ]
    with torch.no_grad():
        want = ref(x)
    for h in hooks:
        h.remove()
    assert max(seen) > 6, "the input must drive activations past ReLU6's clip, or the test shows nothing"

    relu6 = backbones.create_model("mobilenet_v1_x1_0", pretrained=path, act="relu6").eval()
    detected = backbones.create_model("mobilenet_v1_x1_0", pretrained=path).eval()  # timm's file: its ReLU6
    with caplog.at_level(logging.WARNING, logger="backbones.mobilenet"):
        relu = backbones.create_model("mobilenet_v1_x1_0", pretrained=path, act="relu").eval()
    assert "trained with ReLU6" in caplog.text
    with torch.no_grad():
        assert (relu6(x) - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
        assert (detected(x) - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
        assert (relu(x) - want).abs().max().item() > 1e-2


def test_se_mobilenet_adds_one_se_block_per_layer():
    # SENet: W1 (C -> C/r, bias) and W2 (C/r -> C, bias) on each depthwise-separable layer's output
    table1_out = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    with torch.device("meta"):
        plain = backbones.create_model("mobilenet_v1_x1_0")
        se = backbones.create_model("mobilenet_v1_x1_0", se_ratio=16)
    extra = sum(2 * c * (c // 16) + c // 16 + c for c in table1_out)
    assert backbones.count_params(se) - backbones.count_params(plain) == extra
    m = backbones.create_model("mobilenet_v1_x0_25", se_ratio=4, num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_option_errors():
    with pytest.raises(ValueError, match=r"drop_path_rate=0\.1.*no residual.*only 0\.0"):
        backbones.create_model("mobilenet_v1_x1_0", drop_path_rate=0.1)
    backbones.create_model("mobilenet_v1_x0_25", drop_path_rate=0.0)
    with pytest.raises(ValueError, match=r"act='relu7'.*did you mean .*'relu6'.*choose one of 'relu', 'relu6'"):
        backbones.create_model("mobilenet_v1_x1_0", act="relu7")
    with pytest.raises(ValueError, match=r"alpha=0.*positive width multiplier"):
        backbones.create_model("mobilenet_v1_x1_0", alpha=0)
    with pytest.raises(ValueError, match=r"se_ratio=0.5"):
        backbones.create_model("mobilenet_v1_x1_0", se_ratio=0.5)


def test_reference_padding_changes_nothing():
    a = backbones.create_model("mobilenet_v1_x0_25").eval()
    b = backbones.create_model("mobilenet_v1_x0_25", reference_padding=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_initial_features_do_not_vanish():
    """No residual carries the signal: with a per-channel depthwise fan-out the features at init would be ~1e-17."""
    m = backbones.create_model("mobilenet_v1_x1_0").eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    assert 1e-3 < feats.abs().mean().item() < 1e3
