"""The search loop end to end: each strategy runs through Lightning on tiny budgets and writes its records and
genotype files; a found genotype builds as a classifier and a detection backbone; a crashed run resumes with the
same samples and rewards as one never interrupted. The slow tests SIGKILL tools/search.py at random moments and
train a Faster R-CNN on a searched cell through tools/train_net.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_runs import ROOT, child_env, compose_cfg, tiny

import backbones
from backbones.nas.space import read_genotype
from classification.search.module import run

TINY = ["data.batch_size=128", "child.channels=4", "child.steps=3", "trainer.progress_bar=false", "trainer.loggers=[]"]
EVERY_2 = "trainer.checkpoint.every_n_train_steps=2"
ENAS = ["search.strategy.epochs=2", "search.strategy.controller_steps=2", "search.strategy.num_aggregate=2",
        "search.strategy.reward_batch=64", "search.strategy.derive_samples=3"]  # fmt: skip
RL = ["search/strategy=rl", "search.strategy.children=3", "search.strategy.batch_size=2"]
RANDOM = ["search/strategy=random", "search.strategy.children=2"]


def _records(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "samples.json").read_text())["records"]


@pytest.mark.parametrize("strategy", [ENAS, RL, RANDOM], ids=["enas", "rl", "random"])
def test_each_strategy_searches_and_writes_genotype_files(strategy, tmp_path):
    summary = run(compose_cfg([*TINY, *strategy], "search"), tmp_path)
    records = _records(tmp_path)
    assert summary["scored"] == sum(r["reward"] is not None for r in records) > 0
    best = read_genotype(tmp_path / "best.json")  # a genotype file: validates on reading
    doc = json.loads((tmp_path / "best.json").read_text())
    ranked = [r for r in records if r["phase"] == doc["search"]["phase"] and r["reward"] is not None]
    assert doc["search"]["reward"] == max(r["reward"] for r in ranked) == summary["best_reward"]
    assert sorted(p.name for p in (tmp_path / "top").iterdir())[0] == "1.json"
    for r in records:  # every sampled genotype is in the file, as a genotype
        assert r["genotype"]["normal"]["blocks"] and len(r["decisions"]) == 50
    model = backbones.create_model("nasnet", genotype=str(tmp_path / "best.json"), stem="cifar", num_cells=1,
                                   in_chans=1, num_classes=10)  # fmt: skip
    assert model.genotype.normal == best.normal and model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_found_cell_is_a_detection_backbone_with_exact_levels(tmp_path):
    run(compose_cfg([*TINY, *RANDOM], "search"), tmp_path)
    f = backbones.create_model("nasnet", genotype=str(tmp_path / "best.json"), num_cells=1, features_only=True)
    out = f(torch.randn(1, 3, 64, 96))
    assert list(out) == ["c2", "c3", "c4", "c5"]
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [t.shape[1] for t in out.values()] == list(f.out_channels.values())


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"crash before step {self.step}")


@pytest.mark.parametrize("strategy, crash", [(ENAS, 13), (RL, 5)], ids=["enas", "rl"])
def test_crashed_search_resumes_with_the_same_samples_and_rewards(strategy, crash, tmp_path):
    """ENAS crashes just after its first epoch's controller phase (7 batches per epoch), rl inside a child."""
    run(compose_cfg([*TINY, *strategy], "search"), tmp_path / "reference")
    with pytest.raises(Crash):
        run(compose_cfg([*TINY, *strategy, EVERY_2], "search"), tmp_path / "run", callbacks=[CrashAt(crash)])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < saved < crash
    run(compose_cfg([*TINY, *strategy, EVERY_2, "resume=true"], "search"), tmp_path / "run")
    assert _records(tmp_path / "run") == _records(tmp_path / "reference")


