"""Xception beyond the registry matrix: exact Table 3 count, reference spatial sizes, eps, SE and drop path."""

from __future__ import annotations

import pytest
import torch

import backbones
from backbones.layers import FrozenBatchNorm2d

LEVELS = ("c1", "c2", "c3", "c4", "c5")


def test_params_exactly_table3():
    assert backbones.count_params(backbones.create_model("xception")) == 22_855_952


def test_level_channels_and_strides():
    m = backbones.create_model("xception")
    assert [(f.name, f.channels, f.stride) for f in m.feature_info] == [
        ("c1", 64, 2),
        ("c2", 128, 4),
        ("c3", 256, 8),
        ("c4", 728, 16),
        ("c5", 2048, 32),
    ]


def test_reference_padding_sizes_at_299():
    f = backbones.create_model("xception", reference_padding=True, features_only=True, out_features=LEVELS).eval()
    seen = []
    f.body.stem.conv1.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        out = f(torch.randn(1, 3, 299, 299))
    # arch_reference section 3: 299 -> 149 (conv1) -> 147 (conv2) -> 74 -> 37 -> 19 (middle) -> 10
    assert seen == [149]
    assert [t.shape[-1] for t in out.values()] == [147, 74, 37, 19, 10]


def test_default_padding_exact_at_320():
    f = backbones.create_model("xception", features_only=True, out_features=LEVELS).eval()
    with torch.no_grad():
        out = f(torch.randn(1, 3, 320, 192))
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(320 // s, 192 // s) for s in (2, 4, 8, 16, 32)]


def test_block_levels_are_post_relu():
    f = backbones.create_model("xception", features_only=True, out_features=LEVELS).eval()
    with torch.no_grad():
        out = f(torch.randn(1, 3, 64, 64))
    assert all((t >= 0).all() for t in out.values())
    # the block output itself (a pre-activation sum) goes on unchanged: the classifier path has negative values
    m = backbones.create_model("xception").eval()
    with torch.no_grad():
        h = m.body.block1(m.body.stem(torch.randn(1, 3, 64, 64)))
    assert (h < 0).any()


def test_bn_eps_option_and_frozen_bn_keeps_it():
    assert {m.eps for m in backbones.create_model("xception").modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        1e-5
    }
    f = backbones.create_model("xception", bn_eps=1e-3, features_only=True, norm="frozen_bn")
    assert {m.eps for m in f.modules() if isinstance(m, FrozenBatchNorm2d)} == {1e-3}
    with pytest.raises(ValueError, match="bn_eps=0.0001 is not valid"):
        backbones.create_model("xception", bn_eps=1e-4)


def test_se_ratio_on_every_residual_branch():
    plain = backbones.count_params(backbones.create_model("xception"))
    se = backbones.create_model("xception", se_ratio=16)
    outs = [128, 256, 728] + [728] * 8 + [1024]  # Fig. 5 block outputs
    expected = sum(2 * c * (c // 16) + c // 16 + c for c in outs)  # SENet Fig. 3: two FCs with biases
    assert backbones.count_params(se) - plain == expected
    with pytest.raises(ValueError, match="se_ratio=-1"):
        backbones.create_model("xception", se_ratio=-1)


def test_drop_path_linear_over_blocks_and_identity_in_eval():
    torch.manual_seed(0)
    ref = backbones.create_model("xception").eval()
    dp = backbones.create_model("xception", drop_path_rate=0.2)
    rates = [getattr(dp.body[f"block{i}"].drop_path, "drop_prob", 0.0) for i in range(1, 13)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx([0.2 * i / 11 for i in range(12)])
    dp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dp.eval()(x), ref(x))
