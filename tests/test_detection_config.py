"""Hydra configs of the detection entry point (compose API): groups, generated backbone files, bad choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tiny_runs import compose_cfg

import backbones
from detection.config import detector_conf
from detection.models import DETECTORS, resolve_config
from detection.module import DATASET_KEYS
from training.config import BACKBONE_CONF_KEYS, backbone_conf, backbone_spec, check_task
from training.optim import Solver
from training.trainer import CHECKPOINT_KEYS, MODULE_KEYS, TRAINER_ARGS, build_trainer

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config():
    cfg = compose_cfg()
    assert cfg.task == "detection" and cfg.dataset.name == "shapes" and cfg.detector.name == "faster_rcnn"
    card = backbones.model_card(cfg.backbone.name)
    assert card.detection_ready
    assert cfg.trainer.max_epochs == cfg.solver.epochs
    # conf/tuning/shapes_faster_rcnn.yaml is merged into the detector
    tuning = yaml.safe_load((CONF / "tuning" / "shapes_faster_rcnn.yaml").read_text())
    assert {k: cfg.detector[k] for k in tuning} == tuning
    assert resolve_config(OmegaConf.to_container(cfg.detector, resolve=True))["levels"] == tuning["levels"]


@pytest.mark.parametrize("dataset", ["shapes", "coco"])
@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_every_detector_config_is_valid(detector, dataset):
    cfg = compose_cfg([f"detector={detector}", f"dataset={dataset}"])
    det = OmegaConf.to_container(cfg.detector, resolve=True)
    resolved = resolve_config(det)  # raises on an unknown key
    assert resolved["name"] == detector
    if "min_size" in resolved:
        assert resolved["min_size"] == cfg.dataset.min_size
    assert set(cfg.dataset) <= set(DATASET_KEYS) and cfg.dataset.task == "detection"
    assert set(cfg.solver) <= set(Solver.keys()) and set(cfg.backbone) <= set(BACKBONE_CONF_KEYS)


def test_detector_files_hold_every_option():
    assert options("detector") == sorted(DETECTORS)
    for name, defaults in DETECTORS.items():
        raw = yaml.safe_load((CONF / "detector" / f"{name}.yaml").read_text())
        assert set(raw) - {"name"} == set(defaults), name


def test_detector_files_are_generated_from_detectors():
    """conf/detector/*.yaml is what `python tools/model_zoo.py --write-conf` writes from DETECTORS now: every option
    at its default (the resize keys from the dataset group), each with a comment."""
    for name, defaults in DETECTORS.items():
        text = (CONF / "detector" / f"{name}.yaml").read_text()
        assert text == detector_conf(name), f"{name}: run `python tools/model_zoo.py --write-conf`"
        raw = yaml.safe_load(text)
        for key, value in defaults.items():
            assert raw[key] == (f"${{dataset.{key}}}" if key in ("min_size", "max_size") else value), (name, key)
        option_lines = [line for line in text.splitlines() if line.split(":")[0] in defaults]
        assert len(option_lines) == len(defaults) and all(" # " in line for line in option_lines), name


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_are_valid(trainer):
    cfg = compose_cfg([f"trainer={trainer}"])
    keys = set(cfg.trainer)
    assert keys <= set(TRAINER_ARGS) | set(MODULE_KEYS), keys - set(TRAINER_ARGS) - set(MODULE_KEYS)
    assert set(cfg.trainer.checkpoint) <= set(CHECKPOINT_KEYS)


def test_cpu_trainer_builds(tmp_path):
    cfg = compose_cfg()
    trainer = build_trainer(cfg.trainer, tmp_path, monitor="val/AP")
    assert trainer.max_epochs == cfg.solver.epochs
    assert [type(lg).__name__ for lg in trainer.loggers] == ["TensorBoardLogger", "CSVLogger"]
    with pytest.raises(ValueError, match="unknown key trainer.devics.*did you mean 'devices'"):
        build_trainer({**OmegaConf.to_container(cfg.trainer), "devics": 2}, tmp_path)


def test_backbone_files_match_the_registry_exactly():
    """conf/backbone/*.yaml is what `python tools/model_zoo.py --write-conf` writes from the registry now."""
    names = backbones.list_models()
    assert options("backbone") == names, "run `python tools/model_zoo.py --write-conf`"
    for name in names:
        assert (CONF / "backbone" / f"{name}.yaml").read_text() == backbone_conf(name), name


def test_unknown_group_choice_lists_the_valid_ones():
    for group, bad, valid in (("backbone", "resnet5", "resnet50"), ("detector", "rcnn", "faster_rcnn_c4"),
                              ("dataset", "cocoa", "shapes")):  # fmt: skip
        with pytest.raises(Exception, match=rf"(?s)Could not find '{group}/{bad}'.*{valid}"):
            compose_cfg([f"{group}={bad}"])


def test_classification_dataset_is_refused():
    with pytest.raises(ValueError, match="dataset='digits' is a classification dataset; a detection run needs"):
        check_task({"dataset": {"name": "digits", "task": "classification"}}, "detection")
    for name in options("dataset"):
        task = yaml.safe_load((CONF / "dataset" / f"{name}.yaml").read_text()).get("task")
        if task != "detection":
            with pytest.raises(ValueError, match=f"dataset='{name}'"):
                check_task(OmegaConf.to_container(compose_cfg([f"dataset={name}"]), resolve=False), "detection")


def test_non_detection_ready_backbone_is_refused():
    from detection.module import DetectionModule

    cifar = backbones.list_models(detection_ready=False)
    if not cifar:
        pytest.skip("no CIFAR model registered")
    cfg = OmegaConf.to_container(compose_cfg([f"backbone={cifar[0]}"]), resolve=True)
    with pytest.raises(ValueError, match="not detection-ready"):
        DetectionModule(cfg, num_classes=4)


def test_task_key_is_read():
    cfg = OmegaConf.to_container(compose_cfg(), resolve=True)
    check_task(cfg, "detection")
    with pytest.raises(ValueError, match="task='detection': this is the classification entry point"):
        check_task(cfg, "classification")


def test_detection_lr_is_scaled_by_the_global_batch(tmp_path):
    """The solver's lr is for reference_batch_size images (shapes: 8); 0.02 at 8 images is 0.01 for a 4-image batch."""
    from types import SimpleNamespace

    from detection.module import DetectionModule

    overrides = ["backbone=mobilenet_v1_x0_25", "dataset.batch_size=4", "solver.lr=0.02"]
    cfg = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
    module = DetectionModule(cfg, num_classes=4)
    trainer = SimpleNamespace(estimated_stepping_batches=500, accumulate_grad_batches=1, num_training_batches=50,
                              world_size=1, datamodule=SimpleNamespace(cfg=cfg["dataset"]))  # fmt: skip
    module._trainer = trainer  # what configure_optimizers reads of a Trainer
    out = module.configure_optimizers()
    assert out["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(0.01)  # before the warm-up factor


def test_channels_last_is_the_backbones_layout():
    """trainer.channels_last: the backbone's parameters channels-last (create_model's option); FPN and heads keep
    torchvision's layout; backbone.options.channels_last is refused (one switch)."""
    from detection.module import DetectionModule

    def layouts(*overrides: str) -> tuple[bool, bool]:
        cfg = OmegaConf.to_container(compose_cfg(["backbone=mobilenet_v1_x0_25", *overrides]), resolve=True)
        model = DetectionModule(cfg, num_classes=4).model
        conv = [p for p in model.backbone.body.parameters() if p.ndim == 4 and p.shape[-1] > 1][0]
        neck = [p for p in model.backbone.fpn.parameters() if p.ndim == 4 and p.shape[-1] > 1][0]
        assert neck.is_contiguous()
        return conv.is_contiguous(memory_format=torch.channels_last), conv.is_contiguous()

    assert layouts() == (True, False)  # the default
    assert layouts("trainer.channels_last=false") == (False, True)
    with pytest.raises(ValueError, match="channels_last=False is not valid: .* is trainer.channels_last"):
        backbone_spec({"name": "resnet50", "options": {"channels_last": False}})


def test_train_net_is_thin():
    assert len((ROOT / "tools" / "train_net.py").read_text().splitlines()) < 150


def test_backbone_spec_takes_the_generated_keys_and_names_unknown_ones():
    conf = yaml.safe_load(backbone_conf("resnet50"))
    conf.update(norm="frozen_bn", options={"drop_path_rate": 0.1})
    assert backbone_spec(conf) == ("resnet50", {"norm": "frozen_bn", "frozen_stages": -1, "drop_path_rate": 0.1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) backbone.drop_path_rate; valid keys: name, family"):
        backbone_spec({**conf, "drop_path_rate": 0.1})
