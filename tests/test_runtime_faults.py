"""Runtime faults and bad runtime input, case by case (issue 12, runtime part): the whole config checked with types
and ranges before any work, runs that would succeed with nothing done, checkpoint files that are not what
``checkpoint=`` / ``resume=`` need, one run per run dir, SIGTERM / SIGINT, a full disk. ``docs/bad_input.md`` and
``docs/distributed.md`` (Crash safety) list the same cases.

Each refusal asserts the message names the key and the value, and that the disk is as it was (the run dir not
created, or every file under ``tmp_path`` unchanged). The signal tests check the saved step, the exit status and, on
resume, the uninterrupted run's batches and learning rates (the toy module of ``test_faults`` in the default run; the
real tools, one process and DDP, in the slow ones).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from test_bad_input import image_folder, snapshot
from test_faults import Recorder, Toy, ToyData, assert_same_steps, toy_fit
from tiny_runs import ROOT, child_env, compose_cfg, read_lines, read_records, run_driver, start_driver, tiny

import backbones.atomic
from training import lock
from training.checkpoint import META_KEY, AtomicCheckpointIO, CheckpointFileError
from training.schema import ConfigError
from training.signals import RunInterrupted
from training.trainer import NoImagesError, build_trainer

QUIET = ["trainer.progress_bar=false", "trainer.loggers=[]"]
CLS_SMALL = ["backbone=mobilenet_v1_x0_25", "dataset.image_size=16", "epochs=1", "trainer.limit_train_batches=2",
             "trainer.limit_val_batches=1", *QUIET]  # fmt: skip


def run_task(task: str, overrides, out: Path, **kw):
    if task == "detect":
        from detection.module import run
    else:
        from classification.module import run
    return run(compose_cfg(overrides, task), out, **kw)


# ---- the whole config, types and ranges, before any work ------------------------------------------------------------
CONFIG_CASES = [
    # (task, overrides, message)
    ("detect", ["solver.lr=abc"], r"solver.lr='abc' is not valid; a number > 0"),
    ("detect", ["seed=abc"], r"seed='abc' is not valid; an integer >= 0"),
    ("detect", ["seed=-1"], r"seed=-1 is not valid"),
    ("detect", ["dataset.batch_size=abc"], r"dataset.batch_size='abc' is not valid; an integer >= 1"),
    ("detect", ["dataset.batch_size=0"], r"dataset.batch_size=0 is not valid; an integer >= 1"),
    ("detect", ["dataset.min_size=0"], r"dataset.min_size=0 is not valid; use an integer >= 1"),
    ("detect", ["dataset.max_size=10"], r"dataset.max_size=10 is not valid; use an integer >= 160"),
    ("detect", ["dataset.min_box_size=-50"], r"dataset.min_box_size=-50(\.0)? is not valid; use a side > 0"),
    ("detect", ["dataset.hflip=2"], r"dataset.hflip=2(\.0)? is not valid; use a flip probability in \[0, 1\]"),
    ("detect", ["dataset.on_bad_image=skp"], r"dataset.on_bad_image='skp' is not valid; choose one of skip, fail"),
    ("detect", ["dataset.workers=-1"], r"dataset.workers=-1 is not valid; an integer >= 0"),
    ("detect", ["dataset.generate.num_train=abc"], r"dataset.generate.num_train='abc' is not valid; an integer"),
    ("detect", ["eval_backend=foo"], r"eval_backend='foo' is not valid.*'pycocotools', 'faster_coco_eval'"),
    ("detect", ["solver.epochs=0"], r"solver.epochs=0 is not valid; an integer >= 1"),
    ("detect", ["detector.fpn_channels=abc"], r"detector.fpn_channels='abc' is not valid; an integer > 0"),
    ("detect", ["detector.box_score_thresh=2"], r"detector.box_score_thresh=2 is not valid; a number >= 0 and <= 1"),
    ("detect", ["detector.anchor_sizes=[32,-64]"], r"detector.anchor_sizes=\[32, -64\] is not valid; a list of int"),
    ("detect", ["trainer.max_steps=abc"], r"trainer.max_steps='abc' is not valid; an integer >= 1 or -1"),
    ("detect", ["trainer.max_steps=0"], r"trainer.max_steps=0 is not valid; an integer >= 1 or -1"),
    ("detect", ["trainer.limit_train_batches=0"], r"trainer.limit_train_batches=0 is not valid; an integer >= 1"),
    ("detect", ["trainer.devices=abc"], r"trainer.devices='abc' is not valid; an integer >= 1, -1 \(all\), 'auto'"),
    ("detect", ["trainer.precision=17"], r"trainer.precision=17 is not valid \(did you mean '16'\?\)"),
    ("detect", ["trainer.accelerator=gpux"], r"trainer.accelerator='gpux' is not valid \(did you mean 'gpu'"),
    ("detect", ["trainer.strategy=dpp"], r"trainer.strategy='dpp' is not valid \(did you mean 'ddp'"),
    ("detect", ["trainer.gradient_clip_val=-1"], r"trainer.gradient_clip_val=-1 is not valid; a number >= 0"),
    ("detect", ["trainer.checkpoint.save_top_k=-2"], r"trainer.checkpoint.save_top_k=-2 is not valid"),
    ("detect", ["+trainer.max_step=5"], r"unknown key trainer.max_step \(did you mean 'max_steps'"),
    ("detect", ["backbone.frozen_stages=abc"], r"backbone.frozen_stages='abc' is not valid; an integer >= -1"),
    ("detect", ["backbone.norm=bnn"], r"backbone.norm='bnn' is not valid \(did you mean 'bn'"),
    ("detect", ["backbone.name=resnet5"], r"backbone.name='resnet5' is not valid \(did you mean 'resnet50'"),
    ("detect", ["backbone.input_size=128"], r"backbone.input_size=128 is not valid; it is .* card fact \(224\)"),
    ("detect", ["backbone.std=[0.5,0,0.5]"], r"backbone.std=\[0.5, 0, 0.5\] is not valid; a list of 3 values"),
    ("detect", ["eval_only=true", "checkpoint=x.ckpt", "resume=true"], r"resume=True is not valid with eval_only"),
    ("classify", ["epochs=0"], r"epochs=0 is not valid; an integer >= 1"),
    ("classify", ["seed=abc"], r"seed='abc' is not valid"),
    ("classify", ["dataset.batch_size=abc"], r"dataset.batch_size='abc' is not valid; an integer >= 1"),
    ("classify", ["dataset.shift=-1"], r"dataset.shift=-1 is not valid; an integer >= 0"),
    ("classify", ["dataset.mean=[0.5]"], r"dataset.mean=\[0.5\] is not valid; three numbers"),
    ("classify", ["cpu_threads=0"], r"cpu_threads=0 is not valid; an integer >= 1"),
    ("classify", ["recipe.label_smoothing=1.5"], r"recipe.label_smoothing=1.5 is not valid; a number >= 0 and < 1"),
    ("classify", ["recipe.cutout=-1"], r"recipe.cutout=-1 is not valid; an integer >= 0"),
    ("classify", ["trainer.max_epochs=0"], r"trainer.max_epochs=0 is not valid; an integer >= 1 or -1"),
    ("classify", ["solver.warmup_epochs=abc"], r"solver.warmup_epochs='abc' is not valid; a number >= 0"),
    ("classify", ["eval_only=true"], r"eval_only=true with neither checkpoint nor pretrained would evaluate random"),
    ("classify", ["eval_only=true", "pretrained=w.pth", "resume=true"], r"resume=True is not valid with eval_only"),
    ("classify", ["checkpoint=x.ckpt"], r"checkpoint='x.ckpt' is read by eval_only=true only: .*resume=x.ckpt"),
    ("classify", ["dataset=imagefolder", "dataset.root=/x", "dataset.crop_pct=2"], r"dataset.crop_pct=2"),
    ("classify", ["dataset=imagefolder", "dataset.root=/x", "dataset.interpolation=cubic"],
     r"dataset.interpolation='cubic' is not valid"),
    ("classify", ["dataset=imagefolder"], r"dataset.root is not set: dataset=imagefolder needs dataset.root="),
]  # fmt: skip


@pytest.mark.parametrize("task, overrides, match", CONFIG_CASES, ids=[" ".join(c[1]) for c in CONFIG_CASES])
def test_bad_config_value_is_named_before_any_work(task, overrides, match, tmp_path):
    """The runner's first step names the key and value in full (one line); no run dir, no data, no model."""
    base = [f"dataset.root={tmp_path / 'cache'}"] if task == "detect" else []
    with pytest.raises(ConfigError, match=match) as err:
        run_task(task, [*base, *overrides], tmp_path / "run")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written: no run dir, no dataset cache


