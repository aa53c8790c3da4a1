"""Crash safety: a resumed run continues at the checkpoint's data position and learning rate, checkpoints are never
half-written, a pickled object in a checkpoint is refused, a checkpoint of another architecture names the keys.

The unmarked tests drive Lightning's real restart logic with a toy module (milliseconds per step): an uninterrupted
reference run records (global step -> sample indices of the batch, learning rate); a second run is stopped by an
exception at a chosen step, a third resumes from its ``last.ckpt``, and the stitched record must equal the
reference step for step - for checkpoints saved after a batch (mid-epoch and at an epoch's last batch), at
validation end (epoch end and mid-epoch ``val_check_interval``) and at train epoch end (no validation), with loader
workers, and with ``limit_train_batches``. The slow test SIGKILLs a real detection run (tools of ``tiny_runs``)
at random moments, during checkpoint writes too.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from training.checkpoint import AtomicCheckpointIO
from training.resumable import POSITION_KEYS, ResumableDataLoader, ResumableTrainData
from training.trainer import build_trainer

# ---- a toy run on Lightning's real loops ----------------------------------------------------------------------------
N_SAMPLES = 22  # batch 4: 6 batches per epoch, the last one short


class Crash(RuntimeError):
    pass


class Toy(L.LightningModule):
    """``configure_optimizers`` reads ``estimated_stepping_batches`` (as the detection and classification modules do)
    unless ``early=False``: that makes Lightning create the train loader and its iterator before it restores the
    checkpoint's loop state, and so never call the loader's ``load_state_dict``."""

    def __init__(self, early: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.early = early

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return self.lin(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.lin(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        total = self.trainer.estimated_stepping_batches if self.early else 100
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 - step / (total + 1)) / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}  # a new LR every step


class ToyData(ResumableTrainData, L.LightningDataModule):
    def __init__(self, workers: int = 0) -> None:
        super().__init__()
        self.workers = workers
        x = torch.arange(N_SAMPLES, dtype=torch.float32)[:, None] / N_SAMPLES
        self.ds = TensorDataset(x, torch.arange(N_SAMPLES))

    def train_dataloader(self):
        sampler = DistributedSampler(self.ds, num_replicas=1, rank=0, shuffle=True, seed=7)
        loader_args = {"num_workers": self.workers, "persistent_workers": self.workers > 0}
        return self.resumable_loader(self.ds, BatchSampler(sampler, 4, drop_last=False), **loader_args)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=11)


class Recorder(L.Callback):
    """global step -> (epoch, sample indices, learning rate) of every batch trained."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.steps: dict[int, tuple[int, list[int], float]] = {}
        self.crash_at = crash_at
        self.first_step: int | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first_step is None:
            self.first_step = trainer.global_step
        if trainer.global_step == self.crash_at:
            raise Crash(f"crash before step {self.crash_at}")
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.steps[trainer.global_step] = (trainer.current_epoch, batch[1].tolist(), lr)


def assert_same_steps(got: dict, reference: dict, what: str = "") -> None:
    """The same steps, each with the same epoch and samples, and the same LR (float noise aside)."""
    assert sorted(got) == sorted(reference), what
    for step, (epoch, ids, lr) in reference.items():
        assert got[step][:2] == (epoch, ids), f"{what} step {step}: {got[step]} != {reference[step]}"
        assert got[step][2] == pytest.approx(lr, rel=1e-12), f"{what} step {step}: LR"


def toy_fit(
    out: Path, trainer_cfg: dict, recorder: Recorder, ckpt: str | None = None, workers: int = 0, early: bool = True
) -> L.Trainer:
    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "num_sanity_val_steps": 0, **trainer_cfg}
    trainer = build_trainer(cfg, out, callbacks=[recorder], enable_model_summary=False)
    trainer.fit(Toy(early), datamodule=ToyData(workers), ckpt_path=ckpt, weights_only=True)
    return trainer


