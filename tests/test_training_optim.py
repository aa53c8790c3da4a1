"""The one solver (training.optim) of both tasks: schedules against torch's own schedulers and the papers' rules,
warm-up multiplied in on the clock of the whole run, linear lr scaling, weight-decay groups, the optimisers (TF
RMSProp against timm's), bad values named, and every conf/solver file against the schema."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from training.optim import (
    OPTIMIZERS,
    SCHEDULES,
    LRSchedule,
    RMSpropTF,
    Solver,
    build_optimizer,
    configure_optimizers,
    param_groups,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def factors(solver: dict, total: int, per_epoch: int = 10) -> list[float]:
    s = LRSchedule(solver, total, per_epoch)
    return [s(i) for i in range(total)]


def torch_factors(make, total: int) -> list[float]:
    """The lr factors torch's scheduler(s) ``make(opt)`` give an optimiser at lr 1 over ``total`` steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# ---- schedules: torch's schedulers as the oracle -------------------------------------------------------------------
def test_schedules_equal_torchs_schedulers():
    lr = torch.optim.lr_scheduler
    T, E = 120, 10  # steps in the run, steps per epoch
    cases = [
        ({"schedule": "multistep", "milestones": [0.25, 0.75], "gamma": 0.1}, lambda o: lr.MultiStepLR(o, [30, 90])),
        ({"schedule": "step", "decay_epochs": 3, "gamma": 0.5}, lambda o: lr.StepLR(o, 30, gamma=0.5)),
        (
            {"schedule": "exponential", "decay_epochs": 2, "gamma": 0.94},
            lambda o: lr.ExponentialLR(o, 0.94 ** (1 / 20)),
        ),
        ({"schedule": "cosine", "min_lr_factor": 0.1}, lambda o: lr.CosineAnnealingLR(o, T, eta_min=0.1)),
        ({"schedule": "constant"}, lambda o: lr.LambdaLR(o, lambda s: 1.0)),
        # warm-up multiplies the schedule (torch: the two schedulers chained)
        (
            {"schedule": "cosine", "warmup_steps": 15, "warmup_start_factor": 0.01},
            lambda o: lr.ChainedScheduler([lr.LinearLR(o, 0.01, total_iters=15), lr.CosineAnnealingLR(o, T)]),
        ),
        (
            {"schedule": "multistep", "milestones": [0.5], "warmup_epochs": 2, "warmup_start_factor": 0.1},
            lambda o: lr.ChainedScheduler([lr.LinearLR(o, 0.1, total_iters=20), lr.MultiStepLR(o, [60])]),
        ),
    ]
    assert {c[0]["schedule"] for c in cases} == set(SCHEDULES)
    for solver, make in cases:
        assert factors(solver, T, E) == pytest.approx(torch_factors(make, T), rel=1e-9, abs=1e-12), solver


def test_warmup_is_multiplied_into_a_cosine_over_the_whole_run():
    f = LRSchedule({"warmup_steps": 10, "warmup_start_factor": 0.1, "schedule": "cosine"}, 100, 10)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-9)
    # warm-up in epochs from 0: steps 0..9 ramp to 1; the cosine runs from step 0 of the run
    h = LRSchedule({"warmup_epochs": 1, "warmup_start_factor": 0.0, "schedule": "cosine"}, 110, 10)
    cos = [0.5 * (1 + math.cos(math.pi * i / 110)) for i in range(111)]
    assert [h(i) for i in range(10)] == pytest.approx([i / 10 * cos[i] for i in range(10)])
    assert h(10) == pytest.approx(cos[10]) and h(55) == pytest.approx(0.5) and h(110) == pytest.approx(0, abs=1e-12)
    assert all(h(i) >= h(i + 1) for i in range(10, 110))


def test_multistep_divides_by_ten_at_the_milestones():
    """DenseNet §4.2: lr / 10 at epochs 30 and 60 of 90 (fractions of the run)."""
    s = LRSchedule({"schedule": "multistep", "milestones": [1 / 3, 2 / 3], "gamma": 0.1}, 900, 10)
    assert s(0) == 1.0 and s(299) == 1.0
    assert s(300) == pytest.approx(0.1) and s(599) == pytest.approx(0.1)
    assert s(600) == pytest.approx(0.01) and s(899) == pytest.approx(0.01)
    g = LRSchedule({"schedule": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}, 100, 10)
    assert (g(49), g(50), g(80)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))