def test_late_checks_now_come_first_eval_backend(tmp_path, monkeypatch):
    """``eval_backend=foo`` used to fail at the first validation, after an unsaved epoch: now no data is read."""
    import detection.module

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr(detection.module.DetectionDataModule, "prepare_data", no_data)
    with pytest.raises(ConfigError, match="eval_backend='foo' is not valid"):
        run_task("detect", [f"dataset.root={tmp_path}", "eval_backend=foo"], tmp_path / "run")


# ---- runs that would succeed with nothing done ---------------------------------------------------------------------
class SkipAll(Toy):
    """A module whose every training batch had all its images skipped (as the tasks report them)."""

    skip_setting = "dataset.on_bad_image"

    def training_step(self, batch, batch_idx):
        from training.trainer import count_batch

        count_batch(self, 0, len(batch[0]))
        return None


@pytest.mark.parametrize("validation", [True, False])
def test_an_epoch_that_trained_no_image_is_an_error_naming_the_skip_setting(validation, tmp_path):
    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 2}
    if not validation:
        cfg["limit_val_batches"] = 0
    trainer = build_trainer(cfg, tmp_path, enable_model_summary=False)
    with pytest.raises(NoImagesError, match=r"epoch 0 trained on no image: all 22 images of its 6 batches were "
                                            r"skipped as unusable \(dataset.on_bad_image=skip"):  # fmt: skip
        trainer.fit(SkipAll(), datamodule=ToyData())
    assert not (tmp_path / "checkpoints").exists()  # refused before the epoch's checkpoint


