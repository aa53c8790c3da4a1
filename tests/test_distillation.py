"""Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531): the soft-target loss against hand computation and
the paper's high-temperature gradient, a frozen teacher kept out of the student's optimiser and checkpoints, a
teacher weight of 0 training exactly as no teacher, resume checks, and bad values refused before any work."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from tiny_runs import compose_cfg

import backbones
from classification.module import run
from classification.recipes import classification_loss, soft_target_loss, summarize_runs

QUIET = ["trainer.loggers=[]", "trainer.progress_bar=false"]
TINY = ["dataset.image_size=16", "epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", *QUIET]
STUDENT = "squeezenet1_1"


def cfg_of(*overrides: str):
    return compose_cfg(overrides, task="classify")


# ---- the loss --------------------------------------------------------------------------------------------------------
def softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_loss_matches_a_hand_computation():
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    teacher = [[3.0, 1.0, 0.0], [0.0, 0.0, 4.0]]
    labels, t, w = [2, 0], 2.0, 0.7
    kl = ce = 0.0
    for s, q, y in zip(student, teacher, labels):
        p_s, p_t = softmax(s, t), softmax(q, t)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)) / len(student)
        ce += -math.log(softmax(s, 1.0)[y]) / len(student)
    expected = (1 - w) * ce + w * t * t * kl

    s_, q_, y_ = torch.tensor(student, dtype=torch.float64), torch.tensor(teacher), torch.tensor(labels)
    assert soft_target_loss(s_, q_, t).item() == pytest.approx(t * t * kl, rel=1e-6)
    loss, parts = classification_loss(s_, y_, teacher_logits=q_, temperature=t, distill_weight=w)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["hard"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["soft"].item() == pytest.approx(t * t * kl, rel=1e-6)


def test_t_squared_scaling_gives_the_papers_high_temperature_gradient():
    """Hinton et al. §2.1: for large T and zero-mean logits, dC/dz_i ~ (z_i - v_i) / (N T^2); with the T^2 factor
    the soft term's gradient is (z_i - v_i) / N whatever T."""
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(1, 10, generator=g, dtype=torch.float64), torch.randn(1, 10, generator=g, dtype=torch.float64)
    z, v = z - z.mean(), v - v.mean()
    ref = (z - v) / 10
    errors = []
    for t in (10.0, 100.0, 1000.0):
        zz = z.clone().requires_grad_(True)
        soft_target_loss(zz, v, t).backward()
        errors.append(float((zz.grad - ref).abs().max() / ref.abs().max()))
    # the approximation error falls as 1/T (first order in z/T) and the scale stays (z - v) / N: no T left over
    assert errors[0] < 0.1 and errors[1] < 0.01 and errors[2] < 0.001, errors


# ---- the teacher in a run --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run(cfg_of("backbone=mobilenet_v1_x0_25", *TINY), out)
    return out / "checkpoints" / "last.ckpt"


class Inspect(L.Callback):
    """Checks, at every training step, that the teacher is frozen and outside what the optimiser trains."""

    def __init__(self) -> None:
        self.steps = 0
        self.start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, module) -> None:
        teacher = module.teacher
        self.start = {k: v.clone() for k, v in teacher.state_dict().items()}
        trained = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        assert not trained & {id(p) for p in teacher.parameters()}
        assert not any(p.requires_grad for p in teacher.parameters())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        teacher = module.teacher
        assert not any(m.training for m in teacher.modules()) and module.model.training
        assert all(p.grad is None for p in teacher.parameters())
        for k, v in teacher.state_dict().items():  # BN statistics included: eval mode
            assert torch.equal(v, self.start[k]), k


