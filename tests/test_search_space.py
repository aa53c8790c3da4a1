"""Search spaces as data: sampling covers the space, decisions <-> genotypes, genotype files, every sample builds.

Oracles from outside this code: the paper's operation list and decision count (Zoph et al. 2018 section 3: 13 ops,
2 x 5B predictions), the ENAS authors' released arc (``cifar10_micro_final.sh``, decoded by
``genotypes.cell_from_enas_arc``) as a member of the ENAS micro space, and NASNet itself building each sample.
"""

from __future__ import annotations

import json

import pytest
import torch

from backbones.nas.genotypes import ENAS_MICRO, NASNET_A, OPS, GenotypeError
from backbones.nas.network import NASNet, output_width
from backbones.nas.space import (
    SPACES,
    build_space,
    genotype_from_dict,
    genotype_to_dict,
    read_genotype,
    resolve_genotype,
)


def test_the_papers_spaces():
    a = SPACES["nasnet_a"]
    assert len(a.ops) == 13 and a.ops == OPS and a.combines == ("add", "concat")  # section 3's list, step 5
    assert a.num_blocks == 5 and a.num_decisions == 2 * 5 * 5  # "2 x 5B predictions", B = 5
    e = SPACES["enas_micro"]
    assert set(e.ops) == {"identity", "sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3"}
    assert e.combines == ("add",) and e.conventions == "enas"
    b = SPACES["nasnet_b"]
    assert (b.num_inputs, b.num_blocks, b.output) == (4, 4, "all_blocks")  # appendix B
    assert set(b.combines) == {"add", "concat", "add_layernorm", "add_instancenorm"}
    assert SPACES["nasnet_c"].output == "concat_unused_blocks" and SPACES["nasnet_c"].combines == b.combines


@pytest.mark.parametrize("name", list(SPACES))
def test_uniform_samples_validate_and_cover_every_op_input_and_combine(name):
    space = SPACES[name]
    g = torch.Generator().manual_seed(0)
    seen = set()
    for i in range(1000):
        decisions = space.sample_uniform(g)
        geno = space.decode(decisions, f"s{i}")  # CellGenotype validates at construction
        assert space.encode(geno) == decisions
        for kind, cell in (("normal", geno.normal), ("reduce", geno.reduce)):
            for b, blk in enumerate(cell.blocks):
                seen |= {(kind, b, "left", blk.left), (kind, b, "right", blk.right)}
                seen |= {(kind, "left_op", blk.left_op), (kind, "right_op", blk.right_op), (kind, blk.combine)}
    for kind in ("normal", "reduce"):
        for b in range(space.num_blocks):
            for side in ("left", "right"):
                missing = [s for s in range(space.num_inputs + b) if (kind, b, side, s) not in seen]
                assert not missing, f"{kind} block {b} {side}: inputs {missing} never sampled"
        for side in ("left_op", "right_op"):
            assert not [op for op in space.ops if (kind, side, op) not in seen]
        assert not [c for c in space.combines if (kind, c) not in seen]


def test_cell_outputs_follow_each_rule():
    e, a, b = SPACES["enas_micro"], SPACES["nasnet_a"], SPACES["nasnet_b"]
    chain = [0, 1, 0, 0, 0] + [2, 2, 0, 0, 0] + [3, 3, 0, 0, 0] + [4, 4, 0, 0, 0] + [5, 5, 0, 0, 0]
    assert e.decode(chain * 2).normal.concat == (6,)  # inputs 0, 1 and states 2..5 are read
    one_input = [0, 0, 0, 0, 0] + [2, 2, 0, 0, 0] + [3, 3, 0, 0, 0] + [4, 4, 0, 0, 0] + [5, 5, 0, 0, 0]
    assert e.decode(one_input * 2).normal.concat == (1, 6)  # ENAS: an unused input is concatenated too
    assert a.decode(one_input * 2).normal.concat == (6,)  # NASNet section 3: unused states created in the cell
    assert b.decode([0] * 40).normal.outputs == (4, 5, 6, 7)


def test_released_enas_arc_is_a_point_of_the_enas_space():
    space = SPACES["enas_micro"]
    decisions = space.encode(ENAS_MICRO)
    again = space.decode(decisions, ENAS_MICRO.name)
    assert (again.normal, again.reduce, again.conventions) == (ENAS_MICRO.normal, ENAS_MICRO.reduce, "enas")
    # NASNet-A's released cells concatenate h_{i-1} although a block reads it (TF-slim), which no rule of the
    # paper's space forms: the space names that instead of silently mis-encoding
    with pytest.raises(GenotypeError, match="outputs are not what space 'nasnet_a' forms"):
        SPACES["nasnet_a"].encode(NASNET_A)


def test_subsets_and_bad_spaces_are_named():
    sub = build_space("nasnet_a", ops=["sep_conv_3x3", "identity"], combines=["add"], num_blocks=3)
    assert sub.ops == ("sep_conv_3x3", "identity") and sub.num_decisions == 30 and sub.name.startswith("nasnet_a[")
    with pytest.raises(ValueError, match=r"op 'sep_conv_3x4' is not in it \(did you mean 'sep_conv_3x3'"):
        build_space("enas_micro", ops=["sep_conv_3x4"])
    with pytest.raises(ValueError, match="search space='enas_mikro' is not valid.*did you mean 'enas_micro'"):
        build_space("enas_mikro")
    with pytest.raises(ValueError, match="these numbers must match"):
        build_space("nasnet_b", num_blocks=5)
    with pytest.raises(GenotypeError, match=r"decision 6 \(normal block 1 right\) = 9 is out of range; valid: 0..2"):
        SPACES["enas_micro"].decode([0] * 6 + [9] + [0] * 43)


def test_genotype_file_roundtrip_and_errors(tmp_path):
    space = SPACES["nasnet_c"]
    geno = space.decode(space.sample_uniform(torch.Generator().manual_seed(3)), "found")
    path = tmp_path / "found.json"
    path.write_text(json.dumps(genotype_to_dict(geno, reward=0.9)))
    assert read_genotype(path) == geno == resolve_genotype(str(path)) == resolve_genotype(genotype_to_dict(geno))
    assert resolve_genotype("enas_micro") is ENAS_MICRO
    d = genotype_to_dict(geno)
    d["normal"]["blocks"][1]["left_op"] = "sep_conv_3x4"
    with pytest.raises(GenotypeError, match=r"block 1 \(creates state 3\): left op 'sep_conv_3x4' is unknown"):
        genotype_from_dict(d)
    with pytest.raises(GenotypeError, match="missing key.*reduce"):
        genotype_from_dict({"name": "x", "normal": genotype_to_dict(geno)["normal"]})
    with pytest.raises(ValueError, match=r"unknown key genotype\.rewad.*did you mean 'reward'|unknown key .*rewad"):
        genotype_from_dict({**genotype_to_dict(geno), "rewad": 1})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json' is not valid JSON"):
        read_genotype(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="neither a registered genotype.*did you mean 'nasnet_a'"):
        resolve_genotype("nasnet_b")


@pytest.mark.parametrize("name", list(SPACES))
def test_sampled_genotypes_build_and_run(name):
    space = SPACES[name]
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        geno = space.decode(space.sample_uniform(g), f"s{i}")
        width = output_width(geno.normal)
        m = NASNet(geno, num_cells=1, penultimate_filters=4 * 4 * width, stem="cifar", num_classes=3)
        out = m(torch.randn(2, 3, 16, 16))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
