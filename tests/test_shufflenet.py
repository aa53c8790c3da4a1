"""ShuffleNet v1 beyond the registry matrix. It has no library twin, so the oracles are the paper's definitions: the
channel shuffle (§3.1), the unit's complexity hw(2cm/g + 9m) (§3.2), Table 1's structure, and what the shuffle is for
(Fig. 1: without it, an output group sees only its own input group)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn_stats
from torch.utils._python_dispatch import TorchDispatchMode

import backbones
from backbones.layers import channel_shuffle
from backbones.shufflenet import ShuffleUnit


def test_channel_shuffle_is_the_papers_reshape_transpose_flatten():
    # §3.1: channels of g groups x n as a (g, n) matrix, transposed, flattened. g = 3, n = 4:
    # (0 1 2 3 | 4 5 6 7 | 8 9 10 11) -> columns read in order
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert channel_shuffle(torch.arange(6.0).reshape(1, 6, 1, 1), 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    # every pixel of every sample is permuted the same way
    y = torch.randn(2, 12, 3, 5)
    perm = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    torch.testing.assert_close(channel_shuffle(y, 3), y[:, perm], rtol=0, atol=0)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_channel_shuffle_costs_one_copy(memory_format):
    x = torch.randn(2, 24, 7, 7).to(memory_format=memory_format)
    with _Ops() as rec:
        channel_shuffle(x, 3)
    copies = [op for op in rec.ops if op in ("clone", "copy_", "contiguous", "_to_copy", "index", "gather", "cat")]
    assert len(copies) == 1, rec.ops
    assert set(rec.ops) - {"clone"} <= {"view", "transpose", "permute", "_unsafe_view", "reshape", "expand"}, rec.ops


def _unit_macs(unit, in_channels, side):
    return backbones.count_macs(unit, side, in_chans=in_channels)


@pytest.mark.parametrize("c,g,side", [(240, 3, 28), (384, 8, 14), (144, 1, 28), (200, 2, 7), (1088, 4, 7)])
def test_stride1_unit_macs_match_paper_formula(c, g, side):
    m = c // 4  # §3.2: bottleneck channels = 1/4 of the output channels
    unit = ShuffleUnit(c, c, 1, g)
    assert _unit_macs(unit, c, side) == side * side * (2 * c * m // g + 9 * m)  # §3.2: hw(2cm/g + 9m)


@pytest.mark.parametrize("cin,cout,g,group_first", [(240, 480, 3, True), (24, 240, 3, False), (24, 384, 8, False)])
def test_stride2_unit_macs(cin, cout, g, group_first):
    # the same terms at stride 2: first GConv at the input side, DWConv and second GConv at half of it,
    # second GConv producing out - in channels (the rest is the avg-pooled input, no mult-adds)
    m, h = cout // 4, 28
    first = cin * m // (g if group_first else 1)
    want = h * h * first + (h // 2) ** 2 * (9 * m + m * (cout - cin) // g)
    assert _unit_macs(ShuffleUnit(cin, cout, 2, g, group_first=group_first), cin, h) == want


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_5"])
def test_table1_structure(name):
    g = backbones.model_defaults(name)["groups"]
    with torch.device("meta"):
        m = backbones.create_model(name)
    units = [u for s in ("stage2", "stage3", "stage4") for u in m.body[s]]
    assert [len(m.body[s]) for s in ("stage2", "stage3", "stage4")] == [4, 8, 4]  # Table 1 repeats 1 + 3 / 7 / 3
    assert [u.stride for u in units] == [2, 1, 1, 1, 2] + [1] * 7 + [2, 1, 1, 1]
    # Table 1 note 1: the first pointwise layer of Stage 2 is not grouped; all others are
    assert units[0].pw1.conv.groups == 1
    assert all(u.pw1.conv.groups == g for u in units[1:])
    assert all(u.pw2.conv.groups == g for u in units)
    # §3.2: no ReLU after the depthwise conv; bottleneck = out / 4
    assert all(not hasattr(u.dw, "act") and u.dw.conv.groups == u.dw.conv.in_channels for u in units)
    assert all(u.pw1.conv.out_channels == u.pw2.conv.out_channels // 4 for u in units if u.stride == 1)


def test_stride2_unit_concatenates_avg_pooled_input():
    unit = ShuffleUnit(24, 240, 2, 3, group_first=False).eval()
    randomize_bn_stats(unit)
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        y = unit(x)
    assert y.shape == (2, 240, 8, 8)
    torch.testing.assert_close(y[:, :24], F.avg_pool2d(x, 3, 2, 1))
    assert (y[:, 24:] >= 0).all()  # the branch goes through a ReLU after the concat point


@pytest.mark.parametrize("shuffle", [False, True], ids=["no_shuffle", "shuffle"])
def test_shuffle_lets_every_output_group_see_every_input_group(shuffle):
    """Fig. 1 (a) vs (b): without the shuffle, stacked group convs keep each group to itself."""
    g, c = 4, 64
    unit = ShuffleUnit(c, c, 1, g, shuffle=shuffle).eval()
    randomize_bn_stats(unit)
    x = torch.randn(1, c, 8, 8)
    bumped = x.clone()
    bumped[:, : c // g] += 1.0  # input group 0 only
    with torch.no_grad():
        delta = (unit(bumped) - unit(x)).abs().amax((0, 2, 3)).reshape(g, c // g).amax(1)
    if shuffle:
        assert (delta > 0).all(), delta
    else:
        assert delta[0] > 0 and (delta[1:] == 0).all(), delta


def test_channel_shuffle_option_is_table3_ablation():
    a = backbones.create_model("shufflenet_v1_g3_x0_5", num_classes=5).eval()
    b = backbones.create_model("shufflenet_v1_g3_x0_5", num_classes=5, channel_shuffle=False).eval()
    b.load_state_dict(a.state_dict())
    assert backbones.count_params(a) == backbones.count_params(b)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-4
    g1 = backbones.create_model("shufflenet_v1_g1_x1_0", num_classes=5).eval()
    g1_off = backbones.create_model("shufflenet_v1_g1_x1_0", num_classes=5, channel_shuffle=False).eval()
    g1_off.load_state_dict(g1.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(g1(x), g1_off(x))  # one group: the shuffle is the identity


def test_se_shufflenet_costs_what_table5_says():
    # Table 5: ShuffleNet 2x (g = 3) 524 MFLOPs, with SE 527 MFLOPs (printed to 1 M)
    with torch.device("meta"):
        plain = backbones.create_model("shufflenet_v1_g3_x2_0")
        se = backbones.create_model("shufflenet_v1_g3_x2_0", se_ratio=16)
    extra = (backbones.count_macs(se, 224) - backbones.count_macs(plain, 224)) / 1e6
    assert abs(extra - (527 - 524)) <= 1.0, extra
    m = backbones.create_model("shufflenet_v1_g3_x0_5", se_ratio=16, num_classes=3).train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_drop_path_on_stride1_units_only():
    m = backbones.create_model("shufflenet_v1_g3_x0_5", drop_path_rate=0.2)
    units = [u for s in ("stage2", "stage3", "stage4") for u in m.body[s]]
    assert all(u.drop_path is None for u in units if u.stride == 2)  # no residual to drop
    rates = [u.drop_path.drop_prob for u in units if u.stride == 1]
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False)) and rates[-1] == pytest.approx(0.2)
    ref = backbones.create_model("shufflenet_v1_g3_x0_5")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), ref.eval()(x))  # identity in eval


def test_option_errors():
    with pytest.raises(ValueError, match=r"\(groups=5, scale=1.0\) has no channel table.*\(groups=8, scale=2.0\)"):
        backbones.create_model("shufflenet_v1_g3_x1_0", groups=5)
    with pytest.raises(ValueError, match=r"\(groups=3, scale=0.25\)"):
        backbones.create_model("shufflenet_v1_g3_x1_0", scale=0.25)
    with pytest.raises(ValueError, match=r"se_ratio=-1"):
        backbones.create_model("shufflenet_v1_g3_x1_0", se_ratio=-1)
    with pytest.raises(ValueError, match=r"bottleneck channels 10 are not a positive multiple of groups=3"):
        ShuffleUnit(40, 40, 1, 3)


def test_levels_and_stage_map():
    f = backbones.create_model("shufflenet_v1_g8_x0_5", features_only=True, out_features=("c1", "c2", "c3"))
    assert f.out_channels == {"c1": 16, "c2": 16, "c3": 192}  # megvii 0.5x g = 8: stem 16, Stage 2 192
    assert f.stage_modules()[:3] == [["body.stem"], ["body.pool"], ["body.stage2"]]