def final_params(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_tiny_run_with_a_teacher_keeps_it_frozen_and_out_of_the_checkpoint(tmp_path, teacher_ckpt):
    inspect = Inspect()
    out = tmp_path / "kd"
    m = run(cfg_of(f"backbone={STUDENT}", f"teacher={teacher_ckpt}", *TINY), out, callbacks=[inspect])
    assert inspect.steps == 2 and m["global_step"] == 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])  # the student only
    record = ckpt["hyper_parameters"]["distill"]
    assert record["teacher"] == str(teacher_ckpt) and record["teacher_model"] == "mobilenet_v1_x0_25"
    assert len(record["teacher_sha256"]) == 64
    (group,) = summarize_runs(tmp_path)  # results.json records the seed and the teacher
    assert group["model"] == STUDENT and group["teacher"] == str(teacher_ckpt) and group["weight"] == 0.9
    assert group["seeds"] == [0] and group["top1"] == [m["top1"]]

    # resuming with other distillation settings is refused, naming both
    with pytest.raises(ValueError, match=r"trained with teacher=.*T=4.0, weight=0.9.*this run has .*weight=0.5"):
        run(cfg_of(f"backbone={STUDENT}", f"teacher={teacher_ckpt}", *TINY, "epochs=2", "distill.weight=0.5",
                   "resume=true"), out)  # fmt: skip


def test_weight_zero_trains_exactly_as_no_teacher_and_a_teacher_changes_training(tmp_path, teacher_ckpt):
    base = final_params_of(tmp_path / "none", [])
    zero = final_params_of(tmp_path / "w0", [f"teacher={teacher_ckpt}", "distill.weight=0"])
    soft = final_params_of(tmp_path / "w1", [f"teacher={teacher_ckpt}", "distill.weight=1"])
    assert all(torch.equal(base[k], zero[k]) for k in base)
    assert any(not torch.equal(base[k], soft[k]) for k in base)


def final_params_of(out, extra: list[str]) -> dict[str, torch.Tensor]:
    run(cfg_of(f"backbone={STUDENT}", *TINY, *extra), out)
    return final_params(out)


def test_teacher_from_a_state_dict_is_renormalised_to_its_card(tmp_path):
    """A squeezenet teacher (ImageNet mean/std) of a mobilenet student (0.5/0.5): the teacher must see the input
    normalised as its own card says."""
    from classification.recipes import build_teacher

    torch.manual_seed(0)
    net = backbones.create_model("squeezenet1_1", num_classes=10).eval()
    path = tmp_path / "teacher.pth"
    torch.save(net.state_dict(), path)
    teacher, record = build_teacher(
        str(path), {"temperature": 2.0, "weight": 0.5, "teacher_model": "squeezenet1_1"}, 10, ((0.5,) * 3, (0.5,) * 3)
    )
    raw = torch.rand(2, 3, 32, 32)
    card = backbones.model_card("squeezenet1_1")
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((raw - mean) / std)
    assert torch.allclose(teacher((raw - 0.5) / 0.5), expected, atol=1e-5)
    assert record["teacher_model"] == "squeezenet1_1" and record["teacher_sha256"]


def test_summary_groups_runs_by_teacher(tmp_path):
    import json

    runs = [(None, 0, 97.5), (None, 1, 98.5), ("t.ckpt", 0, 99.0), ("t.ckpt", 1, 98.0), ("t.ckpt", 2, 98.5)]
    for i, (teacher, seed, top1) in enumerate(runs):
        r = {"model": "m", "seed": seed, "top1": top1}
        if teacher:
            r["teacher"] = {"teacher": teacher, "temperature": 4.0, "weight": 0.9}
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    by = {g["teacher"]: g for g in summarize_runs(tmp_path)}
    assert by[None]["n"] == 2 and by[None]["mean"] == 98.0 and by[None]["std"] == pytest.approx(math.sqrt(0.5))
    assert by["t.ckpt"]["seeds"] == [0, 1, 2] and by["t.ckpt"]["mean"] == pytest.approx(98.5)
    assert by["t.ckpt"]["std"] == pytest.approx(0.5) and by["t.ckpt"]["min"] == 98.0


