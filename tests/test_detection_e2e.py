"""End to end: tools/train_net.py (Hydra -> library -> Lightning) on a tiny shapes set; resume, eval-only, NaN stop.

The unmarked tests train a few steps at 64 px; the slow ones run the default configuration and nasnet_a_large.
DDP, torchrun and SLURM: tests/test_distributed.py; kills and resume: tests/test_faults.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_runs import compose_cfg, run_tool, tiny

from detection.evaluation import STAT_NAMES
from detection.module import run
from training.trainer import NonFiniteLossError


def test_train_net_train_resume_eval(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_tool("train_net.py", *tiny(tmp_path), f"hydra.run.dir={run_dir}", timeout=600)
    assert "it/s" in proc.stderr + proc.stdout  # the progress bar
    # one run dir with everything in it
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("version_*/events.out.tfevents.*"))
    assert list((run_dir / "csv").glob("version_*/metrics.csv"))
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["images"] == 8
    assert set(STAT_NAMES) <= set(metrics)
    assert list((run_dir / "eval").glob("coco_results_step*.json"))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert not list(run_dir.rglob("*.tmp*")), "a temporary file was left behind"

    # resume: continues from step 3 in the same run dir
    cfg = compose_cfg([*tiny(tmp_path, steps=5), "resume=true", "trainer.progress_bar=false"])
    run(cfg, run_dir)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5

    # eval only, from the checkpoint
    cfg = compose_cfg([*tiny(tmp_path), "eval_only=true", f"checkpoint={last}", "trainer.progress_bar=false"])
    stats = run(cfg, tmp_path / "eval_run")
    assert list(stats) == list(STAT_NAMES)
    assert json.loads((tmp_path / "eval_run" / "eval" / "metrics.json").read_text())["images"] == 8


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    import detection.models

    build = detection.models.build_detector

    def nan_after_two_steps(*args, **kwargs):
        model = build(*args, **kwargs)
        forward, calls = model.forward, []

        def patched(images, targets=None):
            out = forward(images, targets)
            if model.training:
                calls.append(1)
                if len(calls) >= 3:
                    out = {k: v * float("nan") for k, v in out.items()}
            return out

        model.forward = patched
        return model

    monkeypatch.setattr(detection.models, "build_detector", nan_after_two_steps)
    cfg = compose_cfg(
        [*tiny(tmp_path, steps=6), "trainer.checkpoint.every_n_train_steps=1", "trainer.progress_bar=false"]
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*last good checkpoint: .*last\.ckpt"):
        run(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_resume_without_checkpoint_names_the_path(tmp_path):
    cfg = compose_cfg([*tiny(tmp_path), "resume=true"])
    with pytest.raises(FileNotFoundError, match="checkpoints/last.ckpt"):
        run(cfg, tmp_path / "fresh")


@pytest.mark.slow
def test_default_run_reaches_ap50(tmp_path):
    """`python tools/train_net.py` with no overrides (the README's first command): AP50 >= 0.5 on shapes val."""
    run_dir = tmp_path / "run"
    run_tool("train_net.py", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=3600, one_thread=False)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["AP50"] >= 0.5, metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nasnet_a_large"])
def test_large_backbone_starts_and_loss_falls(name, tmp_path):
    """`backbone=nasnet_a_large detector=faster_rcnn` runs on CPU at a small image size and its loss falls."""
    overrides = [*tiny(tmp_path, steps=8), f"backbone={name}", "detector=faster_rcnn", "dataset.batch_size=2",
                 "solver.lr=0.01", "solver.reference_batch_size=2", "trainer.limit_val_batches=0"]  # fmt: skip
    cfg = compose_cfg([*overrides, "trainer.progress_bar=false"])
    run(cfg, tmp_path / "run")
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 6
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_eval_only_takes_a_torchvision_coco_detector_file(tmp_path):
    """`eval_only=true checkpoint=<torchvision fasterrcnn_resnet50_fpn file>` on a COCO-format set with 4 categories:
    the 91-output COCO head is cut to the set's category ids (without that the load fails on the predictor shape)."""
    tv = pytest.importorskip("torchvision")
    from detection.synthetic import ShapesSpec, ensure_shapes

    root = ensure_shapes(tmp_path / "cache", ShapesSpec(num_train=2, num_val=4))
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)  # what fasterrcnn_resnet50_fpn builds for its COCO weights: FrozenBN, 91 outputs
    body = _resnet_fpn_extractor(tv.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
    ref = tv.models.detection.FasterRCNN(body, num_classes=91)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    files = {"train_images": root / "train", "train_ann": root / "annotations" / "instances_train.json",
             "val_images": root / "val", "val_ann": root / "annotations" / "instances_val.json"}  # fmt: skip
    cfg = compose_cfg(
        ["backbone=resnet50", "backbone.norm=frozen_bn", "dataset=coco", "dataset.min_size=64", "dataset.max_size=64",
         "dataset.workers=0", *(f"dataset.{k}={v}" for k, v in files.items()), "eval_only=true",
         f"checkpoint={tmp_path / 'tv.pth'}", "trainer.progress_bar=false", "trainer.loggers=[]"]
    )  # fmt: skip
    stats = run(cfg, tmp_path / "eval")
    assert list(stats) == list(STAT_NAMES)
    assert json.loads((tmp_path / "eval" / "eval" / "metrics.json").read_text())["images"] == 4


def test_missing_coco_files_are_named(tmp_path):
    cfg = compose_cfg(["dataset=coco", f"dataset.root={tmp_path / 'coco'}", "solver=coco_1x"])
    with pytest.raises(FileNotFoundError, match=r"folder .*coco. does not exist; missing dataset.train_images="):
        run(cfg, tmp_path / "run")
