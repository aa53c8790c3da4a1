"""Recipe pieces checked against their definitions in the papers (label smoothing, EMA, schedules, cutout,
ScheduledDropPath, TensorFlow RMSProp) and the recipe files against the papers they cite."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from backbones.layers import DropPath
from classification.recipes import (
    Cutout,
    LRSchedule,
    ModelEma,
    RMSpropTF,
    build_optimizer,
    build_schedule,
    classification_loss,
    param_groups,
    update_drop_path,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


# ---- loss ----------------------------------------------------------------------------------------------------------
def test_label_smoothing_matches_definition():
    """Inception-v3 §7: q' = (1 - eps) * onehot + eps / K; loss = -sum q' log p."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    eps = 0.1
    q = torch.full((6, 10), eps / 10).scatter_(1, y[:, None], 1 - eps + eps / 10)
    want = -(q * logits.log_softmax(1)).sum(1).mean()
    got, parts = classification_loss(logits, y, label_smoothing=eps)
    torch.testing.assert_close(got, want)
    assert set(parts) == {"main"}


def test_aux_loss_is_weighted_and_added():
    """NASNet A.7: total = CE(logits) + 0.4 * CE(aux logits), both label-smoothed."""
    g = torch.Generator().manual_seed(1)
    main, aux = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    y = torch.tensor([0, 3, 5, 9])
    total, parts = classification_loss((main, aux), y, label_smoothing=0.1, aux_weight=0.4)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    torch.testing.assert_close(total, ce(main, y) + 0.4 * ce(aux, y))
    torch.testing.assert_close(parts["aux"], ce(aux, y))
    with pytest.raises(ValueError, match="aux_weight"):
        classification_loss((main, aux), y, aux_weight=0.0)


# ---- EMA -----------------------------------------------------------------------------------------------------------
def test_ema_follows_the_definition_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.9, warmup=False)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((4,), 3.0))
    assert not any(p.requires_grad for p in ema.parameters())
    assert int(ema.num_updates) == 1


def test_ema_warmup_is_tensorflow_num_updates_rule():
    """tf.train.ExponentialMovingAverage(decay, num_updates): min(decay, (1 + n) / (10 + n))."""
    ema = ModelEma(nn.Linear(2, 2), decay=0.9999)
    seen = []
    for _ in range(3):
        seen.append(ema.current_decay())
        ema.update(nn.Linear(2, 2))
    assert seen == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates.fill_(10**6)
    assert ema.current_decay() == pytest.approx(0.9999)


# ---- schedules -----------------------------------------------------------------------------------------------------
def test_step_schedule_divides_by_ten_at_the_milestones():
    s = LRSchedule("step", total_steps=900, steps_per_epoch=10, milestones=[1 / 3, 2 / 3], gamma=0.1)
    assert s(0) == 1.0 and s(299) == 1.0
    assert s(300) == pytest.approx(0.1) and s(599) == pytest.approx(0.1)
    assert s(600) == pytest.approx(0.01) and s(899) == pytest.approx(0.01)


def test_cosine_schedule_after_linear_warmup():
    s = LRSchedule("cosine", total_steps=110, steps_per_epoch=10, warmup_epochs=1)
    assert [s(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])  # Goyal et al. §2.2
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)  # half way through the cosine: (1 + cos(pi / 2)) / 2
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))


def test_exponential_schedule_is_inception_v3_staircase():
    """Inception-v3 §8: x0.94 every two epochs."""
    s = LRSchedule("exponential", total_steps=1000, steps_per_epoch=10, gamma=0.94, decay_epochs=2)
    assert s(19) == 1.0 and s(20) == pytest.approx(0.94) and s(45) == pytest.approx(0.94**2)
    smooth = LRSchedule(
        "exponential", total_steps=1000, steps_per_epoch=10, gamma=0.94, decay_epochs=2, staircase=False
    )
    assert smooth(10) == pytest.approx(math.sqrt(0.94))


