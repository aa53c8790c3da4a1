"""NAS family: twin parity, the papers' counts, genotypes as data, the cell machinery NASNet-B/C need,
ScheduledDropPath and the auxiliary head.

Oracles: timm's ``nasnetalarge`` / ``pnasnet5large`` (and timm's NASNetALarge class at a tiny width) with the same
weights; the counts of ``shared/reference/arch_reference.md`` 8-11 and the papers' tables; DARTS' transcription of
NASNet-A (quark0/darts cnn/genotypes.py); the definitions of LayerNorm / InstanceNorm / DropPath.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn_stats

import backbones
from backbones.nas.cell import Cell, Combine
from backbones.nas.genotypes import (
    GENOTYPES,
    NASNET_A,
    Block,
    CellGenotype,
    Genotype,
    GenotypeError,
    cell_from_enas_arc,
    decode_enas_macro_arc,
)
from backbones.nas.network import NASNet, nasnet_a
from backbones.nas.ops import OpContext


def meta_counts(name: str, side: int | None = None, **options) -> tuple[int, int | None]:
    """Params and MACs counted on the meta device (no memory, no arithmetic)."""
    with torch.device("meta"):
        m = backbones.create_model(name, **options)
        return backbones.count_params(m), backbones.count_macs(m, side) if side else None


# ---- twin parity --------------------------------------------------------------------------------------------------
def _parity(name: str, twin, side: int, tmp_path, **options) -> None:
    torch.manual_seed(0)
    ref = twin.eval()
    randomize_bn_stats(ref)
    path = tmp_path / "twin.pth"
    torch.save(ref.state_dict(), path)
    ours = backbones.create_model(name, pretrained=str(path), reference_padding=True, **options).eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() < 1e-4
        feats_ref, feats = ref.forward_features(x), ours.forward_features(x)
        assert feats.shape == feats_ref.shape
        assert (feats - feats_ref).abs().max().item() < 1e-4 * max(1.0, feats_ref.abs().max().item())


@pytest.mark.parametrize("side", [96, 99])
def test_tiny_nasnet_matches_timm_class(side, tmp_path):
    """timm's NASNetALarge at 6 @ 384: the whole wiring, stem cells, SAME padding on even and odd sides."""
    from timm.models.nasnet import NASNetALarge

    twin = NASNetALarge(num_features=384, num_classes=10)
    _parity("nasnet_a_large", twin, side, tmp_path, num_cells=6, penultimate_filters=384, num_classes=10)


@pytest.mark.slow
@pytest.mark.parametrize("side", [331, 224])
@pytest.mark.parametrize("name,twin", [("nasnet_a_large", "nasnetalarge"), ("pnasnet5_large", "pnasnet5large")])
def test_twin_parity(name, twin, side, tmp_path):
    timm = pytest.importorskip("timm")
    _parity(name, timm.create_model(twin, pretrained=False), side, tmp_path)


def test_default_padding_differs_from_reference(tmp_path):
    """The parity above is not vacuous: the default (exact H / 2**i) padding computes something else."""
    a = nasnet_a(num_cells=2, penultimate_filters=96, reference_padding=True).eval()
    b = nasnet_a(num_cells=2, penultimate_filters=96).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert a.forward_features(x).shape[-1] == 2 == b.forward_features(x).shape[-1]
        assert (a(x) - b(x)).abs().max() > 1e-4


# ---- counts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,side,params,macs",
    [
        ("nasnet_a_large", 331, 88_753_150, 23.78e9),  # Table 2: 88.9 M (with BN moving stats) / 23.8 B
        ("nasnet_a_mobile", 224, 5_289_978, 564e6),  # Table 3: 5.3 M / 564 M
        ("nasnet_a_cifar", 32, 3_346_538, None),  # Table 1: 3.3 M
        ("pnasnet5_large", 331, 86_057_668, 24.937e9),  # timm pnasnet5large
    ],
)
def test_counts(name, side, params, macs):
    n, m = meta_counts(name, side, reference_padding=backbones.model_card(name).detection_ready)
    assert n == params
    if macs:
        assert abs(m - macs) <= 0.002 * macs


