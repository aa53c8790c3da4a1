"""Tiny training runs shared by the end-to-end, fault and distributed tests; also the driver script they start.

As a module: :func:`tiny` (overrides for a detection run of seconds), :func:`compose_cfg`, the one way tests start
processes (:func:`run_tool` for ``tools/*.py``, :func:`start` / :func:`wait_all` for any command, :func:`start_driver`
for this file, :func:`kill_when` to SIGKILL one at a chosen moment) and the readers of what the driver records. As a
script::

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
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
        "solver.warmup_steps=1",
    ]


def compose_cfg(overrides: Sequence[str] = (), task: str = "detect"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(task, list(overrides))


def child_env(one_thread: bool = True, **extra: str) -> dict[str, str]:
    """The repository importable; one thread per process (2 shared cores) unless not ``one_thread`` (then the
    thread count is inherited, as a user's run would)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **({"OMP_NUM_THREADS": "1"} if one_thread else {}), **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def tool(script: str, *args: str) -> list[str]:
    """The command line of ``tools/<script>``."""
    return [sys.executable, str(ROOT / "tools" / script), *args]


def run_tool(
    script: str, *args: str, cwd: Path = ROOT, timeout: float = 900, one_thread: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """Run ``tools/<script> args`` to the end; it must exit 0 (the failure shows the end of its output)."""
    proc = subprocess.run(
        tool(script, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=child_env(one_thread, **env)
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def start(cmd: Sequence[str], log: Path, cwd: Path = ROOT, new_session: bool = False, **env: str) -> subprocess.Popen:
    """``cmd`` as a subprocess (:func:`child_env`), stdout and stderr appended to ``log``; ``new_session``: in a
    process group of its own (whose id is its pid), which a test can signal as a scheduler or a Ctrl-C does."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - the child holds it open
    try:
        return subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=child_env(**env),
                                start_new_session=new_session)  # fmt: skip
    finally:
        out.close()


def wait_all(procs: Sequence[subprocess.Popen], timeout: float = 900) -> list[int]:
    """The exit codes of ``procs``; any still running after ``timeout`` seconds in all is killed."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], poll: float = 0.01, timeout: float = 600) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (checked every ``poll`` seconds) and wait for it; False if it
    exited by itself first (then it was not killed). Never leaves it running."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                break
            time.sleep(poll)
        if proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_driver(
    overrides: Sequence[str], run_dir: Path, task: str = "detect", new_session: bool = False, **env: str
) -> subprocess.Popen:
    """This file as a training subprocess; its output goes to ``<run dir>/driver.log`` (appended)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), task, str(run_dir), *overrides]
    return start(cmd, run_dir / "driver.log", new_session=new_session, **env)


def run_driver(overrides: Sequence[str], run_dir: Path, task: str = "detect", timeout: float = 900, **env: str) -> None:
    (rc,) = wait_all([start_driver(overrides, run_dir, task, **env)], timeout)
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
