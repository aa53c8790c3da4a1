"""Weight sharing is exact: a path of the supernet is the standalone Cell and the whole NASNet of its genotype.

The oracles are :class:`~backbones.nas.cell.Cell` and :class:`~backbones.nas.network.NASNet` themselves, built from
the sampled genotype with the shared weights copied in (random weights and BatchNorm statistics, eval and train mode).
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

from backbones.nas.cell import Cell
from backbones.nas.network import NASNet
from backbones.nas.space import SPACES, build_space
from backbones.nas.supernet import Supernet, check_shareable

SHAREABLE = {
    "enas_micro": SPACES["enas_micro"],  # ENAS conventions: calibrated inputs, factorized identity reductions
    "nasnet_a_add": build_space("nasnet_a", combines=["add"]),  # TF-slim: raw stem input, all 13 ops
    "nasnet_c": build_space("nasnet_c", combines=["add", "add_layernorm", "add_instancenorm"]),
}


def _supernet(space, seed=0):
    torch.manual_seed(seed)
    net = Supernet(space, num_cells=1, channels=4, num_classes=5)
    randomize_bn_stats(net, seed)
    return net


@pytest.mark.parametrize("key", list(SHAREABLE))
def test_a_path_is_the_standalone_network_and_its_cells(key):
    space = SHAREABLE[key]
    net = _supernet(space)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=g)
    outs = []
    for i in range(2):
        geno = space.decode(space.sample_uniform(g), f"sample{i}")
        child = NASNet(**net.child_options(geno))
        child.load_state_dict(net.child_state_dict(geno))  # strict: the names and shapes are NASNet's own
        for mode in ("eval", "train"):
            net.train(mode == "train")
            child.train(mode == "train")
            with torch.no_grad():
                got, want = net(x, geno), child(x)
            assert (got - want).abs().max().item() < 1e-5, (key, i, mode)
        outs.append(got)
        # each cell alone: the shared tensors of its position loaded into a Cell built from the genotype
        plan, _ = net.plan(geno)
        for shared, (cell, in_ch, cols) in zip(net.cells, plan):
            standalone = Cell(cell, in_ch, *shared.args)
            standalone.load_state_dict(shared.tensors(cell, in_ch, cols))
            inputs = [torch.randn(2, c, 4 * f, 4 * f, generator=g) for c, f in zip(in_ch, shared.args[0])]
            acts = [t.relu() for t in inputs]
            standalone.eval()
            shared.eval()
            with torch.no_grad():
                assert (shared(cell, in_ch, cols, inputs, acts) - standalone(inputs, acts)).abs().max() < 1e-5
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # two samples select different paths


def test_training_a_path_trains_exactly_its_child():
    """The gradient a sampled child sends into the shared weights is the standalone child's gradient."""
    space = SHAREABLE["enas_micro"]
    net = _supernet(space)
    g = torch.Generator().manual_seed(1)
    geno = space.decode(space.sample_uniform(g))
    child = NASNet(**net.child_options(geno))
    child.load_state_dict(net.child_state_dict(geno))
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(net.train()(x, geno), y).backward()
    torch.nn.functional.cross_entropy(child.train()(x), y).backward()
    torch.testing.assert_close(net.stem.conv.weight.grad, child.stem.conv.weight.grad, rtol=1e-4, atol=1e-6)
    blk = geno.normal.blocks[0]
    shared_op = net.cells[0].ops[0][0][blk.left][blk.left_op]
    child_op = child.cells["cell_0"].ops[0]
    for (name, a), (_, b) in zip(shared_op.named_parameters(), child_op.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    unused = [op for op in space.ops if op != blk.left_op]
    assert all(p.grad is None for op in unused for p in net.cells[0].ops[0][0][blk.left][op].parameters())


def test_spaces_without_one_set_of_weights_are_refused():
    with pytest.raises(ValueError, match="emits every block state separately.*strategy=random or strategy=rl"):
        check_shareable(SPACES["nasnet_b"])
    with pytest.raises(ValueError, match=r"combine\(s\) concat.*search.space.combines=\[add\]"):
        Supernet(SPACES["nasnet_a"])
    net = Supernet(SPACES["enas_micro"], num_cells=1, channels=4)
    other = build_space("nasnet_a", combines=["add"])
    with pytest.raises(Exception, match="not in space 'enas_micro'"):
        net(torch.randn(1, 3, 16, 16), other.decode(other.sample_uniform(torch.Generator().manual_seed(0))))
