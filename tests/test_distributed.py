"""Distributed training on the CPU with the gloo backend (slow tests, but for one config check): two DDP
processes end with identical weights; the same global batch on one and on two processes gives the same loss
trajectory; evaluation under DDP counts every val image once (COCO stats equal a single-process evaluation of the
same checkpoint); two "nodes" started by torchrun complete a run in one Hydra run dir, with logs and checkpoints
from rank 0 only.

The runs are ``tests/tiny_runs.py`` subprocesses (Lightning re-launches the script for its DDP processes), which
record every rank's per-step batch ids, learning rate and loss, and its final parameters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from tiny_runs import ROOT, compose_cfg, read_records, run_driver, run_tool, start, tiny, wait_all

QUIET = ["trainer.progress_bar=false", "trainer.loggers=[]"]


def ddp(devices: int = 2) -> list[str]:
    return [f"trainer.devices={devices}", "trainer.strategy=ddp"]


def global_steps(run_dir: Path, ranks: int) -> list[dict]:
    """Per step: the images of all ranks' batches, the mean of the ranks' losses, each rank's LR."""
    per_rank = [read_records(run_dir, rank=r) for r in range(ranks)]
    steps = sorted(per_rank[0])
    assert all(sorted(rec) == steps for rec in per_rank), "the ranks trained different steps"
    return [
        {
            "ids": sorted(i for rec in per_rank for i in rec[s]["ids"]),
            "loss": sum(rec[s]["loss"] for rec in per_rank) / ranks,
            "lr": {rec[s]["lr"] for rec in per_rank},
        }
        for s in steps
    ]


def assert_same_trajectory(one: list[dict], two: list[dict], rel: float) -> None:
    assert len(one) == len(two) >= 4
    for k, (a, b) in enumerate(zip(one, two)):
        assert a["ids"] == b["ids"], f"step {k}: the global batch differs"
        assert len(b["lr"]) == 1 and a["lr"] == b["lr"], f"step {k}: LR {a['lr']} vs {b['lr']}"
        assert b["loss"] == pytest.approx(a["loss"], rel=rel), f"step {k}: loss {a['loss']} vs {b['loss']}"


@pytest.mark.slow
def test_detection_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
    """Frozen BN (no batch statistics), no flips, one aspect-ratio group, and samplers larger than the anchor and
    proposal counts, so nothing random is left: rank r trains images r::2 of the 1-process batch.

    Tolerance: torchvision's RPN and RoI losses are means over the sampled anchors / proposals of the batch, and
    DDP averages the two ranks' means while one process takes the mean over all 8 images, so the two agree exactly
    only when both ranks sample equally many; with every anchor used the counts differ only by the anchors each
    image leaves between the IoU thresholds and by its proposal count. Measured (2-core CPU, torch 2.15): 5e-6
    relative at step 0 (same weights), at most 3e-4 over the next steps, while the loss moves by 2 %; the bound
    2e-3 is 7x the largest measured gap and a tenth of the movement (checked below).
    """
    common = [*tiny(tmp_path, steps=4), "backbone.norm=frozen_bn", "dataset.hflip=0",
              "dataset.aspect_ratio_group_factor=0", "detector.rpn_batch_size_per_image=1000000",
              "detector.box_batch_size_per_image=1000000", "trainer.limit_val_batches=0", *QUIET]  # fmt: skip
    run_driver([*common, "dataset.batch_size=8"], tmp_path / "one")
    run_driver([*common, "dataset.batch_size=4", *ddp()], tmp_path / "two")

    records = tmp_path / "two" / "records"
    p0, p1 = torch.load(records / "params_rank0.pt"), torch.load(records / "params_rank1.pt")
    assert p0.numel() > 100_000 and torch.equal(p0, p1)  # DDP kept the ranks bit-identical
    one, two = global_steps(tmp_path / "one", 1), global_steps(tmp_path / "two", 2)
    worst = max(abs(b["loss"] - a["loss"]) / abs(a["loss"]) for a, b in zip(one, two))
    assert_same_trajectory(one, two, rel=2e-3)
    assert abs(one[-1]["loss"] - one[0]["loss"]) > 10 * 2e-3 * one[0]["loss"]  # the trajectory moved
    print(f"detection 1 vs 2 processes: largest relative loss difference {worst:.2e}")