@pytest.mark.parametrize(
    "name,options,aux",
    [
        ("nasnet_a_large", {}, 4_567_784),
        ("nasnet_a_mobile", {}, 2_411_240),
        ("nasnet_a_cifar", {}, 1_631_498),
        ("enas_micro_cifar", {}, 494_848),
    ],
)
def test_aux_head_counts(name, options, aux):
    base, _ = meta_counts(name)
    with_aux, _ = meta_counts(name, aux_head=True, **options)
    assert with_aux - base == aux


def test_enas_layer_count_reproducing_the_paper():
    """The released script (5 cells per stage) is 3.89 M; 6 per stage gives the paper's 4.6 M (ENAS table)."""
    assert meta_counts("enas_micro_cifar")[0] == 3_894_372
    n6 = meta_counts("enas_micro_cifar", num_cells=6)[0]
    assert n6 == 4_587_372 and abs(n6 - 4.6e6) <= 0.005 * 4.6e6


def test_enas_macro_as_the_code_builds_it():
    assert meta_counts("enas_macro_cifar", separable=False)[0] == 42_559_392


def test_any_n_at_f():
    """N @ F from the builder: F0 = F / 24 and every stage doubles; cells per stage as asked."""
    m = nasnet_a(num_cells=2, penultimate_filters=480, stem="cifar")
    assert m.num_features == 480
    assert [f.channels for f in m.feature_info] == [120, 240, 480]
    assert sum(not k.startswith("reduction") for k in m.cells) == 6
    imagenet = backbones.create_model("nasnet_a_mobile", num_cells=3, penultimate_filters=576)
    assert [f.channels for f in imagenet.feature_info] == [32, 24, 144, 288, 576]
    with pytest.raises(ValueError, match="F0=22, but factorized reductions need F0 to be a multiple of 4"):
        nasnet_a(num_cells=3, penultimate_filters=528)
    with pytest.raises(ValueError, match="nearest valid: 1536 or 1560"):
        nasnet_a(num_cells=5, penultimate_filters=1538)
    with pytest.raises(ValueError, match="stem='cfar' is not valid"):
        nasnet_a(stem="cfar")


@pytest.mark.parametrize("reference,sides", [(False, [112, 56, 28, 14, 7]), (True, [111, 56, 28, 14, 7])])
def test_imagenet_levels(reference, sides):
    f = backbones.create_model(
        "nasnet_a_mobile", features_only=True, out_features=("c1", "c2", "c3", "c4", "c5"), reference_padding=reference
    ).eval()
    with torch.no_grad():
        out = f(torch.randn(1, 3, 224, 224))
    assert [t.shape[-1] for t in out.values()] == sides
    assert [t.shape[1] for t in out.values()] == [32, 44, 264, 528, 1056]
    assert all((t >= 0).all() for k, t in out.items() if k != "c1")  # cell levels are after ReLU


def test_features_stop_at_deepest_level():
    f = backbones.create_model("nasnet_a_mobile", features_only=True, out_features=("c3",))
    assert list(f.cells) == ["cell_stem_0", "cell_stem_1", "cell_0", "cell_1", "cell_2", "cell_3"]
    assert not hasattr(f, "fc") and not hasattr(f, "aux_head")


# ---- genotypes ----------------------------------------------------------------------------------------------------
# quark0/darts cnn/genotypes.py NASNet (DARTS indexing: 0 = C_{k-2}, 1 = C_{k-1}; concat as the paper's figure)
DARTS_NASNET_NORMAL = [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
                       ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
                       ("sep_conv_3x3", 1), ("skip_connect", 1)]  # fmt: skip
