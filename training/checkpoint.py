"""Checkpoint files: written through the one atomic writer, loaded with ``weights_only=True``; where a resume starts.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin (every ``last.ckpt`` / ``best-*.ckpt``, and the final
checkpoint :func:`training.trainer.fit` saves). :func:`resolve_resume` turns the ``resume`` key of a run config into a
checkpoint path, or names the file it expected.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from backbones.atomic import atomic_write

#: where ``resume=true`` and ``resume=<run dir>`` look, relative to the run dir
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint with :func:`backbones.atomic.atomic_write` (``<path>.tmp<pid>``, fsync, rename), so a
    crash never leaves a half-written ``<path>``, and a temporary file of a writer killed mid-write is deleted at the
    next save.

    Loading uses ``torch.load(weights_only=True)``: a checkpoint holding pickled objects is refused, naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r} is not supported by {type(self).__name__}")
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"checkpoint {path!r} was refused: it holds objects other than tensors and plain containers, which "
                f"could run code when unpickled (loaded with weights_only=True). Only load a checkpoint you trust "
                f"the origin of, after converting it to tensors. torch.load said: {e}"
            ) from e


def resolve_resume(resume: Any, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint a run resumes from: ``resume`` null / false (None: a fresh run), true
    (``<output_dir>/checkpoints/last.ckpt``), a checkpoint file, or a run dir (its ``checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: naming the checkpoint path that does not exist and how ``resume`` finds one.
    """
    if resume in (None, False, "", "null", "false"):
        return None
    if resume is True or resume == "true":
        path = Path(output_dir) / LAST_CHECKPOINT
    else:
        path = Path(str(resume))
        if path.is_dir():
            path = path / LAST_CHECKPOINT if (path / LAST_CHECKPOINT.parent).is_dir() else path / LAST_CHECKPOINT.name
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: checkpoint {os.fspath(path)!r} does not exist (resume=true reads "
            f"<run dir>/checkpoints/last.ckpt; pass hydra.run.dir=<the earlier run dir> or resume=<checkpoint file>)"
        )
    return os.fspath(path)
