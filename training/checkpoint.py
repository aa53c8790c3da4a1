"""Checkpoint files: written through the one atomic writer, loaded with ``weights_only=True``; where a resume starts;
what a file given to ``checkpoint=`` or ``resume=`` is, before anything loads it.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin (every ``last.ckpt`` / ``best-*.ckpt``, and the final
checkpoint :func:`training.trainer.fit` saves). :func:`resolve_resume` turns the ``resume`` key of a run config into a
checkpoint path, or names the file it expected. :func:`inspect_checkpoint` tells a training checkpoint from a plain
state dict, a directory, an empty, text, truncated or foreign file, and reads which task, backbone and class count a
training checkpoint was made with (:data:`META_KEY`, written by the task modules); :func:`check_checkpoint` refuses
a file that does not fit the run in one line naming it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# ---- what a checkpoint file is --------------------------------------------------------------------------------------
#: the checkpoint entry in which the task modules record what a run trained: ``{"task", "backbone", "num_classes",
#: ...}`` (older checkpoints: read from their hyper-parameters)
META_KEY = "cnn_backbones"


class CheckpointFileError(ValueError):
    """A file given as a checkpoint that is not one, or not one of this run's task and architecture; the message is
    one line naming the key, the file, what it is and what to give instead."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found: ``kind`` is ``"training"`` (a Lightning checkpoint with the model's
    ``state_dict`` and the loop state) or ``"state_dict"`` (tensors only); ``meta`` what the run recorded (task,
    backbone, num_classes, ... when known)."""

    path: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    global_step: int | None = None
    tensors: int = 0


def _head(path: str, n: int = 256) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The task / backbone / class count a training checkpoint was made with (:data:`META_KEY`, else read from the
    hyper-parameters the task modules save: detection's ``cfg``, classification's ``model_name``)."""
    if isinstance(obj.get(META_KEY), Mapping):
        return dict(obj[META_KEY])
    hp = obj.get("hyper_parameters") or {}
    if isinstance(hp.get("cfg"), Mapping):  # a detection checkpoint
        cfg = hp["cfg"]
        backbone = cfg.get("backbone")
        detector = cfg.get("detector")
        return {
            "task": cfg.get("task", "detection"),
            "backbone": backbone.get("name") if isinstance(backbone, Mapping) else backbone,
            "detector": detector.get("name") if isinstance(detector, Mapping) else detector,
            "num_classes": hp.get("num_classes"),
        }
    if "model_name" in hp:  # a classification checkpoint
        return {"task": "classification", "backbone": hp["model_name"], "num_classes": hp.get("num_classes")}
    return {}


def _count_tensors(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, Mapping):
        return sum(_count_tensors(v) for v in obj.values())
    return 0