def test_step_is_inception_v3_staircase_and_exponential_its_smooth_form():
    """Inception-v3 §8: x0.94 every two epochs."""
    s = LRSchedule({"schedule": "step", "gamma": 0.94, "decay_epochs": 2}, 1000, 10)
    assert s(19) == 1.0 and s(20) == pytest.approx(0.94) and s(45) == pytest.approx(0.94**2)
    smooth = LRSchedule({"schedule": "exponential", "gamma": 0.94, "decay_epochs": 2}, 1000, 10)
    assert smooth(10) == pytest.approx(math.sqrt(0.94))


# ---- the solver schema ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"schedule": "cosin"}, r"solver.schedule='cosin' is not valid \(did you mean 'cosine'"),
        ({"optimizer": "rmsprop_t"}, r"solver.optimizer='rmsprop_t' is not valid \(did you mean 'rmsprop_tf'"),
        ({"warmup_epoch": 1}, r"unknown key solver.warmup_epoch \(did you mean 'warmup_epochs'"),
        ({"schedule": "multistep", "milestones": [30, 60]}, r"solver.milestones=\[30, 60\].*fractions"),
        ({"schedule": "multistep", "milestones": [0.6, 0.3]}, r"solver.milestones.*increasing"),
        ({"schedule": "multistep"}, r"needs solver.milestones"),
        ({"schedule": "step"}, r"needs solver.decay_epochs"),
        ({"lr": "abc"}, r"solver.lr='abc' is not valid; a number > 0"),
        ({"lr": -0.1}, r"solver.lr=-0.1"),
        ({"epochs": 0}, r"solver.epochs=0 is not valid; an integer >= 1"),
        ({"warmup_steps": 1.5}, r"solver.warmup_steps=1.5"),
        ({"warmup_steps": 10, "warmup_epochs": 1}, r"warmup_steps=10 and solver.warmup_epochs=1.0: give the warm-up"),
        ({"momentum": 1.5}, r"solver.momentum=1.5 is not valid; a number >= 0 and <= 1"),
        ({"betas": [0.9]}, r"solver.betas=\[0.9\]"),
        ({"reference_batch_size": 0}, r"solver.reference_batch_size=0"),
        ({"lr": None}, r"solver.lr=None is not valid; it has no null"),
    ],
)
def test_bad_solver_values_are_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        Solver.from_config(cfg)


def test_keys_the_optimizer_does_not_take_are_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="training.optim"):
        Solver.from_config({"optimizer": "adamw", "momentum": 0.9, "nesterov": True})
    assert "solver.momentum=0.9, solver.nesterov=True not used by solver.optimizer=adamw" in caplog.text


def test_linear_scaling_rule():
    """Goyal et al. 2017 §2.1: lr proportional to the global batch."""
    s = Solver.from_config({"lr": 0.1, "reference_batch_size": 256})
    assert s.scaled_lr(256) == pytest.approx(0.1) and s.scaled_lr(64) == pytest.approx(0.025)
    assert Solver.from_config({"lr": 0.1}).scaled_lr(64) == 0.1  # no reference: as given
    opt = build_optimizer(nn.Linear(2, 2), {"lr": 0.02, "reference_batch_size": 16}, global_batch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0025)


def test_configure_optimizers_reads_the_global_batch_and_the_epoch_length_from_the_trainer():
    """Global batch = per-device batch x world size x accumulation; steps per epoch = loader batches / accumulation."""
    trainer = SimpleNamespace(estimated_stepping_batches=60, accumulate_grad_batches=2, num_training_batches=25,
                              world_size=4)  # fmt: skip
    module = SimpleNamespace(trainer=trainer, total_steps=1)
    solver = {"lr": 0.1, "reference_batch_size": 256, "schedule": "step", "decay_epochs": 1, "gamma": 0.5}
    out = configure_optimizers(module, nn.Linear(2, 2), solver, batch_size=32)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step" and module.total_steps == 60
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # 32 x 4 x 2 = 256 images per step
    lrs = []
    for _ in range(27):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[12] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.05) and lrs[26] == pytest.approx(0.025)