def test_schedule_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="cosin.*did you mean cosine"):
        build_schedule({"name": "cosin"}, 10, 1)
    with pytest.raises(ValueError, match="milestones"):
        build_schedule({"name": "step", "milestones": [30, 60]}, 10, 1)
    with pytest.raises(ValueError, match="warmup_epoch"):
        build_schedule({"name": "step", "warmup_epoch": 1}, 10, 1)


# ---- ScheduledDropPath ---------------------------------------------------------------------------------------------
def test_scheduled_drop_path_probability_rises_linearly_with_progress():
    """NASNet A.5: the drop probability rises linearly from 0 to drop_prob over training."""
    model = nn.Sequential(DropPath(0.3, scheduled=True), DropPath(0.2, scheduled=False))
    seen = []
    for step in (0, 25, 50, 100, 150):
        update_drop_path(model, step, total_steps=100)
        seen.append(model[0].current_drop_prob)
    assert seen == pytest.approx([0.0, 0.075, 0.15, 0.3, 0.3])
    assert model[1].current_drop_prob == 0.2  # plain DropPath is not scheduled


# ---- cutout ---------------------------------------------------------------------------------------------------------
def test_cutout_zeroes_one_square_clipped_at_the_border():
    torch.manual_seed(0)
    cut = Cutout(8)
    sizes = set()
    for _ in range(50):
        out = cut(torch.ones(3, 32, 32))
        zero = out[0] == 0
        rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert zero.sum() == h * w and (out[:, zero] == 0).all()  # one axis-aligned rectangle, every channel
        assert 1 <= h <= 8 and 1 <= w <= 8
        sizes.add((h, w))
    assert (8, 8) in sizes and any(h < 8 or w < 8 for h, w in sizes)  # whole squares inside, clipped at borders


# ---- optimisers ----------------------------------------------------------------------------------------------------
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


def test_param_groups_exclude_norm_bias_and_depthwise_when_asked():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8, bias=False))
    groups = param_groups(model, 1e-4, decay_norm_and_bias=False, decay_depthwise=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    everything = param_groups(model, 1e-4)
    assert len(everything) == 1 and len(everything[0]["params"]) == 5


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="rmsprop_t.*did you mean rmsprop_tf"):
        build_optimizer(nn.Linear(2, 2), {"name": "rmsprop_t"}, lr=0.1)


# ---- recipe files --------------------------------------------------------------------------------------------------
RECIPES = ("nasnet_imagenet", "nasnet_cifar", "sgd_imagenet", "rmsprop_mobilenet", "sgd_digits")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_file_cites_its_source_and_builds(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    text = (CONF / "recipe" / f"{name}.yaml").read_text()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        r = OmegaConf.to_container(compose("classify", overrides=[f"recipe={name}"]).recipe)
    assert r["name"] == name and r["source"]
    assert "arXiv" in text  # the paper the numbers come from
    opt = build_optimizer(nn.Linear(4, 2), r["optimizer"], lr=float(r["optimizer"]["lr"]))
    assert isinstance(opt, torch.optim.Optimizer)
    build_schedule(r["schedule"], total_steps=100, steps_per_epoch=10)


def test_nasnet_imagenet_recipe_is_appendix_a7():
    r = yaml.safe_load((CONF / "recipe" / "nasnet_imagenet.yaml").read_text())
    assert r["optimizer"]["name"] == "rmsprop_tf"
    assert (r["optimizer"]["decay"], r["optimizer"]["eps"]) == (0.9, 1.0)
    assert r["label_smoothing"] == 0.1 and r["aux_weight"] == 0.4 and r["ema_decay"] == 0.9999
    assert r["schedule"]["name"] == "exponential"
    assert r["model"]["drop_rate"] == 0.5 and r["model"]["aux_head"] and r["model"]["drop_path_rate"] > 0


def test_nasnet_cifar_recipe_is_appendix_a6():
    r = yaml.safe_load((CONF / "recipe" / "nasnet_cifar.yaml").read_text())
    assert r["optimizer"]["name"] == "sgd" and r["optimizer"]["momentum"] == 0.9
    assert r["optimizer"]["weight_decay"] > 0 and r["schedule"]["name"] == "cosine" and r["cutout"] > 0