def inspect_checkpoint(path: str | os.PathLike, key: str = "checkpoint") -> CheckpointInfo:
    """What the file ``path`` (the value of the config key ``key``) is, reading it with ``weights_only=True``
    (memory-mapped when it is a zip archive, so a large file costs little).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: a directory, an empty file, a text file, a truncated or corrupt archive, a file that is
            no PyTorch checkpoint, or one that holds no tensors; one line naming ``key`` and the file.
        pickle.UnpicklingError: it holds objects that would run code when unpickled (refused, naming the file).
    """
    path = os.fspath(path)
    name = f"{key}={path!r}"
    if os.path.isdir(path):
        inside = (
            sorted(p.name for p in Path(path).glob("*.ckpt"))[:3]
            or sorted(p.relative_to(path).as_posix() for p in Path(path).glob("*/*.ckpt"))[:3]
        )
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointFileError(f"{name} is a directory{hint}; give a checkpoint file, e.g. {key}=<dir>/last.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointFileError(f"{name} is empty (0 bytes): a copy or a save that did not finish; not a checkpoint")
    head = _head(path)
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):  # neither torch.save's zip archive nor a legacy pickle
        if _looks_like_text(head):
            start = head.decode("utf-8").strip().splitlines()[0][:40] if head.strip() else ""
            raise CheckpointFileError(f"{name} is a text file (it begins {start!r}), not a PyTorch checkpoint")
        raise CheckpointFileError(f"{name} is not a PyTorch checkpoint (it begins {head[:8]!r}; {size} bytes)")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip() if size < 64 << 20 else None
        except zipfile.BadZipFile as e:
            raise CheckpointFileError(
                f"{name} is truncated or corrupt ({size} bytes; a zip archive whose directory cannot be read: {e}); "
                f"copy it again from where it was saved"
            ) from None
        if bad is not None:
            raise CheckpointFileError(f"{name} is corrupt: its entry {bad!r} fails the archive's CRC check")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise pickle.UnpicklingError(
                f"{name} was refused: it holds objects other than tensors and plain containers, which could run "
                f"code when unpickled (loaded with weights_only=True). Only load a checkpoint you trust the origin "
                f"of, after converting it to tensors. torch.load said: {str(e).splitlines()[0]}"
            ) from e
        raise CheckpointFileError(f"{name} is truncated or corrupt ({size} bytes): {str(e).splitlines()[0]}") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(f"{name} is truncated or corrupt ({size} bytes; torch.load: {reason})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f"{name} holds a {type(obj).__name__}, not a checkpoint (a mapping of tensors)")
    tensors = _count_tensors(obj)
    if isinstance(obj.get("state_dict"), Mapping) and ("pytorch-lightning_version" in obj or "loops" in obj):
        step = obj.get("global_step")
        return CheckpointInfo(path, "training", _meta(obj), int(step) if step is not None else None, tensors)
    if tensors == 0:
        raise CheckpointFileError(f"{name} holds no tensors (keys: {', '.join(map(str, list(obj)[:6]))})")
    return CheckpointInfo(path, "state_dict", tensors=tensors)


def _trained(meta: Mapping[str, Any]) -> str:
    parts = [f"task {meta['task']}" if meta.get("task") else ""]
    parts += [f"{k}={meta[k]}" for k in ("backbone", "detector") if meta.get(k)]
    if meta.get("num_classes") is not None:
        parts.append(f"{meta['num_classes']} classes")
    return ", ".join(p for p in parts if p)


def check_checkpoint(
    info: CheckpointInfo,
    key: str,
    expect: Mapping[str, Any],
    training: bool = False,
    weights_key: str | None = None,
) -> None:
    """Refuse ``info`` (from :func:`inspect_checkpoint`) unless it fits the run: for ``training`` (``resume=``, or an
    evaluation that restores a training checkpoint) it must be a training checkpoint; and every key of ``expect``
    (``task``, ``backbone``, ``detector``, ``num_classes``) that the checkpoint records must be the run's.

    Args:
        weights_key: the key that takes plain weights in this task (named when a state dict is given for
            ``training``).

    Raises:
        CheckpointFileError: one line: the key, the file, what it holds, and what to set.
    """
    name = f"{key}={info.path!r}"
    if training and info.kind != "training":
        instead = f"; to start from these weights use {weights_key}={info.path}" if weights_key else ""
        raise CheckpointFileError(
            f"{name} is a plain state dict ({info.tensors} tensors: weights only, no optimizer, schedule or loop "
            f"state), not a training checkpoint such as <run dir>/checkpoints/last.ckpt{instead}"
        )
    meta = info.meta
    wrong = [k for k in ("task", "backbone", "detector", "num_classes") if k in expect and meta.get(k) is not None
             and expect[k] is not None and meta[k] != expect[k]]  # fmt: skip
    if not wrong:
        return
    k = wrong[0]
    if k == "task":
        fix = f"give a {expect['task']} checkpoint, or run it with the {meta['task']} tool"
    elif k == "num_classes":
        fix = "use the dataset it was trained on (the classifier sizes differ)"
    else:
        fix = f"set {k}={meta[k]} to use it, or give a checkpoint of {k}={expect[k]}"
    run = f"task {expect['task']}" if k == "task" else ", ".join(f"{x}={expect[x]}" for x in wrong)
    raise CheckpointFileError(f"{name} was trained with {_trained(meta)}; this run has {run}: {fix}")