def bad_decode(*args, **kwargs):
    from detection.data import BadImageError

    raise BadImageError("cannot decode (simulated)")


def test_detection_epoch_of_undecodable_images_is_refused(tmp_path, monkeypatch):
    """Every image fails to decode once training reads it (the construction probe is bypassed): refused at the
    epoch's end instead of a run that trains nothing and exits 0."""
    from detection.data import CocoDetection

    monkeypatch.setattr(CocoDetection, "check_images", lambda self, probe: None)
    monkeypatch.setattr(CocoDetection, "decode", bad_decode)
    with pytest.raises(NoImagesError, match=r"all 16 images of its 4 batches were skipped.*dataset.on_bad_image"):
        run_task("detect", [*tiny(tmp_path, steps=-1), "solver.epochs=1", *QUIET], tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_detection_validation_over_no_decodable_image_is_refused(tmp_path, monkeypatch):
    from detection.data import CocoDetection
    from detection.module import DetectionModule
    from training.config import plain

    weights = tmp_path / "detector.pt"
    torch.save(DetectionModule(plain(compose_cfg(tiny(tmp_path))), num_classes=4).model.state_dict(), weights)
    monkeypatch.setattr(CocoDetection, "check_images", lambda self, probe: None)
    monkeypatch.setattr(CocoDetection, "decode", bad_decode)
    overrides = [*tiny(tmp_path), "eval_only=true", f"checkpoint={weights}", *QUIET]
    with pytest.raises(NoImagesError, match=r"validation saw no image: all 8 val images .*dataset.on_bad_image"):
        run_task("detect", overrides, tmp_path / "eval")
    assert not (tmp_path / "eval" / "eval").exists()  # no metrics.json over 0 images


def test_classification_validation_over_no_decodable_image_is_refused(tmp_path, monkeypatch):
    import backbones
    from classification.data import BadImageError, ImageFolderDataset

    root = tmp_path / "data"
    image_folder(root, per_class=2)
    weights = tmp_path / "w.pth"
    torch.save(backbones.create_model("mobilenet_v1_x0_25", num_classes=2).state_dict(), weights)

    def undecodable(path):
        raise BadImageError(f"cannot decode image {path!r} (simulated)")

    monkeypatch.setattr(ImageFolderDataset, "check_images", lambda self, d, probe=16: None)
    monkeypatch.setattr(ImageFolderDataset, "decode", staticmethod(undecodable))
    overrides = ["backbone=mobilenet_v1_x0_25", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                 "dataset.bad_images=skip", "dataset.num_workers=0", "eval_only=true", f"pretrained={weights}",
                 *QUIET]  # fmt: skip
    with pytest.raises(NoImagesError, match=r"validation saw no image: all 4 val images .*dataset.bad_images=skip"):
        run_task("classify", overrides, tmp_path / "eval")
    assert not (tmp_path / "eval" / "results.json").exists()


def test_backbone_mean_and_std_overrides_change_the_detector_normalisation():
    from detection.module import DetectionModule
    from training.config import plain

    def transform(*overrides):
        cfg = plain(compose_cfg(["backbone=mobilenet_v1_x0_25", *overrides]))
        return DetectionModule(cfg, num_classes=4).model.transform

    card, custom = transform(), transform("backbone.mean=[0.1,0.2,0.3]", "backbone.std=[0.2,0.25,0.5]")
    assert card.image_mean == [0.5, 0.5, 0.5] and card.image_std == [0.5, 0.5, 0.5]  # mobilenet's card
    image = torch.rand(3, 8, 8)
    expected = (image - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.2, 0.25, 0.5])[:, None, None]
    assert torch.allclose(custom.normalize(image), expected, atol=1e-6)
    assert not torch.allclose(card.normalize(image), expected, atol=1e-3)


