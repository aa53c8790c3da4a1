"""The registry matrix: every registered model, small inputs, the backbone contract of DESIGN.md.

A new model is tested by being registered. Heavy models (decided from the card) are marked ``slow``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_bn_stats, registry_params, small_input

import backbones
from backbones.layers import FrozenBatchNorm2d

ALL = registry_params()
DETECTION = registry_params(detection_ready=True)


@pytest.mark.parametrize("name", ALL)
def test_classifier_forward(name):
    m = backbones.create_model(name, num_classes=7).eval()
    x = small_input(name)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_features_match_feature_info(name):
    f = backbones.create_model(name, features_only=True, out_features=backbones.create_model(name).feature_names)
    f.eval()
    x = small_input(name)
    with torch.no_grad():
        out = f(x)
    assert list(out) == [fi.name for fi in f.feature_info]
    for fi in f.feature_info:
        t = out[fi.name]
        assert t.shape[1] == fi.channels == f.out_channels[fi.name]
        # exact H / 2**i for inputs whose sides are multiples of 32 (and of the CIFAR strides)
        assert tuple(t.shape[-2:]) == (x.shape[-2] // fi.stride, x.shape[-1] // fi.stride), fi


@pytest.mark.parametrize("name", DETECTION)
def test_detection_levels_default(name):
    f = backbones.create_model(name, features_only=True)
    assert f.out_features == ("c2", "c3", "c4", "c5")
    assert [f.out_strides[n] for n in f.out_features] == [4, 8, 16, 32]
    assert f.size_divisibility == 32
    x = torch.randn(1, 3, 96, 64)  # non-square, multiples of 32
    with torch.no_grad():
        out = f.eval()(x)
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(24, 16), (12, 8), (6, 4), (3, 2)]


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_gradient(name):
    m = backbones.create_model(name, num_classes=5).train()
    m(small_input(name)).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing[:10]


@pytest.mark.parametrize("name", ALL)
def test_frozen_stages(name):
    f = backbones.create_model(name, features_only=True, frozen_stages=1)
    stages = f.stage_modules()
    frozen = {n for s in stages[:2] for n in s}
    assert frozen, "stem and first stage must name modules"
    for pname, p in f.named_parameters():
        in_frozen = any(pname == m or pname.startswith(m + ".") for m in frozen)
        assert p.requires_grad != in_frozen, pname
    f.train()
    mods = dict(f.named_modules())
    for mname in frozen:
        for sub in mods[mname].modules():
            if isinstance(sub, torch.nn.BatchNorm2d):
                assert not sub.training
    # a later stage keeps training-mode norms (norm-free networks such as SqueezeNet have none to check)
    later = [mods[n] for n in stages[-1] if n in mods]
    if any(isinstance(s, torch.nn.BatchNorm2d) for s in f.modules()):
        assert any(s.training for m in later for s in m.modules() if isinstance(s, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("name", ALL)
def test_frozen_bn_same_maths_and_keeps_eps(name):
    torch.manual_seed(0)
    ref = backbones.create_model(name, features_only=True)
    randomize_bn_stats(ref)
    eps = sorted({m.eps for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    frozen = backbones.create_model(name, features_only=True, norm="frozen_bn")
    frozen.load_state_dict(ref.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert sorted({m.eps for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d)}) == eps
    # float64: deep random nets with random BN statistics can be chaotic (SE-ResNet-152: a 1e-7 input change moves the
    # float32 logits by O(1)), so float32 rounding differences between the two norms would hide the maths compared
    x = small_input(name, batch=1).double()
    with torch.no_grad():
        a, b = ref.double().eval()(x), frozen.double().eval()(x)
    for k in a:
        # rounding grows with the level's magnitude (random deep nets reach |x| ~ 1e7): scale atol with it
        scale = max(1.0, a[k].abs().max().item())
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ALL)
def test_group_norm_runs(name):
    f = backbones.create_model(name, features_only=True, norm="gn").train()
    # every BatchNorm became a GroupNorm; a norm-free network (SqueezeNet) has nothing to swap
    plain = backbones.create_model(name, features_only=True)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in f.modules()) == has_bn
    out = f(small_input(name))
    assert all(torch.isfinite(t).all() for t in out.values())


@pytest.mark.parametrize("name", ALL)
def test_fx_trace(name):
    f = backbones.create_model(name, features_only=True).eval()
    gm = torch.fx.symbolic_trace(f)
    x = small_input(name, batch=1)
    with torch.no_grad():
        a, b = f(x), gm(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("name", ALL)
def test_channels_last_default_same_maths_and_bf16(name):
    """Parameters are channels-last by default (faster convs); ``channels_last=False`` is the plain layout and gives
    the same outputs from the same weights, up to float32 summation order."""
    plain = backbones.create_model(name, channels_last=False).eval()
    m = backbones.create_model(name).eval()
    convs = [p for p in m.parameters() if p.ndim == 4 and p.shape[-1] * p.shape[-2] > 1 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(p.is_contiguous() for p in plain.parameters())
    randomize_bn_stats(plain)
    m.load_state_dict(plain.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)  # loading keeps the layout
    x = small_input(name, batch=1)
    with torch.no_grad():
        ref, got = plain(x), m(x)
        exact = copy.deepcopy(plain).double()(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    # the channels-last result is as close to the float64 one as the plain float32 result is (deep random networks
    # such as se_resnet152 amplify float32 rounding to a large part of the output in either layout)
    err_plain = (ref.double() - exact).abs().max().item()
    err_cl = (got.double() - exact).abs().max().item()
    assert err_cl <= 2 * err_plain + 1e-5 * exact.abs().max().item(), (err_cl, err_plain)
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", ALL)
def test_params_match_card(name):
    card = backbones.model_card(name)
    m = backbones.create_model(name, num_classes=card.num_classes)
    n = backbones.count_params(m)
    assert abs(n - card.params) <= card.params_tol * card.params, f"{n:,} vs card {card.params:,} ({card.table})"


@pytest.mark.parametrize("name", ALL)
def test_macs_match_card(name):
    card = backbones.model_card(name)
    if card.macs is None:
        pytest.skip(f"{name}: no reference mult-add count in the card ({card.notes})")
    padding = {"reference_padding": True} if card.macs_reference_padding else {}
    m = backbones.create_model(name, num_classes=card.num_classes, **padding)
    sizes = {card.input_size: card.macs, **card.macs_at}
    for side, ref in sizes.items():
        macs = backbones.count_macs(m, side)
        assert abs(macs - ref) <= card.macs_tol * ref, f"{side}px: {macs:,} vs card {ref:,} ({card.table})"
