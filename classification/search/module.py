"""The only Lightning-aware search code: :class:`SearchModule`, :class:`SearchDataModule` and :func:`run`, which
``tools/search.py`` calls with the composed ``conf/search.yaml``.

The Trainer is the shared one (the ``trainer`` config group): devices, DDP, atomic checkpoints, the progress bar,
loggers. Optimisation is manual: a strategy steps its own optimisers (ENAS: the shared weights on training batches,
the controller on validation rewards), so Lightning counts steps through one zero-size "clock" parameter stepped
once per training batch -- children come and go, the clock does not. Checkpoints hold the strategy's whole state
(its generator, every record, a child in training), and each step reseeds torch from (seed, step), so a run killed
at any moment and resumed with ``resume=true`` draws the same architectures and rewards as one never interrupted.

The run dir receives (from rank 0, at every checkpoint and at the end, through the project's atomic JSON writer):
``samples.json`` (every sampled architecture: decisions, genotype, reward), ``best.json`` (the best genotype file,
``create_model("nasnet", genotype=<it>)``), ``top/<rank>.json`` and ``search.json`` (cost and outcome).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import BatchSampler, DistributedSampler, TensorDataset

from backbones.atomic import write_json_atomic
from backbones.checks import check, check_keys
from backbones.nas.space import build_space, genotype_to_dict
from training.checkpoint import resolve_resume
from training.config import plain
from training.lock import run_dir_lock
from training.resumable import ResumableTrainData
from training.trainer import build_trainer, check_finite_loss

from .data import SearchData, build_search_data
from .strategies import SearchStrategy, StepContext, build_strategy, mix_seed

logger = logging.getLogger(__name__)
# the state after the step is what a search checkpoints (Lightning 2.6 asks for a copy taken before each step)
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

TOP_KEYS = ("task", "seed", "resume", "data", "child", "search", "trainer", "top_k", "cpu_threads", "benchmark")
SPACE_KEYS = ("name", "ops", "combines", "num_blocks")


class SearchModule(L.LightningModule):
    """Runs a :class:`~classification.search.strategies.SearchStrategy` one training batch at a time.

    Args:
        strategy: the strategy (its models are this module's submodules).
        total_steps: training batches of the whole search; ``steps_per_epoch`` per epoch of this process.
        seed: reseeds torch at every step (drop path, dropout, augmentation are a function of the step).
        output_dir: where results are written (rank 0), or None.
        top_k: how many of the best genotypes get a file.
    """

    def __init__(self, strategy: SearchStrategy, total_steps: int, steps_per_epoch: int, seed: int = 0,
                 output_dir: str | os.PathLike | None = None, top_k: int = 5) -> None:  # fmt: skip
        super().__init__()
        self.automatic_optimization = False
        self.search = strategy
        self.clock = nn.Parameter(torch.zeros(0))
        self.total_steps, self.steps_per_epoch, self.seed = total_steps, steps_per_epoch, seed
        self.output_dir, self.top_k = output_dir, top_k
        self.elapsed, self._since = 0.0, time.monotonic()
        self.cpu_time, self._cpu_since = 0.0, time.process_time()

    def configure_optimizers(self):
        optimizers, schedulers = self.search.optimizers(self.total_steps, self.steps_per_epoch)
        return [torch.optim.SGD([self.clock], lr=0.0), *optimizers], schedulers

    def on_train_start(self) -> None:
        self._since, self._cpu_since = time.monotonic(), time.process_time()

    def _elapsed(self) -> float:
        return self.elapsed + time.monotonic() - self._since

    def _cpu(self) -> float:
        return self.cpu_time + time.process_time() - self._cpu_since

    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        step = self.global_step
        torch.manual_seed(mix_seed(self.seed, 7, step, self.global_rank))

        def check_loss(loss, what: str) -> None:
            check_finite_loss(self, loss, lambda: what, lambda: "Lower the learning rate of the strategy's optimiser")

        ctx = StepContext(
            global_step=step, epoch=self.current_epoch, batch_idx=batch_idx,
            last_batch=batch_idx == self.trainer.num_training_batches - 1, last_step=step == self.total_steps - 1,
            backward=self.manual_backward, check=check_loss, rank=self.global_rank,
            world_size=self.trainer.world_size,
        )  # fmt: skip
        out = self.search.training_step(x, y, ctx)
        optimizers = self.optimizers()
        (optimizers[0] if isinstance(optimizers, list) else optimizers).step()  # the clock: one counted step a batch
        ranking = self.search.ranking()
        if ranking:
            out["best"] = ranking[0]["reward"]
        out["scored"] = float(self.search.scored())
        for k, v in out.items():
            self._log(k, v)

    def _log(self, name: str, value: float) -> None:
        shown = name in ("best", "reward", "shared_loss", "child_loss", "scored")
        self.log(f"search/{name}", float(value), prog_bar=shown, on_step=True, on_epoch=False, rank_zero_only=True)

    # ---- checkpoints and results --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["search"] = {**self.search.extra_state(), "elapsed": self._elapsed(), "cpu": self._cpu()}
        if self.trainer.is_global_zero and self.output_dir is not None:
            write_results(self.search, self.output_dir, self.top_k, self._elapsed(), self._cpu())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("search")
        if state is None:
            raise ValueError("the checkpoint holds no search state; resume=<a checkpoint of tools/search.py>")
        self.search.load_extra_state(state)
        self.elapsed, self._since = float(state["elapsed"]), time.monotonic()
        self.cpu_time, self._cpu_since = float(state["cpu"]), time.process_time()


class SearchDataModule(ResumableTrainData, L.LightningDataModule):
    """The proxy's training split in a seeded, resumable, rank-sharded loader (full batches only)."""

    def __init__(self, data: SearchData, seed: int = 0) -> None:
        super().__init__()
        self.data, self.seed = data, seed

    def train_dataloader(self):
        ds = TensorDataset(self.data.train_x, self.data.train_y)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return self.resumable_loader(ds, BatchSampler(sampler, self.data.batch_size, drop_last=True))


def steps_per_epoch(num_train: int, batch_size: int, world_size: int) -> int:
    """Full batches per epoch of one process (``DistributedSampler`` pads to ``ceil(n / world)`` per rank)."""
    per_epoch = math.ceil(num_train / world_size) // batch_size
    check("data.batch_size", batch_size, per_epoch >= 1, f"the training split ({num_train} images) needs more")
    return per_epoch


def _processes(trainer_cfg: Mapping[str, Any]) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, list | tuple):
        n = len(devices)
    elif str(devices).lstrip("-").isdigit() and int(devices) > 0:
        n = int(devices)
    else:  # "auto" / -1: every visible GPU when the run is on GPUs
        gpu = trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        n = torch.cuda.device_count() if gpu else 1
    return n * int(trainer_cfg.get("num_nodes") or 1)


