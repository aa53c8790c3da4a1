"""DenseNet family: the paper's channel arithmetic, CIFAR shapes, memory-efficient equivalence and its memory saving,
twin key names (old torchvision checkpoints), option errors."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

import backbones
from backbones.densenet import ARCHS
from backbones.profile import saved_activation_bytes


def _pair(name: str, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights in a standard and a memory-efficient model."""
    torch.manual_seed(0)
    std = backbones.create_model(name, **kwargs)
    randomize_bn_stats(std)
    eff = backbones.create_model(name, memory_efficient=True, **kwargs)
    eff.load_state_dict(std.state_dict())
    return std, eff


def _dense_layers(model: torch.nn.Module, block: str) -> int:
    return len(model.body[block])


def test_densenet121_channels_table1():
    # Table 1, DenseNet-121: k=32, blocks of 6/12/24/16 layers, theta=0.5; 64 + 6*32 = 256, 128 + 12*32 = 512,
    # 256 + 24*32 = 1024, 512 + 16*32 = 1024
    m = backbones.create_model("densenet121")
    assert m.out_channels == {"c1": 64, "c2": 256, "c3": 512, "c4": 1024, "c5": 1024}
    assert [f.stride for f in m.feature_info] == [2, 4, 8, 16, 32]
    assert [_dense_layers(m, f"block{i}") for i in range(1, 5)] == [6, 12, 24, 16]
    assert [m.body[f"transition{i}"].conv.out_channels for i in range(1, 4)] == [128, 256, 512]
    assert m.body.block1.layer1.conv1.out_channels == 4 * 32  # bottleneck 4k
    assert m.num_features == m.classifier.in_features == 1024


