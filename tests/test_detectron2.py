"""detectron2 plugin: registration, the Backbone contract, FREEZE_AT, and one training iteration + one inference of
detectron2's GeneralizedRCNN with FPN backbones of ours. Skips (with the reason) when detectron2 is absent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import backbones


def test_clear_import_error_without_detectron2():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "try:\n    import detection.detectron2\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTERROR" in out and "not on PyPI" in out and "--no-build-isolation" in out


d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI; build it from source)")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from detection.detectron2 import CNNBackbone, configure_backbone  # noqa: E402

E2E = [n for n in ("nasnet_a_mobile", "resnext50_32x4d") if n in backbones.list_models()]


def test_every_detection_ready_model_registered():
    for name in backbones.list_models(detection_ready=True):
        assert f"build_{name}_backbone" in BACKBONE_REGISTRY
        assert f"build_{name}_fpn_backbone" in BACKBONE_REGISTRY
    for name in backbones.list_models(detection_ready=False):
        assert f"build_{name}_backbone" not in BACKBONE_REGISTRY


def test_backbone_contract_and_freeze_at():
    name = backbones.list_models(detection_ready=True)[0]
    b = CNNBackbone(name, freeze_at=2)
    shapes = b.output_shape()
    assert list(shapes) == ["c2", "c3", "c4", "c5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert b.size_divisibility == 32 and b.padding_constraints == {"size_divisibility": 32}
    out = b(torch.randn(1, 3, 64, 96))
    assert {k: v.shape[1] for k, v in out.items()} == {k: s.channels for k, s in shapes.items()}
    stages = b.body.stage_modules()
    frozen = {n for s in stages[:2] for n in s}  # FREEZE_AT=2: stem and first stage
    for pname, p in b.body.named_parameters():
        assert p.requires_grad != any(pname.startswith(m + ".") for m in frozen), pname
    with pytest.raises(ValueError, match="norm='frozen'"):
        CNNBackbone(name, norm="frozen")


def _cfg(name: str):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    configure_backbone(cfg, name, fpn=True)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 160
    return cfg


@pytest.mark.parametrize("name", E2E)
def test_generalized_rcnn_train_iteration_and_inference(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name))
    assert model.pixel_mean.flatten().tolist() == pytest.approx([255 * m for m in backbones.model_card(name).mean])
    image = torch.randint(0, 255, (3, 128, 160)).float()
    inst = Instances((128, 160))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 10.0, 150.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    batch = [{"image": image, "instances": inst, "height": 128, "width": 160}]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 160}])
    assert out[0]["instances"].image_size == (128, 160)
    assert out[0]["instances"].pred_boxes.tensor.shape[-1] == 4


def test_sample_config_loads():
    from pathlib import Path

    from detection.detectron2 import add_backbone_config

    cfg = add_backbone_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "detection/configs/faster_rcnn_cnn_fpn.yaml"))
    assert cfg.MODEL.BACKBONE.NAME == "build_nasnet_a_mobile_fpn_backbone"