def write_results(
    strategy: SearchStrategy, output_dir: str | os.PathLike, top_k: int, elapsed: float, cpu: float = 0.0
) -> dict:
    """``samples.json``, ``best.json``, ``top/<rank>.json`` and ``search.json`` in ``output_dir``; returns the
    summary (what ``search.json`` holds)."""
    out = Path(output_dir)
    space, name = strategy.space, strategy.name
    records = [{**r, "genotype": genotype_to_dict(space.decode(r["decisions"], f"sample{r['index']}"))}
               for r in strategy.records]  # fmt: skip
    write_json_atomic(out / "samples.json", {"strategy": name, "space": space.name, "records": records})
    ranking = strategy.ranking()
    for rank, r in enumerate(ranking[:top_k], start=1):
        geno = space.decode(r["decisions"], f"searched_{space.name}_{r['index']}")
        doc = genotype_to_dict(geno, reward=r["reward"], phase=r["phase"], index=r["index"], step=r["step"],
                               strategy=name, decisions=r["decisions"])  # fmt: skip
        write_json_atomic(out / "top" / f"{rank}.json", doc)
        if rank == 1:
            write_json_atomic(out / "best.json", doc)
    scored = strategy.scored()
    summary = {
        "strategy": name, "space": space.name, "records": len(strategy.records), "scored": scored,
        "wall_s": elapsed, "cpu_s": cpu, "scored_per_s": scored / elapsed if elapsed > 0 else 0.0,
        "best_reward": ranking[0]["reward"] if ranking else None, "best": str(out / "best.json") if ranking else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }  # fmt: skip
    write_json_atomic(out / "search.json", summary)
    return summary


