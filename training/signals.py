"""SIGTERM and SIGINT during a run: save ``last.ckpt`` at the step they land on, then exit with ``128 + signal``.

Lightning 2.6 alone turns SIGTERM into ``SystemExit()`` (status 0) at the next batch, skipping every save after it,
and SIGINT into ``sys.exit(1)``: a scheduler's preemption looked like success and lost everything since the last
checkpoint. :class:`StopOnSignal` (a callback :func:`training.trainer.build_trainer` adds to every Trainer) takes
both signals over while the Trainer runs:

* the handler only records the signal; the run acts on it at the end of the training batch it landed in (or, if it
  landed in a validation, when that validation ends: the step is the same), where the state is one a checkpoint
  resumes exactly (:mod:`training.resumable`);
* there every rank agrees (a max-reduce of the signal number, so a signal to any one rank stops all of them together
  and none waits in a collective), ``last.ckpt`` is written through the atomic writer, and every rank raises
  :class:`RunInterrupted`, a ``SystemExit`` with status 143 (SIGTERM) or 130 (SIGINT);
* in an evaluation-only run there is nothing to save: it stops at the next batch with the same status;
* a second signal while the first is pending ends the process at once, by the signal's default action (the last
  ``last.ckpt`` stays the complete previous one: every write is atomic).

Outside ``Trainer.fit`` / ``validate`` (building data and model) the default actions stay: nothing is trained there.
Loader worker processes ignore both signals (:func:`worker_init`): a scheduler or a Ctrl-C signals the whole
process group, and a worker ended by it would make torch raise in the main process before it could save. The main
process stops its workers as torch always does; workers still running when it exits (a persistent loader's) are
ended by :func:`_end_loader_workers` instead of multiprocessing's SIGTERM, which they ignore.
SLURM's requeue signal (``SIGUSR1``, Lightning's ``SLURMEnvironment`` with auto-requeue) keeps Lightning's handler:
it saves ``hpc_ckpt_<n>.ckpt`` and requeues the job.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.util  # registers its exit handler now, so that ours (registered below) runs first
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)

#: the signals a run stops on, saving first
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(SystemExit):
    """A run stopped by a signal; ``code`` is ``128 + signum`` (143 for SIGTERM, 130 for SIGINT), the shell's
    status for a process ended by that signal. ``checkpoint`` is the ``last.ckpt`` written (None in an evaluation
    only run), ``step`` the global step it holds."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        if checkpoint:
            self.message = (
                f"{name} received: stopped at step {step} and saved {checkpoint}; continue the run with resume=true "
                f"and the same hydra.run.dir (exit status {128 + signum})"
            )
        else:
            self.message = f"{name} received: evaluation stopped (nothing to save; exit status {128 + signum})"

    def __str__(self) -> str:
        return self.message


class StopOnSignal(Callback):
    """Turns SIGTERM and SIGINT into a saved ``last.ckpt`` at the current step and :class:`RunInterrupted` (module
    docstring). ``checkpoint_path`` is where ``last.ckpt`` goes."""

    def __init__(self, checkpoint_path: str | os.PathLike) -> None:
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.received: int | None = None

    # -- the handler: record only (no collective, no exception inside a signal handler) --
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop now, by the default action
            logger.warning("%s received again: stopping at once, unsaved", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        logger.warning(
            "%s received: stopping after the current step, saving %s first (send it again to stop at once, unsaved)",
            signal.Signals(signum).name,
            self.checkpoint_path,
        )

    def _install(self) -> None:
        # after Lightning registered its own handlers (it restores the earlier ones when the run ends); SIGUSR1
        # (SLURM requeue) stays Lightning's
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) != self._handle:
                    signal.signal(sig, self._handle)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    # -- where the run acts on it --
    def _agreed(self, trainer: L.Trainer) -> int:
        """The signal any rank received (the same number on every rank), or 0."""
        signum = self.received or 0
        if trainer.world_size > 1:
            t = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(t, reduce_op="max"))
        return signum

    def _stop(self, trainer: L.Trainer, save: bool) -> None:
        signum = self._agreed(trainer)
        if not signum:
            return
        self.received = self.received or signum
        path = None
        if save:
            trainer.save_checkpoint(self.checkpoint_path)
            path = self.checkpoint_path
        stop = RunInterrupted(signum, trainer.global_step, path)
        if trainer.is_global_zero:
            logger.warning("%s", stop)
        raise stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop(trainer, save=True)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not trainer.training and not trainer.sanity_checking and trainer.state.fn != "fit":
            self._stop(trainer, save=False)  # evaluation only: stop at the next batch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # after the sanity check nothing is trained yet: nothing new to save
            self._stop(trainer, save=not trainer.sanity_checking)


def _init_worker(worker_id: int, rank: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):  # what Lightning adds when a loader has no worker_init_fn
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


def worker_init(rank: int) -> Callable[[int], None]:
    """The ``worker_init_fn`` of every loader with workers: they ignore SIGTERM and SIGINT (the main process stops
    them when it has saved; it ends them if it dies), and are seeded as Lightning seeds workers
    (``seed_everything(workers=True)``)."""
    return functools.partial(_init_worker, rank=rank)


@atexit.register
def _end_loader_workers() -> None:
    """At exit, SIGKILL this process's daemonic children that still run: loader workers of a persistent loader.
    multiprocessing's own exit handler ends daemonic children with SIGTERM, which our workers ignore, and then
    waits for them forever; this handler runs before it (registered after it) and ends them as it would have."""
    for child in multiprocessing.active_children():
        if child.daemon and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=5)