def test_benchmark_compares_the_best_cell_with_random_ones(tmp_path):
    from classification.search.benchmark import compare_with_random

    cfg = compose_cfg([*TINY, *RANDOM, "benchmark.seeds=[0]", "benchmark.random_cells=2"], "search")
    report = compare_with_random(cfg, tmp_path)
    (row,) = report["seeds"]
    assert len(row["random"]) == len(row["random_second_init"]) == 2 and 0 <= row["best"] <= 1
    assert report["summary"]["mean_gain"] == row["best"] - row["random_median"]
    assert json.loads((tmp_path / "benchmark.json").read_text()) == report
    assert (tmp_path / "seed0" / "best.json").is_file()


def test_bad_configuration_is_named(tmp_path):
    with pytest.raises(ValueError, match="search/strategy|unknown key search.strategy.epoch.*did you mean 'epochs'"):
        run(compose_cfg([*TINY, "+search.strategy.epoch=3"], "search"), tmp_path)
    with pytest.raises(ValueError, match=r"emits every block state separately.*strategy=random or strategy=rl"):
        run(compose_cfg([*TINY, "search/space=nasnet_b"], "search"), tmp_path)
    with pytest.raises(FileNotFoundError, match="resume: checkpoint"):
        run(compose_cfg([*TINY, *RANDOM, "resume=true"], "search"), tmp_path / "nothing")


# ---- slow: real kills, and a searched cell in a detector ------------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_search_resumes_with_the_same_sampled_sequence(tmp_path):
    """tools/search.py (ENAS) SIGKILLed at seeded random moments, each time resumed with resume=true: the finished
    run's records (every architecture sampled, in order, and every reward) equal an uninterrupted run's."""
    overrides = [*TINY, EVERY_2, "search.strategy.epochs=3", "search.strategy.controller_steps=2",
                 "search.strategy.num_aggregate=2", "search.strategy.reward_batch=64",
                 "search.strategy.derive_samples=3"]  # fmt: skip
    tool = [sys.executable, str(ROOT / "tools" / "search.py"), *overrides]
    subprocess.run([*tool, f"hydra.run.dir={tmp_path / 'reference'}"], env=child_env(), check=True, timeout=900,
                   capture_output=True)  # fmt: skip
    run_dir, rng, kills = tmp_path / "run", random.Random(0), 0
    last = run_dir / "checkpoints" / "last.ckpt"
    while True:
        resume = "true" if last.is_file() else "false"
        proc = subprocess.Popen([*tool, f"hydra.run.dir={run_dir}", f"resume={resume}"], env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if kills < 4:
            time.sleep(rng.uniform(4.0, 12.0))  # start-up included: some kills land before the first checkpoint
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        rc = proc.wait(timeout=900)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
    assert kills >= 2
    assert _records(run_dir) == _records(tmp_path / "reference")
    best = [json.loads((d / "best.json").read_text()) for d in (run_dir, tmp_path / "reference")]
    assert best[0] == best[1]


@pytest.mark.slow
def test_enas_search_on_two_ddp_processes(tmp_path):
    """Two gloo processes: the shared weights train data-parallel, the controller phase runs on both ranks alike, and
    rank 0 writes the run's files."""
    cmd = [sys.executable, str(ROOT / "tools" / "search.py"), *TINY, *ENAS, EVERY_2, "trainer.devices=2",
           "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp_path)
    assert sum(r["phase"] == "derive" for r in records) == 3 and (tmp_path / "best.json").is_file()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 3  # 2 epochs


@pytest.mark.slow
def test_searched_cell_trains_a_faster_rcnn_through_train_net(tmp_path):
    run(compose_cfg([*TINY, *RANDOM], "search"), tmp_path / "search")
    genotype = tmp_path / "search" / "best.json"
    overrides = [o for o in tiny(tmp_path, steps=4) if not o.startswith("backbone=")]
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), *overrides, "backbone=nasnet",
           f"backbone.options.genotype={genotype}", "+backbone.options.num_cells=1",
           f"hydra.run.dir={tmp_path / 'detect'}", "trainer.progress_bar=false"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "detect" / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["images"] == 8 and "AP" in metrics
    ckpt = torch.load(tmp_path / "detect" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("model.backbone.body.cells.cell_0.") for k in ckpt["state_dict"])