@pytest.mark.slow
def test_classification_two_processes_follow_the_one_process_trajectory(tmp_path):
    """Per-image mean cross-entropy with equal per-rank batches: the mean of the ranks' means is the mean over the
    global batch, and DDP's averaged gradient is the 1-process gradient. The batch statistics of BatchNorm would
    differ (4 images per rank instead of 8); ``trainer.sync_batchnorm=true`` pools them on GPUs, but torch's
    SyncBatchNorm does not run on CPU tensors, so this CPU test freezes BN (GroupNorm would do too, but at 16 px the
    deepest maps are 1x1 and GN over a few values makes training chaotic: float noise grows 100x a step). Float
    rounding only: measured 1e-7 relative on the loss; bound 1e-5."""
    common = ["backbone=mobilenet_v1_x0_25", "backbone.norm=frozen_bn", "dataset.image_size=16", "dataset.shift=0",
              "solver.lr=0.8", "epochs=1", "trainer.limit_train_batches=6", "dataset.val_batch_size=512",
              *QUIET]  # fmt: skip
    run_driver([*common, "dataset.batch_size=8"], tmp_path / "one", task="classify")
    run_driver([*common, "dataset.batch_size=4", *ddp()], tmp_path / "two", task="classify")
    records = tmp_path / "two" / "records"
    assert torch.equal(torch.load(records / "params_rank0.pt"), torch.load(records / "params_rank1.pt"))
    one, two = global_steps(tmp_path / "one", 1), global_steps(tmp_path / "two", 2)
    assert_same_trajectory(one, two, rel=1e-5)
    p_one = torch.load(tmp_path / "one" / "records" / "params_rank0.pt")
    moved = (p_one - torch.load(tmp_path / "one" / "records" / "params_start_rank0.pt")).abs().max()
    gap = (torch.load(records / "params_rank0.pt") - p_one).abs().max()
    assert moved > 1e-2 and gap < 1e-4 * moved, (moved, gap)  # measured: moved 0.08, gap 1.5e-8


def test_sync_batchnorm_on_cpu_processes_is_refused_with_the_alternatives(tmp_path):
    from training.trainer import build_trainer

    cfg = {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "sync_batchnorm": True, "max_epochs": 1}
    with pytest.raises(ValueError, match=r"sync_batchnorm=true.*CPU.*frozen_bn.*gn"):
        build_trainer(cfg, tmp_path)


