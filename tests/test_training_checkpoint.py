"""The one atomic writer (backbones.atomic) for every file a run writes, and resume resolution: a failed write leaves
the previous file and no temporary, the data is fsynced before the rename, a killed writer's temporary is removed,
a full disk is named. Checkpoint-specific faults (pickles refused, kills mid-write): tests/test_faults.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from backbones import atomic
from backbones.atomic import atomic_write, write_json_atomic, write_text_atomic
from training.checkpoint import resolve_resume


def test_json_and_text_land_whole_and_leave_no_temporary(tmp_path):
    path = tmp_path / "eval" / "metrics.json"  # parent folders are created
    write_json_atomic(path, {"AP": 0.5, "ids": [1, 2]})
    assert json.loads(path.read_text()) == {"AP": 0.5, "ids": [1, 2]}
    write_text_atomic(tmp_path / "a.yaml", "name: x\n")
    assert (tmp_path / "a.yaml").read_text() == "name: x\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.yaml", "eval", "metrics.json"]


def test_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"top1": 90.0})
    with pytest.raises(TypeError):  # not JSON-serialisable: fails half-way through writing
        write_json_atomic(path, {"top1": 91.0, "bad": object()})
    assert json.loads(path.read_text()) == {"top1": 90.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(("fsync", os.fstat(fd).st_size)), real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append(("replace", 0)), real_replace(a, b)))
    write_text_atomic(tmp_path / "x.txt", "12345")
    assert calls[:2] == [("fsync", 5), ("replace", 0)]  # the file's data, then the rename (then the folder)


def test_temporary_of_a_killed_writer_is_removed_for_any_file(tmp_path):
    path = tmp_path / "coco_results_step0000010.json"
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now belongs to no process
    stale = tmp_path / f"{path.name}.tmp{dead.pid}"
    stale.write_text("[{half")
    mine = tmp_path / f"{path.name}.tmp{os.getpid()}x"  # not a pid suffix: left alone
    mine.write_text("")
    write_json_atomic(path, [])
    assert not stale.exists() and mine.exists() and json.loads(path.read_text()) == []


def test_full_disk_is_named_and_the_previous_file_kept(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_write(path, lambda f: f.write(b"old"))

    def no_space(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"no space left on the device while writing '.*last\.ckpt'.*intact") as err:
        atomic_write(path, no_space)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_resolution(tmp_path):
    run = tmp_path / "run"
    assert (
        resolve_resume(None, run) is None and resolve_resume(False, run) is None and resolve_resume("null", run) is None
    )
    with pytest.raises(FileNotFoundError, match=r"'.*run/checkpoints/last\.ckpt' does not exist.*hydra\.run\.dir"):
        resolve_resume(True, run)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    last = str(run / "checkpoints" / "last.ckpt")
    assert resolve_resume(True, run) == resolve_resume("true", run) == last
    assert resolve_resume(str(run), tmp_path / "elsewhere") == last  # a run dir
    assert resolve_resume(last, tmp_path / "elsewhere") == last  # a file