def test_backbone_mean_and_std_overrides_change_the_classification_normalisation(tmp_path):
    """The digits items are (raw - mean) / std with the overridden values; both a backbone and a dataset override
    (of other values) is refused."""
    import backbones
    from classification.module import ClassificationDataModule, _normalization
    from training.config import plain

    def first_val_image(*overrides):
        cfg = plain(compose_cfg(["dataset.image_size=16", *overrides], "classify"))
        card = _normalization(cfg, backbones.model_card(cfg["backbone"]["name"]))
        data = ClassificationDataModule(cfg["dataset"], card).data
        return cfg, data.val.images[0], data.val[0][0]  # the stored [0, 1] image and the normalised item

    cfg, raw, item = first_val_image("backbone.mean=[0.1,0.2,0.3]", "backbone.std=[0.2,0.25,0.5]")
    want = (raw - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.2, 0.25, 0.5])[:, None, None]
    assert torch.allclose(item, want, atol=1e-6)
    _, raw_card, item_card = first_val_image()
    assert torch.allclose(item_card, (raw_card - 0.5) / 0.5, atol=1e-6)  # mobilenet's card: 0.5 / 0.5
    cfg["dataset"]["mean"] = [0.4, 0.4, 0.4]
    with pytest.raises(ConfigError, match=r"backbone.mean=\[0.1, 0.2, 0.3\] and dataset.mean=\[0.4, 0.4, 0.4\]"):
        _normalization(cfg, backbones.model_card(cfg["backbone"]["name"]))


# ---- checkpoint files given to checkpoint= and resume= ------------------------------------------------------------
def lightning_checkpoint(path: Path, meta: dict | None = None, hparams: dict | None = None) -> Path:
    """A file shaped as our Lightning checkpoints are (the keys the inspection reads; tensors of no model)."""
    obj = {"state_dict": {"model.w": torch.zeros(2)}, "pytorch-lightning_version": L.__version__, "global_step": 7,
           "loops": {}, "optimizer_states": [], "hyper_parameters": hparams or {}}  # fmt: skip
    if meta is not None:
        obj[META_KEY] = meta
    torch.save(obj, path)
    return path


def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"directory": tmp_path / "adir"}
    files["directory"].mkdir()
    (files["directory"] / "notes.txt").write_text("no checkpoint here")
    files["empty"] = tmp_path / "empty.ckpt"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.ckpt"
    files["text"].write_text("step 1200, loss 0.3\n")
    whole = lightning_checkpoint(tmp_path / "whole.ckpt", {"task": "detection", "backbone": "mobilenet_v1_x0_25"})
    files["truncated"] = tmp_path / "cut.ckpt"
    files["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    files["binary"] = tmp_path / "noise.ckpt"
    files["binary"].write_bytes(bytes(range(7, 255)) * 4)
    return files


FILE_MESSAGES = {
    "directory": r"is a directory; give a checkpoint file",
    "empty": r"is empty \(0 bytes\)",
    "text": r"is a text file \(it begins 'step 1200, loss 0.3'\), not a PyTorch checkpoint",
    "truncated": r"is truncated or corrupt",
    "binary": r"is not a PyTorch checkpoint \(it begins",
}


@pytest.mark.parametrize("kind", list(FILE_MESSAGES))
@pytest.mark.parametrize("task, key", [("detect", "checkpoint"), ("detect", "resume"), ("classify", "checkpoint"),
                                       ("classify", "resume")])  # fmt: skip
def test_file_that_is_no_checkpoint_is_named_in_one_line(task, key, kind, tmp_path):
    path = bad_files(tmp_path)[kind]
    before = snapshot(tmp_path)
    extra = ["eval_only=true"] if key == "checkpoint" else []
    base = [f"dataset.root={tmp_path / 'cache'}"] if task == "detect" else []
    exc, match = CheckpointFileError, f"{key}='{path}' " + FILE_MESSAGES[kind]
    if key == "resume" and kind == "directory":  # resume=<run dir> reads its checkpoints/last.ckpt
        exc, match = FileNotFoundError, rf"resume: checkpoint '{path}/last.ckpt' does not exist \(resume=true reads"
    with pytest.raises(exc, match=match) as err:
        run_task(task, [*base, *extra, f"{key}={path}"], tmp_path / "run")
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["detect", "classify"])
def test_resume_from_a_plain_state_dict_names_what_it_is_and_the_weights_key(task, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2, 3), "conv.bias": torch.zeros(2)}, path)
    weights_key = "checkpoint" if task == "detect" else "pretrained"
    base = [f"dataset.root={tmp_path / 'cache'}"] if task == "detect" else []
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointFileError, match=rf"resume='{path}' is a plain state dict \(2 tensors: weights only, "
                       rf"no optimizer.*not a training checkpoint.*use {weights_key}={path}"):  # fmt: skip
        run_task(task, [*base, f"resume={path}"], tmp_path / "run")
    assert snapshot(tmp_path) == before


