"""SqueezeNet beyond the registry matrix: Table 1 counts, bypass variants, padding against torchvision's net."""

from __future__ import annotations

import pytest
import torch

import backbones

tv_models = pytest.importorskip("torchvision.models")

# Table 1, column "#parameter before pruning" (papers/002)
TABLE1_PARAMS = {
    "conv1": 14_208,
    "fire2": 11_920,
    "fire3": 12_432,
    "fire4": 45_344,
    "fire5": 49_440,
    "fire6": 104_880,
    "fire7": 111_024,
    "fire8": 188_992,
    "fire9": 197_184,
    "conv10": 513_000,
}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_squeezenet1_0_matches_table1_layer_by_layer():
    m = backbones.create_model("squeezenet1_0")
    assert backbones.count_params(m) == 1_248_424 == sum(TABLE1_PARAMS.values())
    for name, n in TABLE1_PARAMS.items():
        module = m.classifier if name == "conv10" else m.body[name]
        assert _params(module) == n, name


def test_simple_bypass_adds_no_parameters_and_adds_the_input():
    vanilla = backbones.create_model("squeezenet1_0")
    bypass = backbones.create_model("squeezenet1_0_bypass")
    assert backbones.count_params(bypass) == backbones.count_params(vanilla) == 1_248_424
    bypass.load_state_dict(vanilla.state_dict())
    x96, x128 = torch.randn(1, 96, 16, 16), torch.randn(1, 128, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bypass.body["fire2"](x96), vanilla.body["fire2"](x96))  # 96 -> 128: no bypass
        torch.testing.assert_close(bypass.body["fire3"](x128), vanilla.body["fire3"](x128) + x128)
    # paper section 6: around fire3, 5, 7, 9 only
    assert [n for n, f in bypass.body.items() if getattr(f, "identity", False)] == ["fire3", "fire5", "fire7", "fire9"]


def test_complex_bypass_adds_exactly_the_1x1_convs():
    vanilla = backbones.create_model("squeezenet1_0")
    complex_ = backbones.create_model("squeezenet1_0_complex_bypass")
    convs = {n: f.bypass for n, f in complex_.body.items() if getattr(f, "bypass", None) is not None}
    assert list(convs) == ["fire2", "fire4", "fire6", "fire8"]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size) for c in convs.values()]
    assert shapes == [(96, 128, (1, 1)), (128, 256, (1, 1)), (256, 384, (1, 1)), (384, 512, (1, 1))]
    expected = sum(cin * cout + cout for cin, cout, _ in shapes)
    assert expected == 341_248
    assert backbones.count_params(complex_) - backbones.count_params(vanilla) == expected


@pytest.mark.parametrize("version,name", [("1_0", "squeezenet1_0"), ("1_1", "squeezenet1_1")])
def test_reference_padding_gives_torchvision_sizes_and_features(version, name):
    torch.manual_seed(0)
    tv = tv_models.get_model(name, weights=None).eval()
    ours = backbones.create_model(
        name, reference_padding=True, features_only=True, out_features=("c1", "c2", "c3", "c4")
    )
    ours.load_state_dict(ours.remap_state_dict(tv.state_dict()), strict=False)
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    # torchvision features: index of the module whose output is each level (conv1's ReLU, the fire before a pool, fire9)
    taps = {"1_0": (1, 5, 10, 12), "1_1": (1, 4, 7, 12)}[version]
    tv_out, h = [], x
    with torch.no_grad():
        for i, mod in enumerate(tv.features):
            h = mod(h)
            if i in taps:
                tv_out.append(h)
        mine = ours(x)
    assert [t.shape[-1] for t in tv_out] == {"1_0": [109, 54, 27, 13], "1_1": [111, 55, 27, 13]}[version]
    for t, level in zip(tv_out, ("c1", "c2", "c3", "c4"), strict=True):
        assert mine[level].shape == t.shape, level
        torch.testing.assert_close(mine[level], t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_default_levels_exact_at_224_and_c5_off_the_classifier_path(name):
    m = backbones.create_model(name).eval()
    f = backbones.create_model(name, features_only=True, out_features=("c1", "c2", "c3", "c4", "c5")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        sizes = [t.shape[-1] for t in f(x).values()]
        # the classifier sees fire9 (stride 16), as in the paper
        assert m.forward_features(x).shape[-1] == 14
    assert sizes == [112, 56, 28, 14, 7]
    assert _params(m.body["pool_c5"]) == 0


def test_se_ratio_adds_se_on_every_fire_output():
    plain = backbones.create_model("squeezenet1_1")
    se = backbones.create_model("squeezenet1_1", se_ratio=16)
    outs = [128, 128, 256, 256, 384, 384, 512, 512]  # Table 1 fire2..fire9 output channels
    # SE (SENet Fig. 3): FC C -> C/r and FC C/r -> C, with biases
    expected = sum(2 * c * (c // 16) + c // 16 + c for c in outs)
    assert backbones.count_params(se) - backbones.count_params(plain) == expected
    assert se(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_norm_options_are_a_no_op_on_a_norm_free_net():
    torch.manual_seed(0)
    ref = backbones.create_model("squeezenet1_1", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    for norm in ("frozen_bn", "gn"):
        other = backbones.create_model("squeezenet1_1", features_only=True, norm=norm).eval()
        other.load_state_dict(ref.state_dict())
        with torch.no_grad():
            a, b = ref(x), other(x)
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_drop_path_on_bypassed_fires():
    m = backbones.create_model("squeezenet1_0_bypass", drop_path_rate=0.2)
    rates = {n: f.drop_path.drop_prob for n, f in m.body.items() if getattr(f, "drop_path", None) is not None}
    assert list(rates) == ["fire3", "fire5", "fire7", "fire9"]
    assert rates["fire9"] == pytest.approx(0.2) and rates["fire3"] == pytest.approx(0.05)
    m.train()(torch.randn(2, 3, 64, 64)).sum().backward()


@pytest.mark.parametrize(
    "options,match",
    [
        ({"version": "1_2"}, "version='1_2' is not valid.*'1_1'"),
        ({"bypass": "simpel"}, "did you mean 'simple'"),
        ({"drop_path_rate": 0.1}, "needs a residual path.*bypass='simple'"),
        ({"se_ratio": -4}, "se_ratio=-4"),
    ],
)
def test_bad_options_raise_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        backbones.create_model("squeezenet1_1", **options)