RESTART_CASES = {
    # name: (trainer config, crash before these global steps, one crash per run, then resume; 6 batches per epoch)
    "after_batch_mid_epoch": ({"max_epochs": 4, "checkpoint": {"every_n_train_steps": 1}}, [15]),
    "after_batch_every_2": ({"max_epochs": 4, "checkpoint": {"every_n_train_steps": 2}}, [16]),
    "after_last_batch_of_epoch": ({"max_epochs": 4, "checkpoint": {"every_n_train_steps": 6}}, [13]),
    # Lightning 2.6, resumed at an epoch's last batch, leaves the next epoch uncounted as started; a checkpoint of it
    # then resumes as a fresh epoch (batch 0), and the one after that records the wrong position
    "after_last_batch_then_mid_epoch": (
        {"max_epochs": 4, "limit_val_batches": 0, "checkpoint": {"every_n_train_steps": 2}},
        [13, 15, 17],
    ),
    "validation_end_of_epoch": ({"max_epochs": 4, "checkpoint": {"every_n_epochs": 1}}, [15, 20]),
    "train_epoch_end_no_val": (
        {"max_epochs": 4, "limit_val_batches": 0, "checkpoint": {"every_n_epochs": 1}},
        [15, 20],
    ),
    "validation_mid_epoch": ({"max_epochs": 4, "val_check_interval": 4, "checkpoint": {"every_n_epochs": 1}}, [17, 22]),
    "limit_train_batches": (
        {"max_epochs": 5, "limit_train_batches": 4, "checkpoint": {"every_n_train_steps": 3}},
        [11, 14],
    ),
}


@pytest.mark.parametrize(
    "case, early",
    [(case, True) for case in RESTART_CASES] + [("after_batch_mid_epoch", False), ("validation_mid_epoch", False)],
    ids=[*RESTART_CASES, "after_batch_mid_epoch-loader_after_restore", "validation_mid_epoch-loader_after_restore"],
)
def test_resume_continues_data_order_and_lr_step_for_step(case, early, tmp_path):
    trainer_cfg, crashes = RESTART_CASES[case]
    reference = Recorder()
    total = toy_fit(tmp_path / "ref", trainer_cfg, reference, early=early).global_step

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stitched: dict = {}
    for crash_at in [*crashes, None]:
        ckpt = str(last) if last.is_file() else None
        step = torch.load(last, weights_only=True)["global_step"] if ckpt else 0
        rec = Recorder(crash_at=crash_at)
        if crash_at is None:
            toy_fit(tmp_path / "run", trainer_cfg, rec, ckpt=ckpt, early=early)
        else:
            with pytest.raises(Crash):
                toy_fit(tmp_path / "run", trainer_cfg, rec, ckpt=ckpt, early=early)
        assert rec.first_step == step, f"{case}: the run resumed at step {rec.first_step}, its checkpoint is at {step}"
        stitched = {s: v for s, v in stitched.items() if s < step} | rec.steps
        if crash_at is not None:
            saved = torch.load(last, weights_only=True)
            assert step < saved["global_step"] <= crash_at, f"{case}: no checkpoint before the crash at {crash_at}"
            assert set(saved["ToyData"]["train_loader"]) == {"epoch", "batches_done", "epoch_complete", "num_batches"}
            assert set(POSITION_KEYS) == set(saved["ToyData"]["train_loader"])
            # saved once: the loader is no Lightning "stateful" loader, so the fit loop keeps no copy of its position
            assert "combined_loader" not in saved["loops"]["fit_loop"]["state_dict"]
    assert sorted(stitched) == list(range(total))
    assert_same_steps(stitched, reference.steps, f"{case}:")


def test_resume_with_loader_workers(tmp_path):
    """A worker process prefetches batches from the first iterator: the skip and the epoch must already be set."""
    cfg = {"max_epochs": 3, "checkpoint": {"every_n_train_steps": 1}}
    reference = Recorder()
    toy_fit(tmp_path / "ref", cfg, reference, workers=1)
    first = Recorder(crash_at=9)
    with pytest.raises(Crash):
        toy_fit(tmp_path / "run", cfg, first, workers=1)
    resumed = Recorder()
    toy_fit(tmp_path / "run", cfg, resumed, ckpt=str(tmp_path / "run" / "checkpoints" / "last.ckpt"), workers=1)
    assert resumed.first_step == 9
    assert_same_steps({s: v for s, v in first.steps.items() if s < 9} | resumed.steps, reference.steps)


