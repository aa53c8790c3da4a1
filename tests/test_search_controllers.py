"""The controllers: what they sample is a valid, buildable genotype; scoring given decisions reproduces the sampled
log-probability; and REINFORCE / PPO learn a synthetic reward (the fraction of op decisions that are one chosen op)."""

from __future__ import annotations

import pytest
import torch

from backbones.nas.controller import ENASController, NASNetController, build_controller
from backbones.nas.network import NASNet
from backbones.nas.space import SPACES
from backbones.nas.supernet import child_options
from classification.search.strategies import PolicyTrainer

TARGET = "max_pool_3x3"  # not a separable conv: ENAS's initial op bias works against it


@pytest.fixture(autouse=True)
def one_thread():
    """LSTM-cell steps are tiny ops: one thread runs them several times faster than two on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _frequency(controller, space, n: int, seed: int) -> float:
    """Fraction of sampled op decisions equal to TARGET (the expected synthetic reward)."""
    g = torch.Generator().manual_seed(seed)
    kinds, target = space.kinds(), space.ops.index(TARGET)
    hits = total = 0
    with torch.no_grad():
        for _ in range(n):
            ops = [d for d, k in zip(controller.sample(g).decisions, kinds) if k == "op"]
            hits, total = hits + sum(o == target for o in ops), total + len(ops)
    return hits / total


@pytest.mark.parametrize("kind", ["nasnet", "enas"])
@pytest.mark.parametrize("name", ["enas_micro", "nasnet_b"])
def test_samples_are_valid_genotypes_that_build_and_score_back(kind, name):
    space = SPACES[name]
    torch.manual_seed(0)
    ctrl = build_controller(kind, space)
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        s = ctrl.sample(g)
        geno = ctrl.genotype(s.decisions, f"c{i}")  # validated by CellGenotype
        again = ctrl.evaluate(s.decisions)
        torch.testing.assert_close(again.log_prob, s.log_prob)
        torch.testing.assert_close(again.entropy, s.entropy)
        if i == 0:
            net = NASNet(**child_options(geno, channels=4, num_cells=1, num_classes=3))
            assert net(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_enas_controller_details():
    """micro_controller.py: separable convs start favoured (b_soft 10), op logits bounded by 1.10 / 2.5."""
    ctrl = ENASController(SPACES["enas_micro"])
    assert ctrl.w_soft.bias.tolist() == [10.0, 10.0, 0.0, 0.0, 0.0]
    assert ctrl.lstm[0].hidden_size == 64 and ctrl.tanh_constant == 1.10 and ctrl.op_tanh_reduce == 2.5
    assert NASNetController(SPACES["nasnet_a"]).lstm.hidden_size == 100  # NASNet A.2
    assert all(-0.1 <= p.min() and p.max() <= 0.1 for p in NASNetController(SPACES["nasnet_a"]).parameters())


@pytest.mark.parametrize(
    "kind, algorithm, lr, steps, gain",
    [("nasnet", "reinforce", 0.03, 12, 0.3), ("nasnet", "ppo", 0.02, 12, 0.3), ("enas", "reinforce", 0.1, 20, 0.05)],
)
def test_policy_gradient_learns_a_synthetic_reward(kind, algorithm, lr, steps, gain):
    """A fixed number of updates of 8 samples (seeded; learning rates raised for a short test): the chosen op's
    sampled frequency and the batch reward rise measurably. ENAS's tanh constant caps an op logit at +-0.44, so its
    probability cannot exceed ~0.38 of 5 ops."""
    space = SPACES["enas_micro"]
    torch.manual_seed(0)
    ctrl = build_controller(kind, space)
    solver = {"optimizer": "adamw", "lr": lr, "weight_decay": 0.0, "betas": [0.0, 0.999], "eps": 1e-3}
    policy = PolicyTrainer(ctrl, {"algorithm": algorithm, "solver": solver, "entropy_weight": 1e-4,
                                  "entropy_mode": "reward" if kind == "enas" else "loss", "baseline_decay": 0.9,
                                  "ppo_epochs": 2})  # fmt: skip
    kinds, target = space.kinds(), space.ops.index(TARGET)
    before = _frequency(ctrl, space, 100, seed=1)
    g = torch.Generator().manual_seed(2)
    rewards = []
    for _ in range(steps):
        samples = [ctrl.sample(g) for _ in range(8)]
        r = [sum(d == target for d, k in zip(s.decisions, kinds) if k == "op") / 20 for s in samples]
        rewards.append(policy.update([s.decisions for s in samples], r, samples)["reward"])
    after = _frequency(ctrl, space, 100, seed=1)
    assert after > before + gain, (before, after)
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + gain / 3, rewards
