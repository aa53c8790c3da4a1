"""The one atomic file writer: every file the project writes (checkpoints, metrics and results JSON, COCO results,
generated configs, docs tables and plots, datasets' annotation files) goes through :func:`atomic_write`, and a
file another writer produced (a download, hash-checked first) is published with :func:`move_into_place`.

A file is written to ``<path>.tmp<pid>``, flushed and fsynced, renamed onto ``<path>`` (``os.replace``, atomic on
POSIX and Windows) and the directory fsynced, so a crash or ``kill -9`` at any moment leaves either the previous file
or the new one, never a part of one. The temporary files of writers killed mid-write (their pid runs no process any
more) are deleted at the next write of the same path. Standard library only, and in ``backbones`` (the lowest layer:
``training``, ``detection``, ``classification`` and the tools import it; the weight downloads in ``backbones`` need
it too), so a tool that writes JSON need not import torch or Lightning.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
from collections.abc import Callable
from typing import IO, Any

logger = logging.getLogger(__name__)


def temporary_path(path: str | os.PathLike) -> str:
    """Where this process writes ``path`` before renaming it (``<path>.tmp<pid>``)."""
    return f"{os.fspath(path)}.tmp{os.getpid()}"


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete ``<path>.tmp<pid>`` files left by writers killed mid-write (no process with that pid runs any more)."""
    path = os.fspath(path)
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp[len(path) + 4 :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info("removing %s, left by a writer that was killed", tmp)
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        except PermissionError:  # a live process of another user
            pass


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); not possible (nor needed) on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _RecordingFile:
    """The open temporary file, recording the ``OSError`` a write raised: torch's zip writer turns a failed write
    into an unrelated internal message (``[enforce fail at inline_container.cc] ... unexpected pos``), so the cause
    is kept here."""

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Write ``path`` atomically: ``write(f)`` fills the temporary file ``f`` (opened ``"wb"``, or ``"w"`` UTF-8 when
    not ``binary``), which then replaces ``path``. Parent folders are created.

    Raises:
        OSError: the write failed; a full disk (``ENOSPC``, also when the writer hid it, as torch's does) is named
            with the path and that the previous file is intact. ``path`` is unchanged and the temporary file gone.
            Whatever ``write`` raises otherwise passes through the same way.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    recording: _RecordingFile | None = None
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            recording = _RecordingFile(f)
            write(recording)
            f.flush()
            os.fsync(f.fileno())
        move_into_place(tmp, path, sync=False)
    except Exception as e:
        cause = e if isinstance(e, OSError) else recording.error if recording is not None else None
        if cause is not None and cause.errno == errno.ENOSPC:
            previous = "the previous file is intact" if os.path.exists(path) else "there was no previous file"
            raise OSError(
                errno.ENOSPC,
                f"disk full: no space left on the device while writing {path!r}; {previous} (the "
                f"partial {os.path.basename(tmp)!r} was deleted). Free space there and resume",
            ) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    _fsync_dir(directory)


def move_into_place(tmp: str | os.PathLike, path: str | os.PathLike, sync: bool = True) -> None:
    """Rename the complete file ``tmp`` onto ``path`` (atomic on POSIX and Windows) and, with ``sync``, make the
    rename durable; for files written by someone else (e.g. ``torch.hub.download_url_to_file``) and checked first."""
    os.replace(tmp, path)
    if sync:
        _fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """:func:`atomic_write` of ``obj`` as JSON."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), binary=False)