def test_final_checkpoint_resumes_into_the_next_epoch(tmp_path):
    """The ``last.ckpt`` saved after fit (as ``training.trainer.fit`` does) continues with more epochs. (The LR
    schedule here does not depend on the run length, which this resume changes.)"""
    reference = Recorder()
    toy_fit(tmp_path / "ref", {"max_epochs": 3}, reference, early=False)
    first = Recorder()
    trainer = toy_fit(tmp_path / "run", {"max_epochs": 2}, first, early=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    assert torch.load(last, weights_only=True)["global_step"] == 12
    resumed = Recorder()
    toy_fit(tmp_path / "run", {"max_epochs": 3}, resumed, ckpt=str(last), early=False)
    assert resumed.first_step == 12
    assert_same_steps(first.steps | resumed.steps, reference.steps)


def test_run_cut_by_max_steps_continues_the_cut_epoch(tmp_path):
    """A run stopped by ``max_steps`` mid-epoch resumes at the next batch of that epoch's order. (Lightning counts
    the cut epoch as finished, so it numbers the resumed rest one epoch higher; the batches are the right ones.)"""
    reference = Recorder()
    toy_fit(tmp_path / "ref", {"max_epochs": 3}, reference, early=False)
    trainer = toy_fit(tmp_path / "run", {"max_steps": 8, "max_epochs": 3}, Recorder(), early=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    resumed = Recorder()
    toy_fit(tmp_path / "run", {"max_steps": 12, "max_epochs": 3}, resumed, ckpt=str(last), early=False)
    assert sorted(resumed.steps) == [8, 9, 10, 11]  # batches 2..5 of epoch 1
    for step, (_, ids, lr) in resumed.steps.items():
        assert ids == reference.steps[step][1] and lr == pytest.approx(reference.steps[step][2], rel=1e-12)


class Counting(TensorDataset):
    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.loaded: list[int] = []

    def __getitem__(self, i):
        self.loaded.append(i)
        return super().__getitem__(i)


def test_skipped_batches_are_not_loaded_and_length_stays_the_epoch():
    ds = Counting(torch.arange(10))
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = ResumableDataLoader(ds, BatchSampler(sampler, 3, drop_last=False))
    sampler.set_epoch(2)
    full = [b[0].tolist() for b in loader]
    sampler.set_epoch(0)
    loader.resume_from({"epoch": 2, "batches_done": 2, "epoch_complete": False, "num_batches": 4})
    sampler.set_epoch(5)  # as Lightning may do between creating the iterator and drawing from it
    ds.loaded.clear()
    assert len(loader) == 4
    assert [b[0].tolist() for b in loader] == full[2:]
    assert sorted(ds.loaded) == sorted(i for b in full[2:] for i in b)  # the skipped images were never read
    sampler.set_epoch(2)
    assert [b[0].tolist() for b in loader] == full  # the skip applies once
    loader.resume_from({"epoch": 2, "batches_done": 4, "epoch_complete": True, "num_batches": 4})
    assert sampler.epoch == 3 and [b[0].tolist() for b in loader] != full


def test_resumable_loader_needs_an_epoch_seeded_sampler():
    ds = TensorDataset(torch.arange(4))
    with pytest.raises(TypeError, match="RandomSampler.*no set_epoch.*DistributedSampler"):
        ResumableDataLoader(ds, BatchSampler(torch.utils.data.RandomSampler(ds), 2, drop_last=False))


# ---- checkpoint files -----------------------------------------------------------------------------------------------
class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_a_pickled_object_is_refused_on_resume(tmp_path):
    """A Lightning checkpoint holding an object that would run code on unpickling is refused, naming the global."""
    cfg = {"max_epochs": 1, "checkpoint": {"every_n_epochs": 1}}
    toy_fit(tmp_path / "run", cfg, Recorder())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["hyper_parameters"] = {"evil": RunsCode()}
    torch.save(ckpt, last)
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)last\.ckpt.*refused.*posix\.system"):
        AtomicCheckpointIO().load_checkpoint(last)
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)last\.ckpt.*refused.*posix\.system"):
        toy_fit(tmp_path / "run", {"max_epochs": 2}, Recorder(), ckpt=str(last))


def test_atomic_save_leaves_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable value
        io.save_checkpoint({"step": torch.tensor(2), "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert not list(path.parent.glob("*.tmp*"))


def test_temporary_file_of_a_killed_writer_is_removed_at_the_next_save(tmp_path):
    path = tmp_path / "last.ckpt"
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now belongs to no process
    stale = tmp_path / f"last.ckpt.tmp{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, path)
    assert not stale.exists() and torch.load(path, weights_only=True)["step"] == 3


def test_detection_checkpoint_of_another_backbone_names_the_keys(tmp_path):
    """``checkpoint=<a Lightning checkpoint of another backbone's detector>`` names the keys that do not fit."""
    import backbones
    from detection.models import build_detector, load_detector_weights

    trained = build_detector("mobilenet_v1_x0_25", "faster_rcnn", num_classes=3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}, "global_step": 5}, path)
    other = build_detector("squeezenet1_1", "faster_rcnn", num_classes=3)
    with pytest.raises(backbones.CheckpointMismatchError) as err:
        load_detector_weights(other, path)
    msg = str(err.value)
    missing = next(k for k in other.state_dict() if k.startswith("backbone.body.") and k not in trained.state_dict())
    assert "last.ckpt" in msg and missing in msg, msg


# ---- SIGKILL a real detection run -----------------------------------------------------------------------------------
MIN_KILLS = 10


