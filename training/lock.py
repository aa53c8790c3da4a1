"""One run per run dir: a second run started on the same ``hydra.run.dir`` is refused before it writes anything.

Two runs in one directory overwrite each other's ``last.ckpt`` and ``.hydra/config.yaml``, and a later
``resume=true`` may then load another architecture. The first run holds ``<run dir>/run.lock``; the second is
refused with :class:`RunDirInUse`, naming the first one's pid and host.

* The lock is an OS lock (``fcntl.flock``) on that file: the kernel (or the NFS server) releases it when the process
  ends, however it ends (``kill -9`` included), so a stale lock of a dead process never blocks a resume; the file
  records who holds it (pid, host, start time, command, SLURM job), for the message.
* Where the filesystem has no ``flock`` (some Lustre or old NFS mounts), the file alone is the lock, created
  exclusively: a lock of a pid that no longer runs on this host is stale and taken over, and so is one of the same
  SLURM job id (a requeued job); one of a process on another host is refused, with the file to delete if that
  process is gone.
* Only global rank 0 locks (:func:`training.process.global_rank`): the other ranks of one distributed run share its
  run dir and never refuse themselves.
* The holder deletes the file when its run ends (or at exit).

``tools/train_net.py`` and ``tools/train_cls.py`` take the lock before Hydra writes its files (the Hydra callback
:class:`HydraRunDirLock` in ``conf/detect.yaml`` / ``conf/classify.yaml``); ``detection.module.run`` and
``classification.module.run`` take it too (the same process re-enters its own lock), so the Python API is covered.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .process import global_rank

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
#: errors of ``flock`` on a filesystem that does not support it
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
#: run dir (resolved) -> [open file or None (exclusive-file mode), depth, whether acquire created the dir]
_HELD: dict[str, list[Any]] = {}


class RunDirInUse(RuntimeError):
    """Another live run holds this run dir; the message names its pid, host and lock file."""


def _identity() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "argv": sys.argv,
    }


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _refusal(run_dir: str, path: Path, holder: dict[str, Any], extra: str = "") -> RunDirInUse:
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    since = f", started {holder['started']}" if holder.get("started") else ""
    cmd = f" ({' '.join(map(str, holder['argv']))[:160]})" if holder.get("argv") else ""
    return RunDirInUse(
        f"run dir {run_dir!r} is in use by another run: {who}{since}{cmd}. A second run there would overwrite its "
        f"checkpoints and config; use another hydra.run.dir, or wait for it to end and continue it with "
        f"resume=true{extra} (lock file {os.fspath(path)})"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _flock(run_dir: str, path: Path) -> Any:
    """Hold the OS lock of ``path``; returns the open file, None where the filesystem has no flock."""
    import fcntl

    while True:
        f = open(path, "a+")  # noqa: SIM115 - held open as long as the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise _refusal(run_dir, path, _read(path)) from None
            if e.errno in _NO_FLOCK:
                return None
            raise
        try:  # the holder before us may have deleted the file after we opened it: lock the file at the path
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    stale = _read(path)
    if stale.get("pid"):
        logger.info("run dir lock of pid %s on %s is stale (no process holds it); taking it over", stale.get("pid"),
                    stale.get("host"))  # fmt: skip
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_identity()) + "\n")
    f.flush()
    return f


def _exclusive_file(run_dir: str, path: Path) -> None:
    """The lock where there is no flock: the file itself, created exclusively; a dead holder's is taken over."""
    me = _identity()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            pid, host = holder.get("pid"), holder.get("host")
            same_job = me["slurm_job"] is not None and holder.get("slurm_job") == me["slurm_job"]
            if (host == me["host"] and isinstance(pid, int) and not _alive(pid)) or same_job:
                logger.info("run dir lock of pid %s on %s is stale (%s); taking it over", pid, host,
                            "the same SLURM job, requeued" if same_job else "that process has ended")  # fmt: skip
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            extra = "" if host == me["host"] else "; if that process has ended, delete the lock file"
            raise _refusal(run_dir, path, holder, extra) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        return
    raise RunDirInUse(f"run dir {run_dir!r}: could not take its lock file {os.fspath(path)}")


def acquire(run_dir: str | os.PathLike) -> bool:
    """Take the lock of ``run_dir`` (created if needed) for this process; re-entrant. Ranks other than 0 take none.
    Returns whether this call took it (False: re-entered, or a rank > 0).

    Raises:
        RunDirInUse: another live process holds it.
    """
    if global_rank() > 0:
        return False
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        return False
    created = not os.path.isdir(key)
    os.makedirs(key, exist_ok=True)
    path = Path(key) / LOCK_NAME
    try:
        f = _flock(key, path)
        if f is None:
            _exclusive_file(key, path)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(key)
        raise
    _HELD[key] = [f, 1, created]
    return True


def release(run_dir: str | os.PathLike) -> None:
    """Give back one hold of ``run_dir``'s lock; the last one deletes the lock file (then unlocks), and the run dir
    itself if :func:`acquire` created it and nothing else was written there (a run refused after the lock)."""
    key = os.path.realpath(run_dir)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        os.remove(Path(key) / LOCK_NAME)
    if held[0] is not None:
        held[0].close()
    if held[2]:
        with contextlib.suppress(OSError):
            os.rmdir(key)  # only if empty


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (:func:`acquire` / :func:`release`)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _HELD[key][1] = 1
        release(key)


def _hydra_callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class HydraRunDirLock(_hydra_callback_base()):  # type: ignore[misc]
    """Hydra callback (``hydra.callbacks`` in the task configs): takes the run dir's lock in ``on_run_start``, before
    Hydra writes ``.hydra/`` and the log file there, and gives it back in ``on_run_end``. A refusal ends the process
    with status 1 and the message on stderr (Hydra turns a callback's ``Exception`` into a warning and goes on)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            acquire(self._run_dir(config))
        except RunDirInUse as e:
            raise SystemExit(f"{type(e).__name__}: {e}") from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        release(self._run_dir(config))

    @staticmethod
    def _run_dir(config: Any) -> str:
        from omegaconf import OmegaConf

        return os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