def test_densenet264_is_the_papers():
    # Table 1, DenseNet-264: k=32, (6, 12, 64, 48); block 3 starts from 512 / 2 = 256 channels, block 4 from half its
    # output (not timm's densenet264d, which has k=48 and a deep stem)
    m = backbones.create_model("densenet264", features_only=True)
    assert [_dense_layers(m, f"block{i}") for i in range(1, 5)] == [6, 12, 64, 48]
    assert m.out_channels == {"c2": 256, "c3": 512, "c4": 256 + 64 * 32, "c5": (256 + 64 * 32) // 2 + 48 * 32}


@pytest.mark.parametrize(
    "name,layers,out",
    [
        # (L - 4) / 3 layers per block, basic layers, theta = 1, 16-channel stem: 16 + 12*12 = 160, 304, 448
        ("densenet_40_k12", 12, (160, 304, 448)),
        ("densenet_100_k24", 32, (16 + 32 * 24, 16 + 64 * 24, 16 + 96 * 24)),
        # BC: (L - 4) / 6 layers, theta = 0.5, 2k stem: 24 + 16*12 = 216 -> 108 + 192 = 300 -> 150 + 192 = 342
        ("densenet_bc_100_k12", 16, (216, 300, 342)),
        ("densenet_bc_250_k24", 41, (48 + 41 * 24, (48 + 41 * 24) // 2 + 41 * 24, None)),
        ("densenet_bc_190_k40", 31, (80 + 31 * 40, None, None)),
    ],
)
def test_cifar_channel_arithmetic(name, layers, out):
    m = backbones.create_model(name)
    assert [_dense_layers(m, f"block{i}") for i in (1, 2, 3)] == [layers] * 3
    got = [m.out_channels[c] for c in ("c0", "c1", "c2")]
    assert [g for g, want in zip(got, out) if want is not None] == [w for w in out if w is not None]
    assert m.body.stem.conv.kernel_size == (3, 3) and m.body.stem.conv.stride == (1, 1)


@pytest.mark.parametrize("name", ["densenet_40_k12", "densenet_bc_100_k12"])
def test_cifar_shapes_and_card(name):
    card = backbones.model_card(name)
    assert (card.input_size, card.num_classes, card.detection_ready) == (32, 10, False)
    m = backbones.create_model(name).eval()
    assert m.num_classes == 10 and m.feature_names == ["c0", "c1", "c2"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert m(x).shape == (2, 10)
    f = backbones.create_model(name, features_only=True).eval()
    assert f.out_features == ("c0", "c1", "c2")
    with torch.no_grad():
        out = f(x)
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(32, 32), (16, 16), (8, 8)]
    stages = f.stage_modules()
    assert stages[0] == ["body.stem"] and "body.block1" in stages[1] and "body.block3" in stages[3]


def test_imagenet_c1_is_stem_before_maxpool():
    f = backbones.create_model("densenet121", features_only=True, out_features=("c1", "c2")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = f(x)
        stem = f.body.stem(x)
    assert out["c1"].shape == (1, 64, 32, 32)
    torch.testing.assert_close(out["c1"], stem)
    assert (out["c1"] >= 0).all()  # after the stem's ReLU
    assert "transition1" not in f.body  # pruned: the transition belongs to the next stage


@pytest.mark.parametrize("name", ["densenet121", "densenet_40_k12"])
@pytest.mark.parametrize("train", [True, False], ids=["bn_train", "bn_eval"])
def test_memory_efficient_same_outputs_and_grads(name, train):
    side = 64 if backbones.model_card(name).detection_ready else 32
    std, eff = _pair(name, num_classes=10)
    std.train(train)
    eff.train(train)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    ys = [m(x) for m in (std, eff)]
    for y in ys:
        y.square().sum().backward()
    assert (ys[0] - ys[1]).abs().max().item() < 1e-5
    ps, pe = dict(std.named_parameters()), dict(eff.named_parameters())
    worst = max((ps[k].grad - pe[k].grad).abs().max().item() / (ps[k].grad.abs().max().item() + 1e-12) for k in ps)
    assert worst < 1e-4
    # recomputation in backward must not update the BN running statistics a second time
    bs, be = dict(std.named_buffers()), dict(eff.named_buffers())
    for k in bs:
        torch.testing.assert_close(bs[k], be[k], rtol=1e-5, atol=1e-6, msg=k)


def test_memory_efficient_dropout_recomputed_identically():
    std, eff = _pair("densenet_40_k12", dropout=0.2)
    std.train()
    eff.train()
    x = torch.randn(2, 3, 32, 32)
    out = []
    for m in (std, eff):
        torch.manual_seed(5)
        y = m(x)
        y.sum().backward()
        out.append(y)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(std.body.block1.layer1.conv1.weight.grad, eff.body.block1.layer1.conv1.weight.grad)


def test_memory_efficient_saves_half_the_activations():
    # The issue: densenet121 training memory with memory_efficient <= 50% of standard (batch 32, 224 px). Measured
    # deterministically as the bytes autograd keeps for backward, at a small size (the ratio scales with H*W*B).
    x = torch.randn(2, 3, 64, 64)
    std, eff = _pair("densenet121")
    a, b = saved_activation_bytes(std.train(), x), saved_activation_bytes(eff.train(), x)
    assert b <= 0.5 * a, f"memory-efficient keeps {b:,} B vs standard {a:,} B ({b / a:.3f})"


def test_set_grad_checkpointing_alias():
    std, eff = _pair("densenet_bc_100_k12")
    x = torch.randn(2, 3, 32, 32)
    std.set_grad_checkpointing(True)
    assert saved_activation_bytes(std.train(), x) == saved_activation_bytes(eff.train(), x)
    std.set_grad_checkpointing(False)
    assert saved_activation_bytes(std, x) > saved_activation_bytes(eff, x)


def test_old_torchvision_checkpoint_keys(tmp_path):
    # torchvision's original densenet checkpoints name dense-layer parts "norm.1", "conv.2" (see its _load_state_dict)
    tv = pytest.importorskip("torchvision")
    ref = tv.models.densenet121(weights=None).eval()
    randomize_bn_stats(ref)
    old = {}
    for k, v in ref.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.") if "denselayer" in k else k
        old[k] = v
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    ours = backbones.create_model("densenet121", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "option,match",
    [
        (dict(drop_path_rate=0.1), "drop_path_rate=0.1 .*valid: 0.0"),
        (dict(stem="deep"), "stem='deep' .*'imagenet', 'cifar'"),
        (dict(compression=0.0), r"compression=0.0 .*\(0, 1\]"),
        (dict(block_config=(6, 0)), "block_config"),
    ],
)
def test_bad_options(option, match):
    with pytest.raises(ValueError, match=match):
        backbones.create_model("densenet_bc_100_k12", **option)


def test_knobs_and_rows():
    assert backbones.model_defaults("densenet161")["growth_rate"] == 48 == ARCHS["densenet161"].growth_rate
    m = backbones.create_model("densenet_bc_100_k12", growth_rate=6, reference_padding=True, drop_path_rate=0.0)
    assert m.out_channels["c0"] == 24 + 16 * 6  # the row keeps its 2k = 24 stem
    assert backbones.model_card("densenet264").twins == {}
