"""Tiny training runs shared by the end-to-end, fault and distributed tests; also the driver script they start.

As a module: :func:`tiny` (overrides for a detection run of seconds), :func:`compose_cfg`, :func:`start_driver`
(this file as a subprocess) and the readers of what the driver records. As a script::

    python tests/tiny_runs.py {detect|classify} <run dir> [override ...]

runs ``detection.module.run`` / ``classification.module.run`` with a :class:`Recorder` callback: every trained step
appends a JSON line (pid, global rank, step, the batch's image ids or sample indices, the learning rate it used,
its loss) to ``<run dir>/records/rank<r>.jsonl``; the start of training and the end of fit save each rank's
flattened parameters to ``<run dir>/records/params_start_rank<r>.pt`` and ``params_rank<r>.pt``. A script file
(not ``python -c``) because Lightning re-launches ``sys.argv`` for its DDP processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = "mobilenet_v1_x0_25"


def tiny(tmp_path: Path, steps: int = 3) -> list[str]:
    """Overrides for a detection run of a few seconds: 16 train / 8 val images at 64 px."""
    return [
        f"backbone={TINY_BACKBONE}",
        f"dataset.root={tmp_path / 'cache'}",
        "dataset.generate.num_train=16",
        "dataset.generate.num_val=8",
        "dataset.min_size=64",
        "dataset.max_size=64",
        "dataset.batch_size=4",
        "dataset.eval_batch_size=8",
        "dataset.workers=0",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "solver.warmup_iters=1",
    ]


def compose_cfg(overrides: Sequence[str] = (), task: str = "detect"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(task, list(overrides))


def child_env(**extra: str) -> dict[str, str]:
    """One thread per process (2 shared cores), the repository importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def start_driver(overrides: Sequence[str], run_dir: Path, task: str = "detect", **env: str) -> subprocess.Popen:
    """This file as a training subprocess; its output goes to ``<run dir>/driver.log`` (appended)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "driver.log", "ab")  # noqa: SIM115 - the child holds it open
    cmd = [sys.executable, str(Path(__file__).resolve()), task, str(run_dir), *overrides]
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env(**env))
    finally:
        log.close()


def run_driver(overrides: Sequence[str], run_dir: Path, task: str = "detect", timeout: float = 900, **env: str) -> None:
    proc = start_driver(overrides, run_dir, task, **env)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, (run_dir / "driver.log").read_text()[-4000:]


def read_lines(run_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    """The records of one rank in file order; a line cut by a kill is left out."""
    path = run_dir / "records" / f"rank{rank}.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def read_records(run_dir: Path, rank: int = 0, pid: int | None = None) -> dict[int, dict[str, Any]]:
    """step -> the latest record of that step (of process ``pid`` only, if given)."""
    return {r["step"]: r for r in read_lines(run_dir, rank) if pid is None or r["pid"] == pid}


def _recorder():
    import lightning as L
    import torch

    class Recorder(L.Callback):
        def __init__(self, run_dir: Path) -> None:
            self.dir = run_dir / "records"
            self.lr = float("nan")

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if isinstance(batch[1], torch.Tensor):  # classification: (x, y, index, skipped)
                ids = batch[2].tolist()
            else:  # detection: (images, targets, skipped)
                ids = [int(t["image_id"]) for t in batch[1]]
            loss = outputs["loss"].item() if isinstance(outputs, dict) else float(outputs)
            rec = {"pid": os.getpid(), "rank": trainer.global_rank, "step": trainer.global_step - 1, "ids": ids,
                   "lr": self.lr, "loss": loss, "epoch": trainer.current_epoch}  # fmt: skip
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

        def _save_params(self, trainer, module, name: str) -> None:
            self.dir.mkdir(parents=True, exist_ok=True)
            flat = torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])
            torch.save(flat, self.dir / f"{name}_rank{trainer.global_rank}.pt")

        def on_train_start(self, trainer, module) -> None:
            self._save_params(trainer, module, "params_start")

        def on_fit_end(self, trainer, module) -> None:
            self._save_params(trainer, module, "params")

    return Recorder


def main(argv: Sequence[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    task, run_dir, *overrides = argv
    run_dir_path = Path(run_dir)
    cfg = compose_cfg(overrides, task)
    callbacks = [_recorder()(run_dir_path)]
    if task == "detect":
        from detection.module import run

        run(cfg, run_dir_path, callbacks=callbacks)
    else:
        from classification.module import run

        run(cfg, run_dir_path, callbacks=callbacks)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
