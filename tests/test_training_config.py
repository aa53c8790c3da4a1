"""training.config: one plain(), the checks a run's config gets before any work (both tasks, nothing written when
refused), and the generated-config writer."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from tiny_runs import compose_cfg

from training.config import check_run_config, plain, write_conf_files


def test_plain_resolves_omegaconf_and_copies_mappings():
    node = OmegaConf.create({"a": 1, "b": "${a}", "c": [1, "${a}"]})
    assert plain(node) == {"a": 1, "b": 1, "c": [1, 1]} and type(plain(node)) is dict
    assert plain(OmegaConf.create([1, 2])) == [1, 2]
    src = {"x": 1}
    assert plain(src) == src and plain(src) is not src
    assert plain("resnet50") == "resnet50"


@pytest.mark.parametrize(
    "task, overrides, match",
    [
        ("detect", ["+seeed=1"], r"unknown key config.seeed \(did you mean 'seed'"),
        ("classify", ["+eval_ony=true"], r"unknown key config.eval_ony \(did you mean 'eval_only'"),
        ("detect", ["solver.lr=abc"], r"solver.lr='abc' is not valid"),
        ("classify", ["solver.schedule=cosin"], r"solver.schedule='cosin' is not valid \(did you mean 'cosine'"),
        ("classify", ["+recipe.lable_smoothing=0.1"], r"unknown key recipe.lable_smoothing \(did you mean"),
        ("detect", ["+detector.fpn_chanels=64"], r"fpn_chanels"),
        ("detect", ["eval_only=true"], r"eval_only=true needs checkpoint="),
        ("detect", ["eval_backend=foo"], r"eval_backend='foo' is not valid"),
        ("classify", ["task=detection"], r"task='detection': this is the classification entry point"),
        ("detect", ["+backbone.options.channels_last=false"], r"backbone.options.channels_last=False is not valid"),
    ],
)
def test_bad_config_is_refused_before_any_work(task, overrides, match, tmp_path):
    """The runner's first step names the bad value; no run dir, no data, no model."""
    if task == "detect":
        from detection.module import run
    else:
        from classification.module import run
    cfg = compose_cfg([f"dataset.root={tmp_path / 'cache'}" if task == "detect" else "seed=0", *overrides], task)
    with pytest.raises(ValueError, match=match):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_check_run_config_runs_the_tasks_own_group_checks():
    from detection.module import DetectionRun

    seen = []
    cfg = plain(compose_cfg())
    run = check_run_config(cfg, "detection", DetectionRun, groups={"detector": seen.append, "dataset": seen.append})
    assert seen == [cfg["detector"], cfg["dataset"]] and run.seed == 0 and run.eval_backend == "pycocotools"


def test_generated_config_files_replace_stale_ones(tmp_path):
    (tmp_path / "gone.yaml").write_text("name: gone\n")
    (tmp_path / "notes.txt").write_text("kept")
    assert write_conf_files(tmp_path, {"a": "name: a\n", "b": "name: b\n"}) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml", "notes.txt"]
    assert (tmp_path / "a.yaml").read_text() == "name: a\n"