# ---- optimisers and weight decay ------------------------------------------------------------------------------------
def test_weight_decay_groups_for_norm_bias_and_depthwise():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8, bias=False))
    groups = param_groups(model, Solver(weight_decay=1e-4, weight_decay_norm_bias=0.0, weight_decay_depthwise=0.0))
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)} and groups[0]["weight_decay"] == 1e-4
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    everything = param_groups(model, Solver(weight_decay=1e-4))
    assert len(everything) == 1 and len(everything[0]["params"]) == 5
    three = param_groups(model, Solver(weight_decay=1e-4, weight_decay_norm_bias=0.0, weight_decay_depthwise=1e-5))
    assert [(g["weight_decay"], len(g["params"])) for g in three] == [(1e-4, 1), (0.0, 3), (1e-5, 1)]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, {}, 1)


def test_each_optimizer_gets_its_settings():
    m = nn.Linear(3, 2)
    sgd = build_optimizer(m, {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, 1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    rms = build_optimizer(m, {"optimizer": "rmsprop", "rms_decay": 0.95, "eps": 1e-3, "momentum": 0.5}, 1)
    assert type(rms) is torch.optim.RMSprop and (rms.defaults["alpha"], rms.defaults["eps"]) == (0.95, 1e-3)
    tf = build_optimizer(m, {"optimizer": "rmsprop_tf", "rms_decay": 0.9, "eps": 1.0, "momentum": 0.9}, 1)
    assert type(tf) is RMSpropTF
    assert (tf.defaults["decay"], tf.defaults["eps"], tf.defaults["momentum"]) == (0.9, 1.0, 0.9)
    adamw = build_optimizer(m, {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.05}, 1)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.9, 0.95)
    assert adamw.param_groups[0]["weight_decay"] == 0.05
    assert set(OPTIMIZERS) == {"sgd", "rmsprop_tf", "rmsprop", "adamw"}


def test_rmsprop_tf_matches_timm_rmsproptf():
    """An outside implementation of TensorFlow's RMSProp (timm.optim.RMSpropTF, lr inside the momentum)."""
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = RMSpropTF(a.parameters(), lr=0.05, decay=0.9, momentum=0.9, eps=1.0, weight_decay=1e-3)
    ref = timm_optim.RMSpropTF(
        b.parameters(),
        lr=0.05,
        alpha=0.9,
        momentum=0.9,
        eps=1.0,
        weight_decay=1e-3,
        lr_in_momentum=True,
        decoupled_decay=False,
    )
    for _ in range(5):
        x = torch.randn(8, 5)
        for m, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


# ---- conf/solver ----------------------------------------------------------------------------------------------------
SOLVERS = sorted(p.stem for p in (CONF / "solver").glob("*.yaml"))


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_file_holds_the_whole_schema_and_builds(name):
    from omegaconf import OmegaConf
    from tiny_runs import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg([f"solver={name}"]).solver, resolve=True)
    assert list(cfg) == list(Solver.keys()), "every key, in the schema's order (overridable without +)"
    s = Solver.from_config(cfg)
    assert s.name == name and s.source and s.epochs
    build_optimizer(nn.Conv2d(3, 4, 3), s, global_batch=s.reference_batch_size or 8)
    LRSchedule(s, total_steps=1000, steps_per_epoch=50)
    raw = yaml.safe_load((CONF / "solver" / f"{name}.yaml").read_text())
    assert set(raw) - {"defaults"} <= set(Solver.keys())


def test_detection_solvers_scale_lr_to_their_reference_batch():
    from tiny_runs import compose_cfg

    coco = Solver.from_config(compose_cfg(["solver=coco_1x", "dataset=coco"]).solver)
    assert coco.scaled_lr(16) == pytest.approx(0.02) and coco.scaled_lr(2) == pytest.approx(0.0025)
    shapes = compose_cfg()  # shapes: lr 0.04 at 8 images
    assert Solver.from_config(shapes.solver).scaled_lr(shapes.dataset.batch_size) == pytest.approx(0.04)