# ---- bad values ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["distill.temperature=0"], ValueError, r"distill.temperature=0 is not valid; use a number > 0"),
        (["distill.temperature=-2.0"], ValueError, r"distill.temperature=-2.0 is not valid"),
        (["distill.weight=1.5"], ValueError, r"distill.weight=1.5 is not valid; use a number in \[0, 1\]"),
        (["distill.weight=-0.1"], ValueError, r"distill.weight=-0.1 is not valid"),
        (["+distill.temprature=2"], ValueError, r"distill.temprature.*temperature"),
        (
            ["distill.teacher_model=mobilenet_v1_x0_2"],
            KeyError,
            r"unknown model 'mobilenet_v1_x0_2'.*mobilenet_v1_x0_25",
        ),
    ],
    ids=["T=0", "T<0", "w>1", "w<0", "unknown-key", "unknown-teacher-model"],
)
def test_bad_distill_values_are_named(tmp_path, teacher_ckpt, overrides, error, match):
    with pytest.raises(error, match=match):
        run(cfg_of(f"backbone={STUDENT}", f"teacher={teacher_ckpt}", *TINY, *overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # refused before any work


def test_bad_teachers_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher='/no/such.ckpt': no such file, and not a registered model"):
        run(cfg_of(f"backbone={STUDENT}", "teacher=/no/such.ckpt", *TINY), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"teacher='resnet5'.*did you mean 'resnet50'"):
        run(cfg_of(f"backbone={STUDENT}", "teacher=resnet5", *TINY), tmp_path)
    # published ImageNet weights (checked before any download) and a state dict of another class count
    with pytest.raises(
        ValueError, match=r"teacher='resnet50': its published weights classify 1000 classes, the dataset has 10"
    ):
        run(cfg_of(f"backbone={STUDENT}", "teacher=resnet50", *TINY), tmp_path)
    path = tmp_path / "five.pth"
    torch.save(backbones.create_model("squeezenet1_1", num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match=r"five.pth' \(squeezenet1_1\) classifies 5 classes, the dataset has 10"):
        run(cfg_of(f"backbone={STUDENT}", f"teacher={path}", "distill.teacher_model=squeezenet1_1", *TINY), tmp_path)
    with pytest.raises(ValueError, match=r"is a state dict, which does not say its model"):
        run(cfg_of(f"backbone={STUDENT}", f"teacher={path}", *TINY), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# ---- DDP -------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_teacher_and_compression_masks_under_two_ddp_processes_follow_one_process(tmp_path, teacher_ckpt):
    """A distilled student retrained under compression masks: two gloo processes of 4 images follow the one-process
    run of 8 (frozen BN; the teacher is in eval mode, so each image's soft targets do not depend on its batch), the
    ranks end bit-identical, and every pruned weight is zero in the final checkpoint."""
    from test_distributed import assert_same_trajectory, ddp, global_steps
    from tiny_runs import run_driver

    from backbones import compression as dc
    from classification.compress import load_plan

    torch.manual_seed(0)
    start = backbones.create_model("mobilenet_v1_x0_25", num_classes=10, norm="frozen_bn")
    masks = dc.prune(start, load_plan("mobilenet_v1"))
    torch.save(start.state_dict(), tmp_path / "pruned.pth")
    common = ["backbone=mobilenet_v1_x0_25", "backbone.norm=frozen_bn", "dataset.image_size=16", "dataset.shift=0",
              "solver.lr=0.8", "epochs=1", "trainer.limit_train_batches=6", "dataset.val_batch_size=512",
              f"teacher={teacher_ckpt}", "compression.plan=mobilenet_v1", f"pretrained={tmp_path / 'pruned.pth'}",
              *QUIET]  # fmt: skip
    run_driver([*common, "dataset.batch_size=8"], tmp_path / "one", task="classify")
    run_driver([*common, "dataset.batch_size=4", *ddp()], tmp_path / "two", task="classify")
    records = tmp_path / "two" / "records"
    assert torch.equal(torch.load(records / "params_rank0.pt"), torch.load(records / "params_rank1.pt"))
    assert_same_trajectory(global_steps(tmp_path / "one", 1), global_steps(tmp_path / "two", 2), rel=1e-5)
    final = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    state = final["state_dict"]
    for name, mask in masks.items():
        assert torch.count_nonzero(state[f"model.{name}"][~mask]) == 0, name
    assert final["hyper_parameters"]["distill"]["teacher"] == str(teacher_ckpt)