DARTS_NASNET_REDUCE = [("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
                       ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
                       ("sep_conv_3x3", 2), ("max_pool_3x3", 1)]  # fmt: skip


@pytest.mark.parametrize(
    "cell,darts,darts_concat,extra",
    [
        (NASNET_A.normal, DARTS_NASNET_NORMAL, [2, 3, 4, 5, 6], {1}),
        (NASNET_A.reduce, DARTS_NASNET_REDUCE, [4, 5, 6], {3}),
    ],
)
def test_nasnet_a_matches_darts_transcription(cell, darts, darts_concat, extra):
    swap = {0: 1, 1: 0}
    ours = [(op if op != "identity" else "skip_connect", swap.get(i, i))
            for b in cell.blocks for op, i in ((b.left_op, b.left), (b.right_op, b.right))]  # fmt: skip
    assert ours == darts
    # the released checkpoints concatenate one more state than the figure: h_{i-1} (normal), s3 (reduction)
    assert set(cell.concat) == set(darts_concat) | extra


def test_enas_arc_conversion():
    g = GENOTYPES["enas_micro"]
    # cifar10_micro_final.sh normal node 2 is "0 2 0 0": avg(h_{i-1}) + sep3(h_{i-1}); ours index h_{i-1} as 1
    assert g.normal.blocks[0] == Block(1, "avg_pool_3x3", 1, "sep_conv_3x3")
    assert g.normal.concat == (2, 3, 4, 5, 6) and g.reduce.concat == (2, 4, 5, 6)
    layers = decode_enas_macro_arc()
    assert len(layers) == 24 and layers[7].skips == (1, 2, 4, 5, 6) and layers[0].op == "conv_3x3"


def _blocks(*specs):
    return tuple(Block(*s) for s in specs)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(blocks=_blocks((0, "sep_conv_3x3", 1, "sep_conv_33")), concat=(2,)),
         r"block 0 \(creates state 2\): right op 'sep_conv_33' is unknown \(did you mean 'sep_conv_3x3'.*valid: iden"),
        (dict(blocks=_blocks((0, "identity", 1, "identity"), (3, "identity", 5, "identity")), concat=(3,)),
         r"block 1 \(creates state 3\): left input 3 is out of range; valid states here: 0\.\.2"),
        (dict(blocks=_blocks((0, "identity", 1, "identity")), concat=(2, 4)),
         r"concat names state 4, which does not exist; valid states: 0\.\.2"),
        (dict(blocks=_blocks((0, "identity", 1, "identity", "mul")), concat=(2,)),
         r"combine 'mul' is unknown; valid: add, concat, add_layernorm, add_instancenorm"),
        (dict(blocks=_blocks((0, "identity", 1, "identity")), concat=(2,), outputs=(2, 1)),
         r"exactly one of concat"),
        (dict(blocks=_blocks((0, "identity", 1, "identity")), outputs=(2,)),
         r"emits 1 outputs but takes 2 inputs"),
        (dict(blocks=(), concat=(0,)), r"has no blocks"),
    ],
)  # fmt: skip
def test_genotype_validator(kwargs, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        CellGenotype("toy", **kwargs)


def test_unknown_genotype_and_enas_op():
    with pytest.raises(KeyError, match="did you mean 'nasnet_a'"):
        NASNet(genotype="nasnet_b")
    with pytest.raises(GenotypeError, match="ENAS op id 7 is unknown"):
        cell_from_enas_arc("bad", "0 7 0 0")
    with pytest.raises(ValueError, match="no drop path"):
        backbones.create_model("enas_macro_cifar", drop_path_rate=0.1)


# ---- machinery NASNet-B / NASNet-C need (hand-written toy genotypes; their real cells are figures only) -------------
def test_combines_follow_their_definitions():
    a, b = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(Combine("add", 8)(a, b), a + b)
    assert Combine("concat", 8)(a, b).shape == (2, 16, 5, 5)
    torch.testing.assert_close(Combine("add_layernorm", 8)(a, b), F.layer_norm(a + b, (8, 5, 5)), atol=1e-5, rtol=0)
    torch.testing.assert_close(Combine("add_instancenorm", 8)(a, b), F.instance_norm(a + b), atol=1e-5, rtol=0)


TOY_B = Genotype(  # NASNet-B wiring: 4 inputs, B = 4, every created state emitted, no concatenation
    "toy_b",
    normal=CellGenotype("toy_b.normal", _blocks((0, "sep_conv_3x3", 1, "identity", "add_layernorm"),
                                                (2, "avg_pool_3x3", 4, "conv_1x1", "concat"),
                                                (3, "max_pool_3x3", 5, "identity", "add_instancenorm"),
                                                (6, "conv_1x7_7x1", 0, "dil_conv_3x3")),
                        outputs=(4, 5, 6, 7), num_inputs=4),
    reduce=CellGenotype("toy_b.reduce", _blocks((0, "sep_conv_5x5", 3, "max_pool_5x5", "add"),
                                                (1, "conv_3x3", 4, "conv_1x3_3x1", "concat"),
                                                (2, "sep_conv_7x7", 5, "max_pool_7x7", "add_layernorm"),
                                                (6, "identity", 4, "identity", "add")),
                        outputs=(4, 5, 6, 7), num_inputs=4),
)  # fmt: skip
TOY_C = Genotype(  # NASNet-C style: B = 4, unused states concatenated, normalised sums
    "toy_c",
    normal=CellGenotype("toy_c.normal", _blocks((0, "sep_conv_3x3", 1, "avg_pool_3x3", "add_instancenorm"),
                                                (2, "identity", 1, "sep_conv_5x5", "add_layernorm"),
                                                (0, "max_pool_3x3", 3, "identity"),
                                                (2, "sep_conv_3x3", 0, "identity", "add_layernorm")),
                        concat=(4, 5)),
    reduce=NASNET_A.reduce,
)  # fmt: skip


@pytest.mark.parametrize("genotype", [TOY_B, TOY_C], ids=["toy_b", "toy_c"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_toy_genotypes_build_run_train_and_trace(genotype, stem):
    width = 64 if genotype is TOY_B else 128
    side = 96 if stem == "imagenet" else 32
    m = NASNet(
        genotype, num_cells=1, penultimate_filters=width, stem=stem, num_classes=5, aux_head=True, input_size=side
    )
    logits, aux = m.train()(torch.randn(2, 3, side, side))
    assert logits.shape == aux.shape == (2, 5)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in m.parameters())
    f = NASNet(genotype, num_cells=1, penultimate_filters=width, stem=stem)
    f.configure(features_only=True, out_features=f.feature_names)
    gm = torch.fx.symbolic_trace(f.eval())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = f(x), gm(x)
    assert [tuple(t.shape[-2:]) for t in a.values()] == [(64 // fi.stride,) * 2 for fi in f.feature_info]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_multi_output_wiring():
    """Output k of a NASNet-B cell feeds input k of the k-th next cell (paper Fig. 8)."""
    m = NASNet(TOY_B, num_cells=2, penultimate_filters=64, stem="cifar")
    specs = {sp.name: sp for sp in m._specs}
    index = {sp.name: i for i, sp in enumerate(m._specs, start=1)}
    cell_3 = specs["cell_3"]  # after cell_2, reduction_cell_0, cell_1, cell_0
    assert [(r.p, r.k) for r in cell_3.inputs] == [
        (index["cell_2"], 0), (index["reduction_cell_0"], 1), (index["cell_1"], 2), (index["cell_0"], 3)
    ]  # fmt: skip
    assert [r.raw for r in specs["cell_0"].inputs] == [False, True, True, True]  # TF-slim: missing = raw stem


# ---- ScheduledDropPath --------------------------------------------------------------------------------------------
def test_scheduled_drop_path_scales_with_depth_and_progress():
    m = backbones.create_model("nasnet_a_cifar", drop_path_rate=0.4)
    cells = list(m.cells.values())
    total = len(cells)
    for progress in (0.0, 0.5, 1.0):
        backbones.set_drop_path_progress(m, progress)
        probs = [c.drop_path.current_drop_prob for c in cells]
        expected = [0.4 * (i + 1) / total * progress for i in range(total)]
        assert probs == pytest.approx(expected)  # TF-slim: keep = 1 - (cell+1)/total * (1 - keep_prob) * progress
    assert probs[-1] == pytest.approx(0.4)


def _toy_cell(block: Block, drop_prob: float) -> Cell:
    g = CellGenotype("toy", (block,), concat=(2,))
    return Cell(g, [4, 4], [1, 1], [False, False], 4, 1, OpContext(), drop_prob=drop_prob)


def test_drop_path_never_drops_identity_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 6, 6)
    ident = _toy_cell(Block(0, "identity", 0, "identity"), 0.9).train()
    backbones.set_drop_path_progress(ident, 1.0)
    ident.pre[0].bn.eval()  # fixed projection, so the reference below is exact
    h0 = ident.pre[0](F.relu(x))
    torch.testing.assert_close(ident([x, x], [F.relu(x), F.relu(x)]), 2 * h0)

    pool = _toy_cell(Block(0, "identity", 0, "avg_pool_3x3"), 0.5).train()
    backbones.set_drop_path_progress(pool, 1.0)
    pool.pre[0].bn.eval()
    h0 = pool.pre[0](F.relu(x))
    path = pool([x, x], [F.relu(x), F.relu(x)]) - h0
    pooled = F.avg_pool2d(h0, 3, 1, 1, count_include_pad=False)
    kept = torch.isclose(path, pooled / 0.5, atol=1e-5).flatten(1).all(1)
    dropped = (path.abs() < 1e-6).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 10 < int(dropped.sum()) < 54  # per sample, p = 0.5

    backbones.set_drop_path_progress(pool, 0.0)  # start of training: nothing dropped
    torch.testing.assert_close(pool([x, x], [F.relu(x), F.relu(x)]) - h0, pooled)


def test_drop_path_off_in_eval():
    m = backbones.create_model("nasnet_a_cifar", drop_path_rate=0.5, num_cells=1, penultimate_filters=96).eval()
    ref = backbones.create_model("nasnet_a_cifar", num_cells=1, penultimate_filters=96).eval()
    ref.load_state_dict(m.state_dict())
    backbones.set_drop_path_progress(m, 1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))


# ---- auxiliary head -----------------------------------------------------------------------------------------------
def test_aux_head_train_only_and_placed_at_two_thirds():
    m = backbones.create_model("nasnet_a_mobile", aux_head=True, num_classes=7)
    # A.7 / TF-slim: after the last cell of the second stage (cell_7 of 12), i.e. stride 16, 528 channels
    assert m._specs[m._aux_at - 1].name == "cell_7"
    assert m.aux_head.conv1.in_channels == 528 and m.aux_head.conv2.kernel_size == (4, 4)  # 14 -> 5x5/3 -> 4
    x = torch.randn(2, 3, 224, 224)
    logits, aux = m.train()(x)
    assert logits.shape == aux.shape == (2, 7)
    with torch.no_grad():
        assert m.eval()(x).shape == (2, 7)
    enas = backbones.create_model("enas_micro_cifar", aux_head=True)
    assert enas._specs[enas._aux_at - 1].name == "cell_10"  # ENAS: layer pool_layers[-1] + 1 = 12 of 17
    assert enas.aux_head.conv1.in_channels == 720


# ---- optimisations that must not change the maths -----------------------------------------------------------------
def test_direct_concat_and_memory_format_keep_the_maths():
    torch.manual_seed(0)
    m = backbones.create_model("nasnet_a_cifar", num_cells=2, penultimate_filters=192).eval()
    randomize_bn_stats(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.enable_grad():
        ref = m(x).detach()  # autograd on: concatenation after the fact
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref)  # autograd off: blocks written into the output buffer
        m.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


# ---- BatchNorm settings of the authors' code ----------------------------------------------------------------------
@pytest.mark.parametrize("name,options", [("enas_micro_cifar", {"aux_head": True}), ("enas_macro_cifar", {})])
def test_enas_batchnorm_eps_is_the_fixed_arc_codes(name, options):
    """melodyguan/enas ``src/cifar10/image_ops.py`` ``batch_norm`` (what the fixed-arc children call): epsilon
    1e-5, decay 0.9; 1e-3 is only the default of the search-mode ``batch_norm_with_mask``."""
    with torch.device("meta"):
        m = backbones.create_model(name, **options)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert len(bns) > 50
    assert {bn.eps for bn in bns} == {1e-5} and {bn.momentum for bn in bns} == {0.1}


# ---- export: torch.jit.trace (its own re-trace check on), torch.export, no device baked in --------------------------
# One tiny configuration per builder / genotype / stem, classifier or features_only in turn (fast), and every registered
# NAS model in both forms (slow).
TINY = [
    ("nasnet_a_mobile", True, dict(num_cells=1, penultimate_filters=96)),
    ("nasnet_a_large", False, dict(num_cells=1, penultimate_filters=96)),  # skip_reduction_layer_input=True
    ("pnasnet5_large", True, dict(num_cells=1, penultimate_filters=80)),
    ("nasnet_a_cifar", False, dict(num_cells=1, penultimate_filters=96)),
    ("enas_micro_cifar", True, dict(num_cells=1, penultimate_filters=80)),
    ("enas_macro_cifar", False, dict(out_filters=8)),
]


def _outputs(y) -> list[torch.Tensor]:
    return list(y.values()) if isinstance(y, dict) else [y]


def _assert_same(ref, got) -> None:
    """Equal relative to the output's scale (random-weight NASNet features reach 1e4)."""
    ref, got = _outputs(ref), _outputs(got)
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * a.abs().max().clamp_min(1.0)


def _export_model(name: str, features_only: bool, **options) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = backbones.create_model(name, features_only=features_only, **options).eval()
    randomize_bn_stats(m)
    side = 64 if backbones.model_card(name).detection_ready else 32
    return m, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def _device_constants(traced: torch.jit.ScriptModule) -> list:
    return [
        n
        for n in traced.inlined_graph.nodes()
        if n.kind() == "prim::Constant" and n.output().type().kind() == "DeviceObjType"
    ]


def _check_trace(m: torch.nn.Module, x: torch.Tensor, meta: bool = False) -> None:
    """Traced with autograd on, then checked by torch.jit.trace itself under no_grad (the cells' buffer fast path made
    the two graphs differ), equal to eager with the fast path; traced again under no_grad, where eager would take the
    fast path: no device constant in the graph (``meta``: and it runs on the meta device)."""
    strict = not m.features_only  # a dict of levels is a valid output only with strict=False
    traced = torch.jit.trace(m, x, strict=strict)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no profiling passes: faster for a one-off run
        _assert_same(m(x), traced(x))
        traced = torch.jit.trace(m, x, strict=strict, check_trace=False)
        assert _device_constants(traced) == []
        if meta:
            out = traced.to("meta")(torch.empty(x.shape, device="meta"))
            assert {t.device.type for t in _outputs(out)} == {"meta"}


def _check_export(m: torch.nn.Module, x: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    x3 = torch.cat([x, x[:1] * 0.5])
    with torch.no_grad():
        _assert_same(m(x3), ep.module()(x3))


@pytest.mark.parametrize(
    "name,features_only,options", TINY, ids=[f"{n}-{'features' if f else 'classifier'}" for n, f, _ in TINY]
)
def test_tiny_nas_traces_exactly_on_any_device(name, features_only, options):
    _check_trace(*_export_model(name, features_only, **options), meta=name == "nasnet_a_mobile")


@pytest.mark.parametrize("index", [0, 4], ids=["nasnet_a_mobile-features", "enas_micro_cifar-features"])
def test_tiny_nas_exports_with_dynamic_batch(index):
    name, features_only, options = TINY[index]
    _check_export(*_export_model(name, features_only, **options))


def test_box_head_tail_traces_exactly():
    f, _ = _export_model("nasnet_a_mobile", True, out_features=("c4", "c5"), num_cells=2, penultimate_filters=96)
    head = f.make_box_head("c4")
    rois = torch.rand(3, f.out_channels["c4"], 7, 7, generator=torch.Generator().manual_seed(2))
    traced = torch.jit.trace(head, rois)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        _assert_same(head(rois), traced(rois))
        assert _device_constants(torch.jit.trace(head, rois, check_trace=False)) == []


@pytest.mark.slow
@pytest.mark.parametrize("features_only", [False, True], ids=["classifier", "features"])
@pytest.mark.parametrize("name", backbones.list_models(family="nas"))
def test_every_nas_model_traces_and_exports_exactly(name, features_only):
    m, x = _export_model(name, features_only)
    _check_trace(m, x, meta=True)
    _check_export(m, x)
