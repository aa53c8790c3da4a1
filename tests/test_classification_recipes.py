"""Recipe pieces checked against their definitions in the papers (label smoothing, EMA, cutout, ScheduledDropPath)
and the recipe files (with their solvers) against the papers they cite. The optimisers and schedules themselves:
tests/test_training_optim.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from backbones.layers import DropPath
from classification.recipes import Cutout, ModelEma, classification_loss, update_drop_path
from training.optim import LRSchedule, Solver, build_optimizer

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


# ---- recipe files --------------------------------------------------------------------------------------------------
RECIPES = ("nasnet_imagenet", "nasnet_cifar", "sgd_imagenet", "rmsprop_mobilenet", "sgd_digits")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_file_cites_its_source_and_builds(name):
    """Each recipe and its solver (``recipe=<name>`` selects ``solver=<name>``) cite their sources and build."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("classify", overrides=[f"recipe={name}"]), resolve=True)
    r, s = cfg["recipe"], cfg["solver"]
    assert r["name"] == name and r["source"] and s["name"] == name and s["source"]
    for group in ("recipe", "solver"):
        assert "arXiv" in (CONF / group / f"{name}.yaml").read_text()  # the paper the numbers come from
    opt = build_optimizer(nn.Linear(4, 2), s, global_batch=64)
    assert isinstance(opt, torch.optim.Optimizer)
    LRSchedule(s, total_steps=100, steps_per_epoch=10)


def _files(name: str) -> tuple[dict, dict]:
    return tuple(yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) for group in ("recipe", "solver"))


def test_nasnet_imagenet_recipe_is_appendix_a7():
    r, s = _files("nasnet_imagenet")
    assert s["optimizer"] == "rmsprop_tf"
    assert (s["rms_decay"], s["eps"]) == (0.9, 1.0)
    assert r["label_smoothing"] == 0.1 and r["aux_weight"] == 0.4 and r["ema_decay"] == 0.9999
    # A.7's "exponential decay" of Inception-v3 §8: x0.94 every 2 epochs, staircase (the `step` schedule)
    assert (s["schedule"], s["gamma"], s["decay_epochs"]) == ("step", 0.94, 2)
    assert r["model"]["drop_rate"] == 0.5 and r["model"]["aux_head"] and r["model"]["drop_path_rate"] > 0


def test_nasnet_cifar_recipe_is_appendix_a6():
    r, s = _files("nasnet_cifar")
    assert s["optimizer"] == "sgd" and s["momentum"] == 0.9
    assert s["weight_decay"] > 0 and s["schedule"] == "cosine" and r["cutout"] > 0


def test_solver_of_a_recipe_can_be_chosen_apart():
    from tiny_runs import compose_cfg

    cfg = compose_cfg(["recipe=nasnet_imagenet", "solver=sgd_imagenet"], task="classify")
    assert (cfg.recipe.name, cfg.solver.name) == ("nasnet_imagenet", "sgd_imagenet")
    assert Solver.from_config(cfg.solver).optimizer == "sgd"


@pytest.mark.parametrize(
    "model, lr", [("squeezenet1_0", 1e-3), ("squeezenet1_1", 1e-3), ("squeezenet1_0_bypass", 3e-4),
                  ("squeezenet1_0_complex_bypass", 3e-4)]
)  # fmt: skip
def test_squeezenet_on_digits_gets_its_tuned_solver(model, lr):
    """conf/tuning/sgd_digits_<squeezenet>.yaml replaces the digits recipe's SGD (which kills conv10's ReLU) with
    AdamW; the schedule stays the recipe's, other models and recipes keep theirs, and the command line still wins."""
    from tiny_runs import compose_cfg

    s = compose_cfg([f"backbone={model}"], task="classify").solver
    assert (s.name, s.optimizer, s.lr, s.weight_decay, s.schedule) == ("sgd_digits", "adamw", lr, 0.01, "cosine")
    assert isinstance(build_optimizer(nn.Linear(4, 2), s, global_batch=64), torch.optim.AdamW)
    assert compose_cfg([f"backbone={model}", "solver.lr=0.002"], task="classify").solver.lr == 0.002
    assert compose_cfg([f"backbone={model}", "recipe=sgd_imagenet"], task="classify").solver.optimizer == "sgd"
    assert compose_cfg(["backbone=mobilenet_v1_x0_5"], task="classify").solver.optimizer == "sgd"


@pytest.mark.parametrize("model", ["nasnet_a_mobile", "nasnet_a_large", "pnasnet5_large", "nasnet"])
def test_imagenet_nasnets_on_digits_get_pytorch_bn_momentum(model):
    """TF-slim's BN momentum 3e-4 leaves the running statistics at their initial values in a 440-step run: the
    digits tuning sets 0.1, which reaches every BatchNorm; the recipe's solver and the model's own options stay."""
    from tiny_runs import compose_cfg

    import backbones

    cfg = compose_cfg([f"backbone={model}"], task="classify")
    assert cfg.backbone.options.bn_momentum == 0.1 and cfg.solver.optimizer == "sgd"
    options = dict(cfg.backbone.options)
    with torch.device("meta"):
        net = backbones.create_model(model, num_classes=10, **options)
    assert {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    over = compose_cfg([f"backbone={model}", "backbone.options.bn_momentum=0.01"], task="classify")
    assert over.backbone.options.bn_momentum == 0.01
    imagenet = compose_cfg([f"backbone={model}", "recipe=nasnet_imagenet"], task="classify")
    assert "bn_momentum" not in imagenet.backbone.options


def test_every_tuning_file_names_a_recipe_and_a_model():
    """A tuning file is only merged if its name is <recipe>_<backbone> (classification) or <dataset>_<detector>
    (detection): a misspelt one would silently never apply."""
    import backbones
    from detection import DETECTORS

    recipes = {p.stem for p in (CONF / "recipe").glob("*.yaml")}
    datasets = {p.stem for p in (CONF / "dataset").glob("*.yaml")}
    for path in (CONF / "tuning").glob("*.yaml"):
        pairs = [(a, b) for a in recipes | datasets for b in [*backbones.list_models(), *DETECTORS]
                 if path.stem == f"{a}_{b}"]  # fmt: skip
        assert pairs, f"{path.name} matches no <recipe>_<backbone> or <dataset>_<detector>"