ARCH_CASES = [
    # (task, key, meta or old-style hyper-parameters of the file, message)
    ("detect", "resume", {"task": "detection", "backbone": "squeezenet1_1", "detector": "faster_rcnn"},
     r"was trained with task detection, backbone=squeezenet1_1, detector=faster_rcnn; this run has "
     r"backbone=mobilenet_v1_x0_5: set backbone=squeezenet1_1 to use it"),
    ("detect", "checkpoint", {"task": "detection", "backbone": "mobilenet_v1_x0_5", "detector": "ssd"},
     r"was trained with .*detector=ssd; this run has detector=faster_rcnn: set detector=ssd"),
    ("detect", "resume", {"task": "classification", "backbone": "resnet50", "num_classes": 1000},
     r"was trained with task classification, backbone=resnet50, 1000 classes; this run has task detection: give a "
     r"detection checkpoint"),
    ("classify", "resume", {"task": "detection", "backbone": "mobilenet_v1_x0_5"},
     r"was trained with task detection, backbone=mobilenet_v1_x0_5; this run has task classification"),
    ("classify", "checkpoint", {"task": "classification", "backbone": "resnet50"},
     r"was trained with task classification, backbone=resnet50; this run has backbone=mobilenet_v1_x0_5: set "
     r"backbone=resnet50"),
    # checkpoints written before the metadata key: read from the hyper-parameters the modules save
    ("classify", "resume", {"hparams": {"model_name": "squeezenet1_1", "num_classes": 10}},
     r"was trained with task classification, backbone=squeezenet1_1, 10 classes; this run has "
     r"backbone=mobilenet_v1_x0_5"),
    ("detect", "resume", {"hparams": {"cfg": {"task": "detection", "backbone": {"name": "resnet50"},
                                              "detector": {"name": "faster_rcnn"}}, "num_classes": 4}},
     r"was trained with task detection, backbone=resnet50, detector=faster_rcnn, 4 classes; this run has "
     r"backbone=mobilenet_v1_x0_5"),
]  # fmt: skip


@pytest.mark.parametrize("task, key, meta, match", ARCH_CASES)
def test_checkpoint_of_another_task_or_architecture_names_what_it_was_trained_with(task, key, meta, match, tmp_path):
    if "hparams" in meta:
        path = lightning_checkpoint(tmp_path / "other.ckpt", hparams=meta["hparams"])
    else:
        path = lightning_checkpoint(tmp_path / "other.ckpt", meta)
    extra = ["eval_only=true"] if key == "checkpoint" else []
    base = [f"dataset.root={tmp_path / 'cache'}"] if task == "detect" else []
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointFileError, match=f"{key}='{path}' " + match) as err:
        run_task(task, [*base, *extra, f"{key}={path}"], tmp_path / "run")
    assert "\n" not in str(err.value) and snapshot(tmp_path) == before


def test_checkpoint_with_a_pickled_object_is_refused_by_the_inspection(tmp_path):
    from test_faults import RunsCode

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": RunsCode()}, path)
    with pytest.raises(Exception, match=rf"resume='{path}' was refused: it holds objects other than tensors"):
        run_task("classify", [f"resume={path}"], tmp_path / "run")


def test_real_checkpoints_record_task_backbone_and_classes_and_a_resume_of_another_backbone_is_refused(tmp_path):
    """A real classification run's last.ckpt carries its metadata; resuming it as another backbone, in its own run
    dir, is refused before anything is read or written (last.ckpt unchanged)."""
    out = tmp_path / "run"
    run_task("classify", CLS_SMALL, out)
    last = out / "checkpoints" / "last.ckpt"
    meta = torch.load(last, weights_only=True)[META_KEY]
    assert meta == {"task": "classification", "backbone": "mobilenet_v1_x0_25", "num_classes": 10}
    before = snapshot(out)
    with pytest.raises(CheckpointFileError, match=r"resume='.*last.ckpt' was trained with task classification, "
                       r"backbone=mobilenet_v1_x0_25, 10 classes; this run has backbone=squeezenet1_1"):  # fmt: skip
        run_task("classify", [*CLS_SMALL, "backbone=squeezenet1_1", "resume=true"], out)
    assert snapshot(out) == before