@pytest.mark.slow
def test_ddp_eval_counts_each_val_image_once_and_matches_one_process(tmp_path):
    """tools/train_net.py, 2 CPU processes, 7 val images (rank 0 evaluates 4, rank 1 3): the COCO stats of the DDP
    run's last evaluation equal a single-process ``eval_only`` run on its final checkpoint; one run dir, no per-rank
    Hydra dirs, rank-0 logs and checkpoints only."""
    from detection.module import run

    run_dir = tmp_path / "run"
    overrides = [*tiny(tmp_path), "dataset.generate.num_val=7", *ddp(), "trainer.progress_bar=false"]
    run_tool("train_net.py", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 7 and metrics["step"] == 3
    assert_one_run_dir(run_dir, tmp_path)

    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    single = run(compose_cfg([*tiny(tmp_path), "dataset.generate.num_val=7", "eval_only=true", f"checkpoint={last}",
                              "trainer.progress_bar=false", "trainer.loggers=[]"]), tmp_path / "eval")  # fmt: skip
    assert json.loads((tmp_path / "eval" / "eval" / "metrics.json").read_text())["images"] == 7
    for key, value in single.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # the detections themselves (a barely trained model scores near 0 AP): the same per image, each image once
    ddp_dets = detections(run_dir / "eval" / "coco_results_step0000003.json")
    single_dets = detections(next((tmp_path / "eval" / "eval").glob("coco_results_step*.json")))
    assert len(ddp_dets) == len(single_dets) > 50 and len({d[0] for d in ddp_dets}) == 7
    for a, b in zip(ddp_dets, single_dets):
        assert a[:2] == b[:2] and a[2:] == pytest.approx(b[2:], abs=1e-3), (a, b)


def detections(path: Path) -> list[tuple]:
    """(image id, category, x, y, w, h, score) of a COCO results file, in a canonical order."""
    rows = [(d["image_id"], d["category_id"], *d["bbox"], d["score"]) for d in json.loads(path.read_text())]
    return sorted(rows, key=lambda r: (r[0], r[1], -r[-1]))


def assert_one_run_dir(run_dir: Path, cwd: Path) -> None:
    """Everything in ``run_dir``: one .hydra, one log version, checkpoints; nothing per rank, nothing in cwd."""
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert [p.relative_to(run_dir) for p in run_dir.rglob(".hydra")] == [Path(".hydra")]
    assert len(list((run_dir / "csv").glob("version_*"))) == 1
    assert len(list((run_dir / "tensorboard").glob("version_*"))) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (cwd / "outputs").exists() and not (cwd / "lightning_logs").exists()


@pytest.mark.slow
def test_two_nodes_by_torchrun_complete_a_run_in_one_run_dir(tmp_path):
    """Two torchrun "nodes" of one process each on localhost (static rendezvous): ``trainer=ddp_multinode`` with
    ``trainer.num_nodes=2``; each val image is evaluated once; rank-0 files only."""
    run_dir = tmp_path / "run"
    port = free_port()
    overrides = [*tiny(tmp_path), "dataset.generate.num_val=7", "trainer=ddp_multinode", "trainer.accelerator=cpu",
                 "trainer.devices=1", "trainer.num_nodes=2", "trainer.precision=32-true", "trainer.channels_last=false",
                 "trainer.benchmark=null", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
               str(ROOT / "tools" / "train_net.py"), *overrides]  # fmt: skip
        procs.append(start(cmd, tmp_path / f"node{node}.log", cwd=tmp_path))
    codes = wait_all(procs, timeout=900)
    logs = {n: (tmp_path / f"node{n}.log").read_text() for n in (0, 1)}
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MEMBER: 1/2" in logs[0] and "MEMBER: 2/2" in logs[1]  # Lightning's line as each rank joins
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 7 and metrics["step"] == 3
    assert_one_run_dir(run_dir, tmp_path)
    assert not os.environ.get("RANK")  # the test process itself is no rank


# ---- SLURM (no cluster here: the config, and what Lightning reads from an srun task) -------------------------------
SLURM_TASK = {  # task 3 of an `srun` over 2 nodes x 2 tasks
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "detect", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURM_NODELIST": "gpu[07-08]",
}  # fmt: skip


@pytest.mark.parametrize("task", ["detect", "classify"])
def test_slurm_preset_composes_with_the_submitit_launcher(task, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    from hydra import compose, initialize_config_dir

    overrides = ["hydra/launcher=submitit_slurm", "trainer=slurm", "hydra.launcher.nodes=2",
                 "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=2"]  # fmt: skip
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(task, overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 2, 2)
    t = cfg.trainer
    assert (t.accelerator, t.strategy, t.precision) == ("gpu", "ddp", "bf16-mixed")
    assert (t.num_nodes, t.devices) == (1, 8)  # outside a SLURM job
    for k, v in SLURM_TASK.items():
        monkeypatch.setenv(k, v)
    assert (t.num_nodes, t.devices) == (2, 2)  # inside one: the allocation's layout


def test_under_srun_lightning_takes_ranks_and_address_from_slurm(monkeypatch, tmp_path):
    """What each task of the README's sbatch script builds: a Trainer whose cluster environment is SLURM's."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from omegaconf import OmegaConf

    from training.trainer import build_trainer

    for k, v in SLURM_TASK.items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    import lightning.fabric.utilities.rank_zero as fabric_rz
    import lightning.pytorch.utilities.rank_zero as pytorch_rz
    import lightning_utilities.core.rank_zero as utils_rz

    for module in (fabric_rz, pytorch_rz, utils_rz):  # the Trainer sets the process-wide rank: restore it after
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))
    cfg = compose_cfg(["trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
                       "trainer.channels_last=false", "trainer.benchmark=null"])  # fmt: skip
    trainer = build_trainer(OmegaConf.to_container(cfg.trainer, resolve=True), tmp_path, logger=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 2, 4)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (3, 1, 1)
    assert env.main_address == "gpu07"


def test_entry_points_keep_hydra_files_to_rank_zero(monkeypatch):
    from training.process import NON_ZERO_RANK_OVERRIDES, global_rank, prepare_process

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    argv = ["train_net.py", "trainer=ddp"]
    prepare_process(argv)
    assert global_rank() == 0 and argv == ["train_net.py", "trainer=ddp"]
    monkeypatch.setenv("SLURM_PROCID", "3")  # an srun task
    prepare_process(argv)
    prepare_process(argv)  # idempotent
    assert global_rank() == 3 and argv == ["train_net.py", "trainer=ddp", *NON_ZERO_RANK_OVERRIDES]
