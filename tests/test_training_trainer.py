"""training.trainer.fit, the one way both tasks train: the final last.ckpt (also where max_steps cut an epoch), one
more evaluation exactly when the final weights were not evaluated, nothing after a failure; and the trainer group's
checks. On the toy module of tests/test_faults.py (Lightning's real loops, milliseconds per step)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_faults import Crash, Recorder, Toy, ToyData

from training.trainer import build_trainer, check_trainer_config, fit

QUIET = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "num_sanity_val_steps": 0}


class Evaluations(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, module) -> None:
        self.steps.append(trainer.global_step)


def fit_toy(out, trainer_cfg: dict, resume=None, crash_at: int | None = None) -> tuple[L.Trainer, Evaluations]:
    evaluations = Evaluations()
    trainer = build_trainer({**QUIET, **trainer_cfg}, out, callbacks=[evaluations, Recorder(crash_at)],
                            enable_model_summary=False)  # fmt: skip
    fit(trainer, Toy(), ToyData(), resume, out)
    return trainer, evaluations


def last_step(out) -> int:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_max_steps_stop_saves_last_and_evaluates_the_final_weights(tmp_path):
    """6 batches an epoch, max_steps 8: the epoch-end checkpoint is at step 6; fit saves step 8 and evaluates it."""
    trainer, evaluations = fit_toy(tmp_path, {"max_epochs": 3, "max_steps": 8})
    assert trainer.global_step == 8 and last_step(tmp_path) == 8
    assert evaluations.steps == [6, 8]
    _, again = fit_toy(tmp_path, {"max_epochs": 3, "max_steps": 10}, resume=True)
    assert last_step(tmp_path) == 10 and again.steps == [10]  # continued at 8; epoch 1 ends at 12


def test_no_extra_evaluation_when_the_last_step_was_evaluated_or_evaluation_is_off(tmp_path):
    trainer, evaluations = fit_toy(tmp_path / "a", {"max_epochs": 2})
    assert evaluations.steps == [6, 12] and last_step(tmp_path / "a") == 12
    _, off = fit_toy(tmp_path / "b", {"max_epochs": 3, "max_steps": 8, "limit_val_batches": 0})
    assert off.steps == [] and last_step(tmp_path / "b") == 8


def test_resumed_run_with_nothing_left_evaluates_once(tmp_path):
    fit_toy(tmp_path, {"max_epochs": 1})
    _, evaluations = fit_toy(tmp_path, {"max_epochs": 1}, resume=True)
    assert evaluations.steps == [6]


def test_a_failed_fit_writes_nothing_more(tmp_path):
    fit_toy(tmp_path, {"max_epochs": 1})
    with pytest.raises(Crash):
        fit_toy(tmp_path, {"max_epochs": 3, "checkpoint": {"every_n_epochs": 1}}, resume=True, crash_at=9)
    assert last_step(tmp_path) == 6  # the last good checkpoint, not the state at the crash


def test_trainer_group_checks_name_the_value(tmp_path):
    with pytest.raises(
        ValueError, match=r"trainer.loggers\[\]='wandb' is not valid; choose one of 'tensorboard', 'csv'"
    ):
        check_trainer_config({"loggers": ["wandb"]})
    with pytest.raises(ValueError, match=r"unknown key trainer.checkpoint.every_n_step \(did you mean"):
        check_trainer_config({"checkpoint": {"every_n_step": 5}})
    with pytest.raises(ValueError, match="mode='maximum' is not valid"):
        build_trainer(QUIET, tmp_path, monitor="val/AP", mode="maximum")