# ---- one run per run dir ---------------------------------------------------------------------------------------------
HOLD = (
    "import sys, time; from training import lock; lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"
)


@pytest.fixture
def held(tmp_path):
    """A process (not this one) holding the lock of ``tmp_path / 'run'``; yields (run dir, its pid)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env=child_env(), cwd=ROOT)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        yield run_dir, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_run_in_a_held_run_dir_is_refused_naming_pid_and_host(held):
    run_dir, pid = held
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the first run's")
    before = snapshot(run_dir)
    with pytest.raises(lock.RunDirInUse, match=rf"in use by another run: pid {pid} on host {socket.gethostname()}"):
        run_task("classify", CLS_SMALL, run_dir)
    assert snapshot(run_dir) == before


def test_the_tool_is_refused_before_hydra_writes_the_run_dir(held):
    """``tools/train_cls.py`` (Hydra) in a held run dir: exit status non-zero, the holder named, and neither
    ``.hydra/`` nor a log file written there."""
    run_dir, pid = held
    before = snapshot(run_dir)
    cmd = [sys.executable, str(ROOT / "tools" / "train_cls.py"), *CLS_SMALL, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=run_dir.parent, timeout=300)
    assert proc.returncode != 0
    assert f"pid {pid} on host {socket.gethostname()}" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(run_dir) == before and not (run_dir / ".hydra").exists()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_dead_process_does_not_block_a_resume(tmp_path, caplog):
    """A run killed with SIGKILL leaves its lock file (with its pid): the OS lock died with it, so ``resume=true``
    takes the file over; the file is gone when the run ends."""
    out = tmp_path / "run"
    run_task("classify", CLS_SMALL, out)
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": "earlier"}
    (out / lock.LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level("INFO", logger="training.lock"):
        metrics = run_task("classify", [*CLS_SMALL, "epochs=2", "resume=true"], out)
    assert metrics["global_step"] == 4  # resumed at step 2
    assert f"lock of pid {stale['pid']}" in caplog.text and "stale" in caplog.text
    assert not (out / lock.LOCK_NAME).exists()


def test_ranks_above_zero_share_the_rank_zero_lock(held, monkeypatch):
    run_dir, _ = held
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child of the holder's run
    assert lock.acquire(run_dir) is False
    lock.release(run_dir)


@pytest.fixture
def no_flock(monkeypatch):
    """A filesystem without ``flock`` (e.g. some Lustre mounts): the lock is the file itself."""
    import fcntl

    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / lock.LOCK_NAME).write_text(json.dumps(holder))


def test_without_flock_a_live_holder_is_refused_and_a_dead_one_taken_over(no_flock, tmp_path, monkeypatch):
    host = socket.gethostname()
    write_lock(tmp_path / "a", pid=os.getppid(), host=host)  # a live process on this host
    with pytest.raises(lock.RunDirInUse, match=rf"pid {os.getppid()} on host {host}"):
        lock.acquire(tmp_path / "a")
    write_lock(tmp_path / "b", pid=12345, host="node07")  # another host: cannot be checked
    with pytest.raises(lock.RunDirInUse, match=r"pid 12345 on host node07.*if that process has ended, delete the lock"):
        lock.acquire(tmp_path / "b")
    write_lock(tmp_path / "c", pid=dead_pid(), host=host)
    assert (
        lock.acquire(tmp_path / "c") and json.loads((tmp_path / "c" / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    )
    lock.release(tmp_path / "c")
    assert not (tmp_path / "c" / lock.LOCK_NAME).exists()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # a requeued job: same id, maybe another node
    write_lock(tmp_path / "d", pid=12345, host="node07", slurm_job="4242")
    assert lock.acquire(tmp_path / "d")
    lock.release(tmp_path / "d")


# ---- SIGTERM / SIGINT -----------------------------------------------------------------------------------------------
class SignalAt(L.Callback):
    """Sends ``sig`` to this process when training batch ``step`` starts (mid-epoch: 6 batches per epoch)."""

    def __init__(self, step: int, sig: int) -> None:
        self.step, self.sig = step, sig

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_the_step_it_lands_on_and_resume_continues_the_uninterrupted_run(sig, tmp_path):
    """Toy module on Lightning's loops: the signal lands in step 8 (epoch 1, batch 2); the run ends with status
    128 + signal after saving ``last.ckpt`` at step 9; ``resume`` trains steps 9.. with the reference batches and
    learning rates; the handlers are Lightning's / Python's again after the run."""
    reference = Recorder()
    toy_fit(tmp_path / "ref", {"max_epochs": 3}, reference)
    before = signal.getsignal(sig)
    first = Recorder()
    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 3}
    trainer = build_trainer(cfg, tmp_path / "run", callbacks=[first, SignalAt(8, sig)], enable_model_summary=False)
    with pytest.raises(RunInterrupted) as stop:
        trainer.fit(Toy(), datamodule=ToyData(), weights_only=True)
    assert stop.value.code == 128 + sig and stop.value.step == 9
    assert signal.getsignal(sig) == before
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 9 and sorted(first.steps) == list(range(9))
    assert saved["ToyData"]["train_loader"] == {"epoch": 1, "batches_done": 3, "epoch_complete": False,
                                                "num_batches": 6}  # fmt: skip
    resumed = Recorder()
    toy_fit(tmp_path / "run", {"max_epochs": 3}, resumed, ckpt=str(last))
    assert resumed.first_step == 9
    assert_same_steps(first.steps | resumed.steps, reference.steps)


def test_signal_during_validation_saves_when_it_ends(tmp_path):
    class SignalInValidation(L.Callback):  # once: a second signal would end the process at once
        def on_validation_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 3}
    trainer = build_trainer(cfg, tmp_path, callbacks=[SignalInValidation()], enable_model_summary=False)
    with pytest.raises(RunInterrupted) as stop:
        trainer.fit(Toy(), datamodule=ToyData(), weights_only=True)
    assert stop.value.code == 143 and torch.load(stop.value.checkpoint, weights_only=True)["global_step"] == 12


def test_signal_in_an_evaluation_only_run_stops_it_with_the_status_and_saves_nothing(tmp_path):
    class SignalNow(L.Callback):
        def on_validation_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 1}
    trainer = build_trainer(cfg, tmp_path, callbacks=[SignalNow()], enable_model_summary=False)
    with pytest.raises(RunInterrupted) as stop:
        trainer.validate(Toy(), datamodule=ToyData())
    assert stop.value.code == 130 and stop.value.checkpoint is None and not (tmp_path / "checkpoints").exists()


def test_slurm_requeue_signal_keeps_lightnings_handler(tmp_path, monkeypatch):
    """Under SLURM (auto-requeue) SIGUSR1 stays Lightning's (save hpc_ckpt, requeue); SIGTERM is ours."""
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

    from training.signals import StopOnSignal

    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "detect", "SLURM_NTASKS": "1", "SLURM_NNODES": "1",
                 "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                 "SLURM_NODELIST": "gpu07"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    seen = {}

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen["usr1"], seen["term"] = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)

    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 1, "limit_train_batches": 1}
    trainer = build_trainer(cfg, tmp_path, callbacks=[Look()], enable_model_summary=False)
    trainer.fit(Toy(), datamodule=ToyData())
    assert isinstance(seen["usr1"], _HandlersCompose)
    assert any(getattr(h, "__name__", "") == "_slurm_sigusr_handler_fn" for h in seen["usr1"].signal_handlers)
    assert isinstance(getattr(seen["term"], "__self__", None), StopOnSignal)