def prepare(cfg: Mapping[str, Any]) -> tuple[SearchStrategy, SearchData, dict[str, Any]]:
    """The strategy and data a composed ``conf/search.yaml`` describes (validated, nothing trained)."""
    c = plain(cfg)
    check_keys(c, TOP_KEYS, "search config")
    check("task", c.get("task"), c.get("task") == "search", "tools/search.py runs conf/search.yaml (task: search)")
    search = dict(c["search"])
    check_keys(search, ("strategy", "space"), "search")
    space_cfg = dict(search["space"])
    check_keys(space_cfg, SPACE_KEYS, "search.space")
    space = build_space(**space_cfg)
    strategy_cfg = dict(search["strategy"])
    name = strategy_cfg.pop("name")
    data = build_search_data(c["data"])
    return build_strategy(name, space, data, strategy_cfg, c["child"], int(c.get("seed", 0))), data, c


def run(cfg: Any, output_dir: str | os.PathLike, **trainer_overrides: Any) -> dict[str, Any]:
    """Search as the composed ``conf/search.yaml`` says; returns the summary written to ``search.json``. The whole
    config is checked and the strategy built first, then the run dir locked (:mod:`training.lock`)."""
    output_dir = os.fspath(output_dir)
    c = plain(cfg)
    threads = c.get("cpu_threads")
    if threads and c["trainer"].get("accelerator") == "cpu":
        torch.set_num_threads(int(threads))
    L.seed_everything(int(c.get("seed", 0)), workers=True, verbose=False)
    strategy, data, c = prepare(c)
    with run_dir_lock(output_dir):
        return _run(strategy, data, c, output_dir, trainer_overrides)


def _run(
    strategy: SearchStrategy, data: SearchData, c: dict[str, Any], output_dir: str, trainer_overrides: dict[str, Any]
) -> dict[str, Any]:
    trainer_cfg = dict(c["trainer"])
    world = _processes(trainer_cfg)
    if world > 1 and not hasattr(strategy, "supernet"):
        raise ValueError(
            f"strategy={strategy.name} trains one child at a time; run it on one device (trainer.devices=1),"
            f" or search with strategy=enas, whose shared weights train on {world} processes"
        )
    per_epoch = steps_per_epoch(len(data.train_y), data.batch_size, world)
    total = strategy.total_steps(per_epoch)
    overrides: dict[str, Any] = dict(max_steps=total, max_epochs=-1, use_distributed_sampler=False,
                                     limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    if world > 1 and trainer_cfg.get("strategy") in ("ddp", "auto"):
        overrides["strategy"] = "ddp_find_unused_parameters_true"  # each rank trains its own sampled child
    overrides.update(trainer_overrides)
    trainer = build_trainer(trainer_cfg, output_dir, monitor=None, **overrides)
    seed = int(c.get("seed", 0))
    module = SearchModule(strategy, total, per_epoch, seed, output_dir, int(c.get("top_k", 5)))
    ckpt = resolve_resume(c.get("resume"), output_dir)
    if ckpt:
        logger.info("resuming from %s", ckpt)
    logger.info("search: %s over %s, %d steps (%d per epoch)", strategy.name, strategy.space.name, total,
                per_epoch)  # fmt: skip
    trainer.fit(module, datamodule=SearchDataModule(data, seed), ckpt_path=ckpt, weights_only=True)
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        summary = write_results(strategy, output_dir, module.top_k, module._elapsed(), module._cpu())
        logger.info(
            "searched %d architectures (%d scored) in %.1f s, %.1f CPU s (%.2f scored/s); best reward %s -> %s",
            summary["records"], summary["scored"], summary["wall_s"], summary["cpu_s"], summary["scored_per_s"],
            summary["best_reward"], summary["best"],
        )  # fmt: skip
    return summary
