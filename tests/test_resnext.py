"""ResNeXt family: what the registry matrix does not cover (the knobs, against the papers' formulas and the twins)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

import backbones
from backbones.layers import DropPath
from backbones.resnext import ResNeXt

SE_RESNET50_BLOCKS = ((3, 256), (4, 512), (6, 1024), (3, 2048))  # SENet Table 1: blocks x output channels C


def test_se_adds_exactly_the_table1_se_parameters():
    # SENet Table 1: per block an SE of fc [C/r, C] = W1 (C x C/r) + b1 + W2 (C/r x C) + b2, r = 16
    r = 16
    expected = sum(n * (2 * c * c // r + c // r + c) for n, c in SE_RESNET50_BLOCKS)
    with_se = backbones.count_params(backbones.create_model("se_resnet50"))
    without = backbones.count_params(backbones.create_model("se_resnet50", se_ratio=None))
    assert with_se - without == expected
    assert backbones.count_params(backbones.create_model("se_resnet50", se_ratio=0)) == without
    # without SE the Caffe SE-ResNet-50 is ResNet-50: torchvision's published count
    assert without == 25_557_032


def test_se_ratio_changes_only_the_se_width():
    a = backbones.count_params(backbones.create_model("se_resnet50", se_ratio=8))
    b = backbones.count_params(backbones.create_model("se_resnet50", se_ratio=16))
    assert a - b == sum(n * (2 * c * c // 8 + c // 8 - 2 * c * c // 16 - c // 16) for n, c in SE_RESNET50_BLOCKS)


def test_stride_placement_changes_macs_not_params():
    # arch_reference 7: legacy (stride on the 1x1) 3.860 G vs timm seresnet50 (stride on the 3x3) 4.092 G
    caffe = backbones.create_model("se_resnet50")
    tv = backbones.create_model("se_resnet50", stride_in_1x1=False)
    assert backbones.count_params(caffe) == backbones.count_params(tv)
    assert abs(backbones.count_macs(caffe, 224) - 3.860e9) < 0.005e9
    assert abs(backbones.count_macs(tv, 224) - 4.092e9) < 0.005e9


def test_stride_on_3x3_option_is_timm_seresnet50():
    """``stride_in_1x1=False, pool_ceil_mode=False`` is timm's non-legacy ``seresnet50``: same weights, same logits."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    twin = timm.create_model("seresnet50", pretrained=False).eval()
    randomize_bn_stats(twin)
    ours = backbones.create_model("se_resnet50", stride_in_1x1=False, pool_ceil_mode=False).eval()
    ours.load_state_dict(ours.remap_state_dict(twin.state_dict()))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x) - twin(x)).abs().max().item() < 1e-4


def test_senet154_knobs_match_timm_legacy_senet_small():
    """SENet-154's knobs (deep stem, reduce_first=2, 64 groups, 3x3 projection shortcuts, ceil-mode pool) on a
    one-block-per-stage net against timm's legacy ``SENet`` built with the same knobs (the full net is slow)."""
    pytest.importorskip("timm")
    from timm.models.senet import SEBottleneck, SENet

    torch.manual_seed(0)
    twin = SENet(
        SEBottleneck,
        [1, 1, 1, 1],
        groups=64,
        reduction=16,
        drop_rate=0.2,
        inplanes=128,
        input_3x3=True,
        downsample_kernel_size=3,
        downsample_padding=1,
    ).eval()
    randomize_bn_stats(twin)
    knobs = {**backbones.registry.model_defaults("senet154"), "layers": (1, 1, 1, 1)}
    ours = ResNeXt(**knobs).eval()
    ours.load_state_dict(ours.remap_state_dict(twin.state_dict()))
    assert ours.body.layer2[0].downsample[0].kernel_size == (3, 3)
    assert ours.body.layer1[0].downsample[0].kernel_size == (1, 1)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x) - twin(x)).abs().max().item() < 1e-4


def test_drop_path_linear_in_depth_and_identity_in_eval():
    rate = 0.3
    m = backbones.create_model("resnet50", drop_path_rate=rate)
    randomize_bn_stats(m)  # non-zero last-BN scales, so the residual branches contribute
    probs = [
        b.drop_path.drop_prob if b.drop_path is not None else 0.0 for s in range(1, 5) for b in m.body[f"layer{s}"]
    ]
    n = len(probs)
    assert n == 16
    assert probs == pytest.approx([rate * i / (n - 1) for i in range(n)])
    assert sum(isinstance(x, DropPath) for x in m.modules()) == n - 1
    plain = backbones.create_model("resnet50")
    plain.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), plain.eval()(x), rtol=0, atol=0)
        # in training some samples lose whole branches: the output changes between two passes
        m.train()
        torch.manual_seed(1)
        a = m(x)
        torch.manual_seed(2)
        b = m(x)
    assert not torch.equal(a, b)


def test_zero_init_last_makes_every_block_the_identity():
    """Goyal et al. 2017 section 5.1: with the last BN scale at zero a block without projection maps x >= 0 to x."""
    m = backbones.create_model("se_resnext50_32x4d").eval()
    x = torch.rand(1, 256, 8, 8)
    with torch.no_grad():
        for block in m.body.layer1[1:]:
            torch.testing.assert_close(block(x.clone()), x, rtol=0, atol=0)
    plain = backbones.create_model("se_resnext50_32x4d", zero_init_last=False)
    assert all(b.bn3.weight.eq(1).all() for b in plain.body.layer1)


def test_c1_is_the_stem_before_the_pool():
    for name, channels in (("resnet50", 64), ("senet154", 128)):
        m = backbones.create_model(name)
        c1 = m.feature("c1")
        assert (c1.channels, c1.stride, c1.module, c1.stage) == (channels, 2, "body.stem", 0)
    f = backbones.create_model("resnet50", features_only=True, out_features=("c1",))
    assert list(f.body) == ["stem"]  # pool and stages pruned


@pytest.mark.parametrize(
    "option,value,hint",
    [
        ("stem_type", "3x3", "'7x7', 'deep'"),
        ("down_kernel_size", 5, "choose one of 1, 3"),
        ("layers", (3, 4, 6), "four positive block counts"),
        ("se_ratio", -1, "positive integer"),
        ("cardinality", 0, ">= 1"),
        ("drop_path_rate", 1.0, "[0, 1)"),
    ],
)
def test_bad_knob_values_name_value_and_valid_ones(option, value, hint):
    with pytest.raises(ValueError) as e:
        backbones.create_model("resnext50_32x4d", **{option: value})
    assert f"{option}={value!r}" in str(e.value) and hint in str(e.value)


def test_unknown_option_suggests_the_knob():
    with pytest.raises(TypeError, match="cardinality"):
        backbones.create_model("resnext50_32x4d", cardinalty=16)


def test_remap_table_covers_every_twin_key():
    """Every key of each non-heavy twin maps onto one of ours (the heavy ones run in test_twins with -m slow)."""
    timm = pytest.importorskip("timm")
    tv = pytest.importorskip("torchvision")
    for name, lib, twin_name in (
        ("resnet50", "torchvision", "resnet50"),
        ("resnext50_32x4d", "timm", "resnext50_32x4d"),
        ("se_resnext50_32x4d", "timm", "legacy_seresnext50_32x4d"),
    ):
        twin = timm.create_model(twin_name) if lib == "timm" else tv.models.get_model(twin_name)
        ours = backbones.create_model(name)
        mapped = ours.remap_state_dict(twin.state_dict())
        assert set(mapped) == set(ours.state_dict()), name