def wait_for_steps(run_dir: Path, proc: subprocess.Popen, n: int, rank: int = 0, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(read_records(run_dir, rank=rank)) < n:
        assert proc.poll() is None, (run_dir / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


SIGNAL_RUNS = {
    # task: overrides of a 12-step run (3 epochs of 4 steps / 2 epochs of 6), one loader worker
    "detect": lambda tmp: [*tiny(tmp, steps=-1), "solver.epochs=3", "solver.warmup_steps=3", "dataset.workers=1",
                           "trainer.limit_val_batches=0", *QUIET],
    "classify": lambda tmp: ["backbone=mobilenet_v1_x0_25", "dataset.image_size=16", "epochs=2",
                             "trainer.limit_train_batches=6", "trainer.limit_val_batches=0", "dataset.num_workers=1",
                             *QUIET],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("task, sig", [("detect", signal.SIGTERM), ("classify", signal.SIGINT)],
                         ids=["detect-SIGTERM", "classify-SIGINT"])  # fmt: skip
def test_real_run_signalled_mid_epoch_exits_with_the_status_and_resumes_exactly(task, sig, tmp_path):
    """The process group of a real run (main process and loader worker, as a scheduler or a Ctrl-C signals it) gets
    the signal in epoch 1: exit status 128 + signal, ``last.ckpt`` at the step after the last one trained, loadable
    with ``weights_only``; ``resume=true`` then trains the remaining steps with the uninterrupted run's batches and
    learning rates."""
    overrides = SIGNAL_RUNS[task](tmp_path)
    run_driver(overrides, tmp_path / "reference", task)
    reference = read_records(tmp_path / "reference")
    assert sorted(reference) == list(range(12))
    run_dir = tmp_path / "run"
    proc = start_driver(overrides, run_dir, task, new_session=True)
    wait_for_steps(run_dir, proc, 7)  # into the second epoch of either run
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=300) == 128 + sig, (run_dir / "driver.log").read_text()[-3000:]
    trained = read_records(run_dir, pid=proc.pid)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == max(trained) + 1 < 12
    assert not (run_dir / lock.LOCK_NAME).exists()
    run_driver([*overrides, "resume=true"], run_dir, task)
    by_step: dict[int, list] = {}
    for r in read_lines(run_dir):
        by_step.setdefault(r["step"], []).append(r)
    assert sorted(by_step) == list(range(12))
    for step, recs in by_step.items():
        for r in recs:
            assert r["ids"] == reference[step]["ids"] and r["lr"] == pytest.approx(reference[step]["lr"], rel=1e-12)


@pytest.mark.slow
def test_ddp_sigterm_to_one_rank_stops_both_ranks_at_the_same_step(tmp_path):
    """Two gloo processes; only rank 1 gets SIGTERM: every rank agrees at the next batch end, rank 0 saves, both end
    with status 143 and neither waits in a collective."""
    overrides = [*SIGNAL_RUNS["detect"](tmp_path), "dataset.workers=0", "trainer.devices=2", "trainer.strategy=ddp"]
    run_dir = tmp_path / "run"
    proc = start_driver(overrides, run_dir)
    wait_for_steps(run_dir, proc, 2, rank=1)
    rank1 = read_lines(run_dir, rank=1)[0]["pid"]
    os.kill(rank1, signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, (run_dir / "driver.log").read_text()[-3000:]
    for _ in range(100):  # the child rank exits too
        try:
            os.kill(rank1, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("rank 1 still runs")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for rank in (0, 1):
        assert max(read_records(run_dir, rank=rank)) + 1 == saved["global_step"]


# ---- a full disk ----------------------------------------------------------------------------------------------------
class FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_path_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The write of a checkpoint fails with ENOSPC (simulated in the writer's file): the run ends with one message
    naming the file, the full disk and the intact previous checkpoint, which still loads; no partial file is left."""
    cfg = {"accelerator": "cpu", "loggers": [], "progress_bar": False, "max_epochs": 2,
           "checkpoint": {"every_n_epochs": 1}}  # fmt: skip
    toy_fit(tmp_path, {**cfg, "max_epochs": 1}, Recorder())
    last = tmp_path / "checkpoints" / "last.ckpt"
    previous = last.read_bytes()
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if ".tmp" in os.fspath(path) and "w" in mode:
            return FullDisk(path, "w")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(backbones.atomic, "open", full_open, raising=False)
    with pytest.raises(OSError, match=rf"disk full: no space left on the device while writing '{last}'; the previous "
                                      r"file is intact") as err:  # fmt: skip
        toy_fit(tmp_path, cfg, Recorder(), ckpt=str(last))
    assert err.value.errno == errno.ENOSPC
    assert last.read_bytes() == previous and torch.load(last, weights_only=True)["global_step"] == 6
    assert not list(last.parent.glob("*.tmp*"))


def test_full_disk_inside_torch_save_is_named_too(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into ``[enforce fail at inline_container.cc] ...``: the writer keeps
    the OSError it saw and names the full disk anyway."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)

    class Partial(io.FileIO):  # accepts 100 bytes, then the disk is full
        written = 0

        def write(self, data):
            if self.written + len(data) > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return super().write(data)

    real_open = open
    monkeypatch.setattr(backbones.atomic, "open", lambda p, m="r", *a, **k: Partial(p, "w") if ".tmp" in os.fspath(p)
                        else real_open(p, m, *a, **k), raising=False)  # fmt: skip
    with pytest.raises(OSError, match="disk full: .* the previous file is intact"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2), "w": torch.zeros(10_000)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