def kill_moment(mode: str, proc, run_dir: Path, launched: float, delay: float, n_steps: int, extra: float):
    """When to kill ``proc``: while it writes a checkpoint (``write``), ``delay`` s after its launch (``time``), or
    ``extra`` s after it recorded ``n_steps`` trained steps (``steps``)."""
    from tiny_runs import read_records

    tmp = run_dir / "checkpoints" / f"last.ckpt.tmp{proc.pid}"
    reached: list[float] = []

    def ready() -> bool:
        if mode == "write":
            return tmp.exists()
        if mode == "time":
            return time.monotonic() - launched > delay
        if not reached and len(read_records(run_dir, pid=proc.pid)) >= n_steps:
            reached.append(time.monotonic())
        return bool(reached) and time.monotonic() - reached[0] > extra

    return ready


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_at_the_same_data_position_and_lr(tmp_path):
    """>= 10 SIGKILLs at seeded random moments (one while a checkpoint's temporary file exists), each followed by
    ``resume=true``: every ``last.ckpt`` loads with weights_only, each run starts at its checkpoint's step, and the
    per-step record (image ids, LR) equals an uninterrupted run's; a step trained twice saw the same batch and LR."""
    from tiny_runs import kill_when, read_lines, read_records, run_driver, start_driver, tiny, wait_all

    epochs, steps_per_epoch = 7, 4  # 16 images, batch 4
    overrides = [*tiny(tmp_path, steps=-1), f"solver.epochs={epochs}", "solver.warmup_steps=3",
                 "trainer.checkpoint.every_n_train_steps=2", "trainer.limit_val_batches=0",
                 "trainer.progress_bar=false", "trainer.loggers=[]"]  # fmt: skip
    run_driver(overrides, tmp_path / "reference")
    reference = read_records(tmp_path / "reference")
    total = epochs * steps_per_epoch
    assert sorted(reference) == list(range(total))

    rng = random.Random(0)
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    kills, during_write, lost, starts, seen = 0, 0, [], [], []
    while True:
        step0 = torch.load(last, weights_only=True)["global_step"] if last.is_file() else 0
        proc = start_driver([*overrides, f"resume={'true' if last.is_file() else 'null'}"], run_dir)
        launched = time.monotonic()
        # the moment: while a checkpoint is being written (once, after 2 kills), or after 1-3 more trained steps and a
        # fraction of a step, or (1 in 5) any time from the launch to a few steps in, start-up included
        mode = "none" if kills >= MIN_KILLS + 2 else "write" if kills >= 2 and not during_write else "steps"
        delay = 0.0
        if mode == "steps" and rng.random() < 0.2:
            mode, delay = "time", rng.uniform(0.0, 12.0)
        n_steps, extra = rng.randint(1, 3), rng.uniform(0.0, 0.3)
        if mode == "none":
            (rc,) = wait_all([proc], timeout=600)
        else:
            ready = kill_moment(mode, proc, run_dir, launched, delay, n_steps, extra)
            kill_when(proc, ready, poll=0.001 if mode == "write" else 0.01)
            rc = proc.returncode
        # a kill during a write leaves that writer's temporary file (not yet renamed to last.ckpt) behind
        during_write += mode == "write" and (ckpt_dir / f"last.ckpt.tmp{proc.pid}").exists()
        mine = read_records(run_dir, pid=proc.pid)
        if mine:
            starts.append((min(mine), step0))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, (run_dir / "driver.log").read_text()[-4000:]
        kills += 1
        # complete: it loads, and holds only tensors and plain types (none yet if killed before the first one)
        saved = torch.load(last, weights_only=True)["global_step"] if last.is_file() else 0
        seen.append(saved)
        lost.append((max(mine) + 1 if mine else step0) - saved)
    assert kills >= MIN_KILLS and during_write == 1, (kills, during_write)
    assert all(first == step0 for first, step0 in starts), starts  # each run started at its checkpoint's step
    assert seen == sorted(seen)
    by_step: dict[int, list] = {}
    for r in read_lines(run_dir):
        by_step.setdefault(r["step"], []).append((r["ids"], r["lr"]))
    assert sorted(by_step) == list(range(total))
    for s in range(total):
        for ids, lr in by_step[s]:  # a step redone after a kill trained the same images at the same LR
            assert ids == reference[s]["ids"] and lr == pytest.approx(reference[s]["lr"], rel=1e-12), f"step {s}"
    assert not list(ckpt_dir.glob("*.tmp*"))
    print(f"{kills} kills ({during_write} during a checkpoint write); steps lost per kill {lost}, at most {max(lost)}")
    assert max(lost) <= 2  # a checkpoint every 2 steps: at most the 2 steps after it are trained again
